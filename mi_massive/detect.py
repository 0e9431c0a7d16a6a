"""Detection: residual-stream entries with |x| > threshold and |x| >= ratio x the layer's median |x|.

The paper's rule (Sun et al. 2024, Sec. 2), applied to every block output (``hook_resid_post``) of every
prompt. Statistics are computed inside the hooks, batch by batch: no activation cache is ever kept, so a
scan over thousands of prompts costs about one forward pass each. How the passes run (the bare Hugging Face
trunk, CUDA graphs, Triton statistics) is the engine's business (`mi_massive.engine`).

    >>> from mi_massive import find_massive_activations
    >>> from mi_massive.testing import tiny_model
    >>> model = tiny_model("llama")         # planted in dim 5; load_model("smollm2-135m") for the paper's
    >>> find_massive_activations(model, "Summer is warm.")
    <MassiveActivations: 1 massive dimension(s) (5) at 1 (prompt, position) site(s) ...>
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from . import _dist, _inputs, _rule, engine, sites
from ._hooks import check_weights
from ._results import Result
from ._types import HookedModel
from .arch import hook
from .models import model_name

HOOK_TEMPLATE = hook.resid_post_template


@dataclass(frozen=True, repr=False)
class MassiveActivations(Result):
    """Residual entries with |x| > threshold and |x| >= ratio x the layer's median |x| (per prompt)."""

    VIEW = "tokens:show_massive"

    prompt: Int[Tensor, "hit"]
    layer: Int[Tensor, "hit"]
    pos: Int[Tensor, "hit"]
    dim: Int[Tensor, "hit"]
    value: Float[Tensor, "hit"]
    median: Float[Tensor, "hit"]  # the layer's median |x| for that prompt
    str_tokens: tuple[tuple[str, ...], ...]  # per prompt
    threshold: float
    ratio: float
    model_name: str
    n_layers: int
    d_model: int
    nonfinite: Int[Tensor, "layer"]  # inf/nan entries per layer among the top |x| kept per prompt (dtype overflow)
    hook_names: tuple[str, ...] = (HOOK_TEMPLATE,)  # provenance: the hooks read, {layer} for every block
    prepend_bos: bool | None = None  # the BOS condition of the prompts (None: not recorded)

    def __len__(self) -> int:
        return len(self.value)

    @property
    def dims(self) -> list[int]:
        """Massive dimensions (token and feature-wide), most massive first."""
        df = self.to_dataframe()
        if df.empty:
            return []
        return [int(d) for d in df.assign(a=df.value.abs()).groupby("dim").a.max().sort_values(ascending=False).index]

    @property
    def feature_dims(self) -> tuple[int, ...]:
        """Feature-wide outlier dims: massive at most positions in some layer (`sites.feature_dims`); reported,
        but not where massive activations appear."""
        return sites.feature_dims(self.prompt.numpy(), self.layer.numpy(), self.pos.numpy(), self.dim.numpy(),
                                  [len(t) for t in self.str_tokens])

    @property
    def token_dims(self) -> list[int]:
        """Dims of tokens' massive activations (few positions), most massive first."""
        wide = set(self.feature_dims)
        return [d for d in self.dims if d not in wide]

    def _token_hits(self) -> Tensor:
        """(hit,) bool: the hits of token massive activations."""
        return ~torch.isin(self.dim, torch.tensor(self.feature_dims, dtype=self.dim.dtype))

    def positions(self, prompt: int = 0) -> list[int]:
        """Token positions holding a token's massive activation in `prompt` (feature-wide dims left out)."""
        return sorted({int(p) for p in self.pos[(self.prompt == prompt) & self._token_hits()]})

    @property
    def first_layer(self) -> int | None:
        """The first block whose output holds a token's massive activation (None: none does)."""
        layers = self.layer[self._token_hits()]
        return int(layers.min()) if len(layers) else None

    def _bos(self) -> bool:
        return bool(self.prepend_bos)

    def sites(self, *, features: bool = True) -> pd.DataFrame:
        """One row per (prompt, pos, dim) of a token's massive activation: where it first and last appears, its peak
        value, and its kind (`sites.position_kind`: "start token", "BOS", "first delimiter", "other") and name
        ("other ('onga')"). A feature-wide dim is one row per prompt (pos None, token "all positions" or "k of n
        positions", kind "feature-wide"); `features=False` leaves those rows out."""
        cols = ["prompt", "pos", "token", "dim", "first_layer", "last_layer", "peak", "kind", "site"]
        df = self.to_dataframe()
        if df.empty:
            return pd.DataFrame(columns=cols)
        wide = df.dim.isin(self.feature_dims)
        peak = ("value", lambda v: v.iloc[v.abs().argmax()])
        tok = df[~wide].groupby(["prompt", "pos", "token", "dim"], sort=True).agg(
            first_layer=("layer", "min"), last_layer=("layer", "max"), peak=peak).reset_index()
        tok["kind"] = [sites.position_kind(self.str_tokens[p], q, bos=self._bos()) for p, q in zip(tok.prompt, tok.pos)]
        tok["site"] = [sites.site_name(self.str_tokens[p], q, bos=self._bos()) for p, q in zip(tok.prompt, tok.pos)]
        if not features or not wide.any():
            return tok[cols].reset_index(drop=True)
        rows = []
        for (p, d), g in df[wide].groupby(["prompt", "dim"], sort=True):
            where = self._where(g.pos, [len(self.str_tokens[p])])
            rows.append({"prompt": p, "pos": None, "token": where, "dim": d, "first_layer": g.layer.min(),
                         "last_layer": g.layer.max(), "peak": g.value.iloc[g.value.abs().argmax()],
                         "kind": "feature-wide", "site": where})
        both = pd.concat([tok[cols].astype({"pos": object}), pd.DataFrame(rows, columns=cols)], ignore_index=True)
        return both.astype({c: "int64" for c in ("prompt", "dim", "first_layer", "last_layer")})

    @staticmethod
    def _where(pos: pd.Series, lengths: list[int]) -> str:
        """'all positions' or 'k of n positions' (distinct positions among the prompts' positions)."""
        k, n = int(pos.nunique()), max(lengths)
        return "all positions" if k >= n else f"{k} of {n} positions"

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (prompt, layer, pos, dim)."""
        toks = [self.str_tokens[p][q] for p, q in zip(self.prompt.tolist(), self.pos.tolist())]
        return pd.DataFrame(
            {
                "prompt": self.prompt.numpy(), "layer": self.layer.numpy(), "pos": self.pos.numpy(),
                "token": toks, "dim": self.dim.numpy(), "value": self.value.numpy(),
                "ratio": (self.value.abs() / self.median).numpy(),
            },
            columns=["prompt", "layer", "pos", "token", "dim", "value", "ratio"],
        )

    def summary(self) -> pd.DataFrame:
        """One row per massive dimension: its kind ("token" or "feature-wide"), first and last layer, positions and
        tokens with their site names (a feature-wide dim: "all positions" or "k of n positions" instead of a list),
        magnitude range."""
        df = self.to_dataframe()
        cols = ["dim", "kind", "first_layer", "last_layer", "positions", "tokens", "sites", "min_abs", "max_abs",
                "n_prompts", "n_hits"]
        if df.empty:
            return pd.DataFrame(columns=cols)
        wide = set(self.feature_dims)
        named = self.sites(features=False)
        rows = []
        for dim, g in df.groupby("dim"):
            if dim in wide:
                where = self._where(g.pos, [len(self.str_tokens[p]) for p in g.prompt.unique()])
                kind, positions, tokens, names = "feature-wide", where, where, [where]
            else:
                kind, positions, tokens = "token", sorted(set(g.pos.tolist())), sorted(set(g.token.tolist()))
                names = sorted(set(named.site[named.dim == dim]), key=_site_order)
            rows.append({
                "dim": int(dim), "kind": kind, "first_layer": int(g.layer.min()), "last_layer": int(g.layer.max()),
                "positions": positions, "tokens": tokens, "sites": names,
                "min_abs": float(g.value.abs().min()), "max_abs": float(g.value.abs().max()),
                "n_prompts": int(g.prompt.nunique()), "n_hits": len(g),
            })
        return pd.DataFrame(rows, columns=cols).sort_values("max_abs", ascending=False).reset_index(drop=True)

    def sentence(self) -> str:
        bos = _inputs.bos_words(self.prepend_bos)
        rule = f"|x| > {self.threshold:g} and >= {self.ratio:g}x median"
        if not len(self):
            return f"no massive activations in {self.model_name} over {len(self.str_tokens)} prompt(s), {bos} ({rule})"
        s = self.summary()
        tok, wide = s[s.kind == "token"], s[s.kind == "feature-wide"]
        parts = []
        if len(tok):
            dims = ", ".join(str(d) for d in tok.dim[:5]) + ("..." if len(tok) > 5 else "")
            named = self.sites(features=False)
            npos = len(named[["prompt", "pos"]].drop_duplicates())
            kinds = sorted(set(named.site), key=_site_order)
            kinds = ", ".join(kinds[:4]) + (f" and {len(kinds) - 4} more" if len(kinds) > 4 else "")
            parts.append(f"{len(tok)} massive dimension(s) ({dims}) at {npos} (prompt, position) site(s) ({kinds}) in "
                         f"{self.model_name}, {bos}, layers {self.first_layer}..{int(tok.last_layer.max())}, up to "
                         f"|x| = {tok.max_abs.max():.4g}")
        else:
            parts.append(f"no token massive activations in {self.model_name} over {len(self.str_tokens)} prompt(s), "
                         f"{bos}")
        if len(wide):
            parts.append(f"feature-wide outlier dim(s) {', '.join(map(str, wide.dim))} (massive at most positions, "
                         f"layers {int(wide.first_layer.min())}..{int(wide.last_layer.max())}, up to |x| = "
                         f"{wide.max_abs.max():.4g}) reported apart, not as where massive activations appear")
        return "; ".join(parts)


def _site_order(name: str) -> tuple[int, str]:
    """Site names in the order of `sites.POSITION_KINDS`."""
    return next((i for i, k in enumerate(sites.POSITION_KINDS) if name.startswith(k)), len(sites.POSITION_KINDS)), name


@dataclass(frozen=True, repr=False)
class LayerProfile(Result):
    """Top-k |x| and median |x| of each layer's residual stream, averaged over prompts (paper Fig. 2)."""

    VIEW = "profile:show_profile"

    top: Float[Tensor, "layer k"]
    median: Float[Tensor, "layer"]
    n_prompts: int
    model_name: str
    hook_names: tuple[str, ...] = (HOOK_TEMPLATE,)  # provenance: the hooks read, {layer} for every block
    prepend_bos: bool | None = None  # the BOS condition of the prompts (None: not recorded)

    @property
    def k(self) -> int:
        return self.top.shape[1]

    @property
    def jump_layer(self) -> int:
        """The layer whose top-1 magnitude rises most over the previous layer's (where massive values appear)."""
        top1 = self.top[:, 0].clamp(min=1e-6)
        return int((top1[1:] / top1[:-1]).argmax()) + 1 if len(top1) > 1 else 0

    def to_dataframe(self) -> pd.DataFrame:
        df = pd.DataFrame({"layer": range(len(self.median))})
        for i in range(self.k):
            df[f"top{i + 1}"] = self.top[:, i].numpy()
        df["median"] = self.median.numpy()
        return df

    def sentence(self) -> str:
        i = int(self.top[:, 0].argmax())
        return (f"{self.model_name}, {self.n_prompts} prompt(s) {_inputs.bos_words(self.prepend_bos)}: top-1 |x| peaks at {float(self.top[i, 0]):.4g} in "
                f"layer {i} (median {float(self.median[i]):.3g}); largest jump at layer {self.jump_layer}")


def scan_tokens(model: HookedModel, prompts: list[Tensor], *, threshold: float, ratio: float, k: int,
                batch_size: int, progress: bool | None) -> tuple[MassiveActivations, LayerProfile]:
    """The rule and the profile from the statistics of every block output (`engine.block_stats`: per prompt and
    layer, the median |x| and the top |x|). The rule can only pass entries among the top ones; where every kept
    candidate passes, the engine runs the batch again with more, so the result is exact."""
    n_layers, name, d_model = model.cfg.n_layers, model_name(model), model.cfg.d_model
    hits: list[np.ndarray] = []  # rows (prompt, layer, pos, dim, value, median)
    top_sum = np.zeros((n_layers, k))  # host-side bookkeeping in numpy: a dozen small ops per batch, each cheaper
    med_sum = np.zeros(n_layers)  # than torch's on a host that a small model's GPU scan is bound by
    nonfinite = np.zeros(n_layers, dtype=np.int64)  # non-finite entries among the kept top |x|
    mine = _dist.shard(len(prompts))  # under torchrun, this rank's contiguous share of the prompts
    bar = _inputs.progress_bar(None, progress, "scanning", total=len(prompts))
    batches = list(_inputs.batches(prompts[mine.start:mine.stop], batch_size=batch_size))
    str_toks: list[tuple[str, ...]] = [()] * len(mine)

    def mask(med: np.ndarray, topv: np.ndarray) -> np.ndarray:  # (layer, batch), (layer, batch, kk)
        return _rule.passes(topv, med[..., None], threshold=threshold, ratio=ratio)

    def more(stats: engine.Stats) -> bool:  # every kept candidate passes: there may be more hits
        return bool(mask(stats[0].numpy(), stats[1][..., -1:].numpy()).any())

    names = [hook.resid_post(l) for l in range(n_layers)]
    with contextlib.closing(engine.block_stats(model, [b.tokens for b in batches], hook_names=names, k=k,
                                               more=more)) as passes:
        for stats, batch in zip(passes, batches):  # passes first: the engine runs to its end (where it keeps
            # what its CUDA graphs' replays cost)
            for i, row in zip(batch.index, batch.tokens):
                str_toks[i] = _inputs.str_tokens(model, row)
            med, topv, topi, signed = (t.numpy() for t in stats)  # (layer, batch[, kk])
            hit = mask(med, topv)
            nonfinite[:] += (~np.isfinite(topv)).sum((1, 2))
            top_sum[:, : min(k, topv.shape[-1])] += topv[..., :k].sum(1, dtype=np.float64)
            med_sum[:] += med.sum(1, dtype=np.float64)
            l, b, j = hit.nonzero()
            if len(l):
                flat_idx = topi[l, b, j]
                hits.append(np.stack([np.asarray(batch.index)[b] + mine.start, l, flat_idx // d_model, flat_idx % d_model,
                                      signed[l, b, j], med[l, b]], 1).astype(np.float64))
            bar.update(len(batch.index) * _dist.world()[1])  # rank 0's bar counts the global work
    bar.close()
    if _dist.world()[1] > 1:  # exact merge: sums all-reduced, hits and token strings gathered in input order
        hits = _dist.concat(_dist.gather(hits))
        str_toks = _dist.concat(_dist.gather(str_toks))
        top_sum, med_sum, nonfinite = (_dist.sum_(torch.from_numpy(a)).numpy() for a in (top_sum, med_sum, nonfinite))
    rows = torch.from_numpy(np.concatenate(hits)) if hits else torch.zeros(0, 6, dtype=torch.float64)
    rows = rows[torch.argsort(rows[:, 0] * 1e12 + rows[:, 1] * 1e8 + rows[:, 2] * 1e5 + rows[:, 3])]
    if nonfinite.any():  # (numpy here; a tensor in the result)
        check_weights(model)  # NaN/inf weights raise; otherwise the activations overflow the dtype
        bad = [int(l) for l in nonfinite.nonzero()[0]]
        warnings.warn(
            f"non-finite residual entries in layers {bad[:8]}: the activations overflow "
            f"{model.cfg.dtype}. Massive values are reported as inf; load the model with dtype=torch.float32 "
            "(or bfloat16) to measure them.", RuntimeWarning, stacklevel=3,
        )
    found = MassiveActivations(
        prompt=rows[:, 0].long(), layer=rows[:, 1].long(), pos=rows[:, 2].long(), dim=rows[:, 3].long(),
        value=rows[:, 4].float(), median=rows[:, 5].float(), str_tokens=tuple(str_toks), threshold=float(threshold),
        ratio=float(ratio), model_name=name, n_layers=n_layers, d_model=d_model, nonfinite=torch.from_numpy(nonfinite),
    )
    n = len(prompts)
    profile = LayerProfile(top=torch.from_numpy(top_sum / n).float(), median=torch.from_numpy(med_sum / n).float(),
                           n_prompts=n, model_name=name)
    return found, profile


def scan(model: HookedModel, inputs: _inputs.Inputs, *, threshold: float = 100.0, ratio: float = 1000.0, k: int = 3,
         batch_size: int = 8, prepend_bos: bool | None = None,
         progress: bool | None = None) -> tuple[MassiveActivations, LayerProfile]:
    """Detection and layer profile from the same forward passes (what the CLI and benchmarks use)."""
    _rule.check(threshold, ratio)
    _inputs.check_int("k", k, 1)
    prompts = _inputs.tokenize(model, inputs, prepend_bos=prepend_bos)
    found, profile = scan_tokens(model, prompts, threshold=threshold, ratio=ratio, k=k, batch_size=batch_size,
                           progress=progress)
    bos = _inputs.bos_condition(model, inputs, prompts, prepend_bos)
    return dataclasses.replace(found, prepend_bos=bos), dataclasses.replace(profile, prepend_bos=bos)


def find_massive_activations(
    model: HookedModel,
    inputs: _inputs.Inputs,
    *,
    threshold: float = 100.0,
    ratio: float = 1000.0,
    batch_size: int = 8,
    prepend_bos: bool | None = None,
    progress: bool | None = None,
) -> MassiveActivations:
    """Every residual entry (block outputs) with |x| > threshold and |x| >= ratio x its layer's median |x|.

    `inputs` is a string, a list of strings or a (batch, pos) token tensor; `prepend_bos=None` does what the
    model's own tokenizer does (smollm2-135m: no BOS; gemma3-270m: BOS), and the result records the choice.
    Raising `threshold` or `ratio` can only remove hits. `summary()` and `sites()` say each site's kind
    (`mi_massive.sites`): a token's massive activation (start token, BOS, first delimiter, other) or a
    feature-wide outlier dim, which `first_layer` leaves out.

        >>> acts = find_massive_activations(model, ["Summer is warm.", "Winter is cold."])
        >>> acts.dims, acts.positions(prompt=1)
        ([5], [0])
    """
    return scan(model, inputs, threshold=threshold, ratio=ratio, batch_size=batch_size, prepend_bos=prepend_bos,
                progress=progress)[0]


def layer_profile(
    model: HookedModel,
    inputs: _inputs.Inputs,
    *,
    k: int = 3,
    batch_size: int = 8,
    prepend_bos: bool | None = None,
    progress: bool | None = None,
) -> LayerProfile:
    """Top-k |x| and median |x| per layer, averaged over prompts (the data of the paper's Fig. 2)."""
    return scan(model, inputs, k=k, batch_size=batch_size, prepend_bos=prepend_bos, progress=progress)[1]
