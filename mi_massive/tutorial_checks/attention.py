"""Checks for tutorial 3, attention sinks and the implicit bias: sink mass, value norms, the Eq. 2 split."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import _inputs
from .._hooks import capture
from .._types import HookedModel
from ..arch import hook
from ..attention import attention_sinks, implicit_bias
from ._common import PROMPTS, assert_close, passed, reference, student_bos

LAYERS = (5, 15, 25)


@reference
def _sinks(model: HookedModel, prompt: str) -> Any:
    return attention_sinks(model, prompt, sink_positions=[0], prepend_bos=student_bos(model))


@reference
def _z(model: HookedModel, prompt: str, layer: int) -> torch.Tensor:
    (toks,) = _inputs.tokenize(model, prompt, prepend_bos=student_bos(model))
    return capture(model, toks[None], [hook.z(layer)])[1][hook.z(layer)][0]  # (pos, head, d_head)


@reference
def _bias(model: HookedModel, prompt: str, layer: int) -> Any:
    return implicit_bias(model, prompt, layers=[layer], sink_positions=[0], swap=False, prepend_bos=student_bos(model))


def check_sink_mass(fn: Callable, model: HookedModel) -> None:
    """fn(model, prompt, layer=) -> (n_heads,) mean over queries 1.. of their attention to position 0."""
    cases = [(prompt, layer) for prompt in PROMPTS[:2] for layer in LAYERS]
    got = [fn(model, prompt, layer=layer) for prompt, layer in cases]
    for (prompt, layer), g in zip(cases, got):
        assert_close(g, _sinks(model, prompt).sink_mass[layer], f"sink_mass(layer={layer})", rtol=1e-3)
    passed(fn, f"on {len(cases)} (prompt, layer) cases")


def check_value_norms(fn: Callable, model: HookedModel) -> None:
    """fn(model, prompt, layer=) -> ((n_kv_heads,) |v| at position 0, (n_kv_heads,) mean |v| elsewhere)."""
    got = [fn(model, PROMPTS[2], layer=layer) for layer in LAYERS]
    want = _sinks(model, PROMPTS[2])
    for layer, (sink, other) in zip(LAYERS, got):
        assert_close(sink, want.v_norm_sink[layer], f"sink value norms (layer={layer})", rtol=1e-3)
        assert_close(other, want.v_norm_other[layer], f"other value norms (layer={layer})", rtol=1e-3)
    passed(fn, f"on {len(LAYERS)} layers")


def check_attention_split(fn: Callable, model: HookedModel) -> None:
    """fn(model, prompt, layer=) -> (sink part, rest), each (pos, n_heads, d_head), summing to hook_z (Eq. 2)."""
    prompt = PROMPTS[0]
    got = [fn(model, prompt, layer=layer) for layer in LAYERS]
    for layer, (sink, rest) in zip(LAYERS, got):
        assert_close(sink + rest, _z(model, prompt, layer), f"sink part + rest at layer {layer} (should be hook_z)",
                     rtol=1e-3, atol=1e-4)
        want = _bias(model, prompt, layer)
        W_O = model.blocks[layer].attn.W_O.float()  # (head, d_head, d_model)
        for part, norm, what in ((sink, want.bias_norm[0], "sink part"), (rest, want.rest_norm[0], "rest")):
            out = torch.einsum("phd,hdm->phm", part[1:].float(), W_O).norm(dim=-1).mean(0)  # queries after the sink
            assert_close(out, norm, f"mean |{what} @ W_O| over queries (layer {layer})", rtol=1e-3)
    passed(fn, f"on {len(LAYERS)} layers (sums to hook_z, norms as implicit_bias)")
