"""What kind of site a massive activation is: one notion, used by every module.

A dimension is a **token's massive activation** when it is massive at a few positions (the starting token,
BOS, a delimiter); it is a **feature-wide outlier** when, in some layer, it passes the paper's rule at most of
the positions after the first (gemma3-270m's dim 400 in blocks 0-6). Feature-wide outliers are reported, but
they are not where massive activations appear: `first_massive_layer`, the sink tokens and every default layer
range derive from token massive activations only.

A token site's position is the **start token** (position 0 without BOS), **BOS** (position 0, the BOS token
prepended), the **first delimiter** (the prompt's first token made only of punctuation or whitespace, such as
"." or "\\n"), or **other**, named with its token (smollm2-135m's dim 507 at "onga" after "raw").

    >>> from mi_massive import load_model, find_massive_activations
    >>> acts = find_massive_activations(load_model("gemma3-270m"), "Summer is warm.")   # doctest: +SKIP
    >>> acts.feature_dims, acts.first_layer                                            # doctest: +SKIP
    ((400,), 3)
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import numpy as np

FEATURE_SHARE = 0.5  # a dim massive at more than this share of the positions after the first, in some layer,
FEATURE_MIN_HITS = 3  # and at at least this many of them, is a feature-wide outlier, not a token's activation
POSITION_KINDS = ("start token", "BOS", "first delimiter", "other")
DIM_KINDS = ("token", "feature-wide")
_MARKERS = "ĠĊ▁ĉ"  # byte-level BPE / sentencepiece spellings of space, newline and tab


def is_delimiter(token: str | None) -> bool:
    """A token made only of punctuation and whitespace ("." "," "\\n" "▁" "Ċ"), as the paper's delimiters."""
    if token is None:
        return False
    text = "".join(" " if c in _MARKERS else c for c in token)
    return bool(text) and all(c.isspace() or unicodedata.category(c).startswith("P") for c in text)


def first_delimiter(str_tokens: Sequence[str | None]) -> int | None:
    """The position of a prompt's first delimiter after position 0 (None: it has none)."""
    return next((i for i, t in enumerate(str_tokens) if i > 0 and is_delimiter(t)), None)


def position_kind(str_tokens: Sequence[str | None], pos: int, *, bos: bool) -> str:
    """"start token", "BOS", "first delimiter" or "other" for a massive site at `pos` of a prompt."""
    if pos == 0:
        return "BOS" if bos else "start token"
    return "first delimiter" if pos == first_delimiter(str_tokens) else "other"


def site_name(str_tokens: Sequence[str | None], pos: int, *, bos: bool) -> str:
    """The kind of a site, with its token where the kind does not say it: "other ('onga')"."""
    kind = position_kind(str_tokens, pos, bos=bos)
    return f"{kind} ({str_tokens[pos]!r})" if kind in ("other", "first delimiter") else kind


def feature_dims(prompt: np.ndarray, layer: np.ndarray, pos: np.ndarray, dim: np.ndarray,
                 lengths: Sequence[int], *, share: float = FEATURE_SHARE,
                 min_hits: int = FEATURE_MIN_HITS) -> tuple[int, ...]:
    """The feature-wide outlier dims among hits given as (prompt, layer, pos, dim) rows: massive, in some layer, at
    more than `share` of the positions after the first (pooled over the prompts) and at >= `min_hits` of them.

    `lengths` is the number of positions of each prompt."""
    after = int(sum(max(n - 1, 0) for n in lengths))
    keep = np.asarray(pos) > 0
    if after == 0 or not keep.any():
        return ()
    rows = np.unique(np.stack([np.asarray(a)[keep] for a in (prompt, layer, pos, dim)], 1), axis=0)
    pairs, counts = np.unique(rows[:, [1, 3]], axis=0, return_counts=True)  # (layer, dim) -> positions
    wide = is_feature_wide(counts, after, share=share, min_hits=min_hits)
    return tuple(sorted({int(d) for d in pairs[wide, 1]}))


def is_feature_wide(hits: int | np.ndarray, positions: int | np.ndarray, *, share: float = FEATURE_SHARE,
                    min_hits: int = FEATURE_MIN_HITS):
    """The same rule on counts: `hits` of `positions` after the first in one layer (elementwise on arrays)."""
    hits, positions = np.asarray(hits), np.asarray(positions)
    return (hits > share * positions) & (hits >= min_hits)
