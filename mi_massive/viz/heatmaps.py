"""Layer x head heatmaps: attention sinks, the implicit attention bias, path patching."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from ._html import View


def heatmaps(panels: Sequence[tuple], *, title: str, height: int | None = None,
             widths: Sequence[float] | None = None) -> Any:
    """Side-by-side heatmaps; each panel is (subtitle, a frame (rows: y, columns: x), colorscale[, options]).

    options: "zrange" (zmin, zmax), "x"/"y" axis titles, "text" (a frame of cell labels), "hover" (the z name).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels], horizontal_spacing=0.1,
                        column_widths=list(widths) if widths else None)
    for i, (name, df, scale, *rest) in enumerate(panels):
        opt = rest[0] if rest else {}
        diverging = scale == "RdBu"
        zmax = float(df.abs().max().max()) if diverging and df.size else None
        zmin, zmax = opt.get("zrange", (-zmax if zmax else None, zmax))
        x_title, y_title = opt.get("x", "head"), opt.get("y", "layer")
        text = opt.get("text")
        fig.add_trace(go.Heatmap(
            z=df.values, x=[str(c) for c in df.columns], y=[str(r) for r in df.index], colorscale=scale,
            zmid=0 if diverging and "zrange" not in opt else None, zmin=zmin, zmax=zmax,
            text=None if text is None else text.values, texttemplate="%{text}" if text is not None else None,
            colorbar={"x": fig.layout[f"xaxis{i + 1 if i else ''}"].domain[1] + 0.005, "len": 0.9, "thickness": 10},
            hovertemplate=f"{y_title} %{{y}}, {x_title} %{{x}}<br>{opt.get('hover', name)} = %{{z:.4g}}<extra></extra>",
        ), row=1, col=i + 1)
        fig.update_xaxes(title_text=x_title, type="category", row=1, col=i + 1)
        fig.update_yaxes(title_text=y_title, type="category", autorange="reversed", row=1, col=i + 1,
                         showticklabels=opt.get("yticks", True))
    n_rows = max(len(p[1]) for p in panels)
    fig.update_layout(title=title, template="plotly_white", height=height or max(300, 90 + 18 * n_rows),
                      margin={"t": 90, "b": 40, "l": 60, "r": 20})
    return fig


def _grid(values: Any, layers: Sequence[int]) -> pd.DataFrame:
    """A (layer, head) tensor as a frame indexed by layer, columns by head."""
    return pd.DataFrame(values.numpy(), index=list(layers), columns=range(values.shape[1]))


def show_sinks(sinks: Any) -> View:
    """Where heads look (attention mass on the sink tokens, alpha > epsilon marked) and what they read there (the
    sink tokens' value norm against the other tokens', per KV head: the paper's small sink values)."""
    layers = range(sinks.sink_mass.shape[0])
    marks = _grid(sinks.alpha > sinks.epsilon, layers).replace({True: "\u2022", False: ""})
    v_ratio = sinks.v_norm_sink / sinks.v_norm_other  # (layer, kv_head)
    fig = heatmaps([
        (f"attention on sink tokens (\u2022: alpha > {sinks.epsilon:g})", _grid(sinks.sink_mass, layers), "Blues",
         {"zrange": (0, 1), "text": marks, "hover": "attention on sinks"}),
        ("|v| of sink tokens / |v| of the others", _grid(v_ratio, layers), "Viridis",
         {"x": "KV head", "hover": "|v| ratio"}),
    ], title=f"Attention sinks in {sinks.model_name}: sink rate {sinks.sink_rate:.0%} (alpha > {sinks.epsilon:g}), "
             f"sink positions {list(sinks.sink_positions[0])} (prompt 0)")
    return View((fig,), meta={"panels": ["sink_mass", "v_norm_ratio"]})


def _by_construction(bias: Any) -> bool:
    """True where the bias direction cannot vary: one sink token per prompt, the same token at the same position
    (the bias part of a head is then p(q -> sink) * v_sink W_O: one vector scaled, cosine 1 by construction)."""
    flag = getattr(bias, "constant_by_construction", None)
    if flag is not None:
        return bool(flag)
    sinks = bias.sink_positions
    if not sinks or any(len(p) != 1 for p in sinks) or len({p[0] for p in sinks}) != 1:
        return False
    pos = sinks[0][0]
    return pos == 0 and len({s[pos] for s in bias.str_tokens}) == 1


def show_implicit_bias(bias: Any) -> View:
    """The implicit bias against the other tokens' update, and how much its size varies over queries; its direction
    is shown only as a number, and flagged where it is fixed by construction."""
    cos = bias.constancy
    fixed = _by_construction(bias)
    direction = (f"direction: cosine to the mean {float(cos.min()):.4f}..{float(cos.max()):.4f}"
                 + (" (fixed by construction: one sink token, so the bias is p(q\u2192sink)\u00b7v_sink W_O)"
                    if fixed else ""))
    fig = heatmaps([("|bias| (sink tokens' value update)", _grid(bias.bias_norm, bias.layers), "Viridis"),
                    ("|update| from the other tokens", _grid(bias.rest_norm, bias.layers), "Viridis"),
                    ("size spread of the bias (RMS distance to its mean / |mean|)", _grid(bias.spread, bias.layers),
                     "Viridis")],
                   title=f"Implicit attention bias in {bias.model_name}, {bias.n_queries} queries<br>"
                         f"<sup>{direction}</sup>")
    return View((fig,), meta={"direction_by_construction": fixed})


def show_patching(result: Any) -> View:
    """Effect on the metric (patched - clean) of each receiver: one heatmap per attention path (k, v: KV heads),
    and the direct path (the final residual read by the unembedding) as one cell."""
    df = result.to_dataframe()
    panels, widths = [], []
    for path, g in df.groupby("path", sort=False):
        if path == "direct":
            cell = pd.DataFrame([[float(g.effect.sum())]], index=["final residual"], columns=["direct"])
            panels.append(("direct", cell, "RdBu", {"x": "final residual<br>to unembedding", "y": "",
                                                    "hover": "effect", "yticks": False}))
            widths.append(0.3)
            continue
        grid = g.pivot_table(index="layer", columns="head", values="effect")
        name = f"{path} ({'KV heads' if path in ('k', 'v') else 'heads'})"
        if path == "q" and all(set(p) <= {0} for p in result.positions):
            name = "q: no effect by construction<br>(the massive token is first: its query sees only itself)"
        elif grid.size and float(grid.max().max()) == float(grid.min().min()):
            name += f": every receiver {float(grid.max().max()):+.3g}"
        panels.append((name, grid, "RdBu", {"x": "KV head" if path in ("k", "v") else "head", "hover": "effect"}))
        widths.append(1.0)
    fig = heatmaps(panels, widths=[w / sum(widths) for w in widths],
                   title=f"Path patching ({result.corruption} the massive activation from block "
                         f"{result.sender_layer}): change in {result.metric_name}, total {result.total_effect:+.4g}")
    return View((fig,), meta={"paths": [p[0] for p in panels]})
