"""Views that display themselves in Jupyter and embed in an offline report: text, tables, circuitsvis, plotly.

circuitsvis's own `str(view)` imports its JS from a CDN; here every view carries the bundled JS instead
(`View.local_src`), and a report loads each library once (`scripts()`), so everything works offline.
"""

from __future__ import annotations

import html
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

STYLE = """<style>
.mi-view{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;font-size:14px;margin:6px 0}
.mi-view h3{font-size:15px;margin:10px 0 4px}
.mi-caption{color:#444;margin:4px 0 8px}
table.mi-table{border-collapse:collapse;font-size:12px;margin:6px 0}
table.mi-table th,table.mi-table td{border:1px solid #ccc;padding:2px 6px;text-align:right}
table.mi-table th{background:#f2f2f2}
</style>"""


@cache
def circuitsvis_js() -> str:
    """circuitsvis's bundled browser build (defines the global `CircuitsVis`)."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    return path.read_text(encoding="utf-8").replace("</script>", "<\\/script>")


@cache
def plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def scripts(needs: set[str]) -> str:
    """`<script>` tags that inline the libraries named in `needs` ("circuitsvis", "plotly")."""
    out = []
    if "plotly" in needs:
        out.append(f'<script type="text/javascript">{plotly_js()}</script>')
    if "circuitsvis" in needs:
        out.append(f'<script type="text/javascript">{circuitsvis_js()}</script>')
    return "\n".join(out)


def pretty(tokens: Sequence[str]) -> list[str]:
    """Byte-level BPE / SentencePiece markers as the characters they stand for (\u0120 and \u2581 are spaces)."""
    table = str.maketrans({"\u0120": " ", "\u2581": " ", "\u010a": "\n", "\u0109": "\t"})
    return [t.translate(table) for t in tokens]


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Circuits:
    """One circuitsvis React component with its props (names as in circuitsvis: `ColoredTokens`, `AttentionHeads`)."""

    element: str
    props: dict[str, Any]

    def html(self) -> str:
        from circuitsvis.utils.convert_props import convert_props

        uid = _uid("circuits-vis")
        props = convert_props(self.props).replace("</", "<\\/")
        return (f'<div id="{uid}" class="mi-cv" data-element="{self.element}" style="margin:10px 0"></div>\n'
                f'<script type="text/javascript">CircuitsVis.render("{uid}", CircuitsVis.{self.element}, {props});'
                "</script>")


def figure_html(fig: Any) -> str:
    """A plotly figure as a div + script that expects the global `Plotly` (see `scripts`)."""
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=_uid("mi-plot"),
                       config={"displaylogo": False, "responsive": True})


def table(df: pd.DataFrame, *, max_rows: int = 30) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    more = f'<div class="mi-caption">... {len(df) - max_rows} more rows</div>' if len(df) > max_rows else ""
    body = df.head(max_rows).to_html(index=False, classes="mi-table", border=0, formatters={
        c: fmt for c in df.columns}, escape=True)
    return body + more


def text(s: str, *, tag: str = "div", cls: str = "mi-caption") -> str:
    return f'<{tag} class="{cls}">{html.escape(s)}</{tag}>'


@dataclass(frozen=True)
class View:
    """HTML parts (strings of HTML, DataFrames, circuitsvis components, plotly figures) shown as one view.

    It displays itself in Jupyter with its JS inlined (`local_src`), so it works offline.
    """

    parts: tuple[Any, ...]
    title: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # what the view shows, for tests and the report

    def needs(self) -> set[str]:
        import plotly.graph_objects as go

        kinds = set()
        for p in self.parts:
            if isinstance(p, Circuits):
                kinds.add("circuitsvis")
            elif isinstance(p, go.Figure):
                kinds.add("plotly")
            elif isinstance(p, View):
                kinds |= p.needs()
        return kinds

    def body(self) -> str:
        """The view's HTML without library scripts (the page must provide `CircuitsVis` / `Plotly`)."""
        import plotly.graph_objects as go

        out = [text(self.title, tag="h3", cls="mi-title")] if self.title else []
        for p in self.parts:
            if isinstance(p, Circuits):
                out.append(p.html())
            elif isinstance(p, go.Figure):
                out.append(figure_html(p))
            elif isinstance(p, pd.DataFrame):
                out.append(table(p))
            elif isinstance(p, View):
                out.append(p.body())
            else:
                out.append(str(p))
        return '<div class="mi-view">' + "\n".join(out) + "</div>"

    @property
    def local_src(self) -> str:
        """Self-contained HTML: the bundled JS inlined, no network needed."""
        return STYLE + scripts(self.needs()) + self.body()

    @property
    def figure(self) -> Any:
        """The view's (first) plotly figure, or None: for tests and for restyling before display."""
        import plotly.graph_objects as go

        return next((p for p in self.parts if isinstance(p, go.Figure)), None)

    def _repr_html_(self) -> str:
        return self.local_src

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """HTML for any frontend; a view that is one figure also carries plotly's JSON (JupyterLab's renderer)."""
        bundle: dict[str, Any] = {"text/html": self.local_src, "text/plain": repr(self)}
        if len(self.parts) == 1 and self.figure is not None and not self.title:
            bundle["application/vnd.plotly.v1+json"] = json.loads(self.figure.to_json())
        return bundle

    def __repr__(self) -> str:
        return f"<View: {self.title or 'untitled'} ({len(self.parts)} part(s))>"
