"""Set-to-zero / set-to-mean per token kind (registers, CLS, patches), and what it does to the model's output.

The paper's Fix-Reg-Mean (Sec. 5): replacing every register's features, at every layer, by their mean over images
keeps a DINOv2-with-registers model's output, while zeroing them changes it: registers act as learned biases.
`Intervention` (language models) writes one value per (layer, dim) at the starting token and one at every other
position; a ViT needs one per register and patches found per image, so the vision intervention is its own
frozen result, applied by the same kind of context manager (hooks that must fire, removed in `finally`).

    >>> fix = fix_reg_mean(model, sample_images(8))        # doctest: +SKIP
    >>> fix.to_dataframe()                                 # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from .. import _rule
from .._hooks import hooked
from .._results import Result
from ..arch import hook
from ..models import model_name
from . import _run
from .detect import find_massive_activations, site_kind
from .images import layout, prepare_images

TOKENS = ("registers", "cls", "patches")
MODES = ("zero", "mean")


@dataclass(frozen=True, repr=False)
class TokenIntervention(Result):
    """Overwrite `dims` of one kind of token at the output of `layers`: with zero, or with each token's mean over
    the calibration images (`value[layer, token, dim]`; for patches one value per dim, written where the rule finds
    the dim massive in a patch of the image at hand)."""

    VIEW = "interventions:show_result_table"  # the sentence and the table

    tokens: str
    mode: str
    positions: tuple[int, ...]  # CLS / register positions; () for patches (found per image)
    dims: tuple[int, ...]
    layers: tuple[int, ...]
    value: Float[Tensor, "layer token dim"]
    n_calibration: int
    threshold: float
    ratio: float
    model_name: str

    def to_dataframe(self) -> pd.DataFrame:
        rows = [{"layer": l, "token": i, "dim": d, "value": float(self.value[l, i, j])}
                for l in self.layers for i in range(self.value.shape[1]) for j, d in enumerate(self.dims)]
        return pd.DataFrame(rows, columns=["layer", "token", "dim", "value"])

    def sentence(self) -> str:
        what = "set to zero" if self.mode == "zero" else f"set to their mean over {self.n_calibration} image(s)"
        dims = "all dims" if len(self.dims) > 8 else f"dims {list(self.dims)}"
        return (f"{self.tokens} ({dims}) {what} at the output of blocks {self.layers[0]}..{self.layers[-1]} "
                f"in {self.model_name}")


def build_token_intervention(
    model: Any,
    calibration: Any,
    *,
    tokens: str = "registers",
    mode: str = "mean",
    dims: str | Sequence[int] = "all",
    layers: Sequence[int] | None = None,
    threshold: float = 100.0,
    ratio: float = 1000.0,
    batch_size: int = 8,
) -> TokenIntervention:
    """An intervention on one kind of token. `dims`: "all" (the whole feature vector, as Fix-Reg-Mean; for patches
    their massive dims), "massive" (the dims the rule finds at that kind of token in the calibration images) or a
    list. `layers`: every block by default (for patches, every block from the first where one is massive: which
    patches hold them is decided there, per image, by the rule). Means are over the calibration images (for patches,
    over the massive patch entries)."""
    _rule.check(threshold, ratio)
    if tokens not in TOKENS:
        raise ValueError(f"tokens must be one of {', '.join(TOKENS)}, got {tokens!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    pixels = prepare_images(model, calibration)
    lay = layout(model, pixels)
    L, D = model.cfg.n_layers, model.cfg.d_model
    positions = {"cls": (0,), "registers": lay.registers, "patches": ()}[tokens]
    if tokens == "registers" and not positions:
        raise ValueError(f"{model_name(model)} has no register tokens: intervene on tokens='cls' or 'patches'")
    first = 0
    if dims == "massive" or tokens == "patches":
        acts = find_massive_activations(model, pixels, threshold=threshold, ratio=ratio, batch_size=batch_size)
        df = acts.to_dataframe()
        kind = [lay.kind(int(p)) for p in df.pos]
        want = {"cls": "cls", "registers": "register", "patches": "patch"}[tokens]
        found = sorted({int(d) for d, k in zip(df.dim, kind) if k == want})
        if tokens == "patches" and found:  # found per image by the rule: from the block where they first appear
            first = int(df.layer[[k == want for k in kind]].min())
        if dims in ("massive", "all") and not found and tokens == "patches":
            raise ValueError(f"no massive activation at a patch of {model_name(model)} in these images: patches are "
                             "intervened on where the rule finds them")
        if dims == "massive":
            if not found:
                raise ValueError(f"no massive activation at the {tokens} of {model_name(model)} in these images")
            dims = found
        elif dims == "all":
            dims = found  # patches: their massive dims
    dims = tuple(range(D)) if dims == "all" else tuple(int(d) for d in dims)
    layers = tuple(range(first, L)) if layers is None else tuple(sorted({int(l) for l in layers}))
    if not layers or not all(0 <= l < L for l in layers):
        raise ValueError(f"layers must be a non-empty list of blocks in 0..{L - 1}, got {layers!r}")
    if not dims or not all(0 <= d < D for d in dims):
        raise ValueError(f"dims must be 'all', 'massive' or dims in 0..{D - 1}, got {dims!r}")
    n_tok = max(len(positions), 1)
    value = torch.zeros(L, n_tok, len(dims))
    if mode == "mean":
        sums = torch.zeros(L, n_tok, len(dims), dtype=torch.float64)
        counts = torch.zeros(L, 1, len(dims), dtype=torch.float64)
        idx = torch.tensor(dims)

        def keep(layer: int):
            def fn(x: Tensor, hook: Any) -> None:
                if positions:
                    sums[layer] += x[:, list(positions)][..., idx].double().sum(0).cpu()
                    counts[layer] += len(x)
                else:
                    sel = _patch_mask(x, lay.n_prefix, idx, threshold, ratio)  # (batch, pos, dim)
                    sums[layer, 0] += (x[..., idx].double() * sel).sum((0, 1)).cpu()
                    counts[layer, 0] += sel.sum((0, 1)).double().cpu()
            return fn

        _run.forward(model, pixels, [(hook.resid_post(l), keep(l)) for l in range(L)], batch_size=batch_size)
        value = (sums / counts.clamp(min=1)).float()
    return TokenIntervention(tokens=tokens, mode=mode, positions=tuple(positions), dims=dims, layers=layers,
                             value=value, n_calibration=len(pixels), threshold=float(threshold), ratio=float(ratio),
                             model_name=model_name(model))


def _patch_mask(x: Tensor, n_prefix: int, idx: Tensor, threshold: float, ratio: float) -> Tensor:
    """(batch, pos, len(idx)) float: patch tokens where the rule holds in each of the dims."""
    m = _rule.massive_mask(x, threshold=threshold, ratio=ratio)[..., idx.to(x.device)]
    m[:, :n_prefix] = False
    return m.to(x.dtype)


def intervention_hooks(model: Any, iv: TokenIntervention) -> list[tuple[str, Any]]:
    if iv.model_name != model_name(model) or iv.value.shape[0] != model.cfg.n_layers:
        raise ValueError(f"the intervention was built for {iv.model_name}, not {model_name(model)}")
    from .models import n_registers

    idx = torch.tensor(iv.dims)
    n_prefix = 1 + n_registers(model)
    masks: dict[str, Tensor] = {}

    def make(layer: int):
        def fn(x: Tensor, hook: Any) -> Tensor:
            x = x.clone()  # (batch, pos, d_model)
            v = iv.value[layer].to(x.device, x.dtype)  # (token, dim)
            if iv.positions:
                pos = torch.tensor(iv.positions, device=x.device)
                x[:, pos[:, None], idx.to(x.device)] = v.expand(len(x), -1, -1)
                return x
            if layer == iv.layers[0] or "patches" not in masks:  # patches: found where the first block writes them
                masks["patches"] = _patch_mask(x, n_prefix, idx, iv.threshold, iv.ratio) > 0
            m = masks["patches"]
            sub = x[..., idx.to(x.device)]
            x[..., idx.to(x.device)] = torch.where(m, v[0].expand_as(sub), sub)
            return x
        return fn

    return [(hook.resid_post(l), make(l)) for l in iv.layers]


@contextmanager
def intervene_tokens(model: Any, iv: TokenIntervention) -> Iterator[Any]:
    """Apply `iv` to every forward pass in the body; the hooks come off in `finally`, and one that never fired
    raises."""
    if not isinstance(iv, TokenIntervention):
        raise TypeError(f"expected a TokenIntervention from build_token_intervention, got {type(iv).__name__}")
    with hooked(model, intervention_hooks(model, iv)):
        yield model


@dataclass(frozen=True, repr=False)
class OutputChange(Result):
    """How an intervention changes the model's output on each image: relative L2 change and cosine to the clean
    output, and for a classifier whether the top-1 class is kept."""

    VIEW = "interventions:show_result_table"  # the sentence and the table

    interventions: tuple[str, ...]  # each intervention's sentence
    kind: str  # "classifier" or "embedding"
    relative_change: Float[Tensor, "intervention image"]  # |out' - out| / |out|
    cosine: Float[Tensor, "intervention image"]
    top1_kept: Float[Tensor, "intervention image"]  # 1/0; NaN for an embedding model (no classes)
    model_name: str

    def to_dataframe(self) -> pd.DataFrame:
        n = self.relative_change.shape[1]
        return pd.DataFrame([{"intervention": name, "relative_change": float(self.relative_change[i].mean()),
                              "cosine": float(self.cosine[i].mean()), "top1_agreement": float(self.top1_kept[i].mean()),
                              "n_images": n} for i, name in enumerate(self.interventions)])

    def sentence(self) -> str:
        df = self.to_dataframe()
        parts = [f"{r.intervention}: output changes by {r.relative_change:.3g} (cosine {r.cosine:.4f}"
                 + (f", top-1 kept on {r.top1_agreement:.0%})" if self.kind == "classifier" else ")")
                 for r in df.itertuples()]
        return f"{self.model_name} ({self.kind}), {self.relative_change.shape[1]} image(s): " + "; ".join(parts)


def output_change(model: Any, images: Any, interventions: Sequence[TokenIntervention] | TokenIntervention, *,
                  batch_size: int = 8) -> OutputChange:
    """The metric that fits a Vision Transformer where perplexity fits a language model: per intervention, the
    relative change and cosine of the output (logits or embedding), and top-1 agreement for a classifier."""
    ivs = (interventions,) if isinstance(interventions, TokenIntervention) else tuple(interventions)
    if not ivs:
        raise ValueError("give at least one intervention")
    pixels = prepare_images(model, images)
    clean = _run.forward(model, pixels, batch_size=batch_size)
    rel, cos, top = [], [], []
    kind = _run.output_kind(model)
    for iv in ivs:
        out = _run.forward(model, pixels, intervention_hooks(model, iv), batch_size=batch_size)
        rel.append((out - clean).norm(dim=-1) / clean.norm(dim=-1))
        cos.append(torch.nn.functional.cosine_similarity(out, clean, dim=-1))
        top.append((out.argmax(-1) == clean.argmax(-1)).float() if kind == "classifier"
                   else torch.full((len(pixels),), float("nan")))
    return OutputChange(interventions=tuple(iv.sentence() for iv in ivs), kind=kind, relative_change=torch.stack(rel),
                        cosine=torch.stack(cos), top1_kept=torch.stack(top), model_name=model_name(model))


def fix_reg_mean(model: Any, images: Any, *, calibration: Any = None, batch_size: int = 8) -> OutputChange:
    """Fix-Reg-Mean against zeroing: every register's features at every block output set to their mean over
    `calibration` (default: the same images), then set to zero; the output change of each on `images`."""
    calibration = images if calibration is None else calibration
    mean = build_token_intervention(model, calibration, tokens="registers", mode="mean", batch_size=batch_size)
    zero = build_token_intervention(model, calibration, tokens="registers", mode="zero", batch_size=batch_size)
    return output_change(model, images, [mean, zero], batch_size=batch_size)
