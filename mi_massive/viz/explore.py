"""`explore(model)`: an ipywidgets app; a prompt box, a layer slider and a head picker drive three views."""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import torch

from ._html import View, displayable, text
from .attention import attention_view
from .magnitudes import magnitudes_figure
from .tokens import colored_tokens

DEFAULT_PROMPT = "Summer is warm. Winter is cold."
ALL_HEADS = -1


class Explorer(widgets.VBox):
    """The app. Controls (`prompt`, `layer`, `head`) and outputs (`tokens_out`, `magnitudes_out`, `attention_out`,
    `status`) are attributes, so it can be driven from Python: `app.layer.value = 12`."""

    def __init__(self, model: Any, *, prompt: str = DEFAULT_PROMPT, layer: int | None = None):
        from .. import _inputs
        from ..models import model_name

        self.model, self.model_name = model, model_name(model)
        n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
        if layer is not None:
            layer = _inputs.check_index("layer", layer, n_layers)
        self.prompt = widgets.Text(value=prompt, description="prompt", continuous_update=False,
                                   layout=widgets.Layout(width="80%"))
        self.layer = widgets.IntSlider(value=0, min=0, max=n_layers - 1, description="layer", continuous_update=False)
        self.head = widgets.Dropdown(options=[("all heads", ALL_HEADS)] + [(f"head {h}", h) for h in range(n_heads)],
                                     value=ALL_HEADS, description="head")
        self.status = widgets.HTML()
        self.tokens_out, self.magnitudes_out, self.attention_out = widgets.Output(), widgets.Output(), widgets.Output()
        super().__init__([
            widgets.HTML(f"<b>mi_massive explorer: {self.model_name}</b>"), self.prompt,
            widgets.HBox([self.layer, self.head]), self.status, self.tokens_out, self.magnitudes_out,
            self.attention_out,
        ])
        self._run(prompt)
        self.layer.value = layer if layer is not None else (self.found.first_layer or 0)
        self._draw()
        self.prompt.observe(lambda ch: self._run(ch["new"]) and self._draw(), names="value")
        self.layer.observe(lambda ch: self._draw(), names="value")
        self.head.observe(lambda ch: self._draw(views=("attention",)), names="value")

    def _run(self, prompt: str) -> bool:
        """One forward pass keeping every block output and attention pattern; False (and a message) if invalid."""
        from .. import _inputs
        from .._hooks import capture
        from ..arch import hook
        from ..detect import find_massive_activations

        try:
            (toks,) = _inputs.tokenize(self.model, prompt)
        except ValueError as exc:
            self.status.value = f'<span style="color:#b00">{exc}</span>'
            return False
        n = self.model.cfg.n_layers
        names = [hook.resid_post(l) for l in range(n)] + [hook.pattern(l) for l in range(n)]
        _, cache = capture(self.model, toks[None], names)
        self.str_tokens = _inputs.str_tokens(self.model, toks)
        self.resid = torch.stack([cache[hook.resid_post(l)][0] for l in range(n)]).float().cpu()  # (layer, pos, d_model)
        self.patterns = torch.stack([cache[hook.pattern(l)][0] for l in range(n)]).float().cpu()  # (layer, head, q, k)
        self.found = find_massive_activations(self.model, toks[None])
        self.status.value = f"{len(self.str_tokens)} tokens. {self.found.sentence()}"
        return True

    def _draw(self, views: tuple[str, ...] = ("tokens", "magnitudes", "attention")) -> None:
        layer, head = self.layer.value, self.head.value
        if "tokens" in views:
            peak = self.resid[layer].abs().max(-1).values  # (pos,)
            dims = sorted({int(d) for d in self.found.dim[self.found.layer == layer]})
            caption = (f"layer {layer}: tokens shaded by their largest |x| (max {float(peak.max()):.4g}); "
                       f"massive dims here: {dims or 'none'}")
            self._put(self.tokens_out, View((text(caption), colored_tokens(self.str_tokens, peak.tolist()))))
        if "magnitudes" in views:
            self._put(self.magnitudes_out, magnitudes_figure(self.resid[layer], self.str_tokens, layer=layer,
                                                             model_name=self.model_name, height=440))
        if "attention" in views:
            heads = list(range(self.model.cfg.n_heads)) if head == ALL_HEADS else [head]
            self._put(self.attention_out, attention_view(self.patterns[layer, heads], self.str_tokens,
                                                         self.found.positions(0), layer=layer, heads=heads))

    @staticmethod
    def _put(out: widgets.Output, view: Any) -> None:
        out.outputs = ()
        out.append_display_data(displayable(view))


def explore(model: Any, *, prompt: str = DEFAULT_PROMPT, layer: int | None = None) -> Explorer:
    """An ipywidgets app: type a prompt, slide through layers, pick a head; the views follow.

        >>> app = explore(model)         # doctest: +SKIP
        >>> app                          # displays in Jupyter
        >>> app.layer.value = 12         # drive it from Python
    """
    return Explorer(model, prompt=prompt, layer=layer)
