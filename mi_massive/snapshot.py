"""What one prompt looks like inside the model: its attention patterns and its block outputs' magnitudes.

These analyses run the model once and return frozen results that the views draw (`viz/` never runs a model),
so a picture can be saved and redrawn without the model.

    >>> from mi_massive import attention_patterns, layer_magnitudes
    >>> from mi_massive.testing import tiny_model
    >>> model = tiny_model("llama")
    >>> layer_magnitudes(model, "hello world", 1)
    <LayerMagnitudes: |x| of blocks.1.hook_resid_post in tiny-llama over 12 tokens: peak ... at token 0 ('<bos>'), dim 5>
    >>> attention_patterns(model, "hello world", 2).sinks
    (0,)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from . import _inputs
from ._hooks import capture
from ._results import Result
from ._types import HookedModel
from .arch import hook
from .models import model_name


def _one_prompt(model: HookedModel, inputs: _inputs.Inputs, prepend_bos: bool | None) -> Tensor:
    prompts = _inputs.tokenize(model, inputs, prepend_bos=prepend_bos)
    if len(prompts) != 1:
        raise ValueError(f"one prompt is drawn at a time; got {len(prompts)}: pass one, e.g. inputs[0]")
    return prompts[0]


def _layers(layer: int | None | list[int], n_layers: int) -> tuple[int, ...]:
    """`layer` as a tuple of checked layers (None: all of them)."""
    if layer is None:
        return tuple(range(n_layers))
    if isinstance(layer, (list, tuple, range)):
        return tuple(_inputs.check_index("layer", l, n_layers) for l in layer)
    return (_inputs.check_index("layer", layer, n_layers),)


def _row(values: Tensor, layers: tuple[int, ...], layer: int | None) -> Tensor:
    """The slice of `values` (first axis: `layers`) at `layer` (None: the first captured)."""
    layer = layers[0] if layer is None else layer
    if layer not in layers:
        raise ValueError(f"layer {layer} was not captured: layers {list(layers)} were")
    return values[layers.index(layer)]


@dataclass(frozen=True, repr=False)
class LayerMagnitudes(Result):
    """The block outputs x[layer, pos, dim] of one prompt, at the asked layers (paper Fig. 1 draws |x|)."""

    VIEW: ClassVar[str] = "magnitudes:show_magnitudes"

    resid: Float[Tensor, "layer pos d_model"]
    layers: tuple[int, ...]
    tokens: Int[Tensor, "pos"]
    str_tokens: tuple[str, ...]
    model_name: str
    hook_names: tuple[str, ...]

    def at(self, layer: int | None = None) -> Float[Tensor, "pos d_model"]:
        """x at one of the captured layers (default the first)."""
        return _row(self.resid, self.layers, layer)

    def peak(self, layer: int | None = None) -> tuple[int, int, float]:
        """(pos, dim, |x|) of the largest |x| at `layer`."""
        mag = self.at(layer).abs()  # (pos, d_model)
        pos, dim = divmod(int(mag.argmax()), mag.shape[1])
        return pos, dim, float(mag[pos, dim])

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (layer, pos): the token, the largest |x| and its dim, and the median |x|."""
        mag = self.resid.abs()  # (layer, pos, d_model)
        top = mag.max(-1)
        return pd.DataFrame({
            "layer": [l for l in self.layers for _ in self.str_tokens],
            "pos": list(range(len(self.str_tokens))) * len(self.layers),
            "token": list(self.str_tokens) * len(self.layers),
            "max_abs": top.values.flatten().numpy(), "argmax_dim": top.indices.flatten().numpy(),
            "median_abs": mag.median(-1).values.flatten().numpy(),
        })

    def sentence(self) -> str:
        pos, dim, peak = self.peak()
        where = self.hook_names[0] if len(self.layers) == 1 else f"{len(self.layers)} block outputs"
        return (f"|x| of {where} in {self.model_name} over {len(self.str_tokens)} tokens: peak {peak:.4g} "
                f"at token {pos} ({self.str_tokens[pos]!r}), dim {dim}")


@dataclass(frozen=True, repr=False)
class AttentionPatterns(Result):
    """One prompt's attention patterns at the asked layers, with the positions holding massive activations."""

    VIEW: ClassVar[str] = "attention:show_attention"

    pattern: Float[Tensor, "layer head query_pos key_pos"]
    layers: tuple[int, ...]
    tokens: Int[Tensor, "pos"]
    str_tokens: tuple[str, ...]
    sinks: tuple[int, ...]  # positions holding a massive activation (the paper's rule, any layer)
    model_name: str
    hook_names: tuple[str, ...]

    def at(self, layer: int | None = None) -> Float[Tensor, "head query_pos key_pos"]:
        """The patterns of one of the captured layers (default the first)."""
        return _row(self.pattern, self.layers, layer)

    def sink_share(self, layer: int | None = None) -> Float[Tensor, "head"]:
        """Each head's attention on the sink positions, averaged over queries (NaN where there is no sink)."""
        p = self.at(layer)
        if not self.sinks:
            return torch.full((p.shape[0],), float("nan"))
        return p[:, :, list(self.sinks)].sum(-1).mean(-1)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per (layer, head): attention on the sink positions averaged over queries."""
        rows = [{"layer": l, "head": h, "sink_share": float(s)}
                for l in self.layers for h, s in enumerate(self.sink_share(l))]
        return pd.DataFrame(rows, columns=["layer", "head", "sink_share"])

    def sentence(self) -> str:
        share = torch.stack([self.sink_share(l) for l in self.layers])
        tail = (f"heads put {float(share.nanmean()):.0%} of their attention on them on average" if self.sinks
                else "no massive activation, so no sink to mark")
        return (f"attention of {len(self.layers)} layer(s) of {self.model_name} over {len(self.str_tokens)} tokens; "
                f"sink positions {list(self.sinks)}; {tail}")


def layer_magnitudes(model: HookedModel, inputs: _inputs.Inputs, layer: int | None | list[int] = None, *,
                     prepend_bos: bool | None = None) -> LayerMagnitudes:
    """Run one prompt and keep block `layer`'s output (None: every block's), for the paper's 3-D view.

        >>> layer_magnitudes(model, "Summer is warm.", 15).show()    # doctest: +SKIP
    """
    layers = _layers(layer, model.cfg.n_layers)
    toks = _one_prompt(model, inputs, prepend_bos)
    names = tuple(hook.resid_post(l) for l in layers)
    _, cache = capture(model, toks[None], names)
    resid = torch.stack([cache[n][0] for n in names]).detach().float().cpu()  # (layer, pos, d_model)
    return LayerMagnitudes(resid=resid, layers=layers, tokens=toks.cpu(), str_tokens=_inputs.str_tokens(model, toks),
                           model_name=model_name(model), hook_names=names)


def attention_patterns(model: HookedModel, inputs: _inputs.Inputs, layer: int | None | list[int] = None, *,
                       threshold: float = 100.0, ratio: float = 1000.0,
                       prepend_bos: bool | None = None) -> AttentionPatterns:
    """Run one prompt and keep layer `layer`'s attention patterns (None: every layer's) and its sink positions.

        >>> attention_patterns(model, "Summer is warm.", 15).show(heads=[0, 3])   # doctest: +SKIP
    """
    from .detect import find_massive_activations

    layers = _layers(layer, model.cfg.n_layers)
    toks = _one_prompt(model, inputs, prepend_bos)
    found = find_massive_activations(model, toks[None], threshold=threshold, ratio=ratio)
    names = tuple(hook.pattern(l) for l in layers)
    _, cache = capture(model, toks[None], names)
    pattern = torch.stack([cache[n][0] for n in names]).detach().float().cpu()  # (layer, head, query_pos, key_pos)
    return AttentionPatterns(pattern=pattern, layers=layers, tokens=toks.cpu(),
                             str_tokens=_inputs.str_tokens(model, toks), sinks=tuple(found.positions(0)),
                             model_name=model_name(model), hook_names=names)


def explore(model: HookedModel, *, prompt: str = "Summer is warm. Winter is cold.", layer: int | None = None) -> Any:
    """An ipywidgets app: type a prompt, slide through layers, pick a head; the views follow. It runs the
    analyses above on each new prompt and hands their results to `viz.explore.Explorer`, which only draws.

        >>> app = explore(model)         # doctest: +SKIP
        >>> app                          # doctest: +SKIP
        >>> app.layer.value = 12         # doctest: +SKIP
    """
    from .detect import find_massive_activations
    from .viz.explore import Explorer

    if layer is not None:
        layer = _inputs.check_index("layer", layer, model.cfg.n_layers)

    def analyse(text: str) -> tuple[LayerMagnitudes, AttentionPatterns, Any]:
        toks = _one_prompt(model, text, None)[None]
        return layer_magnitudes(model, toks), attention_patterns(model, toks), find_massive_activations(model, toks)

    return Explorer(analyse, prompt, layer=layer)
