"""Detection by the paper's rule: real models (smollm2, gemma3) and tiny planted/random models."""

import pytest
import torch

from mi_massive import LayerProfile, MassiveActivations, find_massive_activations, layer_profile, load_model
from mi_massive.detect import scan
from mi_massive.testing import planted


# --- tiny models --------------------------------------------------------------------------------------------

def test_planted_activation_found_exactly(tiny_llama):
    plant = planted(tiny_llama)
    acts = find_massive_activations(tiny_llama, ["hello world", "abc def"])
    df = acts.to_dataframe()
    assert set(df.dim) == {plant.dim}
    assert set(df.pos) == {0}
    assert df.layer.min() == plant.layer  # appears at the writing block, not before
    assert set(df.prompt) == {0, 1}
    assert list(df.columns) == ["prompt", "layer", "pos", "token", "dim", "value", "ratio"]
    assert (df.value.abs() > 100).all() and (df.ratio >= 1000).all()
    assert set(df.token) == {"<bos>"}


def test_random_model_finds_nothing(tiny_random):
    acts = find_massive_activations(tiny_random, ["hello world", "abc def"])
    assert len(acts) == 0
    assert acts.to_dataframe().empty and acts.summary().empty
    assert "no massive activations" in repr(acts)


def test_raising_threshold_or_ratio_removes_hits(tiny_llama):
    base = find_massive_activations(tiny_llama, "hello world")
    peak = float(base.value.abs().max())
    assert len(base) > 0
    assert len(find_massive_activations(tiny_llama, "hello world", threshold=peak + 1)) == 0
    worst_ratio = float(base.to_dataframe().ratio.max())
    assert len(find_massive_activations(tiny_llama, "hello world", ratio=worst_ratio * 1.01)) == 0
    # monotone: a stricter rule gives a subset
    mid = find_massive_activations(tiny_llama, "hello world", ratio=float(base.to_dataframe().ratio.median()))
    assert 0 < len(mid) <= len(base)


def test_token_tensor_and_batching_agree(tiny_llama):
    texts = ["hello world", "abc def", "a much longer prompt here"]
    a = find_massive_activations(tiny_llama, texts, batch_size=1).to_dataframe()
    b = find_massive_activations(tiny_llama, texts, batch_size=8).to_dataframe()
    assert a.equals(b)
    toks = tiny_llama.to_tokens("hello world")
    c = find_massive_activations(tiny_llama, toks).to_dataframe()
    assert c.drop(columns="prompt").equals(a[a.prompt == 0].drop(columns="prompt").reset_index(drop=True))


def test_profile_matches_detection(tiny_llama):
    found, profile = scan(tiny_llama, "hello world", k=2)
    assert isinstance(profile, LayerProfile) and profile.top.shape == (4, 2)
    assert list(profile.to_dataframe().columns) == ["layer", "top1", "top2", "median"]
    assert profile.jump_layer == planted(tiny_llama).layer
    at_writer = found.value[found.layer == 1].abs().max()
    assert torch.isclose(profile.top[1, 0], at_writer, rtol=1e-5)


@pytest.mark.parametrize("bad, match", [
    ("", "empty"), ("   ", "empty"), ([], "empty list"), (["ok", ""], "prompt 1 is empty"),
    (torch.zeros(0, 3, dtype=torch.long), "shape"), (torch.ones(1, 3), "integers"), (42, "string"),
])
def test_bad_inputs(tiny_llama, bad, match):
    with pytest.raises(ValueError, match=match):
        find_massive_activations(tiny_llama, bad)


@pytest.mark.parametrize("kw", [{"threshold": -1.0}, {"ratio": -5.0}, {"threshold": float("nan")}])
def test_negative_rule(tiny_llama, kw):
    with pytest.raises(ValueError, match="non-negative"):
        find_massive_activations(tiny_llama, "hello", **kw)


def test_save_load_roundtrip(tiny_llama, tmp_path):
    acts = find_massive_activations(tiny_llama, "hello world")
    acts.save(tmp_path / "a.pt")
    back = MassiveActivations.load(tmp_path / "a.pt")
    assert back.to_dataframe().equals(acts.to_dataframe()) and repr(back) == repr(acts)


# --- real models -------------------------------------------------------------------------------------------

@pytest.mark.real
def test_smollm2_dim507_at_first_token(smollm2, prompts):
    for bos in (True, False):
        acts = find_massive_activations(smollm2, prompts, prepend_bos=bos)
        s = acts.summary().set_index("dim")
        assert 507 in s.index, s
        row = s.loc[507]
        assert row.positions == [0]
        assert row.n_prompts == len(prompts)
        assert row.max_abs > 10_000
        assert 8 <= row.first_layer <= 14 and row.last_layer >= 25  # appears mid-network, lasts to the end
        df = acts.to_dataframe()
        assert (df[df.dim == 507].ratio > 1000).all()
    assert acts.dims[0] == 507


@pytest.mark.real
def test_smollm2_profile_jump_and_decline(smollm2, prompts):
    p = layer_profile(smollm2, prompts)
    top1 = p.top[:, 0]
    j = p.jump_layer
    assert top1[j] > 20 * top1[j - 1]  # abrupt appearance
    assert top1[j] > 10_000
    assert top1[-1] < 0.5 * top1[j:].max()  # decline in the last blocks
    assert (p.median < 100).all()


@pytest.mark.real
def test_gemma3_massive_at_bos(gemma3, prompts):
    acts = find_massive_activations(gemma3, prompts)
    sites = acts.sites(features=False)
    assert len(acts) > 0 and acts.prepend_bos is True and set(sites[sites.pos == 0].kind) == {"BOS"}
    assert (sites.pos == 0).any()
    peak = sites[sites.pos == 0].peak.abs().max()
    assert peak > 50_000
    assert acts.nonfinite.sum() == 0


@pytest.mark.real
def test_gemma3_float16_overflow_is_reported_not_silent(prompts):
    """Gemma's massive values (~1e5) exceed float16's range (65504): the scan reports them as inf, counts the
    non-finite entries per layer and warns, naming the dtype the model was loaded in."""
    gemma16 = load_model("gemma3-270m", dtype=torch.float16)
    assert gemma16.cfg.dtype == torch.float16 == next(gemma16.parameters()).dtype
    with pytest.warns(RuntimeWarning, match="overflow torch.float16"):
        acts = find_massive_activations(gemma16, prompts[:2])
    assert acts.nonfinite.sum() > 0
    sites = acts.sites()
    assert torch.isinf(torch.tensor(sites[sites.pos == 0].peak.abs().max()))  # reported, as inf, at BOS


def test_exact_when_more_entries_pass_than_candidates_kept(tiny_llama):
    # threshold 0, ratio 0: every entry passes, far more than the 64 candidates kept per prompt and layer
    acts = find_massive_activations(tiny_llama, ["hello world", "abc"], threshold=0.0, ratio=0.0)
    n_tokens = len("hello world") + 1 + len("abc") + 1
    assert len(acts) == n_tokens * tiny_llama.cfg.d_model * tiny_llama.cfg.n_layers
    toks = tiny_llama.to_tokens("abc")
    _, cache = tiny_llama.run_with_cache(toks)
    df = acts.to_dataframe()
    row = df[(df.prompt == 1) & (df.layer == 2) & (df.pos == 3) & (df.dim == 10)]
    assert float(row.value.iloc[0]) == pytest.approx(float(cache["blocks.2.hook_resid_post"][0, 3, 10]), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_sorted_stats_match_median_and_topk(dtype, monkeypatch):
    """The CUDA sort path (_stats.sorted_stats; Triton's is tests/test_select.py), run on the CPU: exact lower
    median and top-kk, also across the chunks of rows that bound its scratch memory."""
    from mi_massive import engine
    from mi_massive.engine import _stats

    x = torch.randn(5, 9193, generator=torch.Generator().manual_seed(0))
    x[:, 100:164] = x[:, :64]  # ties, also among the top
    x[1, 7], x[2] = 3e4, 1.0  # one massive entry; a row of equal values
    a = x.to(dtype).abs()
    for chunk in (engine.settings.sort_chunk, 2 * a.shape[1]):  # all rows at once; two rows a chunk
        for kk in (7, 64, 4000):  # a few candidates, the scan's default, a rerun's
            with engine.configure(sort_chunk=chunk):
                med, topv, topi = _stats.sorted_stats(a, kk)
            assert torch.equal(med, a.float().median(1).values.to(dtype))  # the lower median, like torch.median
            assert torch.equal(topv, a.topk(kk, 1).values) and torch.equal(a.gather(1, topi), topv)
            assert all(len(set(row.tolist())) == kk for row in topi)
