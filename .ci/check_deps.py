"""Every third-party module that the package, its tests, benchmarks, tutorials and notebooks import is declared
in pyproject.toml: the package's in `dependencies` (or an extra, for a lazily imported optional feature), the
others' in `dependencies` or the `test` extra (the tests run the benchmarks, tutorials and notebooks).

    python .ci/check_deps.py      # one line per import: module, distribution, where declared; exit 1 if undeclared

Imports are read from the sources (every `import`, also inside functions); modules that a library imports only
when asked for a feature (pandas' Spearman correlation needs scipy) are found by the INDIRECT patterns.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "mi_massive"
OTHERS = ("tests", "benchmarks", "tutorials", "notebooks")  # need `dependencies` or the `test` extra
INDIRECT = {  # source pattern -> the module a library imports for it
    r"""method\s*=\s*["'](spearman|kendall)["']""": "scipy",  # pandas' rank correlations
    r"\.to_markdown\(": "tabulate",  # pandas
    r"\.style\.": "jinja2",  # pandas' Styler
    r"\.(to_image|write_image)\(": "kaleido",  # plotly's static export
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(root: Path = ROOT) -> dict[str, set[str]]:
    """Requirement names (normalised) by group: "dependencies" and each extra."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        from pip._vendor import tomli as tomllib
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    groups = {"dependencies": project.get("dependencies", []), **project.get("optional-dependencies", {})}
    return {g: {_norm(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r).group()) for r in reqs} for g, reqs in groups.items()}


def imports(path: Path) -> set[str]:
    """Top-level names of the absolute imports in one Python source, and of the INDIRECT modules it needs."""
    text = path.read_text(encoding="utf-8")
    found = {m for pattern, m in INDIRECT.items() if re.search(pattern, text)}
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@functools.cache
def _providers() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()  # reads every installed distribution's file list: once


def _distribution(module: str) -> str:
    """The installed distribution that provides a top-level module (the module's own name if none is)."""
    dists = _providers().get(module, [])
    return _norm(dists[0]) if dists else _norm(module)


def report(root: Path = ROOT) -> list[tuple[str, str, str, str]]:
    """(module, distribution, group it is declared in or "UNDECLARED", first file importing it), one per import."""
    groups = declared(root)
    sources = {d: sorted((root / d).rglob("*.py")) for d in (PACKAGE, *OTHERS) if (root / d).exists()}
    local = {PACKAGE, "__future__"} | {p.stem for files in sources.values() for p in files} | {
        p.name for files in sources.values() for p in files for p in p.parents}  # sibling modules and folders
    rows: dict[str, tuple[str, str, str, str]] = {}
    for folder, files in sources.items():
        allowed = [g for g in groups if folder == PACKAGE or g in ("dependencies", "test")]
        for path in files:
            for module in sorted(imports(path) - local - set(sys.stdlib_module_names)):
                dist = _distribution(module)
                group = next((g for g in allowed if dist in groups[g]), "UNDECLARED")
                if module not in rows or rows[module][2] != "UNDECLARED" and group == "UNDECLARED":
                    rows[module] = (module, dist, group, str(path.relative_to(root)))
    return sorted(rows.values())


def undeclared(root: Path = ROOT) -> list[tuple[str, str, str, str]]:
    return [r for r in report(root) if r[2] == "UNDECLARED"]


def main() -> int:
    rows = report()
    for row in rows:
        print("{:<18} {:<18} {:<13} {}".format(*row))
    missing = [r for r in rows if r[2] == "UNDECLARED"]
    if missing:
        print(f"undeclared in pyproject.toml: {', '.join(dist for _, dist, _, _ in missing)}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
