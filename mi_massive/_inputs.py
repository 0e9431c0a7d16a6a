"""Input validation and batching shared by every analysis: strings, lists of strings or token tensors."""

from __future__ import annotations

import operator
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from ._hooks import check_eval
from ._types import HookedModel

Inputs = str | Sequence[str] | Tensor
DEFAULT_PROMPTS = (  # what the CLI and the report scan when given no prompt
    "Summer is warm. Winter is cold.",
    "The quick brown fox jumps over the lazy dog.",
    "In 1905, Albert Einstein published four papers that changed physics.",
    "Massive activations act as fixed but important bias terms in large language models.",
)


@dataclass(frozen=True)
class Batch:
    """Prompts of one length, so no padding ever enters a statistic."""

    index: tuple[int, ...]  # the prompts' positions in the user's input
    tokens: Int[Tensor, "batch pos"]


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    """Whether `tokenizer` itself starts an encoded text with its BOS token (gemma3's does, smollm2's does not)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def set_default_bos(model: HookedModel, prepend_bos: bool) -> None:
    """Record what `prepend_bos=None` means for `model` (load_model measures it on the model's own tokenizer
    before TransformerLens wraps it in one that always prepends BOS)."""
    _DEFAULT_BOS[model] = bool(prepend_bos)


def default_bos(model: HookedModel) -> bool:
    """What `prepend_bos=None` means: what the model's own tokenizer does (smollm2-135m: no BOS; gemma3-270m: BOS);
    for a bridge not made by load_model, TransformerLens's `cfg.default_prepend_bos`."""
    own = _DEFAULT_BOS.get(model)
    return bool(model.cfg.default_prepend_bos) if own is None else own


def resolve_bos(model: HookedModel, prepend_bos: bool | None) -> bool:
    """`prepend_bos` as a bool (None: `default_bos(model)`)."""
    if prepend_bos is not None and not isinstance(prepend_bos, bool):
        raise ValueError(f"prepend_bos must be True, False or None (the model's own tokenizer), got {prepend_bos!r}")
    return default_bos(model) if prepend_bos is None else prepend_bos


def bos_condition(model: HookedModel, inputs: Inputs, prompts: Sequence[Tensor], prepend_bos: bool | None) -> bool:
    """The BOS condition a result records: the choice for text, and for token tensors whether every row starts
    with the tokenizer's BOS token."""
    if not isinstance(inputs, Tensor):
        return resolve_bos(model, prepend_bos)
    bos = getattr(model.tokenizer, "bos_token_id", None)
    return bos is not None and all(len(t) and int(t[0]) == bos for t in prompts)


def bos_words(prepend_bos: bool | None) -> str:
    """How a result's sentence states its BOS condition."""
    return "condition not recorded" if prepend_bos is None else ("with BOS" if prepend_bos else "without BOS")


_DEFAULT_BOS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its own tokenizer's BOS choice


def tokenize(model: HookedModel, inputs: Inputs, *, prepend_bos: bool | None = None) -> list[Int[Tensor, "pos"]]:
    """One 1-D token tensor per prompt; raises on empty or malformed input.

    `prepend_bos=None` does what the model's own tokenizer does (`default_bos`); token tensors are taken as given.
    """
    check_model(model)
    if not isinstance(inputs, Tensor):
        prepend_bos = resolve_bos(model, prepend_bos)
    n_ctx = model.cfg.n_ctx
    if isinstance(inputs, Tensor):
        bos_id = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
        if prepend_bos is True and inputs.ndim in (1, 2) and inputs.numel() and not bool(
                (inputs.reshape(-1, inputs.shape[-1])[:, 0] == bos_id).all()):
            raise ValueError("prepend_bos=True, but the token tensor does not start with BOS: a token tensor is used "
                             "as given, so put the BOS id in its first column or pass strings")
        if inputs.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"token tensor must hold integers, not {inputs.dtype}")
        if inputs.ndim == 1:
            inputs = inputs[None]
        if inputs.ndim != 2 or inputs.shape[0] == 0 or inputs.shape[1] == 0:
            raise ValueError(f"token tensor must be (batch, pos) with batch, pos >= 1; got shape {tuple(inputs.shape)}")
        d_vocab = model.cfg.d_vocab
        if int(inputs.min()) < 0 or int(inputs.max()) >= d_vocab:
            raise ValueError(f"token ids must lie in 0..{d_vocab - 1}; got {int(inputs.min())}..{int(inputs.max())}")
        if inputs.shape[1] > n_ctx:
            raise ValueError(f"the token tensor has {inputs.shape[1]} positions; the model's context is {n_ctx}")
        return [row.long().cpu() for row in inputs]
    if isinstance(inputs, str):
        inputs = [inputs]
    if not isinstance(inputs, Sequence) or isinstance(inputs, (bytes, bytearray)):
        raise ValueError(f"inputs must be a string, a list of strings or a token tensor, not {type(inputs).__name__}")
    if len(inputs) == 0:
        raise ValueError("inputs is an empty list: give at least one prompt")
    out = []
    for i, text in enumerate(inputs):
        if not isinstance(text, str):
            raise ValueError(f"prompt {i} is a {type(text).__name__}, not a string")
        if not text.strip():
            raise ValueError(f"prompt {i} is empty: give some text")
        toks = model.to_tokens(text, prepend_bos=prepend_bos, truncate=False)[0].cpu()
        if len(toks) > n_ctx:
            raise ValueError(f"prompt {i} has {len(toks)} tokens; the model's context is {n_ctx}")
        out.append(toks)
    return out


def check_flag(name: str, value: Any) -> None:
    """A three-way option (`prepend_bos`, `progress`): None (the default behaviour), True or False."""
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be True, False or None, got {value!r}")


def check_batch_size(batch_size: Any) -> int:
    """Inputs per forward pass: a positive int."""
    return check_int("batch_size", batch_size, 1)


def check_int(name: str, value: Any, low: int | None = None) -> int:
    """An int option: TypeError for another type, ValueError below `low`; both name the argument."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int{'' if low is None else f' >= {low}'}, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def progress_bar(items: Sequence | None, progress: bool | None, desc: str, *, total: int | None = None):
    """`items` under a tqdm bar (None: a bar of `total` steps, updated by hand): shown when `progress` is True,
    or, with None, when there are more than 8 steps; under torchrun on rank 0 only."""
    from tqdm.auto import tqdm

    from . import _dist

    total = len(items) if total is None else total
    shown = progress if progress is not None else total > 8
    return tqdm(items, total=total, desc=desc, disable=not shown or not _dist.is_main())


def check_model(model: HookedModel) -> None:
    """A hooked model from load_model, in eval mode; raises naming what was passed instead."""
    if not all(hasattr(type(model), a) or hasattr(model, a) for a in ("cfg", "to_tokens", "hook_dict")):  # the
        # class first: the bridge's hook_dict property builds a dict
        raise ValueError(f"expected a TransformerBridge from mi_massive.load_model, got {type(model).__name__}: "
                         "wrap a transformers model with load_model(hf_model, tokenizer=...)")
    check_eval(model)


def batches(prompts: list[Tensor], *, batch_size: int = 8) -> Iterator[Batch]:
    """Group prompts of equal length into batches (longest first), keeping their indices."""
    check_batch_size(batch_size)
    by_len: dict[int, list[int]] = {}
    for i, toks in enumerate(prompts):
        by_len.setdefault(len(toks), []).append(i)
    for length in sorted(by_len, reverse=True):
        idx = by_len[length]
        for start in range(0, len(idx), batch_size):
            chunk = tuple(idx[start : start + batch_size])
            yield Batch(chunk, torch.stack([prompts[i] for i in chunk]))


def str_tokens(model: HookedModel, toks: Tensor) -> tuple[str, ...]:
    """The tokenizer's string for each id (`convert_ids_to_tokens`; None for an id the tokenizer lacks), looked up
    in a table of the model's whole vocabulary made once per tokenizer (far cheaper per scan than asking the
    tokenizer for each id; benchmarks/RESULTS.md)."""
    ids, tok = toks.tolist(), model.tokenizer
    if not ids:
        return ()
    table = _token_table(tok, max(len(tok), getattr(model.cfg, "d_vocab", 0)))
    if not 0 <= min(ids) <= max(ids) < len(table):  # ids the table does not hold: as the tokenizer says
        return tuple(tok.convert_ids_to_tokens(ids))
    return operator.itemgetter(*ids)(table) if len(ids) > 1 else (table[ids[0]],)


def _token_table(tok: Any, size: int) -> tuple:
    """The strings of ids 0..size-1 (of len(tok) where the tokenizer cannot name the rest); () for a tokenizer
    that cannot be weakly referenced."""
    try:
        table = _TOKEN_TABLES.get(tok)
        if table is None or len(table) < size:
            try:
                table = tuple(tok.convert_ids_to_tokens(list(range(size))))
            except (IndexError, KeyError, ValueError, OverflowError):  # a slow tokenizer's ids end at len(tok)
                table = tuple(tok.convert_ids_to_tokens(list(range(len(tok)))))
            _TOKEN_TABLES[tok] = table
    except TypeError:
        return ()
    return table


_TOKEN_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> its ids' strings


def check_index(kind: str, value: int, size: int) -> int:
    """Validate a layer/pos/dim/head/neuron index (negative counts from the end)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{kind} must be an int, not {type(value).__name__}")
    if not -size <= value < size:
        head, _, rest = kind.partition(" (")  # "sink position (prompt 0)" -> "sink positions (prompt 0)"
        plural = {"pos": "positions"}.get(head, head + "s") + (f" ({rest}" if rest else "")
        raise ValueError(f"{kind} {value} out of range: valid {plural} are 0..{size - 1}")
    return value % size
