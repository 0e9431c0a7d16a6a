"""Attention sinks and the implicit attention bias (Sun et al. 2024, Sec. 4, Eq. 2).

Massive activations make heads put most of their attention on a few tokens (the sinks), and the value
updates from those tokens act as a near-constant bias in every attention output:

    attn_out(q) = sum_{i in C} p_qi v_i W_O  +  sum_{i not in C} p_qi v_i W_O        (C = sink tokens)

`attention_sinks` measures the attention mass on C, the alpha metric and the sink keys and values;
`implicit_bias` measures how constant the first term is and what the model loses when it is replaced by its
mean (bias swap) or removed; `swap_implicit_bias` is the intervention as a context manager. Everything is
computed inside hooks, one layer at a time, so no attention cache is ever kept.

Queries at a sink position are excluded from every statistic over queries (position 0 can only attend to
itself, so its "sink mass" is 1 by construction); so are queries before the first sink, which cannot see it.

    >>> from mi_massive import attention_sinks, implicit_bias
    >>> from mi_massive.testing import tiny_model
    >>> model = tiny_model("llama")           # planted at BOS; load_model("smollm2-135m") for the paper's
    >>> attention_sinks(model, ["Summer is warm. Winter is cold."]).sink_positions
    ((0,),)
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

from . import _dist, _inputs, sites
from ._attention import SinkPositions, VecStats, check_layers, layer_hooks, masks, prepare, sink_batches, split
from ._hooks import hooked, run_with_hooks
from ._results import Result
from ._types import HookedModel
from .arch import hook, n_kv_heads
from .models import model_name

HOOKS = {kind: hook.templates[kind] for kind in ("pattern", "k", "v", "z")}


# --- attention sinks -----------------------------------------------------------------------------------------

@dataclass(frozen=True, repr=False)
class AttentionSinks(Result):
    """Per layer and head: attention mass on the sink tokens, alpha, and the sink tokens' keys and values."""

    VIEW = "heatmaps:show_sinks"

    sink_mass: Float[Tensor, "layer head"]  # mean over queries (not sinks, after the first sink) of p(query -> C)
    alpha: Float[Tensor, "layer head"]  # mean over sink tokens k of mean_{i >= k} p(i -> k)
    k_norm_sink: Float[Tensor, "layer kv_head"]  # mean |k| (pre-RoPE hook_k) of the sink tokens
    k_norm_other: Float[Tensor, "layer kv_head"]
    k_cos_sink: Float[Tensor, "layer kv_head"]  # mean cosine of sink keys to the mean key of the other tokens
    k_cos_other: Float[Tensor, "layer kv_head"]  # mean cosine of the other tokens' keys to their mean key
    v_norm_sink: Float[Tensor, "layer kv_head"]
    v_norm_other: Float[Tensor, "layer kv_head"]
    sink_positions: tuple[tuple[int, ...], ...]  # per prompt
    first_massive_layer: int | None  # first block whose output holds a sink's massive activation (None: given)
    str_tokens: tuple[tuple[str, ...], ...]
    epsilon: float  # alpha threshold of the sink-rate metric
    model_name: str
    hook_names: tuple[str, ...] = tuple(HOOKS.values())
    prepend_bos: bool | None = None  # the BOS condition of the prompts (None: not recorded)
    undefined: str = ""  # why sink_mass is NaN (no query was measured), else ""

    @property
    def sink_rate(self) -> float:
        """Share of (layer, head) pairs whose alpha exceeds epsilon (Gu et al. 2024's attention-sink metric)."""
        return float((self.alpha > self.epsilon).float().mean())

    def to_dataframe(self) -> pd.DataFrame:
        n_layers, n_heads = self.sink_mass.shape
        kv = torch.arange(n_heads) // (n_heads // self.k_norm_sink.shape[1])
        layer, head = torch.meshgrid(torch.arange(n_layers), torch.arange(n_heads), indexing="ij")
        cols = {"layer": layer, "head": head, "sink_mass": self.sink_mass, "alpha": self.alpha,
                "kv_head": kv.expand(n_layers, -1)}
        for name in ("k_norm_sink", "k_norm_other", "k_cos_sink", "k_cos_other", "v_norm_sink", "v_norm_other"):
            cols[name] = getattr(self, name)[:, kv]
        return pd.DataFrame({k: v.flatten().numpy() for k, v in cols.items()})

    def by_layer(self) -> pd.DataFrame:
        """Head-averaged sink mass and alpha, and the share of heads with alpha > epsilon, per layer."""
        df = self.to_dataframe().assign(sink_head=lambda d: d.alpha > self.epsilon)
        return df.groupby("layer").agg(sink_mass=("sink_mass", "mean"), alpha=("alpha", "mean"),
                                       sink_heads=("sink_head", "mean")).reset_index()

    def sink_names(self) -> list[str]:
        """The sink positions' kinds with their tokens (`sites.site_name`), over all prompts."""
        names = {sites.site_name(toks, p, bos=bool(self.prepend_bos))
                 for toks, ps in zip(self.str_tokens, self.sink_positions) for p in ps}
        return sorted(names, key=lambda n: (n not in sites.POSITION_KINDS[:2], n))

    def sentence(self) -> str:
        bos = _inputs.bos_words(self.prepend_bos)
        head = f"{self.model_name}, {len(self.str_tokens)} prompt(s) {bos}"
        if self.undefined:
            return f"{head}: sink mass undefined (NaN): {self.undefined}"
        mass = self.sink_mass.mean(1)  # (layer,)
        names = self.sink_names()
        where = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        first = self.first_massive_layer
        if first is None:
            share = f"{float(mass.mean()):.2f} of query attention on the given sinks ({where})"
        else:
            after, before = mass[first + 1:], mass[:first]
            share = (f"{float(after.mean()) if len(after) else float('nan'):.2f} of query attention on the "
                     f"massive-activation tokens ({where}) in blocks after {first}, where block {first}'s output "
                     "first holds a token's massive activation")
            if len(before):
                lo, hi = float(before.min()), float(before.max())
                blocks = "block 0" if first == 1 else f"blocks 0-{first - 1}"
                share += f"; {lo:.2f}" + (f"-{hi:.2f}" if len(before) > 1 else "") + f" already in {blocks}, before it"
                if hi > self.epsilon:
                    share += (": the tokens draw attention before their massive activation appears, a "
                              "counterexample to the paper's ordering (massive activation first, then the sink)")
        return f"{head}: {share}; {self.sink_rate:.0%} of heads have alpha > {self.epsilon:g}"


def attention_sinks(
    model: HookedModel,
    inputs: _inputs.Inputs,
    *,
    sink_positions: SinkPositions = None,
    epsilon: float = 0.3,
    threshold: float = 100.0,
    ratio: float = 1000.0,
    batch_size: int = 8,
    prepend_bos: bool | None = None,
    progress: bool | None = None,
) -> AttentionSinks:
    """How much attention each head puts on the massive-activation tokens, and what their keys and values look like.

    `sink_positions=None` takes the tokens of each prompt whose massive activation (find_massive_activations with
    threshold, ratio) lasts at least a quarter of the layers; else give one list of positions for every prompt or
    one list per prompt. Queries at sink positions (and before the
    first sink) are left out of `sink_mass`: position 0 attends only to itself.

        >>> sinks = attention_sinks(model, ["Summer is warm."])
        >>> list(sinks.by_layer().index)
        [0, 1, 2, 3]
    """
    if not isinstance(epsilon, (int, float)) or not 0 <= epsilon <= 1:
        raise ValueError(f"epsilon must be an attention probability in 0..1, got {epsilon!r}")
    prompts, sinks, first, str_toks = prepare(model, inputs, sink_positions, threshold=threshold, ratio=ratio,
                                               batch_size=batch_size, prepend_bos=prepend_bos)
    cfg = model.cfg
    n_layers, n_heads, n_kv = cfg.n_layers, cfg.n_heads, n_kv_heads(cfg)
    mass = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    alpha = torch.zeros_like(mass)
    n_query = n_sink = 0
    vec = {(kind, part): [VecStats((n_kv,), cfg.d_head) for _ in range(n_layers)]
           for kind in "kv" for part in ("sink", "other")}
    mine = _dist.shard(len(prompts))  # under torchrun, this rank's contiguous share of the prompts
    batches = sink_batches(prompts[mine.start:mine.stop], sinks[mine.start:mine.stop], batch_size=batch_size,
                           device=cfg.device)
    for tokens, sink, query in _inputs.progress_bar(batches, progress, "attention sinks"):
        n_query += int(query.sum())
        n_sink += int(sink.sum())

        def on_z(layer: int, z: Tensor, kept: dict) -> None:
            p = kept["pattern"].float()  # (batch, head, query_pos, key_pos)
            on_sink = (p * sink[:, None, None, :]).sum(-1)  # (batch, head, query_pos)
            mass[layer] += (on_sink * query[:, None, :]).sum((0, 2)).double().cpu()
            n_pos = p.shape[-1]
            received = p.sum(2) / torch.arange(n_pos, 0, -1, device=p.device)  # (batch, head, key_pos): alpha_k
            alpha[layer] += (received * sink[:, None, :]).sum((0, 2)).double().cpu()
            for kind in "kv":
                vec[(kind, "sink")][layer].add(kept[kind][sink])  # (n, kv_head, d_head)
                vec[(kind, "other")][layer].add(kept[kind][~sink])

        run_with_hooks(model, tokens, layer_hooks(range(n_layers), ("pattern", "k", "v"), on_z))
    if _dist.world()[1] > 1:  # exact merge: every sum over the ranks
        mass, alpha = _dist.sum_(mass), _dist.sum_(alpha)
        n_query, n_sink = (int(_dist.sum_(torch.tensor(n))) for n in (n_query, n_sink))
        for stats in vec.values():
            for s in stats:
                s.merge_ranks()

    def stat(kind: str, part: str, fn: Callable[[VecStats], Tensor]) -> Tensor:
        return torch.stack([fn(s) for s in vec[(kind, part)]]).float()

    k_other = vec[("k", "other")]
    return AttentionSinks(
        sink_mass=(mass / n_query if n_query else torch.full_like(mass, float("nan"))).float(),
        alpha=(alpha / n_sink).float(),
        k_norm_sink=stat("k", "sink", lambda s: s.mean_norm), k_norm_other=stat("k", "other", lambda s: s.mean_norm),
        k_cos_sink=torch.stack([s.cos_to(o.mean) for s, o in zip(vec[("k", "sink")], k_other)]).float(),
        k_cos_other=torch.stack([o.cos_to(o.mean) for o in k_other]).float(),
        v_norm_sink=stat("v", "sink", lambda s: s.mean_norm), v_norm_other=stat("v", "other", lambda s: s.mean_norm),
        sink_positions=sinks, first_massive_layer=first, str_tokens=str_toks, epsilon=float(epsilon),
        model_name=model_name(model), prepend_bos=_inputs.bos_condition(model, inputs, prompts, prepend_bos),
        undefined="" if n_query else ("no query was measured: every token is a sink or comes before the first "
                                      "sink, so no attention from an ordinary query could be counted"),
    )


# --- the implicit attention bias -----------------------------------------------------------------------------

@dataclass(frozen=True, repr=False)
class ImplicitBias(Result):
    """Eq. 2 per layer and head: the sink tokens' value updates (the implicit bias) against the other tokens'."""

    VIEW = "heatmaps:show_implicit_bias"

    layers: tuple[int, ...]
    bias_norm: Float[Tensor, "layer head"]  # mean |sum_{i in C} p_qi v_i W_O| over the measured queries
    rest_norm: Float[Tensor, "layer head"]  # mean |sum_{i not in C} p_qi v_i W_O|
    constancy: Float[Tensor, "layer head"]  # mean cosine of the bias part to its mean over queries and prompts
    spread: Float[Tensor, "layer head"]  # RMS distance of the bias part to that mean, relative to the mean's norm
    mean_z: Float[Tensor, "layer head d_head"]  # that mean before W_O: the constant the bias swap puts in
    max_error: float  # max |bias part + rest - hook_z| / max |hook_z| over layers: the decomposition's own check
    loss_original: float  # mean next-token loss over the prompts
    loss_swapped: float | None  # ... with each head's bias part replaced by mean_z (None: swap=False)
    loss_removed: float | None  # ... with each head's bias part removed
    n_queries: int
    sink_positions: tuple[tuple[int, ...], ...]
    first_massive_layer: int | None  # first block whose output holds a sink's massive activation (None: given)
    str_tokens: tuple[tuple[str, ...], ...]
    model_name: str
    hook_names: tuple[str, ...] = (HOOKS["pattern"], HOOKS["v"], HOOKS["z"])
    size_cv: Float[Tensor, "layer head"] | None = None  # std / mean of |bias part| over the queries: its size's spread
    by_construction: str = ""  # why the bias part's direction cannot vary (one sink with the same value vector in
    # every prompt), else "": then `constancy` is 1 by construction and is no evidence
    prepend_bos: bool | None = None  # the BOS condition of the prompts (None: not recorded)

    @property
    def common_sinks(self) -> tuple[int, ...]:
        """Positions that are sinks in every prompt (the default of swap_implicit_bias)."""
        return tuple(sorted(set.intersection(*(set(p) for p in self.sink_positions))))

    @property
    def swap(self) -> pd.DataFrame:
        """Loss original, with the bias swapped for its mean, and with it removed (delta, relative to original)."""
        rows = [("original", self.loss_original), ("swapped", self.loss_swapped), ("removed", self.loss_removed)]
        df = pd.DataFrame(rows, columns=["condition", "loss"], dtype=object).astype({"loss": float})
        return df.assign(delta=df.loss - self.loss_original, relative=df.loss / self.loss_original - 1)

    def to_dataframe(self) -> pd.DataFrame:
        n_heads = self.bias_norm.shape[1]
        layer = torch.tensor(self.layers)[:, None].expand(-1, n_heads)
        cols = {"layer": layer, "head": torch.arange(n_heads).expand(len(self.layers), -1)}
        cols |= {k: getattr(self, k) for k in ("bias_norm", "rest_norm", "constancy", "spread")}
        if self.size_cv is not None:
            cols["size_cv"] = self.size_cv
        return pd.DataFrame({k: v.flatten().numpy() for k, v in cols.items()})

    def sentence(self) -> str:
        size = "" if self.size_cv is None else f", its size varying by {float(self.size_cv.mean()):.0%} (CV) across queries"
        norms = f"norm {float(self.bias_norm.mean()):.3g} vs {float(self.rest_norm.mean()):.3g} for the other tokens'"
        head = (f"{self.model_name}, {_inputs.bos_words(self.prepend_bos)}, layers {self.layers[0]}..{self.layers[-1]}, "
                f"{self.n_queries} queries: ")
        if self.by_construction:
            s = (head + f"the sink tokens' value updates ({norms}) keep one direction by construction "
                 f"({self.by_construction}), so their cosine to the mean is 1 and no evidence of constancy{size}")
        else:
            s = (head + f"the sink tokens' value updates have mean cosine {float(self.constancy.mean()):.3f} to their "
                 f"mean ({norms}){size}")
        if self.loss_swapped is None:
            return s
        return (s + f"; loss {self.loss_original:.4g} original, {self.loss_swapped:.4g} with the mean swapped in "
                f"({self.loss_swapped / self.loss_original - 1:+.1%}), {self.loss_removed:.4g} removed")


def _constant_by_construction(prompts: list[Tensor], sinks: Sequence[tuple[int, ...]],
                              str_toks: Sequence[Sequence[str]]) -> str:
    """Why the sink part's direction cannot vary over queries and prompts, or "": every prompt has one sink, at
    the same position after the same tokens, so under causal attention its value vector is the same everywhere
    and the part is p_q v W_O, one direction scaled by p_q."""
    if any(len(s) != 1 for s in sinks) or len({s[0] for s in sinks}) != 1:
        return ""
    pos = sinks[0][0]
    if len({tuple(t[: pos + 1].tolist()) for t in prompts}) != 1:
        return ""
    where = f"{str_toks[0][pos]!r} at position {pos}"
    return (f"one sink token, {where}, the same in every prompt" if len(prompts) > 1
            else f"one sink token, {where}, in one prompt")


def _swap_hooks(layers: Sequence[int], mean_z: Tensor, mode: str, masks_for: Callable[[Tensor], tuple]):
    """hook_z rewrites: z - (sink part) [+ mean_z] at the measured queries; z space is linear before W_O."""
    const = dict(zip(layers, mean_z))

    def on_z(layer: int, z: Tensor, kept: dict) -> Tensor:
        sink, query = masks_for(z)
        part = split(kept["pattern"], kept["v"], sink)[0]  # (batch, pos, head, d_head)
        q = query[:, :, None, None].float()
        new = z.float() - part * q
        if mode == "swap":
            new = new + const[layer].to(z.device) * q
        return new.to(z.dtype)

    return layer_hooks(layers, ("pattern", "v"), on_z)


@contextmanager
def swap_implicit_bias(model: HookedModel, bias: ImplicitBias, *, mode: str = "swap",
                       sink_positions: Sequence[int] | None = None) -> Iterator[Any]:
    """Inside the block, each head's value updates from the sink tokens are replaced by `bias.mean_z` ("swap")
    or removed ("remove") at every query after the first sink, in the layers `bias` measured.

    `sink_positions` (default: `bias.common_sinks`) are the sink tokens of every prompt run inside. The hooks
    must fire and always come off.

        >>> bias = implicit_bias(model, ["Summer is warm. Winter is cold."])
        >>> with swap_implicit_bias(model, bias):
        ...     loss = model("Summer is warm.", return_type="loss")
    """
    if mode not in ("swap", "remove"):
        raise ValueError(f"mode must be 'swap' or 'remove', got {mode!r}")
    if not isinstance(bias, ImplicitBias):
        raise TypeError(f"bias must be an ImplicitBias from implicit_bias, got {type(bias).__name__}")
    cfg = model.cfg
    if bias.mean_z.shape[1:] != (cfg.n_heads, cfg.d_head) or max(bias.layers) >= cfg.n_layers:
        raise ValueError(f"bias was measured on {bias.model_name} (layers {bias.layers[0]}..{bias.layers[-1]}, "
                         f"mean_z {tuple(bias.mean_z.shape)}); this model has {cfg.n_layers} layers, {cfg.n_heads} "
                         f"heads of {cfg.d_head}")
    positions = tuple(bias.common_sinks if sink_positions is None else sink_positions)
    if not positions or any(not isinstance(p, int) or p < 0 for p in positions):
        raise ValueError(f"sink_positions must be non-negative ints (e.g. [0]), got {sink_positions!r}")

    def masks_for(z: Tensor) -> tuple[Tensor, Tensor]:
        if max(positions) >= z.shape[1]:
            raise ValueError(f"sink position {max(positions)} out of range: the prompt has {z.shape[1]} tokens")
        return masks([positions] * z.shape[0], z.shape[1], z.device)

    with hooked(model, _swap_hooks(bias.layers, bias.mean_z, mode, masks_for)):
        yield model


def implicit_bias(
    model: HookedModel,
    inputs: _inputs.Inputs,
    *,
    layers: Sequence[int] | None = None,
    sink_positions: SinkPositions = None,
    swap: bool = True,
    threshold: float = 100.0,
    ratio: float = 1000.0,
    batch_size: int = 8,
    prepend_bos: bool | None = None,
    progress: bool | None = None,
) -> ImplicitBias:
    """Split each head's attention output into the sink tokens' value updates and the rest (Eq. 2), and measure
    how constant the first part is across query positions and prompts.

    `layers=None` takes the blocks after the one where the massive activation first appears (all blocks when
    `sink_positions` is given). With `swap=True` the loss is also measured with that part replaced by its mean
    (the bias swap) and with it removed, in all those layers at once, on the same prompts. Sinks as in
    attention_sinks; queries at and before the first sink are left out.

    With a single sink token at position 0 the part is p_q0 v_0 W_O with the same v_0 in every prompt, so its
    cosine to the mean is 1 by construction: the result says so (`by_construction`) and `size_cv` (how much
    p_q0 varies) is the informative number.

        >>> bias = implicit_bias(model, ["Summer is warm. Winter is cold."])
        >>> bias.by_construction != ""      # one sink token in one prompt: its cosine is 1 by construction
        True
    """
    layers = check_layers(model, layers)
    prompts, sinks, first, str_toks = prepare(model, inputs, sink_positions, threshold=threshold, ratio=ratio,
                                              batch_size=batch_size, prepend_bos=prepend_bos)
    cfg = model.cfg
    if layers is None:  # the blocks whose attention reads the massive activation
        layers = tuple(range(0 if first is None else first + 1, cfg.n_layers))
        if not layers:
            raise ValueError(f"the massive activation first appears in the last block ({first}): no attention "
                             f"reads it; pass layers= in 0..{cfg.n_layers - 1}")
    stats = {l: VecStats((cfg.n_heads,), cfg.d_model) for l in layers}
    z_sum = {l: torch.zeros(cfg.n_heads, cfg.d_head, dtype=torch.float64) for l in layers}
    rest = {l: torch.zeros(cfg.n_heads, dtype=torch.float64) for l in layers}
    err, n_query = 0.0, 0
    loss_sum = torch.zeros(3, dtype=torch.float64)
    batches = sink_batches(prompts, sinks, batch_size=batch_size, device=cfg.device)
    weights = [tokens.numel() - tokens.shape[0] for tokens, _, _ in batches]  # predicted tokens per batch
    for (tokens, sink, query), weight in _inputs.progress_bar(list(zip(batches, weights)), progress, "implicit bias"):
        n_query += int(query.sum())

        def on_z(layer: int, z: Tensor, kept: dict) -> None:
            nonlocal err
            part, other = split(kept["pattern"], kept["v"], sink)  # (batch, pos, head, d_head) each
            err = max(err, float((part + other - z.float()).abs().max() / z.float().abs().max().clamp_min(1e-30)))
            W_O = model.blocks[layer].attn.W_O.float()  # (head, d_head, d_model)
            z_sum[layer] += part[query].sum(0).double().cpu()
            stats[layer].add(torch.einsum("nhd,hdm->nhm", part[query], W_O))
            rest[layer] += torch.einsum("nhd,hdm->nhm", other[query], W_O).norm(dim=-1).sum(0).double().cpu()

        loss = run_with_hooks(model, tokens, layer_hooks(layers, ("pattern", "v"), on_z), return_type="loss")
        loss_sum[0] += float(loss) * weight
    if n_query == 0:
        raise ValueError("no query comes after a sink token: the prompts are too short or the sinks are last")
    mean_z = torch.stack([z_sum[l] / n_query for l in layers]).float()
    if swap:
        for (tokens, sink, query), weight in zip(batches, weights):
            for row, mode in ((1, "swap"), (2, "remove")):
                hooks = _swap_hooks(layers, mean_z, mode, lambda z: (sink, query))  # noqa: B023 (used at once)
                loss_sum[row] += float(run_with_hooks(model, tokens, hooks, return_type="loss")) * weight
    losses = (loss_sum / sum(weights)).tolist() if swap else [float(loss_sum[0]) / sum(weights), None, None]
    return ImplicitBias(
        layers=layers, bias_norm=torch.stack([stats[l].mean_norm for l in layers]).float(),
        rest_norm=torch.stack([rest[l] / n_query for l in layers]).float(),
        constancy=torch.stack([stats[l].cos_to(stats[l].mean) for l in layers]).float(),
        spread=torch.stack([stats[l].spread() for l in layers]).float(), mean_z=mean_z, max_error=err,
        size_cv=torch.stack([stats[l].size_cv() for l in layers]).float(),
        by_construction=_constant_by_construction(prompts, sinks, str_toks),
        prepend_bos=_inputs.bos_condition(model, inputs, prompts, prepend_bos),
        loss_original=losses[0], loss_swapped=losses[1], loss_removed=losses[2], n_queries=n_query,
        sink_positions=sinks, first_massive_layer=first, str_tokens=str_toks, model_name=model_name(model),
    )
