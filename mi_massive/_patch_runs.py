"""The runs behind `patching.path_patch`: the sender's removal, receiver hooks, batched and naive passes.

Rows of a batched pass are (variant, prompt) pairs, row = variant * n_prompts + prompt; a variant is a list of
receivers (path, layer, head) patched together. The naive reference runs one pass per variant and prompt
with hooks written position by position, so the two share no indexing code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from ._hooks import hooked
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


@contextmanager
def replaced_weight(weight: Tensor, index: tuple[int, int], corruption: Corruption) -> Iterator[None]:
    """Set one weight entry (a view of the model's parameter) for the body; restore it in `finally`."""
    with torch.no_grad():
        old = weight[index].clone()
        try:
            weight[index] = _corrupt(corruption, old)
            yield
        finally:
            weight[index] = old


def sender_context(model: Any, sender: tuple, corruption: Corruption, sites: list[list[tuple[int, int, int]]]):
    """The corrupted run's intervention for one batch; `sites[b]` lists (layer, pos, dim) of prompt b."""
    kind = sender[0]
    if kind == "super_weight":
        _, layer, neuron, dim = sender
        return replaced_weight(model.blocks[layer].mlp.W_out, (neuron, dim), corruption)
    if kind == "neuron":
        _, layer, neuron = sender

        def off(x: Tensor, _hook: Any) -> Tensor:  # (batch, pos, d_mlp)
            x[..., neuron] = _corrupt(corruption, x[..., neuron])
            return x

        return hooked(model, [(hook.mlp_post(layer), off)])
    by_layer: dict[int, list[tuple[int, int, int]]] = {}
    for b, prompt_sites in enumerate(sites):
        for layer, pos, dim in prompt_sites:
            by_layer.setdefault(layer, []).append((b, pos, dim))

    def remove(idx: Tensor) -> Callable:
        def fn(x: Tensor, _hook: Any) -> Tensor:  # (batch, pos, d_model)
            b, p, d = idx.to(x.device).unbind(1)
            x[b, p, d] = _corrupt(corruption, x[b, p, d])
            return x
        return fn

    return hooked(model, [(hook.resid_post(l), remove(torch.tensor(v))) for l, v in sorted(by_layer.items())])


# --- receivers ------------------------------------------------------------------------------------------------

def hook_name(model: Any, path: str, layer: int) -> str:
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


def _patch_hooks(model: Any, variants: Sequence[Sequence[Receiver]], n_prompts: int,
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


def _naive_hook(model: Any, receiver: Receiver, positions: list[int], corrupted: dict[str, Tensor], b: int):
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
        logp = logits[:, :-1].float().log_softmax(-1)  # (batch, pos - 1, d_vocab)
        return -logp.gather(-1, tokens[:, 1:, None])[..., 0].mean(1).cpu()
    return torch.tensor([float(metric(logits[r : r + 1], tokens[r : r + 1])) for r in range(len(tokens))])


def run_rows(model: Any, tokens: Tensor, hooks: list, metric: Metric, counter: list[int]) -> Tensor:
    counter[0] += 1
    counter[1] += len(tokens)
    with torch.inference_mode(), hooked(model, hooks):
        return metric_rows(metric, model(tokens.to(model.cfg.device)), tokens)


def patched_metrics(model: Any, tokens: Tensor, variants: list[list[Receiver]], positions: list[list[int]],
                     corrupted: dict[str, Tensor], metric: Metric, *, method: str, batch_size: int,
                     counter: list[int]) -> Tensor:
    """(variant, prompt) metrics for one batch of equal-length prompts."""
    n = len(tokens)
    out = torch.empty(len(variants), n)
    if method == "naive":  # one pass per variant and prompt
        for i, variant in enumerate(variants):
            for b in range(n):
                hooks = [_naive_hook(model, r, positions[b], corrupted, b) for r in variant]
                out[i, b] = run_rows(model, tokens[b : b + 1], hooks, metric, counter)[0]
        return out
    chunk = max(1, batch_size // n)
    for start in range(0, len(variants), chunk):
        part = variants[start : start + chunk]
        rows = tokens.repeat(len(part), 1)  # row i * n + b is variant i on prompt b
        hooks = _patch_hooks(model, part, n, positions, corrupted)
        out[start : start + len(part)] = run_rows(model, rows, hooks, metric, counter).view(len(part), n)
    return out
