"""Causal checks of an origin: ablate neurons or down-projection weights, run again, read value and loss.

Weight edits happen only inside `zeroed_weights`, which restores every entry in `finally`; neuron ablations
are hooks run through `_hooks.run_with_hooks` (they must fire and always come off).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from ._hooks import HookFn, run_with_hooks
from .arch import hook

CAUSAL_COLUMNS = ["ablation", "massive_value", "loss"]
SEARCH_COLUMNS = ["step", "layer", "row", "col", "value", "massive_value", "loss"]

Entry = tuple[int, int, int]  # (layer, row = residual dim, col = neuron) of the down projection


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


def measure(model: Any, tokens: Tensor, target: tuple[int, int, int], hooks: Sequence[tuple[str, HookFn]] = ()
            ) -> tuple[float, float]:
    """(value at (layer, pos, dim), mean next-token loss) of one run with `hooks`."""
    layer, pos, dim = target
    seen: dict[str, float] = {}

    def read(x: Tensor, hook_point: Any) -> None:
        seen["value"] = float(x[0, pos, dim])

    loss = run_with_hooks(model, tokens[None], [*hooks, (hook.resid_post(layer), read)], return_type="loss")
    return seen["value"], float(loss)


def causal_table(
    model: Any,
    tokens: Tensor,
    target: tuple[int, int, int],
    *,
    writer: int,
    top: Sequence[int],
    mean_values: Tensor,
    first_weight: Entry,
    find_next: Callable[[Sequence[Entry]], Entry | None],
    mode: str,
    n_random: int,
    seed: int,
    search_steps: int,
    threshold: float,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Baseline, top-k neurons zeroed / mean-ablated, super weight zeroed, random controls, iterative search.

    `find_next(weights)` runs the model with `weights` zeroed and returns the entry that now writes the target
    most (the next super weight), or None.
    """
    k, rows = len(top), []
    value, loss = measure(model, tokens, target)
    rows.append(("baseline", value, loss))
    if mode in ("zero", "both"):
        rows.append((f"zero top-{k} neurons of block {writer}", *measure(model, tokens, target, [neuron_hook(writer, top)])))
    if mode in ("mean", "both"):
        vals = mean_values[list(top)]
        rows.append((f"mean top-{k} neurons of block {writer}",
                     *measure(model, tokens, target, [neuron_hook(writer, top, vals)])))
    d_mlp = model.cfg.d_mlp
    gen = torch.Generator().manual_seed(seed)
    others = torch.tensor([n for n in range(d_mlp) if n not in set(top)])
    for i in range(n_random):
        pick = others[torch.randperm(len(others), generator=gen)[:k]].tolist()
        rows.append((f"zero {k} random neurons of block {writer} (draw {i})",
                     *measure(model, tokens, target, [neuron_hook(writer, pick)])))
    weights, search = [first_weight], []
    for step in range(1, search_steps + 1):
        with zeroed_weights(model, weights):
            v, l = measure(model, tokens, target)
        lay, row, col = weights[-1]
        w_value = float(model.blocks[lay].mlp.W_out[col, row])
        search.append((step, lay, row, col, w_value, v, l))
        label = "zero super weight" if step == 1 else f"zero {step} weights (search step {step})"
        rows.append((f"{label} down_proj[{lay}][{row}, {col}]", v, l))
        if step == search_steps or abs(v) < threshold:
            break
        nxt = find_next(weights)
        if nxt is None or nxt in weights:
            break
        weights.append(nxt)
    return pd.DataFrame(rows, columns=CAUSAL_COLUMNS), pd.DataFrame(search, columns=SEARCH_COLUMNS)
