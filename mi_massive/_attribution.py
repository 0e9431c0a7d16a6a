"""Exact linear attribution of one residual read-out to its writers, through frozen norm scales.

A read-out is a vector `v` (d_model) dotted with the residual stream at one position: `v = e_dim` reads the
value of one dimension, `v = ln2 gain * W_gate[:, n] / ln2 scale` reads neuron n's pre-activation. Every
block adds its attention and MLP outputs to the stream, so the read-out is the sum of `v . output` over the
embedding and the blocks. Heads are split through hook_z @ W_O; where a norm sits after the sub-layer
(Gemma 2/3 ln1_post / ln2_post) its scale at that position is frozen at the value of the run, which makes
the head (and neuron) parts sum exactly to the normed output that was actually added.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from ._types import HookedModel
from .arch import FamilySpec, hook, spec

COMPONENT_COLUMNS = ["component", "layer", "head", "contribution"]


def needed_hooks(model: HookedModel) -> list[str]:
    """Every hook a full trace reads, for all layers (what a user cache must hold)."""
    fam = spec(model)
    names = [hook.resid_pre(0)]
    for l in range(model.cfg.n_layers):
        names += [hook.resid_post(l), hook.attn_out(l), hook.mlp_out(l), hook.z(l), hook.mlp_post(l),
                  hook.mlp_pre(l), hook.ln_scale(l, "ln2")]
        if fam.gated_mlp:
            names.append(hook.mlp_pre_linear(l))
        if fam.post_sublayer_norm:
            names += [hook.ln_scale(l, "ln1_post"), hook.ln_scale(l, "ln2_post")]
    return names


def from_cache(model: HookedModel, cache: Mapping[str, Tensor], tokens: Tensor) -> dict[str, Tensor]:
    """The hooks of one prompt from a user's cache (ActivationCache or dict), batch dim removed, float64 CPU;
    raises when the cache's token embeddings are not those of `tokens` (a cache of another prompt)."""
    n_tokens = len(tokens)
    names = needed_hooks(model)
    missing = [n for n in names if n not in cache]
    if missing:
        raise ValueError(
            f"cache lacks {len(missing)} hook(s) that trace_origin reads, e.g. {missing[:3]}: "
            "make it with model.run_with_cache(tokens) (no names_filter), or pass no cache"
        )
    first = cache[hook.resid_pre(0)]
    batched = first.ndim == 3
    if batched and first.shape[0] != 1:
        raise ValueError(f"cache holds a batch of {first.shape[0]} prompts; trace_origin traces one (batch 1)")
    n_pos = first.shape[-2]
    if n_pos != n_tokens:
        raise ValueError(f"cache has {n_pos} positions but the prompt has {n_tokens} tokens: same prompt?")
    if hook.embed in cache:  # each position's token embedding, up to the model's scale: cosine 1 to its W_E row
        embed = cache[hook.embed]
        embed = (embed[0] if embed.ndim == 3 else embed).detach().float().cpu()  # (pos, d_model)
        rows = model.W_E.detach().float().cpu()[tokens.cpu()]  # (pos, d_model)
        bad = (torch.nn.functional.cosine_similarity(embed, rows, dim=-1) < 0.999).nonzero().flatten().tolist()
        if bad:
            raise ValueError(f"cache does not hold this prompt: its token embeddings differ from the prompt's at "
                             f"position(s) {bad[:5]}; make the cache with model.run_with_cache of the same tokens "
                             "(and the same prepend_bos), or pass no cache")
    return {n: (cache[n][0] if batched else cache[n]).detach().double().cpu() for n in names}


def norm_gain(norm: Any) -> Tensor:
    """The effective elementwise gain of a bridge norm (Gemma stores it as an offset from 1)."""
    w = norm.w.detach().double().cpu()
    return 1.0 + w if getattr(norm, "uses_weight_offset", False) else w


def _w(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach().double().cpu()


def _matvec(W: Tensor, v: Tensor) -> Tensor:
    """W @ v in float64 where W lives (a weight stays on the GPU; only v and the product travel), on the CPU."""
    W = W.detach()
    return (W.double() @ v.to(W.device, torch.float64)).cpu()


def _sublayer_readout(model: HookedModel, acts: Mapping[str, Tensor], v: Tensor, layer: int, pos: int, which: str) -> Tensor:
    """v pulled back through the frozen post-sublayer norm (ln1_post / ln2_post) when the family has one."""
    if not spec(model).post_sublayer_norm:
        return v
    block = model.blocks[layer]
    return v * norm_gain(getattr(block, which)) / acts[hook.ln_scale(layer, which)][pos, 0]


def _parts(model: HookedModel, acts: Mapping[str, Tensor], V: Tensor, *, pos: int, upto: int, mlp_of_last: bool,
           attn_of_last: bool) -> tuple[list[tuple[str, Any, Any]], Tensor]:
    """Component labels (component, layer, head) and their contributions to each read-out V[k] . x[pos]: (row, k)."""
    labels: list[tuple[str, Any, Any]] = [("embedding", pd.NA, pd.NA)]
    parts = [V @ acts[hook.resid_pre(0)][pos]]  # (k,)
    for l in range(upto + 1):
        last = l == upto
        if attn_of_last or not last:
            attn = model.blocks[l].attn
            va = _sublayer_readout(model, acts, V, l, pos, "ln1_post")  # (k, d_model)
            W_O = attn.W_O  # (head, d_head, d_model)
            per_head = torch.einsum("hd,hdk->hk", acts[hook.z(l)][pos], _matvec(W_O, va.T))  # (head, k)
            labels += [("head", l, h) for h in range(len(per_head))]
            parts += list(per_head)
            b_O = _w(getattr(attn, "b_O", None))
            if b_O is not None:
                labels.append(("attn_bias", l, pd.NA))
                parts.append(va @ b_O)
        if mlp_of_last or not last:
            labels.append(("mlp", l, pd.NA))
            parts.append(V @ acts[hook.mlp_out(l)][pos])
    return labels, torch.stack(parts)


def _frame(labels: list[tuple[str, Any, Any]], values: Tensor, column: str) -> pd.DataFrame:
    component, layer, head = zip(*labels) if labels else ((), (), ())
    return pd.DataFrame({"component": pd.array(component, dtype=object), "layer": pd.array(layer, dtype="Int64"),
                         "head": pd.array(head, dtype="Int64"), column: values.numpy().astype("float64")})


def components(model: HookedModel, acts: Mapping[str, Tensor], v: Tensor, *, pos: int, upto: int,
               mlp_of_last: bool = True, attn_of_last: bool = True) -> pd.DataFrame:
    """Contributions of the embedding, each head (and attention bias) and each MLP of blocks 0..upto to v . x[pos].

    `mlp_of_last` / `attn_of_last` say whether block `upto`'s sub-layers are upstream of the read-out.
    """
    labels, parts = _parts(model, acts, v[None], pos=pos, upto=upto, mlp_of_last=mlp_of_last,
                           attn_of_last=attn_of_last)
    return _frame(labels, parts[:, 0], "contribution")


def block_writes(model: HookedModel, acts: Mapping[str, Tensor], *, pos: int, dim: int, upto: int) -> Tensor:
    """What each block 0..upto adds to x[pos, dim] (attention + MLP outputs)."""
    return torch.stack([acts[hook.attn_out(l)][pos, dim] + acts[hook.mlp_out(l)][pos, dim] for l in range(upto + 1)])


def writer_block(model: HookedModel, acts: Mapping[str, Tensor], *, pos: int, dim: int, upto: int, sign: float) -> int:
    """The block that adds the most to x[pos, dim] in the direction of the value (where it jumps)."""
    return int((sign * block_writes(model, acts, pos=pos, dim=dim, upto=upto)).argmax())


def neuron_contributions(model: HookedModel, acts: Mapping[str, Tensor], v: Tensor, *, layer: int, pos: int) -> tuple[Tensor, float]:
    """Per-neuron parts of v . mlp_out[pos] (activation x W_out[n] . v, through the frozen ln2_post) and the bias part."""
    mlp = model.blocks[layer].mlp
    vm = _sublayer_readout(model, acts, v, layer, pos, "ln2_post")  # (d_model,)
    per_neuron = acts[hook.mlp_post(layer)][pos] * _matvec(mlp.W_out, vm)  # (d_mlp,)
    b_out = _w(getattr(mlp, "b_out", None))
    return per_neuron, (float(b_out @ vm) if b_out is not None else 0.0)


def preact_readout(model: HookedModel, acts: Mapping[str, Tensor], *, layer: int, pos: int, neuron: int,
                   linear: bool = False) -> tuple[Tensor, float]:
    """The read-out vector of neuron's pre-activation (gate, or up projection if `linear`) through frozen ln2, and its constant."""
    fam: FamilySpec = spec(model)
    mlp, ln2 = model.blocks[layer].mlp, model.blocks[layer].ln2
    W = _w((mlp.W_in if (linear or not fam.gated_mlp) else mlp.W_gate)[:, neuron])  # (d_model,)
    v = norm_gain(ln2) * W / acts[hook.ln_scale(layer, "ln2")][pos, 0]
    const = 0.0
    if fam.norm == "layernorm":  # centring is linear: fold it into the read-out
        v = v - v.mean()
        b = _w(getattr(ln2, "b", None))
        const += float(b @ W) if b is not None else 0.0
    b_in = _w(getattr(mlp, "b_in", None))
    if b_in is not None and not linear:
        const += float(b_in[neuron])
    return v, const


def upstream(model: HookedModel, acts: Mapping[str, Tensor], *, layer: int, pos: int, neuron: int) -> pd.DataFrame:
    """Neuron's pre-activation(s) at pos attributed to the residual components that feed block `layer`'s MLP.

    Columns `component, layer, head, pre` (hook_pre: the gate for gated MLPs) and `pre_linear` for gated MLPs;
    a `bias` row holds the constant (norm bias, b_in) when the family has one.
    """
    fam = spec(model)
    cols = [("pre", False)] + ([("pre_linear", True)] if fam.gated_mlp else [])
    readouts = [preact_readout(model, acts, layer=layer, pos=pos, neuron=neuron, linear=linear) for _, linear in cols]
    labels, parts = _parts(model, acts, torch.stack([v for v, _ in readouts]), pos=pos, upto=layer,
                           mlp_of_last=False, attn_of_last=not fam.parallel_attn_mlp)  # both read-outs in one sweep
    consts = torch.tensor([c for _, c in readouts], dtype=torch.float64)
    if consts.any():
        labels, parts = labels + [("bias", layer, pd.NA)], torch.cat([parts, consts[None]])
    out = _frame(labels, parts[:, 0], cols[0][0])
    for k, (col, _) in enumerate(cols[1:], 1):
        out[col] = parts[:, k].numpy()
    return out
