"""Corpus loader: offline texts from gensim's wheel (cached after the first load), clear errors."""

import pytest

from mi_massive import corpus
from mi_massive.corpus import clean_wikitext, load_corpus


def test_unknown_corpus_names_the_known_ones():
    with pytest.raises(ValueError, match="known corpora are lee-news, wiki-en, wikitext-2, wikitext-103, c4"):
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


RST = """\
==============
Misc controller
==============

The *misc* controller provides :ref:`resource limiting <cgroup-v2>` for scalar resources which cannot be
abstracted like the other cgroup resources, see ``misc.max`` and `the kernel site <https://kernel.org>`_ for
details on how the **limits** work::

    # echo 5 > misc.max

.. note:: a directive is not prose, even when it holds enough words to pass the filter of twenty words here.

+--------+--------+
| a      | table  |
+--------+--------+

- A list item of prose is kept without its bullet, as long as it holds twenty words or more in one paragraph.
"""


def test_clean_rst_keeps_prose_and_drops_markup():
    paras = corpus.clean_rst(RST)
    assert paras == [
        "The misc controller provides resource limiting for scalar resources which cannot be abstracted like the "
        "other cgroup resources, see misc.max and the kernel site for details on how the limits work:",
        "A list item of prose is kept without its bullet, as long as it holds twenty words or more in one paragraph.",
    ]


def _deb(files: dict[str, bytes]) -> bytes:
    """A minimal Debian package: an ar archive with debian-binary, control and data tarballs."""
    import io
    import tarfile

    def tar(members: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz") as tf:
            for name, body in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(body)
                tf.addfile(info, io.BytesIO(body))
        return buf.getvalue()

    out = b"!<arch>\n"
    for name, body in (("debian-binary", b"2.0\n"), ("control.tar.xz", tar({"./control": b"Package: x\n"})),
                       ("data.tar.xz", tar(files))):
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode() + body + b"\n" * (len(body) % 2)
    return out


def test_read_deb_returns_the_kept_files_of_the_data_archive(tmp_path, monkeypatch):
    deb = _deb({"./usr/share/doc/x/html/_sources/a.rst.txt": b"prose", "./usr/share/doc/x/html/a.html": b"<p>"})
    assert corpus.read_deb(deb, lambda n: n.endswith(".rst.txt")) == {"./usr/share/doc/x/html/_sources/a.rst.txt": b"prose"}
    with pytest.raises(ValueError, match="not a Debian package"):
        corpus.read_deb(b"PK\x03\x04", lambda n: True)
    (tmp_path / "linux-doc-6.1_1.0_all.deb").write_bytes(deb)  # a wheelhouse copy is read before apt-get runs
    monkeypatch.setenv("MI_MASSIVE_WHEELHOUSE", str(tmp_path))
    assert corpus._deb("linux-doc-6.1") == deb


def test_linux_doc_is_english_prose_without_rst_markup():
    texts = load_corpus("linux-doc")
    assert len(texts) > 20_000 and sum(len(t.split()) for t in texts) > 1_000_000
    assert load_corpus("linux-doc", n=5) == texts[:5]
    markup = [t for t in texts if any(m in t for m in (":ref:`", ":doc:`", "``", "`_", ".. note::", ".. code-block::"))]
    assert len(markup) < 0.001 * len(texts), markup[:3]
    assert not any("funzioni" in t or "的" in t for t in texts)  # the translations are left out
    assert all(t == " ".join(t.split()) for t in texts)


def test_wikitext103_is_the_train_split_and_feeds_the_lab(monkeypatch, tmp_path):
    datasets = pytest.importorskip("datasets")
    from mi_massive.train import LabSpec, data

    tokenizer = data.tokenizer_of()  # from the usual cache, before the test points the cache elsewhere
    calls = []

    def fake_load_dataset(path, config, split):
        calls.append((path, config, split))
        return {"text": [" = Heading = \n", "\n", " A first paragraph of prose . \n", " A second one . \n"] * 20}

    monkeypatch.setenv("MI_MASSIVE_CACHE", str(tmp_path))
    monkeypatch.setattr(corpus, "_hub_reachable", lambda *a, **k: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    texts = load_corpus("wikitext-103")
    assert calls == [("Salesforce/wikitext", "wikitext-103-raw-v1", "train")]
    assert texts[:2] == ["A first paragraph of prose .", "A second one ."] and len(texts) == 40
    assert load_corpus("wikitext-103") == texts and len(calls) == 1  # cached

    LabSpec(data="wikitext-103").validate()
    tokens = data.corpus_tokens(tokenizer, ("wikitext-103",))
    assert len(tokens.val) > 0 and len(tokens.train) > 10 * len(tokens.val) and "CC BY-SA" in tokens.licence


def test_text_of_ones_own_is_read_in_every_format(tmp_path):
    import gzip
    import json

    from mi_massive.corpus import iter_text_file

    (tmp_path / "a.txt").write_text("First line\nof one document.\n\n\n  \nSecond document.\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "Third, compressed."}) + "\n\n" + json.dumps({"text": "  "}) + "\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.jsonl").write_text(json.dumps({"text": "Fourth.", "id": 4}) + "\n")
    (tmp_path / "notes.md").write_text("not read")
    assert list(iter_text_file(tmp_path / "a.txt")) == ["First line\nof one document.", "Second document."]
    assert list(iter_text_file(tmp_path)) == ["First line\nof one document.", "Second document.",
                                              "Third, compressed.", "Fourth."]  # sorted by path, empty texts skipped
    with pytest.raises(ValueError, match="text files are"):
        iter_text_file(tmp_path / "notes.md")
    with pytest.raises(FileNotFoundError):
        iter_text_file(tmp_path / "absent.txt")
    (tmp_path / "bad.jsonl").write_text('{"txt": "no text field"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not a JSON object with a 'text'"):
        list(iter_text_file(tmp_path / "bad.jsonl"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no"):
        iter_text_file(empty)
