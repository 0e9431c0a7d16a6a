"""The lab's attention variants as a Llama (or GPT-2) whose attention module carries the variant, for `load_model`.

One Hugging Face class, `MiMassiveLabForCausalLM` (a `LlamaForCausalLM` whose attention is `LabAttention`), holds
every variant; its config is a `LlamaConfig` (model type ``llama``, so `arch.py` reads it as the llama family) with
``lab_variant`` set. The TransformerLens bridge recomputes attention from the weights (it does not call the HF
module), so an unknown module would silently lose k'/v' or the gate: `register()` also registers a bridge adapter
for the architecture name whose attention component (`_bridge.LabAttentionBridge`) computes the same variant with
every hook point firing. Both paths call `attention_weights`, so the bare HF pass and the bridge agree.

GPT-2 blocks (``arch="gpt2"``, the paper's own experiment) carry the same variants: `MiMassiveLabGPT2LMHeadModel` is
a `GPT2LMHeadModel` whose attention is `GPT2LabAttention` (GPT-2's joint c_attn and c_proj, so its weights keep GPT-2's
names), with `_bridge.LabJointQKVAttentionBridge` on the TransformerLens side. Both attention classes call `attend`.

Variants (softmax over keys j <= i of s_ij = q_i . k_j / sqrt(d_head)):

- ``default``: softmax.
- ``attn_bias``: one learned key k'_h and value v'_h per layer and head that every query also attends to
  (Sun et al. 2024, eq. 3): softmax over [s_i ; q_i . k'_h / sqrt(d)], output p @ V + p' v'_h.
- ``softmax1``: an extra logit 0 with value 0 (softmax with 1 added to the denominator): attn_bias with k' = v' = 0.
- ``sigmoid``: sigmoid(s_ij + b) with b = -log(n_ctx), no normalisation (Ramapuram et al. 2024; Gu et al. 2024).
- ``gated``: softmax attention times sigmoid(x W_g), one gate per head dimension, before W_O (Qiu et al. 2025, G1).

For ``attn_bias``, ``softmax1`` and ``sigmoid`` the pattern (hook_pattern) rows sum to less than 1: the rest went to
k' (1 - row sum is what the bias position received), as TransformerLens does for GPT-OSS's sinks.

    >>> from mi_massive.train.modeling import lab_config, MiMassiveLabForCausalLM
    >>> model = MiMassiveLabForCausalLM(lab_config("attn_bias", d_model=64, n_layers=2, n_heads=4, vocab_size=100))
    >>> tuple(model.model.layers[0].self_attn.k_bias.shape)
    (4, 16)
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor, nn

VARIANTS = ("default", "sink_token", "attn_bias", "softmax1", "sigmoid", "gated")
LAB_ARCHITECTURE = "MiMassiveLabForCausalLM"
LAB_GPT2_ARCHITECTURE = "MiMassiveLabGPT2LMHeadModel"  # GPT-2 blocks whose attention carries the variant
_ATTENTION_VARIANTS = ("attn_bias", "softmax1", "sigmoid", "gated")  # need a lab class; the others: plain Llama/GPT-2


ARCHS = ("llama", "gpt2")


def check_arch(arch: str) -> None:
    """Raise for an unknown architecture (every variant is built for both)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: use {', '.join(ARCHS)}")


def lab_config(variant: str, *, d_model: int, n_layers: int, n_heads: int, vocab_size: int, d_mlp: int | None = None,
               n_ctx: int = 256, bos_token_id: int = 1, eos_token_id: int = 2, tie_embeddings: bool = True,
               arch: str = "llama") -> Any:
    """The config of one arm: a LlamaConfig (``lab_variant`` set for the variants that change attention), or with
    ``arch="gpt2"`` a GPT2Config (learned absolute positions, LayerNorm, GELU: the paper's GPT-2; no dropout)."""
    from transformers import LlamaConfig

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: known variants are {', '.join(VARIANTS)}")
    if d_model % n_heads:
        raise ValueError(f"d_model {d_model} is not a multiple of n_heads {n_heads}")
    check_arch(arch)
    if arch == "gpt2":
        from transformers import GPT2Config

        cfg = GPT2Config(vocab_size=vocab_size, n_positions=max(n_ctx, 1024), n_embd=d_model, n_layer=n_layers,
                         n_head=n_heads, n_inner=d_mlp or 4 * d_model, resid_pdrop=0.0, embd_pdrop=0.0,
                         attn_pdrop=0.0, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_embeddings, initializer_range=0.02)
        return _arm(cfg, variant, n_ctx, LAB_GPT2_ARCHITECTURE, "GPT2LMHeadModel")
    d_mlp = d_mlp or 64 * math.ceil(8 * d_model / 3 / 64)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
        num_attention_heads=n_heads, num_key_value_heads=n_heads, max_position_embeddings=max(n_ctx, 2048),
        rms_norm_eps=1e-5, tie_word_embeddings=tie_embeddings, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
        pad_token_id=None, attention_bias=False, mlp_bias=False, rope_theta=10000.0, initializer_range=0.02,
    )
    return _arm(cfg, variant, n_ctx, LAB_ARCHITECTURE, "LlamaForCausalLM")


def _arm(cfg: Any, variant: str, n_ctx: int, lab_architecture: str, plain_architecture: str) -> Any:
    """Mark a config with its arm: the lab's own model class for a variant that changes attention (``lab_variant``),
    the plain transformers class otherwise; ``lab_n_ctx`` records the training window."""
    cfg.lab_n_ctx = n_ctx
    if variant in _ATTENTION_VARIANTS:
        cfg.lab_variant = variant
        cfg.architectures = [lab_architecture]
    else:
        cfg.architectures = [plain_architecture]
    return cfg


def attention_weights(scores: Tensor, q: Tensor, module: "LabAttention") -> tuple[Tensor, Tensor | None]:
    """Pattern over the real keys and, for attn_bias/softmax1, the weight on the bias position.

    scores: (batch, head, query_pos, key_pos), masked entries at -inf or the dtype's min; q: (batch, head,
    query_pos, d_head) after RoPE. Returns pattern (same shape as scores, float32) and bias weight
    (batch, head, query_pos) or None.
    """
    variant = module.variant
    if variant == "sigmoid":
        return torch.sigmoid(scores.float() + module.sigmoid_bias), None
    if variant in ("attn_bias", "softmax1"):
        if variant == "attn_bias":
            extra = torch.einsum("bhqd,hd->bhq", q.float(), module.k_bias.float()) * module.scaling
        else:
            extra = scores.new_zeros(scores.shape[:-1], dtype=torch.float32)
        full = torch.cat([scores.float(), extra[..., None]], dim=-1)  # (batch, head, q, key + 1)
        p = torch.softmax(full, dim=-1)
        return p[..., :-1], p[..., -1]
    return torch.softmax(scores.float(), dim=-1), None


def bias_values(module: "LabAttention", bias_weight: Tensor | None) -> Tensor | None:
    """p' v'_h, (batch, head, query_pos, d_head), or None where the variant has no bias value."""
    if bias_weight is None or module.variant != "attn_bias":
        return None
    return bias_weight[..., None] * module.v_bias[None, :, None, :].to(bias_weight.dtype)


def _causal(q_len: int, kv_len: int, device: torch.device) -> Tensor:
    return torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril(kv_len - q_len)


def _additive(mask: Tensor | None, q_len: int, kv_len: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """An additive (.., q, kv) mask: the HF 4D mask where given (it holds the causal part), else causal."""
    if mask is not None and mask.ndim == 4:
        mask = mask[..., -q_len:, :kv_len]
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, float("-inf"))
        return mask.to(dtype)
    keep = _causal(q_len, kv_len, device)
    return torch.zeros(q_len, kv_len, dtype=dtype, device=device).masked_fill(~keep, float("-inf"))


def _llama():
    from transformers.models.llama import modeling_llama

    return modeling_llama


def _add_variant(module: nn.Module, config: Any, d: int, hd: int) -> None:
    """The variant's state on an attention module: k_bias/v_bias (attn_bias), gate_proj (gated), sigmoid_bias."""
    module.variant = getattr(config, "lab_variant", "default")
    if module.variant == "attn_bias":
        module.k_bias = nn.Parameter(torch.randn(module.n_heads, module.head_dim) * config.initializer_range)
        module.v_bias = nn.Parameter(torch.randn(module.n_heads, module.head_dim) * config.initializer_range)
    if module.variant == "gated":
        module.gate_proj = nn.Linear(d, hd, bias=True)
        nn.init.zeros_(module.gate_proj.bias)
    module.sigmoid_bias = -math.log(getattr(config, "lab_n_ctx", 256))


def attend(module: nn.Module, q: Tensor, k: Tensor, v: Tensor, hidden_states: Tensor, attention_mask: Tensor | None,
           output_attentions: bool = False) -> tuple[Tensor, Tensor | None]:
    """The variant's attention from (batch, head, pos, d_head) q/k/v: the heads' concatenated output (batch, pos,
    head * d_head), gated where the variant gates, before the output projection; and the pattern (None on the fast
    training path). Llama's and GPT-2's lab attention both call it."""
    if module.training and module.variant != "sigmoid" and not output_attentions:
        out, weights = _fast(module, q, k, v, attention_mask), None
    else:
        scores = q @ k.transpose(-1, -2) * module.scaling  # (batch, head, q, kv)
        scores = scores + _additive(attention_mask, q.shape[-2], k.shape[-2], scores.dtype, scores.device)
        weights, bias_w = attention_weights(scores, q, module)
        out = weights.to(v.dtype) @ v
        extra = bias_values(module, bias_w)
        if extra is not None:
            out = out + extra.to(out.dtype)
    out = out.transpose(1, 2).reshape(*hidden_states.shape[:-1], -1)  # (batch, pos, head * d_head)
    if module.variant == "gated":
        out = out * torch.sigmoid(module.gate_proj(hidden_states))
    return out, weights


class LabAttention(nn.Module):
    """Llama attention with the lab's variant; q/k/v/o as in Llama, plus k_bias/v_bias or gate_proj."""

    def __init__(self, config: Any, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.n_heads = config.num_attention_heads
        self.num_key_value_groups = 1
        self.scaling = self.head_dim ** -0.5
        self.attention_dropout = 0.0
        self.is_causal = True
        d, hd = config.hidden_size, self.n_heads * self.head_dim
        self.q_proj = nn.Linear(d, hd, bias=False)
        self.k_proj = nn.Linear(d, hd, bias=False)
        self.v_proj = nn.Linear(d, hd, bias=False)
        self.o_proj = nn.Linear(hd, d, bias=False)
        _add_variant(self, config, d, hd)

    def forward(self, hidden_states: Tensor, position_embeddings: tuple[Tensor, Tensor] | None = None,
                attention_mask: Tensor | None = None, past_key_values: Any = None, cache: Any = None,
                **kwargs: Any) -> tuple[Tensor, Tensor | None]:
        llama = _llama()
        shape = (*hidden_states.shape[:-1], -1, self.head_dim)
        q = self.q_proj(hidden_states).view(shape).transpose(1, 2)  # (batch, head, pos, d_head)
        k = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        cos, sin = position_embeddings
        q, k = llama.apply_rotary_pos_emb(q, k, cos, sin)
        cache = cache if cache is not None else past_key_values
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        out, weights = attend(self, q, k, v, hidden_states, attention_mask, bool(kwargs.get("output_attentions")))
        return self.o_proj(out), weights


@functools.cache
def _gpt2_attention_class() -> type:
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

    class GPT2LabAttention(GPT2Attention):
        """GPT-2 attention (joint c_attn, c_proj: GPT-2's weights and names) with the lab's variant."""

        def __init__(self, config: Any, layer_idx: int):
            super().__init__(config, layer_idx=layer_idx)
            self.n_heads = self.num_heads
            self.scaling = self.head_dim ** -0.5  # the lab's GPT-2 never scales by the inverse layer index
            _add_variant(self, config, self.embed_dim, self.embed_dim)

        def forward(self, hidden_states: Tensor, cache: Any = None, attention_mask: Tensor | None = None,
                    past_key_values: Any = None, output_attentions: bool | None = False,
                    **kwargs: Any) -> tuple[Tensor, Tensor | None]:
            shape = (*hidden_states.shape[:-1], -1, self.head_dim)
            q, k, v = (t.view(shape).transpose(1, 2) for t in self.c_attn(hidden_states).split(self.split_size, 2))
            cache = cache if cache is not None else past_key_values
            if cache is not None:
                k, v = cache.update(k, v, self.layer_idx)
            out, weights = attend(self, q, k, v, hidden_states, attention_mask, bool(output_attentions))
            return self.resid_dropout(self.c_proj(out)), weights

    GPT2LabAttention.__module__ = __name__
    return GPT2LabAttention


def _fast(module: nn.Module, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Training path through scaled_dot_product_attention; k', v' join as an extra key/value at index 0."""
    import torch.nn.functional as F

    q_len, kv_len = q.shape[-2], k.shape[-2]
    if module.variant in ("attn_bias", "softmax1"):
        b = q.shape[0]
        if module.variant == "attn_bias":
            kb = module.k_bias.to(k.dtype)[None, :, None, :].expand(b, -1, 1, -1)
            vb = module.v_bias.to(v.dtype)[None, :, None, :].expand(b, -1, 1, -1)
        else:
            kb = k.new_zeros(b, k.shape[1], 1, k.shape[-1])
            vb = torch.zeros_like(kb)
        keep = torch.cat([torch.ones(q_len, 1, dtype=torch.bool, device=q.device),
                          _causal(q_len, kv_len, q.device)], dim=1)
        if mask is not None and mask.ndim == 4:
            extra = _additive(mask, q_len, kv_len, q.dtype, q.device)
            pad = torch.zeros(*extra.shape[:-1], 1, dtype=extra.dtype, device=extra.device)
            return F.scaled_dot_product_attention(q, torch.cat([kb, k], 2), torch.cat([vb, v], 2),
                                                  attn_mask=torch.cat([pad, extra], -1))
        return F.scaled_dot_product_attention(q, torch.cat([kb, k], 2), torch.cat([vb, v], 2), attn_mask=keep)
    if mask is not None and mask.ndim == 4:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=_additive(mask, q_len, kv_len, q.dtype, q.device))
    return F.scaled_dot_product_attention(q, k, v, is_causal=q_len == kv_len,
                                          attn_mask=None if q_len == kv_len else _causal(q_len, kv_len, q.device))


@functools.cache
def _lab_class() -> type:
    """MiMassiveLabForCausalLM, built on first use (transformers is imported lazily)."""
    llama = _llama()

    class MiMassiveLabForCausalLM(llama.LlamaForCausalLM):
        """A LlamaForCausalLM whose attention modules are LabAttention (config.lab_variant)."""

        def __init__(self, config: Any):
            super().__init__(config)
            for i, layer in enumerate(self.model.layers):
                layer.self_attn = LabAttention(config, i)
            self.post_init()

    MiMassiveLabForCausalLM.__module__ = __name__
    register()  # a lab model can reach load_model as an object too: the bridge must know its attention
    return MiMassiveLabForCausalLM


@functools.cache
def _lab_gpt2_class() -> type:
    """MiMassiveLabGPT2LMHeadModel: a GPT2LMHeadModel whose attention modules are GPT2LabAttention."""
    from transformers import GPT2LMHeadModel

    attention = _gpt2_attention_class()

    class MiMassiveLabGPT2LMHeadModel(GPT2LMHeadModel):
        def __init__(self, config: Any):
            super().__init__(config)
            for i, block in enumerate(self.transformer.h):
                block.attn = attention(config, i)
            self.post_init()

    MiMassiveLabGPT2LMHeadModel.__module__ = __name__
    register()
    return MiMassiveLabGPT2LMHeadModel


def __getattr__(name: str) -> Any:
    if name == LAB_ARCHITECTURE:
        return _lab_class()
    if name == LAB_GPT2_ARCHITECTURE:
        return _lab_gpt2_class()
    raise AttributeError(name)


def _lab_class_for(config: Any) -> type:
    """The lab class of a config with a lab variant: GPT-2 blocks or Llama blocks."""
    return _lab_gpt2_class() if config.model_type == "gpt2" else _lab_class()


def build_model(config: Any) -> nn.Module:
    """A freshly initialised model for `config` (the lab class where the variant needs it, else Llama)."""
    if getattr(config, "lab_variant", None):
        return _lab_class_for(config)(config)
    if config.model_type == "gpt2":
        from transformers import GPT2LMHeadModel

        return GPT2LMHeadModel(config)
    return _llama().LlamaForCausalLM(config)


def is_lab_checkpoint(path: Any) -> bool:
    import json
    from pathlib import Path

    cfg = Path(path) / "config.json"
    return cfg.exists() and bool({LAB_ARCHITECTURE, LAB_GPT2_ARCHITECTURE}
                                 & set(json.loads(cfg.read_text()).get("architectures") or []))


def load_hf(path: Any, *, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The HF model of a lab checkpoint (registers the bridge adapter so `load_model` can wrap it)."""
    from transformers import AutoConfig

    register()
    config = AutoConfig.from_pretrained(path)
    return _lab_class_for(config).from_pretrained(path, config=config, dtype=dtype)


def register() -> None:
    """Register the bridge adapters of MiMassiveLabForCausalLM and MiMassiveLabGPT2LMHeadModel (idempotent)."""
    from ._bridge import register_adapter

    register_adapter()
