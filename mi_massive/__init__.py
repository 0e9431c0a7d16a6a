"""mi_massive: find, explain and visualise massive activations (Sun, Chen, Kolter, Liu 2024).

    >>> from mi_massive import load_model, find_massive_activations
    >>> model = load_model()                                    # doctest: +SKIP
    >>> find_massive_activations(model, "Summer is warm.")      # doctest: +SKIP
    >>> from mi_massive.testing import tiny_model               # no download: a massive activation planted
    >>> find_massive_activations(tiny_model("llama"), "Summer is warm.").dims
    [5]
"""

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

# Imported on first use (PEP 562), so that `mi-massive --help` and `import mi_massive.cli` load no torch:
# public name -> the module that defines it. Add an export here and to __all__.
_LAZY = {
    "MassiveStats": "constancy", "massive_stats": "constancy",
    "load_corpus": "corpus",
    "AttentionSinks": "attention", "ImplicitBias": "attention", "attention_sinks": "attention",
    "implicit_bias": "attention", "swap_implicit_bias": "attention",
    "LayerProfile": "detect", "MassiveActivations": "detect", "find_massive_activations": "detect",
    "layer_profile": "detect",
    "load_model": "models",
    "Intervention": "interventions", "build_intervention": "interventions", "intervene": "interventions",
    "Origin": "origin", "trace_origin": "origin",
    "BiasTermTable": "perplexity", "Perplexity": "perplexity", "bias_term_table": "perplexity",
    "perplexity": "perplexity",
    "PathPatching": "patching", "path_patch": "patching",
    "write_report": "report",
    "explore": "snapshot", "attention_patterns": "snapshot", "AttentionPatterns": "snapshot",
    "layer_magnitudes": "snapshot", "LayerMagnitudes": "snapshot",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif not name.startswith("__"):  # a submodule: mi_massive.viz, mi_massive.testing, ...
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == name:  # the import system binding submodule
            value = getattr(value, name)  # `perplexity` over the function of that name, which the package exports
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:
    from .attention import AttentionSinks, ImplicitBias, attention_sinks, implicit_bias, swap_implicit_bias
    from .constancy import MassiveStats, massive_stats
    from .corpus import load_corpus
    from .detect import LayerProfile, MassiveActivations, find_massive_activations, layer_profile
    from .interventions import Intervention, build_intervention, intervene
    from .models import load_model
    from .origin import Origin, trace_origin
    from .patching import PathPatching, path_patch
    from .perplexity import BiasTermTable, Perplexity, bias_term_table, perplexity
    from .report import write_report
    from .snapshot import AttentionPatterns, LayerMagnitudes, attention_patterns, explore, layer_magnitudes

__all__ = [
    "load_corpus",
    "massive_stats",
    "MassiveStats",
    "build_intervention",
    "intervene",
    "Intervention",
    "perplexity",
    "Perplexity",
    "bias_term_table",
    "BiasTermTable",
    "attention_sinks",
    "implicit_bias",
    "swap_implicit_bias",
    "AttentionSinks",
    "ImplicitBias",
    "load_model",
    "find_massive_activations",
    "layer_profile",
    "MassiveActivations",
    "LayerProfile",
    "trace_origin",
    "Origin",
    "path_patch",
    "PathPatching",
    "explore",
    "attention_patterns",
    "AttentionPatterns",
    "layer_magnitudes",
    "LayerMagnitudes",
    "write_report",
]
