"""Pictures of every result: circuitsvis where it has the view, plotly for the rest; imported lazily by `.show()`.

    >>> from mi_massive import viz
    >>> viz.show(profile)                                              # doctest: +SKIP
    >>> viz.magnitudes_3d(model, "Summer is warm. Winter is cold.", 15)  # doctest: +SKIP
    >>> viz.explore(model)                                             # doctest: +SKIP

Each view returns something that displays itself in Jupyter: a plotly Figure or a `View` (HTML with the
bundled JS inlined, so it also works offline).
"""

from __future__ import annotations

import importlib
from typing import Any

# result type name -> "submodule:function"; submodules are imported only when a result is shown.
VIEWS: dict[str, str] = {
    "MassiveActivations": "tokens:show_massive",
    "LayerProfile": "profile:show_profile",
    "Origin": "origin:show_origin",
    "AttentionSinks": "heatmaps:show_sinks",
    "ImplicitBias": "heatmaps:show_implicit_bias",
    "PathPatching": "heatmaps:show_patching",
    "BiasTermTable": "interventions:show_table3",
    "MassiveStats": "interventions:show_stats",
    "Intervention": "interventions:show_result_table",
    "Perplexity": "interventions:show_result_table",
}


def _view(target: str):
    module, _, fn = target.partition(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), fn)


def show(result: Any, **kwargs: Any) -> Any:
    """The view registered for `result`'s type (or a parent type)."""
    for cls in type(result).__mro__:
        if cls.__name__ in VIEWS:
            return _view(VIEWS[cls.__name__])(result, **kwargs)
    raise TypeError(f"no view for {type(result).__name__}: views exist for {', '.join(sorted(VIEWS))}")


def magnitudes_3d(model: Any, prompt: str, layer: int, **kwargs: Any) -> Any:
    """|x| of block `layer`'s output over (token, dim) as an interactive 3-D surface (paper Fig. 1)."""
    return _view("magnitudes:magnitudes_3d")(model, prompt, layer, **kwargs)


def attention_patterns(model: Any, prompt: str, layer: int, **kwargs: Any) -> Any:
    """Layer `layer`'s attention patterns with the tokens holding massive activations starred."""
    return _view("attention:attention_patterns")(model, prompt, layer, **kwargs)


def explore(model: Any, **kwargs: Any) -> Any:
    """An ipywidgets app: prompt box, layer slider and head picker driving the views."""
    return _view("explore:explore")(model, **kwargs)


__all__ = ["show", "magnitudes_3d", "attention_patterns", "explore", "VIEWS"]
