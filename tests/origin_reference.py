"""The slow reference of trace_origin's batched causal table (one full forward pass per variant, weights really
zeroed, loss from the model): test-only, so it lives here and not in the library."""

from collections.abc import Sequence
from typing import Any

import pandas as pd
from torch import Tensor

from mi_massive._ablate import (CAUSAL_COLUMNS, SEARCH_COLUMNS, Acts, Entry, FindNext, _search, _search_rows,
                                _variants, neuron_hook, zeroed_weights)
from mi_massive._hooks import HookFn, capture, host_float64, run_with_hooks
from mi_massive.arch import hook


def measure(model: Any, tokens: Tensor, target: tuple[int, int, int], hooks: Sequence[tuple[str, HookFn]] = ()
            ) -> tuple[float, float]:
    """(value at (layer, pos, dim), mean next-token loss from the model) of one unbatched run with `hooks`."""
    layer, pos, dim = target
    seen: dict[str, float] = {}

    def read(x: Tensor, hook_point: Any) -> None:
        seen["value"] = float(x[0, pos, dim])

    loss = run_with_hooks(model, tokens[None], [*hooks, (hook.resid_post(layer), read)], return_type="loss")
    return seen["value"], float(loss)


def reference_causal_table(model: Any, tokens: Tensor, target: tuple[int, int, int], *, acts: Acts, writer: int,
                           top: Sequence[int], mean_values: Tensor, first_weight: Entry, find_next: FindNext,
                           mode: str, n_random: int, seed: int, search_steps: int, threshold: float,
                           names: Sequence[str], baseline: tuple[float, float] | None = None
                           ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`causal_table` one variant per full forward pass, weights really zeroed, loss from the model: the slow
    reference the batched table is tested against (`acts` and `baseline` are ignored: measured again)."""
    variants = _variants(model, writer=writer, top=top, mean_values=mean_values, mode=mode, n_random=n_random,
                         seed=seed)
    rows = [("baseline", *measure(model, tokens, target))]
    rows += [(v.label, *measure(model, tokens, target, [neuron_hook(v.layer, v.neurons, v.values)]))
             for v in variants]

    def run_step(weights: list[Entry]) -> tuple[float, Acts]:
        with zeroed_weights(model, weights):
            _, raw = capture(model, tokens[None], [*names, hook.resid_post(target[0])])
        layer, pos, dim = target
        return float(raw[hook.resid_post(layer)][0, pos, dim]), host_float64(raw)

    sets = _search(first_weight, run_step, find_next, search_steps, threshold)
    measured = []
    for weights in sets:
        with zeroed_weights(model, weights):
            measured.append(measure(model, tokens, target))
    more, search = _search_rows(model, sets, measured)
    return pd.DataFrame(rows + more, columns=CAUSAL_COLUMNS), pd.DataFrame(search, columns=SEARCH_COLUMNS)
