"""The explorer app: a prompt box, a layer slider and a head picker drive three views of one prompt's results.

It draws results only; `mi_massive.explore(model)` hands it the analysis to run when the prompt changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from ._html import View, text
from .attention import show_attention
from .magnitudes import show_magnitudes
from .tokens import colored_tokens

ALL_HEADS = -1
# prompt -> (LayerMagnitudes, AttentionPatterns, MassiveActivations) over every layer; ValueError if invalid
Analyse = Callable[[str], tuple[Any, Any, Any]]


class Explorer(widgets.VBox):
    """The app. Controls (`prompt`, `layer`, `head`) and outputs (`tokens_out`, `magnitudes_out`, `attention_out`,
    `status`) are attributes, so it can be driven from Python: `app.layer.value = 12`. The drawn results are
    `magnitudes`, `patterns` and `found`."""

    def __init__(self, analyse: Analyse, prompt: str, *, layer: int | None = None):
        self.analyse = analyse
        self.prompt = widgets.Text(value=prompt, description="prompt", continuous_update=False,
                                   layout=widgets.Layout(width="80%"))
        self.status = widgets.HTML()
        if not self._run(prompt):
            raise ValueError(self.status.value)
        n_layers, n_heads = len(self.magnitudes.layers), self.patterns.pattern.shape[1]
        self.layer = widgets.IntSlider(value=0, min=0, max=n_layers - 1, description="layer", continuous_update=False)
        self.head = widgets.Dropdown(options=[("all heads", ALL_HEADS)] + [(f"head {h}", h) for h in range(n_heads)],
                                     value=ALL_HEADS, description="head")
        self.tokens_out, self.magnitudes_out, self.attention_out = widgets.Output(), widgets.Output(), widgets.Output()
        super().__init__([
            widgets.HTML(f"<b>mi_massive explorer: {self.magnitudes.model_name}</b>"), self.prompt,
            widgets.HBox([self.layer, self.head]), self.status, self.tokens_out, self.magnitudes_out,
            self.attention_out,
        ])
        self.layer.value = layer if layer is not None else (self.found.first_layer or 0)
        self._draw()
        self.prompt.observe(lambda ch: self._run(ch["new"]) and self._draw(), names="value")
        self.layer.observe(lambda ch: self._draw(), names="value")
        self.head.observe(lambda ch: self._draw(views=("attention",)), names="value")

    @property
    def str_tokens(self) -> tuple[str, ...]:
        return self.magnitudes.str_tokens

    @property
    def resid(self) -> Any:  # (layer, pos, d_model)
        return self.magnitudes.resid

    def _run(self, prompt: str) -> bool:
        """The analyses of a new prompt; False (and a message) if it is invalid."""
        try:
            self.magnitudes, self.patterns, self.found = self.analyse(prompt)
        except ValueError as exc:
            self.status.value = f'<span style="color:#b00">{exc}</span>'
            return False
        self.status.value = f"{len(self.str_tokens)} tokens. {self.found.sentence()}"
        return True

    def _draw(self, views: tuple[str, ...] = ("tokens", "magnitudes", "attention")) -> None:
        layer, head = self.layer.value, self.head.value
        if "tokens" in views:
            peak = self.magnitudes.at(layer).abs().max(-1).values  # (pos,)
            dims = sorted({int(d) for d in self.found.dim[self.found.layer == layer]})
            caption = (f"layer {layer}: tokens shaded by their largest |x| (max {float(peak.max()):.4g}); "
                       f"massive dims here: {dims or 'none'}")
            self._put(self.tokens_out, View((text(caption), colored_tokens(self.str_tokens, peak.tolist()))))
        if "magnitudes" in views:
            self._put(self.magnitudes_out, show_magnitudes(self.magnitudes, layer=layer, height=440))
        if "attention" in views:
            heads = None if head == ALL_HEADS else [head]
            self._put(self.attention_out, show_attention(self.patterns, layer=layer, heads=heads))

    @staticmethod
    def _put(out: widgets.Output, view: View) -> None:
        out.outputs = ()
        fig = view.figure
        if fig is not None and len(view.parts) == 1:  # plotly's own renderer: no 3 MB of inlined plotly.js per move
            out.append_display_data(_Figure(fig))
        else:
            out.append_display_data(view)


class _Figure:
    """A plotly figure as plotly's JSON mime type, which JupyterLab's plotly renderer draws."""

    def __init__(self, fig: Any):
        self.fig = fig

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        import json

        return {"application/vnd.plotly.v1+json": json.loads(self.fig.to_json()),
                "text/plain": f"<plotly figure: {self.fig.layout.title.text or ''}>"}
