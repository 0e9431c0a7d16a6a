"""Layer x head heatmaps: attention sinks, the implicit attention bias, path patching."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd


def heatmaps(panels: Sequence[tuple], *, title: str, height: int | None = None) -> Any:
    """Side-by-side heatmaps; each panel is (subtitle, a layer x head frame, colorscale[, (zmin, zmax)])."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels], horizontal_spacing=0.12)
    for i, (name, df, scale, *fixed) in enumerate(panels):
        diverging = scale == "RdBu"
        zmax = float(df.abs().max().max()) if diverging and df.size else None
        zmin, zmax = fixed[0] if fixed else (-zmax if zmax else None, zmax)
        fig.add_trace(go.Heatmap(
            z=df.values, x=[str(c) for c in df.columns], y=[str(r) for r in df.index], colorscale=scale,
            zmid=0 if diverging and not fixed else None, zmin=zmin, zmax=zmax,
            colorbar={"x": fig.layout[f"xaxis{i + 1 if i else ''}"].domain[1] + 0.005, "len": 0.9, "thickness": 10},
            hovertemplate=f"layer %{{y}}, head %{{x}}<br>{name} = %{{z:.4g}}<extra></extra>",
        ), row=1, col=i + 1)
        fig.update_xaxes(title_text="head", type="category", row=1, col=i + 1)
        fig.update_yaxes(title_text="layer", type="category", autorange="reversed", row=1, col=i + 1)
    n_rows = max(len(p[1]) for p in panels)
    fig.update_layout(title=title, template="plotly_white", height=height or max(300, 60 + 18 * n_rows),
                      margin={"t": 70, "b": 40, "l": 60, "r": 20})
    return fig


def _grid(values: Any, layers: Sequence[int]) -> pd.DataFrame:
    """A (layer, head) tensor as a frame indexed by layer, columns by head."""
    return pd.DataFrame(values.numpy(), index=list(layers), columns=range(values.shape[1]))


def show_sinks(sinks: Any) -> Any:
    """Attention mass on the sink tokens and alpha (Gu et al.'s sink score) per layer and head."""
    layers = range(sinks.sink_mass.shape[0])
    return heatmaps([("attention on sink tokens", _grid(sinks.sink_mass, layers), "Blues"),
                     (f"alpha (sink head if > {sinks.epsilon:g})", _grid(sinks.alpha, layers), "Blues")],
                    title=f"Attention sinks in {sinks.model_name}: sink rate {sinks.sink_rate:.0%}, "
                          f"sink positions {list(sinks.sink_positions[0])} (prompt 0)")


def show_implicit_bias(bias: Any) -> Any:
    """Norm of the sink tokens' value update (the implicit bias) against the other tokens', and its constancy."""
    return heatmaps([("|bias| (sink tokens' value update)", _grid(bias.bias_norm, bias.layers), "Viridis"),
                     ("|update| from the other tokens", _grid(bias.rest_norm, bias.layers), "Viridis"),
                     ("constancy (cosine to the mean bias)", _grid(bias.constancy, bias.layers), "Viridis", (0, 1))],
                    title=f"Implicit attention bias in {bias.model_name}, {bias.n_queries} queries")


def show_patching(result: Any) -> Any:
    """Effect on the metric (patched - clean) of each receiver, one heatmap per path (k, v: KV heads)."""
    df = result.to_dataframe()
    panels = [(f"{path} ({'KV heads' if path in ('k', 'v') else 'heads'})",
               g.pivot_table(index="layer", columns="head", values="effect"), "RdBu")
              for path, g in df.groupby("path", sort=False)]
    return heatmaps(panels, title=f"Path patching ({result.corruption} the massive activation from block "
                                  f"{result.sender_layer}): change in {result.metric_name}, total "
                                  f"{result.total_effect:+.4g}")
