"""Every result shows itself from the result alone; the explorer reacts to its controls (ipywidgets' Python API)."""

import re

import pytest
import torch

from mi_massive import attention_patterns, explore, find_massive_activations, layer_magnitudes, viz
from mi_massive._results import Result
from mi_massive.detect import scan
from mi_massive.viz._html import View
from mi_massive.testing import planted


def _scan(model):
    return scan(model, ["hello world", "abc def"])


TEXTS = ["hello world and more text here to fill a window", "another line of text for the tiny model", "a third"]


def _analysis(module, fn, *args, **kwargs):
    def build(model):
        import importlib

        return getattr(importlib.import_module(f"mi_massive.{module}"), fn)(model, *args, **kwargs)

    return build


# One way to build each registered result type on the tiny planted model; a view without a factory fails.
FACTORIES = {
    "MassiveActivations": lambda m: _scan(m)[0],
    "LayerProfile": lambda m: _scan(m)[1],
    "Origin": _analysis("origin", "trace_origin", "hello world", ablate=False),
    "AttentionSinks": _analysis("attention", "attention_sinks", ["hello world", "abc def"]),
    "ImplicitBias": _analysis("attention", "implicit_bias", ["hello world", "abc def"], swap=False),
    "PathPatching": _analysis("patching", "path_patch", ["hello world", "abc def"]),
    "MassiveStats": _analysis("constancy", "massive_stats", TEXTS),
    "Intervention": _analysis("interventions", "build_intervention", TEXTS),
    "Perplexity": _analysis("perplexity", "perplexity", TEXTS, seq_len=16),
    "BiasTermTable": _analysis("perplexity", "bias_term_table", (("toy", TEXTS),), seq_len=16, max_chunks=2,
                               n_calibration=1),
    "LayerMagnitudes": _analysis("snapshot", "layer_magnitudes", "hello world"),
    "AttentionPatterns": _analysis("snapshot", "attention_patterns", "hello world", [1, 2]),
}


def _result_types() -> dict[str, type]:
    """Every public result class of the package (those in mi_massive.__all__)."""
    import mi_massive

    out = {}
    for name in mi_massive.__all__:
        obj = getattr(mi_massive, name)
        if isinstance(obj, type) and issubclass(obj, Result):
            out[name] = obj
    return out


def _assert_displayable(view):
    assert isinstance(view, View)  # show() always returns a View
    if view.figure is not None:
        assert view.figure.data, "empty figure"
        assert view.figure.to_plotly_json()["data"]
    src = view._repr_html_()
    assert "CircuitsVis.render(" in src or "Plotly.newPlot(" in src or "<table" in src
    assert not re.search(r"<script[^>]*\bsrc=", src)  # works offline: the JS is inlined


def test_every_view_has_a_tested_result_type():
    assert set(_result_types()) == set(FACTORIES)
    for cls in _result_types().values():
        assert callable(viz.view_function(cls))  # each class names a view that exists


@pytest.fixture(scope="module")
def results(tiny_llama):
    """One result of each type, built once for the tests of this module."""
    return {kind: build(tiny_llama) for kind, build in FACTORIES.items()}


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_show_returns_displayable(kind, results):
    result = results[kind]
    assert type(result).__name__ == kind
    _assert_displayable(result.show())


def test_origin_view_marks_the_super_weight(tiny_llama, results):
    plant = planted(tiny_llama)
    fig = results["Origin"].show().figure
    blocks, neurons = fig.data[:2], fig.data[2]
    mlp = dict(zip(blocks[1].x, blocks[1].y))
    assert mlp[plant.layer] == pytest.approx(plant.magnitude, rel=0.01)  # the planted block's MLP writes it
    assert neurons.x[0] == f"n{plant.neuron}" and neurons.marker.color[0] == "#ff7f0e"
    assert "super weight down_proj[1][5, 7]" in fig.layout.title.text


def test_heatmaps_are_layer_by_head(results):
    sinks = results["AttentionSinks"]
    fig = sinks.show().figure
    assert [t.type for t in fig.data] == ["heatmap", "heatmap"]
    assert torch.tensor(fig.data[0].z).shape == (4, 4) and torch.allclose(
        torch.tensor(fig.data[0].z, dtype=torch.float32), sinks.sink_mass)
    patch = results["PathPatching"]
    fig = patch.show().figure
    df = patch.to_dataframe()
    assert [t.name for t in fig.data] == [None] * df.path.nunique()
    assert sum(torch.tensor(t.z).nan_to_num().sum() for t in fig.data) == pytest.approx(df.effect.sum(), abs=1e-5)


def test_show_unknown_type_names_the_known_ones():
    with pytest.raises(TypeError, match="no view for object: a result class names its view in VIEW"):
        viz.show(object())


def test_profile_figure_is_fig2(tiny_llama):
    _, profile = _scan(tiny_llama)
    fig = profile.show().figure
    assert [t.name for t in fig.data] == ["top 1", "top 2", "top 3", "median"]
    assert fig.layout.yaxis.type == "log"
    assert list(fig.data[0].y) == pytest.approx(profile.top[:, 0].tolist())
    assert list(fig.data[3].y) == pytest.approx(profile.median.tolist())


def test_massive_view_colours_the_planted_token(tiny_llama):
    found = find_massive_activations(tiny_llama, ["hello world", "abc def"])
    view = found.show()
    tokens = [p for p in view.parts if getattr(p, "element", None) == "ColoredTokens"]
    assert len(tokens) == 2
    peak = float(found.value.abs().max())
    for cv in tokens:  # the plant writes ~1000 at BOS (position 0) only
        assert cv.props["values"][0] == pytest.approx(peak) and set(cv.props["values"][1:]) == {0.0}
        assert cv.props["tokens"][0] == "<bos>"
    assert view.meta["n_hits"] == len(found)


def test_magnitudes_3d_is_the_layer_output(tiny_llama):
    plant = planted(tiny_llama)
    fig = layer_magnitudes(tiny_llama, "hello world", plant.layer).show().figure
    z = torch.tensor(fig.data[0].z)  # (pos, d_model)
    assert z.shape == (12, tiny_llama.cfg.d_model)
    pos, dim = divmod(int(z.argmax()), z.shape[1])
    assert (pos, dim) == (0, plant.dim) and float(z.max()) == pytest.approx(plant.magnitude, rel=0.05)
    with pytest.raises(ValueError, match=r"layer 4 out of range: valid layers are 0..3"):
        layer_magnitudes(tiny_llama, "hello", 4)


def test_attention_marks_sinks(tiny_llama):
    view = attention_patterns(tiny_llama, "hello world", 2).show(heads=[0, 3])
    assert view.meta["sinks"] == [0] and view.meta["heads"] == [0, 3]
    cv = next(p for p in view.parts if getattr(p, "element", None) == "AttentionHeads")
    assert cv.props["tokens"][0] == "*<bos>*" and cv.props["tokens"][1] == "h"
    pattern = torch.as_tensor(cv.props["attention"])
    assert pattern.shape == (2, 12, 12)
    assert view.meta["sink_share"] == pytest.approx(pattern[:, :, 0].mean(-1).tolist(), rel=1e-5)
    with pytest.raises(ValueError, match="head 4 out of range"):
        attention_patterns(tiny_llama, "hello", 2).show(heads=[4])


def _peak(fig_json):
    return float(re.search(r"peak ([0-9.e+-]+)", fig_json["layout"]["title"]["text"]).group(1))


def _data(out):
    (item,) = out.outputs
    return item["data"]


def test_explorer_controls_drive_the_outputs(tiny_llama):
    app = explore(tiny_llama, prompt="hello world")
    plant = planted(tiny_llama)
    assert app.layer.value == plant.layer  # starts where the massive activation appears
    assert app.layer.max == 3 and len(app.head.options) == 1 + tiny_llama.cfg.n_heads
    fig0 = _data(app.magnitudes_out)["application/vnd.plotly.v1+json"]
    att0, tok0 = _data(app.attention_out)["text/html"], _data(app.tokens_out)["text/html"]

    app.layer.value = 0  # before the plant: no massive value
    fig1 = _data(app.magnitudes_out)["application/vnd.plotly.v1+json"]
    assert fig1 != fig0 and "blocks.0.hook_resid_post" in fig1["layout"]["title"]["text"]
    assert _peak(fig1) < 10 < _peak(fig0)
    assert _data(app.tokens_out)["text/html"] != tok0 and _data(app.attention_out)["text/html"] != att0

    tok1, fig_before = _data(app.tokens_out)["text/html"], _data(app.magnitudes_out)
    app.head.value = 2  # only the attention view follows the head picker
    assert "L0H2" in _data(app.attention_out)["text/html"] and "L0H0" not in _data(app.attention_out)["text/html"]
    assert _data(app.tokens_out)["text/html"] == tok1 and _data(app.magnitudes_out) == fig_before

    app.prompt.value = "abc"
    assert app.str_tokens == ("<bos>", "a", "b", "c")
    app.layer.value = plant.layer
    fig = _data(app.magnitudes_out)["application/vnd.plotly.v1+json"]
    assert "token 0 ('<bos>')" in fig["layout"]["title"]["text"] and _peak(fig) > 100
    assert app.resid.shape == (4, 4, tiny_llama.cfg.d_model)
    assert "4 tokens" in app.status.value

    kept = _data(app.magnitudes_out)
    app.prompt.value = "   "  # invalid: one message, views kept
    assert "prompt 0 is empty" in app.status.value and _data(app.magnitudes_out) == kept


@pytest.mark.real
def test_smollm2_views_show_dim_507_at_bos(smollm2):
    fig = layer_magnitudes(smollm2, "Summer is warm. Winter is cold.", 15).show().figure
    z = torch.tensor(fig.data[0].z)
    pos, dim = divmod(int(z.argmax()), z.shape[1])
    assert (pos, dim) == (0, 507) and 15_000 < float(z.max()) < 40_000
    assert float(z[1:].max()) < 2_000  # only the first token is massive
    app = explore(smollm2)
    assert app.layer.value == 11  # block 11 writes the massive activation
    assert "507" in app.status.value
    view = attention_patterns(smollm2, "Summer is warm. Winter is cold.", 12).show()
    assert view.meta["sinks"] == [0]
    assert min(view.meta["sink_share"]) > 0.3  # every head of block 12 puts a large share on the BOS sink


def test_views_draw_results_without_the_model(tiny_llama, results, tmp_path, monkeypatch):
    """Every view, from results saved and loaded back, with a model whose forward raises: views never run it."""
    def refuse(*args, **kwargs):
        raise AssertionError("a view ran the model")

    monkeypatch.setattr(type(tiny_llama), "forward", refuse)
    monkeypatch.setattr(type(tiny_llama), "__call__", refuse)
    with pytest.raises(AssertionError, match="a view ran the model"):
        tiny_llama(torch.zeros(1, 2, dtype=torch.long))
    for kind, result in results.items():
        path = tmp_path / f"{kind}.safetensors"
        result.save(path)
        back = type(result).load(path)
        view, again = result.show(), back.show()
        _assert_displayable(view)
        _assert_displayable(again)
        if view.figure is not None:  # the same picture, redrawn from the file
            assert again.figure.to_json() == view.figure.to_json(), kind


def test_viz_never_calls_a_forward_pass():
    """Nothing under viz/ runs, captures or hooks a model."""
    from pathlib import Path

    src = Path(viz.__file__).parent
    for path in src.glob("*.py"):
        code = path.read_text()
        for call in (r"run_with_cache", r"run_with_hooks", r"\bcapture\(", r"\bhooked\(", r"\bmodel\(",
                     r"\bforward\(", r"to_tokens\(", r"\btokenize\("):
            assert not re.search(call, code), f"{path.name} calls {call}"


def test_panels_show_what_varies_or_say_why_not(results):
    """No panel repeats another or shows a constant as a finding; receivers and ticks read as a person names them."""
    sinks = results["AttentionSinks"]
    fig = sinks.show().figure  # where heads look, then what they read there: not alpha twice
    ratio = sinks.v_norm_sink / sinks.v_norm_other
    assert torch.allclose(torch.tensor(fig.data[1].z, dtype=torch.float32), ratio)
    assert "alpha >" in fig.layout.annotations[0].text  # alpha marks the cells of the first panel

    bias = results["ImplicitBias"]
    view = bias.show()
    fig = view.figure
    assert torch.allclose(torch.tensor(fig.data[2].z, dtype=torch.float32), bias.spread)  # size spread, not cosine 1
    assert "cosine to the mean" in fig.layout.title.text
    if view.meta["direction_by_construction"]:  # the tiny model: one BOS sink in every prompt
        assert "fixed by construction" in fig.layout.title.text

    patch = results["PathPatching"]
    fig = patch.show().figure
    titles = [a.text for a in fig.layout.annotations]
    assert titles[-1] == "direct" and fig.data[-1].y == ("final residual",)
    assert str(patch.n_layers) not in {y for t in fig.data for y in t.y}  # no "layer n_layers" row
    assert "direct" in patch.receivers and "direct" in set(patch.top(50).receiver)
    if all(set(p) <= {0} for p in patch.positions):  # the plant sits at BOS: query paths are exactly clean
        assert any("q: no effect by construction" in t for t in titles)

    fig = results["LayerProfile"].show().figure
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.dtick == 1  # one label per decade


def test_a_dim_at_every_position_is_one_row(results):
    import dataclasses

    from mi_massive.viz.tokens import dims_table

    found = results["MassiveActivations"]
    n = len(found.str_tokens[0])
    extra = dict(prompt=torch.zeros(n, dtype=torch.long), layer=torch.full((n,), 2), pos=torch.arange(n),
                 dim=torch.full((n,), 9), value=torch.linspace(200, 300, n), median=torch.full((n,), 0.1))
    wide = dataclasses.replace(found, **{k: torch.cat([getattr(found, k), v.to(getattr(found, k).dtype)])
                                         for k, v in extra.items()})
    table = dims_table(wide).set_index("dim")
    assert table.positions[9] == "all positions" and table.tokens[9] == ""
    assert table["|x| range"][9] == "200..300" and table.layers[9] == "2..2"
    assert table.positions[found.dims[0]] == "0"  # the planted dim: BOS only, listed
