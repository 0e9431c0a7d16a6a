"""What every tutorial check shares: tensor comparison with messages a student can act on, references computed
once per kernel, and the folded answers of the interpretation questions.

A check calls the student's function first (a stub fails at once) and only then computes the library's answer,
through a `reference` function: cached on the model object and the case, so a second attempt at an exercise
compares in the time the student's function takes.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from .._types import HookedModel

PROMPTS = (
    "Summer is warm. Winter is cold.",
    "The quick brown fox jumps over the lazy dog.",
    "In 1905, Albert Einstein published four papers that changed physics.",
)

reference = functools.lru_cache(maxsize=256)  # keys: the model (by identity) and hashable case arguments


def student_bos(model: HookedModel) -> bool:
    """Whether `model.run_with_cache(text)` prepends a BOS token: what a student's function sees for a string."""
    return bool(getattr(model.cfg, "default_prepend_bos", True))


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


def answer(text: str) -> Any:
    """The answer to an interpretation question, folded away (click "Answer" to read it)."""
    from IPython.display import Markdown

    return Markdown(f"<details><summary>Answer</summary>\n\n{text}\n\n</details>")
