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

import functools
import inspect
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .._types import HookedModel


class Unsupported(Exception):
    """The bare trunk cannot stand in for the bridge on this model (callers fall back to the bridge)."""


def _original(module: nn.Module | None) -> nn.Module | None:
    """The HF module a bridge component wraps; None for anything else."""
    return module._modules.get("_original_component") if isinstance(module, _component_class()) else None


@functools.cache
def _component_class() -> type:
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    return GeneralizedComponent


class _Plan:
    """Where the bridge components sit in its HF model: (parent, slot, bridge component, wrapped original) in
    walking order, and the bridge's hook points. One walk of the model's tree; `apply` swaps the originals in
    and `restore` puts the components back, with no walk; `valid` and `hooked` check the bridge again in
    microseconds (a scan's passes share one plan, and the bare trunk keeps it between scans)."""

    def __init__(self, model: HookedModel) -> None:
        from transformer_lens.hook_points import HookPoint

        self.swaps: list[tuple[nn.Module, str, nn.Module, nn.Module]] = []
        self.hook_points: list[nn.Module] = []
        seen: set[tuple[int, bool]] = set()

        def visit(module: nn.Module, in_hf: bool) -> None:
            """Record the swaps in `module`'s slots where it is part of the HF model (in_hf), and look for hooks
            on hook points in all of it."""
            if (id(module), True) in seen or (id(module), in_hf) in seen:
                return
            seen.add((id(module), in_hf))
            if isinstance(module, HookPoint) and (id(module), not in_hf) not in seen:
                self.hook_points.append(module)
            for name, child in module._modules.items():
                original = _original(child)
                if original is None:
                    if child is not None:
                        visit(child, in_hf)
                    continue
                if in_hf:
                    self.swaps.append((module, name, child, original))
                visit(original, in_hf)  # before the component's other modules, which may reach into it
                for sub in child._modules.values():  # the component's hook points and sub-components
                    if sub is not None and sub is not original:
                        visit(sub, False)

        visit(model.original_model, True)  # first: swaps run from the HF root down, as the old walk did
        visit(model, False)  # the bridge's own modules (hook points outside the HF model)
        self.modules = list(model.modules())  # every module, bridge components included: a user's torch hook on
        # any of them (a block, its MLP or attention, the embedding) changes what the bridge computes

    def valid(self) -> bool:
        """Whether every slot still holds the bridge component seen when the plan was made."""
        return all(parent._modules.get(name) is child for parent, name, child, _ in self.swaps)

    def hooked(self) -> bool:
        """Whether a hook is attached now: on a hook point (an intervention) or, as a plain torch hook, on any of
        the bridge's modules or their submodules, or globally. The bare model would skip some of them."""
        glob = nn.modules.module
        return (bool(glob._global_forward_hooks or glob._global_forward_pre_hooks)
                or any(m._forward_hooks or m._forward_pre_hooks for m in self.hook_points)
                or any((m._forward_hooks or m._forward_pre_hooks)
                       and (_foreign(m._forward_hooks) or _foreign(m._forward_pre_hooks)) for m in self.modules))

    def apply(self) -> None:
        """The originals into their slots; raises Unsupported (changing nothing) if a slot no longer holds the
        component seen when the plan was made."""
        if not self.valid():
            raise Unsupported("the bridge's modules changed since the pass was planned")
        for parent, name, _, original in self.swaps:
            parent._modules[name] = original

    def restore(self) -> None:
        for parent, name, child, _ in reversed(self.swaps):
            parent._modules[name] = child


def _foreign(hooks: dict) -> bool:
    """Whether a module's hooks include one that is not the libraries' own wiring (TransformerLens feeds some hook
    points through torch hooks on its components; transformers keeps output-capturing hooks that record only
    while it captures)."""
    return any(not (getattr(f, "__module__", None) or "").startswith(("transformer_lens.", "transformers."))
               for f in hooks.values())


@contextmanager
def unwired(model: HookedModel, plan: _Plan | None = None) -> Iterator[nn.Module]:
    """`model.original_model` with every bridge component inside it swapped back for the module it wraps
    (the swaps of `plan` where one is given, else of a fresh walk).

    Only `_modules` slots are swapped (in place, so their order is kept), and every one is put back in
    `finally`: the bridge is exactly as before, also after an exception in the body. The bridge's hook
    points do not fire in the body; weights are shared, so weight edits show in both.
    """
    plan = plan or _Plan(model)
    plan.apply()
    try:
        yield model.original_model
    finally:
        plan.restore()


class _Trunk:
    """What `trunk_runner` knows of a model once (its walk of the tree): the plan, the HF trunk (the base model,
    no lm_head), its decoder layers in the bridge's block order, the trunk's keyword arguments."""

    def __init__(self, model: HookedModel) -> None:
        n_layers = model.cfg.n_layers
        layers = [_original(b) for b in getattr(model, "blocks", [])]  # read before unwiring: blocks is HF's list
        if len(layers) != n_layers or any(layer is None for layer in layers):
            raise Unsupported(f"{len(layers)} blocks wrapping HF layers, expected {n_layers}")
        self.plan = _Plan(model)
        with unwired(model, self.plan) as hf:
            self.module = hf.base_model  # the CausalLM without its lm_head (hf itself where there is no head)
            in_trunk = {id(m) for m in self.module.modules()}
            if not all(id(layer) in in_trunk for layer in layers):
                raise Unsupported("the bridge's blocks are not all decoder layers of the HF trunk")
        self.layers = layers
        self.kwargs = {"use_cache": False} if "use_cache" in inspect.signature(self.module.forward).parameters else {}
        self.timings: dict = {}  # what a scan's passes cost on CUDA, by batch shape (`_graphs.Timing`)
        self.masks: dict = {}  # attention masks recorded by a scan's pass, by batch shape (`_graphs.Passes`)
        self.streams: dict = {}  # device -> the CUDA stream a scan's passes run on (`_graphs`)


_TRUNKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its _Trunk: beside the model, never
# an attribute on it; an entry goes when its model does


def kept_trunk(model: HookedModel) -> _Trunk | None:
    """The `_Trunk` that `trunk_runner` keeps for the model, if any."""
    return _TRUNKS.get(model)


def trunk_runner(model: HookedModel) -> Callable[..., None]:
    """`run(tokens, on_layer, masks=None)`: one forward pass of the bare HF trunk (no lm_head, no KV cache)
    calling `on_layer(layer, x)` with each decoder layer's output x, shape (batch, pos, d_model), which is the
    bridge's `blocks.{layer}.hook_resid_post`.

    `masks`, for CUDA graphs (`_graphs`): an empty dict is filled with the attention mask each decoder layer is
    given; a filled one is given to the layers in place of what the model builds. transformers builds masks with
    host-to-device copies, which a capture cannot hold, and they depend on the batch's shape alone. Where every
    layer was given None (GPT-2's blocks, say) nothing is handed over; where only some were, or a mask is not
    4D, the pass raises MaskError.

    Raises Unsupported (here, or in `run` once a layer's output is seen) wherever that equivalence is not
    certain: weights processed by the bridge, hooks attached to the bridge (an intervention is active),
    blocks that do not wrap the trunk's decoder layers one to one, a layer output that is not one
    (batch, pos, d_model) tensor. The walk of the model's tree is made once and kept beside the model (`_Trunk`);
    each call checks, in microseconds, that the bridge still has those modules and no hook.
    """
    if getattr(model, "_weights_processed", False):
        raise Unsupported("the bridge processed its weights (its forward is not the HF model's)")
    trunk = kept_trunk(model)
    if trunk is None or not trunk.plan.valid():
        trunk = _TRUNKS[model] = _Trunk(model)
    if trunk.plan.hooked():
        raise Unsupported("hooks are attached to the bridge")
    plan, layers, kwargs = trunk.plan, trunk.layers, trunk.kwargs
    n_layers, d_model, device = model.cfg.n_layers, model.cfg.d_model, model.cfg.device

    def run(tokens: Tensor, on_layer: Callable[[int, Tensor], None], masks: dict | None = None) -> None:
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
        call = kwargs
        if masks is not None and not masks:
            handles += [layer.register_forward_pre_hook(_take_mask(masks, i), with_kwargs=True)
                        for i, layer in enumerate(layers)]
        elif masks is not None and any(m is not None for m in masks.values()):
            call = {**kwargs, "attention_mask": _given_mask(masks, 0)}  # 4D: the model's mask creation returns it
            handles += [layer.register_forward_pre_hook(_give_mask(masks, i), with_kwargs=True)
                        for i, layer in enumerate(layers)]
        try:
            with unwired(model, plan), torch.inference_mode():
                trunk.module(input_ids=tokens.to(device, non_blocking=True), **call)  # from pinned memory
                # without waiting for the device (from pageable memory the host waits for the stream to drain)
        finally:
            for h in handles:
                h.remove()
        if fired != [1] * n_layers:
            raise Unsupported(f"decoder layers ran {fired} times in one pass, expected once each")

    return run


class MaskError(RuntimeError):
    """A decoder layer's attention mask cannot be handed to it (a CUDA graph's capture is then not made)."""


def _take_mask(masks: dict, layer: int) -> Callable:
    def fn(module: nn.Module, args: Any, kwargs: dict) -> None:
        masks[layer] = kwargs.get("attention_mask")  # None where the layer gets it otherwise, or gets none

    return fn


def _given_mask(masks: dict, layer: int) -> Tensor:
    mask = masks.get(layer)
    if not isinstance(mask, Tensor) or mask.dim() != 4:
        raise MaskError(f"decoder layer {layer} got no 4D attention_mask keyword in the recorded pass")
    return mask


def _give_mask(masks: dict, layer: int) -> Callable:
    def fn(module: nn.Module, args: Any, kwargs: dict) -> tuple[Any, dict]:
        if "attention_mask" not in kwargs:
            raise MaskError(f"decoder layer {layer} is not given an attention_mask keyword")
        return args, {**kwargs, "attention_mask": _given_mask(masks, layer)}

    return fn
