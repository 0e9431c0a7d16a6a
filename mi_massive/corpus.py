"""Real text for perplexity and statistics: Hugging Face datasets online, registry-package texts offline.

Offline corpora come out of gensim's wheel, which carries test data: ``lee-news`` (the Lee background corpus,
300 Australian news articles) and ``wiki-en`` (a shortened English Wikipedia XML dump, cleaned here into
paragraphs of prose); and ``linux-doc``, the Linux kernel's documentation (GPL-2.0) out of Debian's
``linux-doc-6.1`` package (`apt-get download`, on Debian and Ubuntu machines), its reStructuredText sources
cleaned into paragraphs of prose, several times the other two together (sizes in benchmarks/RESULTS.md).
Packages are downloaded, never installed; the cleaned texts are cached under the mi_massive cache directory
and nothing third-party is stored in this repository.

    >>> from mi_massive import load_corpus
    >>> texts = load_corpus("lee-news", n=10)        # doctest: +SKIP
    >>> len(texts)                                    # doctest: +SKIP
    10

Text of your own (for the training lab, where the offline corpora are small) is read by `iter_text_file`:
a ``.jsonl`` file (one JSON object per line, its ``"text"``), a ``.txt`` file (documents separated by blank
lines), either one gzip-compressed (``.gz``), or a folder of such files.
"""

from __future__ import annotations

import bz2
import html
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import zipfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .models import WHEELHOUSE_ENV, _download_wheels, cache_dir

GENSIM = "gensim==4.4.0"
_TEST_DATA = "gensim/test/test_data/"
LINUX_DOC = "linux-doc-6.1"  # Debian bookworm's kernel documentation (Sphinx HTML with its .rst sources)


@dataclass(frozen=True)
class _Corpus:
    description: str
    online: bool
    fetch: Callable[[], list[str]]


def _gensim_member(member: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        (wheel,) = _download_wheels((GENSIM,), Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(_TEST_DATA + member)


def _lee_news() -> list[str]:
    text = _gensim_member("lee_background.cor").decode("utf-8", errors="replace")
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


# --- Wikipedia markup -> prose -------------------------------------------------------------------
_NESTED = (("{{", "}}"), ("{|", "|}"), ("[[File:", "]]"), ("[[Image:", "]]"), ("[[Category:", "]]"))
_SUBS = (
    (re.compile(r"<!--.*?-->", re.S), ""),
    (re.compile(r"<ref[^>/]*/>", re.S), ""),
    (re.compile(r"<ref[^>]*>.*?</ref>", re.S), ""),
    (re.compile(r"<(math|gallery|timeline|score|syntaxhighlight|source)[^>]*>.*?</\1>", re.S), ""),
    (re.compile(r"</?[a-zA-Z][^>]*>"), ""),
    (re.compile(r"\[\[[^\]|]*\|([^\]]*)\]\]"), r"\1"),  # [[target|label]] -> label
    (re.compile(r"\[\[([^\]]*)\]\]"), r"\1"),  # [[target]] -> target
    (re.compile(r"\[https?://[^\s\]]+\s*([^\]]*)\]"), r"\1"),  # [url label] -> label
    (re.compile(r"'{2,}"), ""),  # bold / italic
)


def _strip_nested(text: str, open_: str, close: str) -> str:
    """Remove balanced `open_ ... close` spans (templates and tables nest)."""
    out, depth, i = [], 0, 0
    while i < len(text):
        if text.startswith(open_, i) or (depth and open_[:2] in ("{{", "{|", "[[") and text.startswith(open_[:2], i)):
            depth += 1
            i += 2
        elif depth and text.startswith(close, i):
            depth -= 1
            i += len(close)
        else:
            if not depth:
                out.append(text[i])
            i += 1
    return "".join(out)


def clean_wikitext(markup: str, *, min_words: int = 20) -> list[str]:
    """Paragraphs of prose from MediaWiki markup: templates, tables, refs, tags, headings and lists removed."""
    text = html.unescape(markup)
    for open_, close in _NESTED:
        text = _strip_nested(text, open_, close)
    for pattern, repl in _SUBS:
        text = pattern.sub(repl, text)
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in block.splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith(("=", "*", "#", ":", ";", "|", "!", "{", "}", "__"))]
        para = re.sub(r"\(\s*[,;]?\s*\)", "", " ".join(lines))
        para = " ".join(para.split()).replace(" ,", ",").replace(" .", ".")
        if len(para.split()) >= min_words and para[-1] in ".!?\"'" and "[[" not in para and "{{" not in para:
            paragraphs.append(para)
    return paragraphs


def _wiki_en() -> list[str]:
    raw = bz2.decompress(_gensim_member("enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"))
    paragraphs: list[str] = []
    for page in ET.fromstring(raw):
        if not page.tag.endswith("page"):
            continue
        fields = {child.tag.rsplit("}", 1)[-1]: child for child in page}
        if fields.get("ns") is None or fields["ns"].text != "0" or "redirect" in fields:
            continue
        text = page.find("./{*}revision/{*}text")
        if text is not None and text.text:
            paragraphs += clean_wikitext(text.text)
    return paragraphs


# --- Debian packages, and reStructuredText -> prose ------------------------------------------------
def read_deb(data: bytes, keep: Callable[[str], bool]) -> dict[str, bytes]:
    """The files of a Debian package's data archive whose path `keep` accepts (a .deb is an ar archive)."""
    if data[:8] != b"!<arch>\n":
        raise ValueError("not a Debian package (no ar archive header)")
    off = 8
    while off + 60 <= len(data):
        name, size = data[off:off + 16].decode().strip().rstrip("/"), int(data[off + 48:off + 58].decode())
        body, off = data[off + 60:off + 60 + size], off + 60 + size + size % 2
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body)) as tf:
                return {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile() and keep(m.name)}
    raise ValueError("the package holds no data archive")


def _deb(package: str) -> bytes:
    """A Debian package's .deb, from $MI_MASSIVE_WHEELHOUSE if it has one, else `apt-get download`."""
    house = os.environ.get(WHEELHOUSE_ENV)
    found = sorted(Path(house).glob(f"{package}_*.deb")) if house else []
    if found:
        return found[-1].read_bytes()
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"corpus needs Debian's {package} package and this machine has no apt-get: download "
                           f"{package}_*.deb elsewhere and put it in a folder named by ${WHEELHOUSE_ENV}")
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
        found = sorted(Path(tmp).glob(f"{package}_*.deb"))
        if proc.returncode != 0 or not found:
            raise RuntimeError(f"could not fetch {package} with apt-get ({proc.stderr.strip()[-300:]}); put its .deb "
                               f"in a folder named by ${WHEELHOUSE_ENV}")
        return found[-1].read_bytes()


_RST_SUBS = (
    (re.compile(r":[\w:+.-]+:`([^`<]*?)\s*(?:<[^`>]*>)?`"), r"\1"),  # :ref:`label <target>` -> label
    (re.compile(r"`([^`<]+?)\s*(?:<[^`>]*>)?`_{1,2}"), r"\1"),  # `label <url>`_ -> label
    (re.compile(r"``([^`]+)``"), r"\1"),  # ``literal`` -> literal
    (re.compile(r"\*\*([^*]+)\*\*"), r"\1"),  # **strong**
    (re.compile(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])"), r"\1"),  # *emphasis*
)


def clean_rst(source: str, *, min_words: int = 20) -> list[str]:
    """Paragraphs of prose from reStructuredText: titles, directives, comments, literal and indented blocks,
    tables and list bullets' markup removed; inline roles and links reduced to their text."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", source):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if not lines or lines[0][:1].isspace() or lines[0].startswith(".."):
            continue  # an indented (literal, quoted or directive body) block, a directive or a comment
        if any(set(ln.strip()) <= set("=-~^*#+:|_`'\". ") or ln.lstrip()[:1] in "+|" for ln in lines):
            continue  # a title with its underline, or a table
        para = " ".join(ln.strip() for ln in lines)
        for pattern, repl in _RST_SUBS:
            para = pattern.sub(repl, para)
        para = " ".join(para.split())
        if para.endswith("::"):
            para = para[:-1]  # "as follows::" introduces a literal block: keep the sentence, drop the marker
        if para.startswith(("- ", "* ")):
            para = para[2:]
        letters = sum(c.isalpha() for c in para)
        if len(para.split()) >= min_words and letters >= 0.6 * len(para) and para[-1] in ".!?:)\"'":
            paragraphs.append(para)
    return paragraphs


def _linux_doc() -> list[str]:
    files = read_deb(_deb(LINUX_DOC), lambda n: "/html/_sources/" in n and n.endswith(".rst.txt")
                     and "/_sources/translations/" not in n)  # English only: the translations are Italian, Chinese,...
    paragraphs: list[str] = []
    for name in sorted(files):  # a fixed order: the package's paths
        paragraphs += clean_rst(files[name].decode("utf-8", errors="replace"))
    return paragraphs


# --- online ------------------------------------------------------------------------------------
def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _wikitext(config: str, split: str) -> list[str]:
    """WikiText's paragraphs (one per line; headings and blank lines dropped)."""
    from datasets import load_dataset

    rows = load_dataset("Salesforce/wikitext", config, split=split)["text"]
    return [r.strip() for r in rows if r.strip() and not r.strip().startswith("=")]


def _wikitext2() -> list[str]:
    return _wikitext("wikitext-2-raw-v1", "test")


def _wikitext103() -> list[str]:
    return _wikitext("wikitext-103-raw-v1", "train")


def _c4(n_docs: int = 2000) -> list[str]:
    from datasets import load_dataset

    ds = load_dataset("allenai/c4", data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"},
                      split="validation")
    return [t.strip() for t in ds.select(range(min(n_docs, len(ds))))["text"] if t.strip()]


CORPORA: dict[str, _Corpus] = {
    "lee-news": _Corpus("Lee background corpus: 300 Australian news articles (gensim test data)", False, _lee_news),
    "wiki-en": _Corpus("shortened English Wikipedia dump, cleaned to prose paragraphs (gensim test data)", False,
                       _wiki_en),
    "wikitext-2": _Corpus("WikiText-2 raw, test split (Hugging Face datasets)", True, _wikitext2),
    "wikitext-103": _Corpus("WikiText-103 raw, train split, about 100M words (Hugging Face datasets; for training)",
                            True, _wikitext103),
    "c4": _Corpus("C4 English, first validation shard, first 2000 documents (Hugging Face datasets)", True, _c4),
    "linux-doc": _Corpus(f"the Linux kernel's documentation (GPL-2.0), its reStructuredText sources from Debian's "
                         f"{LINUX_DOC} package, cleaned to prose paragraphs", False, _linux_doc),
}


def load_corpus(name: str, *, n: int | None = None, min_words: int = 1, refresh: bool = False) -> list[str]:
    """The texts of corpus `name` (documents or paragraphs, in a fixed order); the first `n` if given.

    Offline: ``lee-news``, ``wiki-en``, ``linux-doc``. Online (Hugging Face datasets): ``wikitext-2``,
    ``wikitext-103`` (train split, for the training lab), ``c4``.
    Texts are cached after the first load; `min_words` drops shorter texts.

        >>> load_corpus("wiki-en", n=2)              # doctest: +SKIP
    """
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}: known corpora are {', '.join(CORPORA)} "
                         f"(offline: {', '.join(k for k, c in CORPORA.items() if not c.online)})")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ValueError(f"n must be a positive int or None, got {n!r}")
    corpus, path = CORPORA[name], cache_dir() / "corpora" / f"{name}.json"
    if not isinstance(min_words, int) or isinstance(min_words, bool) or min_words < 0:
        raise ValueError(f"min_words must be an int >= 0, got {min_words!r}")
    if path.exists() and not refresh:
        try:
            texts = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            texts = exc
        if not (isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts)):
            why = f"unreadable: {texts}" if isinstance(texts, Exception) else "not a non-empty list of texts"
            raise RuntimeError(f"the cached corpus {name!r} at {path} is broken ({why}): rebuild it with "
                               f"load_corpus({name!r}, refresh=True)")
    else:
        if corpus.online and not _hub_reachable():
            offline = ", ".join(k for k, c in CORPORA.items() if not c.online)
            raise RuntimeError(f"corpus {name!r} needs the Hugging Face Hub, which is unreachable; "
                               f"offline corpora: {offline}")
        texts = corpus.fetch()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(texts), encoding="utf-8")
        tmp.replace(path)
    texts = [t for t in texts if len(t.split()) >= min_words]
    return texts[:n] if n is not None else texts


TEXT_FILE_SUFFIXES = (".jsonl", ".txt", ".jsonl.gz", ".txt.gz")


def _text_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.name.endswith(TEXT_FILE_SUFFIXES))
        if not files:
            raise ValueError(f"{path} holds no {', '.join(TEXT_FILE_SUFFIXES)} files")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"no text file or folder at {path}")
    if not path.name.endswith(TEXT_FILE_SUFFIXES):
        raise ValueError(f"{path.name}: text files are {', '.join(TEXT_FILE_SUFFIXES)}")
    return [path]


def iter_text_file(path: str | os.PathLike) -> Iterator[str]:
    """The texts of a corpus of your own, in order, without holding the file in memory: a ``.jsonl`` file (each
    line a JSON object whose ``"text"`` is one document), a ``.txt`` file (documents separated by blank lines),
    either gzip-compressed (``.gz``), or a folder of such files (every one under it, sorted by path). Empty texts
    are skipped. The files are checked before the first text is read."""
    import gzip

    files = _text_files(Path(path).expanduser())

    def texts() -> Iterator[str]:
        for f in files:
            with (gzip.open(f, "rt", encoding="utf-8") if f.name.endswith(".gz")
                  else open(f, encoding="utf-8")) as lines:
                if f.name.removesuffix(".gz").endswith(".jsonl"):
                    for n, line in enumerate(lines, 1):
                        if line.strip():
                            try:
                                text = json.loads(line)["text"]
                            except (ValueError, KeyError, TypeError) as exc:
                                raise ValueError(f"{f}:{n}: not a JSON object with a 'text' ({exc})") from None
                            if text.strip():
                                yield text
                else:
                    doc: list[str] = []
                    for line in lines:
                        if line.strip():
                            doc.append(line.rstrip("\n"))
                        elif doc:
                            yield "\n".join(doc)
                            doc = []
                    if doc:
                        yield "\n".join(doc)

    return texts()


def corpus_info() -> dict[str, str]:
    """Known corpus names and what they hold."""
    return {k: c.description + (" [online]" if c.online else " [offline]") for k, c in CORPORA.items()}
