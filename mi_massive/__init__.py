"""mi_massive: find, explain and visualise massive activations (Sun, Chen, Kolter, Liu 2024).

    >>> from mi_massive import load_model, find_massive_activations
    >>> model = load_model()                                    # doctest: +SKIP
    >>> find_massive_activations(model, "Summer is warm.")      # doctest: +SKIP
"""

from .constancy import MassiveStats, massive_stats
from .corpus import load_corpus
from .attention import AttentionSinks, ImplicitBias, attention_sinks, implicit_bias, swap_implicit_bias
from .detect import LayerProfile, MassiveActivations, find_massive_activations, layer_profile
from .models import load_model
from .interventions import Intervention, build_intervention, intervene
from .origin import Origin, trace_origin
from .perplexity import BiasTermTable, Perplexity, bias_term_table, perplexity
from .patching import PathPatching, path_patch
from .report import write_report
from .viz import explore

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
    "write_report",
]
