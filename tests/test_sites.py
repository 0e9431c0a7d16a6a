"""mi_massive.sites: one notion of a site's kind (token massive activation or feature-wide outlier; start token,
BOS, first delimiter or other), and the findings of issue 23 that depend on it."""

import numpy as np
import pytest

from mi_massive import attention_sinks, find_massive_activations, sites
from mi_massive.detect import MassiveActivations


def test_delimiters_and_position_kinds():
    toks = ["The", "Ġfox", ".", "Ċ", "Ġjumps", ",", "▁", "'s"]
    assert [sites.is_delimiter(t) for t in toks] == [False, False, True, True, False, True, True, False]
    assert sites.first_delimiter(toks) == 2 and sites.first_delimiter(["a", "b"]) is None
    assert sites.position_kind(toks, 0, bos=False) == "start token"
    assert sites.position_kind(toks, 0, bos=True) == "BOS"
    assert sites.position_kind(toks, 2, bos=True) == "first delimiter"
    assert sites.position_kind(toks, 5, bos=True) == "other"  # a later delimiter is named by its token
    assert sites.site_name(toks, 5, bos=True) == "other (',')" and sites.site_name(toks, 0, bos=True) == "BOS"


def test_feature_wide_needs_most_positions_in_one_layer():
    # dim 7 at every position of two 6-token prompts in layer 1; dim 3 at position 0 and one other position
    rows = [(p, 1, q, 7) for p in range(2) for q in range(6)] + [(p, l, 0, 3) for p in range(2) for l in range(4)]
    rows += [(0, 2, 4, 3)]
    prompt, layer, pos, dim = (np.array(c) for c in zip(*rows))
    assert sites.feature_dims(prompt, layer, pos, dim, [6, 6]) == (7,)
    # a 2-token prompt massive at both positions is too little evidence for "most positions"
    assert sites.feature_dims(np.array([0, 0]), np.array([1, 1]), np.array([0, 1]), np.array([3, 3]), [2]) == ()


def _acts(rows, str_tokens, prepend_bos):
    import torch

    prompt, layer, pos, dim = (torch.tensor(c) for c in zip(*rows))
    value = torch.full((len(rows),), 1000.0)
    return MassiveActivations(prompt=prompt, layer=layer, pos=pos, dim=dim, value=value, median=value / 2000,
                              str_tokens=str_tokens, threshold=100.0, ratio=1000.0, model_name="m", n_layers=4,
                              d_model=8, nonfinite=torch.zeros(4, dtype=torch.long), prepend_bos=prepend_bos)


def test_result_kinds_one_row_for_a_feature_wide_dim():
    toks = (("<bos>", "Ġa", "Ġb", ".", "Ġc", "onga"),)
    rows = [(0, l, q, 7) for l in (0, 1) for q in range(6)] + [(0, l, 0, 3) for l in (2, 3)] + [(0, 3, 5, 3)]
    acts = _acts(rows, toks, True)
    assert acts.feature_dims == (7,) and acts.token_dims == [3] and acts.first_layer == 2  # not 0: dim 7 is wide
    assert acts.positions(0) == [0, 5]
    s = acts.summary().set_index("dim")
    assert s.kind[7] == "feature-wide" and s.positions[7] == "all positions" and s.first_layer[7] == 0
    assert s.sites[3] == ["BOS", "other ('onga')"]
    site = acts.sites()
    assert len(site[site.dim == 7]) == 1 and site[site.dim == 7].token.iloc[0] == "all positions"
    assert list(acts.sites(features=False).site) == ["BOS", "other ('onga')"]
    text = repr(acts)
    assert "with BOS" in text and "BOS, other ('onga')" in text and "feature-wide outlier dim(s) 7" in text
    assert "layers 2..3" in text


@pytest.mark.real
def test_smollm2_default_is_no_bos_and_an_unnamed_site_is_named(smollm2):
    acts = find_massive_activations(smollm2, ["Rawonga is a small town in Australia.", "Summer is warm."])
    assert acts.prepend_bos is False and "without BOS" in repr(acts)
    assert acts.str_tokens[1][0] == "Summer"  # no '<|im_start|>': smollm2's own tokenizer adds none
    named = acts.sites(features=False)
    assert set(named.kind) <= set(sites.POSITION_KINDS) and "start token" in set(named.kind)
    other = named[named.kind == "other"]
    assert all(s == f"other ({t!r})" for s, t in zip(other.site, other.token))  # named with its token


@pytest.fixture(scope="module")
def gemma3_found(gemma3, prompts):
    return find_massive_activations(gemma3, prompts)


@pytest.mark.real
def test_gemma3_first_massive_layer_is_dim_163_with_dim_400_feature_wide(gemma3_found):
    found = gemma3_found
    print(found, found.summary().to_string(), sep="\n")
    assert found.prepend_bos is True  # gemma3's own tokenizer adds BOS
    assert found.feature_dims == (400,) and found.token_dims[0] == 163
    assert found.first_layer == 3  # dim 163 at BOS; dim 400 (blocks 0..) does not count
    s = found.summary().set_index("dim")
    assert s.kind[400] == "feature-wide" and isinstance(s.positions[400], str)
    assert s.sites[163] == ["BOS"] and "feature-wide outlier dim(s) 400" in repr(found)


@pytest.mark.real
def test_gemma3_bos_draws_attention_before_its_massive_activation(gemma3, prompts):
    sinks = attention_sinks(gemma3, prompts)
    print(sinks, sinks.sink_mass.mean(1)[:4], sep="\n")
    assert sinks.first_massive_layer == 3 and set(sinks.sink_positions) == {(0,)}
    before = sinks.sink_mass.mean(1)[:3]  # blocks 0-2
    assert float(before.min()) > 0.3 and float(before.max()) < 0.9
    text = repr(sinks)
    assert "with BOS" in text and "already in blocks 0-2" in text and "counterexample" in text


@pytest.fixture(scope="module")
def smollm2_tables(smollm2):
    from mi_massive import bias_term_table

    # the claim at the default size (256-token chunks, 32 of them, 32 calibration texts: at 4 chunks of 128 after 16
    # texts the mean was 1.6% off); the identity with BOS holds at any size
    return (bias_term_table(smollm2, "wiki-en"),
            bias_term_table(smollm2, "wiki-en", prepend_bos=True, seq_len=128, max_chunks=4, n_calibration=16))


@pytest.mark.real
def test_smollm2_table3_mean_is_evidence_without_bos_and_trivial_with_it(smollm2_tables):
    table, with_bos = smollm2_tables
    print(table, with_bos, sep="\n")  # the numbers, for the record (pytest -s)
    assert table.prepend_bos is False and "without BOS" in repr(table)  # the default: smollm2's own tokenizer
    original, zero, mean, _ = (float(v) for v in table.perplexity[0])
    assert not table.is_trivial("wiki-en") and "trivial" not in repr(table)  # real evidence: the start tokens vary
    assert abs(mean / original - 1) < 0.01 and mean != original  # set to their mean: within 1% of the original
    assert zero / original > 10  # set to zero: orders of magnitude above
    assert with_bos.prepend_bos is True and with_bos.is_trivial("wiki-en")
    assert "'<|im_start|>'" in with_bos.trivial[0] and "trivial" in repr(with_bos)
    assert abs(float(with_bos.perplexity[0, 2]) / float(with_bos.perplexity[0, 0]) - 1) < 1e-6  # the identity
