"""Detection, layer profile and constancy across images on Vision Transformers, with the paper's rule.

The results are the language models' `MassiveActivations` and `LayerProfile` (one "prompt" per image; the token
strings are "CLS", "reg k", "patch (r, c)"), so that `summary()`, `sites()`, `show()` and `save()` work unchanged.

    >>> from mi_massive.vision import find_massive_activations, sample_images
    >>> acts = find_massive_activations(model, sample_images(4))      # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from .. import _rule
from .._results import Result
from ..arch import hook
from ..detect import LayerProfile, MassiveActivations
from ..models import model_name
from . import _run
from .images import Layout, layout, prepare_images


def scan(model: Any, images: Any, *, threshold: float = 100.0, ratio: float = 1000.0, k: int = 3,
         batch_size: int = 8) -> tuple[MassiveActivations, LayerProfile]:
    """Every block output's massive entries (the paper's rule, per image) and the layer profile, from one pass."""
    _rule.check(threshold, ratio)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    pixels = prepare_images(model, images)
    L, D = model.cfg.n_layers, model.cfg.d_model
    lay = layout(model, pixels)
    hits: list[Tensor] = []  # rows (image, layer, pos, dim, value, median)
    top_sum, med_sum = torch.zeros(L, k, dtype=torch.float64), torch.zeros(L, dtype=torch.float64)
    nonfinite = torch.zeros(L, dtype=torch.long)
    offset = [0]

    def keep(layer: int):
        def fn(x: Tensor, hook: Any) -> None:
            a = x.detach().abs().float()  # (batch, pos, d_model)
            med = a.flatten(1).nan_to_num(posinf=torch.finfo(torch.float32).max).median(1).values  # (batch,): as
            # _rule.massive_mask takes it (inf as the largest float), computed once for the rule and the profile
            nonfinite[layer] += int((~torch.isfinite(a)).sum())
            top_sum[layer] += a.flatten(1).topk(min(k, a[0].numel()), dim=1).values.sum(0).double().cpu()
            med_sum[layer] += med.sum().double().cpu()
            b, p, d = _rule.passes(a, med[:, None, None], threshold=threshold, ratio=ratio).nonzero(as_tuple=True)
            if len(b):
                hits.append(torch.stack([(b + offset[0]).double(), torch.full_like(b, layer).double(), p.double(),
                                         d.double(), x[b, p, d].double(), med[b].double()], 1).cpu())
        return fn

    _run.forward(model, pixels, [(hook.resid_post(l), keep(l)) for l in range(L)], batch_size=batch_size,
                 on_batch=lambda start: offset.__setitem__(0, start))
    rows = torch.cat(hits) if hits else torch.zeros(0, 6, dtype=torch.float64)
    rows = rows[torch.argsort(rows[:, 0] * 1e12 + rows[:, 1] * 1e8 + rows[:, 2] * 1e5 + rows[:, 3])]
    name, n = model_name(model), len(pixels)
    found = MassiveActivations(
        prompt=rows[:, 0].long(), layer=rows[:, 1].long(), pos=rows[:, 2].long(), dim=rows[:, 3].long(),
        value=rows[:, 4].float(), median=rows[:, 5].float(), str_tokens=(lay.names(),) * n,
        threshold=float(threshold), ratio=float(ratio), model_name=name, n_layers=L, d_model=D, nonfinite=nonfinite,
    )
    profile = LayerProfile(top=(top_sum / n).float(), median=(med_sum / n).float(), n_prompts=n, model_name=name)
    return found, profile


def find_massive_activations(model: Any, images: Any, *, threshold: float = 100.0, ratio: float = 1000.0,
                             batch_size: int = 8) -> MassiveActivations:
    """Every block-output entry of every image with |x| > threshold and |x| >= ratio x that layer's median |x|.

        >>> find_massive_activations(model, sample_images(4)).sites()     # doctest: +SKIP
    """
    return scan(model, images, threshold=threshold, ratio=ratio, batch_size=batch_size)[0]


def layer_profile(model: Any, images: Any, *, k: int = 3, batch_size: int = 8) -> LayerProfile:
    """Top-k |x| and median |x| per layer, averaged over images (the paper's Fig. 2 for a ViT)."""
    return scan(model, images, k=k, batch_size=batch_size)[1]


def site_kind(lay: Layout, pos: int) -> str:
    """The constancy site a token belongs to: "CLS", "reg k", or "patches" (pooled: which patch varies by image)."""
    return "patches" if lay.kind(pos) == "patch" else lay.name(pos)


@dataclass(frozen=True, repr=False)
class TokenStats(Result):
    """Per massive site (CLS, a register, or the patches holding it) and dim: its value's mean, std and count
    across images at every layer. For "patches", each image's value is its largest-|x| patch in that dim."""

    VIEW = "interventions:show_result_table"  # the sentence and the table

    sites: tuple[tuple[str, int], ...]  # (token kind, dim)
    mean: Float[Tensor, "site layer"]
    std: Float[Tensor, "site layer"]
    count: Int[Tensor, "site"]  # images holding the site massive in some layer
    first_layer: Int[Tensor, "site"]
    n_images: int
    threshold: float
    ratio: float
    model_name: str

    @property
    def cv(self) -> Float[Tensor, "site layer"]:
        """std / |mean| across images (NaN with fewer than two images: no spread to measure)."""
        cv = self.std / self.mean.abs()
        return cv if self.n_images > 1 else torch.full_like(cv, float("nan"))

    def to_dataframe(self) -> pd.DataFrame:
        rows = [{"token": t, "dim": d, "layer": l, "mean": float(self.mean[i, l]), "std": float(self.std[i, l]),
                 "cv": float(self.cv[i, l]), "n_images": int(self.count[i])}
                for i, (t, d) in enumerate(self.sites) for l in range(self.mean.shape[1])]
        return pd.DataFrame(rows, columns=["token", "dim", "layer", "mean", "std", "cv", "n_images"])

    def summary(self) -> pd.DataFrame:
        """One row per site at its last layer."""
        df = self.to_dataframe()
        return df[df.layer == self.mean.shape[1] - 1].reset_index(drop=True)

    def sentence(self) -> str:
        if not self.sites:
            return f"no massive activations in {self.model_name} over {self.n_images} image(s)"
        last = self.mean.shape[1] - 1
        cv = (lambda i: "CV undefined (one image: no spread)") if self.n_images < 2 else (
            lambda i: f"CV {float(self.cv[i, last]):.2%}")
        parts = [f"{t} dim {d}: mean {float(self.mean[i, last]):.4g}, {cv(i)}" for i, (t, d) in enumerate(self.sites[:4])]
        return f"{self.model_name} over {self.n_images} image(s), last layer: " + "; ".join(parts)


def token_stats(model: Any, images: Any, *, threshold: float = 100.0, ratio: float = 1000.0,
                batch_size: int = 8) -> TokenStats:
    """How constant each massive activation is across images (paper Sec. 3, per token kind of a ViT)."""
    pixels = prepare_images(model, images)
    acts = find_massive_activations(model, pixels, threshold=threshold, ratio=ratio, batch_size=batch_size)
    lay = layout(model, pixels)
    df = acts.to_dataframe()
    df["site"] = [site_kind(lay, int(p)) for p in df.pos]
    sites = sorted({(s, int(d)) for s, d in zip(df.site, df.dim)}, key=lambda sd: (sd[0] == "patches", sd))
    L, n = model.cfg.n_layers, len(pixels)
    values = torch.full((len(sites), L, n), float("nan"), dtype=torch.float64)
    patches = torch.tensor(lay.patches, dtype=torch.long)
    offset = [0]

    def keep(layer: int):
        def fn(x: Tensor, hook: Any) -> None:
            for i, (s, d) in enumerate(sites):
                if s == "patches":
                    col = x[:, patches, d].double()  # (batch, patch)
                    v = col.gather(1, col.abs().argmax(1, keepdim=True))[:, 0]
                else:
                    v = x[:, lay.names().index(s), d].double()
                values[i, layer, offset[0]: offset[0] + len(x)] = v.cpu()
        return fn

    if sites:
        _run.forward(model, pixels, [(hook.resid_post(l), keep(l)) for l in range(L)], batch_size=batch_size,
                     on_batch=lambda start: offset.__setitem__(0, start))
    held = torch.tensor([df[(df.site == s) & (df.dim == d)].prompt.nunique() for s, d in sites], dtype=torch.long)
    first = torch.tensor([int(df[(df.site == s) & (df.dim == d)].layer.min()) for s, d in sites], dtype=torch.long)
    return TokenStats(sites=tuple(sites), mean=values.mean(-1).float(),
                      std=(values.std(-1) if n > 1 else torch.full(values.shape[:2], float("nan"))).float(),
                      count=held, first_layer=first, n_images=n, threshold=float(threshold), ratio=float(ratio),
                      model_name=model_name(model))
