"""Causal checks of an origin: ablate neurons or down-projection weights, run again, read value and loss.

All independent ablations run as the rows of ONE batched forward pass (`run_variants`): a neuron ablation is
a per-row hook on `blocks.{l}.mlp.hook_post`; zeroing the down-projection entry W_out[neuron, dim] for one row
subtracts act[..., neuron] * W_out[neuron, dim] from that row's MLP output at `dim`, at the down projection's
own output (before any post-MLP norm such as Gemma's ln2_post), which equals running with the weight zeroed.
Every row equals the clean run before its first ablated block, so it joins there from the clean residual
(`engine.resumed`) and the earlier blocks are not run again for it: rows that start earlier than the others
(a search weight in an early block) run alone in a short pass up to where the others join them. The iterative
super-weight search is sequential (each step needs the trace of the previous one), but a step only runs the
blocks from the first zeroed weight to the target (`probe`), with weights edited only inside `zeroed_weights`,
which restores every entry in `finally`; its rows are then measured in the batched pass with the others.
Hooks run through `_hooks.run_with_hooks` (they must fire and always come off).
"""

from __future__ import annotations

import bisect
from collections import ChainMap
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from ._hooks import HookFn, capture, host_float64, run_with_hooks
from ._loss import next_token_nll
from ._types import HookedModel
from .engine import resumed
from .arch import hook, spec

CAUSAL_COLUMNS = ["ablation", "massive_value", "loss"]
SEARCH_COLUMNS = ["step", "layer", "row", "col", "value", "massive_value", "loss"]

Entry = tuple[int, int, int]  # (layer, row = residual dim, col = neuron) of the down projection
Acts = Mapping[str, Tensor]  # one run's activations by hook name: batch dim removed, float64, CPU
FindNext = Callable[[Sequence[Entry], Acts], "Entry | None"]


@contextmanager
def zeroed_weights(model: HookedModel, entries: Sequence[Entry]) -> Iterator[Any]:
    """Zero down-projection entries (HF `down_proj.weight[row, col]` = TL `W_out[col, row]`); restore in `finally`."""
    saved: list[tuple[Tensor, int, int, Tensor]] = []
    try:
        with torch.no_grad():
            for layer, row, col in entries:
                W = model.blocks[layer].mlp.W_out  # (d_mlp, d_model), a view of the model's weight
                saved.append((W, col, row, W[col, row].clone()))
                W[col, row] = 0.0
        yield model
    finally:
        with torch.no_grad():
            for W, col, row, old in reversed(saved):
                W[col, row] = old


def neuron_hook(layer: int, neurons: Sequence[int], values: Tensor | None = None) -> tuple[str, HookFn]:
    """A hook that sets `neurons` of block `layer`'s MLP activation to `values` (zero by default) at every position."""
    idx = torch.as_tensor(list(neurons), dtype=torch.long)

    def fn(x: Tensor, hook_point: Any) -> Tensor:
        x = x.clone()  # (batch, pos, d_mlp)
        x[..., idx.to(x.device)] = 0.0 if values is None else values.to(x.device, x.dtype)
        return x

    return hook.mlp_post(layer), fn


@dataclass(frozen=True)
class Variant:
    """One row of a causal run: `neurons` of block `layer` set to `values` (zero by default) and/or the
    down-projection entries `weights` zeroed; neither is the unablated run."""

    label: str
    layer: int = 0
    neurons: tuple[int, ...] = ()
    values: Tensor | None = None
    weights: tuple[Entry, ...] = ()


def row_losses(logits: Float[Tensor, "batch pos vocab"], tokens: Tensor) -> Float[Tensor, "batch"]:
    """Each row's mean next-token loss (float32), as `model(tokens, return_type="loss")` gives for one row.

    One row at a time (`_loss.next_token_nll`): the whole batch's would take fresh memory the size of the
    logits (tens of MB, a page fault per 4 KiB on the CPU); a row's are the same numbers.
    """
    n = len(tokens) - 1  # positions with a next token: the logits may stop there (at the last token they do not)
    nll = torch.stack([next_token_nll(row[None, :n], tokens[1:])[0] for row in logits])  # (batch, n)
    return nll.mean(-1).cpu()


def clean_resid(acts: Acts, start: int) -> Tensor:
    """The clean residual entering block `start` (1, pos, d_model), from one run's activations."""
    return (acts[hook.resid_pre(0)] if start == 0 else acts[hook.resid_post(start - 1)])[None]


def _block_of(name: str) -> int:
    return int(name.split(".")[1])


def _first_block(v: Variant, layer: int) -> int:
    """The first block where row `v` differs from the clean run (the target's block for an unablated row)."""
    return min([v.layer] * bool(v.neurons) + [w[0] for w in v.weights] + [layer])


def run_variants(model: HookedModel, tokens: Tensor, target: tuple[int, int, int], variants: Sequence[Variant],
                 acts: Acts) -> list[tuple[float, float]]:
    """The prompt repeated once per variant, each row with its own ablation; returns (value at the target, loss)
    per row.

    A row equals the clean run (`acts`) before its first ablated block, so it joins there from the clean
    residual and the blocks before it are not run for it. Rows are ordered by that block; the rows that start
    earlier run alone (a short pass, `stop_at_layer`) up to the next start, where the next rows join, and the
    last pass, from the latest start on, holds every row and gives the logits.
    """
    layer, pos, dim = target
    first = [_first_block(v, layer) for v in variants]
    order = sorted(range(len(variants)), key=first.__getitem__)
    variants = [variants[i] for i in order]  # each pass runs a prefix of these rows: its row indices are theirs
    starts = [first[i] for i in order]
    hooks: list[tuple[int, str, HookFn]] = []  # (block, hook name, hook)
    layers = sorted({v.layer for v in variants if v.neurons} | {w[0] for v in variants for w in v.weights})
    post: dict[tuple[int, int], Tensor] = {}  # (row, layer) -> that row's (ablated) MLP activation
    for l in layers:
        def set_neurons(x: Tensor, hook_point: Any, l: int = l) -> Tensor:
            x = x.clone()  # (batch, pos, d_mlp)
            for i, v in enumerate(variants):
                if v.neurons and v.layer == l:
                    idx = torch.as_tensor(v.neurons, dtype=torch.long, device=x.device)
                    x[i, :, idx] = 0.0 if v.values is None else v.values.to(x.device, x.dtype)
                if any(w[0] == l for w in v.weights):
                    post[i, l] = x[i]
            return x

        def drop_weights(x: Tensor, hook_point: Any, l: int = l) -> Tensor:
            x = x.clone()  # (batch, pos, d_model)
            W = model.blocks[l].mlp.W_out
            for i, v in enumerate(variants):
                for wl, row, col in v.weights:
                    if wl == l:
                        x[i, :, row] -= post[i, l][:, col] * W[col, row].to(x.dtype)
            return x

        hooks.append((l, hook.mlp_post(l), set_neurons))
        if any(w[0] == l for v in variants for w in v.weights):
            hooks.append((l, hook.mlp_down_out(l), drop_weights))
    seen: dict[str, Tensor] = {}

    def read(x: Tensor, hook_point: Any) -> None:
        seen["value"] = x[:, pos, dim].detach().float().cpu()

    hooks.append((layer, hook.resid_post(layer), read))
    n_run = max(pos + 1, len(tokens) - 1)  # the last token's logits are not in the loss and, attention being
    # causal, no other position reads it: it is run only when it is the target's
    bounds = sorted(set(starts))
    out: Tensor | None = None  # a pass's output: the residual entering the next start's block, at last the logits
    for s, stop in zip(bounds, bounds[1:] + [None]):
        k = bisect.bisect_right(starts, s)  # the rows that start at or before block s
        resid = clean_resid(acts, s)[:, :n_run]  # (1, pos, d_model): where the rows starting at block s join
        if out is not None:
            resid = torch.cat([out, resid.to(out.device, out.dtype).expand(k - len(out), -1, -1)])
        with resumed(model, s, resid):
            out = run_with_hooks(model, tokens[None, :n_run].expand(k, -1),
                                 [(n, f) for l, n, f in hooks if s <= l and (stop is None or l < stop)],
                                 **({"return_type": "logits"} if stop is None else {"stop_at_layer": stop}))
    losses = row_losses(out, tokens)
    by_row = {i: (float(seen["value"][j]), float(losses[j])) for j, i in enumerate(order)}
    return [by_row[i] for i in range(len(variants))]


def probe(model: HookedModel, tokens: Tensor, target: tuple[int, int, int], weights: Sequence[Entry], acts: Acts,
          names: Sequence[str]) -> tuple[float, Acts]:
    """The value at the target with `weights` really zeroed, and the activations at `names` of that run.

    When every weight sits in the target's own block and no norm follows the MLP, no pass is needed: up to the
    target, zeroing W_out[col, row] changes only that block's MLP output and the residual after it, at `row`,
    by -activation[:, col] * W_out[col, row] (its inputs come before it). Otherwise only the blocks from the
    first zeroed weight up to the target's run: before, the clean residual of `acts` is resumed from (and its
    activations are kept); after, nothing is needed, so the pass stops.
    """
    layer, pos, dim = target
    if all(w[0] == layer for w in weights) and not spec(model).post_sublayer_norm:
        change = torch.zeros_like(acts[hook.mlp_out(layer)])  # (pos, d_model)
        for _, row, col in weights:
            change[:, row] -= acts[hook.mlp_post(layer)][:, col] * float(model.blocks[layer].mlp.W_out[col, row])
        out = ChainMap({n: acts[n] + change for n in (hook.mlp_out(layer), hook.resid_post(layer))}, acts)
        return float(out[hook.resid_post(layer)][pos, dim]), out
    start = min([w[0] for w in weights] + [layer])
    keep = [n for n in dict.fromkeys(names) if start <= _block_of(n) <= layer]
    stop = layer + 1 if layer + 1 < model.cfg.n_layers else None
    with zeroed_weights(model, weights), resumed(model, start, clean_resid(acts, start)):
        _, raw = capture(model, tokens[None], [*keep, hook.resid_post(layer)], stop_at_layer=stop)
    return float(raw[hook.resid_post(layer)][0, pos, dim]), ChainMap(host_float64({n: raw[n] for n in keep}), acts)


def _variants(model: HookedModel, *, writer: int, top: Sequence[int], mean_values: Tensor, mode: str, n_random: int,
              seed: int) -> list[Variant]:
    """Top-k neurons zeroed and/or mean-ablated, then `n_random` draws of as many other neurons zeroed."""
    k, out = len(top), []
    if mode in ("zero", "both"):
        out.append(Variant(f"zero top-{k} neurons of block {writer}", writer, tuple(top)))
    if mode in ("mean", "both"):
        out.append(Variant(f"mean top-{k} neurons of block {writer}", writer, tuple(top), mean_values[list(top)]))
    gen = torch.Generator().manual_seed(seed)
    others = torch.tensor([n for n in range(model.cfg.d_mlp) if n not in set(top)])
    for i in range(n_random):
        pick = others[torch.randperm(len(others), generator=gen)[:k]].tolist()
        out.append(Variant(f"zero {k} random neurons of block {writer} (draw {i})", writer, tuple(pick)))
    return out


def _search(first_weight: Entry, run_step: Callable[[list[Entry]], tuple[float, Acts]], find_next: FindNext,
            search_steps: int, threshold: float) -> list[list[Entry]]:
    """The weight sets of the iterative super-weight search: zero the strongest weight, trace again, add the
    entry that now writes the target most, until the target is no longer massive, no new entry is found or
    `search_steps` sets are reached. The last set needs no run of its own (its row is measured with the rest)."""
    weights, sets = [first_weight], []
    for step in range(1, search_steps + 1):
        sets.append(list(weights))
        if step == search_steps:
            break
        v, acts = run_step(weights)
        if abs(v) < threshold:
            break
        nxt = find_next(weights, acts)
        if nxt is None or nxt in weights:
            break
        weights.append(nxt)
    return sets


def _search_rows(model: HookedModel, sets: list[list[Entry]], measured: Sequence[tuple[float, float]]
                 ) -> tuple[list[tuple], list[tuple]]:
    rows, search = [], []
    for step, (weights, (v, l)) in enumerate(zip(sets, measured), 1):
        lay, row, col = weights[-1]
        search.append((step, lay, row, col, float(model.blocks[lay].mlp.W_out[col, row]), v, l))
        label = "zero super weight" if step == 1 else f"zero {step} weights (search step {step})"
        rows.append((f"{label} down_proj[{lay}][{row}, {col}]", v, l))
    return rows, search


def causal_table(model: HookedModel, tokens: Tensor, target: tuple[int, int, int], *, acts: Acts, writer: int,
                 top: Sequence[int], mean_values: Tensor, first_weight: Entry, find_next: FindNext, mode: str,
                 n_random: int, seed: int, search_steps: int, threshold: float, names: Sequence[str],
                 baseline: tuple[float, float] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Baseline, top-k neurons zeroed / mean-ablated, random controls, super weight zeroed, iterative search.

    The search runs first, each step a short pass (`probe`: from the first zeroed weight's block to the
    target's); then every row, search sets included, is one batched pass resumed from the clean run `acts`
    (plus a baseline row unless `baseline` = (value, loss) comes from a run already made).
    `find_next(weights, acts)` reads the activations of a run with `weights` zeroed and returns the entry that
    now writes the target most (the next super weight), or None.
    """
    sets = _search(first_weight, lambda w: probe(model, tokens, target, w, acts, names), find_next, search_steps,
                   threshold)
    variants = ([] if baseline else [Variant("baseline")]) + _variants(
        model, writer=writer, top=top, mean_values=mean_values, mode=mode, n_random=n_random, seed=seed)
    measured = run_variants(model, tokens, target, variants + [Variant("", weights=tuple(w)) for w in sets], acts)
    rows = ([("baseline", *baseline)] if baseline else []) + [(v.label, *m) for v, m in zip(variants, measured)]
    more, search = _search_rows(model, sets, measured[len(variants):])
    return pd.DataFrame(rows + more, columns=CAUSAL_COLUMNS), pd.DataFrame(search, columns=SEARCH_COLUMNS)
