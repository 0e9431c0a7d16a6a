"""Causal checks of an origin: ablate neurons or down-projection weights, run again, read value and loss.

All independent ablations run as the rows of ONE batched forward pass (`run_variants`): a neuron ablation is
a per-row hook on `blocks.{l}.mlp.hook_post`; zeroing the down-projection entry W_out[neuron, dim] for one row
subtracts act[..., neuron] * W_out[neuron, dim] from that row's MLP output at `dim`, at the down projection's
own output (before any post-MLP norm such as Gemma's ln2_post), which equals running with the weight zeroed.
The iterative super-weight search is sequential (each step needs the trace of the previous one): one forward
per step, with weights edited only inside `zeroed_weights`, which restores every entry in `finally`.
Hooks run through `_hooks.run_with_hooks` (they must fire and always come off).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from ._hooks import HookFn, capture, run_with_hooks
from .arch import hook

CAUSAL_COLUMNS = ["ablation", "massive_value", "loss"]
SEARCH_COLUMNS = ["step", "layer", "row", "col", "value", "massive_value", "loss"]

Entry = tuple[int, int, int]  # (layer, row = residual dim, col = neuron) of the down projection
Acts = dict[str, Tensor]  # one run's activations by hook name: batch dim removed, float64, CPU
FindNext = Callable[[Sequence[Entry], Acts], "Entry | None"]
Measured = tuple[float, float, "Acts | None"]  # (value at the target, mean next-token loss, activations)


def down_proj_out(layer: int) -> str:
    """The down projection's own output: block `layer`'s MLP output before any post-MLP norm."""
    return f"blocks.{layer}.mlp.out.hook_out"


@contextmanager
def zeroed_weights(model: Any, entries: Sequence[Entry]) -> Iterator[Any]:
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
    down-projection entry `weight` zeroed; neither is the unablated run."""

    label: str
    layer: int = 0
    neurons: tuple[int, ...] = ()
    values: Tensor | None = None
    weight: Entry | None = None


def row_losses(logits: Float[Tensor, "batch pos vocab"], tokens: Tensor) -> Float[Tensor, "batch"]:
    """Each row's mean next-token loss (float32), as `model(tokens, return_type="loss")` gives for one row."""
    logp = logits[:, :-1].float().log_softmax(-1)
    target = tokens[1:].to(logp.device)[None, :, None].expand(logp.shape[0], -1, 1)
    return -logp.gather(-1, target)[..., 0].mean(-1).cpu()


def run_variants(model: Any, tokens: Tensor, target: tuple[int, int, int], variants: Sequence[Variant], *,
                 names: Sequence[str] = (), keep_row: int | None = None) -> list[Measured]:
    """One forward pass of the prompt repeated once per variant, each row with its own ablation.

    The rows are identical before the first ablated block, so the blocks before it run once (batch 1) and the
    residual is repeated into one row per variant at that block's input. Returns (value at the target, loss,
    activations at `names` of row `keep_row` or None) per row.
    """
    layer, pos, dim = target
    n = len(variants)
    hooks: list[tuple[str, HookFn]] = []
    ablated = [v.layer for v in variants if v.neurons] + [v.weight[0] for v in variants if v.weight]
    start = min(ablated, default=0)
    if n > 1 and start > 0:
        hooks.append((hook.resid_pre(start), lambda x, hook_point: x.expand(n, -1, -1).contiguous()))
    post: dict[int, Tensor] = {}  # row -> its (ablated) MLP activation, for rows that drop a weight
    layers = sorted(set(ablated))
    for l in layers:
        def set_neurons(x: Tensor, hook_point: Any, l: int = l) -> Tensor:
            x = x.clone()  # (batch, pos, d_mlp)
            for i, v in enumerate(variants):
                if v.neurons and v.layer == l:
                    idx = torch.as_tensor(v.neurons, dtype=torch.long, device=x.device)
                    x[i, :, idx] = 0.0 if v.values is None else v.values.to(x.device, x.dtype)
                if v.weight and v.weight[0] == l:
                    post[i] = x[i]
            return x

        def drop_weight(x: Tensor, hook_point: Any, l: int = l) -> Tensor:
            x = x.clone()  # (batch, pos, d_model)
            for i, v in enumerate(variants):
                if v.weight and v.weight[0] == l:
                    _, row, col = v.weight
                    x[i, :, row] -= post[i][:, col] * model.blocks[l].mlp.W_out[col, row].to(x.dtype)
            return x

        hooks.append((hook.mlp_post(l), set_neurons))
        if any(v.weight and v.weight[0] == l for v in variants):
            hooks.append((down_proj_out(l), drop_weight))
    seen: dict[str, Tensor] = {}
    keep = list(dict.fromkeys(names)) if keep_row is not None else []

    def saver(name: str) -> HookFn:
        def save(x: Tensor, hook_point: Any) -> None:
            seen[name] = x[keep_row if x.shape[0] > 1 else 0].detach()  # batch 1 before the rows split

        return save

    def read(x: Tensor, hook_point: Any) -> None:
        seen["value"] = x[:, pos, dim].detach().float().cpu().expand(n)

    hooks += [(n, saver(n)) for n in keep] + [(hook.resid_post(layer), read)]
    logits = run_with_hooks(model, tokens[None].expand(1 if start > 0 else n, -1), hooks, return_type="logits")
    losses = row_losses(logits, tokens)
    acts = {n: seen[n].double().cpu() for n in keep}
    return [(float(seen["value"][i]), float(losses[i]), acts if i == keep_row else None) for i in range(n)]


def _variants(model: Any, *, writer: int, top: Sequence[int], mean_values: Tensor, mode: str, n_random: int,
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


def _search(model: Any, first: Measured, weights: list[Entry], run_step: Callable[[list[Entry], bool], Measured],
            find_next: FindNext, search_steps: int, threshold: float) -> tuple[list[tuple], list[tuple]]:
    """The iterative super-weight search from step 1's measurement: zero the next writer, run again, repeat."""
    rows, search = [], []
    v, l, acts = first
    for step in range(1, search_steps + 1):
        if step > 1:
            v, l, acts = run_step(weights, step < search_steps)
        lay, row, col = weights[-1]
        search.append((step, lay, row, col, float(model.blocks[lay].mlp.W_out[col, row]), v, l))
        label = "zero super weight" if step == 1 else f"zero {step} weights (search step {step})"
        rows.append((f"{label} down_proj[{lay}][{row}, {col}]", v, l))
        if step == search_steps or abs(v) < threshold:
            break
        nxt = find_next(weights, acts)
        if nxt is None or nxt in weights:
            break
        weights.append(nxt)
    return rows, search


def causal_table(model: Any, tokens: Tensor, target: tuple[int, int, int], *, writer: int, top: Sequence[int],
                 mean_values: Tensor, first_weight: Entry, find_next: FindNext, mode: str, n_random: int, seed: int,
                 search_steps: int, threshold: float, names: Sequence[str],
                 baseline: tuple[float, float] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Baseline, top-k neurons zeroed / mean-ablated, random controls, super weight zeroed, iterative search.

    The independent rows are one batched forward (plus a baseline row unless `baseline` = (value, loss) comes
    from a run already made); the super-weight row also keeps the activations at `names` for step 2. Each
    further search step is one forward. `find_next(weights, acts)` reads the activations of a run with
    `weights` zeroed and returns the entry that now writes the target most (the next super weight), or None.
    """
    variants = ([] if baseline else [Variant("baseline")]) + _variants(
        model, writer=writer, top=top, mean_values=mean_values, mode=mode, n_random=n_random, seed=seed)
    variants.append(Variant("super weight", weight=first_weight))
    measured = run_variants(model, tokens, target, variants, names=names if search_steps > 1 else (),
                            keep_row=len(variants) - 1)
    rows = ([("baseline", *baseline)] if baseline else []) + [(v.label, m[0], m[1]) for v, m in
                                                              zip(variants[:-1], measured[:-1])]

    def run_step(weights: list[Entry], keep: bool) -> Measured:
        with zeroed_weights(model, weights):
            return run_variants(model, tokens, target, [Variant("")], names=names if keep else (), keep_row=0)[0]

    more, search = _search(model, measured[-1], [first_weight], run_step, find_next, search_steps, threshold)
    return pd.DataFrame(rows + more, columns=CAUSAL_COLUMNS), pd.DataFrame(search, columns=SEARCH_COLUMNS)


def measure(model: Any, tokens: Tensor, target: tuple[int, int, int], hooks: Sequence[tuple[str, HookFn]] = ()
            ) -> tuple[float, float]:
    """(value at (layer, pos, dim), mean next-token loss from the model) of one unbatched run with `hooks`."""
    layer, pos, dim = target
    seen: dict[str, float] = {}

    def read(x: Tensor, hook_point: Any) -> None:
        seen["value"] = float(x[0, pos, dim])

    loss = run_with_hooks(model, tokens[None], [*hooks, (hook.resid_post(layer), read)], return_type="loss")
    return seen["value"], float(loss)


def reference_causal_table(model: Any, tokens: Tensor, target: tuple[int, int, int], *, writer: int,
                           top: Sequence[int], mean_values: Tensor, first_weight: Entry, find_next: FindNext,
                           mode: str, n_random: int, seed: int, search_steps: int, threshold: float,
                           names: Sequence[str], baseline: tuple[float, float] | None = None
                           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`causal_table` one variant per forward pass, weights really zeroed, loss from the model: the slow
    reference the batched table is tested against (`baseline` is ignored: it is measured again)."""
    variants = _variants(model, writer=writer, top=top, mean_values=mean_values, mode=mode, n_random=n_random,
                         seed=seed)
    rows = [("baseline", *measure(model, tokens, target))]
    rows += [(v.label, *measure(model, tokens, target, [neuron_hook(v.layer, v.neurons, v.values)]))
             for v in variants]

    def run_step(weights: list[Entry], keep: bool) -> Measured:
        with zeroed_weights(model, weights):
            v, l = measure(model, tokens, target)
            acts = None
            if keep:
                _, raw = capture(model, tokens[None], names)
                acts = {n: t[0].double().cpu() for n, t in raw.items()}
        return v, l, acts

    more, search = _search(model, run_step([first_weight], search_steps > 1), [first_weight], run_step, find_next,
                           search_steps, threshold)
    return pd.DataFrame(rows + more, columns=CAUSAL_COLUMNS), pd.DataFrame(search, columns=SEARCH_COLUMNS)
