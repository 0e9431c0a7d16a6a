"""Detection: residual-stream entries with |x| > threshold and |x| >= ratio x the layer's median |x|.

The paper's rule (Sun et al. 2024, Sec. 2), applied to every block output (``hook_resid_post``) of every
prompt. Statistics are computed inside the hooks, batch by batch: no activation cache is ever kept, so a
scan over thousands of prompts costs about one forward pass each. How the passes run (the bare Hugging Face
trunk, CUDA graphs, Triton statistics) is the engine's business (`mi_massive.engine`).

    >>> from mi_massive import load_model, find_massive_activations
    >>> model = load_model("smollm2-135m")                       # doctest: +SKIP
    >>> find_massive_activations(model, "Summer is warm.")        # doctest: +SKIP
    <MassiveActivations: 1 massive dimension (507) at 1 position ...>
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from . import _inputs, _rule, engine
from ._hooks import check_weights
from ._results import Result
from .arch import hook
from .models import model_name

HOOK_TEMPLATE = hook.resid_post_template


@dataclass(frozen=True, repr=False)
class MassiveActivations(Result):
    """Residual entries with |x| > threshold and |x| >= ratio x the layer's median |x| (per prompt)."""

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
    hook_template: str = HOOK_TEMPLATE

    def __len__(self) -> int:
        return len(self.value)

    @property
    def dims(self) -> list[int]:
        """Massive dimensions, most massive first."""
        df = self.to_dataframe()
        if df.empty:
            return []
        return [int(d) for d in df.assign(a=df.value.abs()).groupby("dim").a.max().sort_values(ascending=False).index]

    def positions(self, prompt: int = 0) -> list[int]:
        """Token positions holding a massive activation in `prompt`."""
        return sorted({int(p) for p in self.pos[self.prompt == prompt]})

    @property
    def first_layer(self) -> int | None:
        return int(self.layer.min()) if len(self) else None

    def sites(self) -> pd.DataFrame:
        """One row per (prompt, pos, dim): where it first and last appears, its peak value."""
        df = self.to_dataframe()
        if df.empty:
            return pd.DataFrame(columns=["prompt", "pos", "token", "dim", "first_layer", "last_layer", "peak"])
        g = df.groupby(["prompt", "pos", "token", "dim"], sort=True)
        return g.agg(
            first_layer=("layer", "min"), last_layer=("layer", "max"),
            peak=("value", lambda v: v.iloc[v.abs().argmax()]),
        ).reset_index()

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
        """One row per massive dimension: first and last layer, positions and tokens, magnitude range."""
        df = self.to_dataframe()
        cols = ["dim", "first_layer", "last_layer", "positions", "tokens", "min_abs", "max_abs", "n_prompts", "n_hits"]
        if df.empty:
            return pd.DataFrame(columns=cols)
        rows = []
        for dim, g in df.groupby("dim"):
            rows.append({
                "dim": int(dim), "first_layer": int(g.layer.min()), "last_layer": int(g.layer.max()),
                "positions": sorted(set(g.pos.tolist())), "tokens": sorted(set(g.token.tolist())),
                "min_abs": float(g.value.abs().min()), "max_abs": float(g.value.abs().max()),
                "n_prompts": int(g.prompt.nunique()), "n_hits": len(g),
            })
        return pd.DataFrame(rows, columns=cols).sort_values("max_abs", ascending=False).reset_index(drop=True)

    def sentence(self) -> str:
        if not len(self):
            return (f"no massive activations in {self.model_name} over {len(self.str_tokens)} prompt(s) "
                    f"(|x| > {self.threshold:g} and >= {self.ratio:g}x median)")
        s = self.summary()
        dims = ", ".join(str(d) for d in s.dim[:5]) + ("..." if len(s) > 5 else "")
        npos = len(self.sites()[["prompt", "pos"]].drop_duplicates())
        return (f"{len(s)} massive dimension(s) ({dims}) at {npos} (prompt, position) site(s) in {self.model_name}, "
                f"layers {self.first_layer}..{int(self.layer.max())}, up to |x| = {s.max_abs.max():.4g}")


@dataclass(frozen=True, repr=False)
class LayerProfile(Result):
    """Top-k |x| and median |x| of each layer's residual stream, averaged over prompts (paper Fig. 2)."""

    top: Float[Tensor, "layer k"]
    median: Float[Tensor, "layer"]
    n_prompts: int
    model_name: str
    hook_template: str = HOOK_TEMPLATE

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
        return (f"{self.model_name}, {self.n_prompts} prompt(s): top-1 |x| peaks at {float(self.top[i, 0]):.4g} in "
                f"layer {i} (median {float(self.median[i]):.3g}); largest jump at layer {self.jump_layer}")


def _progress(total: int, progress: bool | None, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not (progress if progress is not None else total > 8))


def _scan(model: Any, prompts: list[Tensor], *, threshold: float, ratio: float, k: int, batch_size: int,
          progress: bool | None) -> tuple[MassiveActivations, LayerProfile]:
    """The rule and the profile from the statistics of every block output (`engine.block_stats`: per prompt and
    layer, the median |x| and the top |x|). The rule can only pass entries among the top ones; where every kept
    candidate passes, the engine runs the batch again with more, so the result is exact."""
    n_layers, name, d_model = model.cfg.n_layers, model_name(model), model.cfg.d_model
    hits: list[np.ndarray] = []  # rows (prompt, layer, pos, dim, value, median)
    top_sum = np.zeros((n_layers, k))  # host-side bookkeeping in numpy: a dozen small ops per batch, each cheaper
    med_sum = np.zeros(n_layers)  # than torch's on a host that a small model's GPU scan is bound by
    nonfinite = np.zeros(n_layers, dtype=np.int64)  # non-finite entries among the kept top |x|
    bar = _progress(len(prompts), progress, "scanning")
    batches = list(_inputs.batches(prompts, batch_size=batch_size))
    str_toks: list[tuple[str, ...]] = [()] * len(prompts)

    def mask(med: np.ndarray, topv: np.ndarray) -> np.ndarray:  # (layer, batch), (layer, batch, kk)
        return _rule.passes(topv, med[..., None], threshold=threshold, ratio=ratio)

    def more(stats: engine.Stats) -> bool:  # every kept candidate passes: there may be more hits
        return bool(mask(stats[0].numpy(), stats[1][..., -1:].numpy()).any())

    names = [hook.resid_post(l) for l in range(n_layers)]
    with contextlib.closing(engine.block_stats(model, [b.tokens for b in batches], hook_names=names, k=k,
                                               more=more)) as passes:
        for batch, stats in zip(batches, passes):
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
                hits.append(np.stack([np.asarray(batch.index)[b], l, flat_idx // d_model, flat_idx % d_model,
                                      signed[l, b, j], med[l, b]], 1).astype(np.float64))
            bar.update(len(batch.index))
    bar.close()
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


def scan(model: Any, inputs: _inputs.Inputs, *, threshold: float = 100.0, ratio: float = 1000.0, k: int = 3,
         batch_size: int = 8, prepend_bos: bool | None = None,
         progress: bool | None = None) -> tuple[MassiveActivations, LayerProfile]:
    """Detection and layer profile from the same forward passes (what the CLI and benchmarks use)."""
    _rule.check(threshold, ratio)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    prompts = _inputs.tokenize(model, inputs, prepend_bos=prepend_bos)
    return _scan(model, prompts, threshold=threshold, ratio=ratio, k=k, batch_size=batch_size, progress=progress)


def find_massive_activations(
    model: Any,
    inputs: _inputs.Inputs,
    *,
    threshold: float = 100.0,
    ratio: float = 1000.0,
    batch_size: int = 8,
    prepend_bos: bool | None = None,
    progress: bool | None = None,
) -> MassiveActivations:
    """Every residual entry (block outputs) with |x| > threshold and |x| >= ratio x its layer's median |x|.

    `inputs` is a string, a list of strings or a (batch, pos) token tensor; `prepend_bos=None` follows the
    model (BOS prepended). Raising `threshold` or `ratio` can only remove hits.

        >>> acts = find_massive_activations(model, ["Summer is warm.", "Winter is cold."])   # doctest: +SKIP
        >>> acts.summary()                                                                    # doctest: +SKIP
    """
    return scan(model, inputs, threshold=threshold, ratio=ratio, batch_size=batch_size, prepend_bos=prepend_bos,
                progress=progress)[0]


def layer_profile(
    model: Any,
    inputs: _inputs.Inputs,
    *,
    k: int = 3,
    batch_size: int = 8,
    prepend_bos: bool | None = None,
    progress: bool | None = None,
) -> LayerProfile:
    """Top-k |x| and median |x| per layer, averaged over prompts (the data of the paper's Fig. 2)."""
    return scan(model, inputs, k=k, batch_size=batch_size, prepend_bos=prepend_bos, progress=progress)[1]
