"""Tutorials and paper notebooks: generated from their sources, checks that can fail, notebooks that run."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import pkgutil
import re
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("tutorials_build", ROOT / "tutorials" / "build.py")
build = sys.modules.setdefault("tutorials_build", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(build)

TUTORIALS = sorted(build.TUTORIAL_SOURCES.glob("*.py"))
EXECUTED = sorted(ROOT.glob("tutorials/*_solutions.ipynb")) + sorted(ROOT.glob("notebooks/*.ipynb"))


# --- the generator ---------------------------------------------------------------------------------------

def test_committed_notebooks_are_what_the_sources_generate():
    expected = build.expected()
    stale = [str(p.relative_to(ROOT)) for p, text in expected.items() if not p.exists() or p.read_text() != text]
    assert not stale, f"regenerate with `python tutorials/build.py`: {stale}"
    orphans = set(ROOT.glob("tutorials/*.ipynb")) | set(ROOT.glob("notebooks/*.ipynb"))
    assert not orphans - set(expected), f"notebooks without a source: {sorted(orphans - set(expected))}"


def test_notebooks_are_stored_without_outputs():
    for path in build.expected():
        for cell in json.loads(path.read_text())["cells"]:
            assert cell.get("outputs", []) == [] and cell.get("execution_count") is None, path.name


@pytest.mark.parametrize("source", TUTORIALS, ids=lambda p: p.stem)
def test_exercise_notebook_has_stub_check_and_no_solution_code(source):
    cells = json.loads((ROOT / "tutorials" / f"{source.stem}_exercises.ipynb").read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")  # hints are prose
    names = build.exercises(source)
    assert len(names) >= 3
    exercise_cells = [c for c in build.parse(source) if c.kind == "exercise"]
    for name, cell in zip(names, exercise_cells):
        i = next(i for i, c in enumerate(cells) if c["cell_type"] == "code" and f"def {name}(" in "".join(c["source"]))
        stub, check, pointer = ("".join(c["source"]) for c in cells[i:i + 3])
        assert "NotImplementedError" in stub and "# SOLUTION" not in stub
        assert f"check_{name}({name}, " in check
        assert pointer.startswith("<details><summary>Solution</summary>") and f"{source.stem}_solutions.ipynb" in pointer
        assert "Difficulty" in "".join(cells[i - 1]["source"]) and "minutes" in "".join(cells[i - 1]["source"])
        stub_code, solution_code = build.split_exercise(cell, source.name)
        only_solution = [ln.strip() for ln in solution_code.splitlines() if ln.strip() not in stub_code]
        leaked = [ln for ln in only_solution if len(ln) > 8 and ln in code]
        assert not leaked, f"solution code of {name} in the exercise notebook: {leaked[:3]}"


@pytest.mark.parametrize("source", TUTORIALS, ids=lambda p: p.stem)
def test_each_tutorial_asks_questions_with_folded_computed_answers(source):
    assert len(build.questions(source)) >= 2, "ask at least two questions that interpret a result"
    for version in ("exercises", "solutions"):
        cells = json.loads((ROOT / "tutorials" / f"{source.stem}_{version}.ipynb").read_text())["cells"]
        answers = [c for c in cells if "answer" in c["metadata"].get("tags", [])]
        assert len(answers) == len(build.questions(source))
        for c in answers:
            assert c["cell_type"] == "code" and c["metadata"]["jupyter"]["source_hidden"]
            assert "answer(" in "".join(c["source"])


@pytest.mark.parametrize("source", TUTORIALS, ids=lambda p: p.stem)
def test_each_tutorial_marks_one_key_figure(source):
    marked = [c for c in build.parse(source) if c.kind == "code" and c.text.startswith(KEY_FIGURE)]
    assert len(marked) == 1 and ".show()" in marked[0].text


def test_answer_is_folded():
    from mi_massive.tutorial_checks import answer

    html = answer("It is **one** dimension.")._repr_markdown_()
    assert html.startswith("<details><summary>Answer</summary>") and html.endswith("</details>")


def _write(tmp_path, text):
    path = tmp_path / "t.py"
    path.write_text(text)
    return path


GOOD = '''# %% [markdown]
# ### Exercise: double
# %% [exercise difficulty=1 minutes=2]
def double(x):
    """Twice x."""
    # EXERCISE
    # raise NotImplementedError()
    # SOLUTION
    return 2 * x
    # END
# %%
check_double(double, 3)
'''


def test_builder_folds_answers(tmp_path):
    source = GOOD + "# %% [markdown]\n# ### Question: why twice?\n# %% [answer]\nanswer(f'{2 * 3}')\n"
    nbs = build.build(_write(tmp_path, source))
    for version in ("exercises", "solutions"):
        last = json.loads(nbs[f"t_{version}.ipynb"])["cells"][-1]
        assert last["metadata"] == {"jupyter": {"source_hidden": True}, "tags": ["answer"]}
    assert build.questions(_write(tmp_path, source)) == ["### Question: why twice?"]


def test_builder_splits_stub_and_solution(tmp_path):
    nbs = build.build(_write(tmp_path, GOOD))
    ex, sol = (json.loads(nbs[f"t_{v}.ipynb"])["cells"] for v in ("exercises", "solutions"))
    assert [c["cell_type"] for c in ex] == ["markdown", "code", "code", "markdown"]
    assert "".join(ex[1]["source"]).endswith("raise NotImplementedError()") and "2 * x" not in "".join(ex[1]["source"])
    assert "t_solutions.ipynb" in "".join(ex[3]["source"]) and not any("2 * x" in "".join(c["source"]) for c in ex)
    assert "".join(sol[1]["source"]).endswith("return 2 * x") and "NotImplementedError" not in "".join(sol[1]["source"])
    assert "🔴⚪⚪⚪⚪" in "".join(ex[0]["source"]) and "about 2 minutes" in "".join(ex[0]["source"])
    assert build.build(_write(tmp_path, GOOD)) == nbs  # deterministic (stable cell ids)


@pytest.mark.parametrize("broken, message", [
    (GOOD.replace("check_double(double, 3)", "print(double(3))"), "must call a check_"),
    (GOOD.replace('"""Twice x."""\n', ""), "needs a docstring"),
    (GOOD.replace("    # END\n", ""), "'# EXERCISE', '# SOLUTION', '# END'"),
    (GOOD.replace("### Exercise: double", "Some prose"), "'### Exercise ...'"),
    (GOOD.replace("difficulty=1 minutes=2", "minutes=2"), "difficulty=1..5"),
    (GOOD.replace("# raise", "raise"), "not commented out"),
    (GOOD.replace("[exercise", "[exrecise"), "unknown cell kind"),
    (GOOD + "# %% [markdown]\n# ### Question: why?\n# %%\nprint(1)\n", "must be followed by an [answer] cell"),
    (GOOD + "# %% [markdown]\n# Prose\n# %% [answer]\nanswer('x')\n", "'### Question ...'"),
    (GOOD + "# %% [markdown]\n# ### Question: why?\n# %% [answer]\nprint('x')\n", "with answer(...)"),
])
def test_builder_rejects_a_broken_exercise(tmp_path, broken, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build.build(_write(tmp_path, broken))


def test_generator_check_mode_reports_stale(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(build, "TUTORIAL_SOURCES", tmp_path / "src")
    monkeypatch.setattr(build, "NOTEBOOK_SOURCES", tmp_path / "none")
    monkeypatch.setattr(build, "ROOT", tmp_path)
    (tmp_path / "src").mkdir()
    (tmp_path / "tutorials").mkdir()
    (tmp_path / "src" / "t.py").write_text(GOOD)
    assert build.main(["--check"]) == 1
    assert build.main([]) == 0 and (tmp_path / "tutorials" / "t_solutions.ipynb").exists()
    assert build.main(["--check"]) == 0
    assert "stale: tutorials/t_exercises.ipynb" in capsys.readouterr().out


# --- the checks: each passes the reference solution and fails wrong ones ------------------------------------

def _resid_pre(model, prompt, layer):  # the block input, not its output
    name = f"blocks.{layer}.hook_resid_pre"
    return model.run_with_cache(prompt, names_filter=name)[1][name][0]


def _per_position_median(x, *, threshold, ratio):
    a = x.abs()
    mask = (a > threshold) & (a >= ratio * a.median(dim=-1, keepdim=True).values)
    return {(int(p), int(d)) for p, d in mask.nonzero()}


def _signed(x, *, threshold, ratio):
    mask = (x > threshold) & (x >= ratio * x.median())
    return {(int(p), int(d)) for p, d in mask.nonzero()}


def _profile_without_abs(model, prompt, *, k):
    _, cache = model.run_with_cache(prompt, names_filter=lambda n: n.endswith("hook_resid_post"))
    xs = [cache[f"blocks.{l}.hook_resid_post"][0].flatten() for l in range(model.cfg.n_layers)]
    return torch.stack([x.topk(k).values for x in xs]), torch.stack([x.abs().median() for x in xs])


def _values_ignoring_bos(model, prompts, *, layer, dim, pos, prepend_bos):
    name = f"blocks.{layer}.hook_resid_post"
    return torch.stack([model.run_with_cache(p, names_filter=name)[1][name][0, pos, dim] for p in prompts])


def _loss_setting_the_next_block(model, prompt, *, layer, pos, dim, value):
    def fn(x, hook):
        x[:, pos, dim] = value
        return x
    return float(model.run_with_hooks(prompt, return_type="loss", fwd_hooks=[(f"blocks.{layer + 1}.hook_resid_post", fn)]))


def _perplexity_of_summed_loss(model, chunks):  # exp of the total instead of the mean
    return float(torch.exp(model(chunks, return_type="loss") * chunks.shape[0]))


def _mean_with_bos(model, texts, *, layer, dim):
    name = f"blocks.{layer}.hook_resid_post"
    return float(torch.stack([model.run_with_cache(t, names_filter=name)[1][name][0, 0, dim] for t in texts]).mean())


def _sink_mass_with_query_0(model, prompt, *, layer):
    name = f"blocks.{layer}.attn.hook_pattern"
    return model.run_with_cache(prompt, names_filter=name)[1][name][0, :, :, 0].mean(-1)


def _value_norms_with_sink_in_mean(model, prompt, *, layer):
    name = f"blocks.{layer}.attn.hook_v"
    norms = model.run_with_cache(prompt, names_filter=name)[1][name][0].norm(dim=-1)
    return norms[0], norms.mean(0)


def _split_with_tiled_kv_heads(model, prompt, *, layer):  # repeat() instead of repeat_interleave(): wrong GQA groups
    names = [f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.attn.hook_v"]
    _, cache = model.run_with_cache(prompt, names_filter=lambda n: n in names)
    pattern, v = cache[names[0]][0], cache[names[1]][0]
    v = v.repeat(1, model.cfg.n_heads // v.shape[1], 1)
    return (torch.einsum("hq,hd->qhd", pattern[:, :, 0], v[0]),
            torch.einsum("hqk,khd->qhd", pattern[:, :, 1:], v[1:]))


def _attention_writes_only(model, prompt, *, pos, dim):
    names = [f"blocks.{l}.hook_attn_out" for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(prompt, names_filter=lambda n: n in names)
    return torch.stack([cache[n][0, pos, dim] for n in names])


def _neurons_from_gate(model, prompt, *, layer, pos, dim):  # the gate pre-activation, not the neuron output
    name = f"blocks.{layer}.mlp.hook_pre"
    return model.run_with_cache(prompt, names_filter=name)[1][name][0, pos] * model.blocks[layer].mlp.W_out[:, dim]


_LEFT_BROKEN: list = []  # weights a wrong function did not restore: the test puts them back


def _without_weight_never_restored(model, prompt, *, layer, row, col):
    W = model.blocks[layer].mlp.W_out
    _LEFT_BROKEN.append((W, col, row, W[col, row].clone()))
    W[col, row] = 0.0
    name = f"blocks.{layer}.hook_resid_post"
    loss, cache = model.run_with_cache(prompt, names_filter=name, return_type="loss")
    return float(cache[name][0, 0, row]), float(loss)


def _patch_every_kv_head(model, prompt, *, sites, layer, kv_head):
    name = f"blocks.{layer}.attn.hook_v"
    kept = {}

    def zero(x, hook):
        for _, p, d in sites:
            x[:, p, d] = 0.0
        return x

    model.run_with_hooks(prompt, fwd_hooks=[(f"blocks.{l}.hook_resid_post", zero) for l in {s[0] for s in sites}]
                         + [(name, lambda x, hook: kept.setdefault("v", x.clone()))])
    pos = sorted({p for _, p, _ in sites})

    def patch(x, hook):
        x[:, pos] = kept["v"][:, pos]
        return x

    return float(model.run_with_hooks(prompt, return_type="loss", fwd_hooks=[(name, patch)]))


# check name -> deliberately wrong implementations (each a mistake a student makes)
WRONG = {
    "check_residual_stream": [_resid_pre],
    "check_massive_entries": [_per_position_median, _signed],
    "check_layer_top_magnitudes": [_profile_without_abs],
    "check_holder": [lambda: "the BOS token", lambda: "the first delimiter", lambda: "position 0"],
    "check_massive_values": [_values_ignoring_bos],
    "check_loss_with_entry_set": [_loss_setting_the_next_block],
    "check_chunk_perplexity": [_perplexity_of_summed_loss],
    "check_mean_first_value": [_mean_with_bos],
    "check_sink_mass": [_sink_mass_with_query_0],
    "check_value_norms": [_value_norms_with_sink_in_mean],
    "check_attention_split": [_split_with_tiled_kv_heads],
    "check_block_writes": [_attention_writes_only],
    "check_neuron_contributions": [_neurons_from_gate],
    "check_without_weight": [_without_weight_never_restored],
    "check_patched_value_loss": [_patch_every_kv_head],
}
CHECK_MODULES = {"01_finding": "finding", "02_bias_terms": "bias", "03_attention": "attention", "04_origin": "origin"}


def _all_checks():
    import mi_massive.tutorial_checks as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            module = importlib.import_module(f"{pkg.__name__}.{info.name}")
            yield from (getattr(module, n) for n in dir(module) if n.startswith("check_"))


def test_every_check_has_a_tutorial_exercise_and_wrong_answers():
    names = {f"check_{n}" for src in TUTORIALS for n in build.exercises(src)}
    checks = {c.__name__ for c in _all_checks()}
    assert checks == names, f"checks without an exercise: {checks - names}; exercises without a check: {names - checks}"
    assert set(WRONG) == checks and all(WRONG.values())


@pytest.mark.real
@pytest.mark.parametrize("source", TUTORIALS, ids=lambda p: p.stem)
def test_checks_fail_a_stub_at_once_and_pass_the_reference_but_no_wrong_answer(source, smollm2):
    module = importlib.import_module(f"mi_massive.tutorial_checks.{CHECK_MODULES[source.stem]}")
    reference, stubs = build.reference_namespace(source), build.stub_namespace(source)
    for name in build.exercises(source):
        check = getattr(module, f"check_{name}")
        start = time.perf_counter()
        with pytest.raises(NotImplementedError):
            check(stubs[name], smollm2)
        assert time.perf_counter() - start < 1.0, f"check_{name} took {time.perf_counter() - start:.1f} s to fail a stub"
        check(reference[name], smollm2)
        start = time.perf_counter()
        check(reference[name], smollm2)  # the library's answers are cached: only the function's own time is left
        again = time.perf_counter() - start
        for wrong in WRONG[check.__name__]:
            try:
                with pytest.raises(AssertionError):
                    check(wrong, smollm2)
            finally:
                while _LEFT_BROKEN:
                    W, col, row, value = _LEFT_BROKEN.pop()
                    W[col, row] = value
        print(f"check_{name}: a second passing run {again:.2f} s")


# --- every solution notebook and every paper notebook runs, once; the tutorials' key figures are photographed ---

ARTEFACTS = Path(os.environ.get("MI_MASSIVE_ARTIFACTS", ROOT / "out" / "artefacts"))
KEY_FIGURE = "# Key figure"  # first line of the code cell whose output is a tutorial's key figure


def _key_figure_html(nb) -> str:
    cell = next(c for c in nb.cells if c.cell_type == "code" and c.source.startswith(KEY_FIGURE))
    html = next(o["data"]["text/html"] for o in cell.outputs if "text/html" in o.get("data", {}))
    return f"<!doctype html><html><head><meta charset='utf-8'></head><body>{html}</body></html>"


def _screenshot(page: Path, shot: Path, tmp_path: Path) -> None:
    import shutil
    import subprocess

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("headless Chromium is missing: apt-get install -y chromium (.ci/run does it)")
    subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
                    "--no-first-run", f"--user-data-dir={tmp_path / 'chromium'}", "--hide-scrollbars",
                    "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000", "--window-size=1100,900",
                    f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=300, check=True)


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.parametrize("path", EXECUTED, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, ARTEFACTS / path.name)  # executed, for reading the numbers the text was computed from
    if path.parent.name == "tutorials":
        page = ARTEFACTS / f"{path.stem}_key_figure.html"
        page.write_text(_key_figure_html(nb))
        shot = ARTEFACTS / f"{path.stem}_key_figure.png"
        _screenshot(page, shot, tmp_path)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
