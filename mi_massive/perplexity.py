"""Perplexity with and without interventions on massive activations, and the paper's Table 3.

Text is joined, tokenised once and cut into chunks of `seq_len` tokens. With BOS, each chunk is scored
after a BOS token: seq_len predictions per chunk, the first conditioned on BOS alone. Without BOS, the
first chunk token is context only: seq_len - 1 predictions. Every intervention of one call scores the same
chunks and the same predictions. Log-softmax runs in float32 (the paper's "inf" came from fp16 logits).

    >>> from mi_massive import load_model, bias_term_table
    >>> bias_term_table(load_model("smollm2-135m"))          # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from . import _dist, _inputs
from ._hooks import check_finite
from ._loss import next_token_nll
from ._results import Result
from ._types import HookedModel
from .constancy import massive_stats
from .corpus import load_corpus
from .interventions import Intervention, build_intervention, intervene, watch_trivial
from .models import model_name

COLUMNS = ("original", "zero", "mean", "control")


@dataclass(frozen=True, repr=False)
class Perplexity(Result):
    """exp(mean next-token loss) over the scored tokens of every chunk."""

    VIEW = "interventions:show_result_table"

    perplexity: float
    nll: Float[Tensor, "chunk"]  # mean loss (nats) per chunk
    n_predicted: int  # scored tokens in all
    seq_len: int  # text tokens per chunk (BOS not counted)
    prepend_bos: bool
    intervention: str  # "none" or what was set where
    rebuilt: tuple[bool, ...] | None
    model_name: str
    trivial: str = ""  # why the intervention changes nothing by construction (Intervention.trivial), else ""

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame({"chunk": range(len(self.nll)), "nll": self.nll.numpy(),
                             "perplexity": self.nll.double().exp().numpy()})

    def sentence(self) -> str:
        bos = "after BOS" if self.prepend_bos else "without BOS"
        return (f"perplexity {self.perplexity:.4g} of {self.model_name} on {len(self.nll)} chunk(s) of {self.seq_len} "
                f"tokens {bos} ({self.n_predicted} predictions), intervention: {self.intervention}"
                + (f" (trivial: {self.trivial})" if self.trivial else ""))


_PIECE = 1 << 16  # characters tokenised at a time: memory stays bounded whatever the text's size


def _pieces(texts: Sequence[str]) -> Iterator[str]:
    """The texts as given (nothing stripped) joined by blank lines, in pieces of about _PIECE characters cut at
    whitespace; blank texts are skipped."""
    first = True
    for text in texts:
        if not text.strip():
            continue
        text, first = ("" if first else "\n\n") + text, False
        while len(text) > _PIECE:
            cut = text.rfind(" ", _PIECE // 2, _PIECE)  # a piece starts with its space, as the joined text has it
            cut = cut if cut > 0 else _PIECE
            yield text[:cut]
            text = text[cut:]
        yield text


def _check_texts(inputs: Any) -> list[str] | tuple[str, ...]:
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"inputs must be a non-empty string or list of strings, got {type(inputs).__name__}")
    if not any(t.strip() for t in texts):
        raise ValueError("inputs holds no text (every string is blank)")
    return texts


def _chunks(model: HookedModel, texts: Sequence[str], seq_len: int, max_chunks: int | None, bos: bool) -> Iterator[Tensor]:
    """Chunks of seq_len text tokens (after BOS if `bos`), tokenised as they are needed, never the whole corpus."""
    bos_id = model.tokenizer.bos_token_id
    buffer: list[int] = []
    n = 0
    for piece in _pieces(texts):
        buffer += model.tokenizer(piece, add_special_tokens=False)["input_ids"]
        while len(buffer) >= seq_len and (max_chunks is None or n < max_chunks):
            chunk = torch.tensor(([bos_id] if bos else []) + buffer[:seq_len], dtype=torch.long)
            del buffer[:seq_len]
            n += 1
            yield chunk  # (seq_len [+ 1],)
        if max_chunks is not None and n >= max_chunks:
            return


def _as_intervention(model: HookedModel, intervention: Any, calibration: Any, bos: bool) -> Intervention | None:
    if intervention is None or isinstance(intervention, Intervention):
        if intervention is not None and intervention.prepend_bos not in (None, bos) and intervention.mode == "mean":
            raise ValueError(f"the intervention's means were measured with prepend_bos={intervention.prepend_bos}, "
                             f"this perplexity uses prepend_bos={bos}")
        return intervention
    if intervention not in ("zero", "mean", "control"):
        raise ValueError(f'intervention must be None, "zero", "mean", "control" or an Intervention, got {intervention!r}')
    if calibration is None:
        raise ValueError(f'intervention="{intervention}" needs calibration= texts held apart from the scored text '
                         "(where the massive activations and their means are measured)")
    return build_intervention(model, calibration, mode=intervention, prepend_bos=bos)


def _check_options(model: HookedModel, seq_len: Any, max_chunks: Any, batch_size: Any, prepend_bos: Any,
                   progress: Any) -> bool:
    """Validate perplexity's options (before any forward pass); the BOS setting they give."""
    _inputs.check_model(model)
    _inputs.check_int("seq_len", seq_len)
    if not 2 <= seq_len <= model.cfg.n_ctx - 1:
        raise ValueError(f"seq_len must be an int in 2..{model.cfg.n_ctx - 1}, got {seq_len!r}")
    if max_chunks is not None:
        _inputs.check_int("max_chunks", max_chunks, 1)
    _inputs.check_batch_size(batch_size)
    _inputs.check_flag("prepend_bos", prepend_bos)
    _inputs.check_flag("progress", progress)
    bos = _inputs.resolve_bos(model, prepend_bos)  # None: what the model's own tokenizer does
    if bos and model.tokenizer.bos_token_id is None:
        raise ValueError(f"{model_name(model)}'s tokenizer has no BOS token: pass prepend_bos=False")
    return bos


def perplexity(
    model: HookedModel,
    inputs: str | Sequence[str],
    *,
    seq_len: int = 256,
    max_chunks: int | None = None,
    prepend_bos: bool | None = None,
    intervention: str | Intervention | None = None,
    calibration: list[str] | None = None,
    batch_size: int = 8,
    progress: bool | None = None,
) -> Perplexity:
    """Perplexity of the text `inputs` (a string or a list of texts, joined by blank lines) in chunks of
    `seq_len` tokens, optionally under an intervention. The text is tokenised as the chunks are needed, so memory
    stays bounded whatever the corpus size.

    `intervention` is None, "zero", "mean", "control" (built from `calibration` texts, which must be held
    apart from `inputs`) or an Intervention. `prepend_bos=None` does what the model's own tokenizer does.

        >>> perplexity(model, load_corpus("wiki-en")[32:], seq_len=128, max_chunks=16)   # doctest: +SKIP
    """
    texts = _check_texts(inputs)
    bos = _check_options(model, seq_len, max_chunks, batch_size, prepend_bos, progress)
    chunks = _chunks(model, texts, seq_len, max_chunks, bos)
    first = next(chunks, None)  # before any forward pass: is there one chunk?
    if first is None:
        n_tok = sum(len(model.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in _pieces(texts))
        raise ValueError(f"the text has {n_tok} tokens: fewer than one chunk of seq_len={seq_len}")
    chunks = itertools.chain([first], chunks)
    iv = _as_intervention(model, intervention, calibration, bos)
    nll = []
    bar = _inputs.progress_bar(None, progress if progress is not None else bool(max_chunks and max_chunks > 8),
                               "perplexity", total=max_chunks or 0)
    rank, size = _dist.world()
    chunks = itertools.islice(chunks, rank, None, size)  # under torchrun, chunks rank, rank + size, ... here
    watch = watch_trivial(model, iv) if iv is not None and iv.trivial else nullcontext({"other": 0})
    firsts: set[int] = set()  # the chunks' first tokens: a trivial mean needs them to be the calibration's one
    with torch.inference_mode(), watch as seen, (intervene(model, iv) if iv is not None else nullcontext()):
        while batch := list(itertools.islice(chunks, batch_size)):
            tokens = torch.stack(batch).to(model.cfg.device)  # (batch, seq_len [+ 1])
            firsts |= set(tokens[:, 0].tolist())
            logits = model(tokens, return_type="logits")  # (batch, pos, d_vocab)
            loss = next_token_nll(logits[:, :-1], tokens[:, 1:])  # (batch, pos - 1)
            nll.append(loss.double().mean(1).cpu())
            bar.update(len(batch) * size)  # rank 0's bar counts the global work
    bar.close()
    per_chunk = torch.cat(nll) if nll else torch.zeros(0, dtype=torch.float64)
    if size > 1:  # every rank's chunks back in text order
        parts = _dist.gather(per_chunk)
        per_chunk = torch.zeros(sum(map(len, parts)), dtype=torch.float64)
        for r, part in enumerate(parts):
            per_chunk[r::size] = part
    check_finite(model, per_chunk)  # NaN/inf weights raise; a dtype overflow warns instead of a silent inf
    mean = float(per_chunk.mean())  # every chunk scores the same number of tokens
    return Perplexity(
        perplexity=math.exp(mean) if math.isfinite(mean) and mean < 700 else math.inf,
        nll=per_chunk.float(), n_predicted=len(per_chunk) * (seq_len if bos else seq_len - 1), seq_len=seq_len,
        prepend_bos=bos,
        intervention="none" if iv is None else iv.describe(), rebuilt=None if iv is None else iv.rebuilt,
        model_name=model_name(model), trivial=_trivial(model, iv, firsts, seen["other"]),
    )


def _trivial(model: HookedModel, iv: Intervention | None, firsts: set[int], other: int) -> str:
    """Why `iv` changed nothing here by construction, or "": its mean at position 0 is the clean value of the one
    starting token (Intervention.trivial), every chunk starts with that token and nothing was written elsewhere."""
    if iv is None or not iv.trivial or other or len(firsts) != 1:
        return ""
    if _inputs.str_tokens(model, torch.tensor(sorted(firsts))) != (iv.first_token,):
        return ""
    return f"{iv.trivial}; every chunk starts with it and no other position was written"


def _check_corpora(inputs: Any) -> list:
    """bias_term_table's corpora: names known to load_corpus or (name, texts) pairs; a bare one is one corpus."""
    from .corpus import CORPORA

    if isinstance(inputs, str) or (isinstance(inputs, tuple) and len(inputs) == 2 and isinstance(inputs[0], str)
                                   and isinstance(inputs[1], list)):
        inputs = [inputs]
    if not isinstance(inputs, (list, tuple)) or not inputs:
        raise ValueError(f"inputs must name at least one corpus ({', '.join(CORPORA)}) or give (name, texts) pairs, "
                         f"got {inputs!r}")
    for c in inputs:
        if isinstance(c, str):
            if c not in CORPORA:
                raise ValueError(f"inputs: unknown corpus {c!r}: known corpora are {', '.join(CORPORA)}")
        elif not (isinstance(c, (tuple, list)) and len(c) == 2 and isinstance(c[0], str)
                  and isinstance(c[1], (list, tuple)) and all(isinstance(t, str) for t in c[1])):
            raise ValueError(f"inputs: a corpus is a name or a (name, list of texts) pair, got {str(c)[:80]!r}")
    return list(inputs)


@dataclass(frozen=True, repr=False)
class BiasTermTable(Result):
    """The paper's Table 3: perplexity with massive activations untouched, set to zero, set to their mean,
    and a control that zeroes as many ordinary activations (random non-massive dims, same positions and blocks)."""

    VIEW = "interventions:show_table3"

    corpora: tuple[str, ...]
    perplexity: Float[Tensor, "corpus column"]  # columns: original, zero, mean, control
    interventions: tuple[tuple[str, ...], ...]  # per corpus, what each column set where
    rebuilt_dims: tuple[int, ...]  # dims whose single-block zero later blocks undo (set in every block instead)
    seq_len: int
    n_chunks: int
    n_calibration: int
    prepend_bos: bool
    model_name: str
    columns: tuple[str, ...] = COLUMNS
    trivial: tuple[str, ...] = ()  # per corpus: why its "mean" equals the original by construction (one distinct
    # token at every massive site of the calibration), else ""

    def is_trivial(self, corpus: str) -> bool:
        """Whether `corpus`'s set-to-mean perplexity is the original by construction (no evidence)."""
        return bool(self.trivial and self.trivial[self.corpora.index(corpus)])

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame(self.perplexity.numpy(), index=pd.Index(self.corpora, name="corpus"), columns=self.columns)

    def sentence(self) -> str:
        def mark(c: str, k: str) -> str:
            return " (trivial: the original by construction)" if k == "mean" and self.is_trivial(c) else ""

        rows = "; ".join(f"{c}: " + ", ".join(f"{k} {float(v):.4g}{mark(c, k)}" for k, v in zip(self.columns, row))
                         for c, row in zip(self.corpora, self.perplexity))
        why = sorted({t for t in self.trivial if t})
        if why:
            rows += f" [trivial: {why[0]}]"
        bos = "after BOS" if self.prepend_bos else "without BOS"
        note = (f"; later blocks rebuild dims {list(self.rebuilt_dims)} after a single-block zero (see interventions "
                "for the blocks set)") if self.rebuilt_dims else ""
        return f"{self.model_name}, {self.n_chunks} chunks of {self.seq_len} tokens {bos}: {rows}{note}"


def bias_term_table(
    model: HookedModel,
    inputs: str | tuple[str, list[str]] | Sequence[str | tuple[str, list[str]]] = ("wiki-en", "lee-news"),
    *,
    seq_len: int = 256,
    max_chunks: int | None = 32,
    n_calibration: int = 32,
    prepend_bos: bool | None = None,
    layers: Any = "auto",
    batch_size: int = 8,
    progress: bool | None = None,
) -> BiasTermTable:
    """Original, set-to-zero, set-to-mean and control perplexity on each corpus (paper Table 3).

    `inputs` is a corpus or a list of them; a corpus is a name for `load_corpus` or a (name, texts) pair. Its
    first `n_calibration` texts are held apart: massive activations, their blocks and their means are measured
    there; the rest is scored.
    """
    corpora = _check_corpora(inputs)
    bos = _check_options(model, seq_len, max_chunks, batch_size, prepend_bos, progress)
    _inputs.check_int("n_calibration", n_calibration, 1)
    loaded = [(c, load_corpus(c)) if isinstance(c, str) else c for c in corpora]
    names, table, described, rebuilt, trivial = [], [], [], set(), []
    for name, texts in loaded:
        if len(texts) <= n_calibration:
            raise ValueError(f"corpus {name!r} has {len(texts)} texts: need more than n_calibration={n_calibration}")
        calib, scored = texts[:n_calibration], texts[n_calibration:]
        stats = massive_stats(model, calib, prepend_bos=(bos,), progress=progress)
        zero = build_intervention(model, calib, mode="zero", stats=stats, prepend_bos=bos, layers=layers)
        rebuilt |= {d for d, r in zip(zero.dims, zero.rebuilt or ()) if r}
        placed = dict(zip(zero.dims, zero.layers))
        ivs = [None, zero] + [
            replace(build_intervention(model, calib, mode=m, stats=stats, prepend_bos=bos, layers=placed,
                                       check_rebuild=False), rebuilt=zero.rebuilt, recovery=zero.recovery)
            for m in ("mean", "control")
        ]
        results = [perplexity(model, scored, seq_len=seq_len, max_chunks=max_chunks, prepend_bos=bos, intervention=iv,
                              batch_size=batch_size, progress=progress) for iv in ivs]
        names.append(name)
        table.append([r.perplexity for r in results])
        described.append(tuple(r.intervention for r in results))
        trivial.append(results[2].trivial)
    return BiasTermTable(
        corpora=tuple(names), perplexity=torch.tensor(table, dtype=torch.float64), interventions=tuple(described),
        rebuilt_dims=tuple(sorted(rebuilt)), seq_len=seq_len, n_chunks=len(results[0].nll),
        n_calibration=n_calibration, prepend_bos=bos, model_name=model_name(model), trivial=tuple(trivial),
    )
