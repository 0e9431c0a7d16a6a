"""Origin: which block, which MLP neurons and which single weight write a massive activation.

`trace_origin` splits the residual value x[layer, pos, dim] exactly into what the embedding, every head
(hook_z @ W_O) and every MLP added; names the writing block (where the value jumps); ranks the writing
MLP's neurons (activation x W_out[neuron, dim]); reports the super weight (down_proj[row = dim, col = neuron]);
attributes the top neuron's pre-activation to the residual components upstream; and checks all of it
causally by ablation (Sun et al. 2024; Yu et al. 2024, "The Super Weight in Large Language Models").

Families with a norm after each sub-layer (Gemma 2/3: ln1_post, ln2_post) are attributed through the
norm's scale frozen at its value in this run, so parts still sum exactly to what was added; the MLP output
is then not linear in its neurons, and an ablation changes that scale (the causal table measures it).

    >>> from mi_massive import trace_origin
    >>> from mi_massive.testing import tiny_model
    >>> model = tiny_model("llama")        # planted in block 1's MLP; load_model("smollm2-135m") for the paper's
    >>> trace_origin(model, "Summer is warm. Winter is cold.")
    <Origin: x[1, pos 0 '<bos>', dim 5] = 1000 in tiny-llama is written by block 1's MLP...>
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from . import _attribution as attr
from . import _inputs
from ._ablate import CAUSAL_COLUMNS, SEARCH_COLUMNS, Acts, Entry, causal_table, row_losses, zeroed_weights
from ._hooks import capture, host_float64
from ._results import Result
from ._rule import check as _check_rule
from ._rule import massive_mask
from ._types import HookedModel
from .arch import hook, spec
from .models import model_name

NEURON_COLUMNS = ["layer", "neuron", "activation", "weight", "contribution", "share", "cum_share"]
GATED_COLUMNS = ["gate", "linear"]  # hook_pre (gate pre-activation) and hook_pre_linear (up projection)
WRITER_SHARE = 0.5  # a block that adds at least this share of the value writes it; below, the value is built up
BUILD_SHARE = 0.8  # builders: the fewest blocks adding this share of what all blocks add in the value's direction
OUTLIER_RANK = 10  # a super weight is an outlier of its matrix: among its OUTLIER_RANK largest |entries|
POST_NORM_NOTE = ("head and neuron parts go through the post-sublayer norm scales frozen at this run "
                  "(the MLP output is not linear in its neurons under ln2_post)")


@dataclass(frozen=True)
class SuperWeight:
    """One entry of block `layer`'s down projection: HF `down_proj.weight[row, col]` = TL `W_out[col, row]`."""

    layer: int
    row: int  # the residual dimension it writes
    col: int  # the MLP neuron it reads
    value: float
    rank: int  # 1 = largest |entry| of that matrix
    n_entries: int

    def __str__(self) -> str:
        return (f"down_proj[{self.layer}][{self.row}, {self.col}] = {self.value:.4g} "
                f"(|w| rank {self.rank} of {self.n_entries:,})")

    @property
    def is_outlier(self) -> bool:
        """Among the largest |entries| of its matrix (rank <= OUTLIER_RANK): a super weight, not a typical one."""
        return self.rank <= OUTLIER_RANK


@dataclass(frozen=True, repr=False)
class Origin(Result):
    """Who wrote x[layer, pos, dim]: components, writing block, neurons, super weight, upstream, causal check."""

    VIEW = "origin:show_origin"

    model_name: str
    tokens: Int[Tensor, "pos"]
    str_tokens: tuple[str, ...]
    layer: int | None  # the traced site (None: no massive activation to trace)
    pos: int | None
    dim: int | None
    value: float | None  # x[layer, pos, dim] in the run (hook_resid_post)
    writer_layer: int | None
    components: pd.DataFrame  # component, layer, head, contribution (sums to value)
    neurons: pd.DataFrame  # the writing MLP's top_k neurons
    neuron_contribution: Float[Tensor, "d_mlp"]  # every neuron's part of the writing MLP's output at (pos, dim)
    super_weight: SuperWeight | None
    upstream: pd.DataFrame  # the top neuron's pre-activation by component: component, layer, head, pre[, pre_linear]
    causal: pd.DataFrame  # ablation, massive_value, loss (empty when ablate=False)
    search: pd.DataFrame  # iterative super-weight search: step, layer, row, col, value, massive_value, loss
    top_k: int
    threshold: float
    ratio: float
    hook_names: tuple[str, ...]
    note: str = ""
    builders: tuple[int, ...] = ()  # the fewest blocks adding BUILD_SHARE of the blocks' parts, largest first
    norm_gain: tuple[float, int, int] | None = None  # post-sublayer norm's gain at dim: (gain, rank, d_model)
    peak_layer: int | None = None  # where |x[:, pos, dim]| is largest (at or after `layer`)
    peak_value: float | None = None
    peak_builders: tuple[int, ...] = ()  # the builders of the peak value
    trajectory: Float[Tensor, "layer"] | None = None  # x[l, pos, dim] after every block l

    @property
    def found(self) -> bool:
        return self.layer is not None

    def to_dataframe(self) -> pd.DataFrame:
        return self.components

    def by_layer(self) -> pd.DataFrame:
        """One row per block: attention and MLP parts of the value, and the running total after the block."""
        return _by_layer(self.components)

    @property
    def writer_share(self) -> float:
        """Share of the value added by the writing block (NaN when nothing was traced)."""
        if not self.found:
            return float("nan")
        w = self.by_layer().set_index("layer").loc[self.writer_layer]
        return float((w.attn + w.mlp) / self.value)

    @property
    def built_up(self) -> bool:
        """True when no block writes most of the value: it is built up over several (`builders`)."""
        return self.found and self.writer_share < WRITER_SHARE

    @property
    def mechanism(self) -> str:
        """How the value is written: "built up", "attention", "super weight", "post-norm gain" or "MLP neurons"."""
        if not self.found:
            return ""
        if self.built_up:
            return "built up"
        w = self.by_layer().set_index("layer").loc[self.writer_layer]
        if abs(w.attn) > abs(w.mlp):
            return "attention"
        if self.super_weight is not None and self.super_weight.is_outlier:
            return "super weight"
        return "post-norm gain" if self.norm_gain is not None else "MLP neurons"

    def explanation(self, *, peak: bool = True) -> str:
        """One sentence on how the value is written (and, with `peak`, how it grows after), for the picture and
        the repr."""
        if not self.found:
            return ""
        kind = self.mechanism
        if kind == "built up":
            s = (f"built up over blocks {_shares(self.builders, self.by_layer(), self.value)}: no block writes most "
                 f"of it (the largest, block {self.writer_layer}, adds {self.writer_share:.0%}), so no super weight "
                 "is named")
        elif kind == "attention":
            s = f"written by block {self.writer_layer}'s attention, not its MLP: no super weight"
        elif kind == "super weight":
            n = self.neurons.iloc[0]
            s = (f"written by block {self.writer_layer}'s MLP: top neuron {int(n.neuron)} gives {n.share:.0%} of its "
                 f"part through super weight {self.super_weight}")
        else:
            n, sw = self.neurons.iloc[0], self.super_weight
            s = (f"written by block {self.writer_layer}'s MLP (top neuron {int(n.neuron)}: {n.share:.0%} of its "
                 f"part), but its down_proj entry {sw.value:.4g} is only |w| rank {sw.rank:,} of {sw.n_entries:,}: "
                 "no super weight")
            if kind == "post-norm gain":
                gain, rank, d = self.norm_gain
                s += (f"; the size comes from the post-MLP norm's gain {gain:.4g} on dim {self.dim} "
                      f"(rank {rank} of {d})")
        grows = self.peak_layer is not None and self.peak_layer != self.layer and self.peak_builders != self.builders
        if peak and grows:
            s += (f"; it then grows to {self.peak_value:.4g} at layer {self.peak_layer}, built up over blocks "
                  f"{', '.join(map(str, self.peak_builders))}")
        return s

    def writers(self, min_share: float = 0.05) -> list[int]:
        """Blocks that each add at least `min_share` of the value (in its direction), largest first."""
        if not self.found:
            return []
        df = self.by_layer()
        part = (df.attn + df.mlp) / self.value
        return [int(l) for l in df.layer[part >= min_share].iloc[(-part[part >= min_share]).argsort()]]

    def sentence(self) -> str:
        if not self.found:
            return (f"no massive activation to trace in {self.model_name} over {len(self.tokens)} tokens "
                    f"(|x| > {self.threshold:g} and >= {self.ratio:g}x median)")
        tok = self.str_tokens[self.pos]
        writes = self.by_layer().set_index("layer").loc[self.writer_layer]
        s = (f"x[{self.layer}, pos {self.pos} {tok!r}, dim {self.dim}] = {self.value:.4g} in {self.model_name} is "
             f"{self.explanation(peak=False)} (block {self.writer_layer} adds {self.writer_share:.0%}: "
             f"attn {writes.attn:.4g}, MLP {writes.mlp:.4g})")
        s += self.explanation()[len(self.explanation(peak=False)):]
        if len(self.causal) > 1:
            base, after = self.causal.iloc[0], self.causal.iloc[1]
            s += (f"; {after.ablation}: value {after.massive_value:.4g}, loss {base.loss:.3g} -> {after.loss:.3g}")
        return s


def _by_layer(df: pd.DataFrame) -> pd.DataFrame:
    """Components summed per block: attention and MLP parts, and the running total after the block."""
    if df.empty:
        return pd.DataFrame(columns=["layer", "attn", "mlp", "total"])
    blocks = df[df.component != "embedding"].assign(part=lambda d: d.component.map(
        {"head": "attn", "attn_bias": "attn", "mlp": "mlp"}))
    out = blocks.pivot_table(index="layer", columns="part", values="contribution", aggfunc="sum", fill_value=0.0)
    out = out.reindex(columns=["attn", "mlp"], fill_value=0.0).reset_index()
    out["layer"] = out.layer.astype(int)
    embed = float(df.contribution[df.component == "embedding"].sum())
    out["total"] = embed + (out.attn + out.mlp).cumsum()
    return out


def _builders(df: pd.DataFrame, value: float) -> tuple[int, ...]:
    """The fewest blocks, largest part first, adding BUILD_SHARE of what the blocks add in the value's direction."""
    blocks = df[df.component != "embedding"]
    if blocks.empty:
        return ()
    layers = blocks.layer.to_numpy(dtype=np.int64)
    return _largest_blocks(np.bincount(layers, weights=blocks.contribution.to_numpy(dtype=np.float64)), value)


def _largest_blocks(parts: np.ndarray, value: float) -> tuple[int, ...]:
    """Blocks (indices of `parts`, what each adds to the value) largest share first until BUILD_SHARE of the
    positive shares; none where the value is 0 or not finite (an overflowed dtype)."""
    if not (np.isfinite(value) and value != 0):
        return ()
    share = parts / value
    goal = BUILD_SHARE * share[share > 0].sum()
    out, total = [], 0.0
    for i in share.argsort(kind="stable")[::-1]:
        if share[i] <= 0 or total >= goal:
            break
        out.append(int(i))
        total += share[i]
    return tuple(out)


def _shares(blocks: tuple[int, ...], by_layer: pd.DataFrame, value: float) -> str:
    parts = by_layer.set_index("layer")
    return ", ".join(f"{b} ({(parts.attn[b] + parts.mlp[b]) / value:.0%})" for b in blocks)


def _norm_gain(model: HookedModel, layer: int, dim: int) -> tuple[float, int, int] | None:
    """The gain of block `layer`'s post-MLP norm at `dim` and its rank (1 = largest) on post-norm families."""
    if not spec(model).post_sublayer_norm:
        return None
    gain = attr.norm_gain(model.blocks[layer].ln2_post)  # (d_model,)
    return float(gain[dim]), int((gain > gain[dim]).sum()) + 1, len(gain)


def _peak(model: HookedModel, acts: Acts, layer: int, pos: int, dim: int,
          comps: pd.DataFrame) -> tuple[int, float, tuple[int, ...], Tensor]:
    """Where |x[l, pos, dim]| peaks at or after `layer`, its value, the blocks that build it, and x[:, pos, dim]
    (no forward; `comps` are the components up to `layer`, used when the peak is there; past it, what each block
    adds to x[pos, dim], which the components of a block sum to, without a second attribution)."""
    col = torch.stack([acts[hook.resid_post(l)][pos, dim] for l in range(model.cfg.n_layers)]).float()  # (layer,)
    peak = layer + int(col[layer:].abs().argmax())
    value = float(acts[hook.resid_post(peak)][pos, dim])
    if peak == layer:
        return peak, value, _builders(comps, value), col
    writes = attr.block_writes(model, acts, pos=pos, dim=dim, upto=peak).double().numpy()
    return peak, value, _largest_blocks(writes, value), col


def _massive_sites(resid: Float[Tensor, "layer pos d_model"], threshold: float, ratio: float) -> Tensor:
    """Rows (layer, pos, dim) of the paper's rule over the block outputs of one prompt (a layer is a row of the
    rule's batch: its median is that layer's)."""
    return massive_mask(resid, threshold=threshold, ratio=ratio).nonzero()


def _pick_target(acts: Acts, n_layers: int, layer: int | None, pos: int | None, dim: int | None,
                 threshold: float, ratio: float) -> tuple[int, int, int] | None:
    """The asked site; free coordinates from the largest matching massive activation, at its first layer."""
    if layer is not None and pos is not None and dim is not None:
        return layer, pos, dim
    resid = torch.stack([acts[hook.resid_post(l)] for l in range(n_layers)])  # (layer, pos, d_model)
    sites = _massive_sites(resid, threshold, ratio)
    for col, want in ((0, layer), (1, pos), (2, dim)):
        if want is not None:
            sites = sites[sites[:, col] == want]
    if not len(sites):
        return None
    _, p, d = (int(v) for v in sites[resid[tuple(sites.T)].abs().argmax()])
    if layer is None:
        same = sites[(sites[:, 1] == p) & (sites[:, 2] == d)]
        layer = int(same[:, 0].min())
    return layer, p, d


def _unit(model: HookedModel, dim: int) -> Tensor:
    """The read-out vector of residual dimension `dim` (float64)."""
    v = torch.zeros(model.cfg.d_model, dtype=torch.float64)
    v[dim] = 1.0
    return v


def _writer(model: HookedModel, acts: Acts, layer: int, pos: int, dim: int) -> tuple[float, int, Tensor]:
    """The sign of x[layer, pos, dim], the block that writes it and that block's neurons' parts."""
    sign = 1.0 if float(acts[hook.resid_post(layer)][pos, dim]) >= 0 else -1.0
    writer = attr.writer_block(model, acts, pos=pos, dim=dim, upto=layer, sign=sign)
    per_neuron, _ = attr.neuron_contributions(model, acts, _unit(model, dim), layer=writer, pos=pos)
    return sign, writer, per_neuron


def _trace(model: HookedModel, acts: Acts, layer: int, pos: int, dim: int):
    """Components of x[layer, pos, dim], the writing block and its neurons' parts."""
    comps = attr.components(model, acts, _unit(model, dim), pos=pos, upto=layer)
    sign, writer, per_neuron = _writer(model, acts, layer, pos, dim)
    return float(acts[hook.resid_post(layer)][pos, dim]), sign, comps, writer, per_neuron


def _neuron_table(model: HookedModel, acts: Acts, writer: int, pos: int, dim: int, sign: float,
                  per_neuron: Tensor, top_k: int) -> pd.DataFrame:
    mlp_part = float(acts[hook.mlp_out(writer)][pos, dim])
    order = torch.argsort(sign * per_neuron, descending=True)[:top_k]
    contrib = per_neuron[order]
    df = pd.DataFrame({
        "layer": writer, "neuron": order.numpy(),
        "activation": acts[hook.mlp_post(writer)][pos, order].numpy(),
        "weight": model.blocks[writer].mlp.W_out.detach()[order, dim].double().cpu().numpy(),
        "contribution": contrib.numpy(), "share": (contrib / mlp_part).numpy(),
    })
    df["cum_share"] = df.share.cumsum()
    if spec(model).gated_mlp:
        df["gate"] = acts[hook.mlp_pre(writer)][pos, order].numpy()
        df["linear"] = acts[hook.mlp_pre_linear(writer)][pos, order].numpy()
    return df


def _super_weight(model: HookedModel, layer: int, dim: int, neuron: int) -> SuperWeight:
    W = model.blocks[layer].mlp.W_out.detach()  # (d_mlp, d_model)
    value = float(W[neuron, dim])
    return SuperWeight(layer, dim, neuron, value, int((W.abs() > abs(value)).sum()) + 1, W.numel())


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(columns=columns)


def _validate(model: HookedModel, n_pos: int, layer, pos, dim, top_k, ablate, n_random, search_steps) -> tuple:
    cfg = model.cfg
    layer = None if layer is None else _inputs.check_index("layer", layer, cfg.n_layers)
    pos = None if pos is None else _inputs.check_index("position", pos, n_pos)
    dim = None if dim is None else _inputs.check_index("dim", dim, cfg.d_model)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= cfg.d_mlp:
        raise ValueError(f"top_k must be an int in 1..{cfg.d_mlp} (d_mlp), got {top_k!r}")
    modes = {True: "zero", False: None, "zero": "zero", "mean": "mean", "both": "both"}
    if not isinstance(ablate, (bool, str)) or ablate not in modes:
        raise ValueError(f"ablate must be True, False, 'zero', 'mean' or 'both', got {ablate!r}")
    for name, v, lo in (("n_random", n_random, 0), ("search_steps", search_steps, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    return layer, pos, dim, modes[ablate]


def trace_origin(
    model: HookedModel,
    inputs: _inputs.Inputs,
    *,
    layer: int | None = None,
    pos: int | None = None,
    dim: int | None = None,
    top_k: int = 5,
    ablate: bool | Literal["zero", "mean", "both"] = True,
    n_random: int = 3,
    search_steps: int = 3,
    seed: int = 0,
    cache: Mapping[str, Tensor] | None = None,
    threshold: float = 100.0,
    ratio: float = 1000.0,
    prepend_bos: bool | None = None,
) -> Origin:
    """Trace who wrote the residual value x[layer, pos, dim] of one prompt (block output, hook_resid_post).

    Unset coordinates come from the largest massive activation of the prompt (the paper's rule with
    `threshold`, `ratio`), at the first layer where it is massive; if none matches, the result is empty.
    `ablate` runs the causal checks (True/"zero": zero the top_k neurons; "mean": set them to their mean over
    the prompt's other positions; "both"), plus zeroing the super weight, `n_random` draws of as many random
    neurons of the same block, and `search_steps` of the iterative super-weight search (zero the strongest
    weight, trace again, zero the next). With `cache` (from `model.run_with_cache(tokens)`) and
    `ablate=False`, no forward pass is run.

        >>> origin = trace_origin(model, "Summer is warm.", dim=5)
        >>> origin.writer_layer, origin.super_weight.row, origin.super_weight.col   # down_proj[1][5, 7]
        (1, 5, 7)
    """
    _check_rule(threshold, ratio)
    prompts = _inputs.tokenize(model, inputs, prepend_bos=prepend_bos)
    if len(prompts) != 1:
        raise ValueError(f"trace_origin traces one prompt; got {len(prompts)}: pass one, e.g. inputs[0]")
    tokens = prompts[0]
    layer, pos, dim, mode = _validate(model, len(tokens), layer, pos, dim, top_k, ablate, n_random, search_steps)
    names = tuple(attr.needed_hooks(model))
    loss = None  # the capture pass's loss is the causal table's baseline (with a cache, a batch row measures it)
    if cache is not None:
        acts = attr.from_cache(model, cache, tokens)
    else:
        logits, raw = capture(model, tokens[None], names, return_type="logits")
        acts = host_float64(raw)
        loss = float(row_losses(logits, tokens)[0])
    base = dict(model_name=model_name(model), tokens=tokens, str_tokens=_inputs.str_tokens(model, tokens),
                top_k=top_k, threshold=float(threshold), ratio=float(ratio), hook_names=names,
                note=POST_NORM_NOTE if spec(model).post_sublayer_norm else "")
    target = _pick_target(acts, model.cfg.n_layers, layer, pos, dim, threshold, ratio)
    if target is None:
        return Origin(layer=None, pos=None, dim=None, value=None, writer_layer=None,
                      components=_empty(attr.COMPONENT_COLUMNS), neurons=_empty(NEURON_COLUMNS),
                      neuron_contribution=torch.zeros(0), super_weight=None,
                      upstream=_empty(["component", "layer", "head", "pre"]), causal=_empty(CAUSAL_COLUMNS),
                      search=_empty(SEARCH_COLUMNS), **base)
    L, P, D = target
    value, sign, comps, writer, per_neuron = _trace(model, acts, L, P, D)
    neurons = _neuron_table(model, acts, writer, P, D, sign, per_neuron, top_k)
    top = [int(n) for n in neurons.neuron]
    sw = _super_weight(model, writer, D, top[0])
    up = attr.upstream(model, acts, layer=writer, pos=P, neuron=top[0])
    causal, search = _empty(CAUSAL_COLUMNS), _empty(SEARCH_COLUMNS)
    if mode is not None:
        def find_next(weights: list[Entry], acts2: Acts) -> Entry | None:
            with zeroed_weights(model, weights):  # no forward: the neuron parts read the edited W_out
                sign2, w2, per2 = _writer(model, acts2, L, P, D)
            return w2, D, int((sign2 * per2).argmax())

        post = acts[hook.mlp_post(writer)]  # (pos, d_mlp)
        others = [p for p in range(len(tokens)) if p != P] or [P]
        causal, search = causal_table(
            model, tokens, target, acts=acts, writer=writer, top=top, mean_values=post[others].mean(0).float(),
            first_weight=(writer, D, top[0]), find_next=find_next, mode=mode, n_random=n_random, seed=seed,
            search_steps=search_steps, threshold=threshold, names=names,
            baseline=None if loss is None else (float(acts[hook.resid_post(L)][P, D]), loss),
        )
    peak_layer, peak_value, peak_builders, trajectory = _peak(model, acts, L, P, D, comps)
    return Origin(layer=L, pos=P, dim=D, value=value, writer_layer=writer, components=comps, neurons=neurons,
                  neuron_contribution=per_neuron.float(), super_weight=sw, upstream=up, causal=causal,
                  search=search, builders=_builders(comps, value), norm_gain=_norm_gain(model, writer, D),
                  peak_layer=peak_layer, peak_value=peak_value, peak_builders=peak_builders, trajectory=trajectory,
                  **base)
