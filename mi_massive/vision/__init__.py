"""Massive activations in Vision Transformers: ViT (CLS), CLIP's vision tower, DINOv2 with registers.

The paper's last section (Sun et al. 2024, Sec. 5): CLIP ViT-L holds massive activations in a few fixed dims of a
few patch tokens; DINOv2 with registers holds them in register tokens, and replacing the registers' features by
their mean over images ("Fix-Reg-Mean") keeps the output while zeroing them breaks it. The same analyses as for
language models, with images in and tokens named "CLS", "reg k", "patch (r, c)".

    >>> from mi_massive import vision
    >>> model = vision.load_vision_model("facebook/dinov2-with-registers-giant")       # doctest: +SKIP
    >>> vision.find_massive_activations(model, vision.sample_images(4))                # doctest: +SKIP
    >>> vision.fix_reg_mean(model, vision.sample_images(8))                            # doctest: +SKIP
"""

from .detect import TokenStats, find_massive_activations, layer_profile, token_stats
from .images import Layout, layout, prepare_images, sample_images
from .interventions import (
    OutputChange, TokenIntervention, build_token_intervention, fix_reg_mean, intervene_tokens, output_change,
)
from .models import load_vision_model, save_vision_model
from .origin import attention_sinks, trace_origin
from .viz import attention_grid, magnitudes_3d, patch_grid

__all__ = [
    "load_vision_model", "save_vision_model", "prepare_images", "sample_images", "layout", "Layout",
    "find_massive_activations", "layer_profile", "token_stats", "TokenStats",
    "build_token_intervention", "intervene_tokens", "output_change", "fix_reg_mean", "TokenIntervention",
    "OutputChange", "trace_origin", "attention_sinks", "patch_grid", "attention_grid", "magnitudes_3d",
]
