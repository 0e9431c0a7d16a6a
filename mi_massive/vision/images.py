"""Images in, pixel tensors out (through the model's own image processor), and a name for every token.

A Vision Transformer's tokens are CLS (position 0), then its register tokens (DINOv2 with registers), then one
token per image patch, row by row. Results name them "CLS", "reg 2", "patch (3, 7)".

    >>> from mi_massive.vision import sample_images
    >>> [im.size for im in sample_images(2)]
    [(512, 512), (600, 400)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .models import n_registers, patch_size, processor_of

SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "cat", "camera")


def sample_images(n: int = 4) -> list[Any]:
    """`n` real photographs shipped inside scikit-image (no download), as RGB PIL images."""
    from PIL import Image
    from skimage import data

    if not 1 <= n <= len(SAMPLES):
        raise ValueError(f"n must lie in 1..{len(SAMPLES)} (the photos scikit-image ships: {', '.join(SAMPLES)})")
    return [Image.fromarray(getattr(data, s)()).convert("RGB") for s in SAMPLES[:n]]


def _one(image: Any, i: int) -> Any:
    """A file path, PIL image or (H, W[, C]) array as an RGB PIL image."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        path = Path(image).expanduser()
        if not path.is_file():
            raise ValueError(f"image {i}: no file at {str(path)!r}")
        return Image.open(path).convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        a = image
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        if a.ndim != 3 or a.shape[-1] not in (1, 3, 4):
            raise ValueError(f"image {i}: an array must be (H, W) or (H, W, 1|3|4), got shape {image.shape}")
        if a.shape[-1] == 1:
            a = np.repeat(a, 3, -1)
        if a.dtype != np.uint8:  # floats in 0..1 (scikit-image's convention) or 0..255
            a = np.clip(a * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return Image.fromarray(a[..., :3])
    raise ValueError(f"image {i} is a {type(image).__name__}: give a file path, a PIL image, an (H, W[, C]) array or "
                     "a (batch, 3, H, W) pixel tensor")


def prepare_images(model: Any, images: Any) -> Tensor:
    """(batch, 3, H, W) float32 pixel values, prepared by the model's own image processor.

    `images` is one image or a list of file paths, PIL images and arrays; a float tensor of shape (3, H, W) or
    (batch, 3, H, W) is taken as pixel values already prepared."""
    if isinstance(images, Tensor):
        if not images.is_floating_point():
            raise ValueError(f"a pixel tensor must hold floats (prepared pixel values), not {images.dtype}")
        x = images[None] if images.ndim == 3 else images
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[0] == 0:
            raise ValueError(f"a pixel tensor must be (3, H, W) or (batch, 3, H, W); got {tuple(images.shape)}")
        ph, pw = patch_size(model)
        if x.shape[2] < ph or x.shape[3] < pw:
            raise ValueError(f"pixel tensor {tuple(x.shape)} is smaller than one {ph}x{pw} patch")
        return x.float().cpu()
    if isinstance(images, (str, Path, np.ndarray)) or not isinstance(images, Sequence):
        images = [images]
    if len(images) == 0:
        raise ValueError("images is an empty list: give at least one image")
    pil = [_one(im, i) for i, im in enumerate(images)]
    return processor_of(model)(images=pil, return_tensors="pt")["pixel_values"].float()


@dataclass(frozen=True)
class Layout:
    """Where each kind of token sits: CLS at 0, registers at 1..n_registers, then a rows x cols patch grid."""

    n_registers: int
    rows: int
    cols: int

    @property
    def n_prefix(self) -> int:
        return 1 + self.n_registers

    @property
    def n_tokens(self) -> int:
        return self.n_prefix + self.rows * self.cols

    @property
    def registers(self) -> tuple[int, ...]:
        return tuple(range(1, self.n_prefix))

    @property
    def patches(self) -> tuple[int, ...]:
        return tuple(range(self.n_prefix, self.n_tokens))

    def kind(self, pos: int) -> str:
        """"cls", "register" or "patch"."""
        return "cls" if pos == 0 else "register" if pos < self.n_prefix else "patch"

    def cell(self, pos: int) -> tuple[int, int]:
        """(row, col) of a patch token."""
        if pos < self.n_prefix:
            raise ValueError(f"position {pos} is {self.name(pos)}, not a patch")
        return divmod(pos - self.n_prefix, self.cols)

    def pos(self, row: int, col: int) -> int:
        """The position of patch (row, col)."""
        if not (0 <= row < self.rows and 0 <= col < self.cols):
            raise ValueError(f"patch ({row}, {col}) out of range: the grid is {self.rows} x {self.cols}")
        return self.n_prefix + row * self.cols + col

    def name(self, pos: int) -> str:
        if pos == 0:
            return "CLS"
        if pos < self.n_prefix:
            return f"reg {pos - 1}"
        r, c = divmod(pos - self.n_prefix, self.cols)
        return f"patch ({r}, {c})"

    def names(self) -> tuple[str, ...]:
        return tuple(self.name(p) for p in range(self.n_tokens))


def layout(model: Any, pixels: Tensor) -> Layout:
    """The token layout of `model` on pixel values of this size."""
    ph, pw = patch_size(model)
    return Layout(n_registers(model), pixels.shape[-2] // ph, pixels.shape[-1] // pw)
