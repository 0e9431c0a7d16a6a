"""`write_report`: one self-contained HTML file with every finding for a model, readable offline.

plotly.js and circuitsvis's bundled JS are inlined once in the page head; every view after that is a div and a
small script, so the file opens without a network (`mi-massive report smollm2-135m -o report.html`).
"""

from __future__ import annotations

import datetime as _dt
import html
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._types import HookedModel
from .viz._html import STYLE, View, scripts, text


@dataclass
class _Context:
    """What the sections share: the model, the prompts, detection and profile, and the layer to look at."""

    model: HookedModel
    prompts: list[str]
    found: Any
    profile: Any
    layer: int
    size: dict[str, Any]


def _detection(ctx: _Context) -> list[Any]:
    return [ctx.found.show()]


def _profile(ctx: _Context) -> list[Any]:
    return [text(ctx.profile.sentence()), ctx.profile.show()]


def _magnitudes(ctx: _Context) -> list[Any]:
    from .snapshot import layer_magnitudes

    return [text(f"Prompt 0, block {ctx.layer}: drag to rotate; hover for token, dim and |x|."),
            layer_magnitudes(ctx.model, ctx.prompts[0], ctx.layer).show()]


def _attention(ctx: _Context) -> list[Any]:
    from .snapshot import attention_patterns

    return [attention_patterns(ctx.model, ctx.prompts[0], ctx.layer).show()]


def _origin(ctx: _Context) -> list[Any]:
    from .origin import trace_origin

    origin = trace_origin(ctx.model, ctx.prompts[0], n_random=ctx.size["origin_random"],
                          search_steps=ctx.size["origin_search"])
    return [text(origin.sentence()), origin.show(), origin.causal] if origin.found else [text(origin.sentence())]


def _sinks(ctx: _Context) -> list[Any]:
    from .attention import attention_sinks

    sinks = attention_sinks(ctx.model, ctx.prompts)
    return [text(sinks.sentence()), sinks.show()]


def _implicit_bias(ctx: _Context) -> list[Any]:
    from .attention import implicit_bias

    bias = implicit_bias(ctx.model, ctx.prompts)
    return [text(bias.sentence()), bias.show(), bias.swap]


def _patching(ctx: _Context) -> list[Any]:
    from .patching import path_patch

    if ctx.found.first_layer is None:
        return [text("nothing massive to patch")]
    result = path_patch(ctx.model, ctx.prompts[: ctx.size["patch_prompts"]])
    patched = (f"{len(result.str_tokens)} of {len(ctx.prompts)} prompts patched (quick mode; full=True patches all)"
               if len(result.str_tokens) < len(ctx.prompts) else f"all {len(ctx.prompts)} prompts patched")
    return [text(f"{result.sentence()} ({patched})"), result.show(), result.summary(),
            text("receivers with the largest effect:"), result.top(8)]


def _interventions(ctx: _Context) -> list[Any]:
    from .constancy import massive_stats
    from .perplexity import bias_term_table

    stats = massive_stats(ctx.model, ctx.prompts)
    table = bias_term_table(ctx.model, ("wiki-en",), **ctx.size["table3"])
    return [text(stats.sentence()), stats.show(), text(table.sentence()), table.show(), table.to_dataframe().reset_index()]


# What the sections run: QUICK (the default) finishes in under 3 minutes for smollm2-135m on a 2-core CPU
# (benchmarks/RESULTS.md); FULL is the paper's size (every prompt patched, Table 3 as in `mi-massive table3 --full`).
QUICK = {"patch_prompts": 1, "origin_random": 1, "origin_search": 1,
         "table3": {"seq_len": 64, "max_chunks": 2, "n_calibration": 4}}
MODES = {False: "quick mode; full=True (--full) for the paper's size", True: "the paper's full size"}
FULL = {"patch_prompts": None, "origin_random": 3, "origin_search": 3,
        "table3": {"seq_len": 256, "max_chunks": 32, "n_calibration": 32}}

# the sections' cost in passes of the first prompt, measured on smollm2-135m with 4 prompts (benchmarks/RESULTS.md)
COST = {"fixed": 13.0, "per_prompt": 18.0, "per_patched_prompt": 40.0, "per_table3_token": 1.1}

# (anchor, title, section): each section returns views (View, plotly Figure or HTML strings), in page order.
SECTIONS: list[tuple[str, str, Callable[[_Context], list[Any]]]] = [
    ("detection", "Massive activations", _detection),
    ("profile", "Layer profile (Fig. 2)", _profile),
    ("magnitudes", "Magnitudes of one layer (Fig. 1)", _magnitudes),
    ("origin", "Origin: who writes it", _origin),
    ("attention", "Attention patterns and sink tokens", _attention),
    ("sinks", "Attention sinks per head", _sinks),
    ("implicit-bias", "Implicit attention bias", _implicit_bias),
    ("patching", "Path patching through attention", _patching),
    ("interventions", "Interventions: constancy and Table 3", _interventions),
]


def _say(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


def _about(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _cost(size: dict[str, Any], n_prompts: int, n_tokens: int) -> float:
    """The report's time in passes of one prompt, from section times measured on smollm2-135m: a fixed part, a part
    per prompt, per patched prompt and per Table 3 token."""
    patched = n_prompts if size["patch_prompts"] is None else min(size["patch_prompts"], n_prompts)
    t3 = size["table3"]
    t3_tokens = t3["seq_len"] * (4 * t3["max_chunks"] + t3["n_calibration"])
    per = n_tokens / n_prompts  # a Table 3 token costs about 1/per of a prompt-pass
    return (COST["fixed"] + COST["per_prompt"] * n_prompts + COST["per_patched_prompt"] * patched
            + COST["per_table3_token"] * t3_tokens / per)


def _focus_layer(found: Any, profile: Any, n_layers: int) -> int:
    """The block after the first one holding a massive activation: its attention already sees them."""
    first = found.first_layer if found.first_layer is not None else profile.jump_layer
    return min(first + 1, n_layers - 1)


def _page(title: str, header: str, sections: list[tuple[str, str, list[Any]]]) -> str:
    import plotly.graph_objects as go

    views = [View((v,)) if isinstance(v, go.Figure) else v for _, _, vs in sections for v in vs]
    needs = set().union(*(v.needs() for v in views if isinstance(v, View)))
    toc = " · ".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t, _ in sections)
    body = []
    for anchor, name, vs in sections:
        parts = [v.body() if isinstance(v, View) else View((v,)).body() for v in vs]
        body.append(f'<section id="{anchor}" class="mi-section"><h2>{html.escape(name)}</h2>{"".join(parts)}</section>')
    return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>{STYLE}'
            '<style>body{max-width:1300px;margin:auto;padding:0 16px;font-family:system-ui,sans-serif}'
            "section.mi-section{border-top:1px solid #ddd;padding:8px 0}</style>\n"
            f"{scripts(needs)}</head>\n<body><h1>{html.escape(title)}</h1>{header}<nav>{toc}</nav>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_report(model: HookedModel, path: str | Path, inputs: str | Sequence[str] | None = None, *, layer: int | None = None,
                 full: bool = False, progress: bool | None = None) -> Path:
    """Write one self-contained HTML report of `model`'s massive activations (works offline); returns the path.

    `inputs` is a prompt or a list of prompts (a bare string is one prompt); None: four built-in prompts.
    By default the costly sections run at a quick size (`QUICK`: path patching of the first prompt, a small
    Table 3); `full=True` runs the paper's size (`FULL`). With `progress` (default on), it says what it will do
    and about how long (scaled from the time of one pass of the first prompt), then shows a bar over the sections.

        >>> write_report(load_model("smollm2-135m"), "report.html")   # doctest: +SKIP
    """
    import time

    from tqdm.auto import tqdm

    from importlib.metadata import version

    from . import _inputs
    from ._inputs import DEFAULT_PROMPTS
    from .detect import scan
    from .models import model_name

    path = Path(path)
    if not path.parent.exists() or path.is_dir():
        raise ValueError(f"cannot write {str(path)!r}: {'it is a directory' if path.is_dir() else 'no such directory'}")
    prompts = [inputs] if isinstance(inputs, str) else list(DEFAULT_PROMPTS if inputs is None else inputs)
    n_tokens = sum(len(t) for t in _inputs.tokenize(model, prompts))  # validates before the long work
    if layer is not None:
        layer = _inputs.check_index("layer", layer, model.cfg.n_layers)
    size = FULL if full else QUICK
    found, profile = scan(model, prompts, progress=False)
    if progress is not False:
        import torch

        with torch.no_grad():  # one warm pass of the first prompt: the unit the sections' costs are measured in
            start = time.perf_counter()
            model(_inputs.tokenize(model, prompts[0])[0][None].to(model.cfg.device))
            one_pass = time.perf_counter() - start
        _say(f"report on {model_name(model)}: {len(SECTIONS)} sections over {len(prompts)} prompt(s) into {path} "
             f"({MODES[full]}); "
             f"about {_about(one_pass * _cost(size, len(prompts), n_tokens))} on this machine")
    ctx = _Context(model, prompts, found, profile,
                   layer if layer is not None else _focus_layer(found, profile, model.cfg.n_layers), size)
    done = []
    bar = tqdm(SECTIONS, desc="report", disable=progress is False, unit="section")
    for anchor, name, section in bar:
        bar.set_postfix_str(anchor)
        try:
            done.append((anchor, name, section(ctx)))
        except Exception as exc:  # one failed analysis must not lose the others: say so in its section
            warnings.warn(f"report section {anchor!r} failed: {type(exc).__name__}: {exc}", RuntimeWarning,
                          stacklevel=2)
            done.append((anchor, name, [f'<div class="mi-error" style="color:#b00">this analysis failed: '
                                        f"{html.escape(type(exc).__name__)}: {html.escape(str(exc))}</div>"]))
    bar.close()
    cfg = model.cfg
    header = text(f"{model_name(model)}: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads; "
                  f"{len(prompts)} prompt(s); mi_massive {version('mi_massive')}; "
                  f"{_dt.datetime.now().isoformat(timespec='minutes')}")
    header += "<ol class='mi-caption'>" + "".join(f"<li>{html.escape(p)}</li>" for p in prompts) + "</ol>"
    path.write_text(_page(f"Massive activations in {model_name(model)}", header, done), encoding="utf-8")
    return path
