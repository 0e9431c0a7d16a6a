"""Tiny models with planted massive activations, for tests and tutorials (no download, CPU, seconds).

A planted massive activation is written the way real models write theirs: one MLP neuron that fires only
on the first token (BOS), through one large down-projection weight (a "super weight") into one residual
dimension.

    >>> from mi_massive.testing import tiny_model
    >>> model = tiny_model("llama")                 # planted: layer 1, neuron 7, dim 5
    >>> planted(model).dim
    5
"""

from __future__ import annotations

import string
import weakref
from dataclasses import dataclass
from typing import Any

import torch

from . import _inputs

from ._types import HookedModel


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

# Tiny Hugging Face configs, one per family in `arch.FAMILIES`: 4 blocks, d_model 64, 4 heads of 16 dims
# (2 KV heads where the family has GQA), d_mlp 128, context 256. `architectures` picks the bridge's adapter.
_COMMON = dict(vocab_size=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
_DECODER = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=256,
    tie_word_embeddings=False, **_COMMON,
)
TINY_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "gpt2": ("GPT2Config", dict(
        n_embd=64, n_inner=128, n_layer=4, n_head=4, n_positions=256, tie_word_embeddings=False,
        architectures=["GPT2LMHeadModel"], **_COMMON,
    )),
    "llama": ("LlamaConfig", dict(num_key_value_heads=2, architectures=["LlamaForCausalLM"], **_DECODER)),
    "mistral": ("MistralConfig", dict(
        num_key_value_heads=2, sliding_window=None, architectures=["MistralForCausalLM"], **_DECODER,
    )),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=2, architectures=["Qwen2ForCausalLM"], **_DECODER)),
    "gemma3": ("Gemma3TextConfig", dict(  # local (sliding) layers and one global layer, like the real model
        num_key_value_heads=2, head_dim=16, sliding_window=64,
        layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
        architectures=["Gemma3ForCausalLM"], **_DECODER,
    )),
    "gpt_neox": ("GPTNeoXConfig", dict(  # Pythia: parallel attention and MLP, partial rotary
        use_parallel_residual=True, rotary_pct=0.25, architectures=["GPTNeoXForCausalLM"], **_DECODER,
    )),
}

# Default planted magnitude: 1000, or more where the residual median is larger (Gemma 3 renormalises every
# sublayer output to unit RMS, so its tiny residual has median |x| ~ 1.5 and the paper's 1000x ratio needs more).
_MAGNITUDE = {"gemma3": 10000.0}


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


def _at_bos(model: HookedModel, name: str, index: int) -> float:
    """The activation `name`[..., index] at a lone BOS token (position 0 never sees later tokens)."""
    from ._hooks import capture

    _, cache = capture(model, torch.tensor([[model.tokenizer.bos_token_id]]), [name])
    return float(cache[name].flatten(0, -2)[0, index])


def _calibrate(model: HookedModel, weight: torch.Tensor, where: tuple[int, ...], name: str, index: int, target: float) -> None:
    """Set weight[where] so that activation `name`[index] at BOS equals `target`; it must be affine in it."""
    w0 = float(weight[where])
    y0 = _at_bos(model, name, index)
    weight[where] = w0 + 1.0
    slope = _at_bos(model, name, index) - y0
    if abs(slope) < 1e-6:
        weight[where] = w0
        raise RuntimeError(f"cannot plant: {name}[{index}] does not respond to the planted weight")
    weight[where] = w0 + (target - y0) / slope


@torch.no_grad()
def plant_massive_activation(model: HookedModel, plant: Plant, *, seed: int = 0) -> None:
    """Make `plant.neuron` of block `plant.layer` fire only on BOS and write `magnitude` into `plant.dim`.

    Works through the bridge's weight views (W_E, W_pos, W_in, W_gate, W_out), so it edits the model in
    place, for every family: the written value is calibrated by forward passes on a lone BOS, so embedding
    scales, LayerNorm and biases need no special case. Where the family normalises the MLP output before
    the residual add (Gemma 3's post-MLP RMSNorm), the massive value gets through that norm the way it does
    in the real model: by a large norm weight at the massive dimension.
    """
    from .arch import hook, spec

    fam = spec(model)
    for kind, value, size in (("layer", plant.layer, model.cfg.n_layers), ("neuron", plant.neuron, model.cfg.d_mlp),
                              ("dim", plant.dim, model.cfg.d_model)):
        if not 0 <= value < size:
            raise ValueError(f"plant {kind} {value} out of range: valid {kind}s are 0..{size - 1}")
    gen = torch.Generator().manual_seed(seed + 1)
    d_model = model.cfg.d_model
    u = torch.randn(d_model, generator=gen).to(model.W_E.device, model.W_E.dtype)
    u = u - u.mean()  # zero-mean, so LayerNorm keeps the direction
    u = u / u.norm()
    bos = model.tokenizer.bos_token_id
    # Only BOS ever points along u before the planted neuron reads it: remove u from every other writer
    # into the residual stream up to that block (norms with unit weights keep a vector orthogonal to u).
    writers = [model.W_E]  # (d_vocab, d_model) view of the embedding
    if model.cfg.positional_embedding_type == "standard":  # learned absolute positions (GPT-2)
        writers.append(model.W_pos)  # (n_ctx, d_model)
    for layer in range(plant.layer + 1):
        attn, mlp = model.blocks[layer].attn, model.blocks[layer].mlp
        writers += [attn.W_O, mlp.W_out] + [b for b in (attn.b_O, mlp.b_out) if b is not None]
    for w in writers:
        w -= (w @ u)[..., None] * u
    W_E = model.W_E
    W_E[bos] = u * W_E.norm(dim=1).mean() * 4  # BOS points along u
    mlp = model.blocks[plant.layer].mlp
    mlp.W_out[:, plant.dim] = 0.0  # only the planted neuron writes into plant.dim in its block
    c = 2.0  # at BOS the normalised MLP input is ~ sqrt(d_model) * u, so the neuron's pre-activation is ~ c sqrt(d)
    mlp.W_in[:, plant.neuron] = c * u  # (d_model, d_mlp)
    if fam.gated_mlp:
        mlp.W_gate[:, plant.neuron] = c * u
    if getattr(mlp, "b_in", None) is not None:
        mlp.b_in[plant.neuron] = 0.0
    mlp.W_out[plant.neuron, :] = 0.0  # (d_mlp, d_model): the neuron writes only into plant.dim
    act = _at_bos(model, hook.mlp_post(plant.layer), plant.neuron)
    if act <= 0:
        raise RuntimeError(f"cannot plant: neuron {plant.neuron} of block {plant.layer} does not fire on BOS "
                           f"({act:.3g})")
    mlp.W_out[plant.neuron, plant.dim] = plant.magnitude / act
    if fam.post_sublayer_norm:  # the MLP output is renormalised: its weight at `dim` sets the written value
        post = model.blocks[plant.layer].ln2_post.w  # (d_model,) view of the post-MLP norm weight
        _calibrate(model, post, (plant.dim,), hook.mlp_out(plant.layer), plant.dim, plant.magnitude)
    else:
        _calibrate(model, mlp.W_out, (plant.neuron, plant.dim), hook.mlp_out(plant.layer), plant.dim, plant.magnitude)


def tiny_model(
    family: str = "llama",
    *,
    plant: Plant | None | bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """A tiny bridge-wrapped model of `family`; with a planted massive activation unless plant=False.

    The default plant is Plant(layer=1, neuron=7, dim=5, magnitude=1000.0) (10000.0 for gemma3); it is stored
    beside the model: `planted(model)` (None when nothing is planted). BOS is prepended for every family. The plant is
    calibrated in float32, then the model is cast to `dtype` (float16 overflows a planted magnitude above
    65504, as real models do).

        >>> tiny_model("gpt_neox", plant=Plant(layer=2, neuron=3, dim=9, magnitude=500.0)).cfg.n_layers
        4
    """
    from .models import _load_own, _set_name

    hf_model = tiny_hf_model(family, seed=seed)
    hf_model.config._name_or_path = f"tiny-{family}"
    model = _load_own(hf_model, char_tokenizer())  # load_model without its take-over warning
    _set_name(model, f"tiny-{family}" + ("" if plant else "-random"))
    model.cfg.default_prepend_bos = True  # the char tokenizer has a BOS for every family (Qwen2/Pythia's lack one)
    _inputs.set_default_bos(model, True)  # ... and prepend_bos=None prepends it (the plant fires on BOS)
    if plant is True:
        plant = Plant(layer=1, neuron=7, dim=5, magnitude=_MAGNITUDE.get(family, 1000.0))
    if plant:
        plant_massive_activation(model, plant, seed=seed)
    if dtype != torch.float32:
        model.to(dtype)
    _PLANTS[model] = plant or None
    return model


_PLANTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its Plant, beside the model


def planted(model: HookedModel) -> Plant | None:
    """Where `tiny_model` planted the model's massive activation (None: nothing planted, or not a tiny model)."""
    return _PLANTS.get(model)


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


@dataclass(frozen=True)
class ModelState:
    """A model's weights, hook counts and mode, to check that an analysis left it as it found it."""

    weights: dict[str, torch.Tensor]
    hooks: dict[str, int]  # "hook point.attribute" -> number of hooks on it
    training: bool

    @classmethod
    def of(cls, model: HookedModel) -> ModelState:
        from transformer_lens.hook_points import HookPoint  # the bridge adds its own hooks to HF modules, lazily

        hooks = {f"{name}.{attr}": len(getattr(mod, attr)) for name, mod in model.named_modules()
                 if isinstance(mod, HookPoint) for attr in _HOOK_DICTS if len(getattr(mod, attr))}
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return cls(weights, hooks, model.training)

    def check(self, model: HookedModel) -> None:
        """Raise AssertionError naming what differs: a hook left behind, a weight changed, the mode switched."""
        now = ModelState.of(model)
        if now.hooks != self.hooks:
            extra = {k: v for k, v in now.hooks.items() if self.hooks.get(k) != v}
            raise AssertionError(f"hooks left on the model: {extra}")
        changed = [k for k, v in self.weights.items() if not torch.equal(v, now.weights[k])]
        if changed or now.weights.keys() != self.weights.keys():
            raise AssertionError(f"weights changed: {changed[:5]}")
        if now.training != self.training:
            raise AssertionError(f"model.training changed from {self.training} to {now.training}")
