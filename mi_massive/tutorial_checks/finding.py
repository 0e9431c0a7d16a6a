"""Checks for tutorial 1, finding massive activations: the residual stream, the paper's rule, the layer profile,
what holds them, one entry across prompts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import _inputs
from .._hooks import capture
from .._types import HookedModel
from ..arch import hook
from ..detect import find_massive_activations, layer_profile
from ._common import PROMPTS, assert_close, assert_equal, passed, reference, student_bos


@reference
def _resid(model: HookedModel, prompt: str, layer: int, prepend_bos: bool) -> torch.Tensor:
    (toks,) = _inputs.tokenize(model, prompt, prepend_bos=prepend_bos)
    return capture(model, toks[None], [hook.resid_post(layer)])[1][hook.resid_post(layer)][0]  # (pos, d_model)


@reference
def _found(model: HookedModel, prompts: tuple[str, ...], threshold: float, ratio: float, prepend_bos: bool) -> Any:
    return find_massive_activations(model, list(prompts), threshold=threshold, ratio=ratio, prepend_bos=prepend_bos,
                                    progress=False)


@reference
def _profile(model: HookedModel, prompt: str, k: int, prepend_bos: bool) -> Any:
    return layer_profile(model, prompt, k=k, prepend_bos=prepend_bos, progress=False)


def check_residual_stream(fn: Callable, model: HookedModel) -> None:
    """fn(model, prompt, layer) -> (pos, d_model) block output of `layer`."""
    cases = ((PROMPTS[0], 0), (PROMPTS[1], model.cfg.n_layers // 2), (PROMPTS[2], model.cfg.n_layers - 1))
    got = [fn(model, prompt, layer) for prompt, layer in cases]
    bos = student_bos(model)
    for (prompt, layer), g in zip(cases, got):
        assert_close(g, _resid(model, prompt, layer, bos), f"residual_stream(model, {prompt!r}, {layer})")
    passed(fn, f"on {len(cases)} (prompt, layer) cases")


def _planted() -> torch.Tensor:
    """(4, 8): a negative massive entry, and one in a position whose own median is large (the median is over x)."""
    x = torch.linspace(1.0, 2.0, 32).reshape(4, 8) * torch.tensor([1.0, -1.0]).repeat(16).reshape(4, 8)
    x[0, 3] = -5000.0  # massive by its magnitude
    x[1] = 50.0  # position 1: median 50, so 3000 is not 1000x its own median, but is 1000x the median of x
    x[1, 5] = 3000.0
    return x


PLANTED = {(0, 3), (1, 5)}
# (layer, threshold, ratio): the paper's rule, a low threshold with a small ratio, and no ratio at all
RULES = ((15, 100.0, 1000.0), (15, 50.0, 10.0), (15, 50.0, 0.0), (5, 20.0, 5.0))


def _entry_set(got: Any) -> set[tuple[int, int]]:
    return {(int(p), int(d)) for p, d in got}


def check_massive_entries(fn: Callable, model: HookedModel) -> None:
    """fn(x, threshold=, ratio=) -> set of (pos, dim) with |x| > threshold and |x| >= ratio x median |x|."""
    got = _entry_set(fn(_planted(), threshold=100.0, ratio=1000.0))
    if got != PLANTED:
        raise AssertionError(f"massive_entries on a planted (4, 8) tensor: got {sorted(got)}, expected "
                             f"{sorted(PLANTED)} (a negative value counts by its magnitude; the median is over all "
                             "of x, not per position)")
    prompt, bos = PROMPTS[0], student_bos(model)
    for layer, threshold, ratio in RULES:
        got = _entry_set(fn(_resid(model, prompt, layer, bos).clone(), threshold=threshold, ratio=ratio))
        found = _found(model, (prompt,), threshold, ratio, bos)
        sel = found.layer == layer
        want = set(zip(found.pos[sel].tolist(), found.dim[sel].tolist()))
        if got != want:
            raise AssertionError(f"massive_entries(layer {layer} output, threshold={threshold:g}, ratio={ratio:g}): "
                                 f"{len(got)} entries, expected {len(want)}; missing {sorted(want - got)[:5]}, "
                                 f"extra {sorted(got - want)[:5]}")
    passed(fn, f"on a planted tensor and {len(RULES)} (layer, threshold, ratio) settings")


def check_layer_top_magnitudes(fn: Callable, model: HookedModel) -> None:
    """fn(model, prompt, k=) -> (top (n_layers, k), median (n_layers,)) of |x| at every block output."""
    cases = ((PROMPTS[0], 3), (PROMPTS[2], 1))
    got = [fn(model, prompt, k=k) for prompt, k in cases]
    for (prompt, k), g in zip(cases, got):
        if not (isinstance(g, tuple) and len(g) == 2):
            raise AssertionError(f"layer_top_magnitudes should return a tuple (top, median), got {type(g).__name__}")
        want = _profile(model, prompt, k, student_bos(model))
        assert_close(g[0], want.top, f"top of layer_top_magnitudes(model, {prompt!r}, k={k})")
        assert_close(g[1], want.median, f"median of layer_top_magnitudes(model, {prompt!r}, k={k})")
    passed(fn, f"on {len(cases)} (prompt, k) cases")


HOLDERS = ("the BOS token", "the first position", "the first delimiter")


def _holder(model: HookedModel, prompts: tuple[str, ...]) -> tuple[str, str]:
    """The library's answer to 'what holds the massive activations', and the evidence for it."""
    evidence, first_only = [], []
    for bos in (True, False):
        sites = _found(model, prompts, 100.0, 1000.0, bos).sites()
        first_only.append(len(sites) > 0 and bool((sites.pos == 0).all()))
        evidence.append(f"prepend_bos={bos}: {len(sites)} site(s) at positions {sorted(set(sites.pos.tolist()))}, "
                        f"tokens {sorted(set(sites.token))}")
    if all(first_only):
        holder = "the first position"
    elif first_only[0]:
        holder = "the BOS token"
    else:
        holder = "the first delimiter"
    return holder, "; ".join(evidence)


def check_holder(fn: Callable, model: HookedModel, prompts: Any = PROMPTS) -> None:
    """fn() -> one of HOLDERS: what the scans with and without a BOS token say holds the massive activations."""
    got = fn()
    if got not in HOLDERS:
        raise AssertionError(f"holder() should return one of {HOLDERS}, got {got!r}")
    want, evidence = _holder(model, tuple(prompts))
    assert_equal(got, want, f"what holds the massive activations ({evidence})")
    print(f"\N{CHECK MARK} right: {want} ({evidence})")


def check_massive_values(fn: Callable, model: HookedModel) -> None:
    """fn(model, prompts, layer=, dim=, pos=, prepend_bos=) -> (n_prompts,) values of one residual entry."""
    cases = ((20, 247, 0, True), (15, 507, 2, False))
    got = [fn(model, list(PROMPTS), layer=layer, dim=dim, pos=pos, prepend_bos=bos) for layer, dim, pos, bos in cases]
    for (layer, dim, pos, bos), g in zip(cases, got):
        want = torch.stack([_resid(model, p, layer, bos)[pos, dim] for p in PROMPTS])
        assert_close(g, want, f"massive_values(layer={layer}, dim={dim}, pos={pos}, prepend_bos={bos})")
    passed(fn, f"on {len(cases)} (layer, dim, pos) entries over {len(PROMPTS)} prompts")
