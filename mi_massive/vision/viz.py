"""Pictures of massive activations in a Vision Transformer, over the image's patch grid (plotly figures).

    >>> acts = find_massive_activations(model, sample_images(2))     # doctest: +SKIP
    >>> patch_grid(acts)                                             # doctest: +SKIP
    >>> attention_grid(model, sample_images(1), layer=3)             # doctest: +SKIP
    >>> magnitudes_3d(model, sample_images(1), layer=3)              # doctest: +SKIP
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from .._hooks import capture
from ..arch import hook
from ..detect import MassiveActivations
from ..models import model_name
from .images import layout, prepare_images

_CELL = re.compile(r"patch \((\d+), (\d+)\)")


def _grid(names: tuple[str, ...]) -> tuple[int, int]:
    cells = [tuple(map(int, m.groups())) for m in map(_CELL.match, names) if m]
    return max(r for r, _ in cells) + 1, max(c for _, c in cells) + 1


def patch_grid(acts: MassiveActivations, *, prompt: int = 0) -> Any:
    """One heatmap per layer holding a massive activation: the largest massive |x| of each patch (blank: none);
    the title of each says which non-patch tokens (CLS, registers) hold one there."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    names = acts.str_tokens[prompt]
    rows, cols = _grid(names)
    df = acts.to_dataframe()
    df = df[df.prompt == prompt]
    layers = sorted(set(df.layer.tolist())) or [acts.n_layers - 1]
    grids, titles = [], []
    for layer in layers:
        grid = np.full((rows, cols), np.nan)
        at = df[df.layer == layer]
        others = sorted({t for t in at.token if not _CELL.match(t)})
        for t, v in zip(at.token, at.value.abs()):
            m = _CELL.match(t)
            if m:
                r, c = map(int, m.groups())
                grid[r, c] = np.nanmax([grid[r, c], v])
        grids.append(grid)
        titles.append(f"layer {layer}" + (f"<br>{', '.join(others)}" if others else ""))
    fig = make_subplots(rows=1, cols=len(layers), horizontal_spacing=0.02, subplot_titles=titles)
    for i, grid in enumerate(grids):
        fig.add_trace(go.Heatmap(z=grid, coloraxis="coloraxis", hovertemplate="row %{y}, col %{x}: |x| %{z:.4g}"),
                      1, i + 1)
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(coloraxis={"colorscale": "Reds"}, height=260, title=(
        f"{acts.model_name}, image {prompt}: massive |x| over the {rows} x {cols} patch grid"))
    return fig


def attention_grid(model: Any, image: Any, *, layer: int) -> Any:
    """Head-averaged attention of CLS and of each register over the patch grid, at block `layer`."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    pixels = prepare_images(model, image)[:1]
    lay = layout(model, pixels)
    _, cache = capture(model, pixels, [hook.pattern(layer)])
    p = cache[hook.pattern(layer)][0].float().mean(0)  # (query_pos, key_pos), head-averaged
    queries = [0, *lay.registers]
    fig = make_subplots(rows=1, cols=len(queries), subplot_titles=[
        f"{lay.name(q)}: {float(p[q, :lay.n_prefix].sum()):.0%} on CLS/registers" for q in queries])
    for i, q in enumerate(queries):
        grid = p[q, lay.n_prefix:].reshape(lay.rows, lay.cols).numpy()
        fig.add_trace(go.Heatmap(z=grid, coloraxis="coloraxis"), 1, i + 1)
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    fig.update_xaxes(showticklabels=False)
    fig.update_layout(coloraxis={"colorscale": "Blues"}, height=280,
                      title=f"{model_name(model)}, block {layer}: attention over the patches")
    return fig


def magnitudes_3d(model: Any, image: Any, *, layer: int) -> Any:
    """|x| of block `layer`'s output over token x dim as a 3-D surface (paper Fig. 1), tokens named."""
    import plotly.graph_objects as go

    pixels = prepare_images(model, image)[:1]
    lay = layout(model, pixels)
    _, cache = capture(model, pixels, [hook.resid_post(layer)])
    z = cache[hook.resid_post(layer)][0].abs().float().numpy()  # (pos, d_model)
    fig = go.Figure(go.Surface(z=z, y=list(range(lay.n_tokens)), colorscale="Viridis", showscale=False,
                               customdata=np.array(lay.names())[:, None].repeat(z.shape[1], 1),
                               hovertemplate="%{customdata}, dim %{x}: |x| %{z:.4g}"))
    top = torch.from_numpy(z).flatten().topk(3).indices
    where = ", ".join(f"{lay.name(int(i) // z.shape[1])} dim {int(i) % z.shape[1]}" for i in top)
    fig.update_layout(height=450, title=f"{model_name(model)}, block {layer}: |x| (largest: {where})",
                      scene={"xaxis_title": "dim", "yaxis_title": "token", "zaxis_title": "|x|"})
    return fig
