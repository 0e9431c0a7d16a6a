"""Attention patterns with the sink tokens marked (circuitsvis `attention_heads`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxtyping import Float
from torch import Tensor

from ._html import Circuits, View, pretty, text

SINK_MARK = "*"


def mark(str_tokens: Sequence[str], sinks: Sequence[int]) -> list[str]:
    """Token labels with the sink tokens starred."""
    return [f"{SINK_MARK}{t}{SINK_MARK}" if i in set(sinks) else t for i, t in enumerate(pretty(str_tokens))]


def attention_view(pattern: Float[Tensor, "head query_pos key_pos"], str_tokens: Sequence[str], sinks: Sequence[int],
                   *, layer: int, heads: Sequence[int]) -> View:
    """The heads' patterns (circuitsvis AttentionHeads), sink tokens starred, with each head's share on the sinks."""
    pattern = pattern.detach().float().cpu()
    share = pattern[:, :, list(sinks)].sum(-1).mean(-1) if len(sinks) else pattern.new_zeros(len(heads))  # (head,)
    caption = (f"layer {layer}: sink tokens (holding massive activations) are starred {list(sinks)}; attention on "
               "them, averaged over queries: " + ", ".join(f"head {h} {float(s):.0%}" for h, s in zip(heads, share)))
    cv = Circuits("AttentionHeads", {"attention": pattern, "tokens": mark(str_tokens, sinks),
                                     "attentionHeadNames": [f"L{layer}H{h}" for h in heads], "maskUpperTri": True})
    return View((text(caption), cv), title=f"Attention patterns, layer {layer}",
                meta={"layer": layer, "heads": list(heads), "sinks": list(sinks), "sink_share": share.tolist()})


def attention_patterns(model: Any, prompt: str, layer: int, *, heads: Sequence[int] | None = None,
                       prepend_bos: bool | None = None) -> View:
    """Run `prompt`; show layer `layer`'s attention patterns with the tokens that hold massive activations starred.

        >>> viz.attention_patterns(model, "Summer is warm. Winter is cold.", 15)   # doctest: +SKIP
    """
    from .. import _inputs
    from .._hooks import capture
    from ..arch import hook
    from ..detect import find_massive_activations

    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be one string, not {type(prompt).__name__}")
    layer = _inputs.check_index("layer", layer, model.cfg.n_layers)
    heads = [_inputs.check_index("head", h, model.cfg.n_heads) for h in (heads or range(model.cfg.n_heads))]
    (toks,) = _inputs.tokenize(model, prompt, prepend_bos=prepend_bos)
    found = find_massive_activations(model, toks[None])
    _, cache = capture(model, toks[None], [hook.pattern(layer)])
    pattern = cache[hook.pattern(layer)][0, heads]  # (head, query_pos, key_pos)
    return attention_view(pattern, _inputs.str_tokens(model, toks), found.positions(0), layer=layer, heads=heads)
