"""The plain Hugging Face model behind a TransformerBridge, for passes that need no TransformerLens hook.

The bridge rewires its HF model in place: each submodule is replaced by a bridge component that wraps the
original and adds hook points. `unwired` puts the originals back for the body of a `with` (and the bridge
components back in `finally`), so a forward pass costs what the bare HF model costs. `trunk_runner` runs
the HF trunk (the base model, no lm_head) that way with a plain torch hook on each decoder layer, whose output
is the bridge's `blocks.{layer}.hook_resid_post`.

    >>> from mi_massive.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> with unwired(model) as hf:
    ...     logits = hf(model.to_tokens("hello")).logits   # the plain LlamaForCausalLM
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn


class Unsupported(Exception):
    """The bare trunk cannot stand in for the bridge on this model (callers fall back to the bridge)."""


def _original(module: nn.Module | None) -> nn.Module | None:
    """The HF module a bridge component wraps; None for anything else."""
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    if isinstance(module, GeneralizedComponent):
        return module._modules.get("_original_component")
    return None


@contextmanager
def unwired(model: Any) -> Iterator[nn.Module]:
    """`model.original_model` with every bridge component inside it swapped back for the module it wraps.

    Only `_modules` slots are swapped (in place, so their order is kept), and every one is put back in
    `finally`: the bridge is exactly as before, also after an exception in the body. The bridge's hook
    points do not fire in the body; weights are shared, so weight edits show in both.
    """
    hf = model.original_model
    swapped: list[tuple[nn.Module, str, nn.Module]] = []  # (parent, slot, bridge component)

    def put_back_originals(parent: nn.Module) -> None:
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            original = _original(child)
            if original is not None:
                parent._modules[name] = original
                swapped.append((parent, name, child))
            put_back_originals(original if original is not None else child)

    try:
        put_back_originals(hf)
        yield hf
    finally:
        for parent, name, child in reversed(swapped):
            parent._modules[name] = child


def _hooks_attached(model: Any) -> bool:
    """Whether any TransformerLens hook point holds a forward hook (an intervention the bare model would skip)."""
    from transformer_lens.hook_points import HookPoint

    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules() if isinstance(m, HookPoint))


def trunk_runner(model: Any) -> Callable[[Tensor, Callable[[int, Tensor], None]], None]:
    """`run(tokens, on_layer)`: one forward pass of the bare HF trunk (no lm_head, no KV cache) calling
    `on_layer(layer, x)` with each decoder layer's output x, shape (batch, pos, d_model), which is the bridge's
    `blocks.{layer}.hook_resid_post`.

    Raises Unsupported (here, or in `run` once a layer's output is seen) wherever that equivalence is not
    certain: weights processed by the bridge, hooks attached to the bridge (an intervention is active),
    blocks that do not wrap the trunk's decoder layers one to one, a layer output that is not one
    (batch, pos, d_model) tensor. The checks of the model run once here, not on every pass.
    """
    if getattr(model, "_weights_processed", False):
        raise Unsupported("the bridge processed its weights (its forward is not the HF model's)")
    if _hooks_attached(model):
        raise Unsupported("hooks are attached to the bridge")
    n_layers, d_model, device = model.cfg.n_layers, model.cfg.d_model, model.cfg.device
    layers = [_original(b) for b in getattr(model, "blocks", [])]  # read before unwiring: blocks is HF's list
    if len(layers) != n_layers or any(layer is None for layer in layers):
        raise Unsupported(f"{len(layers)} blocks wrapping HF layers, expected {n_layers}")
    with unwired(model) as hf:
        trunk = hf.base_model  # the CausalLM without its lm_head (hf itself where there is no head)
        in_trunk = {id(m) for m in trunk.modules()}
        if not all(id(layer) in in_trunk for layer in layers):
            raise Unsupported("the bridge's blocks are not all decoder layers of the HF trunk")
    kwargs = {"use_cache": False} if "use_cache" in inspect.signature(trunk.forward).parameters else {}

    def run(tokens: Tensor, on_layer: Callable[[int, Tensor], None]) -> None:
        shape = (*tokens.shape, d_model)
        fired = [0] * n_layers

        def hook_fn(layer: int) -> Callable[[nn.Module, Any, Any], None]:
            def fn(module: nn.Module, args: Any, out: Any) -> None:
                if not isinstance(out, Tensor) or tuple(out.shape) != shape:
                    raise Unsupported(f"decoder layer {layer} returned {type(out).__name__}, not a {shape} tensor")
                fired[layer] += 1
                on_layer(layer, out)

            return fn

        handles = [layer.register_forward_hook(hook_fn(i)) for i, layer in enumerate(layers)]
        try:
            with unwired(model), torch.inference_mode():
                trunk(input_ids=tokens.to(device), **kwargs)
        finally:
            for h in handles:
                h.remove()
        if fired != [1] * n_layers:
            raise Unsupported(f"decoder layers ran {fired} times in one pass, expected once each")

    return run
