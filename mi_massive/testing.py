"""Tiny models with planted massive activations, for tests and tutorials (no download, CPU, seconds).

A planted massive activation is written the way real models write theirs: one MLP neuron that fires only
on the first token (BOS), through one large down-projection weight (a "super weight") into one residual
dimension.

    >>> from mi_massive.testing import tiny_model
    >>> model = tiny_model("llama")                 # planted: layer 1, neuron 7, dim 5
    >>> model.mi_massive_plant.dim
    5
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Plant:
    """Where a massive activation was planted."""

    layer: int  # the block whose MLP writes it
    neuron: int
    dim: int
    magnitude: float  # target size of the written value


def char_tokenizer():
    """A character-level fast tokenizer with <bos>; works offline."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + list(string.printable[:95]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        add_bos_token=True, name_or_path="mi-massive-char",  # the bridge re-loads tokenizers lacking these
    )


VOCAB = 99  # len(char_tokenizer())

# Tiny Hugging Face configs per family: 4 blocks, d_model 64, 4 heads (2 KV heads where the family has GQA).
_COMMON = dict(vocab_size=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
TINY_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, tie_word_embeddings=False, **_COMMON,
    )),
}


def tiny_hf_model(family: str = "llama", *, seed: int = 0):
    """A randomly initialised Hugging Face causal LM of `family` (no planting)."""
    import transformers

    if family not in TINY_CONFIGS:
        raise ValueError(f"no tiny config for {family!r}: known {', '.join(TINY_CONFIGS)}")
    cls_name, kwargs = TINY_CONFIGS[family]
    config = getattr(transformers, cls_name)(**kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


@torch.no_grad()
def plant_massive_activation(model: Any, plant: Plant, *, seed: int = 0) -> None:
    """Make `plant.neuron` of block `plant.layer` fire only on BOS and write ~magnitude into `plant.dim`.

    Works through the bridge's weight views (W_E, W_in, W_gate, W_out), so it edits the model in place.
    """
    gen = torch.Generator().manual_seed(seed + 1)
    d_model = model.cfg.d_model
    u = torch.randn(d_model, generator=gen)
    u = u - u.mean()  # zero-mean, so LayerNorm keeps the direction
    u = u / u.norm()
    bos = model.tokenizer.bos_token_id
    W_E = model.W_E  # (d_vocab, d_model) view of the embedding
    W_E -= (W_E @ u)[:, None] * u[None]  # no ordinary token points along u
    W_E[bos] = u * W_E.norm(dim=1).mean() * 4  # BOS points along u
    if hasattr(model, "W_pos") and getattr(model.cfg, "positional_embedding_type", "") == "standard":
        W_pos = model.W_pos
        W_pos -= (W_pos @ u)[:, None] * u[None]
    mlp = model.blocks[plant.layer].mlp
    c = 2.0
    mlp.W_in[:, plant.neuron] = c * u  # (d_model, d_mlp)
    gate = getattr(mlp, "W_gate", None) if model.cfg.gated_mlp else None
    if gate is not None:
        gate[:, plant.neuron] = c * u
    # At BOS the normalised input is ~ sqrt(d_model) * u, so the neuron's activation is ~ act(c sqrt(d)).
    x = torch.tensor(c * d_model**0.5)
    act = x * torch.sigmoid(x) * x if gate is not None else x  # silu(gate) * up, or ~gelu(x) = x for large x
    mlp.W_out[plant.neuron, :] = 0.0
    mlp.W_out[plant.neuron, plant.dim] = plant.magnitude / float(act)


def tiny_model(
    family: str = "llama",
    *,
    plant: Plant | None | bool = True,
    seed: int = 0,
):
    """A tiny bridge-wrapped model of `family`; with a planted massive activation unless plant=False.

    The default plant is Plant(layer=1, neuron=7, dim=5, magnitude=1000.0); it is stored on the model as
    `model.mi_massive_plant` (None when nothing is planted).
    """
    from .models import load_model

    hf_model = tiny_hf_model(family, seed=seed)
    hf_model.config._name_or_path = f"tiny-{family}"
    model = load_model(hf_model, tokenizer=char_tokenizer())
    model._mi_massive_name = f"tiny-{family}" + ("" if plant else "-random")
    if plant is True:
        plant = Plant(layer=1, neuron=7, dim=5, magnitude=1000.0)
    if plant:
        plant_massive_activation(model, plant, seed=seed)
    model.mi_massive_plant = plant or None
    return model
