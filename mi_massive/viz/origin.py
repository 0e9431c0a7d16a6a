"""Who writes the massive activation: each block's attention and MLP parts, the value after each block, and the
writing block's top neurons."""

from __future__ import annotations

import textwrap
from typing import Any

from ._html import View

BUILDER = "#d62728"  # bars of the blocks that write most of the value
OTHER = "#9e9e9e"


def show_origin(origin: Any, *, top_k: int = 10) -> View:
    """Four panels, each titled with what it shows (no shared legend): the MLP and the attention part of every
    block on their own scales (attention is often 1000x smaller), the value after each block, the top neurons."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not origin.found:
        fig = go.Figure()
        fig.add_annotation(text=origin.sentence(), showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        fig.update_layout(title=f"Origin: nothing massive in {origin.model_name}", height=200)
        return View((fig,), meta={"mechanism": ""})
    by_layer = origin.by_layer()
    neurons = origin.neurons.head(top_k)
    sw, kind = origin.super_weight, origin.mechanism
    builders = set(origin.builders)
    colors = [BUILDER if int(l) in builders else OTHER for l in by_layer.layer]
    neuron_title = (f"top neurons of block {origin.writer_layer}" + (
        " (orange: the super weight's)" if kind == "super weight" else " (none has an outlier weight)"))
    fig = make_subplots(rows=2, cols=2, column_widths=[0.6, 0.4], vertical_spacing=0.2, horizontal_spacing=0.1,
                        subplot_titles=["MLP part of each block (red: the blocks that write most of it)", neuron_title,
                                        "attention part of each block (own scale)",
                                        f"x[layer, {origin.pos}, {origin.dim}] after each block"
                                        + (f" (peak {origin.peak_value:.3g} at {origin.peak_layer})"
                                           if origin.peak_layer not in (None, origin.layer) else "")])
    fig.add_trace(go.Bar(x=by_layer.layer, y=by_layer.attn, name="attn", marker_color=colors,
                         hovertemplate="block %{x}: attention adds %{y:.4g}<extra></extra>"), row=2, col=1)
    fig.add_trace(go.Bar(x=by_layer.layer, y=by_layer.mlp, name="mlp", marker_color=colors,
                         hovertemplate="block %{x}: MLP adds %{y:.4g}<extra></extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=[f"n{int(n)}" for n in neurons.neuron], y=neurons.contribution, name="neuron",
                         marker_color=["#ff7f0e" if kind == "super weight" and int(n) == sw.col else OTHER
                                       for n in neurons.neuron],
                         customdata=neurons[["activation", "weight"]].to_numpy(),
                         hovertemplate="neuron %{x}<br>contribution %{y:.4g}<br>activation %{customdata[0]:.4g}"
                                       "<br>down_proj weight %{customdata[1]:.4g}<extra></extra>"), row=1, col=2)
    fig.add_trace(go.Scatter(x=by_layer.layer, y=by_layer.total, name="total", mode="lines+markers",
                             line={"color": "#1f77b4"}, hovertemplate="after block %{x}: %{y:.4g}<extra></extra>"),
                  row=2, col=2)
    if origin.trajectory is not None and origin.peak_layer not in (None, origin.layer):  # how it goes on growing
        later = list(range(origin.layer, len(origin.trajectory)))
        fig.add_trace(go.Scatter(x=later, y=origin.trajectory[later].tolist(), name="after", mode="lines+markers",
                                 line={"color": "#1f77b4", "dash": "dot"}, marker={"size": 4},
                                 hovertemplate="after block %{x}: %{y:.4g}<extra></extra>"), row=2, col=2)
        fig.add_vline(x=origin.layer, line={"color": "#999", "dash": "dash"}, row=2, col=2)
    for r, c in ((1, 1), (2, 1), (2, 2)):
        fig.update_xaxes(title_text="block", dtick=1 if len(by_layer) <= 32 else None, row=r, col=c)
    fig.update_xaxes(title_text="neuron", type="category", row=1, col=2)
    fig.update_yaxes(title_text="adds to x", row=1, col=1)
    fig.update_yaxes(title_text="adds to x", row=2, col=1)
    fig.update_yaxes(title_text="contribution", row=1, col=2)
    head = (f"x[{origin.layer}, pos {origin.pos} {origin.str_tokens[origin.pos]!r}, dim {origin.dim}] = "
            f"{origin.value:.4g} in {origin.model_name}")
    why = "<br>".join(textwrap.wrap(origin.explanation(), 150))
    fig.update_layout(template="plotly_white", height=640, showlegend=False,
                      margin={"t": 100 + 16 * why.count("<br>"), "b": 50, "l": 60, "r": 20},
                      title={"text": f"{head}<br><sup>{why}</sup>", "font": {"size": 15}, "yref": "container",
                             "y": 0.97, "yanchor": "top"})
    return View((fig,), meta={"mechanism": kind, "builders": list(origin.builders)})
