"""What every tutorial check shares: tensor comparison with messages a student can act on."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

PROMPTS = (
    "Summer is warm. Winter is cold.",
    "The quick brown fox jumps over the lazy dog.",
    "In 1905, Albert Einstein published four papers that changed physics.",
)


def as_tensor(got: Any, what: str) -> Tensor:
    if not isinstance(got, Tensor):
        raise AssertionError(f"{what} should be a torch.Tensor, got {type(got).__name__}")
    return got.detach().float().cpu()


def assert_close(got: Any, want: Tensor, what: str, *, rtol: float = 1e-3, atol: float = 1e-3) -> None:
    """Same shape and values (relative tolerance: massive values are ~1e4)."""
    got = as_tensor(got, what)
    want = want.detach().float().cpu()
    if got.shape != want.shape:
        raise AssertionError(f"{what} has shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    if not torch.allclose(got, want, rtol=rtol, atol=atol):
        i = int((got - want).abs().flatten().argmax())
        raise AssertionError(
            f"{what} differs from the library: at flat index {i} got {float(got.flatten()[i]):.6g}, "
            f"expected {float(want.flatten()[i]):.6g}"
        )


def assert_equal(got: Any, want: Any, what: str) -> None:
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, expected {want!r}")


def passed(fn: Any, detail: str) -> None:
    print(f"\N{CHECK MARK} {getattr(fn, '__name__', 'your function')} agrees with the library {detail}")
