"""Massive activations are near-constant across inputs (paper Sec. 3): mean, std and CV per massive dim.

Measured separately at the starting token (position 0) and at the other positions that carry a massive
value (delimiters such as "." or "\\n"), once without BOS and once with BOS. The paper measures without
BOS; with BOS, position 0 is the BOS token, which under causal attention sees only itself, so its value is
the same for every input and its CV is trivially zero.

    >>> from mi_massive import massive_stats
    >>> from mi_massive.testing import tiny_model
    >>> stats = massive_stats(tiny_model("llama"), ["Summer is warm.", "Winter is cold."])   # load_model() for real
    >>> stats.dims
    (5,)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from . import _dist, _inputs, sites
from ._hooks import capture
from ._results import Result
from ._rule import check as _check_rule
from ._rule import massive_mask
from ._types import HookedModel
from .arch import hook
from .detect import HOOK_TEMPLATE
from .models import model_name

KINDS = ("first", "other")  # position 0 (the starting token, or BOS) / other massive positions (delimiters)


def truncated_prompts(model: HookedModel, texts: _inputs.Inputs, *, prepend_bos: bool, max_tokens: int) -> list[Tensor]:
    """Tokenised texts cut to `max_tokens` tokens (BOS included), so most share a length and batch together."""
    if not isinstance(max_tokens, int) or max_tokens < 2:
        raise ValueError(f"max_tokens must be an int >= 2, got {max_tokens!r}")
    if isinstance(texts, (list, tuple)) and all(isinstance(t, str) for t in texts):
        cut = min(20 * max_tokens, model.cfg.n_ctx - 1)  # enough characters for max_tokens tokens, within context
        texts = [t[:cut] for t in texts]
    return [t[:max_tokens] for t in _inputs.tokenize(model, texts, prepend_bos=prepend_bos)]


@dataclass(frozen=True, repr=False)
class MassiveStats(Result):
    """Per massive dim and layer: mean, std and count of its value across inputs.

    Axes: `setting` follows `prepend_bos` (False = no BOS, the paper's setting; True = BOS at position 0);
    `kind` is 0 for the starting token (position 0) and 1 for the other positions where the dim is massive.
    """

    VIEW = "interventions:show_stats"

    dims: tuple[int, ...]
    prepend_bos: tuple[bool, ...]
    mean: Float[Tensor, "setting kind layer dim"]
    std: Float[Tensor, "setting kind layer dim"]
    count: Int[Tensor, "setting kind layer dim"]
    first_layer: Int[Tensor, "setting dim"]  # first layer where the dim is massive (-1: never in that setting)
    last_layer: Int[Tensor, "setting dim"]
    fraction: Float[Tensor, "setting dim"]  # share of non-starting positions where the dim is massive in some layer
    excluded_dims: tuple[int, ...]  # feature-wide outlier dims (`sites`): a scale, not a token's bias term
    n_texts: int
    max_tokens: int
    threshold: float
    ratio: float
    model_name: str
    hook_names: tuple[str, ...] = (HOOK_TEMPLATE,)  # provenance: the hooks read, {layer} for every block
    n_tokens: Int[Tensor, "setting kind dim"] | None = None  # distinct token ids at the dim's sites (kind 0: the
    # starting token of every text; kind 1: the other positions where it is massive)
    first_tokens: tuple[tuple[str, ...], ...] = ()  # per setting: the distinct starting tokens (up to 5)

    def constant_by_construction(self, prepend_bos: bool) -> tuple[bool, ...]:
        """Per dim: every site holds one value by construction (one distinct token at position 0, which under causal
        attention sees only itself, and no other site), so its mean equals the clean value and its std is 0."""
        if self.n_tokens is None:
            return (False,) * len(self.dims)
        si = self.setting(prepend_bos)
        return tuple(bool(self.n_tokens[si, 0, i] == 1 and self.count[si, 1, :, i].sum() == 0)
                     for i in range(len(self.dims)))

    @property
    def cv(self) -> Float[Tensor, "setting kind layer dim"]:
        """Coefficient of variation std / |mean| (NaN where there were fewer than two values: see `summary`'s note)."""
        return self.std / self.mean.abs()

    def setting(self, prepend_bos: bool) -> int:
        if prepend_bos not in self.prepend_bos:
            raise ValueError(f"stats were measured with prepend_bos in {self.prepend_bos}, not {prepend_bos}")
        return self.prepend_bos.index(prepend_bos)

    def peak_layer(self, dim: int, *, prepend_bos: bool = False) -> int:
        """The layer where the dim's mean at the starting token is largest in magnitude."""
        return int(self.mean[self.setting(prepend_bos), 0, :, self.dims.index(dim)].abs().nan_to_num().argmax())

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (prepend_bos, kind, layer, dim)."""
        s, k, l, d = torch.meshgrid(*(torch.arange(n) for n in self.mean.shape), indexing="ij")
        return pd.DataFrame({
            "prepend_bos": [self.prepend_bos[i] for i in s.flatten().tolist()],
            "kind": [KINDS[i] for i in k.flatten().tolist()], "layer": l.flatten().numpy(),
            "dim": [self.dims[i] for i in d.flatten().tolist()], "n": self.count.flatten().numpy(),
            "mean": self.mean.flatten().numpy(), "std": self.std.flatten().numpy(), "cv": self.cv.flatten().numpy(),
        })

    def summary(self) -> pd.DataFrame:
        """One row per (prepend_bos, kind, dim) at the dim's peak layer (starting token, same setting)."""
        rows = []
        for si, bos in enumerate(self.prepend_bos):
            for di, dim in enumerate(self.dims):
                layer = self.peak_layer(dim, prepend_bos=bos)
                for ki, kind in enumerate(KINDS):
                    n = int(self.count[si, ki, layer, di])
                    rows.append({"prepend_bos": bos, "kind": kind, "dim": dim, "layer": layer, "n": n,
                                 "mean": float(self.mean[si, ki, layer, di]), "std": float(self.std[si, ki, layer, di]),
                                 "cv": float(self.cv[si, ki, layer, di]), "note": self._note(si, ki, di, n)})
        return pd.DataFrame(rows, columns=["prepend_bos", "kind", "dim", "layer", "n", "mean", "std", "cv", "note"])

    def _note(self, si: int, ki: int, di: int, n: int) -> str:
        """Why a row's statistics are undefined or fixed by construction ("" when they are evidence)."""
        if n == 0:
            return "no values: mean, std and CV undefined"
        if n == 1:
            return "one value: std and CV undefined"
        if ki == 0 and self.n_tokens is not None and int(self.n_tokens[si, 0, di]) == 1:
            return f"one starting token ({self.first_tokens[si][0]!r}) in every text: constant by construction"
        return ""

    def sentence(self) -> str:
        if not self.dims:
            return f"no massive dims in {self.model_name} over {self.n_texts} text(s)"
        s = self.summary()
        parts = []
        for dim in self.dims[:3]:
            r = s[(s.dim == dim) & (s.kind == "first")].set_index("prepend_bos")
            txt = [f"{_inputs.bos_words(b)} " + (f"{r.note[b]} (mean {r['mean'][b]:.4g})" if r.note[b] else
                                                 f"CV {r.cv[b]:.2%} (mean {r['mean'][b]:.4g})")
                   for b in self.prepend_bos]
            parts.append(f"dim {dim} at the starting token, layer {int(r.layer.iloc[0])}: " + ", ".join(txt))
        wide = f"; feature-wide outlier dims {list(self.excluded_dims)[:5]} left out" if self.excluded_dims else ""
        return f"{self.model_name} over {self.n_texts} text(s): " + "; ".join(parts) + wide


def massive_stats(
    model: HookedModel,
    inputs: _inputs.Inputs,
    *,
    prepend_bos: tuple[bool, ...] = (False, True),
    max_tokens: int = 64,
    threshold: float = 100.0,
    ratio: float = 1000.0,
    max_fraction: float = sites.FEATURE_SHARE,
    batch_size: int = 8,
    progress: bool | None = None,
) -> MassiveStats:
    """Mean, std and CV across inputs of every massive dim, per layer, at the starting token and elsewhere.

    Each text is cut to `max_tokens` tokens. A dim counts as massive where the paper's rule holds in some
    layer; feature-wide outlier dims (in some layer massive at more than `max_fraction` of the positions after
    the first: `mi_massive.sites`, the rule every module uses) are large everywhere, a scale rather than a
    token's bias term, and are listed in `excluded_dims` instead. A std or CV of fewer than two values is NaN
    (`summary()` says why); a mean over one distinct starting token is flagged (`constant_by_construction`).

        >>> stats = massive_stats(model, ["Summer is warm.", "Winter is cold."])   # load_corpus("wiki-en", n=32)
        >>> stats.dims
        (5,)
    """
    _check_rule(threshold, ratio)
    settings = (prepend_bos,) if isinstance(prepend_bos, bool) else tuple(prepend_bos)
    if not settings or any(not isinstance(b, bool) for b in settings) or len(set(settings)) != len(settings):
        raise ValueError(f"prepend_bos must be a bool or a tuple of distinct bools, got {prepend_bos!r}")
    if not 0 < max_fraction <= 1:
        raise ValueError(f"max_fraction must lie in (0, 1], got {max_fraction!r}")
    L, D, S = model.cfg.n_layers, model.cfg.d_model, len(settings)
    per_setting = [truncated_prompts(model, inputs, prepend_bos=b, max_tokens=max_tokens) for b in settings]
    sums = torch.zeros(S, 2, 3, L, D, dtype=torch.float64)  # (setting, kind, [n, sum, sum of squares], layer, dim)
    layers_hit = torch.zeros(S, L, D, dtype=torch.bool)
    n_sites, n_positions = torch.zeros(S, D), torch.zeros(S)
    n_layer_hits = torch.zeros(S, L, D)  # positions after the first where the dim is massive, per layer
    first_ids: list[set[int]] = [set() for _ in settings]  # the starting tokens
    site_ids: list[dict[int, set[int]]] = [{} for _ in settings]  # dim -> token ids at its other sites
    names = [hook.resid_post(l) for l in range(L)]
    bar = _inputs.progress_bar(None, progress, "massive stats", total=sum(map(len, per_setting)))
    mine = _dist.shard(len(per_setting[0]))  # under torchrun, this rank's contiguous share of the texts
    for si, prompts in enumerate(per_setting):
        for batch in _inputs.batches(prompts[mine.start:mine.stop], batch_size=batch_size):
            _, cache = capture(model, batch.tokens, names)
            x = torch.stack([cache[n].float().cpu() for n in names])  # (layer, batch, pos, d_model)
            hit = massive_mask(x.flatten(0, 1), threshold=threshold, ratio=ratio).view_as(x)
            layers_hit[si] |= hit.any(dim=(1, 2))
            n_layer_hits[si] += hit[:, :, 1:].sum(dim=(1, 2)).float()
            first_ids[si] |= set(batch.tokens[:, 0].tolist())
            site = hit.any(0)  # (batch, pos, d_model): massive in some layer
            site[:, 0] = False  # position 0 is counted as the starting token
            n_sites[si] += site.sum(dim=(0, 1)).float()  # the starting token is massive by design: not counted
            n_positions[si] += site.shape[0] * (site.shape[1] - 1)
            for b, p, d in site.nonzero().tolist():
                site_ids[si].setdefault(d, set()).add(int(batch.tokens[b, p]))
            x = x.double()
            first = x[:, :, 0]  # (layer, batch, d_model)
            sums[si, 0] += torch.stack([torch.full_like(first[:, 0], first.shape[1]), first.sum(1), (first**2).sum(1)])
            w = site.double()  # (batch, pos, d_model)
            sums[si, 1] += torch.stack([w.sum((0, 1)).expand(L, D), (x * w).sum((1, 2)), (x**2 * w).sum((1, 2))])
            bar.update(len(batch.index) * _dist.world()[1])  # rank 0's bar counts the global work
    bar.close()
    if _dist.world()[1] > 1:  # exact merge: counts and sums all-reduced, token sets joined
        sums, n_sites, n_positions, n_layer_hits = map(_dist.sum_, (sums, n_sites, n_positions, n_layer_hits))
        layers_hit = _dist.sum_(layers_hit.long()) > 0
        first_parts, site_parts = _dist.gather(first_ids), _dist.gather(site_ids)
        first_ids = [set().union(*(part[si] for part in first_parts)) for si in range(S)]
        site_ids = [{d: set().union(*(part[si].get(d, ()) for part in site_parts))
                     for d in set().union(*(part[si] for part in site_parts))} for si in range(S)]
    fraction = n_sites / n_positions.clamp(min=1)[:, None]
    candidates = layers_hit.any(dim=(0, 1)).nonzero().flatten().tolist()
    wide = sites.is_feature_wide(n_layer_hits.numpy(), n_positions.numpy()[:, None, None], share=max_fraction)
    keep = [d for d in candidates if not wide[..., d].any()]
    # most massive first, by peak |mean| at the starting token
    peak = (sums[:, 0, 1] / sums[:, 0, 0].clamp(min=1)).abs().amax(dim=(0, 1))  # (d_model,)
    keep.sort(key=lambda d: -float(peak[d]) if torch.isfinite(peak[d]) else -math.inf)
    idx = torch.tensor(keep, dtype=torch.long)
    n, s1, s2 = sums[..., idx].unbind(2)  # each (setting, kind, layer, dim)
    mean = s1 / n
    std = ((s2 - n * mean**2).clamp(min=0) / (n - 1).clamp(min=1)).sqrt()
    std = torch.where(n >= 2, std, float("nan"))  # the std of one value is undefined, not 0
    n_tokens = torch.tensor([[[len(first_ids[si])] * len(keep), [len(site_ids[si].get(d, ())) for d in keep]]
                             for si in range(S)], dtype=torch.long).view(S, 2, len(keep))
    hit_k = layers_hit[..., idx]  # (setting, layer, dim)
    ar = torch.arange(L)[None, :, None]
    first_layer = torch.where(hit_k, ar, L).amin(1)
    last_layer = torch.where(hit_k, ar, -1).amax(1)
    return MassiveStats(
        dims=tuple(keep), prepend_bos=settings, mean=mean.float(), std=std.float(), count=n.long(),
        first_layer=torch.where(first_layer == L, -1, first_layer), last_layer=last_layer,
        fraction=fraction[:, idx].float(), excluded_dims=tuple(d for d in candidates if d not in keep),
        n_texts=len(per_setting[0]), max_tokens=max_tokens, threshold=float(threshold), ratio=float(ratio),
        model_name=model_name(model), n_tokens=n_tokens,
        first_tokens=tuple(tuple(_inputs.str_tokens(model, torch.tensor(sorted(ids)[:5]))) for ids in first_ids),
    )
