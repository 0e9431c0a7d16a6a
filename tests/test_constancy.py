"""massive_stats: the massive value is near-constant across inputs; with BOS trivially so."""

import pytest

from mi_massive import load_corpus, massive_stats
from mi_massive.testing import planted

PROMPTS = ["Summer is warm. Winter is cold.", "The quick brown fox jumps.", "In 1905 Einstein wrote papers."]


def test_planted_value_is_constant_with_bos_and_absent_without(tiny_llama):
    plant = planted(tiny_llama)
    stats = massive_stats(tiny_llama, PROMPTS)
    assert stats.dims == (plant.dim,) and stats.prepend_bos == (False, True)
    with_bos, without = stats.setting(True), stats.setting(False)
    assert int(stats.first_layer[with_bos, 0]) == plant.layer and int(stats.first_layer[without, 0]) == -1
    assert float(stats.cv[with_bos, 0, plant.layer, 0]) < 1e-6  # BOS sees only itself
    assert int(stats.count[with_bos, 0, plant.layer, 0]) == len(PROMPTS)
    assert int(stats.count[with_bos, 1, plant.layer, 0]) == 0  # no other massive positions
    df = stats.summary()
    assert set(df.kind) == {"first", "other"} and len(stats.to_dataframe()) == 2 * 2 * 4 * 1
    # with BOS one token ('<bos>') starts every text: its constancy is no finding, and the result says so
    assert stats.constant_by_construction(True) == (True,) and stats.constant_by_construction(False) == (False,)
    assert df.note[(df.prepend_bos) & (df.kind == "first")].iloc[0].startswith("one starting token ('<bos>')")
    assert "with BOS one starting token ('<bos>') in every text: constant by construction" in repr(stats)


def test_std_of_one_value_is_nan_with_a_reason(tiny_llama):
    stats = massive_stats(tiny_llama, PROMPTS[:1], prepend_bos=(True,))
    plant = planted(tiny_llama)
    assert int(stats.count[0, 0, plant.layer, 0]) == 1
    assert stats.std[0, 0, plant.layer, 0].isnan() and stats.cv[0, 0, plant.layer, 0].isnan()  # not 0
    row = stats.summary().iloc[0]
    assert row.note == "one value: std and CV undefined" and "std and CV undefined" in repr(stats)


def test_validation(tiny_llama):
    with pytest.raises(ValueError, match="max_fraction"):
        massive_stats(tiny_llama, PROMPTS, max_fraction=0)
    with pytest.raises(ValueError, match="prepend_bos"):
        massive_stats(tiny_llama, PROMPTS, prepend_bos=(True, True))
    with pytest.raises(ValueError, match="max_tokens"):
        massive_stats(tiny_llama, PROMPTS, max_tokens=1)
    with pytest.raises(ValueError, match="measured with prepend_bos in"):
        massive_stats(tiny_llama, PROMPTS, prepend_bos=True).setting(False)


@pytest.mark.real
def test_smollm2_massive_value_varies_little_across_wikipedia_paragraphs(smollm2):
    stats = massive_stats(smollm2, load_corpus("wiki-en", n=16))
    assert stats.dims[:2] == (507, 247)
    no_bos, bos = stats.setting(False), stats.setting(True)
    assert int(stats.first_layer[no_bos, 0]) == 11 and int(stats.first_layer[bos, 0]) == 11
    # measured: mean 21,831, CV 8.5% at the starting token without BOS (the paper's setting); 24,926 and 0 with BOS
    assert 20_000 < float(stats.mean[no_bos, 0, 11, 0]) < 23_500
    assert float(stats.cv[no_bos, 0, 11, 0]) < 0.10
    assert float(stats.cv[bos, 0, 11, 0]) < 1e-4
    assert 24_000 < float(stats.mean[bos, 0, 11, 0]) < 26_000


def test_short_texts_keep_the_starting_token_dim(tiny_llama):
    # 3-token texts: the starting token is a third of all positions, yet its dim is a bias term, not a scale
    stats = massive_stats(tiny_llama, ["ab", "cd", "ef"], prepend_bos=(True,))
    assert planted(tiny_llama).dim in stats.dims
    assert planted(tiny_llama).dim not in stats.excluded_dims
