"""Who writes the massive activation: contributions per block, the top neurons, the super weight."""

from __future__ import annotations

from typing import Any


def show_origin(origin: Any, *, top_k: int = 10) -> Any:
    """Two bar charts: each block's attention and MLP contribution to x[layer, pos, dim], and the top neurons."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if not origin.found:
        fig = go.Figure()
        fig.add_annotation(text=origin.sentence(), showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        return fig.update_layout(title=f"Origin: nothing massive in {origin.model_name}", height=200)
    by_layer = origin.by_layer()
    neurons = origin.neurons.head(top_k)
    sw = origin.super_weight
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], subplot_titles=[
        "contribution of each block (attention, MLP)", f"top neurons of block {origin.writer_layer}"])
    for part, color in (("attn", "#1f77b4"), ("mlp", "#d62728")):
        fig.add_trace(go.Bar(x=by_layer.layer, y=by_layer[part], name=part, marker_color=color), row=1, col=1)
    fig.add_trace(go.Bar(x=[f"n{int(n)}" for n in neurons.neuron], y=neurons.contribution, name="neuron",
                         marker_color=["#ff7f0e" if sw and int(n) == sw.col else "#7f7f7f" for n in neurons.neuron],
                         customdata=neurons.activation, showlegend=False,
                         hovertemplate="neuron %{x}<br>contribution %{y:.4g}<br>activation %{customdata:.4g}"
                                       "<extra></extra>"), row=1, col=2)
    fig.update_xaxes(title_text="layer", row=1, col=1)
    fig.update_xaxes(title_text="neuron (orange: the super weight's)", type="category", row=1, col=2)
    fig.update_layout(
        barmode="relative", template="plotly_white", height=420, margin={"t": 110, "b": 50, "l": 60, "r": 20},
        title=f"x[{origin.layer}, pos {origin.pos} {origin.str_tokens[origin.pos]!r}, dim {origin.dim}] = "
              f"{origin.value:.4g} in {origin.model_name}" + (f"<br>super weight {sw}" if sw else ""),
    )
    return fig
