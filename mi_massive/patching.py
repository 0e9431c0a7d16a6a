"""Path patching the massive activation: through which attention paths does removing it change the output?

A clean run is compared with a corrupted run in which the sender is removed: the massive activation itself
(zeroed or set to a value at the block where it appears, at the positions and dimensions `detect` finds per
prompt), one MLP neuron, or one super weight. The corrupted residual of the massive token(s) is then given
to one receiver at a time, everything else seeing the clean residual:

- ``k`` / ``v``: the key / value of one KV head of a later block, at the massive positions (on grouped-query
  models a KV head is shared by several query heads; rows are per KV head, `to_dataframe()` lists the query
  heads that read it);
- ``q``: the query of one head of a later block, at the massive positions;
- ``direct``: the final residual at the massive positions, in the unembedding input only.

The receiver's input is the corrupted residual after its own layer norm, recomputed on the corrupted residual
(not frozen at the clean scale): the patched q/k/v are exactly those of the corrupted run at those positions.
Downstream of the receiver the model runs freely. The clean and the corrupted run are the two halves of one
pass (when the prompts form one batch, detection rides on the clean half: each block's output is checked with
the paper's rule as the pass goes, and a massive sender is removed from the corrupted half at the block where
it appears). All receivers then run in a few batched passes, each row patching one receiver; rows equal the
clean run up to the sender's block, so they resume after it from the clean residual and the blocks before are
not run again. Where every massive position is the first token, query-only variants are not run at all: the
first query meets only its own key (softmax weight exactly 1), so their metric is exactly the clean one
(``method="naive"`` runs one whole pass per receiver and prompt, for reference).

    >>> from mi_massive import path_patch
    >>> from mi_massive.testing import tiny_model
    >>> model = tiny_model("llama")          # planted in block 1; load_model("smollm2-135m") for the paper's
    >>> pp = path_patch(model, ["Summer is warm. Winter is cold."])
    >>> pp.sender_layer
    1
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from . import _inputs
from ._patch_runs import Corruption, Metric, Receiver, clean_and_corrupted, count, hook_name, patched_metrics
from ._results import Result
from ._types import HookedModel
from .arch import hook, kv_head_of, n_kv_heads
from .models import model_name

PATHS = ("k", "v", "q", "direct")
METHODS = ("batched", "naive")


def receiver_name(path: str, layer: int, head: int) -> str:
    """"direct", "L12H3 q" or "L12 KV1 k"."""
    if path == "direct":
        return "direct"
    return f"L{layer} KV{head} {path}" if path in ("k", "v") else f"L{layer}H{head} {path}"


@dataclass(frozen=True, repr=False)
class PathPatching(Result):
    """Metric when one receiver (layer, head, path) reads the corrupted residual of the massive token(s)."""

    VIEW = "heatmaps:show_patching"

    layer: Int[Tensor, "receiver"]  # n_layers for the direct path
    head: Int[Tensor, "receiver"]  # query head for q, KV head for k/v, -1 for direct
    path: tuple[str, ...]  # per receiver: k, v, q or direct
    metric: Float[Tensor, "receiver"]  # averaged over prompts
    joint_path: tuple[str, ...]  # k, v, q, direct, k+v, all: every receiver of those paths patched together
    joint_metric: Float[Tensor, "joint"]
    clean_metric: float
    corrupted_metric: float
    sender: str
    sender_layer: int  # receivers live in later blocks
    corruption: str
    metric_name: str
    positions: tuple[tuple[int, ...], ...]  # massive positions per prompt (where receivers read the corruption)
    str_tokens: tuple[tuple[str, ...], ...]
    model_name: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hook_names: tuple[str, ...]  # receiver hook templates
    method: str
    forward_calls: int  # model calls made (detection, clean, corrupted, patched)
    forward_rows: int  # prompt-rows run through the model: single-prompt forward-equivalents
    block_rows: int  # decoder blocks run, summed over prompt-rows (a whole pass of one prompt counts n_layers):
    # with logit_rows, the arithmetic done, which on a CPU sets the time (rows resume after their sender)
    logit_rows: int  # prompt-rows unembedded (all but detection's)

    @property
    def effect(self) -> Float[Tensor, "receiver"]:
        return self.metric - self.clean_metric

    @property
    def total_effect(self) -> float:
        return self.corrupted_metric - self.clean_metric

    def query_heads(self, path: str, head: int) -> tuple[int, ...]:
        """The query heads that read a receiver (several for a shared KV head)."""
        if path == "direct":
            return ()
        if path == "q":
            return (head,)
        return tuple(q for q, kv in enumerate(kv_head_of(self.n_heads, self.n_kv_heads)) if kv == head)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per receiver: layer, head, path, metric, effect (metric - clean), query_heads."""
        return pd.DataFrame({
            "layer": self.layer.numpy(), "head": self.head.numpy(), "path": list(self.path),
            "metric": self.metric.numpy(), "effect": self.effect.numpy(),
            "query_heads": [self.query_heads(p, int(h)) for p, h in zip(self.path, self.head)],
        }, columns=["layer", "head", "path", "metric", "effect", "query_heads"])

    @property
    def receivers(self) -> tuple[str, ...]:
        """Each receiver as a reader names it: "direct" (the final residual, read by the unembedding), "L12H3 q",
        "L12 KV1 k" (a KV head, read by several query heads)."""
        return tuple(receiver_name(p, int(l), int(h)) for p, l, h in zip(self.path, self.layer, self.head))

    def top(self, n: int = 10) -> pd.DataFrame:
        """The `n` receivers with the largest |effect|, named: receiver, path, effect, query_heads."""
        df = self.to_dataframe().assign(receiver=list(self.receivers))
        df = df.loc[df.effect.abs().sort_values(ascending=False).index[:n]]
        return df[["receiver", "path", "effect", "query_heads"]].reset_index(drop=True)

    def summary(self) -> pd.DataFrame:
        """Share of the total effect through each path alone (all heads together), K+V jointly, and all paths.

        `sum_of_parts` is the sum of the per-head effects (for k+v: of the K and V joint effects), so that
        interactions show as the gap between `effect` and `sum_of_parts`.
        """
        df = self.to_dataframe()
        total = self.total_effect
        rows = []
        for name, m in zip(self.joint_path, self.joint_metric.tolist()):
            parts = name.split("+") if name != "all" else sorted(set(self.path), key=PATHS.index)
            if name in PATHS:
                part_sum = float(df.effect[df.path == name].sum())
            else:
                part_sum = sum(float(self.joint_metric[self.joint_path.index(p)]) - self.clean_metric for p in parts)
            effect = m - self.clean_metric
            rows.append({"path": name, "effect": effect, "share": effect / total if total else math.nan,
                         "sum_of_parts": part_sum})
        rows.append({"path": "total", "effect": total, "share": 1.0 if total else math.nan, "sum_of_parts": math.nan})
        return pd.DataFrame(rows, columns=["path", "effect", "share", "sum_of_parts"])

    def sentence(self) -> str:
        s = self.summary().set_index("path")
        shares = ", ".join(f"{p} {s.share[p]:.0%}" for p in s.index if p in PATHS)
        top = self.top(1)
        where = "" if top.empty else f"; largest single receiver: {top.receiver[0]} ({top.effect[0]:+.3g})"
        return (f"{self.corruption} the {self.sender} in {self.model_name} moves {self.metric_name} "
                f"{self.clean_metric:.4g} -> {self.corrupted_metric:.4g} over {len(self.str_tokens)} prompt(s); "
                f"share through each path alone: {shares}{where}")


# --- the analysis -----------------------------------------------------------------------------------------------

def _parse_sender(model: HookedModel, senders: Any) -> tuple:
    cfg = model.cfg
    if isinstance(senders, str) and senders == "massive":
        return ("massive",)
    if isinstance(senders, (tuple, list)) and senders and senders[0] in ("neuron", "super_weight"):
        want = 3 if senders[0] == "neuron" else 4
        if len(senders) == want:
            layer = _inputs.check_index("layer", senders[1], cfg.n_layers)
            neuron = _inputs.check_index("neuron", senders[2], cfg.d_mlp)
            if want == 3:
                return ("neuron", layer, neuron)
            return ("super_weight", layer, neuron, _inputs.check_index("dim", senders[3], cfg.d_model))
    raise ValueError("senders must be 'massive', ('neuron', layer, neuron) or ('super_weight', layer, neuron, dim); "
                     f"got {senders!r}")


def _check_options(corruption: Any, receivers: Any, metric: Any, method: Any, batch_size: Any) -> tuple[str, ...]:
    if not (callable(corruption) or corruption == "zero" or (
            isinstance(corruption, (int, float)) and not isinstance(corruption, bool) and math.isfinite(corruption))):
        raise ValueError(f"corruption must be 'zero', a finite number or a callable, got {corruption!r}")
    paths = (receivers,) if isinstance(receivers, str) else tuple(receivers)
    bad = [p for p in paths if p not in PATHS]
    if bad or not paths:
        raise ValueError(f"receivers must be a non-empty subset of {PATHS}, got {receivers!r}")
    if not (callable(metric) or metric == "loss"):
        raise ValueError(f"metric must be 'loss' or a callable(logits, tokens) -> scalar, got {metric!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return tuple(p for p in PATHS if p in paths)


def _receiver_layers(model: HookedModel, layers: Sequence[int] | None, sender_layer: int) -> list[int]:
    n_layers = model.cfg.n_layers
    if layers is None:
        return list(range(sender_layer + 1, n_layers))
    out = []
    for layer in layers:
        layer = _inputs.check_index("layer", layer, n_layers)
        if layer <= sender_layer:
            raise ValueError(f"layer {layer} is not after the sender's block {sender_layer}: receiver layers are "
                             f"{sender_layer + 1}..{n_layers - 1}")
        out.append(layer)
    return sorted(set(out))


def _describe(sender: tuple, corruption: Corruption, dims: list[int], first: int) -> tuple[str, str]:
    what = {
        "massive": lambda: f"massive activation (dim(s) {', '.join(map(str, dims))} from block {first})",
        "neuron": lambda: f"neuron {sender[2]} of block {sender[1]}",
        "super_weight": lambda: f"super weight W_out[{sender[2]}, {sender[3]}] of block {sender[1]}",
    }[sender[0]]()
    if callable(corruption):
        how = f"replacing by {getattr(corruption, '__name__', 'a callable')}"
    else:
        how = "zeroing" if corruption == "zero" else f"setting to {float(corruption):g}"
    return what, how


def path_patch(
    model: HookedModel,
    inputs: _inputs.Inputs,
    *,
    corruption: Corruption = "zero",
    receivers: Sequence[str] = PATHS,
    metric: Metric = "loss",
    senders: str | tuple = "massive",
    layers: Sequence[int] | None = None,
    massive: Any = None,
    threshold: float = 100.0,
    ratio: float = 1000.0,
    batch_size: int = 32,
    method: str = "batched",
    prepend_bos: bool | None = None,
    progress: bool | None = None,
) -> PathPatching:
    """Effect of the massive activation's removal through each receiver: K, V, Q of each later head, and direct.

    `corruption` replaces the sender's value(s): "zero", a number, or a callable given the clean values.
    `senders` is "massive" (the entries `detect` finds, at the block where each appears), ("neuron", layer,
    neuron) (that MLP neuron's output, at every position) or ("super_weight", layer, neuron, dim) (one W_out
    entry). Receivers always read the corruption at the massive positions, in `layers` (default: every block
    after the sender). `metric` is mean next-token "loss" or any callable(logits, tokens) -> scalar, computed
    per prompt and averaged. `batch_size` is rows per forward pass; `method="naive"` is the one-pass-per-
    receiver reference. Pass `massive=` (a MassiveActivations for the same inputs) to skip detection.

        >>> pp = path_patch(model, "Summer is warm.", receivers=("k", "v"))
        >>> sorted(set(pp.to_dataframe().path))
        ['k', 'v']
    """
    if layers is not None and (isinstance(layers, (int, str)) or not isinstance(layers, Sequence)):
        raise TypeError(f"layers must be a list of receiver layers or None, got {layers!r}"
                        + (f" (write layers=[{layers}])" if isinstance(layers, int) else ""))
    from ._rule import check as _check_rule
    from .detect import scan_tokens

    sender = _parse_sender(model, senders)
    paths = _check_options(corruption, receivers, metric, method, batch_size)
    _check_rule(threshold, ratio)
    if layers is not None:
        layers = [_inputs.check_index("layer", layer, model.cfg.n_layers) for layer in layers]
    prompts = _inputs.tokenize(model, inputs, prepend_bos=prepend_bos)
    str_toks = tuple(_inputs.str_tokens(model, t) for t in prompts)
    batches = list(_inputs.batches(prompts, batch_size=batch_size))
    cfg = model.cfg
    counter = [0, 0, 0, 0]  # model calls, prompt-rows, decoder blocks run summed over rows, rows unembedded
    if massive is None and len(batches) > 1:  # every batch needs the same receivers: find all sites first
        massive, _ = scan_tokens(model, prompts, threshold=threshold, ratio=ratio, k=1, batch_size=batch_size,
                           progress=False)
        for batch in batches:  # (the scan stops at the last block)
            count(counter, len(batch.index), cfg.n_layers, unembedded=False)
    elif massive is not None and tuple(massive.str_tokens) != str_toks:
        raise ValueError(f"massive= was found on other prompts ({len(massive.str_tokens)} prompt(s)); "
                         "run find_massive_activations on the same inputs")
    sites = None if massive is None else [
        [(int(r.first_layer), int(r.pos), int(r.dim)) for r in massive.sites(features=False).itertuples()
         if r.prompt == i]  # token massive activations: feature-wide dims are no source
        for i in range(len(prompts))]
    rule = (threshold, ratio) if massive is None else (massive.threshold, massive.ratio)
    plan = None if sites is None else _plan(model, sites, sender, paths, layers, rule)
    # with one batch and no sites given, detection rides in the clean half of the clean/corrupted pass, which
    # then keeps the corrupted activations of every receiver the plan could name
    names = plan.names if plan else sorted({hook_name(model, p, l) for p in paths
                                            for l in (range(cfg.n_layers) if layers is None else layers)})
    n = len(prompts)
    clean, corrupt, patched = torch.empty(n), torch.empty(n), None
    for batch in _inputs.progress_bar(batches, progress, "path patching"):
        idx = list(batch.index)
        pair = clean_and_corrupted(
            model, batch.tokens, sender, corruption, metric, names, sites=None if sites is None else [sites[i] for i in idx],
            resid_layer=sender[1] if sender[0] != "massive" else plan.first if plan else None,
            threshold=threshold, ratio=ratio)
        count(counter, 2 * len(idx), cfg.n_layers)
        if plan is None:  # the only batch: its sites are all the sites
            sites = pair.sites
            plan = _plan(model, sites, sender, paths, layers, rule)
        clean[idx], corrupt[idx] = pair.clean, pair.corrupted
        out = patched_metrics(model, batch.tokens, plan.variants, [plan.positions[i] for i in idx], pair.source,
                              metric, method=method, batch_size=batch_size, counter=counter,
                              resid=pair.resid, clean=pair.clean)
        if patched is None:
            patched = torch.empty(len(plan.variants), n)
        patched[:, idx] = out
    means = patched.mean(1)
    recv = plan.receivers
    what, how = _describe(sender, corruption, plan.dims, plan.first)
    templates = {"k": hook.k("{layer}"), "v": hook.v("{layer}"), "q": hook.q("{layer}"),
                 "direct": hook.resid_post(cfg.n_layers - 1)}
    return PathPatching(
        layer=torch.tensor([r[1] for r in recv]), head=torch.tensor([r[2] for r in recv]),
        path=tuple(r[0] for r in recv), metric=means[: len(recv)].clone(), joint_path=tuple(plan.joint),
        joint_metric=means[len(recv):].clone(), clean_metric=float(clean.mean()),
        corrupted_metric=float(corrupt.mean()), sender=what, sender_layer=plan.sender_layer, corruption=how,
        metric_name="loss" if metric == "loss" else getattr(metric, "__name__", "metric"),
        positions=tuple(tuple(p) for p in plan.positions), str_tokens=str_toks, model_name=model_name(model),
        n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=plan.n_kv, hook_names=tuple(templates[p] for p in paths),
        method=method, forward_calls=counter[0], forward_rows=counter[1], block_rows=counter[2], logit_rows=counter[3],
    )


@dataclass(frozen=True)
class _Plan:
    """What the sites fix: the sender's block, the receivers, the patched variants and the hooks they read."""

    positions: list[list[int]]
    dims: list[int]
    first: int
    sender_layer: int
    receivers: list[Receiver]
    joint: dict[str, list[Receiver]]
    variants: list[list[Receiver]]
    names: list[str]
    n_kv: int


def _plan(model: HookedModel, sites: list[list[tuple[int, int, int]]], sender: tuple, paths: tuple[str, ...],
          layers: Sequence[int] | None, rule: tuple[float, float]) -> _Plan:
    if not any(sites):
        raise ValueError(f"no massive activations in these {len(sites)} prompt(s) (|x| > {rule[0]:g} and "
                         f">= {rule[1]:g}x median): nothing to path-patch")
    positions = [sorted({p for _, p, _ in s}) for s in sites]
    first = min(l for s in sites for l, _, _ in s)
    sender_layer = first if sender[0] == "massive" else sender[1]
    recv_layers = _receiver_layers(model, layers, sender_layer)
    cfg = model.cfg
    n_kv = n_kv_heads(cfg)
    recv: list[Receiver] = [(p, l, h) for p in paths if p != "direct" for l in recv_layers
                            for h in range(n_kv if p in ("k", "v") else cfg.n_heads)]
    recv += [("direct", cfg.n_layers, -1)] if "direct" in paths else []
    if not recv:
        raise ValueError(f"no receivers: the sender's block {sender_layer} is the last one; use receivers=('direct',)")
    joint = {p: [r for r in recv if r[0] == p] for p in paths}
    joint = {p: v for p, v in joint.items() if v}
    if "k" in joint and "v" in joint:
        joint["k+v"] = joint["k"] + joint["v"]
    if len({r[0] for r in recv}) > 1:
        joint["all"] = list(recv)
    return _Plan(positions, sorted({d for s in sites for _, _, d in s}), first, sender_layer, recv, joint,
                 [[r] for r in recv] + list(joint.values()), sorted({hook_name(model, p, l) for p, l, _ in recv}), n_kv)
