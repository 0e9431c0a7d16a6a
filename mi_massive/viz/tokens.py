"""Tokens coloured by their massive activation, with the per-dimension summary (MassiveActivations.show)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
        parts.append(found.summary())
    return View(tuple(parts), title=f"Massive activations in {found.model_name}",
                meta={"prompts": list(shown), "n_hits": len(found)})
