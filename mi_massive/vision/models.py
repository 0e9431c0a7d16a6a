"""Loading Vision Transformers: Hugging Face ids, local directories or loaded models -> a TransformerBridge.

The same bridge, hook names and raw numerics as `mi_massive.load_model` gives for language models. ViT goes
through TransformerLens's own adapter; CLIP's vision tower and DINOv2 with registers through the small adapters
in `_adapters`. The model's image processor is kept beside it (a weak mapping), for `prepare_images`.

    >>> from mi_massive.vision import load_vision_model
    >>> model = load_vision_model("facebook/dinov2-with-registers-giant")     # doctest: +SKIP
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import torch

from .. import arch

_PROCESSORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # bridge -> its image processor


def processor_of(model: Any) -> Any:
    """The image processor a vision bridge was loaded with."""
    try:
        return _PROCESSORS[model]
    except (KeyError, TypeError):
        raise ValueError(f"expected a Vision Transformer from mi_massive.vision.load_vision_model, got "
                         f"{type(model).__name__}") from None


def vision_spec(model: Any) -> arch.VisionSpec:
    """The Vision Transformer family of a bridge (raises for a language model)."""
    fam = arch.spec(model)
    if not isinstance(fam, arch.VisionSpec):
        raise ValueError(f"{fam.name} is a language model family; Vision Transformers are "
                         f"{', '.join(arch.known_vision_families())}")
    return fam


def n_registers(model: Any) -> int:
    fam = vision_spec(model)
    return int(getattr(model.original_model.config, fam.registers_attr, 0) or 0) if fam.registers_attr else 0


def patch_size(model: Any) -> tuple[int, int]:
    p = model.original_model.config.patch_size
    return (p, p) if isinstance(p, int) else tuple(p)


def _class_for(config: Any, fam: arch.VisionSpec, head: bool) -> str:
    named = [a for a in (getattr(config, "architectures", None) or []) if a in fam.classes]
    if named and (head or named[0] == fam.classes[1]):
        return named[0]
    return fam.classes[0] if head else fam.classes[1]


def _boot(hf_model: Any, processor: Any, *, name: str, device: str | None) -> Any:
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    from ._adapters import fold_layer_scale, register

    fam = arch.vision_spec_for_hf_config(hf_model.config)
    if fam is None:
        raise ValueError(f"{name}: model type {hf_model.config.model_type!r} is not a Vision Transformer mi_massive "
                         f"knows ({', '.join(arch.known_vision_families())})")
    if processor is None:
        raise ValueError(f"{name}: an image processor is required (pass processor=...)")
    register()
    if fam.layer_scale:
        fold_layer_scale(hf_model)
    hf_model.config.architectures = [type(hf_model).__name__]  # what the checkpoint is saved as
    hf_model.config._attn_implementation = "eager"  # attention patterns are hooked from the eager path
    try:
        bridge = build_bridge_from_module(hf_model, type(hf_model).__name__, hf_config=hf_model.config, model_name=name)
    except Exception as exc:
        raise ValueError(f"the TransformerLens bridge cannot load {name!r} ({type(hf_model).__name__}): {exc}") from exc
    bridge.enable_compatibility_mode(no_processing=True)
    bridge.cfg.dtype = next(hf_model.parameters()).dtype
    want = torch.device(device or bridge.cfg.device or "cpu")
    if next(bridge.parameters()).device != want:
        bridge.to(want)
    bridge.eval()
    for p in bridge.parameters():
        p.requires_grad_(False)
    bridge._mi_massive_name = name  # (where load_model keeps it: models.model_name reads it)
    _PROCESSORS[bridge] = processor
    return bridge


def load_vision_model(
    name: Any,
    *,
    processor: Any = None,
    head: bool = True,
    device: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Any:
    """A TransformerBridge of a Vision Transformer in eval mode with raw numerics, and its image processor.

    `name` is a Hugging Face id (``google/vit-base-patch16-224``, ``openai/clip-vit-large-patch14`` (its vision
    tower and projection), ``facebook/dinov2-with-registers-giant``), a local directory saved by
    `save_pretrained`, or a loaded transformers model (pass `processor`). `head=False` loads the bare encoder
    where the checkpoint has a classifier. DINOv2's LayerScale is folded into the projections before it.

        >>> model = load_vision_model("openai/clip-vit-large-patch14")     # doctest: +SKIP
        >>> model.cfg.n_layers                                             # doctest: +SKIP
        24
    """
    import transformers
    from transformers import PreTrainedModel

    if isinstance(name, PreTrainedModel):
        label = name.config._name_or_path or type(name).__name__
        return _boot(name.to(dtype).eval(), processor, name=label, device=device)
    if not isinstance(name, (str, Path)) or not str(name).strip():
        raise ValueError(f"model must be a Hugging Face id, a local directory or a transformers model, not {name!r}")
    source = str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else str(name)
    try:
        config = transformers.AutoConfig.from_pretrained(source)
        fam = arch.vision_spec_for_hf_config(config)
        if fam is None:
            raise ValueError(f"{name}: model type {config.model_type!r} is not a Vision Transformer mi_massive knows "
                             f"({', '.join(arch.known_vision_families())}); load language models with load_model")
        cls = getattr(transformers, _class_for(config, fam, head))
        extra = {}
        if getattr(config, "vision_config", None) is not None:  # a whole CLIP checkpoint: its vision tower, and
            extra["config"] = config.vision_config  # the projection's width from the top-level config
            extra["config"].projection_dim = getattr(config, "projection_dim", extra["config"].projection_dim)
        hf_model = cls.from_pretrained(source, dtype=dtype, attn_implementation="eager", **extra)
        processor = processor or transformers.AutoImageProcessor.from_pretrained(source)
    except OSError as exc:
        raise ValueError(f"could not load {name!r}: not a local directory, not in the Hugging Face cache, and the Hub "
                         f"is unreachable ({exc.__class__.__name__}). Download it where the Hub is reachable "
                         f"(huggingface-cli download {name}) or save one with save_pretrained") from exc
    return _boot(hf_model.eval(), processor, name=str(name), device=device)


def save_vision_model(model: Any, path: str | Path) -> Path:
    """Save a vision bridge's weights (as they are now: planted, folded) and its image processor as a Hugging Face
    checkpoint that `load_vision_model(path)` loads like a Hub one. The bridge's own modules are not saved."""
    import transformers

    path = Path(path).expanduser()
    hf = model.original_model
    fresh = getattr(transformers, type(hf).__name__)(hf.config)
    want = fresh.state_dict().keys()
    state = {k.replace("._original_component", ""): v for k, v in hf.state_dict().items()}
    fresh.load_state_dict({k: state[k] for k in want}, strict=True)
    fresh.save_pretrained(path)
    processor_of(model).save_pretrained(path)
    return path
