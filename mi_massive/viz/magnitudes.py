"""The paper's 3-D view of one layer: |x| over (token, dim) of a block's output, as an interactive surface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxtyping import Float
from torch import Tensor


def magnitudes_figure(resid: Float[Tensor, "pos d_model"], str_tokens: Sequence[str], *, layer: int,
                      model_name: str, height: int = 520) -> Any:
    """Surface of |x| with tokens along one axis and residual dims along the other (paper Fig. 1)."""
    import plotly.graph_objects as go

    from ._html import pretty

    str_tokens = pretty(str_tokens)
    mag = resid.detach().abs().float().cpu()  # (pos, d_model)
    labels = [f"{i}: {t}" for i, t in enumerate(str_tokens)]
    peak = int(mag.argmax())
    pos, dim = divmod(peak, mag.shape[1])
    fig = go.Figure(go.Surface(
        z=mag.numpy(), x=list(range(mag.shape[1])), y=list(range(mag.shape[0])), colorscale="Viridis",
        colorbar={"title": "|x|"}, customdata=[[lab] * mag.shape[1] for lab in labels],
        hovertemplate="token %{customdata}<br>dim %{x}<br>|x| = %{z:.4g}<extra></extra>",
    ))
    fig.update_layout(
        title=f"|x| at blocks.{layer}.hook_resid_post, {model_name}: peak {float(mag[pos, dim]):.4g} "
              f"at token {pos} ({str_tokens[pos]!r}), dim {dim}",
        height=height, template="plotly_white", margin={"t": 50, "b": 10, "l": 10, "r": 10},
        scene={"xaxis_title": "dim", "yaxis": {"title": "token", "tickvals": list(range(len(labels))),
                                                "ticktext": list(str_tokens)},
               "zaxis_title": "|x|", "camera": {"eye": {"x": 1.6, "y": -1.6, "z": 0.9}}},
    )
    return fig


def magnitudes_3d(model: Any, prompt: str, layer: int, *, prepend_bos: bool | None = None) -> Any:
    """Run `prompt` and show |x| of block `layer`'s output over (token, dim) as a 3-D surface.

        >>> viz.magnitudes_3d(model, "Summer is warm. Winter is cold.", 15)   # doctest: +SKIP
    """
    from .. import _inputs
    from .._hooks import capture
    from ..arch import hook
    from ..models import model_name

    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be one string, not {type(prompt).__name__}")
    layer = _inputs.check_index("layer", layer, model.cfg.n_layers)
    (toks,) = _inputs.tokenize(model, prompt, prepend_bos=prepend_bos)
    _, cache = capture(model, toks[None], [hook.resid_post(layer)])
    return magnitudes_figure(cache[hook.resid_post(layer)][0], _inputs.str_tokens(model, toks), layer=layer,
                             model_name=model_name(model))
