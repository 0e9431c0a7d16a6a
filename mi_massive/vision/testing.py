"""Tiny Vision Transformers with planted massive activations at CLS, a register and a patch (no download, CPU).

Each planted value is written the way `mi_massive.testing` writes one into a language model: one MLP neuron reads a
direction only one token carries (the CLS vector, a register vector, one patch's position embedding) and writes,
through one large down-projection weight, into one residual dimension.

    >>> from mi_massive.vision.testing import tiny_vision_model
    >>> model = tiny_vision_model("dinov2_registers")
    >>> [(p.kind, p.dim) for p in model_plants(model)]
    [('cls', 5), ('register', 9), ('patch', 13)]
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch

IMAGE, PATCH = 32, 8  # a 4 x 4 grid of patches

# One tiny config per Vision Transformer family of `arch.VISION_FAMILIES`: 4 blocks, d_model 64, 4 heads, d_mlp 128.
_COMMON = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, image_size=IMAGE, patch_size=PATCH)
TINY_VISION_CONFIGS: dict[str, tuple[str, str, dict[str, Any], str, dict[str, Any]]] = {
    # family: (config class, model class, config kwargs, image processor class, processor kwargs)
    "vit": ("ViTConfig", "ViTForImageClassification", dict(intermediate_size=128, num_labels=10, **_COMMON),
            "ViTImageProcessor", dict(size={"height": IMAGE, "width": IMAGE})),
    "clip_vision": ("CLIPVisionConfig", "CLIPVisionModelWithProjection",
                    dict(intermediate_size=128, projection_dim=32, **_COMMON), "CLIPImageProcessor",
                    dict(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})),
    "dinov2_registers": ("Dinov2WithRegistersConfig", "Dinov2WithRegistersForImageClassification",
                         dict(mlp_ratio=2, num_register_tokens=4, layerscale_value=0.5, num_labels=10, **_COMMON),
                         "BitImageProcessor",
                         dict(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})),
}


@dataclass(frozen=True)
class VisionPlant:
    """A planted massive activation: `kind` is "cls", "register" (register `index`) or "patch" (cell `index`)."""

    kind: str
    index: int | tuple[int, int]
    layer: int
    neuron: int
    dim: int
    magnitude: float


def default_plants(n_registers: int) -> tuple[VisionPlant, ...]:
    plants = [VisionPlant("cls", 0, 1, 7, 5, 2000.0)]
    if n_registers:
        plants.append(VisionPlant("register", 0, 1, 11, 9, 2000.0))
    plants.append(VisionPlant("patch", (1, 2), 2, 3, 13, 2000.0))
    return tuple(plants)


_PLANTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its plants


def model_plants(model: Any) -> tuple[VisionPlant, ...]:
    """The massive activations planted in a tiny vision model (() for a random one)."""
    return _PLANTS.get(model, ())


def tiny_hf_vision_model(family: str, *, seed: int = 0, overrides: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """A randomly initialised transformers Vision Transformer of `family` and its image processor; `overrides` change
    its config (``{"use_swiglu_ffn": True}``: DINOv2-giant's gated MLP)."""
    import transformers

    if family not in TINY_VISION_CONFIGS:
        raise ValueError(f"no tiny config for {family!r}: known {', '.join(TINY_VISION_CONFIGS)}")
    cfg_cls, model_cls, kwargs, proc_cls, proc_kwargs = TINY_VISION_CONFIGS[family]
    config = getattr(transformers, cfg_cls)(**{**kwargs, **(overrides or {})})
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    model.config._name_or_path = f"tiny-{family}"
    for name, p in model.named_parameters():  # transformers starts registers at zero; trained ones are vectors
        if name.endswith("register_tokens"):  # as large as a token's (what makes them biases: Fix-Reg-Mean)
            with torch.no_grad():
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(seed + 2))
    return model, getattr(transformers, proc_cls)(**proc_kwargs)


def _token_param(emb: Any, kind: str) -> torch.Tensor:
    """The (n, d_model) view of the embeddings' parameter that one kind of token starts from."""
    names = {"cls": ("cls_token", "class_embedding"), "register": ("register_tokens",),
             "pos": ("position_embeddings", "position_embedding.weight")}[kind]
    for n in names:
        p = emb.get_parameter(n) if "." in n else getattr(emb, n, None)
        if p is not None:
            return p.data.view(-1, p.shape[-1])
    raise ValueError(f"{type(emb).__name__} has no {kind} parameter ({', '.join(names)})")


def _project_off(w: torch.Tensor, U: torch.Tensor, axis: int) -> None:
    """Remove the span of U's orthonormal rows from `w` along `axis` (the d_model axis), in place."""
    w = w.movedim(axis, -1)
    w -= (w @ U.T) @ U


@torch.no_grad()
def plant_vision_activations(model: Any, plants: tuple[VisionPlant, ...], pixels: torch.Tensor, *, seed: int = 0) -> None:
    """Plant `plants` into a vision bridge in place, calibrated on `pixels` (a prepared batch)."""
    from .._hooks import capture
    from ..arch import hook
    from .images import layout

    lay = layout(model, pixels)
    D = model.cfg.d_model
    gen = torch.Generator().manual_seed(seed + 1)
    dims = [p.dim for p in plants]
    U = torch.randn(len(plants), D, generator=gen)
    U[:, dims] = 0.0  # no planted direction reads another plant's massive dim
    U -= U.mean(1, keepdim=True)  # zero-mean: LayerNorm keeps the direction
    U[:, dims] = 0.0
    U = torch.linalg.qr(U.T).Q.T.contiguous()  # (plant, d_model) orthonormal rows
    emb = model.embed.original_component
    _, cache = capture(model, pixels[:1], [hook.embed])
    size = float(cache[hook.embed][0].norm(dim=-1).mean())
    for p in emb.parameters():  # no token carries a planted direction before its writer reads it...
        if p.shape[0] == D and p.ndim == 4:  # the patch projection (d_model, 3, ph, pw)
            _project_off(p.data, U, 0)
        elif p.shape[-1] == D:
            _project_off(p.data, U, -1)
    last = max(p.layer for p in plants)
    for layer in range(last + 1):  # ...nor does any sub-layer write one
        block = model.blocks[layer]
        for lin in (block.attn.o.original_component, block.mlp.out.original_component):
            _project_off(lin.weight.data, U, 0)
            if lin.bias is not None:
                _project_off(lin.bias.data, U, -1)
    for u, p in zip(U, plants):  # ...except the planted token, which carries it strongly
        if p.kind == "cls":
            _token_param(emb, "cls")[0] = u * 10 * size
        elif p.kind == "register":
            _token_param(emb, "register")[p.index] = u * 10 * size
        else:
            _token_param(emb, "pos")[lay.pos(*p.index) - lay.n_registers] = u * 10 * size  # positions skip registers
    for u, p in zip(U, plants):
        mlp = model.blocks[p.layer].mlp
        fc1, fc2 = getattr(mlp, "in").original_component, mlp.out.original_component
        for lin in (fc1, *([mlp.gate.original_component] if hasattr(mlp, "gate") else [])):  # gated: both read u
            lin.weight.data[p.neuron] = 2.0 * u  # the normalised input at the token is ~ sqrt(d_model) * u
            if lin.bias is not None:
                lin.bias.data[p.neuron] = 0.0
        fc2.weight.data[:, p.neuron] = 0.0
        fc2.weight.data[p.dim] = 0.0  # only the planted neuron writes the dim in its block
        if fc2.bias is not None:
            fc2.bias.data[p.dim] = 0.0
    for p in plants:
        pos = 0 if p.kind == "cls" else 1 + p.index if p.kind == "register" else lay.pos(*p.index)
        _, cache = capture(model, pixels[:1], [hook.mlp_post(p.layer)])
        act = float(cache[hook.mlp_post(p.layer)][0, pos, p.neuron])
        if act <= 0:
            raise RuntimeError(f"cannot plant at {p.kind} {p.index}: neuron {p.neuron} of block {p.layer} does not "
                               f"fire ({act:.3g})")
        model.blocks[p.layer].mlp.out.original_component.weight.data[p.dim, p.neuron] = p.magnitude / act


def tiny_vision_model(family: str = "dinov2_registers", *, plant: bool = True, seed: int = 0,
                      overrides: dict[str, Any] | None = None) -> Any:
    """A tiny vision bridge of `family` with massive activations planted at CLS, register 0 (where the family has
    registers) and patch (1, 2), in dims 5, 9 and 13 (`default_plants`; see `model_plants(model)`); calibrated on
    scikit-image's astronaut photo."""
    from .images import prepare_images, sample_images
    from .models import load_vision_model

    hf, processor = tiny_hf_vision_model(family, seed=seed, overrides=overrides)
    model = load_vision_model(hf, processor=processor)
    model._mi_massive_name = f"tiny-{family}" + ("" if plant else "-random")
    if plant:
        from .models import n_registers

        plants = default_plants(n_registers(model))
        plant_vision_activations(model, plants, prepare_images(model, sample_images(1)), seed=seed)
        _PLANTS[model] = plants
    return model
