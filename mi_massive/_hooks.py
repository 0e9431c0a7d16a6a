"""Hooks that must fire and always come off: the one way mi_massive runs a hooked forward pass."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

HookFn = Callable[[torch.Tensor, Any], torch.Tensor | None]


@contextmanager
def hooked(model: Any, fwd_hooks: Sequence[tuple[str, HookFn]], *, require_fired: bool = True) -> Iterator[Any]:
    """Attach `fwd_hooks` for the body; remove them in `finally`; raise if one never fired.

    A wrong hook name must never give a silently clean result.
    """
    unknown = [name for name, _ in fwd_hooks if name not in model.hook_dict]
    if unknown:
        raise ValueError(f"unknown hook name(s) {unknown[:3]}: e.g. {list(model.hook_dict)[:3]}")
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


def run_with_hooks(model: Any, tokens: torch.Tensor, fwd_hooks: Sequence[tuple[str, HookFn]], **kwargs: Any) -> Any:
    """One forward pass with hooks that must fire; no gradients."""
    with torch.inference_mode(), hooked(model, fwd_hooks):
        return model(tokens.to(model.cfg.device), **kwargs)


def capture(model: Any, tokens: torch.Tensor, names: Sequence[str], **kwargs: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Run once and keep only the activations at `names` (detached); returns (output, cache)."""
    cache: dict[str, torch.Tensor] = {}

    def saver(name: str) -> HookFn:  # keyed by the name asked for: hook.name may be an alias's target
        def save(tensor: torch.Tensor, hook: Any) -> None:
            cache[name] = tensor.detach()

        return save

    out = run_with_hooks(model, tokens, [(n, saver(n)) for n in dict.fromkeys(names)], **kwargs)
    return out, cache
