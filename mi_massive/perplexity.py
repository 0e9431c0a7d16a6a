"""Perplexity with and without interventions on massive activations, and the paper's Table 3.

Text is joined, tokenised once and cut into chunks of `seq_len` tokens. With BOS, each chunk is scored
after a BOS token: seq_len predictions per chunk, the first conditioned on BOS alone. Without BOS, the
first chunk token is context only: seq_len - 1 predictions. Every intervention of one call scores the same
chunks and the same predictions. Log-softmax runs in float32 (the paper's "inf" came from fp16 logits).

    >>> from mi_massive import load_model, bias_term_table
    >>> bias_term_table(load_model("smollm2-135m"))          # doctest: +SKIP
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from . import _inputs
from ._hooks import check_finite
from ._loss import next_token_nll
from ._results import Result
from .constancy import massive_stats
from .corpus import load_corpus
from .detect import _progress
from .interventions import Intervention, build_intervention, intervene
from .models import model_name

COLUMNS = ("original", "zero", "mean", "control")


@dataclass(frozen=True, repr=False)
class Perplexity(Result):
    """exp(mean next-token loss) over the scored tokens of every chunk."""

    perplexity: float
    nll: Float[Tensor, "chunk"]  # mean loss (nats) per chunk
    n_predicted: int  # scored tokens in all
    seq_len: int  # text tokens per chunk (BOS not counted)
    prepend_bos: bool
    intervention: str  # "none" or what was set where
    rebuilt: tuple[bool, ...] | None
    model_name: str

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame({"chunk": range(len(self.nll)), "nll": self.nll.numpy(),
                             "perplexity": self.nll.double().exp().numpy()})

    def sentence(self) -> str:
        bos = "after BOS" if self.prepend_bos else "without BOS"
        return (f"perplexity {self.perplexity:.4g} of {self.model_name} on {len(self.nll)} chunk(s) of {self.seq_len} "
                f"tokens {bos} ({self.n_predicted} predictions), intervention: {self.intervention}")


def _chunks(model: Any, texts: str | list[str], seq_len: int, max_chunks: int | None, bos: bool) -> Tensor:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty string or list of strings")
    if not isinstance(seq_len, int) or seq_len < 2 or seq_len + 1 > model.cfg.n_ctx:
        raise ValueError(f"seq_len must be an int in 2..{model.cfg.n_ctx - 1}, got {seq_len!r}")
    if max_chunks is not None and (not isinstance(max_chunks, int) or max_chunks < 1):
        raise ValueError(f"max_chunks must be a positive int or None, got {max_chunks!r}")
    joined = "\n\n".join(t.strip() for t in texts if t.strip())
    if max_chunks is not None:
        joined = joined[: 20 * seq_len * max_chunks]  # more characters than the tokens needed
    ids = torch.tensor(model.tokenizer(joined, add_special_tokens=False)["input_ids"], dtype=torch.long)
    n = len(ids) // seq_len if max_chunks is None else min(len(ids) // seq_len, max_chunks)
    if n == 0:
        raise ValueError(f"the text has {len(ids)} tokens: fewer than one chunk of seq_len={seq_len}")
    chunks = ids[: n * seq_len].view(n, seq_len)
    if bos:
        bos_id = model.tokenizer.bos_token_id
        if bos_id is None:
            raise ValueError(f"{model_name(model)}'s tokenizer has no BOS token: pass prepend_bos=False")
        chunks = torch.cat([torch.full((n, 1), bos_id), chunks], dim=1)
    return chunks  # (chunk, seq_len [+ 1])


def _as_intervention(model: Any, intervention: Any, calibration: Any, bos: bool) -> Intervention | None:
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


def perplexity(
    model: Any,
    texts: str | list[str],
    *,
    seq_len: int = 256,
    max_chunks: int | None = None,
    prepend_bos: bool | None = None,
    intervention: str | Intervention | None = None,
    calibration: list[str] | None = None,
    batch_size: int = 4,
    progress: bool | None = None,
) -> Perplexity:
    """Perplexity of `texts` in chunks of `seq_len` tokens, optionally under an intervention.

    `intervention` is None, "zero", "mean", "control" (built from `calibration` texts, which must be held
    apart from `texts`) or an Intervention. `prepend_bos=None` follows the model's default.

        >>> perplexity(model, load_corpus("wiki-en")[32:], seq_len=128, max_chunks=16)   # doctest: +SKIP
    """
    _inputs.check_model(model)
    bos = model.cfg.default_prepend_bos if prepend_bos is None else bool(prepend_bos)
    chunks = _chunks(model, texts, seq_len, max_chunks, bos)
    iv = _as_intervention(model, intervention, calibration, bos)
    nll = []
    bar = _progress(len(chunks), progress, "perplexity")
    with torch.inference_mode(), (intervene(model, iv) if iv is not None else nullcontext()):
        for start in range(0, len(chunks), batch_size):
            batch = chunks[start : start + batch_size].to(model.cfg.device)
            logits = model(batch, return_type="logits")  # (batch, pos, d_vocab)
            loss = next_token_nll(logits[:, :-1], batch[:, 1:])  # (batch, pos - 1)
            nll.append(loss.double().mean(1).cpu())
            bar.update(len(batch))
    bar.close()
    per_chunk = torch.cat(nll)
    check_finite(model, per_chunk)  # NaN/inf weights raise; a dtype overflow warns instead of a silent inf
    mean = float(per_chunk.mean())  # every chunk scores the same number of tokens
    return Perplexity(
        perplexity=math.exp(mean) if math.isfinite(mean) and mean < 700 else math.inf,
        nll=per_chunk.float(), n_predicted=len(chunks) * (chunks.shape[1] - 1), seq_len=seq_len, prepend_bos=bos,
        intervention="none" if iv is None else iv.describe(), rebuilt=None if iv is None else iv.rebuilt,
        model_name=model_name(model),
    )


@dataclass(frozen=True, repr=False)
class BiasTermTable(Result):
    """The paper's Table 3: perplexity with massive activations untouched, set to zero, set to their mean,
    and a control that zeroes as many ordinary activations (random non-massive dims, same positions and blocks)."""

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

    def to_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame(self.perplexity.numpy(), index=pd.Index(self.corpora, name="corpus"), columns=self.columns)

    def sentence(self) -> str:
        rows = "; ".join(f"{c}: " + ", ".join(f"{k} {float(v):.4g}" for k, v in zip(self.columns, row))
                         for c, row in zip(self.corpora, self.perplexity))
        bos = "after BOS" if self.prepend_bos else "without BOS"
        note = (f"; later blocks rebuild dims {list(self.rebuilt_dims)} after a single-block zero (see interventions "
                "for the blocks set)") if self.rebuilt_dims else ""
        return f"{self.model_name}, {self.n_chunks} chunks of {self.seq_len} tokens {bos}: {rows}{note}"


def bias_term_table(
    model: Any,
    corpora: tuple[str | tuple[str, list[str]], ...] = ("wiki-en", "lee-news"),
    *,
    seq_len: int = 256,
    max_chunks: int | None = 32,
    n_calibration: int = 32,
    prepend_bos: bool | None = None,
    layers: Any = "auto",
    batch_size: int = 4,
    progress: bool | None = None,
) -> BiasTermTable:
    """Original, set-to-zero, set-to-mean and control perplexity on each corpus (paper Table 3).

    A corpus is a name for `load_corpus` or a (name, texts) pair. Its first `n_calibration` texts are held
    apart: massive activations, their blocks and their means are measured there; the rest is scored.
    """
    bos = model.cfg.default_prepend_bos if prepend_bos is None else bool(prepend_bos)
    names, table, described, rebuilt = [], [], [], set()
    for corpus in corpora:
        name, texts = (corpus, load_corpus(corpus)) if isinstance(corpus, str) else corpus
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
    return BiasTermTable(
        corpora=tuple(names), perplexity=torch.tensor(table, dtype=torch.float64), interventions=tuple(described),
        rebuilt_dims=tuple(sorted(rebuilt)), seq_len=seq_len, n_chunks=len(results[0].nll),
        n_calibration=n_calibration, prepend_bos=bos, model_name=model_name(model),
    )
