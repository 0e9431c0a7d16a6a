"""The layer profile (paper Fig. 2): top-1/2/3 and median |x| of each block's output, log scale."""

from __future__ import annotations

from typing import Any

from ._html import View

COLORS = ("#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b")


def show_profile(profile: Any, *, height: int = 380) -> View:
    """A plotly line chart: one line per top-k rank and the median, per layer, on a log scale."""
    import plotly.graph_objects as go

    layers = list(range(len(profile.median)))
    fig = go.Figure()
    for i in range(profile.k):
        fig.add_trace(go.Scatter(x=layers, y=profile.top[:, i].tolist(), mode="lines+markers", name=f"top {i + 1}",
                                 line={"color": COLORS[i % len(COLORS)]}))
    fig.add_trace(go.Scatter(x=layers, y=profile.median.tolist(), mode="lines+markers", name="median",
                             line={"color": "#1f77b4", "dash": "dot"}))
    jump = profile.jump_layer
    fig.add_vline(x=jump, line={"color": "#999", "dash": "dash"},
                  annotation_text=f"largest jump: layer {jump}", annotation_position="top left")
    fig.update_layout(
        title=f"Largest |x| per layer: {profile.model_name} ({profile.n_prompts} prompt(s))",
        xaxis_title=f"layer ({profile.hook_names[0].format(layer='L')})", yaxis_title="|x| (mean over prompts)",
        yaxis={"type": "log", "dtick": 1, "exponentformat": "power"},  # one label per decade, no minor labels
        height=height, template="plotly_white", margin={"t": 50, "b": 40, "l": 60, "r": 20},
    )
    return View((fig,), meta={"jump_layer": jump})
