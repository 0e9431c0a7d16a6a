"""The ONLY place that knows model families: hook names, gated MLPs, norms, BOS needs.

Core modules never branch on a family name; they ask `spec(model)` for what differs.

    >>> from mi_massive.arch import hook
    >>> hook.resid_post(3)
    'blocks.3.hook_resid_post'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FamilySpec:
    """What the analyses need to know about one model family."""

    name: str
    model_types: tuple[str, ...]  # Hugging Face `config.model_type` values
    gated_mlp: bool  # MLP is act(gate(x)) * up(x); hook_pre is the gate, hook_pre_linear the up projection
    norm: str  # "rms" or "layernorm"
    post_sublayer_norm: bool = False  # a norm after attention and after the MLP, before the residual add (Gemma 2/3)
    parallel_attn_mlp: bool = False  # attention and MLP both read resid_pre (GPT-NeoX / Pythia)
    needs_bos: bool = False  # the model was trained with BOS and misbehaves without it
    grouped_query: bool = False  # key/value heads may be shared across query heads


FAMILIES: tuple[FamilySpec, ...] = (
    FamilySpec("gpt2", ("gpt2",), gated_mlp=False, norm="layernorm"),
    FamilySpec("llama", ("llama",), gated_mlp=True, norm="rms", grouped_query=True),
    FamilySpec("mistral", ("mistral",), gated_mlp=True, norm="rms", grouped_query=True),
    FamilySpec("qwen2", ("qwen2",), gated_mlp=True, norm="rms", grouped_query=True),
    FamilySpec(
        "gemma3", ("gemma3_text",), gated_mlp=True, norm="rms", post_sublayer_norm=True,
        needs_bos=True, grouped_query=True,
    ),
    FamilySpec("gpt_neox", ("gpt_neox",), gated_mlp=False, norm="layernorm", parallel_attn_mlp=True),
)


def known_families() -> list[str]:
    return [f.name for f in FAMILIES]


def spec_for_hf_config(config: Any) -> FamilySpec:
    """The family of a Hugging Face config; raises with the known families instead of guessing."""
    model_type = getattr(config, "model_type", None)
    for fam in FAMILIES:
        if model_type in fam.model_types:
            if fam.parallel_attn_mlp and not getattr(config, "use_parallel_residual", True):
                return FamilySpec(fam.name, fam.model_types, fam.gated_mlp, fam.norm, grouped_query=fam.grouped_query)
            return fam
    raise ValueError(
        f"unsupported model family {model_type!r}: mi_massive knows {', '.join(known_families())}. "
        "Add a FamilySpec in mi_massive/arch.py (and a tiny test config) to support it."
    )


def spec(model: Any) -> FamilySpec:
    """The family spec of a TransformerBridge (or anything with `.original_model.config`)."""
    cached = getattr(model, "_mi_massive_spec", None)
    if cached is not None:
        return cached
    config = getattr(getattr(model, "original_model", None), "config", None)
    if config is None:
        raise ValueError(f"expected a TransformerBridge from mi_massive.load_model, got {type(model).__name__}")
    fam = spec_for_hf_config(config)
    try:
        model._mi_massive_spec = fam
    except Exception:
        pass
    return fam


class hook:
    """TransformerLens hook names (compatibility mode), one function each."""

    embed = "hook_embed"
    resid_post_template = "blocks.{layer}.hook_resid_post"  # results record it as their provenance

    @staticmethod
    def resid_pre(layer: int) -> str:
        return f"blocks.{layer}.hook_resid_pre"

    @staticmethod
    def resid_mid(layer: int) -> str:
        return f"blocks.{layer}.hook_resid_mid"

    @staticmethod
    def resid_post(layer: int) -> str:
        return hook.resid_post_template.format(layer=layer)

    @staticmethod
    def attn_out(layer: int) -> str:
        return f"blocks.{layer}.hook_attn_out"

    @staticmethod
    def mlp_out(layer: int) -> str:
        return f"blocks.{layer}.hook_mlp_out"

    @staticmethod
    def mlp_post(layer: int) -> str:
        return f"blocks.{layer}.mlp.hook_post"

    @staticmethod
    def mlp_pre(layer: int) -> str:
        return f"blocks.{layer}.mlp.hook_pre"

    @staticmethod
    def mlp_pre_linear(layer: int) -> str:
        return f"blocks.{layer}.mlp.hook_pre_linear"

    @staticmethod
    def z(layer: int) -> str:
        return f"blocks.{layer}.attn.hook_z"

    @staticmethod
    def q(layer: int) -> str:
        return f"blocks.{layer}.attn.hook_q"

    @staticmethod
    def k(layer: int) -> str:
        return f"blocks.{layer}.attn.hook_k"

    @staticmethod
    def v(layer: int) -> str:
        return f"blocks.{layer}.attn.hook_v"

    @staticmethod
    def pattern(layer: int) -> str:
        return f"blocks.{layer}.attn.hook_pattern"

    @staticmethod
    def ln_scale(layer: int, which: str) -> str:
        """`which` is ln1, ln2, ln1_post or ln2_post."""
        return f"blocks.{layer}.{which}.hook_scale"
