"""Set massive activations to zero, to their mean or to a value, inside a context manager that restores the model.

An `Intervention` says which residual entries to overwrite: massive dims, the blocks whose output
(``hook_resid_post``) is set, and the positions. Positions are found per input while the model runs
(``positions="massive"``: where the paper's rule holds in the dim at the first intervened block), or are
the starting token (``"first_token"``) or explicit. Means come from `massive_stats` on calibration text.

Some models build the value up over many blocks (Gemma-3's BOS dim 163 grows for ten blocks), so that a
value removed in one block is rebuilt by the next ones. `build_intervention` measures this: after zeroing
in the single block where the value appears, how much of the clean value comes back at later layers. If
it comes back, it warns, records it (`rebuilt`, `recovery`) and, with ``layers="auto"``, sets the value in
every block from its first to its last massive layer.

    >>> from mi_massive.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> iv = build_intervention(model, ["Summer is warm.", "Winter is cold."], mode="mean")
    >>> with intervene(model, iv):
    ...     loss = model("The sky is blue.", return_type="loss")
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from . import _inputs
from ._hooks import HookFn, hooked
from ._results import Result
from ._rule import check as _check_rule
from ._rule import massive_mask
from ._types import HookedModel
from .arch import hook
from .constancy import MassiveStats, massive_stats, truncated_prompts
from .detect import HOOK_TEMPLATE
from .models import model_name

MODES = ("zero", "mean", "value", "control")


@dataclass(frozen=True, repr=False)
class Intervention(Result):
    """Which residual entries to overwrite, and with what; apply it with `intervene(model, iv)`.

    `first_value[layer, i]` is written at position 0 (the starting token, or BOS), `other_value[layer, i]`
    at the other selected positions (delimiters). For the control, `targets` are random ordinary dims
    zeroed at the positions where the massive `dims` are found.
    """

    VIEW = "interventions:show_result_table"

    mode: str
    dims: tuple[int, ...]  # massive dims: the positions are found in these
    targets: tuple[int, ...]  # dims written: equal to dims except for the control
    layers: tuple[tuple[int, ...], ...]  # per dim, the blocks whose output is set
    first_value: Float[Tensor, "layer dim"]
    other_value: Float[Tensor, "layer dim"]
    positions: str | tuple[int, ...]  # "massive", "first_token" or explicit positions
    prepend_bos: bool | None  # the BOS setting of the calibration (means depend on it)
    rebuilt: tuple[bool, ...] | None  # per dim: a single-block zero is undone by later blocks (None: not checked)
    recovery: Float[Tensor, "layer dim"] | None  # |x| after zeroing in the first block / |x| clean, at the same entries
    threshold: float
    ratio: float
    model_name: str
    hook_names: tuple[str, ...] = (HOOK_TEMPLATE,)  # provenance: the hooks written, {layer} for `layers`
    trivial: str = ""  # why the mean written at position 0 is that token's clean value by construction (one
    # distinct starting token in the calibration), else "": where nothing else is written, the row is no evidence
    first_token: str | None = None  # that starting token (perplexity checks that its inputs start with it too)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (dim, block): what is written there."""
        rows = [{"dim": d, "target": t, "layer": l, "first_value": float(self.first_value[l, i]),
                 "other_value": float(self.other_value[l, i]),
                 "rebuilt": None if self.rebuilt is None else self.rebuilt[i]}
                for i, (d, t, ls) in enumerate(zip(self.dims, self.targets, self.layers)) for l in ls]
        return pd.DataFrame(rows, columns=["dim", "target", "layer", "first_value", "other_value", "rebuilt"])

    def describe(self) -> str:
        where = []
        for d, t, ls in zip(self.dims, self.targets, self.layers):
            blocks = f"block {ls[0]}" if len(ls) == 1 else f"blocks {ls[0]}..{ls[-1]}"
            who = f"dim {t} (at dim {d}'s positions)" if t != d else f"dim {d}"
            where.append(f"{who} in {blocks}")
        what = {"zero": "set to zero", "mean": "set to their mean", "value": "set to a value",
                "control": "control: ordinary dims set to zero"}[self.mode]
        return f"{what}: " + ", ".join(where) + f", positions {self.positions!r}"

    def sentence(self) -> str:
        s = f"{self.describe()} in {self.model_name}"
        if self.rebuilt and any(self.rebuilt):
            s += f"; rebuilt by later blocks after a single-block zero: dims {[d for d, r in zip(self.dims, self.rebuilt) if r]}"
        if self.trivial:
            s += f"; trivial: {self.trivial}"
        return s


def _positions_mask(x: Tensor, dim: int, iv: Intervention) -> Tensor:
    """(batch, pos) bool: where to write, decided on this batch's activations."""
    b, p, _ = x.shape
    mask = torch.zeros(b, p, dtype=torch.bool, device=x.device)
    if iv.positions == "massive":
        return massive_mask(x, threshold=iv.threshold, ratio=iv.ratio)[..., dim]
    if iv.positions == "first_token":
        mask[:, 0] = True
        return mask
    mask[:, [q % p for q in iv.positions if -p <= q < p]] = True  # negative: from this prompt's end
    return mask


def intervention_hooks(model: HookedModel, iv: Intervention) -> list[tuple[str, HookFn]]:
    """The forward hooks that apply `iv` (positions decided afresh on every forward pass)."""
    if iv.model_name != model_name(model) or iv.first_value.shape[0] != model.cfg.n_layers:
        raise ValueError(f"the intervention was built for {iv.model_name}, not {model_name(model)}")
    masks: dict[int, Tensor] = {}
    by_layer: dict[int, list[int]] = {}
    for i, ls in enumerate(iv.layers):
        for l in ls:
            by_layer.setdefault(l, []).append(i)

    def make(layer: int) -> HookFn:
        def fn(x: Tensor, hook: Any) -> Tensor:  # `hook`: TransformerLens passes it by keyword
            x = x.clone()  # (batch, pos, d_model)
            for i in by_layer[layer]:
                if layer == iv.layers[i][0]:
                    masks[i] = _positions_mask(x, iv.dims[i], iv)
                mask = masks[i]
                if mask.shape != x.shape[:2]:
                    raise RuntimeError(f"block {layer} ran before block {iv.layers[i][0]} in this forward pass")
                vals = torch.full(mask.shape, float(iv.other_value[layer, i]), dtype=x.dtype, device=x.device)
                vals[:, 0] = float(iv.first_value[layer, i])
                t = iv.targets[i]
                x[..., t] = torch.where(mask, vals, x[..., t])
            return x

        return fn

    return [(hook.resid_post(l), make(l)) for l in sorted(by_layer)]


class _Intervening:
    """`intervene`'s context manager; one object may be entered again (and nested), each time afresh."""

    def __init__(self, model: HookedModel, intervention: Intervention) -> None:
        intervention_hooks(model, intervention)  # checks it was built for this model, before any body runs
        self.model, self.intervention, self._open = model, intervention, []

    def __enter__(self) -> Any:
        cm = hooked(self.model, intervention_hooks(self.model, self.intervention))
        cm.__enter__()
        self._open.append(cm)
        return self.model

    def __exit__(self, *exc: Any) -> bool | None:
        return self._open.pop().__exit__(*exc)


def intervene(model: HookedModel, intervention: Intervention) -> _Intervening:
    """Apply `intervention` to every forward pass in the body; hooks come off in `finally`, and a hook that
    never fired raises. The returned object can be entered again.

        >>> iv = build_intervention(model, ["Summer is warm.", "Winter is cold."])
        >>> with intervene(model, iv):
        ...     logits = model("Summer is warm.")
    """
    _inputs.check_model(model)
    if not isinstance(intervention, Intervention):
        raise TypeError(f"intervention must be an Intervention from build_intervention, got "
                        f"{type(intervention).__name__}")
    return _Intervening(model, intervention)


def _recovery(model: HookedModel, prompts: list[Tensor], iv: Intervention, batch_size: int) -> Tensor:
    """Per (layer, dim): mean over the intervened entries of |x| with `iv` (zero, first block only) / |x| clean."""
    L = model.cfg.n_layers
    single = replace(iv, mode="zero", targets=iv.dims, layers=tuple(ls[:1] for ls in iv.layers),
                     first_value=torch.zeros_like(iv.first_value), other_value=torch.zeros_like(iv.other_value))
    names = [hook.resid_post(l) for l in range(L)]
    num = torch.zeros(L, len(iv.dims), dtype=torch.float64)
    den = torch.zeros_like(num)
    for batch in _inputs.batches(prompts, batch_size=batch_size):
        runs = []
        for hooks in ([], intervention_hooks(model, single)):
            cache: dict[str, Tensor] = {}
            saves = [(n, lambda x, h, n=n: cache.__setitem__(n, x.detach().float().cpu())) for n in names]
            with torch.inference_mode(), hooked(model, hooks + saves):
                model(batch.tokens.to(model.cfg.device), return_type=None)
            runs.append(torch.stack([cache[n] for n in names]))  # (layer, batch, pos, d_model)
        clean, zeroed = runs
        for i, (d, ls) in enumerate(zip(iv.dims, iv.layers)):
            mask = _positions_mask(clean[ls[0]], d, iv)  # (batch, pos): same entries the hook chose
            num[:, i] += (zeroed[..., d].abs() * mask).sum((1, 2)).double()
            den[:, i] += (clean[..., d].abs() * mask).sum((1, 2)).double()
    rec = (num / den).float()
    for i, ls in enumerate(iv.layers):
        rec[: ls[0] + 1, i] = float("nan")  # only later layers can rebuild
    return rec


def _check_position(p: Any, n_ctx: int) -> int:
    """An explicit position, kept as given: a negative one counts from each prompt's end when the hooks run."""
    _inputs.check_index("pos", p, n_ctx)  # an int within the context
    return p


def _layer_list(kind: str, value: Any, n_layers: int) -> tuple[int, ...]:
    items = [value] if isinstance(value, int) else list(value)
    if not items:
        raise ValueError(f"{kind} must not be empty")
    return tuple(sorted({_inputs.check_index("layer", l, n_layers) for l in items}))


def build_intervention(
    model: HookedModel,
    inputs: _inputs.Inputs,
    *,
    mode: str = "zero",
    dims: Sequence[int] | None = None,
    layers: str | int | Sequence[int] | dict[int, Sequence[int]] = "auto",
    stats: MassiveStats | None = None,
    positions: str | Sequence[int] = "massive",
    value: float | Sequence[float] | None = None,
    prepend_bos: bool | None = None,
    rebuilt_at: float = 0.5,
    check_rebuild: bool = True,
    max_tokens: int = 64,
    n_check: int = 8,
    seed: int = 0,
    threshold: float = 100.0,
    ratio: float = 1000.0,
    progress: bool | None = None,
) -> Intervention:
    """An intervention on the massive activations found in the calibration text `inputs` (a string, a list of
    strings or a token tensor), held apart from the text it is used on.

    mode: "zero", "mean" (per-layer means at the starting token and at other massive positions, measured on
    the calibration text), "value" (`value`: one number or one per dim) or "control" (as many random
    non-massive dims, zeroed at the same positions and blocks). layers: "auto" (the block where each dim
    first becomes massive; every block up to its last massive layer if later blocks rebuild it), "first",
    "range", a block, a list of blocks, or {dim: blocks}. positions: "massive", "first_token" or a list of
    positions; a negative position counts from each prompt's end, as in Python (-1: its last token). `stats` (massive_stats of the calibration text)
    saves measuring them again. `prepend_bos=None` does what the model's own tokenizer does.

        >>> iv = build_intervention(model, ["Summer is warm.", "Winter is cold."], mode="mean")  # or load_corpus(...)
        >>> iv.dims
        (5,)
    """
    _inputs.check_model(model)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if dims is not None and (isinstance(dims, (int, str)) or not isinstance(dims, Sequence)):
        raise TypeError(f"dims must be a list of dims or None, got {dims!r}" +
                        (f" (write dims=[{dims}])" if isinstance(dims, int) else ""))
    for name, v, low in (("n_check", n_check, 0), ("max_tokens", max_tokens, 2), ("seed", seed, None)):
        _inputs.check_int(name, v, low)
    if not isinstance(rebuilt_at, (int, float)) or isinstance(rebuilt_at, bool) or not 0 < rebuilt_at:
        raise ValueError(f"rebuilt_at must be a positive number (a share of the clean value), got {rebuilt_at!r}")
    if not isinstance(check_rebuild, bool):
        raise TypeError(f"check_rebuild must be True or False, got {check_rebuild!r}")
    _check_rule(threshold, ratio)
    _inputs.check_flag("prepend_bos", prepend_bos)
    _inputs.check_flag("progress", progress)
    if mode == "value" and value is None:
        raise ValueError('mode="value" needs value= (a number or one per dim)')
    if positions not in ("massive", "first_token") and (isinstance(positions, str) or not len(positions)):
        raise ValueError(f'positions must be "massive", "first_token" or a list of positions, got {positions!r}')
    L, D = model.cfg.n_layers, model.cfg.d_model
    bos = _inputs.resolve_bos(model, prepend_bos)  # None: what the model's own tokenizer does
    if stats is None:
        stats = massive_stats(model, inputs, prepend_bos=(bos,), max_tokens=max_tokens, threshold=threshold,
                              ratio=ratio, progress=progress)
    prompts = truncated_prompts(model, inputs, prepend_bos=bos, max_tokens=max_tokens)[:n_check]
    si = stats.setting(bos)
    found = [d for d in stats.dims if int(stats.first_layer[si, stats.dims.index(d)]) >= 0]
    dims = tuple(found if dims is None else (_inputs.check_index("dim", d, D) for d in dims))
    if not dims and stats.excluded_dims:
        raise ValueError(f"dims {list(stats.excluded_dims)[:5]} are massive in the calibration text of "
                         f"{stats.model_name} but at too many of its positions after the first to be a bias term (a "
                         "scale, not a token-specific bias): pass dims= and layers= to set them anyway")
    if not dims:
        raise ValueError(f"no massive dims in the calibration text of {stats.model_name} (prepend_bos={bos}); "
                         "pass dims= and layers=")
    spans = []
    for d in dims:
        j = stats.dims.index(d) if d in stats.dims else None
        first, last = (-1, -1) if j is None else (int(stats.first_layer[si, j]), int(stats.last_layer[si, j]))
        spans.append((first, last))
        if first < 0 and (isinstance(layers, str) or positions == "massive"):
            raise ValueError(f"dim {d} is never massive in the calibration text: pass layers= (blocks) and positions=")
    if isinstance(layers, str):
        if layers not in ("auto", "first", "range"):
            raise ValueError(f'layers must be "auto", "first", "range", a block or a list of blocks, got {layers!r}')
        per_dim = [tuple(range(f, l + 1)) if layers == "range" else (f,) for f, l in spans]
    elif isinstance(layers, dict):
        if set(layers) != set(dims):
            raise ValueError(f"layers as a dict needs one entry per dim {list(dims)}, got keys {sorted(layers)}")
        per_dim = [_layer_list(f"layers[{d}]", layers[d], L) for d in dims]
    else:
        per_dim = [_layer_list("layers", layers, L)] * len(dims)
    if positions == "massive":
        for d, (f, _), ls in zip(dims, spans, per_dim):
            if ls[0] < f:
                raise ValueError(f'positions="massive" finds dim {d} where it is massive, from block {f}; block {ls[0]} '
                                 'comes earlier: start there or pass positions="first_token" or a list')
    pos = positions if isinstance(positions, str) else tuple(_check_position(p, model.cfg.n_ctx) for p in positions)
    first_value = torch.zeros(L, len(dims))
    other_value = torch.zeros(L, len(dims))
    if mode == "mean":
        missing = [d for d in dims if d not in stats.dims]
        if missing:
            raise ValueError(f"no calibration statistics for dims {missing}: they are not massive there")
        idx = [stats.dims.index(d) for d in dims]
        first_value = stats.mean[si, 0][:, idx].clone()
        other = stats.mean[si, 1][:, idx]
        other_value = torch.where(stats.count[si, 1][:, idx] > 0, other, first_value)  # none seen: starting-token mean
    elif mode == "value":
        v = torch.as_tensor(value, dtype=torch.float32).flatten()
        if v.numel() not in (1, len(dims)):
            raise ValueError(f"value must be one number or one per dim ({len(dims)}), got {v.numel()}")
        first_value = other_value = v.expand(L, len(dims)).clone()
    targets = dims
    if mode == "control":
        gen = torch.Generator().manual_seed(seed)
        avoid = set(stats.dims) | set(stats.excluded_dims) | set(dims)
        pool = torch.tensor([d for d in range(D) if d not in avoid])
        targets = tuple(int(d) for d in pool[torch.randperm(len(pool), generator=gen)[: len(dims)]])
    iv = Intervention(mode=mode, dims=dims, targets=targets, layers=tuple(per_dim), first_value=first_value,
                      other_value=other_value, positions=pos, prepend_bos=bos, rebuilt=None, recovery=None,
                      trivial=_trivial_mean(stats, bos, dims) if mode == "mean" else "",
                      first_token=(stats.first_tokens[si][0] if mode == "mean" and stats.first_tokens
                                   and int(stats.n_tokens[si, 0, 0]) == 1 else None),
                      threshold=stats.threshold, ratio=stats.ratio, model_name=model_name(model))
    if check_rebuild and prompts:
        iv = _check_rebuild(model, prompts, iv, spans, extend=layers == "auto", rebuilt_at=rebuilt_at)
    return iv


def _trivial_mean(stats: MassiveStats, bos: bool, dims: Sequence[int]) -> str:
    """Why the starting-token mean of `dims` is the clean value, or "": one distinct starting token in the
    calibration, which under causal attention sees only itself, so its value is the same in every text."""
    si = stats.setting(bos)
    if not dims or stats.n_tokens is None or not stats.first_tokens or int(stats.n_tokens[si, 0, 0]) != 1:
        return ""
    return (f"one distinct token ({stats.first_tokens[si][0]!r}) at position 0, so the mean written there is its "
            "clean value")


@contextmanager
def watch_trivial(model: HookedModel, iv: Intervention) -> Iterator[dict[str, int]]:
    """While the body runs, count the entries `iv` writes at positions after the first (where a mean is not the
    clean value): a trivial mean is no evidence only if there are none."""
    seen = {"other": 0}

    def count(i: int) -> HookFn:
        def fn(x: Tensor, hook: Any) -> None:
            seen["other"] += int(_positions_mask(x, iv.dims[i], iv)[:, 1:].sum())
        return fn

    with hooked(model, [(hook.resid_post(ls[0]), count(i)) for i, ls in enumerate(iv.layers)]):
        yield seen


def _check_rebuild(model: HookedModel, prompts: list[Tensor], iv: Intervention, spans: list[tuple[int, int]], *,
                   extend: bool, rebuilt_at: float) -> Intervention:
    rec = _recovery(model, prompts, iv, batch_size=8)
    rebuilt = tuple(bool((rec[ls[0] + 1 : max(last, ls[0]) + 1, i].nan_to_num() > rebuilt_at).any())
                    for i, (ls, (_, last)) in enumerate(zip(iv.layers, spans)))
    layers = iv.layers
    if any(rebuilt):
        which = [(d, ls[0], last, float(rec[ls[0] + 1 : last + 1, i].nan_to_num().max()))
                 for i, (d, ls, (_, last), r) in enumerate(zip(iv.dims, iv.layers, spans, rebuilt)) if r]
        msg = "; ".join(f"dim {d} zeroed in block {f} is back to {m:.0%} of its clean size by block {l}"
                        for d, f, l, m in which)
        if extend:
            layers = tuple(tuple(range(ls[0], last + 1)) if r else ls
                           for ls, (_, last), r in zip(iv.layers, spans, rebuilt))
            msg += ": later blocks rebuild it, so it is set in every block up to its last massive layer"
        else:
            msg += ': later blocks rebuild it; pass layers="range" (or "auto") to set it in every block'
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
    return replace(iv, layers=layers, rebuilt=rebuilt, recovery=rec)
