"""Checks for tutorial 4, origin and paths: block writes, neuron parts, the super weight, one patched value."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..detect import find_massive_activations
from ..origin import trace_origin
from ..patching import path_patch
from ._common import PROMPTS, assert_close, assert_equal, passed

SITES = ((20, 0, 507), (11, 0, 247))  # (layer, pos, dim) traced


def check_block_writes(fn: Callable, model: Any) -> None:
    """fn(model, prompt, pos=, dim=) -> (n_layers,) what each block adds to the residual at (pos, dim)."""
    for layer, pos, dim in SITES:
        origin = trace_origin(model, PROMPTS[0], layer=layer, pos=pos, dim=dim, ablate=False)
        df = origin.by_layer()
        got = fn(model, PROMPTS[0], pos=pos, dim=dim)
        assert_close(torch.as_tensor(got)[: layer + 1], torch.tensor((df.attn + df.mlp).values),
                     f"block_writes(pos={pos}, dim={dim}) up to block {layer}", rtol=1e-3, atol=1e-2)
    passed(fn, f"on {len(SITES)} residual entries")


def check_neuron_contributions(fn: Callable, model: Any) -> None:
    """fn(model, prompt, layer=, pos=, dim=) -> (d_mlp,) each MLP neuron's part of block `layer`'s write."""
    for layer, pos, dim in SITES:
        origin = trace_origin(model, PROMPTS[0], layer=layer, pos=pos, dim=dim, ablate=False)
        got = fn(model, PROMPTS[0], layer=origin.writer_layer, pos=pos, dim=dim)
        assert_close(got, origin.neuron_contribution, f"neuron_contributions(layer={origin.writer_layer}, "
                     f"pos={pos}, dim={dim})", rtol=1e-3, atol=1e-2)
    passed(fn, f"on the writing blocks of {len(SITES)} residual entries")


def check_without_weight(fn: Callable, model: Any) -> None:
    """fn(model, prompt, layer=, row=, col=) -> (x[layer, 0, row], loss) with W_out[col, row] of `layer` zeroed."""
    origin = trace_origin(model, PROMPTS[0], n_random=0, search_steps=1)
    sw = origin.super_weight
    row = origin.causal[origin.causal.ablation.str.startswith("zero super weight")].iloc[0]
    before = model.blocks[sw.layer].mlp.W_out[sw.col, sw.row].item()
    value, loss = fn(model, PROMPTS[0], layer=sw.layer, row=sw.row, col=sw.col)
    assert_equal(model.blocks[sw.layer].mlp.W_out[sw.col, sw.row].item(), before,
                 "the weight after without_weight returned (it must be restored)")
    assert_close(torch.tensor([float(value), float(loss)]), torch.tensor([row.massive_value, row.loss]),
                 f"(value, loss) with the super weight {sw} zeroed", rtol=1e-3)
    passed(fn, f"on the super weight {sw}, and the model is restored")


def check_patched_value_loss(fn: Callable, model: Any) -> None:
    """fn(model, prompt, sites=, layer=, kv_head=) -> loss with one KV head's value read from the corrupted run."""
    prompt = PROMPTS[0]
    sites = [(int(r.first_layer), int(r.pos), int(r.dim)) for r in find_massive_activations(model, prompt).sites().itertuples()]
    for layer in (12, 15):
        pp = path_patch(model, prompt, receivers=("v",), layers=[layer])
        for kv_head in range(len(pp.metric)):
            got = fn(model, prompt, sites=sites, layer=layer, kv_head=kv_head)
            assert_close(torch.tensor(float(got)), pp.metric[kv_head], f"patched_value_loss(layer={layer}, "
                         f"kv_head={kv_head})", rtol=1e-3)
    passed(fn, "on every KV head of 2 layers")
