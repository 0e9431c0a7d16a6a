"""Checks for the tutorials: each calls the student's function on the real model and compares it to the library.

One module per tutorial; a check prints one line when the function agrees and raises AssertionError with
what was expected otherwise.

    >>> from mi_massive.tutorial_checks import finding as checks
    >>> checks.check_residual_stream(residual_stream, model)      # doctest: +SKIP
    residual_stream agrees with the library on 6 (prompt, layer) cases
"""
