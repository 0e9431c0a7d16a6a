"""Attention sinks, the implicit attention bias (Eq. 2) and the bias swap: tiny planted models and smollm2-135m."""

import pytest
import torch

from mi_massive import AttentionSinks, ImplicitBias, attention_sinks, implicit_bias, swap_implicit_bias
from mi_massive._attention import split
from mi_massive._hooks import capture
from mi_massive.arch import hook

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
    assert b.layers == (0, 1, 2, 3) and b.sink_positions == ((0,), (0,), (0,))
    assert b.mean_z.shape == (4, tiny_llama.cfg.n_heads, tiny_llama.cfg.d_head)
    assert b.n_queries == sum(len(tiny_llama.to_tokens(t)[0]) - 1 for t in TEXTS)  # every query after BOS
    df = b.to_dataframe()
    assert list(df.columns) == ["layer", "head", "bias_norm", "rest_norm", "constancy", "spread"]
    assert len(df) == 16 and (df.bias_norm > 0).all() and (df.rest_norm > 0).all()
    # one sink at position 0: its value is the same vector in every prompt, so the part only changes in size
    assert (df.constancy > 0.999).all() and (df.spread > 0).all()
    assert list(b.swap.condition) == ["original", "swapped", "removed"]
    assert b.swap.delta[0] == 0 and b.loss_swapped != b.loss_original != b.loss_removed
    assert "mean cosine" in repr(b) and "removed" in repr(b)


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
    assert auto.sink_positions == ((0,), (0,), (0,)) and auto.first_massive_layer == tiny_llama.mi_massive_plant.layer
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
    with pytest.raises(ValueError, match="no massive activations.*sink_positions"):
        attention_sinks(tiny_random, TEXTS)
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
