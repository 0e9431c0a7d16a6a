"""Corpus loader: offline texts from gensim's wheel (cached after the first load), clear errors."""

import pytest

from mi_massive import corpus
from mi_massive.corpus import clean_wikitext, load_corpus


def test_unknown_corpus_names_the_known_ones():
    with pytest.raises(ValueError, match="known corpora are lee-news, wiki-en, wikitext-2, c4"):
        load_corpus("penn-treebank")


def test_bad_n_is_refused():
    with pytest.raises(ValueError, match="positive int"):
        load_corpus("lee-news", n=0)


def test_online_corpus_offline_says_what_works_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("MI_MASSIVE_CACHE", str(tmp_path))
    monkeypatch.setattr(corpus, "_hub_reachable", lambda *a, **k: False)
    with pytest.raises(RuntimeError, match="unreachable; offline corpora: lee-news, wiki-en"):
        load_corpus("wikitext-2")


def test_clean_wikitext_keeps_prose_only():
    markup = """{{Infobox person|name=Ada {{nested|x}}}}
'''Ada Lovelace''' was an [[England|English]] mathematician<ref>Some source</ref> who wrote the first algorithm
for a machine, the [[Analytical Engine]] designed by [[Charles Babbage]] in the nineteenth century, long ago.

== Life ==
* a list item that is not prose at all and should be dropped from the output entirely
{| class="wikitable"
| cell || cell
|}
[[Category:Mathematicians]]
Too short."""
    (para,) = clean_wikitext(markup)
    assert para.startswith("Ada Lovelace was an English mathematician who wrote")
    assert "Analytical Engine designed by Charles Babbage" in para
    for junk in ("{{", "[[", "<ref", "'''", "Infobox", "Category", "wikitable"):
        assert junk not in para


@pytest.mark.parametrize("name, n_min, first_words", [
    ("lee-news", 300, "Hundreds of people have been forced"),
    ("wiki-en", 1000, None),
])
def test_offline_corpora_are_clean_english_prose(name, n_min, first_words):
    texts = load_corpus(name)
    assert len(texts) >= n_min
    if first_words:
        assert texts[0].startswith(first_words)
    assert load_corpus(name, n=5) == texts[:5]
    words = sum(len(t.split()) for t in texts)
    assert words > 50_000
    markup = [t for t in texts if any(m in t for m in ("{{", "[[", "<ref", "'''", "==", "http"))]
    assert not markup, markup[:2]
    assert all(t == " ".join(t.split()) for t in texts)  # one paragraph per text, normalised spaces
