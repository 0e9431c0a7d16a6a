"""An independent reference: the paper's measurements written out in plain transformers and PyTorch (no bridge, no
mi_massive code), compared with the package on smollm2-135m and gemma3-270m under the same conditions (each
model's own BOS choice: smollm2 without, gemma3 with) to 1e-4 relative.

The reference reads the dequantised weights straight from the cache folder that load_model fills, and takes block
outputs from forward hooks on the decoder layers (HF's last `hidden_states` entry is after the final norm).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from mi_massive import attention_sinks, build_intervention, layer_profile, massive_stats, perplexity, trace_origin

RTOL = 1e-4
PROMPTS = ["Summer is warm. Winter is cold.", "The quick brown fox jumps over the lazy dog."]
CALIBRATION = [
    "The river flows through the valley and into the sea.",
    "Paris is the capital of France, and it is known for its museums.",
    "She opened the window because the room was too warm.",
    "Photosynthesis turns light, water and carbon dioxide into sugar.",
]
SCORED = (" Mount Everest is the highest mountain above sea level. It lies in the Himalayas on the border between "
          "Nepal and China. Climbers first reached its summit in 1953, and thousands have followed since then.")
SEQ_LEN, CHUNKS = 16, 2
CONDITIONS = {"smollm2-135m": False, "gemma3-270m": True}  # what each model's own tokenizer does


def _cache(name: str) -> Path:
    env = os.environ.get("MI_MASSIVE_CACHE")
    if env:
        return Path(env).expanduser() / name
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("mi_massive")) / name


class Reference:
    """A Hugging Face causal LM and its tokenizer, with the measurements the package makes."""

    def __init__(self, name: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = _cache(name)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                          attn_implementation="eager").eval().requires_grad_(False)
        self.tok = AutoTokenizer.from_pretrained(path)
        self.layers = self.model.model.layers
        self.bos = CONDITIONS[name]

    def ids(self, text: str) -> torch.Tensor:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return torch.tensor(([self.tok.bos_token_id] if self.bos else []) + ids)

    @torch.no_grad()
    def run(self, ids: torch.Tensor, edits: dict | None = None, attentions: bool = False):
        """Block inputs of layer 0 and outputs of every layer (layer + 1, pos, d_model), the logits, the attentions;
        `edits` {layer: fn(hidden) -> hidden} rewrite block outputs."""
        outs: list[torch.Tensor] = []

        def pre(module, args, kwargs):
            outs.append(args[0][0].clone() if args else kwargs["hidden_states"][0].clone())

        def post(layer):
            def fn(module, args, output):
                h = output[0] if isinstance(output, tuple) else output
                if edits and layer in edits:
                    h = edits[layer](h)
                outs.append(h[0].clone())
                return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h
            return fn

        handles = [self.layers[0].register_forward_pre_hook(pre, with_kwargs=True)]
        handles += [block.register_forward_hook(post(l)) for l, block in enumerate(self.layers)]
        try:
            out = self.model(ids[None], output_attentions=attentions)
        finally:
            for h in handles:
                h.remove()
        return torch.stack(outs), out.logits[0], out.attentions

    @staticmethod
    def massive(h: torch.Tensor) -> torch.Tensor:
        """The paper's rule on one layer's (pos, d_model) output of one prompt."""
        a = h.abs()
        return (a > 100) & (a >= 1000 * a.flatten().median())


@pytest.fixture(scope="module", params=list(CONDITIONS))
def pair(request):
    name = request.param
    return request.getfixturevalue(name.split("-")[0]), Reference(name)


def test_layer_profile(pair):
    model, ref = pair
    top, med = 0.0, 0.0
    for text in PROMPTS:
        h = ref.run(ref.ids(text))[0][1:]  # (layer, pos, d_model)
        a = h.abs().flatten(1)
        top = top + a.topk(3, dim=1).values / len(PROMPTS)
        med = med + a.median(dim=1).values / len(PROMPTS)
    got = layer_profile(model, PROMPTS, prepend_bos=ref.bos)
    assert got.prepend_bos is ref.bos
    torch.testing.assert_close(got.top, top, rtol=RTOL, atol=1e-5)
    torch.testing.assert_close(got.median, med, rtol=RTOL, atol=1e-6)


def test_super_weight(pair):
    model, ref = pair
    ids = ref.ids(PROMPTS[0])
    acts: dict[int, torch.Tensor] = {}
    handles = [layer.mlp.down_proj.register_forward_hook(lambda m, a, o, l=l: acts.__setitem__(l, a[0][0].clone()))
               for l, layer in enumerate(ref.layers)]
    try:
        h = ref.run(ids)[0]  # (layer + 1, pos, d_model): [0] is block 0's input
    finally:
        for hd in handles:
            hd.remove()
    sites = torch.stack([ref.massive(x) for x in h[1:]]).nonzero()  # (layer, pos, dim) rows
    l, p, d = (int(v) for v in sites[h[1:][tuple(sites.T)].abs().argmax()])
    layer = int(sites[(sites[:, 1] == p) & (sites[:, 2] == d)][:, 0].min())  # where it first passes
    sign = 1.0 if h[layer + 1, p, d] >= 0 else -1.0
    writes = h[1 : layer + 2, p, d] - h[: layer + 1, p, d]  # what each block adds
    writer = int((sign * writes).argmax())
    post = getattr(ref.layers[writer], "post_feedforward_layernorm", None)  # gemma3: the MLP output is renormalised
    gain = 1.0 if post is None else float(1.0 + post.weight[d])
    W = ref.layers[writer].mlp.down_proj.weight  # (d_model, d_mlp)
    neuron = int((sign * acts[writer][p] * W[d] * gain).argmax())
    got = trace_origin(model, PROMPTS[0], ablate=False, prepend_bos=ref.bos)
    assert (got.layer, got.pos, got.dim, got.writer_layer) == (layer, p, d, writer)
    sw = got.super_weight
    assert (sw.layer, sw.row, sw.col) == (writer, d, neuron)
    assert math.isclose(sw.value, float(W[d, neuron]), rel_tol=RTOL)
    assert math.isclose(got.value, float(h[layer + 1, p, d]), rel_tol=RTOL)


def _nll(ref: Reference, ids: torch.Tensor, edits: dict | None) -> float:
    logits = ref.run(ids, edits)[1]
    return float(torch.nn.functional.cross_entropy(logits[:-1].double(), ids[1:]))


def test_zero_and_mean_perplexity(pair):
    model, ref = pair
    runs = [ref.run(ref.ids(t))[0][1:] for t in CALIBRATION]  # each (layer, pos, d_model)
    hits = [torch.stack([ref.massive(x) for x in h]) for h in runs]  # (layer, pos, d_model)
    peak = max((float(h[m].abs().max()), int(h.abs().where(m, 0).flatten(0, 1).max(0).values.argmax()))
               for h, m in zip(runs, hits) if m.any())
    dim = peak[1]
    layer = min(int(m[..., dim].any(1).nonzero()[0]) for m in hits if m[..., dim].any())
    first = torch.stack([h[layer, 0, dim] for h in runs]).double().mean()
    other = [h[layer, p, dim] for h, m in zip(runs, hits) for p in range(1, h.shape[1]) if m[:, p, dim].any()]
    other = torch.stack(other).double().mean() if other else first
    ids = ref.ids(SCORED)
    text = ids[1:] if ref.bos else ids
    chunks = [text[i * SEQ_LEN : (i + 1) * SEQ_LEN] for i in range(CHUNKS)]
    chunks = [torch.cat([ids[:1], c]) if ref.bos else c for c in chunks]

    def write(first_value: float, other_value: float):
        def fn(h: torch.Tensor) -> torch.Tensor:
            h = h.clone()  # (1, pos, d_model)
            where = ref.massive(h[0])[:, dim]
            vals = torch.full_like(h[0, :, dim], other_value)
            vals[0] = first_value
            h[0, :, dim] = torch.where(where, vals, h[0, :, dim])
            return h
        return {layer: fn}

    want = {"none": None, "zero": write(0.0, 0.0), "mean": write(float(first), float(other))}
    stats = massive_stats(model, CALIBRATION, prepend_bos=(ref.bos,))  # the package's calibration, measured once
    for mode, edits in want.items():
        ppl = math.exp(sum(_nll(ref, c, edits) for c in chunks) / len(chunks))
        iv = None if edits is None else build_intervention(model, CALIBRATION, mode=mode, dims=[dim], layers=[layer],
                                                           stats=stats, prepend_bos=ref.bos, check_rebuild=False)
        got = perplexity(model, SCORED, seq_len=SEQ_LEN, max_chunks=CHUNKS, prepend_bos=ref.bos, intervention=iv)
        assert math.isclose(got.perplexity, ppl, rel_tol=RTOL), (mode, got.perplexity, ppl)


def test_attention_on_token_0(pair):
    model, ref = pair
    num, n = 0.0, 0
    for text in PROMPTS:
        att = torch.stack(ref.run(ref.ids(text), attentions=True)[2])[:, 0]  # (layer, head, query, key)
        num = num + att[:, :, 1:, 0].double().sum(-1)  # queries after token 0
        n += att.shape[-1] - 1
    got = attention_sinks(model, PROMPTS, sink_positions=[0], prepend_bos=ref.bos)
    torch.testing.assert_close(got.sink_mass.double(), num / n, rtol=RTOL, atol=1e-6)
