"""Token streams for the lab: real English text offline (gensim's test data), and a synthetic copy task.

``wiki-en+lee-news`` joins the paragraphs of the shortened English Wikipedia dump (CC BY-SA 3.0, Wikipedia
contributors) and the Lee background corpus (300 Australian news articles, Lee, Pincombe & Welsh 2005), both
shipped in gensim's wheel as test data (gensim is LGPL-2.1; see `mi_massive.corpus`), with <|endoftext|> between
texts, tokenized with the embedded smollm2-135m tokenizer. Every 20th text is held out for validation and the scans.
``linux-doc`` adds the Linux kernel's documentation (GPL-2.0; Debian's linux-doc-6.1, `mi_massive.corpus`), several
times the other two (token counts in benchmarks/RESULTS.md).

``copy``: random spans of a 512-token alphabet, each followed by itself (a second data set for induction; the
first half of every span is unpredictable, the second half is a copy).

``file:PATH``: text of your own (a .jsonl or .txt file, gzip-compressed or not, or a folder of them: see
`mi_massive.corpus.iter_text_file`), for runs that need more than the offline corpora hold; read as it is tokenized.

``backcopy``: the Bigram-Backcopy task of Guo et al. 2024 ("Active-Dormant Attention Heads: Mechanistically
Demystifying Extreme-Token Phenomena in LLMs"): a random sparse bigram chain over a 512-token alphabet, except
that after one of a few trigger tokens the next token repeats the token before the trigger. A head that does the
copy is needed at trigger tokens only and must do nothing everywhere else: the condition under which attention
sinks and residual peaks appear in small models. Documents of 64-1024 tokens are joined into one stream, so a
training window starts anywhere (as the text windows do).
"""

from __future__ import annotations

import json
import os
import shutil
from array import array
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

LICENCES = {
    "wiki-en": "Wikipedia text, CC BY-SA 3.0 (Wikipedia contributors), via gensim's test data (gensim: LGPL-2.1)",
    "lee-news": "Lee background corpus (Lee, Pincombe & Welsh 2005), redistributed as gensim test data (LGPL-2.1)",
    "linux-doc": "the Linux kernel's documentation, GPL-2.0 (the kernel's authors), via Debian's linux-doc-6.1 package",
    "wikitext-103": "WikiText-103 (Merity et al. 2016), CC BY-SA 3.0 (Wikipedia contributors), via Hugging Face "
                    "datasets",
    "copy": "synthetic, generated here",
    "backcopy": "synthetic, generated here (the task of Guo et al. 2024)",
}
SYNTHETIC = ("copy", "backcopy")
SYNTHETIC_VOCAB = 3 + 512  # the synthetic tasks' ids: offset 3 (below it: special ids), alphabet 512


@dataclass(frozen=True)
class TokenData:
    """A training stream and a held-out stream of token ids (1-D int64), with where they came from."""

    name: str
    train: Tensor
    val: Tensor
    description: str
    licence: str

    def info(self) -> dict:
        return {"name": self.name, "train_tokens": int(self.train.numel()), "val_tokens": int(self.val.numel()),
                "description": self.description, "licence": self.licence}


def tokenizer_of(name: str = "smollm2-135m"):
    """The tokenizer of an embedded model (from its cache; fetched once if absent)."""
    from transformers import AutoTokenizer

    from ..models import fetch_embedded

    return AutoTokenizer.from_pretrained(fetch_embedded(name))


TOKEN_DTYPE = torch.int32  # text streams: 4 bytes a token (1B tokens of one's own text: 4 GB), ids < 2**31;
# the windows cut from them are int64, as embeddings want


def _tensor(ids: array) -> Tensor:
    assert ids.itemsize == TOKEN_DTYPE.itemsize
    return torch.frombuffer(ids, dtype=TOKEN_DTYPE).clone() if len(ids) else torch.zeros(0, dtype=TOKEN_DTYPE)


FILE = "file:"  # data "file:PATH": text of your own (mi_massive.corpus.iter_text_file reads it)
YOUR_LICENCE = "text of your own from {path}: its licence is yours to state"


def own_text(name: str) -> str | None:
    """The PATH of a ``file:PATH`` data name; None for any other name."""
    return name[len(FILE):] if name.startswith(FILE) else None


TOKEN_CACHE_VERSION = 1


def _token_cache(tokenizer, corpora: tuple[str, ...], every: int, max_texts: int | None) -> Path | None:
    """The cache folder of these corpora's token streams, named by what they are made from: the tokenizer's
    vocabulary and rules, every source file's path, size and modification time (for a named corpus, its cached
    texts), `every` and `max_texts`. None where a named corpus has no cached texts yet (its first load builds them)."""
    import hashlib

    from ..corpus import _text_files
    from ..models import cache_dir

    backend = getattr(tokenizer, "backend_tokenizer", None)
    rules = backend.to_str() if backend is not None else f"{tokenizer.name_or_path}:{len(tokenizer)}"
    parts = [f"v{TOKEN_CACHE_VERSION}", hashlib.sha1(rules.encode()).hexdigest(), f"every={every}",
             f"max_texts={max_texts}"]
    for name in corpora:
        path = own_text(name)
        files = _text_files(Path(path).expanduser()) if path else [cache_dir() / "corpora" / f"{name}.json"]
        if not all(f.is_file() for f in files):
            return None
        parts += [name] + [f"{f.resolve()}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
    return cache_dir() / "tokens" / hashlib.sha1("\n".join(parts).encode()).hexdigest()[:20]


def _read_cache(folder: Path) -> TokenData | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    streams = {}
    for part in ("train", "val"):  # mapped copy-on-write: processes reading one corpus share its pages
        n = meta[f"{part}_tokens"]
        streams[part] = (torch.from_file(str(folder / f"{part}.i32"), shared=False, size=n, dtype=TOKEN_DTYPE) if n
                         else torch.zeros(0, dtype=TOKEN_DTYPE))
    return TokenData(meta["name"], streams["train"], streams["val"], meta["description"], meta["licence"])


def _write_cache(folder: Path, data: TokenData) -> None:
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for part in ("train", "val"):
        getattr(data, part).numpy().tofile(tmp / f"{part}.i32")
    (tmp / "meta.json").write_text(json.dumps(data.info() | {"version": TOKEN_CACHE_VERSION}))
    try:
        tmp.rename(folder)  # whole or absent: a reader never sees half a cache
    except OSError:  # another process finished first: its cache is the same
        shutil.rmtree(tmp, ignore_errors=True)


HELD_OUT_EVERY = 20  # every 20th text of a corpus is held out


def is_held_out(i: int, every: int = HELD_OUT_EVERY) -> bool:
    """Whether a corpus's `i`-th text (from 0) is held out: every `every`-th, the last of each run of `every`."""
    return i % every == every - 1


def corpus_tokens(tokenizer, corpora: tuple[str, ...] = ("wiki-en", "lee-news"), *, every: int = HELD_OUT_EVERY,
                  max_texts: int | None = None, held_out_tokens: int | None = None, cache: bool = True) -> TokenData:
    """English text as token streams: texts joined by <|endoftext|>; every `every`-th text held out. A corpus is a
    name `mi_massive.corpus.load_corpus` knows or ``file:PATH``, text of your own, read as it is tokenized.

    `held_out_tokens`: only the held-out stream is wanted, and only its first that many tokens (what analyses of a
    checkpoint read): the training texts are not tokenized and reading stops there; the training stream is empty.
    The held-out tokens are the same as the full stream's first ones.

    `cache`: the streams are kept under the cache directory (``tokens/``, 4 bytes a token), named by what they are
    made from, and read back (memory-mapped) by later calls and by other processes instead of tokenizing again; an
    edited source file has a new modification time and so a new cache."""
    folder = _token_cache(tokenizer, corpora, every, max_texts) if cache else None
    found = _read_cache(folder) if folder is not None else None
    if found is not None:
        if held_out_tokens is not None:
            return TokenData(found.name, torch.zeros(0, dtype=TOKEN_DTYPE), found.val, found.description,
                             found.licence)
        return found
    if folder is None or held_out_tokens is not None:
        return _tokenize(tokenizer, corpora, every=every, max_texts=max_texts, held_out_tokens=held_out_tokens)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        try:  # one process tokenizes, the others (one per arm in the benchmark scripts) wait and read its cache
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: no lock, each process may tokenize; the first cache written stays
            pass
        found = _read_cache(folder)
        if found is None:
            found = _tokenize(tokenizer, corpora, every=every, max_texts=max_texts, held_out_tokens=None)
            _write_cache(folder, found)
    return found


def _tokenize(tokenizer, corpora: tuple[str, ...], *, every: int, max_texts: int | None,
              held_out_tokens: int | None) -> TokenData:
    from itertools import islice

    from ..corpus import iter_text_file, load_corpus

    sep = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    train, val = array("i"), array("i")  # 4 bytes a token (a list of ints would take 9x that at 100M tokens)
    def enough() -> bool:
        return held_out_tokens is not None and len(val) >= held_out_tokens

    for name in corpora:
        path = own_text(name)
        texts = islice(iter_text_file(path), max_texts) if path else iter(load_corpus(name, n=max_texts))
        start = 0
        while not enough() and (chunk := list(islice(texts, 10_000))):  # bounded memory for texts and token ids
            held = [is_held_out(i, every) for i in range(start, start + len(chunk))]
            start += len(chunk)
            if held_out_tokens is not None:  # the held-out texts alone
                chunk, held = [t for t, h in zip(chunk, held) if h], [True] * sum(held)
            for ids, h in zip(tokenizer(chunk, add_special_tokens=False)["input_ids"] if chunk else [], held):
                out = val if h else train
                out.extend(ids)
                out.append(sep)
        if enough():
            break
        if start < every:
            raise ValueError(f"{name}: {start} texts; every {every}th is held out, so at least {every} are needed")
    return TokenData("+".join(corpora), _tensor(train), _tensor(val),
                     f"{' and '.join(corpora)} (mi_massive.corpus), <|endoftext|> between texts, every {every}th "
                     "text held out", "; ".join(YOUR_LICENCE.format(path=own_text(c)) if own_text(c)
                                                else LICENCES[c] for c in corpora))


def copy_tokens(*, n_train: int = 1 << 20, n_val: int = 1 << 15, span: int = 32, alphabet: int = 512,
                offset: int = 3, seed: int = 0) -> TokenData:
    """The synthetic copy task: spans of `span` random tokens (ids offset..offset+alphabet-1), each repeated once.

    The training and held-out streams come from their own seeds, so the held-out text does not depend on how
    much training text was drawn."""

    def stream(n: int, seed: int) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        spans = torch.randint(offset, offset + alphabet, (n // (2 * span) + 1, span), generator=g)
        return torch.cat([spans, spans], dim=1).flatten()[:n]

    return TokenData("copy", stream(n_train, seed * 1000003 + 1), stream(n_val, seed * 1000003 + 2),
                     f"random spans of {span} tokens from a {alphabet}-token alphabet, each followed by itself",
                     LICENCES["copy"])


def backcopy_tokens(*, n_train: int = 1 << 24, n_val: int = 1 << 16, alphabet: int = 512, successors: int = 8,
                    triggers: int = 16, offset: int = 3, seed: int = 0) -> TokenData:
    """Bigram-Backcopy streams: each token has `successors` random next tokens (Dirichlet(1) weights); after a
    trigger token (the first `triggers` ids) the next token copies the one before the trigger."""
    g = torch.Generator().manual_seed(seed)
    nxt = torch.stack([torch.randperm(alphabet, generator=g)[:successors] for _ in range(alphabet)])  # (tok, k)
    w = -torch.log(torch.rand(alphabet, successors, generator=g))  # Dirichlet(1): normalised exponentials
    cdf = (w / w.sum(1, keepdim=True)).cumsum(1)
    cdf[:, -1] = 1.0
    is_trigger = torch.zeros(alphabet, dtype=torch.bool)
    is_trigger[:triggers] = True

    def stream(n: int, seed: int) -> Tensor:  # train and held-out streams from their own seeds: the held-out
        g = torch.Generator().manual_seed(seed)  # text does not depend on how much training text was drawn
        chains, length = 1024, 1024
        out: list[Tensor] = []
        while sum(t.numel() for t in out) < n:
            x = torch.empty(chains, length, dtype=torch.long)
            x[:, 0] = torch.randint(triggers, alphabet, (chains,), generator=g)  # documents start on a plain token
            for t in range(1, length):
                cur = x[:, t - 1]
                pick = torch.searchsorted(cdf[cur], torch.rand(chains, 1, generator=g)).clamp_max(successors - 1)
                x[:, t] = nxt[cur, pick[:, 0]]
                if t >= 2:
                    copy = is_trigger[cur]
                    x[copy, t] = x[copy, t - 2]
            lengths = torch.randint(64, length + 1, (chains,), generator=g)
            out += [x[i, :lengths[i]] for i in range(chains)]
        return torch.cat(out)[:n] + offset

    return TokenData("backcopy", stream(n_train, seed * 1000003 + 1), stream(n_val, seed * 1000003 + 2),
                     f"Bigram-Backcopy (Guo et al. 2024): a sparse random bigram chain over {alphabet} tokens "
                     f"({successors} successors each); after one of {triggers} trigger tokens the next token copies "
                     "the token before the trigger; documents of 64-1024 tokens joined", LICENCES["backcopy"])


class Batches:
    """The same windows in the same order for every arm: epoch by epoch, a seeded permutation of window starts.

    Each window holds n_ctx + 1 tokens; arms without a sink token read inputs w[:-1] and targets w[1:]; the
    sink_token arm reads [sink] + w[:-2] and predicts w[:-1] (the same number of predictions, one token earlier).
    """

    def __init__(self, stream: Tensor, *, n_ctx: int, batch_size: int, seed: int):
        self.stream, self.n_ctx, self.batch_size, self.seed = stream, n_ctx, batch_size, seed
        self.n_windows = (len(stream) - 1) // (n_ctx + 1)
        if self.n_windows <= batch_size:
            raise ValueError(f"the stream holds {len(stream)} tokens: too few for a batch of {batch_size} windows "
                             f"of {n_ctx + 1}")
        self._epoch, self._order = -1, None

    def window_starts(self, step: int) -> Tensor:
        per_epoch = (self.n_windows - 1) // self.batch_size  # a shifted epoch may lose its last window
        epoch, i = divmod(step, per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            shift = int(torch.randint(0, self.n_ctx + 1, (1,), generator=g))  # windows start anywhere across epochs
            self._order = torch.randperm(self.n_windows, generator=g) * (self.n_ctx + 1) + shift
            self._order = self._order[self._order + self.n_ctx + 1 <= len(self.stream)]
            self._epoch = epoch
        return self._order[i * self.batch_size:(i + 1) * self.batch_size]

    def windows(self, step: int) -> Tensor:
        starts = self.window_starts(step)
        idx = starts[:, None] + torch.arange(self.n_ctx + 1)
        return self.stream[idx].long()  # (batch, n_ctx + 1)

    def epochs(self, steps: int) -> float:
        return steps * self.batch_size / max(self.n_windows, 1)


def inputs_targets(windows: Tensor, sink_id: int | None) -> tuple[Tensor, Tensor]:
    """(inputs, targets) of shape (batch, n_ctx) from windows of n_ctx + 1 tokens."""
    if sink_id is None:
        return windows[:, :-1], windows[:, 1:]
    sink = torch.full_like(windows[:, :1], sink_id)
    return torch.cat([sink, windows[:, :-2]], dim=1), windows[:, :-1]


def held_out(val: Tensor, *, n: int, n_ctx: int, sink_id: int | None) -> tuple[Tensor, Tensor]:
    """The first `n` non-overlapping held-out windows as (inputs, targets)."""
    n = min(n, (len(val) - 1) // (n_ctx + 1))
    if n < 1:
        raise ValueError(f"the held-out stream holds {len(val)} tokens: too few for one window of {n_ctx + 1}")
    windows = val[: n * (n_ctx + 1)].view(n, n_ctx + 1).long()
    return inputs_targets(windows, sink_id)
