"""Checks for the tutorials: each calls the student's function on the real model and compares it to the library.

One module per tutorial; a check calls the student's function first (a stub fails at once), then compares with
the library's answer (computed once per kernel and cached), prints one line when the function agrees and raises
AssertionError with what was expected otherwise. `answer(text)` shows the folded answer to a question.

    >>> from mi_massive.tutorial_checks import finding as checks
    >>> checks.check_residual_stream(residual_stream, model)      # doctest: +SKIP
    ✓ residual_stream agrees with the library on 3 (prompt, layer) cases
"""

from ._common import answer

__all__ = ["answer"]
