"""Interventions and their effect: Table 3 (perplexity), the constancy of massive values, one intervention."""

from __future__ import annotations

from typing import Any

from ._html import View, text


def show_table3(table: Any) -> View:
    """Grouped bars: perplexity per corpus with massive activations untouched, zeroed, set to their mean, control."""
    import plotly.graph_objects as go

    df = table.to_dataframe()
    fig = go.Figure([go.Bar(name=col, x=list(df.index), y=df[col], text=[f"{v:.4g}" for v in df[col]],
                            textposition="outside") for col in df.columns])
    fig.update_layout(barmode="group", yaxis={"type": "log", "dtick": 1, "exponentformat": "power"}, yaxis_title="perplexity", template="plotly_white",
                      height=380, title=f"Table 3: {table.sentence()}"[:160],
                      margin={"t": 60, "b": 40, "l": 60, "r": 20})
    return View((fig,))


def show_stats(stats: Any) -> View:
    """Mean value of each massive dim per layer at the starting token, with +-1 std across inputs."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for si, bos in enumerate(stats.prepend_bos):
        for di, dim in enumerate(stats.dims):
            mean, std = stats.mean[si, 0, :, di], stats.std[si, 0, :, di]
            fig.add_trace(go.Scatter(x=list(range(len(mean))), y=mean.tolist(),
                                     name=f"dim {dim}, " + ("BOS (same for every input)" if bos else "no BOS"),
                                     error_y={"type": "data", "array": std.nan_to_num().tolist(), "visible": True},
                                     mode="lines+markers"))
    fig.update_layout(title=f"Massive values at the starting token across {stats.n_texts} inputs "
                            f"({stats.model_name})", xaxis_title="layer", yaxis_title="mean value (+-1 std)",
                      template="plotly_white", height=380, margin={"t": 50, "b": 40, "l": 60, "r": 20})
    return View((fig,))


def show_result_table(result: Any) -> View:
    """The sentence and the table: for results whose numbers are the picture (an intervention, a perplexity)."""
    extra = [text(result.describe())] if hasattr(result, "describe") else []
    return View((text(result.sentence()), *extra, result.to_dataframe()), title=type(result).__name__)
