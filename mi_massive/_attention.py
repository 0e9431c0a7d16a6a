"""Machinery shared by the attention analyses: sink positions, masks, per-layer hooks, the Eq. 2 split."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from . import _dist, _inputs
from ._types import HookedModel
from .arch import hook, kv_head_of
from .models import model_name

SinkPositions = Sequence[int] | Sequence[Sequence[int]] | None


class VecStats:
    """Running sums over vectors: enough for the mean, mean norm, cosine to a vector and spread around the mean."""

    def __init__(self, shape: tuple[int, ...], d: int):
        self.n = 0
        self.sum = torch.zeros(*shape, d, dtype=torch.float64)
        self.unit = torch.zeros(*shape, d, dtype=torch.float64)
        self.norm = torch.zeros(*shape, dtype=torch.float64)
        self.sq = torch.zeros(*shape, dtype=torch.float64)

    def add(self, x: Tensor) -> None:  # (n, *shape, d)
        x = x.float()
        norm = x.norm(dim=-1)
        self.n += x.shape[0]
        self.sum += x.sum(0).double().cpu()
        self.unit += (x / norm.clamp_min(1e-30)[..., None]).sum(0).double().cpu()
        self.norm += norm.sum(0).double().cpu()
        self.sq += norm.square().sum(0).double().cpu()

    def merge_ranks(self) -> None:
        """Under torchrun, the sums of every rank's vectors (an exact merge); nothing in one process."""
        self.n = int(_dist.sum_(torch.tensor(self.n)))
        self.sum, self.unit, self.norm, self.sq = map(_dist.sum_, (self.sum, self.unit, self.norm, self.sq))

    @property
    def mean(self) -> Tensor:
        return self.sum / self.n

    @property
    def mean_norm(self) -> Tensor:
        return self.norm / self.n

    def cos_to(self, ref: Tensor) -> Tensor:
        """Mean cosine similarity of the vectors to `ref` (the mean of unit vectors, projected on ref's direction)."""
        return (self.unit / self.n * ref / ref.norm(dim=-1, keepdim=True).clamp_min(1e-30)).sum(-1)

    def size_cv(self) -> Tensor:
        """Standard deviation of the vectors' norms over their mean norm (how much their size varies)."""
        m = self.mean_norm
        return (self.sq / self.n - m.square()).clamp_min(0).sqrt() / m.clamp_min(1e-30)

    def spread(self) -> Tensor:
        """RMS distance to the mean, relative to the mean's norm."""
        m = self.mean.norm(dim=-1)
        return (self.sq / self.n - m.square()).clamp_min(0).sqrt() / m.clamp_min(1e-30)


def resolve_sinks(model: HookedModel, prompts: list[Tensor], sink_positions: SinkPositions, *, threshold: float,
                   ratio: float, batch_size: int) -> tuple[tuple[tuple[int, ...], ...], int | None]:
    """Sink positions per prompt (given, or the positions of tokens' massive activations: feature-wide outlier dims,
    such as gemma3-270m's dim 400, are left out, `mi_massive.sites`) and the first layer that holds one."""
    first_layer = None
    if sink_positions is None:
        from .detect import scan_tokens

        found = scan_tokens(model, prompts, threshold=threshold, ratio=ratio, k=1, batch_size=batch_size, progress=False)[0]
        sites = found.sites(features=False)  # one row per (prompt, pos, dim) of a token's massive activation
        per_prompt = [sorted(set(int(p) for p in sites.pos[sites.prompt == i])) for i in range(len(prompts))]
        if not any(per_prompt):
            wide = f" (feature-wide outlier dims {list(found.feature_dims)} are not sinks)" if found.feature_dims else ""
            raise ValueError(f"no token massive activations in {model_name(model)} for these prompts (|x| > "
                             f"{threshold:g} and >= {ratio:g}x median){wide}: pass sink_positions=[0] to name the "
                             "sink tokens yourself")
        first_layer = found.first_layer
    else:
        if isinstance(sink_positions, (str, bytes)) or not isinstance(sink_positions, Sequence):
            raise ValueError(f"sink_positions must be a list of ints or one list per prompt, not {sink_positions!r}")
        nested = len(sink_positions) > 0 and all(isinstance(p, Sequence) for p in sink_positions)
        per_prompt = [list(p) for p in sink_positions] if nested else [list(sink_positions)] * len(prompts)
        if nested and len(per_prompt) != len(prompts):
            raise ValueError(f"sink_positions has {len(per_prompt)} lists for {len(prompts)} prompts")
        if not any(per_prompt):
            raise ValueError("sink_positions is empty: name at least one sink token, e.g. [0]")
        per_prompt = [[_inputs.check_index(f"sink position (prompt {i})", p, len(toks)) for p in pos]
                      for i, (pos, toks) in enumerate(zip(per_prompt, prompts))]
    return tuple(tuple(sorted(set(p))) for p in per_prompt), first_layer


def masks(sinks: Sequence[tuple[int, ...]], n_pos: int, device: Any) -> tuple[Tensor, Tensor]:
    """(batch, pos) masks: the sink tokens, and the queries measured (after the first sink, not a sink)."""
    sink = torch.zeros(len(sinks), n_pos, dtype=torch.bool)
    query = torch.zeros_like(sink)
    for b, pos in enumerate(sinks):
        if pos:
            sink[b, list(pos)] = True
            query[b, pos[0] + 1:] = True
    return sink.to(device), (query & ~sink).to(device)


def sink_batches(prompts: list[Tensor], sinks: Sequence[tuple[int, ...]], *, batch_size: int,
                 device: Any) -> list[tuple[Tensor, Tensor, Tensor]]:
    """(tokens, sink mask, query mask) for each batch of equal-length prompts."""
    return [(b.tokens, *masks([sinks[i] for i in b.index], b.tokens.shape[1], device))
            for b in _inputs.batches(prompts, batch_size=batch_size)]


def check_layers(model: HookedModel, layers: Sequence[int] | None) -> tuple[int, ...] | None:
    n_layers = model.cfg.n_layers
    if layers is None:
        return None
    if isinstance(layers, int) or not isinstance(layers, Sequence) or not layers:
        raise ValueError(f"layers must be a non-empty list of ints in 0..{n_layers - 1}, got {layers!r}")
    return tuple(sorted({_inputs.check_index("layer", l, n_layers) for l in layers}))


def layer_hooks(layers: Sequence[int], kinds: Sequence[str], on_z: Callable[[int, Tensor, dict], Tensor | None]):
    """Hooks that keep `kinds` ("pattern", "k", "v") of each layer until its hook_z fires, then call on_z."""
    kept: dict[tuple[int, str], Tensor] = {}

    def keep(layer: int, kind: str):
        def fn(t: Tensor, hook: Any) -> None:
            kept[(layer, kind)] = t.detach()
        return fn

    def at_z(layer: int):
        def fn(z: Tensor, hook: Any) -> Tensor | None:
            return on_z(layer, z, {k: kept.pop((layer, k)) for k in kinds})
        return fn

    return ([(getattr(hook, k)(l), keep(l, k)) for l in layers for k in kinds]
            + [(hook.z(l), at_z(l)) for l in layers])


def split(pattern: Tensor, v: Tensor, sink: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 2 in z space: (sum over sink keys of p v, sum over the other keys), each (batch, pos, head, d_head).

    pattern is (batch, head, query_pos, key_pos); v is (batch, key_pos, kv_head, d_head): query head h reads
    KV head h // (n_heads // n_kv_heads), as in grouped-query attention.
    """
    n_heads, n_kv = pattern.shape[1], v.shape[2]
    v = v.float()[:, :, kv_head_of(n_heads, n_kv)]  # (batch, key_pos, head, d_head)
    p = pattern.float()
    s = sink[:, None, None, :].float()  # (batch, 1, 1, key_pos)
    return (torch.einsum("bhqk,bkhd->bqhd", p * s, v), torch.einsum("bhqk,bkhd->bqhd", p * (1 - s), v))


def prepare(model: HookedModel, inputs: _inputs.Inputs, sink_positions: SinkPositions, *, threshold: float, ratio: float,
             batch_size: int, prepend_bos: bool | None):
    prompts = _inputs.tokenize(model, inputs, prepend_bos=prepend_bos)
    sinks, first = resolve_sinks(model, prompts, sink_positions, threshold=threshold, ratio=ratio,
                                  batch_size=batch_size)
    return prompts, sinks, first, tuple(_inputs.str_tokens(model, t) for t in prompts)


