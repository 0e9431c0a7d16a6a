"""TransformerLens side of the lab's variants: an adapter for MiMassiveLabForCausalLM.

The bridge's Llama attention (PositionEmbeddingsAttentionBridge) reimplements attention from q/k/v/o weights and
never calls the HF module, so it would drop k'/v', the gate and the sigmoid. `LabAttentionBridge` recomputes it
the lab's way instead, through `modeling.attention_weights`, firing the same hook points in the same order
(hook_q/k/v, hook_rot_q/k, hook_attn_scores, hook_pattern, hook_z, hook_out) plus hook_gate and hook_bias_weight
(the attention on k', batch head query_pos).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from . import modeling


@functools.cache
def _classes() -> tuple[type, type]:
    from transformer_lens.hook_points import HookPoint
    from transformer_lens.model_bridge.generalized_components import PositionEmbeddingsAttentionBridge
    from transformer_lens.model_bridge.supported_architectures.llama import LlamaArchitectureAdapter
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    class LabAttentionBridge(PositionEmbeddingsAttentionBridge):
        """Attention of a lab model, computed as `modeling.LabAttention` computes it, with hooks."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.hook_gate = HookPoint()
            self.hook_bias_weight = HookPoint()

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            hf: Any = self.original_component
            if hf is None:
                raise RuntimeError(f"original component not set for {self.name}")
            _refuse_forks(self)
            hidden = kwargs.pop("hidden_states") if "hidden_states" in kwargs else args[0]
            position_embeddings = kwargs.pop("position_embeddings", None)
            attention_mask = kwargs.pop("attention_mask", None)
            if "cache" in kwargs and "past_key_values" not in kwargs:
                kwargs["past_key_values"] = kwargs.pop("cache")
            hidden = self.hook_in(hidden)
            input_shape = hidden.shape[:-1]
            shape = (*input_shape, -1, hf.head_dim)
            q = self.q(hidden).view(shape).transpose(1, 2)  # (batch, head, pos, d_head)
            k = self.k(hidden).view(shape).transpose(1, 2)
            v = self.v(hidden).view(shape).transpose(1, 2)
            cos, sin = self._apply_position_embedding_hooks(position_embeddings)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            if hasattr(self, "hook_rot_q"):
                q = self.hook_rot_q(q)
            if hasattr(self, "hook_rot_k"):
                k = self.hook_rot_k(k)
            k, v = self._update_kv_cache(k, v, **kwargs)
            scores = q @ k.transpose(-1, -2) * hf.scaling  # (batch, head, q, kv)
            scores = self._apply_reconstruct_attention_mask(attn_scores=scores, attention_mask=attention_mask,
                                                            seq_len=k.shape[-2], q_seq_len=q.shape[-2])
            out, pattern = _variant_output(self, hf, self.hook_attn_scores(scores), q, v, hidden)
            out = self.hook_out(self.o(out))
            return out, pattern

    class LabArchitectureAdapter(LlamaArchitectureAdapter):
        """Llama's adapter with the lab's attention component."""

        _attention_bridge_cls = LabAttentionBridge

    return LabAttentionBridge, LabArchitectureAdapter


@functools.cache
def _gpt2_classes() -> tuple[type, type]:
    from transformer_lens.hook_points import HookPoint
    from transformer_lens.model_bridge.generalized_components import JointQKVAttentionBridge, LinearBridge
    from transformer_lens.model_bridge.supported_architectures.gpt2 import GPT2ArchitectureAdapter

    class LabJointQKVAttentionBridge(JointQKVAttentionBridge):
        """GPT-2's joint-q/k/v attention of a lab model, computed as `modeling.GPT2LabAttention` computes it."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.hook_gate = HookPoint()
            self.hook_bias_weight = HookPoint()

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            _refuse_forks(self)
            hidden = self._apply_attention_input_hook(*args, **kwargs)
            kwargs.pop("hidden_states", None)
            out = self._reconstruct_attention(self.q(hidden), self.k(hidden), self.v(hidden), lab_hidden=hidden,
                                              **kwargs)
            return self._process_output(out)

        def _reconstruct_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs: Any) -> tuple:
            hf: Any = self.original_component
            hidden = kwargs.pop("lab_hidden")
            n = hf.num_heads
            q, k, v, batch, seq_len, head_dim = self._reshape_qkv_to_heads(q, k, v, n, n)
            k, v = self._update_kv_cache(k, v, **kwargs)
            scores = q @ k.transpose(-1, -2) * hf.scaling
            scores = self._apply_reconstruct_attention_mask(attn_scores=scores,
                                                            attention_mask=kwargs.get("attention_mask"),
                                                            seq_len=k.shape[-2], q_seq_len=seq_len)
            out, pattern = _variant_output(self, hf, self.hook_attn_scores(scores), q, v, hidden)
            return self._apply_output_projection(out), pattern

    class LabGPT2ArchitectureAdapter(GPT2ArchitectureAdapter):
        """GPT-2's adapter with the lab's attention component."""

        def __init__(self, cfg: Any) -> None:
            super().__init__(cfg)
            self.component_mapping["blocks"].submodules["attn"] = LabJointQKVAttentionBridge(
                name="attn", config=self.cfg,
                submodules={"qkv": LinearBridge(name="c_attn"), "o": LinearBridge(name="c_proj")})

    return LabJointQKVAttentionBridge, LabGPT2ArchitectureAdapter


def _refuse_forks(bridge: Any) -> None:
    for flag in ("use_split_qkv_input", "use_attn_in", "use_attn_result"):
        if getattr(bridge.config, flag, False):
            raise NotImplementedError(f"{flag} is not supported on the lab's attention variants")


def _variant_output(bridge: Any, hf: Any, scores: torch.Tensor, q: torch.Tensor, v: torch.Tensor,
                    hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """From hooked scores: the pattern (hook_pattern), k'/v' (hook_bias_weight), the gate (hook_gate); returns the
    heads' concatenated output before the output projection (batch, pos, head * d_head) and the pattern."""
    pattern, bias_w = modeling.attention_weights(scores, q, hf)
    pattern = bridge.hook_pattern(bridge._scrub_compatibility_pattern_nans(pattern.to(q.dtype)))
    out = pattern @ v
    if bias_w is not None:
        bias_w = bridge.hook_bias_weight(bias_w.to(q.dtype))
        extra = modeling.bias_values(hf, bias_w)
        if extra is not None:
            out = out + extra.to(out.dtype)
    out = out.transpose(1, 2).reshape(*hidden.shape[:-1], -1)
    if hf.variant == "gated":
        out = out * torch.sigmoid(bridge.hook_gate(hf.gate_proj(hidden)))
    return out, pattern


def register_adapter() -> None:
    """Make TransformerBridge pick the lab's adapters for its two architectures (idempotent)."""
    from transformer_lens.factories import architecture_adapter_factory as factory

    for name, adapter in ((modeling.LAB_ARCHITECTURE, _classes()[1]),
                          (modeling.LAB_GPT2_ARCHITECTURE, _gpt2_classes()[1])):
        factory.ArchitectureAdapterFactory.register_adapter(name, adapter)
        # register_adapter alone is not enough: the bridge names the architecture of an HF config only if it is in
        # SUPPORTED_ARCHITECTURES (TransformerLens 4.3), and otherwise falls back to its model_type's adapter
        factory.SUPPORTED_ARCHITECTURES.setdefault(name, adapter)
