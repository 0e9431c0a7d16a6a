"""Attention patterns with the sink tokens marked (circuitsvis `attention_heads`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._html import Circuits, View, pretty, text

SINK_MARK = "*"


def mark(str_tokens: Sequence[str], sinks: Sequence[int]) -> list[str]:
    """Token labels with the sink tokens starred."""
    return [f"{SINK_MARK}{t}{SINK_MARK}" if i in set(sinks) else t for i, t in enumerate(pretty(str_tokens))]


def _check_heads(heads: Sequence[int] | None, n_heads: int) -> list[int]:
    from .._inputs import check_index

    return list(range(n_heads)) if heads is None else [check_index("head", h, n_heads) for h in heads]


def show_attention(patterns: Any, *, layer: int | None = None, heads: Sequence[int] | None = None) -> View:
    """One captured layer's heads (circuitsvis AttentionHeads), sink tokens starred, with each head's share on them."""
    layer = patterns.layers[0] if layer is None else layer
    pattern = patterns.at(layer)  # (head, query_pos, key_pos)
    heads = _check_heads(heads, pattern.shape[0])
    share = patterns.sink_share(layer)[heads]  # (head,)
    sinks = list(patterns.sinks)
    if sinks:
        caption = (f"layer {layer}: sink tokens (holding massive activations) are starred {sinks}; attention on "
                   "them, averaged over queries: " + ", ".join(f"head {h} {float(s):.0%}" for h, s in zip(heads, share)))
    else:
        caption = f"layer {layer}: no token holds a massive activation, so no sink is starred"
    cv = Circuits("AttentionHeads", {"attention": pattern[heads], "tokens": mark(patterns.str_tokens, sinks),
                                     "attentionHeadNames": [f"L{layer}H{h}" for h in heads], "maskUpperTri": True})
    return View((text(caption), cv), title=f"Attention patterns, layer {layer}",
                meta={"layer": layer, "heads": heads, "sinks": sinks, "sink_share": share.tolist()})
