"""The package's shape (ARCHITECTURE.md), checked: the paper's rule is written once; the engine is walled off (no
module outside it imports its private modules, and it imports no analysis); no public function leaves an attribute
on the user's model."""

import ast
import inspect
from pathlib import Path

import pytest
import torch

import mi_massive

PACKAGE = Path(mi_massive.__file__).resolve().parent
TEXTS = ["hello world, this is a test", "abc def ghi jkl"]


def _modules() -> dict[str, ast.Module]:
    """Every module of the package, by dotted name (mi_massive.x.y), parsed."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return out


def _imports(name: str, tree: ast.Module) -> set[str]:
    """The mi_massive modules (or module.name) `name` imports, absolute."""
    package = name if (PACKAGE.parent / Path(*name.split("."))).is_dir() else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("mi_massive")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("mi_massive"):
                out |= {f"{mod}.{a.name}" for a in node.names} | {mod}
    return out


def _mentions(node: ast.AST, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name or isinstance(n, ast.Attribute) and n.attr == name
               for n in ast.walk(node))


def test_the_rule_is_written_once():
    """A comparison against `threshold` or against `ratio x` something appears in one function of the package."""
    where = set()
    for name, tree in _modules().items():
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, ast.Compare):
                    continue
                sides = [node.left, *node.comparators]
                by_ratio = any(isinstance(s, ast.BinOp) and isinstance(s.op, ast.Mult) and _mentions(s, "ratio")
                               for s in sides)
                by_threshold = any(isinstance(s, (ast.Name, ast.Attribute)) and _mentions(s, "threshold")
                                   for s in sides) and any(isinstance(o, (ast.Gt, ast.GtE)) for o in node.ops)
                if by_ratio or by_threshold:
                    where.add(f"{name}.{getattr(fn, 'name', '<lambda>')}")
    assert where == {"mi_massive._rule.passes"}


def test_no_module_outside_the_engine_imports_its_private_modules():
    bad = {}
    for name, tree in _modules().items():
        if name == "mi_massive.engine" or name.startswith("mi_massive.engine."):
            continue
        private = sorted(m for m in _imports(name, tree)
                         if m.startswith("mi_massive.engine.") and m.split(".")[2].startswith("_"))
        if private:
            bad[name] = private
    assert bad == {}


def test_detect_is_no_hub_of_private_names():
    """detect's private names (_scan, _progress) were imported by seven modules; none is imported now."""
    bad = {}
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.rsplit(".", 1)[-1] == "detect":
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private:
                    bad.setdefault(name, []).extend(private)
    assert bad == {}


def test_the_engine_imports_no_analysis_and_builds_no_result():
    """The engine may run hooks (`_hooks`); anything else of the package it would import is an analysis, a result
    or a view."""
    allowed = {"mi_massive._hooks", "mi_massive._hooks.run_with_hooks", "mi_massive._types",
               "mi_massive._types.HookedModel"}
    bad = {}
    for name, tree in _modules().items():
        if name == "mi_massive.engine" or name.startswith("mi_massive.engine."):
            outside = {m for m in _imports(name, tree) if not m.startswith("mi_massive.engine")} - allowed
            if outside:
                bad[name] = sorted(outside)
    assert bad == {}


# --- no attribute is set on the user's model --------------------------------------------------------------------

def _attributes(model) -> dict:
    """Every module's attribute names (the model's own with their values' identities)."""
    out = {name: (type(m).__name__, frozenset(vars(m))) for name, m in model.named_modules(remove_duplicate=False)}
    out[""] = {k: id(v) for k, v in vars(model).items()}
    return out


def _calls(tmp_path) -> dict:
    """Every public function that takes a model, called on it with tiny inputs."""
    from mi_massive import (bias_term_table, build_intervention, implicit_bias, intervene, swap_implicit_bias)

    def with_intervention(m):
        with intervene(m, build_intervention(m, TEXTS)), torch.inference_mode():
            m(m.to_tokens(TEXTS[0]))

    def with_swap(m):
        with swap_implicit_bias(m, implicit_bias(m, TEXTS)), torch.inference_mode():
            m(m.to_tokens(TEXTS[0]))

    return {
        "load_model": lambda m: mi_massive.load_model(m),
        "find_massive_activations": lambda m: mi_massive.find_massive_activations(m, TEXTS),
        "layer_profile": lambda m: mi_massive.layer_profile(m, TEXTS),
        "massive_stats": lambda m: mi_massive.massive_stats(m, TEXTS),
        "build_intervention": lambda m: build_intervention(m, TEXTS),
        "intervene": with_intervention,
        "perplexity": lambda m: mi_massive.perplexity(m, TEXTS, seq_len=8),
        "bias_term_table": lambda m: bias_term_table(m, (("tiny", TEXTS),), seq_len=8, max_chunks=2,
                                                     n_calibration=1),
        "attention_sinks": lambda m: mi_massive.attention_sinks(m, TEXTS),
        "implicit_bias": lambda m: implicit_bias(m, TEXTS),
        "swap_implicit_bias": with_swap,
        "trace_origin": lambda m: mi_massive.trace_origin(m, TEXTS[0]),
        "path_patch": lambda m: mi_massive.path_patch(m, TEXTS[0]),
        "attention_patterns": lambda m: mi_massive.attention_patterns(m, TEXTS[0]),
        "layer_magnitudes": lambda m: mi_massive.layer_magnitudes(m, TEXTS[0]),
        "explore": lambda m: mi_massive.explore(m),
        "write_report": lambda m: mi_massive.write_report(m, tmp_path / "report", TEXTS),
    }


def _takes_a_model(fn) -> bool:
    params = list(inspect.signature(fn).parameters)
    return fn is mi_massive.load_model or (bool(params) and params[0] == "model")


def test_every_public_function_taking_a_model_is_checked(tmp_path):
    public = {n for n in mi_massive.__all__ if inspect.isfunction(getattr(mi_massive, n))
              and _takes_a_model(getattr(mi_massive, n))}
    assert public == set(_calls(tmp_path))


@pytest.mark.slow
def test_no_public_function_sets_an_attribute_on_the_model(tmp_path):
    from mi_massive.testing import tiny_model

    model = tiny_model("llama")
    for name, call in _calls(tmp_path).items():
        before = _attributes(model)
        call(model)
        assert _attributes(model) == before, name


def test_jaxtyping_annotations_are_checked():
    """The test command instruments the package (pyproject's addopts): a result built with a tensor of the wrong
    shape raises instead of carrying it."""
    from mi_massive.detect import LayerProfile

    with pytest.raises(Exception, match="top"):
        LayerProfile(top=torch.zeros(4), median=torch.zeros(4), n_prompts=1, model_name="m")  # top is (layer, k)
