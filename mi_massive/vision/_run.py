"""One hooked forward pass of a vision bridge over pixel values, in batches: what every vision analysis runs."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from .._hooks import HookFn, check_finite, hooked


def output(out: Any) -> Tensor:
    """What the model gives a user: a classifier's logits, else CLIP's projected image embedding, else the pooled
    output (DINOv2's / ViT's bare encoder)."""
    for name in ("logits", "image_embeds", "pooler_output"):
        x = getattr(out, name, None)
        if isinstance(x, Tensor):
            return x
    raise ValueError(f"cannot find logits, image_embeds or pooler_output in {type(out).__name__}")


def output_kind(model: Any) -> str:
    """"classifier" (top-1 agreement applies) or "embedding"."""
    return "classifier" if hasattr(model.original_model, "classifier") else "embedding"


def batches(pixels: Tensor, batch_size: int) -> Iterator[tuple[int, Tensor]]:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    for start in range(0, len(pixels), batch_size):
        yield start, pixels[start: start + batch_size]


def forward(model: Any, pixels: Tensor, fwd_hooks: Sequence[tuple[str, HookFn]] = (), *, batch_size: int = 8,
            on_batch: Callable[[int], None] | None = None) -> Tensor:
    """The model's output (`output`) for each image, with `fwd_hooks` attached (each must fire; all come off)."""
    outs = []
    device = next(model.parameters()).device
    for start, batch in batches(pixels, batch_size):
        if on_batch is not None:
            on_batch(start)
        with torch.inference_mode(), hooked(model, fwd_hooks):
            out = output(model.original_model(pixel_values=batch.to(device)))
        check_finite(model, out)
        outs.append(out.float().cpu())
    return torch.cat(outs)
