"""trace_origin and attention_sinks on Vision Transformers.

`trace_origin` is the language models' own (`mi_massive.origin`), run without a forward pass on the activations of
one image, with the token positions standing in for token ids so that its result names "CLS", "reg k", "patch (r, c)";
the causal check is made here, on the image, with the output change in place of a next-token loss. Attention in a
ViT is bidirectional: a sink's alpha is the mean attention it receives from every query.

    >>> origin = trace_origin(model, sample_images(1))      # doctest: +SKIP
    >>> sinks = attention_sinks(model, sample_images(4))    # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from .. import _attribution as attr
from .._ablate import neuron_hook, zeroed_weights
from .._attention import VecStats
from .._hooks import capture
from ..arch import hook
from ..attention import AttentionSinks
from ..models import model_name
from ..origin import Origin
from ..origin import trace_origin as _trace_origin
from . import _run
from .detect import find_massive_activations
from .images import Layout, layout, prepare_images

NOTE = ("Vision Transformer: the causal table's 'loss' is NaN (no next-token loss); 'output_change' is "
        "|out' - out| / |out| of the model's output (logits or embedding) on this image")


@dataclass(frozen=True, repr=False)
class VisionOrigin(Origin):
    """The language models' `Origin` of one image's massive activation; its causal table has `output_change`
    (relative change of the model's output) where a language model's has a next-token loss (NaN here)."""

    def sentence(self) -> str:
        s = Origin.sentence(dataclasses.replace(self, causal=self.causal.iloc[:0]))  # (without the loss clause)
        if len(self.causal) > 1:
            after = self.causal.iloc[1]
            s += f"; {after.ablation}: value {after.massive_value:.4g}, output change {after.output_change:.3g}"
        return s


class _TokenNames:
    """Token 'ids' that are positions, named as the layout names them (what `_inputs.str_tokens` reads)."""

    def __init__(self, names: tuple[str, ...]):
        self.names = names

    def __len__(self) -> int:
        return len(self.names)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.names[i] for i in ids]


@contextmanager
def _positions_as_tokens(model: Any, lay: Layout) -> Iterator[Tensor]:
    """For the body, the bridge reads position ids as its tokens; its tokenizer and sizes are put back after."""
    saved = model.tokenizer, model.cfg.d_vocab, model.cfg.n_ctx
    try:
        model.tokenizer = _TokenNames(lay.names())
        model.cfg.d_vocab, model.cfg.n_ctx = lay.n_tokens, max(model.cfg.n_ctx, lay.n_tokens)
        yield torch.arange(lay.n_tokens)
    finally:
        model.tokenizer, model.cfg.d_vocab, model.cfg.n_ctx = saved


def trace_origin(model: Any, image: Any, *, layer: int | None = None, pos: int | None = None, dim: int | None = None,
                 top_k: int = 5, ablate: bool = True, n_random: int = 3, seed: int = 0, threshold: float = 100.0,
                 ratio: float = 1000.0) -> VisionOrigin:
    """Who wrote x[layer, pos, dim] of one image: components, writing block, neurons, super weight (the language
    models' `Origin`); with `ablate`, the massive value and the output change when the top neurons, the super
    weight or as many random neurons of the same block are zeroed."""
    pixels = prepare_images(model, image)
    if len(pixels) != 1:
        raise ValueError(f"trace_origin traces one image; got {len(pixels)}: pass one, e.g. images[0]")
    lay = layout(model, pixels)
    _, cache = capture(model, pixels, attr.needed_hooks(model))
    with _positions_as_tokens(model, lay) as tokens:
        origin = _trace_origin(model, tokens, layer=layer, pos=pos, dim=dim, top_k=top_k, ablate=False, cache=cache,
                               threshold=threshold, ratio=ratio)
    origin = VisionOrigin(**{f.name: getattr(origin, f.name) for f in dataclasses.fields(origin)})
    if not (ablate and origin.found):
        return dataclasses.replace(origin, note=NOTE)
    L, P, D, W = origin.layer, origin.pos, origin.dim, origin.writer_layer
    top = [int(n) for n in origin.neurons.neuron]
    gen = torch.Generator().manual_seed(seed)
    pool = torch.tensor([n for n in range(model.cfg.d_mlp) if n not in top])
    rows = [("baseline", [], None)]
    rows.append((f"zero top {len(top)} neurons of block {W}", [neuron_hook(W, top)], None))
    if origin.super_weight is not None:
        sw = origin.super_weight
        rows.append((f"zero super weight down_proj[{sw.layer}][{sw.row}, {sw.col}]", [], (sw.layer, sw.row, sw.col)))
    for i in range(n_random):
        pick = pool[torch.randperm(len(pool), generator=gen)[: len(top)]].tolist()
        rows.append((f"zero {len(top)} random neurons of block {W} (draw {i})", [neuron_hook(W, pick)], None))
    clean = None
    out = []
    for name, hooks, weight in rows:
        got: dict[str, Tensor] = {}
        keep = (hook.resid_post(L), lambda x, hook: got.__setitem__("x", x[0, P, D].item()))
        with zeroed_weights(model, [weight] if weight else []):
            y = _run.forward(model, pixels, [*hooks, keep])
        clean = y if clean is None else clean
        out.append({"ablation": name, "massive_value": got["x"], "loss": float("nan"),
                    "output_change": float((y - clean).norm() / clean.norm())})
    return dataclasses.replace(origin, causal=pd.DataFrame(out), note=NOTE)


def attention_sinks(model: Any, images: Any, *, sink_positions: Sequence[int] | None = None, epsilon: float = 0.3,
                    threshold: float = 100.0, ratio: float = 1000.0, batch_size: int = 8) -> AttentionSinks:
    """Per layer and head, the attention every query puts on the sink tokens (the language models'
    `AttentionSinks`). Sinks: `sink_positions` in every image, else each image's own tokens holding a massive
    activation (CLS and registers; patches, which may differ between images). Queries are every non-sink token; a
    sink's alpha is the mean attention it receives over all queries (attention is bidirectional)."""
    if not isinstance(epsilon, (int, float)) or not 0 <= epsilon <= 1:
        raise ValueError(f"epsilon must be an attention probability in 0..1, got {epsilon!r}")
    pixels = prepare_images(model, images)
    lay, n = layout(model, pixels), len(pixels)
    first = None
    if sink_positions is None:
        sites = find_massive_activations(model, pixels, threshold=threshold, ratio=ratio, batch_size=batch_size).sites()
        per_image = [tuple(sorted({int(p) for p in sites.pos[sites.prompt == i]})) for i in range(n)]
        if not all(per_image):
            raise ValueError(f"no massive activation in image(s) {[i for i, s in enumerate(per_image) if not s][:5]} "
                             f"of {model_name(model)}: pass sink_positions=[0] to name the sink tokens yourself")
        first = int(sites.first_layer.min())
    else:
        sinks = tuple(sorted({int(p) for p in sink_positions}))
        if not sinks or not all(0 <= p < lay.n_tokens for p in sinks):
            raise ValueError(f"sink_positions must name tokens in 0..{lay.n_tokens - 1}, got {sink_positions!r}")
        per_image = [sinks] * n
    cfg = model.cfg
    L, H = cfg.n_layers, cfg.n_heads
    sink_all = torch.zeros(n, lay.n_tokens, dtype=torch.bool)  # (image, pos)
    for i, pos in enumerate(per_image):
        sink_all[i, list(pos)] = True
    mass = torch.zeros(L, H, dtype=torch.float64)
    alpha = torch.zeros_like(mass)
    vec = {(kind, part): [VecStats((H,), cfg.d_head) for _ in range(L)] for kind in "kv" for part in ("sink", "other")}
    kept: dict[tuple[int, str], Tensor] = {}
    rows = [0]

    def sink_of(x: Tensor) -> Tensor:  # (batch, pos) of this batch
        return sink_all[rows[0]: rows[0] + len(x)].to(x.device)

    def save(layer: int, kind: str):
        def fn(x: Tensor, hook: Any) -> None:
            kept[(layer, kind)] = x.detach().float()
        return fn

    def on_pattern(layer: int):
        def fn(p: Tensor, hook: Any) -> None:
            p = p.detach().float()  # (batch, head, query_pos, key_pos)
            s = sink_of(p)[:, None].float()  # (batch, 1, pos)
            on_sink = (p * s[:, :, None, :]).sum(-1)  # (batch, head, query_pos)
            mass[layer] += (on_sink * (1 - s)).sum((0, 2)).double().cpu()  # from queries that are not sinks
            alpha[layer] += (p.mean(2) * s).sum((0, 2)).double().cpu()  # mean over every query, per sink
        return fn

    def on_v(layer: int):
        def fn(v: Tensor, hook: Any) -> None:
            s = sink_of(v)
            for kind in "kv":
                x = kept.pop((layer, kind)) if kind == "k" else v.detach().float()  # (batch, pos, head, d_head)
                vec[(kind, "sink")][layer].add(x[s])
                vec[(kind, "other")][layer].add(x[~s])
        return fn

    hooks = []
    for l in range(L):
        hooks += [(hook.k(l), save(l, "k")), (hook.v(l), on_v(l)), (hook.pattern(l), on_pattern(l))]
    _run.forward(model, pixels, hooks, batch_size=batch_size, on_batch=lambda start: rows.__setitem__(0, start))
    n_sink = int(sink_all.sum())
    n_query = n * lay.n_tokens - n_sink
    k_other = vec[("k", "other")]

    def stat(kind: str, part: str) -> Tensor:
        return torch.stack([s.mean_norm for s in vec[(kind, part)]]).float()

    return AttentionSinks(
        sink_mass=(mass / max(n_query, 1)).float(), alpha=(alpha / n_sink).float(),
        k_norm_sink=stat("k", "sink"), k_norm_other=stat("k", "other"),
        k_cos_sink=torch.stack([s.cos_to(o.mean) for s, o in zip(vec[("k", "sink")], k_other)]).float(),
        k_cos_other=torch.stack([o.cos_to(o.mean) for o in k_other]).float(),
        v_norm_sink=stat("v", "sink"), v_norm_other=stat("v", "other"),
        sink_positions=tuple(per_image), first_massive_layer=first, str_tokens=(lay.names(),) * n,
        epsilon=float(epsilon), model_name=model_name(model),
    )
