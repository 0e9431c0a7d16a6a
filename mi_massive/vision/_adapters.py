"""TransformerLens architecture adapters for the Vision Transformers the bridge lacks (CLIP's vision tower, DINOv2).

TransformerLens 4.x bridges ViT and DeiT (`ViTArchitectureAdapter`); these subclasses point the same component
names (embed, blocks.{i}.ln1/attn/ln2/mlp, ln_final) at CLIP's and DINOv2's modules, so that every hook name and
weight view (W_O, W_in, W_out) is the one the language-model analyses use. They are registered with the bridge's
factory on first use; the family facts (which config types, registers, layer scale) live in `mi_massive.arch`.
"""

from __future__ import annotations

from typing import Any

from transformer_lens.model_bridge.generalized_components import (
    AttentionBridge, BlockBridge, GatedMLPBridge, LinearBridge, MLPBridge, NormalizationBridge,
)
from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
from transformer_lens.model_bridge.generalized_components.vision_classifier_head import VisionClassifierHeadBridge
from transformer_lens.model_bridge.supported_architectures.vit import ViTArchitectureAdapter


class _Embeddings(GeneralizedComponent):
    """The embeddings module as it is (patch projection, CLS, registers, positions): only hook_in/hook_out."""


def _norm(name: str, cfg: Any) -> NormalizationBridge:
    return NormalizationBridge(name=name, config=cfg, use_native_layernorm_autograd=True)


def _mlp(cfg: Any, gated: bool, names: tuple[str, ...]) -> Any:
    if gated:
        gate, up, down = names
        return GatedMLPBridge(name="mlp", config=cfg, submodules={
            "gate": LinearBridge(name=gate), "in": LinearBridge(name=up), "out": LinearBridge(name=down)})
    fc1, fc2 = names
    return MLPBridge(name="mlp", config=cfg, submodules={"in": LinearBridge(name=fc1), "out": LinearBridge(name=fc2)})


class _EncoderAdapter(ViTArchitectureAdapter):
    """A pre-LN ViT encoder whose modules sit under other names than ViT's."""

    blocks = ""  # path of the block list
    ln1 = ln2 = attn = o_proj = ""
    fc = ("fc1", "fc2")
    final_norm = ""

    def _mapping(self, p: str, *, gated: bool = False, head: str | None = None) -> dict[str, Any]:
        cfg = self.cfg
        mapping: dict[str, Any] = {
            "embed": _Embeddings(name=f"{p}embeddings"),
            "blocks": BlockBridge(
                name=f"{p}{self.blocks}",
                hook_alias_overrides={"hook_mlp_out": "mlp.out.hook_out", "hook_mlp_in": "mlp.in.hook_in"},
                submodules={
                    "ln1": _norm(self.ln1, cfg), "ln2": _norm(self.ln2, cfg),
                    "attn": AttentionBridge(name=self.attn, config=cfg, submodules={
                        "q": LinearBridge(name="q_proj"), "k": LinearBridge(name="k_proj"),
                        "v": LinearBridge(name="v_proj"), "o": LinearBridge(name=self.o_proj)}),
                    "mlp": _mlp(cfg, gated, ("gate_proj", "up_proj", "down_proj") if gated else self.fc),
                },
            ),
            "ln_final": _norm(f"{p}{self.final_norm}", cfg),
        }
        if head is not None:
            mapping["unembed"] = VisionClassifierHeadBridge(name=head)
        return mapping


class CLIPVisionAdapter(_EncoderAdapter):
    """CLIPVisionModel(WithProjection): blocks at [vision_model.]encoder.layers; pre_layrnorm runs between the
    embeddings and block 0 (so hook_embed is before it and blocks.0.hook_resid_pre after it); post_layernorm
    is ln_final (HF applies it to the CLS row only)."""

    blocks, ln1, ln2, attn, o_proj, final_norm = "encoder.layers", "layer_norm1", "layer_norm2", "self_attn", "out_proj", \
        "post_layernorm"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.component_mapping = self._mapping("")

    def prepare_model(self, hf_model: Any) -> None:
        self.component_mapping = self._mapping("vision_model." if hasattr(hf_model, "vision_model") else "")


class Dinov2RegistersAdapter(_EncoderAdapter):
    """Dinov2WithRegisters(Model|ForImageClassification): blocks at encoder.layer, LayerScale folded into o_proj and
    the MLP's output projection at load (`fold_layer_scale`), SwiGLU MLPs (the giant model) as gated MLPs."""

    blocks, ln1, ln2, attn, o_proj, final_norm = "encoder.layer", "norm1", "norm2", "attention", "o_proj", "layernorm"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.component_mapping = self._mapping("")

    def prepare_model(self, hf_model: Any) -> None:
        p = "dinov2_with_registers." if hasattr(hf_model, "dinov2_with_registers") else ""
        gated = bool(getattr(hf_model.config, "use_swiglu_ffn", False))
        self.cfg.gated_mlp = gated
        root = getattr(hf_model, "dinov2_with_registers", hf_model)
        mlp = root.encoder.layer[0].mlp  # the config has no intermediate_size: read the MLP's width off its weights
        self.cfg.d_mlp = (mlp.down_proj if gated else mlp.fc2).in_features
        self.component_mapping = self._mapping(p, gated=gated, head="classifier" if hasattr(hf_model, "classifier") else None)


ADAPTERS = {
    "CLIPVisionModel": CLIPVisionAdapter,
    "CLIPVisionModelWithProjection": CLIPVisionAdapter,
    "Dinov2WithRegistersModel": Dinov2RegistersAdapter,
    "Dinov2WithRegistersForImageClassification": Dinov2RegistersAdapter,
}


def register() -> None:
    """Make the bridge's factory know these architectures (idempotent)."""
    from transformer_lens.factories import architecture_adapter_factory as factory

    for name, adapter in ADAPTERS.items():
        if name not in factory.ArchitectureAdapterFactory._adapters:
            factory.ArchitectureAdapterFactory.register_adapter(name, adapter)
        factory.SUPPORTED_ARCHITECTURES.setdefault(name, adapter)  # what boot_transformers looks a config up in


def fold_layer_scale(hf_model: Any) -> None:
    """Multiply each block's LayerScale into the projection before it (o_proj; fc2 or down_proj) and set the scale
    to 1: the same function, and hook_attn_out / hook_mlp_out become what is added to the residual stream (so that
    resid_post = resid_pre + attn_out + mlp_out, as the attributions need). Edits `hf_model` in place."""
    import torch

    with torch.no_grad():
        for module in hf_model.modules():
            for ls, proj in (("layer_scale1", ("attention", "o_proj")), ("layer_scale2", ("mlp", None))):
                scale = getattr(module, ls, None)
                if scale is None or not hasattr(scale, "lambda1"):
                    continue
                parent = getattr(module, proj[0])
                out = getattr(parent, proj[1]) if proj[1] else getattr(parent, "fc2", None) or parent.down_proj
                lam = scale.lambda1  # (d_model,)
                out.weight.mul_(lam[:, None])
                if out.bias is not None:
                    out.bias.mul_(lam)
                lam.fill_(1.0)
