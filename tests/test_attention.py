"""Attention sinks, the implicit attention bias (Eq. 2) and the bias swap: tiny planted models and smollm2-135m."""

import pytest
import torch

from mi_massive import AttentionSinks, ImplicitBias, attention_sinks, implicit_bias, swap_implicit_bias
from mi_massive._attention import split
from mi_massive._hooks import capture
from mi_massive.arch import hook
from mi_massive.testing import planted

TEXTS = ["hello world", "abc def", "a much longer prompt here"]


@pytest.fixture(scope="module")
def tiny_bias(tiny_llama):
    return implicit_bias(tiny_llama, TEXTS)


# --- the Eq. 2 decomposition --------------------------------------------------------------------------------

@pytest.mark.parametrize("sinks", [[0], [0, 4], [2, 5]])
def test_decomposition_sums_to_attention_output(tiny_llama, sinks):
    toks = tiny_llama.to_tokens("hello world")
    layer = 2
    _, cache = capture(tiny_llama, toks, [hook.pattern(layer), hook.v(layer), hook.z(layer), hook.attn_out(layer)])
    sink = torch.zeros(1, toks.shape[1], dtype=torch.bool)
    sink[0, sinks] = True
    part, rest = split(cache[hook.pattern(layer)], cache[hook.v(layer)], sink)
    W_O = tiny_llama.blocks[layer].attn.W_O  # (head, d_head, d_model)
    out = lambda z: torch.einsum("bqhd,hdm->bqm", z, W_O)  # noqa: E731
    z = cache[hook.z(layer)]
    torch.testing.assert_close(out(part) + out(rest), out(z), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out(z), cache[hook.attn_out(layer)], atol=1e-5, rtol=1e-4)  # LLaMA: no b_O
    assert out(part).abs().max() > 1e-3 and out(rest).abs().max() > 1e-3  # both parts carry something
    before = min(sinks)
    assert part[0, :before].abs().max() == 0 if before else True  # queries before the first sink cannot see it


def test_gqa_query_head_reads_kv_head_h_div_group(tiny_llama):
    cfg = tiny_llama.cfg
    assert (cfg.n_heads, cfg.n_key_value_heads) == (4, 2)
    toks = tiny_llama.to_tokens("abc def")
    _, cache = capture(tiny_llama, toks, [hook.pattern(1), hook.v(1), hook.z(1)])
    p, v, z = cache[hook.pattern(1)], cache[hook.v(1)], cache[hook.z(1)]
    everything = torch.ones(1, toks.shape[1], dtype=torch.bool)
    part, rest = split(p, v, everything)
    torch.testing.assert_close(part, z, atol=1e-6, rtol=1e-5)
    assert rest.abs().max() == 0
    for h in range(cfg.n_heads):  # head h reads KV head h // 2, not h % 2
        torch.testing.assert_close(z[0, :, h], p[0, h] @ v[0, :, h // 2], atol=1e-6, rtol=1e-5)
        assert not torch.allclose(z[0, :, h], p[0, h] @ v[0, :, (h // 2 + 1) % 2], atol=1e-4)


def test_implicit_bias_result(tiny_llama, tiny_bias):
    b = tiny_bias
    assert isinstance(b, ImplicitBias)
    assert b.max_error < 1e-5
    plant = planted(tiny_llama).layer
    assert b.first_massive_layer == plant and b.layers == tuple(range(plant + 1, 4))  # blocks that read it
    assert b.sink_positions == ((0,), (0,), (0,))
    assert b.mean_z.shape == (len(b.layers), tiny_llama.cfg.n_heads, tiny_llama.cfg.d_head)
    assert b.n_queries == sum(len(tiny_llama.to_tokens(t)[0]) - 1 for t in TEXTS)  # every query after BOS
    df = b.to_dataframe()
    assert list(df.columns) == ["layer", "head", "bias_norm", "rest_norm", "constancy", "spread", "size_cv"]
    assert len(df) == 4 * len(b.layers) and (df.bias_norm > 0).all() and (df.rest_norm > 0).all()
    # one sink at position 0: its value is the same vector in every prompt, so the part only changes in size
    assert (df.constancy > 0.999).all() and (df.spread > 0).all()
    # ... so the result flags the cosine as no evidence and reports how much the size varies instead
    assert b.by_construction.startswith("one sink token, '<bos>' at position 0")
    torch.testing.assert_close(b.size_cv, b.spread, rtol=1e-4, atol=1e-6)  # collinear: spread is the size's CV
    assert "by construction" in repr(b) and "mean cosine" not in repr(b) and "(CV) across queries" in repr(b)
    assert list(b.swap.condition) == ["original", "swapped", "removed"]
    assert b.swap.delta[0] == 0 and b.loss_swapped != b.loss_original != b.loss_removed
    assert "removed" in repr(b) and b.prepend_bos is True and "with BOS" in repr(b)
    two = implicit_bias(tiny_llama, list(TEXTS), sink_positions=[0, 2], swap=False)  # two sinks: may vary
    assert two.by_construction == "" and "mean cosine" in repr(two) and float(two.constancy.mean()) < 0.999
    given = implicit_bias(tiny_llama, "hello world", sink_positions=[0], swap=False)
    assert given.layers == (0, 1, 2, 3) and given.first_massive_layer is None and given.loss_swapped is None


def test_swap_context_manager_edits_only_the_sink_part(tiny_llama):
    toks = tiny_llama.to_tokens("hello world")
    names = [hook.pattern(0), hook.v(0), hook.attn_out(0)]
    _, clean = capture(tiny_llama, toks, names)
    bias = implicit_bias(tiny_llama, toks, layers=[0], sink_positions=[0], swap=False)
    part, rest = split(clean[hook.pattern(0)], clean[hook.v(0)], torch.tensor([[True] + [False] * 11]))
    W_O = tiny_llama.blocks[0].attn.W_O
    out = lambda z: torch.einsum("bqhd,hdm->bqm", z, W_O)  # noqa: E731
    const = torch.einsum("hd,hdm->m", bias.mean_z[0], W_O)  # mean_z is (layer, head, d_head)
    for mode, expected in (("remove", out(rest)), ("swap", out(rest) + const)):
        with swap_implicit_bias(tiny_llama, bias, mode=mode):
            _, got = capture(tiny_llama, toks, [hook.attn_out(0)])
        torch.testing.assert_close(got[hook.attn_out(0)][0, 1:], expected[0, 1:], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got[hook.attn_out(0)][0, 0], clean[hook.attn_out(0)][0, 0])  # sink query kept
    _, after = capture(tiny_llama, toks, [hook.attn_out(0)])  # hooks came off
    torch.testing.assert_close(after[hook.attn_out(0)], clean[hook.attn_out(0)])


def test_swap_losses_match_the_context_manager(tiny_llama, tiny_bias):
    toks = tiny_llama.to_tokens("hello world")
    one = implicit_bias(tiny_llama, toks)
    for mode, want in (("swap", one.loss_swapped), ("remove", one.loss_removed)):
        with torch.inference_mode(), swap_implicit_bias(tiny_llama, one, mode=mode):
            assert float(tiny_llama(toks, return_type="loss")) == pytest.approx(want, rel=1e-5)
    with torch.inference_mode():
        assert float(tiny_llama(toks, return_type="loss")) == pytest.approx(one.loss_original, rel=1e-6)


# --- attention sinks ---------------------------------------------------------------------------------------

def test_sink_mass_and_alpha_by_hand(tiny_llama):
    toks = tiny_llama.to_tokens("a much longer prompt here")  # 26 tokens
    sinks = [0, 5]
    res = attention_sinks(tiny_llama, toks, sink_positions=sinks)
    assert isinstance(res, AttentionSinks) and res.first_massive_layer is None
    _, cache = capture(tiny_llama, toks, [hook.pattern(l) for l in range(4)])
    queries = [q for q in range(1, toks.shape[1]) if q not in sinks]  # the sink queries themselves are left out
    for layer in range(4):
        p = cache[hook.pattern(layer)][0]  # (head, query_pos, key_pos)
        mass = p[:, queries][:, :, sinks].sum(-1).mean(-1)
        alpha = torch.stack([p[:, k:, k].mean(-1) for k in sinks]).mean(0)  # queries i >= k
        torch.testing.assert_close(res.sink_mass[layer], mass, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(res.alpha[layer], alpha, atol=1e-6, rtol=1e-5)
    assert res.sink_rate == float((res.alpha > 0.3).float().mean())


def test_sinks_found_automatically_and_per_prompt(tiny_llama):
    auto = attention_sinks(tiny_llama, TEXTS)
    assert auto.sink_positions == ((0,), (0,), (0,)) and auto.first_massive_layer == planted(tiny_llama).layer
    given = attention_sinks(tiny_llama, TEXTS, sink_positions=[[0], [0], [0]])
    torch.testing.assert_close(auto.sink_mass, given.sink_mass)
    df = auto.to_dataframe()
    assert list(df.columns[:4]) == ["layer", "head", "sink_mass", "alpha"]
    assert (df.kv_head == df["head"] // 2).all()
    assert len(df) == 16 and list(auto.by_layer().columns) == ["layer", "sink_mass", "alpha", "sink_heads"]
    # BOS keys and values are the same vector in every prompt; the planted BOS differs from other tokens
    assert (auto.k_norm_sink > 0).all() and (auto.k_cos_other > auto.k_cos_sink).all()
    mixed = attention_sinks(tiny_llama, TEXTS, sink_positions=[[0], [0, 3], [2]])
    assert mixed.sink_positions == ((0,), (0, 3), (2,))


# --- bad inputs -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(layers=[4]), r"layer 4 out of range: valid layers are 0\.\.3"),
    (dict(layers=[]), "non-empty list"),
    (dict(layers=2), "non-empty list"),
    (dict(sink_positions=[40]), r"sink position \(prompt 0\) 40 out of range"),
    (dict(sink_positions=[]), "sink_positions is empty"),
    (dict(sink_positions=[[0], [0]]), "2 lists for 3 prompts"),
    (dict(sink_positions="0"), "list of ints"),
])
def test_implicit_bias_rejects_bad_options(tiny_llama, kwargs, match):
    with pytest.raises(ValueError, match=match):
        implicit_bias(tiny_llama, TEXTS, **kwargs)


def test_bad_inputs(tiny_llama, tiny_random, tiny_bias):
    with pytest.raises(ValueError, match="epsilon"):
        attention_sinks(tiny_llama, TEXTS, epsilon=2)
    with pytest.raises(ValueError, match="no token massive activations.*sink_positions"):
        attention_sinks(tiny_random, TEXTS)
    every = attention_sinks(tiny_llama, "ab", sink_positions=[0, 1, 2])  # every token a sink: no query measured
    assert every.sink_mass.isnan().all() and "no query was measured" in every.undefined
    assert "undefined (NaN)" in repr(every) and "0.00" not in repr(every)
    with pytest.raises(ValueError, match="empty"):
        implicit_bias(tiny_llama, [""])
    with pytest.raises(ValueError, match="mode"), swap_implicit_bias(tiny_llama, tiny_bias, mode="zero"):
        pass
    toks = tiny_llama.to_tokens("ab")  # 3 tokens
    with torch.inference_mode():
        before = tiny_llama(toks)
    with pytest.raises(ValueError, match="sink position 5 out of range"):
        with torch.inference_mode(), swap_implicit_bias(tiny_llama, tiny_bias, sink_positions=[5]):
            tiny_llama(toks)
    with torch.inference_mode():  # the hooks came off after the error
        torch.testing.assert_close(tiny_llama(toks), before)


def test_cli_sinks(tiny_llama, monkeypatch, capsys):
    from mi_massive import cli

    monkeypatch.setattr(cli, "load_from_args", lambda args: tiny_llama)
    assert cli.main(["sinks", "tiny", "--prompt", "hello world", "--layers", "1", "2"]) == 0
    out = capsys.readouterr().out
    assert "AttentionSinks" in out and "ImplicitBias" in out and "swapped" in out


# --- smollm2-135m -----------------------------------------------------------------------------------------

PROSE = [
    "The river runs through the old town, past the market square and the stone bridge. In spring the water rises "
    "and the fishermen wait for the floods to pass before they take their boats out again.",
    "Scientists have long debated why the climate of the region changed so quickly at the end of the last ice age. "
    "New measurements of lake sediments suggest that the shift took only a few decades.",
    "She opened the letter slowly, unsure whether she wanted to know what it said. Her brother had not written in "
    "years, and the handwriting on the envelope looked older and less steady than she remembered.",
    "The committee approved the budget after a long meeting on Tuesday night. Most of the money will go to repairing "
    "roads and schools, while a smaller share is set aside for the new public library.",
]


@pytest.fixture(scope="module")
def smollm2_sinks(smollm2):
    return attention_sinks(smollm2, PROSE, prepend_bos=True)  # BOS behaviour: '<|im_start|>' prepended


@pytest.fixture(scope="module")
def smollm2_bias(smollm2):
    return implicit_bias(smollm2, PROSE, prepend_bos=True)


@pytest.mark.real
def test_smollm2_sink_mass_rises_after_the_massive_activation(smollm2_sinks):
    s = smollm2_sinks
    assert s.first_massive_layer == 11 and set(s.sink_positions) == {(0,)}  # dim 507 at BOS, written by block 11
    mass = s.sink_mass.mean(1)  # (layer,) head-averaged
    # the blocks around the jump barely look at BOS (measured 0.05, 0.02 in blocks 0-1; 0.06, 0.02 in 10-11) ...
    assert (mass[[0, 1, 10, 11]] < 0.1).all()
    # ... every block that reads the massive activation puts much of its attention there (measured 0.37..0.86)
    assert mass[12:].min() > 0.3 and mass[12:].mean() > 0.55  # measured mean 0.62
    # blocks 3-9 already use BOS as a weaker sink without a massive activation (measured 0.35..0.40)
    assert (mass[3:10] > 0.3).all() and (mass[3:10] < mass[12:].mean()).all()
    assert 0.6 < s.sink_rate < 0.95  # share of heads with alpha > 0.3, measured 0.77
    # the sink key points away from the other keys and the sink value is small (measured cos -0.31..0.07 vs
    # 0.84..0.95; |v| ratio 0.27..0.42, layers 12-28/29)
    assert (s.k_cos_sink[12:29].mean(1) < 0.15).all() and (s.k_cos_other[12:].mean(1) > 0.8).all()
    assert (s.v_norm_sink.mean(1) / s.v_norm_other.mean(1))[12:].max() < 0.5


@pytest.mark.real
def test_smollm2_implicit_bias_is_constant_and_swappable(smollm2_bias):
    b = smollm2_bias
    assert b.layers == tuple(range(12, 30))  # the blocks after the massive activation appears
    assert b.max_error < 1e-5  # Eq. 2 parts sum to hook_z (measured 3e-7)
    # one sink token (BOS): the part is p_q0 v_0 W_O, fixed in direction by construction; its size varies with p_q0
    assert b.constancy.min() > 0.999 and b.by_construction.startswith("one sink token, '<|im_start|>'")
    assert "no evidence of constancy" in repr(b) and float(b.size_cv.median()) > 0.1
    assert b.spread.median() < 0.5  # measured median 0.36 (RMS distance to the mean / its norm)
    assert (b.bias_norm.mean(1) > 0.2 * b.rest_norm.mean(1)).all()  # a sizeable term, measured 6.1 vs 9.7 on average
    # swapping the part for its mean keeps the loss (measured -0.3%); removing it does not (measured +17%)
    assert abs(b.loss_swapped / b.loss_original - 1) < 0.03
    assert b.loss_removed / b.loss_original - 1 > 0.10


@pytest.mark.real
def test_gemma3_one_kv_head_sinks_and_swap(gemma3):
    # dim 400 passes the paper's rule at most tokens in the first blocks: a feature-wide outlier, not a sink; BOS
    # (gemma3's own tokenizer adds it) holds dim 163 from block 3; all 4 query heads share the one KV head
    sinks = attention_sinks(gemma3, PROSE[:2])
    assert sinks.sink_positions == ((0,), (0,)) and sinks.first_massive_layer == 3 and sinks.prepend_bos is True
    assert sinks.k_norm_sink.shape == (18, 1)
    assert sinks.sink_mass.mean() > 0.35 and sinks.sink_rate > 0.6  # measured 0.50 and 0.85
    bias = implicit_bias(gemma3, PROSE[:2])
    assert bias.layers == tuple(range(4, 18)) and bias.max_error < 1e-5
    assert abs(bias.loss_swapped / bias.loss_original - 1) < 0.03  # measured +0.4%
    assert bias.loss_removed / bias.loss_original - 1 > 0.3  # measured +90% (3.03 -> 5.75)
