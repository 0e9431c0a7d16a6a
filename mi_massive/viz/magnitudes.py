"""The paper's 3-D view of one layer: |x| over (token, dim) of a block's output, as an interactive surface."""

from __future__ import annotations

from typing import Any

from ._html import View, pretty


def show_magnitudes(mags: Any, *, layer: int | None = None, height: int = 520) -> View:
    """Surface of |x| at one captured layer (default the first), tokens along one axis and dims along the other
    (paper Fig. 1)."""
    import plotly.graph_objects as go

    layer = mags.layers[0] if layer is None else layer
    mag = mags.at(layer).abs()  # (pos, d_model)
    str_tokens = pretty(mags.str_tokens)
    labels = [f"{i}: {t}" for i, t in enumerate(str_tokens)]
    pos, dim, peak = mags.peak(layer)
    fig = go.Figure(go.Surface(
        z=mag.numpy(), x=list(range(mag.shape[1])), y=list(range(mag.shape[0])), colorscale="Viridis",
        colorbar={"title": "|x|"}, customdata=[[lab] * mag.shape[1] for lab in labels],
        hovertemplate="token %{customdata}<br>dim %{x}<br>|x| = %{z:.4g}<extra></extra>",
    ))
    fig.update_layout(
        title=f"|x| at blocks.{layer}.hook_resid_post, {mags.model_name}: peak {peak:.4g} "
              f"at token {pos} ({str_tokens[pos]!r}), dim {dim}",
        height=height, template="plotly_white", margin={"t": 50, "b": 10, "l": 10, "r": 10},
        scene={"xaxis_title": "dim", "yaxis": {"title": "token", "tickvals": list(range(len(labels))),
                                                "ticktext": list(str_tokens)},
               "zaxis_title": "|x|", "camera": {"eye": {"x": 1.6, "y": -1.6, "z": 0.9}}},
    )
    return View((fig,), meta={"layer": layer, "peak": (pos, dim, peak)})
