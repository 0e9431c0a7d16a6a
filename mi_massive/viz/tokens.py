"""Tokens coloured by their massive activation, with the per-dimension summary (MassiveActivations.show)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from ._html import Circuits, View, pretty, text


def colored_tokens(str_tokens: Sequence[str], values: Sequence[float], *, max_value: float | None = None) -> Circuits:
    """circuitsvis `colored_tokens`: one token per box, shaded by its value."""
    values = [float(v) for v in values]
    return Circuits("ColoredTokens", {"tokens": pretty(str_tokens), "values": values, "minValue": 0.0,
                                      "maxValue": max_value or max(max(values), 1e-9)})


def peak_per_token(found: Any, prompt: int) -> list[float]:
    """Largest massive |x| held by each token of `prompt` (over layers and dims; 0 where none)."""
    peak = torch.zeros(len(found.str_tokens[prompt]))
    sel = found.prompt == prompt
    if sel.any():
        peak.scatter_reduce_(0, found.pos[sel], found.value[sel].abs(), reduce="amax")
    return peak.tolist()


def _few(items: Sequence[Any], n: int = 8) -> str:
    more = f" ... ({len(items)} in all)" if len(items) > n else ""
    return ", ".join(map(str, items[:n])) + more


def dims_table(found: Any) -> pd.DataFrame:
    """`found.summary()` for reading: a dim that fires at every position of each prompt where it fires is one
    row "all positions" with its |x| range, not a list of every token."""
    df = found.summary()
    hits = found.to_dataframe()
    rows = []
    for _, row in df.iterrows():
        g = hits[hits.dim == row.dim]
        everywhere = all(len(set(gp.pos)) == len(found.str_tokens[p]) for p, gp in g.groupby("prompt"))
        if isinstance(row.positions, str):  # a feature-wide dim: summary() says "all positions" / "k of n positions"
            everywhere = True
        rows.append({
            "dim": row.dim, "layers": f"{row.first_layer}..{row.last_layer}",
            "positions": (row.positions if isinstance(row.positions, str) else "all positions") if everywhere
            else _few(row.positions),
            "tokens": "" if everywhere else _few([repr(t) for t in pretty(row.tokens)]),
            "|x| range": f"{row.min_abs:.4g}..{row.max_abs:.4g}", "n_prompts": row.n_prompts, "n_hits": row.n_hits,
        })
    return pd.DataFrame(rows, columns=["dim", "layers", "positions", "tokens", "|x| range", "n_prompts", "n_hits"])


def show_massive(found: Any, *, max_prompts: int = 8) -> View:
    """Each prompt's tokens shaded by their peak massive |x|, then one summary row per massive dimension."""
    top = float(found.value.abs().max()) if len(found) else 1.0
    parts: list[Any] = [text(found.sentence())]
    shown = range(min(len(found.str_tokens), max_prompts))
    for p in shown:
        parts.append(text(f"prompt {p}: tokens shaded by peak massive |x| (white: none)"))
        parts.append(colored_tokens(found.str_tokens[p], peak_per_token(found, p), max_value=top))
    if len(found.str_tokens) > max_prompts:
        parts.append(text(f"... {len(found.str_tokens) - max_prompts} more prompt(s)"))
    if len(found):
        parts.append(dims_table(found))
    return View(tuple(parts), title=f"Massive activations in {found.model_name}",
                meta={"prompts": list(shown), "n_hits": len(found)})
