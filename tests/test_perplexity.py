"""perplexity and the paper's Table 3: zeroing massive activations destroys the model, their mean does not."""

import pytest

from mi_massive import build_intervention, load_corpus, perplexity
from mi_massive.perplexity import bias_term_table
from mi_massive.cli import build_parser

TEXT = ["Summer is warm. Winter is cold. " * 6, "The quick brown fox jumps over the lazy dog. " * 6]


def test_bos_handling_and_chunking(tiny_llama):
    with_bos = perplexity(tiny_llama, TEXT, seq_len=16, max_chunks=3, prepend_bos=True)
    without = perplexity(tiny_llama, TEXT, seq_len=16, max_chunks=3, prepend_bos=False)
    assert with_bos.n_predicted == 3 * 16 and without.n_predicted == 3 * 15
    assert len(with_bos.nll) == 3 and with_bos.perplexity > 1 and with_bos.intervention == "none"
    assert "after BOS" in repr(with_bos) and "without BOS" in repr(without)


def test_interventions_need_held_apart_calibration(tiny_llama):
    with pytest.raises(ValueError, match="needs calibration= texts held apart"):
        perplexity(tiny_llama, TEXT, seq_len=16, intervention="mean")
    with pytest.raises(ValueError, match='must be None, "zero", "mean", "control"'):
        perplexity(tiny_llama, TEXT, seq_len=16, intervention="half", calibration=TEXT)
    with pytest.raises(ValueError, match="seq_len must be an int in 2.."):
        perplexity(tiny_llama, TEXT, seq_len=1)
    mean = build_intervention(tiny_llama, TEXT, mode="mean", prepend_bos=True, check_rebuild=False)
    with pytest.raises(ValueError, match="means were measured with prepend_bos=True"):
        perplexity(tiny_llama, TEXT, seq_len=16, intervention=mean, prepend_bos=False)


def test_planted_table(tiny_llama):
    calib = ["Hello there. How are you today?", "A cat sat on the mat."] * 2
    table = bias_term_table(tiny_llama, inputs=(("toy", calib + TEXT),), seq_len=16, max_chunks=2, n_calibration=4,
                            prepend_bos=True)
    orig, zero, mean, control = table.perplexity[0].tolist()
    assert zero != orig and abs(mean - orig) < 1e-3 * orig  # BOS is constant: its mean is its value
    assert table.to_dataframe().columns.tolist() == ["original", "zero", "mean", "control"]
    assert "toy: original" in repr(table)


def test_table3_command_parses():
    args = build_parser().parse_args(["table3", "gemma3-270m", "--corpus", "lee-news", "--seq-len", "64", "--no-bos"])
    assert args.corpus == ["lee-news"] and args.seq_len == 64 and args.bos is False


@pytest.mark.real
def test_smollm2_table3_without_bos(smollm2):
    # the paper's setting: no BOS, so the starting token's massive value varies and its mean is not trivially exact
    t = bias_term_table(smollm2, seq_len=64, max_chunks=2, n_calibration=8, prepend_bos=False)
    # measured (2 chunks of 64 tokens): wiki-en 32.66 / zero 68,131 / mean 32.51 / control 32.66;
    # lee-news 80.55 / 213,133 / 80.35 / 80.44
    for orig, zero, mean, control in t.perplexity.tolist():
        assert zero > 100 * orig  # orders of magnitude
        assert abs(mean / orig - 1) < 0.01
        assert abs(control / orig - 1) < 0.02
    assert t.rebuilt_dims == ()


@pytest.mark.real
def test_gemma3_table3_with_bos_sets_the_value_in_every_block_it_grows(gemma3):
    with pytest.warns(RuntimeWarning, match="dim 163 zeroed in block 3 is back to"):
        t = bias_term_table(gemma3, seq_len=64, max_chunks=2, n_calibration=8, prepend_bos=True)
    assert t.rebuilt_dims == (163,)
    assert all("dim 163 in blocks 3..13" in d[1] for d in t.interventions)
    # measured (2 chunks of 64 tokens): wiki-en 38.06 / zero 313.5 / mean 38.06 / control 38.10; lee-news 39.74 / 293.8
    for orig, zero, mean, control in t.perplexity.tolist():
        assert zero > 4 * orig
        assert abs(mean / orig - 1) < 0.01
        assert abs(control / orig - 1) < 0.01
    # zeroed in block 3 only, later blocks rebuild it and the model barely notices (measured 41.1 vs 38.1)
    texts = load_corpus("wiki-en")
    with pytest.warns(RuntimeWarning, match='pass layers="range"'):
        single = build_intervention(gemma3, texts[:8], mode="zero", layers="first", prepend_bos=True)
    once = perplexity(gemma3, texts[8:], seq_len=64, max_chunks=2, prepend_bos=True, intervention=single)
    orig = float(t.perplexity[0, 0])
    assert orig < once.perplexity < 1.25 * orig < 4 * orig < float(t.perplexity[0, 1])
