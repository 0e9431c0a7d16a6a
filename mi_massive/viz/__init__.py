"""Pictures of results: circuitsvis where it has the view, plotly for the rest; imported lazily by `.show()`.

Views draw results and never run a model: what a picture needs from the model is an analysis that returns a
frozen result (`layer_magnitudes`, `attention_patterns`, ...), so the same picture can be saved and redrawn
without the model. Each result class names its view in `VIEW` ("module:function" under this package).

    >>> from mi_massive import layer_magnitudes
    >>> from mi_massive.testing import tiny_model
    >>> view = layer_magnitudes(tiny_model("llama"), "hello world", 1).show()
    >>> view.figure.data[0].type
    'surface'

Every view is a `View`: HTML parts (text, tables, circuitsvis components, plotly figures) that display
themselves in Jupyter with the bundled JS inlined, so they also work offline.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._html import View


def view_function(result_type: type) -> Any:
    """The function that draws `result_type`, from the class's `VIEW` ("module:function")."""
    target = getattr(result_type, "VIEW", None)
    if not target:
        raise TypeError(f"no view for {result_type.__name__}: a result class names its view in VIEW "
                        "('module:function' under mi_massive.viz)")
    module, _, fn = target.partition(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), fn)


def show(result: Any, **kwargs: Any) -> View:
    """The view `result`'s class names, drawn from the result alone."""
    view = view_function(type(result))(result, **kwargs)
    if not isinstance(view, View):
        raise TypeError(f"the view of {type(result).__name__} returned {type(view).__name__}, not a View")
    return view


__all__ = ["show", "view_function", "View"]
