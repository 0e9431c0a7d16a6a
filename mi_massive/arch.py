"""The ONLY place that knows model families: every hook name, and what the bridge's config cannot say.

Core modules never branch on a family name; they ask `spec(model)` for what differs. What the bridge's config
says (a gated MLP, the norm, parallel attention and MLP, key/value heads) is read off it, not restated here.

    >>> from mi_massive.arch import hook
    >>> hook.resid_post(3)
    'blocks.3.hook_resid_post'
"""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass
from typing import Any

from ._types import HookedModel


@dataclass(frozen=True)
class FamilySpec:
    """What the analyses need to know about one model family. The fields marked "bridge" are filled by `spec(model)`
    from the bridge's config (`model.cfg`) where it has them; a family states them only where no bridge says them."""

    name: str
    model_types: tuple[str, ...]  # Hugging Face `config.model_type` values
    post_sublayer_norm: bool = False  # a norm after attention and after the MLP, before the residual add (Gemma 2/3)
    gated_mlp: bool | None = None  # bridge (cfg.gated_mlp): MLP is act(gate(x)) * up(x); hook_pre is the gate,
    # hook_pre_linear the up projection
    norm: str | None = None  # bridge (cfg.normalization_type): "rms" or "layernorm"
    parallel_attn_mlp: bool | None = None  # bridge (cfg.parallel_attn_mlp): attention and MLP both read resid_pre


FAMILIES: tuple[FamilySpec, ...] = (
    FamilySpec("gpt2", ("gpt2",)),
    FamilySpec("llama", ("llama",)),
    FamilySpec("mistral", ("mistral",)),
    FamilySpec("qwen2", ("qwen2",)),
    FamilySpec("gemma3", ("gemma3_text",), post_sublayer_norm=True),  # (the bridge's config does not say it)
    FamilySpec("gpt_neox", ("gpt_neox",)),
)


@dataclass(frozen=True)
class VisionSpec(FamilySpec):
    """A Vision Transformer family: the token layout its embeddings write (CLS, then `registers` register tokens,
    then the patches row by row) and the transformers classes a checkpoint is built as (`mi_massive.vision`)."""

    registers_attr: str | None = None  # config attribute holding the number of register tokens (None: none)
    gated_attr: str | None = None  # config attribute that, when true, makes the MLP gated (DINOv2's SwiGLU)
    layer_scale: bool = False  # per-channel LayerScale after attention and MLP, folded into their output projections
    classes: tuple[str, ...] = ()  # (with its output head, bare encoder) transformers classes


VISION_FAMILIES: tuple[VisionSpec, ...] = (
    VisionSpec("vit", ("vit",), gated_mlp=False, norm="layernorm",
               classes=("ViTForImageClassification", "ViTModel")),
    VisionSpec("clip_vision", ("clip_vision_model", "clip"), gated_mlp=False, norm="layernorm",
               classes=("CLIPVisionModelWithProjection", "CLIPVisionModel")),
    VisionSpec("dinov2_registers", ("dinov2_with_registers",), gated_mlp=False, norm="layernorm",
               registers_attr="num_register_tokens", gated_attr="use_swiglu_ffn", layer_scale=True,
               classes=("Dinov2WithRegistersForImageClassification", "Dinov2WithRegistersModel")),
)


def known_families() -> list[str]:
    return [f.name for f in FAMILIES]


def known_vision_families() -> list[str]:
    return [f.name for f in VISION_FAMILIES]


def vision_spec_for_hf_config(config: Any) -> VisionSpec | None:
    """The Vision Transformer family of a Hugging Face config (a CLIP config means its vision tower), or None."""
    model_type = getattr(config, "model_type", None)
    for fam in VISION_FAMILIES:
        if model_type in fam.model_types:
            if fam.gated_attr and getattr(config, fam.gated_attr, False):
                return dataclasses.replace(fam, gated_mlp=True)
            return fam
    return None


def spec_for_hf_config(config: Any) -> FamilySpec:
    """The family of a Hugging Face config; raises with the known families instead of guessing."""
    model_type = getattr(config, "model_type", None)
    for fam in FAMILIES:
        if model_type in fam.model_types:
            return fam
    vision = vision_spec_for_hf_config(config)
    if vision is not None:
        return vision
    raise ValueError(
        f"unsupported model family {model_type!r}: mi_massive knows {', '.join(known_families())} "
        f"(and the Vision Transformers {', '.join(known_vision_families())}). "
        "Add a FamilySpec in mi_massive/arch.py (and a tiny test config) to support it."
    )


_SPECS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its FamilySpec, beside the model


def spec(model: HookedModel) -> FamilySpec:
    """The family spec of a TransformerBridge (or anything with `.original_model.config`), with what the bridge's
    config says (`model.cfg`: gated MLP, norm, parallel attention and MLP) read off it.

        >>> from mi_massive.testing import tiny_model
        >>> fam = spec(tiny_model("gemma3"))
        >>> fam.name, fam.gated_mlp, fam.norm, fam.post_sublayer_norm
        ('gemma3', True, 'rms', True)
    """
    try:
        return _SPECS[model]
    except (KeyError, TypeError):
        pass
    config = getattr(getattr(model, "original_model", None), "config", None)
    if config is None:
        raise ValueError(f"expected a TransformerBridge from mi_massive.load_model, got {type(model).__name__}")
    fam = spec_for_hf_config(config)
    cfg = getattr(model, "cfg", None)
    said = {"gated_mlp": getattr(cfg, "gated_mlp", None), "parallel_attn_mlp": getattr(cfg, "parallel_attn_mlp", None),
            "norm": _NORMS.get(getattr(cfg, "normalization_type", None))}
    fam = dataclasses.replace(fam, **{k: v for k, v in said.items() if v is not None})
    try:
        _SPECS[model] = fam
    except TypeError:  # (not weakly referable: not kept)
        pass
    return fam


_NORMS = {"RMS": "rms", "RMSPre": "rms", "LN": "layernorm", "LNPre": "layernorm"}  # cfg.normalization_type


def n_kv_heads(cfg: Any) -> int:
    """Key/value heads per layer: `cfg.n_key_value_heads` under grouped-query attention, else `cfg.n_heads`."""
    return getattr(cfg, "n_key_value_heads", None) or cfg.n_heads


def kv_head_of(n_heads: int, n_kv: int) -> list[int]:
    """The key/value head each query head reads: query head h reads h // (n_heads // n_kv), as in grouped-query
    attention (n_kv == n_heads: each its own).

        >>> kv_head_of(4, 2)
        [0, 0, 1, 1]
    """
    if n_kv < 1 or n_heads % n_kv:
        raise ValueError(f"{n_heads} query heads cannot share {n_kv} key/value heads evenly")
    return [h // (n_heads // n_kv) for h in range(n_heads)]


def _named(templates: dict[str, str], kind: str) -> staticmethod:
    template = templates[kind]

    def name(layer: int) -> str:
        return template.format(layer=layer)

    name.__name__, name.__doc__ = kind, f"`{template}` of block `layer`."
    return staticmethod(name)


class hook:
    """TransformerLens hook names (compatibility mode): every one the package uses, as a template with {layer}
    (`hook.templates`) and one function each.

        >>> hook.pattern(2), hook.templates["pattern"]
        ('blocks.2.attn.hook_pattern', 'blocks.{layer}.attn.hook_pattern')
    """

    embed = "hook_embed"
    templates = {
        "resid_pre": "blocks.{layer}.hook_resid_pre",
        "resid_mid": "blocks.{layer}.hook_resid_mid",
        "resid_post": "blocks.{layer}.hook_resid_post",
        "attn_out": "blocks.{layer}.hook_attn_out",
        "mlp_out": "blocks.{layer}.hook_mlp_out",
        "mlp_pre": "blocks.{layer}.mlp.hook_pre",  # the gate's pre-activation in a gated MLP
        "mlp_pre_linear": "blocks.{layer}.mlp.hook_pre_linear",  # the up projection in a gated MLP
        "mlp_post": "blocks.{layer}.mlp.hook_post",
        "mlp_down_out": "blocks.{layer}.mlp.out.hook_out",  # the down projection's output, before any post-MLP norm
        "q": "blocks.{layer}.attn.hook_q",
        "k": "blocks.{layer}.attn.hook_k",
        "v": "blocks.{layer}.attn.hook_v",
        "z": "blocks.{layer}.attn.hook_z",
        "pattern": "blocks.{layer}.attn.hook_pattern",
    }
    resid_post_template = templates["resid_post"]  # results record it as their provenance

    resid_pre = _named(templates, "resid_pre")
    resid_mid = _named(templates, "resid_mid")
    resid_post = _named(templates, "resid_post")
    attn_out = _named(templates, "attn_out")
    mlp_out = _named(templates, "mlp_out")
    mlp_pre = _named(templates, "mlp_pre")
    mlp_pre_linear = _named(templates, "mlp_pre_linear")
    mlp_post = _named(templates, "mlp_post")
    mlp_down_out = _named(templates, "mlp_down_out")
    q = _named(templates, "q")
    k = _named(templates, "k")
    v = _named(templates, "v")
    z = _named(templates, "z")
    pattern = _named(templates, "pattern")

    @staticmethod
    def ln_scale(layer: int, which: str) -> str:
        """`which` is ln1, ln2, ln1_post or ln2_post."""
        return f"blocks.{layer}.{which}.hook_scale"
