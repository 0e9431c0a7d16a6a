"""Massive activations in Vision Transformers: ViT (CLS), CLIP's vision tower, DINOv2 with registers.

The paper's last section (Sun et al. 2024, Sec. 5): CLIP ViT-L holds massive activations in a few fixed dims of a
few patch tokens; DINOv2 with registers holds them in register tokens, and replacing the registers' features by
their mean over images ("Fix-Reg-Mean") keeps the output while zeroing them breaks it.

    >>> from mi_massive import vision
    >>> model = vision.load_vision_model("facebook/dinov2-with-registers-giant")       # doctest: +SKIP
    >>> acts = vision.find_massive_activations(model, vision.sample_images(4))         # doctest: +SKIP
"""

from .images import Layout, layout, prepare_images, sample_images
from .models import load_vision_model

__all__ = ["load_vision_model", "prepare_images", "sample_images", "layout", "Layout"]
