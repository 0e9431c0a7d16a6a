"""Hooks that must fire and always come off: the one way mi_massive runs a hooked forward pass."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ._types import HookedModel

HookFn = Callable[[torch.Tensor, Any], torch.Tensor | None]


def check_eval(model: HookedModel) -> None:
    """Analyses need a deterministic model: raise if any module is in training mode (dropout would be on)."""
    stack, seen = [model], {id(model)}  # what model.modules() walks, without its name bookkeeping (half the time
    push = stack.append  # on a bridge of thousands of modules; benchmarks/RESULTS.md)
    while stack:
        m = stack.pop()
        if m.training:
            raise ValueError("the model is in training mode, so dropout would make every result random: call "
                             "model.eval() first (load_model returns models in eval mode)")
        for child in m._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                push(child)


def check_weights(model: HookedModel) -> None:
    """Raise if any weight holds NaN or inf (called once an activation is not finite, to name the cause)."""
    bad = [n.replace("._original_component", "") for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise ValueError(f"the model's weights hold NaN or inf ({', '.join(bad[:3])}): every result would be NaN; "
                         "reload the model")


def check_finite(model: HookedModel, out: Any) -> None:
    """A non-finite output: raise if the weights hold NaN/inf, else warn that the activations overflow the dtype."""
    if not isinstance(out, torch.Tensor):
        return
    # any NaN/inf entry makes the sum NaN/inf, so a finite sum clears them all (much cheaper than isfinite over
    # the logits; benchmarks/RESULTS.md); only a sum that overflows needs the entry-wise check
    if bool(torch.isfinite(out.sum())) or bool(torch.isfinite(out).all()):
        return
    check_weights(model)
    warnings.warn(f"the model's output is not finite: activations overflow {model.cfg.dtype}, so massive values and "
                  "what depends on them are inf or NaN; load the model with dtype=torch.float32 (or bfloat16)",
                  RuntimeWarning, stacklevel=3)


@contextmanager
def hooked(model: HookedModel, fwd_hooks: Sequence[tuple[str, HookFn]], *, require_fired: bool = True) -> Iterator[Any]:
    """Attach `fwd_hooks` for the body; remove them in `finally`; raise if one never fired.

    A wrong hook name must never give a silently clean result.
    """
    check_eval(model)
    known = model.hook_dict  # a property that rebuilds the alias table on every access: read it once
    unknown = [name for name, _ in fwd_hooks if name not in known]
    if unknown:
        raise ValueError(f"unknown hook name(s) {unknown[:3]}: e.g. {list(known)[:3]}")
    fired: set[str] = set()

    def wrap(name: str, fn: HookFn) -> HookFn:
        def inner(tensor: torch.Tensor, hook: Any) -> torch.Tensor | None:
            fired.add(name)
            return fn(tensor, hook)

        return inner

    with model.hooks(fwd_hooks=[(n, wrap(n, f)) for n, f in fwd_hooks]):
        yield model
    missing = sorted({n for n, _ in fwd_hooks} - fired)
    if require_fired and missing:
        raise RuntimeError(f"hook(s) never fired: {missing[:5]}; the result would have been silently unhooked")


def run_with_hooks(model: HookedModel, tokens: torch.Tensor, fwd_hooks: Sequence[tuple[str, HookFn]], *,
                   finite_check: bool = True, **kwargs: Any) -> Any:
    """One forward pass with hooks that must fire; no gradients. A non-finite output warns (dtype overflow) or
    raises (NaN/inf weights) unless `finite_check=False` (for callers that report it themselves)."""
    with torch.inference_mode(), hooked(model, fwd_hooks):
        out = model(tokens.to(model.cfg.device), **kwargs)
    if finite_check:
        check_finite(model, out)
    return out


def capture(model: HookedModel, tokens: torch.Tensor, names: Sequence[str], **kwargs: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Run once and keep only the activations at `names` (detached); returns (output, cache)."""
    cache: dict[str, torch.Tensor] = {}

    def saver(name: str) -> HookFn:  # keyed by the name asked for: hook.name may be an alias's target
        def save(tensor: torch.Tensor, hook: Any) -> None:
            cache[name] = tensor.detach()

        return save

    out = run_with_hooks(model, tokens, [(n, saver(n)) for n in dict.fromkeys(names)], **kwargs)
    return out, cache


class _LazyFloat64(Mapping[str, torch.Tensor]):
    """CPU activations as float64, each converted on first read into its own slice of one flat buffer."""

    def __init__(self, parts: dict[str, torch.Tensor], slots: dict[str, torch.Tensor]) -> None:
        self._parts, self._slots, self._done = parts, slots, {}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._done:
            p = self._parts[name]
            self._done[name] = self._slots[name].copy_(p.reshape(-1)).view(p.shape)
        return self._done[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._parts)

    def __len__(self) -> int:
        return len(self._parts)


def host_float64(raw: Mapping[str, torch.Tensor], row: int = 0) -> Mapping[str, torch.Tensor]:
    """Batch row `row` of each activation as float64 on the CPU, in one device-to-host copy (one sync on a GPU).

    Each activation is a view of one flat float64 buffer, converted straight into its slice. On the CPU a slice
    is filled when first read: the buffer is fresh memory (a page fault per 4 KiB written) and a trace reads
    about a third of it. Every slice keeps its offset in the buffer either way, so float64 arithmetic on it
    (whose vectorised rounding can depend on alignment) gives the same bits.
    """
    parts = {n: t[row].detach() for n, t in raw.items()}
    if not parts:
        return {}
    sizes = [p.numel() for p in parts.values()]
    first = next(iter(parts.values()))
    flat = torch.empty(sum(sizes), dtype=torch.float64, device=first.device)
    if first.device.type == "cpu":
        return _LazyFloat64(parts, dict(zip(parts, flat.split(sizes))))
    for c, p in zip(flat.split(sizes), parts.values()):
        c.copy_(p.reshape(-1))
    flat = flat.cpu()
    return {n: c.view(p.shape) for (n, p), c in zip(parts.items(), flat.split(sizes))}
