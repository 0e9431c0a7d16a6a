"""Checks for tutorial 1, finding massive activations: the residual stream, the paper's rule, the layer profile."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import _inputs
from .._hooks import capture
from ..arch import hook
from ..detect import find_massive_activations, layer_profile
from ._common import PROMPTS, assert_close, passed


def _resid(model: Any, prompt: str, layer: int, *, prepend_bos: bool | None = None) -> torch.Tensor:
    (toks,) = _inputs.tokenize(model, prompt, prepend_bos=prepend_bos)
    return capture(model, toks[None], [hook.resid_post(layer)])[1][hook.resid_post(layer)][0]  # (pos, d_model)


def check_residual_stream(fn: Callable, model: Any) -> None:
    """fn(model, prompt, layer) -> (pos, d_model) block output of `layer`."""
    cases = ((PROMPTS[0], 0), (PROMPTS[1], model.cfg.n_layers // 2), (PROMPTS[2], model.cfg.n_layers - 1))
    for prompt, layer in cases:
        assert_close(fn(model, prompt, layer), _resid(model, prompt, layer), f"residual_stream(model, {prompt!r}, {layer})")
    passed(fn, f"on {len(cases)} (prompt, layer) cases")


# (layer, threshold, ratio): the paper's rule, a low threshold with a small ratio, and no ratio at all
RULES = ((15, 100.0, 1000.0), (15, 50.0, 10.0), (15, 50.0, 0.0), (5, 20.0, 5.0))


def check_massive_entries(fn: Callable, model: Any) -> None:
    """fn(x, threshold=, ratio=) -> set of (pos, dim) with |x| > threshold and |x| >= ratio x median |x|."""
    prompt = PROMPTS[0]
    for layer, threshold, ratio in RULES:
        x = _resid(model, prompt, layer)
        found = find_massive_activations(model, prompt, threshold=threshold, ratio=ratio)
        sel = found.layer == layer
        want = set(zip(found.pos[sel].tolist(), found.dim[sel].tolist()))
        got = fn(x, threshold=threshold, ratio=ratio)
        got = {(int(p), int(d)) for p, d in got}
        what = f"massive_entries(layer {layer} output, threshold={threshold:g}, ratio={ratio:g})"
        if got != want:
            raise AssertionError(f"{what}: {len(got)} entries, expected {len(want)}; "
                                 f"missing {sorted(want - got)[:5]}, extra {sorted(got - want)[:5]}")
    passed(fn, f"on {len(RULES)} (layer, threshold, ratio) settings")


def check_layer_top_magnitudes(fn: Callable, model: Any) -> None:
    """fn(model, prompt, k=) -> (top (n_layers, k), median (n_layers,)) of |x| at every block output."""
    for prompt, k in ((PROMPTS[0], 3), (PROMPTS[2], 1)):
        want = layer_profile(model, prompt, k=k)
        got = fn(model, prompt, k=k)
        if not (isinstance(got, tuple) and len(got) == 2):
            raise AssertionError(f"layer_top_magnitudes should return a tuple (top, median), got {type(got).__name__}")
        assert_close(got[0], want.top, f"top of layer_top_magnitudes(model, {prompt!r}, k={k})")
        assert_close(got[1], want.median, f"median of layer_top_magnitudes(model, {prompt!r}, k={k})")
    passed(fn, "on 2 (prompt, k) cases")


def check_massive_values(fn: Callable, model: Any) -> None:
    """fn(model, prompts, layer=, dim=, pos=) -> (n_prompts,) values of one residual entry, one per prompt."""
    cases = ((20, 247, 0, True), (15, 507, 2, False))
    for layer, dim, pos, bos in cases:
        want = torch.stack([_resid(model, p, layer, prepend_bos=bos)[pos, dim] for p in PROMPTS])
        got = fn(model, list(PROMPTS), layer=layer, dim=dim, pos=pos, prepend_bos=bos)
        assert_close(got, want, f"massive_values(layer={layer}, dim={dim}, pos={pos}, prepend_bos={bos})")
    passed(fn, f"on {len(cases)} (layer, dim, pos) entries over {len(PROMPTS)} prompts")
