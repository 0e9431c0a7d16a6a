"""Checks for tutorial 4, origin and paths: block writes, neuron parts, the super weight, one patched value."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._types import HookedModel
from ..arch import n_kv_heads
from ..detect import find_massive_activations
from ..origin import trace_origin
from ..patching import path_patch
from ._common import PROMPTS, assert_close, assert_equal, passed, reference, student_bos

# (layer, pos, dim) traced, and the block that writes each (the check says so if the model disagrees)
SITES = ((20, 0, 507), (11, 0, 247))
WRITER = 11


@reference
def _origin(model: HookedModel, layer: int, pos: int, dim: int) -> Any:
    return trace_origin(model, PROMPTS[0], layer=layer, pos=pos, dim=dim, ablate=False, prepend_bos=student_bos(model))


@reference
def _traced(model: HookedModel) -> Any:
    return trace_origin(model, PROMPTS[0], n_random=0, search_steps=1, prepend_bos=student_bos(model))


@reference
def _sites(model: HookedModel) -> tuple[tuple[int, int, int], ...]:
    found = find_massive_activations(model, PROMPTS[0], prepend_bos=student_bos(model), progress=False)
    return tuple((int(r.first_layer), int(r.pos), int(r.dim)) for r in found.sites().itertuples())


@reference
def _patched(model: HookedModel, layer: int) -> torch.Tensor:
    return path_patch(model, PROMPTS[0], receivers=("v",), layers=[layer], prepend_bos=student_bos(model)).metric


def check_block_writes(fn: Callable, model: HookedModel) -> None:
    """fn(model, prompt, pos=, dim=) -> (n_layers,) what each block adds to the residual at (pos, dim)."""
    got = [fn(model, PROMPTS[0], pos=pos, dim=dim) for _, pos, dim in SITES]
    for (layer, pos, dim), g in zip(SITES, got):
        df = _origin(model, layer, pos, dim).by_layer()
        assert_close(torch.as_tensor(g)[: layer + 1], torch.tensor((df.attn + df.mlp).values),
                     f"block_writes(pos={pos}, dim={dim}) up to block {layer}", rtol=1e-3, atol=1e-2)
    passed(fn, f"on {len(SITES)} residual entries")


def check_neuron_contributions(fn: Callable, model: HookedModel) -> None:
    """fn(model, prompt, layer=, pos=, dim=) -> (d_mlp,) each MLP neuron's part of block `layer`'s write."""
    got = [fn(model, PROMPTS[0], layer=WRITER, pos=pos, dim=dim) for _, pos, dim in SITES]
    for (layer, pos, dim), g in zip(SITES, got):
        origin = _origin(model, layer, pos, dim)
        if origin.writer_layer != WRITER:
            raise RuntimeError(f"this check assumes block {WRITER} writes dim {dim}; trace_origin says block "
                               f"{origin.writer_layer} (a different model?)")
        assert_close(g, origin.neuron_contribution, f"neuron_contributions(layer={WRITER}, pos={pos}, dim={dim})",
                     rtol=1e-3, atol=1e-2)
    passed(fn, f"on the writing block of {len(SITES)} residual entries")


SUPER_WEIGHT = (11, 507, 1229)  # (layer, row, col) of W_out[col, row]; checked against trace_origin


def check_without_weight(fn: Callable, model: HookedModel) -> None:
    """fn(model, prompt, layer=, row=, col=) -> (x[layer, 0, row], loss) with W_out[col, row] of `layer` zeroed."""
    layer, row, col = SUPER_WEIGHT
    before = model.blocks[layer].mlp.W_out[col, row].item()
    value, loss = fn(model, PROMPTS[0], layer=layer, row=row, col=col)
    assert_equal(model.blocks[layer].mlp.W_out[col, row].item(), before,
                 "the weight after without_weight returned (it must be restored)")
    origin = _traced(model)
    sw = origin.super_weight
    if (sw.layer, sw.row, sw.col) != SUPER_WEIGHT:
        raise RuntimeError(f"this check assumes the super weight {SUPER_WEIGHT}; trace_origin finds {sw}")
    want = origin.causal[origin.causal.ablation.str.startswith("zero super weight")].iloc[0]
    assert_close(torch.tensor([float(value), float(loss)]), torch.tensor([want.massive_value, want.loss]),
                 f"(value, loss) with the super weight {sw} zeroed", rtol=1e-3)
    passed(fn, f"on the super weight {sw}, and the model is restored")


PATCH_LAYERS = (12, 15)


def check_patched_value_loss(fn: Callable, model: HookedModel) -> None:
    """fn(model, prompt, sites=, layer=, kv_head=) -> loss with one KV head's value read from the corrupted run."""
    sites = [(WRITER, 0, 507)]  # where the massive activation of PROMPTS[0] appears; checked below
    n_kv = n_kv_heads(model.cfg)
    cases = [(layer, kv) for layer in PATCH_LAYERS for kv in range(n_kv)]
    got = [fn(model, PROMPTS[0], sites=list(sites), layer=layer, kv_head=kv) for layer, kv in cases]
    if list(_sites(model)) != sites:
        raise RuntimeError(f"this check assumes the sites {sites}; find_massive_activations finds {list(_sites(model))}")
    for (layer, kv), g in zip(cases, got):
        assert_close(torch.tensor(float(g)), _patched(model, layer)[kv], f"patched_value_loss(layer={layer}, "
                     f"kv_head={kv})", rtol=1e-3)
    passed(fn, f"on every KV head of {len(PATCH_LAYERS)} layers")
