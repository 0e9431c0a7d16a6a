"""The runs behind `patching.path_patch`: the sender's removal, receiver hooks, batched and naive passes.

Rows of a batched pass are (variant, prompt) pairs, row = variant * n_prompts + prompt; a variant is a list of
receivers (path, layer, head) patched together. The naive reference runs one pass per variant and prompt
with hooks written position by position, so the two share no indexing code.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._hooks import run_with_hooks
from ._loss import next_token_nll
from ._types import HookedModel
from .engine import resumed
from .arch import hook

Corruption = str | float | Callable[[Tensor], Tensor]
Metric = str | Callable[[Tensor, Tensor], Tensor | float]
Receiver = tuple[str, int, int]  # (path, layer, head); direct is ("direct", n_layers, -1)


# --- senders: what the corrupted run removes ------------------------------------------------------------------

def _corrupt(corruption: Corruption, values: Tensor) -> Tensor:
    if callable(corruption):
        out = torch.as_tensor(corruption(values.clone()), dtype=values.dtype, device=values.device)
        if out.shape != values.shape:
            raise ValueError(f"corruption returned shape {tuple(out.shape)}, expected {tuple(values.shape)}")
        return out
    return torch.zeros_like(values) if corruption == "zero" else torch.full_like(values, float(corruption))


Site = tuple[int, int, int]  # (first layer, pos, dim) of one massive entry of one prompt


@dataclass
class Pair:
    """The clean and the corrupted run of a batch of prompts, made as the two halves of one pass."""

    sites: list[list[Site]]  # per prompt: the massive entries, at the block where each first appears
    clean: Tensor  # metric per prompt
    corrupted: Tensor
    source: dict[str, Tensor]  # the corrupted rows' activations at the receiver hooks
    resid: dict[int, Tensor]  # the clean residual after each block from the sender's on (batch, pos, d_model)


def clean_and_corrupted(model: HookedModel, tokens: Tensor, sender: tuple, corruption: Corruption, metric: Metric,
                        names: Sequence[str], *, sites: list[list[Site]] | None, resid_layer: int | None,
                        threshold: float, ratio: float) -> Pair:
    """One pass of 2n rows: rows 0..n-1 clean, rows n..2n-1 with the sender removed.

    With `sites=None` the massive entries are found on the clean rows as the pass goes (the paper's rule at
    each block output, `_rule.massive_mask`), and a "massive" sender is removed from the corrupted rows at the
    block where each entry first appears, as with sites found beforehand. The clean residual is kept after
    every block from `resid_layer` on (None: the first block with a massive entry): patched rows resume there.
    """
    from ._rule import massive_mask

    n, kind = len(tokens), sender[0]
    found = [list(s) for s in sites] if sites is not None else [[] for _ in range(n)]
    seen = {(b, p, d) for b, s in enumerate(found) for _, p, d in s}
    kept: dict[str, Any] = {"layer": resid_layer}
    resid: dict[int, Tensor] = {}
    source: dict[str, Tensor] = {}

    def at_block(layer: int) -> Callable:
        def fn(x: Tensor, _hook: Any) -> Tensor:  # (2n, pos, d_model)
            if sites is None:
                b, p, d = massive_mask(x[:n], threshold=threshold, ratio=ratio).nonzero(as_tuple=True)
                for entry in zip(b.tolist(), p.tolist(), d.tolist()):
                    if entry not in seen:
                        seen.add(entry)
                        found[entry[0]].append((layer, entry[1], entry[2]))
            new = [(b, p, d) for b, s in enumerate(found) for first, p, d in s if first == layer]
            if kind == "massive" and new:
                b, p, d = torch.tensor(new, device=x.device).unbind(1)
                x[n + b, p, d] = _corrupt(corruption, x[n + b, p, d])
            if kept["layer"] is None and new:
                kept["layer"] = layer
            if kept["layer"] is not None and layer >= kept["layer"]:
                resid[layer] = x[:n].detach().clone()
            return x
        return fn

    hooks: list[tuple[str, Callable]] = [(hook.resid_post(l), at_block(l)) for l in range(model.cfg.n_layers)]
    if kind == "neuron":
        _, layer, neuron = sender

        def off(x: Tensor, _hook: Any) -> Tensor:  # (2n, pos, d_mlp)
            x[n:, :, neuron] = _corrupt(corruption, x[n:, :, neuron])
            return x

        hooks.append((hook.mlp_post(layer), off))
    elif kind == "super_weight":  # the corrupted rows' down projection output, as if W_out[neuron, dim] were replaced
        _, layer, neuron, dim = sender
        W, act = model.blocks[layer].mlp.W_out, {}

        def keep(x: Tensor, _hook: Any) -> None:
            act["a"] = x[n:, :, neuron].clone()

        def shift(x: Tensor, _hook: Any) -> Tensor:
            old = W[neuron, dim].detach()
            x[n:, :, dim] += act["a"] * (_corrupt(corruption, old.clone()) - old).to(x.dtype)
            return x

        hooks += [(hook.mlp_post(layer), keep), (hook.mlp_down_out(layer), shift)]

    def saver(name: str) -> Callable:
        def fn(x: Tensor, _hook: Any) -> None:
            source[name] = x[n:].detach().clone()
        return fn

    hooks += [(name, saver(name)) for name in dict.fromkeys(names)]  # after the removal at the same hook
    rows = tokens.repeat(2, 1)
    logits = run_with_hooks(model, rows, hooks)
    m = metric_rows(metric, logits, rows)
    return Pair(found, m[:n], m[n:], source, resid)


# --- receivers ------------------------------------------------------------------------------------------------

def hook_name(model: HookedModel, path: str, layer: int) -> str:
    if path == "direct":
        return hook.resid_post(model.cfg.n_layers - 1)
    return {"k": hook.k, "v": hook.v, "q": hook.q}[path](layer)


def _writer(src: Tensor, rows: list[int], srcs: list[int], pos: list[int], heads: list[int] | None) -> Callable:
    """A hook writing src[srcs, pos(, heads)] into rows of the activation (in place)."""
    r, s, p = (torch.tensor(v) for v in (rows, srcs, pos))
    h = None if heads is None else torch.tensor(heads)

    def fn(x: Tensor, _hook: Any) -> Tensor:
        dev = x.device
        if h is None:  # (batch, pos, d_model)
            x[r.to(dev), p.to(dev)] = src[s, p].to(dev, x.dtype)
        else:  # (batch, pos, head, d_head)
            x[r.to(dev), p.to(dev), h.to(dev)] = src[s, p, h].to(dev, x.dtype)
        return x

    return fn


def _patch_hooks(model: HookedModel, variants: Sequence[Sequence[Receiver]], n_prompts: int,
                 positions: Sequence[Sequence[int]], corrupted: dict[str, Tensor]) -> list[tuple[str, Callable]]:
    """Hooks for rows (variant i, prompt b) -> row i * n_prompts + b, each row patching its variant's receivers."""
    index: dict[str, tuple[list[int], list[int], list[int], list[int]]] = {}
    for i, variant in enumerate(variants):
        for path, layer, head in variant:
            rows, srcs, pos, heads = index.setdefault(hook_name(model, path, layer), ([], [], [], []))
            for b in range(n_prompts):
                for p in positions[b]:
                    rows.append(i * n_prompts + b), srcs.append(b), pos.append(p), heads.append(head)
    return [(name, _writer(corrupted[name], rows, srcs, pos, None if name.endswith("hook_resid_post") else heads))
            for name, (rows, srcs, pos, heads) in index.items() if rows]


def _naive_hook(model: HookedModel, receiver: Receiver, positions: list[int], corrupted: dict[str, Tensor], b: int):
    """Reference hook for a single-prompt pass: one receiver, position by position."""
    path, layer, head = receiver
    name = hook_name(model, path, layer)

    def fn(x: Tensor, _hook: Any) -> Tensor:
        for p in positions:
            src = corrupted[name][b, p]  # (d_model,) or (head, d_head)
            if path == "direct":
                x[0, p] = src.to(x.device, x.dtype)
            else:
                x[0, p, head] = src[head].to(x.device, x.dtype)
        return x

    return name, fn


def metric_rows(metric: Metric, logits: Tensor, tokens: Tensor) -> Tensor:
    """The metric of each row (batch,) on CPU."""
    tokens = tokens.to(logits.device)
    if metric == "loss":
        return next_token_nll(logits[:, :-1], tokens[:, 1:]).mean(1).cpu()
    return torch.tensor([float(metric(logits[r : r + 1], tokens[r : r + 1])) for r in range(len(tokens))])


def count(counter: list[int], rows: int, blocks: int, *, unembedded: bool = True) -> None:
    """One pass of `rows` prompt-rows through `blocks` decoder blocks into `counter`: passes, prompt-rows,
    decoder blocks run summed over rows, rows unembedded (the arithmetic done, which on a CPU sets the time)."""
    counter[0] += 1
    counter[1] += rows
    counter[2] += rows * blocks
    counter[3] += rows if unembedded else 0


def run_rows(model: HookedModel, tokens: Tensor, hooks: list, metric: Metric, counter: list[int], *, start: int = 0,
             resid: Tensor | None = None) -> Tensor:
    """The metric of each row with `hooks`; with `resid`, the pass resumes at block `start` from it (`count`ed)."""
    count(counter, len(tokens), model.cfg.n_layers - start)
    with resumed(model, start, resid):
        return metric_rows(metric, run_with_hooks(model, tokens, hooks), tokens)


def patched_metrics(model: HookedModel, tokens: Tensor, variants: list[list[Receiver]], positions: list[list[int]],
                     corrupted: dict[str, Tensor], metric: Metric, *, method: str, batch_size: int,
                     counter: list[int], resid: dict[int, Tensor], clean: Tensor) -> Tensor:
    """(variant, prompt) metrics for one batch of equal-length prompts.

    Batched: variants are taken in order of their first receiver's block and cut into passes of `batch_size`
    rows; each pass resumes at the first receiver block among its rows from the clean residual `resid[block-1]`
    (every row equals the clean run before its receivers). On the CPU, where rows cost their arithmetic, a pass
    holds the variants of one first block only (smollm2, one prompt: 19 passes instead of 2, 14% less time); on
    a GPU, where rows of one pass run side by side, passes are as full as `batch_size` allows. A variant that
    only patches queries at position 0 of a causal model is not run: the first position's query meets only its
    own key, whose softmax weight is exactly 1 whatever the query, so its metric is exactly the clean one
    (`clean`, per prompt). The naive loop runs every variant as whole passes."""
    n = len(tokens)
    out = torch.empty(len(variants), n)
    if method == "naive":  # one pass per variant and prompt
        for i, variant in enumerate(variants):
            for b in range(n):
                hooks = [_naive_hook(model, r, positions[b], corrupted, b) for r in variant]
                out[i, b] = run_rows(model, tokens[b : b + 1], hooks, metric, counter)[0]
        return out
    chunk = max(1, batch_size // n)
    first = [min((layer for _, layer, _ in v), default=model.cfg.n_layers) for v in variants]
    inert = (getattr(model.cfg, "attention_dir", "causal") == "causal" and all(list(p) == [0] for p in positions))
    skip = {i for i, v in enumerate(variants) if inert and v and all(path == "q" for path, _, _ in v)}
    out[sorted(skip)] = clean
    order = sorted((i for i in range(len(variants)) if i not in skip), key=lambda i: -first[i])  # later first
    if next(model.parameters()).device.type == "cpu":  # rows cost their arithmetic: none runs a block before its
        groups = [list(g) for _, g in itertools.groupby(order, key=lambda i: first[i])]  # receiver's
    else:  # rows of one pass run side by side: as few passes as batch_size allows
        groups = [order]
    for part in (g[i : i + chunk] for g in groups for i in range(0, len(g), chunk)):
        start = min([first[j] for j in part] + [model.cfg.n_layers - 1])  # the direct path's hook is the last block's
        rows = tokens.repeat(len(part), 1)  # row k * n + b is variant part[k] on prompt b
        hooks = _patch_hooks(model, [variants[j] for j in part], n, positions, corrupted)
        before = resid.get(start - 1)  # the clean residual entering block `start`
        out[part] = run_rows(model, rows, hooks, metric, counter, start=start if before is not None else 0,
                             resid=None if before is None else before.repeat(len(part), 1, 1)).view(len(part), n)
    return out
