"""Generate every notebook from its source: tutorials (exercises + solutions) and the paper reproductions.

Sources are Python files in the percent format (`# %%` starts a cell), so the solution version runs as a
plain script and diffs read like code. Cell headers:

    # %% [markdown]        prose (each line starts with "# ")
    # %%                   code, identical in both notebooks
    # %% [imports]         code, identical in both; imports only (tests run it to get the reference solutions)
    # %% [exercise difficulty=2 minutes=10]
                           one function: its docstring, then `# EXERCISE` (commented stub lines),
                           `# SOLUTION` (the reference lines), `# END`
    # %% [answer]          code that computes the answer to the question above it from the results and
                           ends with `answer(...)` (a folded <details> block); its source starts collapsed

An exercise cell must follow a markdown cell whose first line is `### Exercise ...` (the difficulty box is
added under that title) and be followed by a code cell that calls a `check_...` on the function (the check
right below the stub). The exercise notebook gets the stub and the check and no solution code at all (a
folded note says which notebook holds it); the solution notebook gets the reference code.

An answer cell must follow a markdown cell whose first line is `### Question ...`, and every question needs
an answer cell. Answers are code so that each number or claim they state is computed from the result it is
about; they read library results only, never a student's function.

    python tutorials/build.py            # write every notebook
    python tutorials/build.py --check    # exit 1 if a committed notebook differs from its source
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL_SOURCES = ROOT / "tutorials" / "src"
NOTEBOOK_SOURCES = ROOT / "notebooks" / "src"
HEADER = re.compile(r"^# %%(?:\s+\[(?P<kind>[a-z]+)(?P<attrs>[^\]]*)\])?\s*$")
MARKERS = ("# EXERCISE", "# SOLUTION", "# END")
KINDS = ("markdown", "code", "imports", "exercise", "answer")
ANSWER_METADATA = {"jupyter": {"source_hidden": True}, "tags": ["answer"]}
METADATA = {
    "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
    "language_info": {"name": "python"},
}


@dataclass
class Cell:
    kind: str  # one of KINDS
    lines: list[str]
    attrs: dict[str, int] = field(default_factory=dict)
    line_no: int = 0  # where the cell starts in the source, for error messages

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def parse(path: Path) -> list[Cell]:
    """Split a percent-format source into cells (leading/trailing blank lines dropped)."""
    cells: list[Cell] = []
    for no, line in enumerate(path.read_text().splitlines(), 1):
        m = HEADER.match(line)
        if m:
            kind = m["kind"] or "code"
            if kind not in KINDS:
                raise ValueError(f"{path.name}:{no}: unknown cell kind [{kind}]: use one of {', '.join(KINDS)}")
            attrs = dict(a.split("=") for a in (m["attrs"] or "").split())
            cells.append(Cell(kind, [], {k: int(v) for k, v in attrs.items()}, no))
        elif cells:
            cells[-1].lines.append(line)
        elif line.strip():
            raise ValueError(f"{path.name}:{no}: text before the first '# %%' cell header")
    for cell in cells:
        while cell.lines and not cell.lines[0].strip():
            cell.lines.pop(0)
        while cell.lines and not cell.lines[-1].strip():
            cell.lines.pop()
        if cell.kind == "markdown":
            bad = [ln for ln in cell.lines if ln and not ln.startswith("#")]
            if bad:
                raise ValueError(f"{path.name}:{cell.line_no}: markdown line without '# ': {bad[0]!r}")
            cell.lines = [ln[2:] if ln.startswith("# ") else ln[1:] for ln in cell.lines]
    return cells


def split_exercise(cell: Cell, where: str) -> tuple[str, str]:
    """(stub, solution) code of an exercise cell."""
    stub: list[str] = []
    solution: list[str] = []
    state = None  # None: shared lines, "# EXERCISE" or "# SOLUTION"
    seen = []
    for line in cell.lines:
        marker = line.strip()
        if marker in MARKERS:
            seen.append(marker)
            state = None if marker == "# END" else marker
            continue
        if state == "# EXERCISE":
            indent = line[: len(line) - len(line.lstrip())]
            body = line.strip()
            if body and not body.startswith("#"):
                raise ValueError(f"{where}: stub line is not commented out: {line!r}")
            stub.append(indent + body[2:] if body.startswith("# ") else indent + body[1:])
        elif state == "# SOLUTION":
            solution.append(line)
        else:
            stub.append(line)
            solution.append(line)
    if seen != list(MARKERS):
        raise ValueError(f"{where}: an exercise needs '# EXERCISE', '# SOLUTION', '# END' in that order, once; got {seen}")
    return "\n".join(stub), "\n".join(solution)


def exercise_function(code: str, where: str) -> str:
    """The one function an exercise defines; it must have a docstring."""
    tree = ast.parse(code)
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    if len(funcs) != 1:
        raise ValueError(f"{where}: an exercise cell defines exactly one function, found {len(funcs)}")
    if not ast.get_docstring(funcs[0]):
        raise ValueError(f"{where}: the exercise function {funcs[0].name} needs a docstring")
    return funcs[0].name


def difficulty_box(attrs: dict[str, int], where: str) -> str:
    if set(attrs) != {"difficulty", "minutes"} or not 1 <= attrs["difficulty"] <= 5:
        raise ValueError(f"{where}: exercise header needs difficulty=1..5 and minutes=N, got {attrs}")
    d = attrs["difficulty"]
    return f"> **Difficulty** {'🔴' * d}{'⚪' * (5 - d)} &nbsp;·&nbsp; **Time** about {attrs['minutes']} minutes"


def _heading(cell: Cell | None, prefix: str) -> bool:
    return cell is not None and cell.kind == "markdown" and bool(cell.lines) and cell.lines[0].startswith(prefix)


def _check_rhythm(cells: list[Cell], i: int, name: str, where: str) -> None:
    before = cells[i - 1] if i else None
    after = cells[i + 1] if i + 1 < len(cells) else None
    if not _heading(before, "### Exercise"):
        raise ValueError(f"{where}: an exercise must follow a markdown cell whose first line is '### Exercise ...'")
    if after is None or after.kind != "code" or not re.search(rf"check_\w+\(\s*{name}\b", after.text):
        raise ValueError(f"{where}: the cell right below exercise {name} must call a check_... on it")


def _check_questions(cells: list[Cell], path: Path) -> None:
    for i, cell in enumerate(cells):
        where = f"{path.name}:{cell.line_no}"
        nxt = cells[i + 1] if i + 1 < len(cells) else None
        if cell.kind == "answer" and not _heading(cells[i - 1] if i else None, "### Question"):
            raise ValueError(f"{where}: an answer must follow a markdown cell whose first line is '### Question ...'")
        if cell.kind == "answer" and not re.search(r"\banswer\(", cell.text):
            raise ValueError(f"{where}: an answer cell must show its answer with answer(...)")
        if _heading(cell, "### Question") and (nxt is None or nxt.kind != "answer"):
            raise ValueError(f"{where}: a question must be followed by an [answer] cell")


def _solution_pointer(path: Path, title: str) -> str:
    """What the exercise notebook says in place of a solution: where it is (no solution code)."""
    title = title.lstrip("#").strip()
    return (f"<details><summary>Solution</summary>\n\nThe reference solution is in `{path.stem}_solutions.ipynb` "
            f"under *{title}*. Try first: the check above says what differs.\n\n</details>")


def build(path: Path) -> dict[str, str]:
    """{notebook file name: notebook JSON} for one source: two notebooks for a tutorial, one otherwise."""
    cells = parse(path)
    _check_questions(cells, path)
    tutorial = any(c.kind == "exercise" for c in cells)
    versions = ("exercises", "solutions") if tutorial else ("",)
    out = {}
    for version in versions:
        nb_cells = []
        for i, cell in enumerate(cells):
            where = f"{path.name}:{cell.line_no}"
            if cell.kind == "markdown":
                lines = list(cell.lines)
                nxt = cells[i + 1] if i + 1 < len(cells) else None
                if nxt is not None and nxt.kind == "exercise":
                    lines[1:1] = ["", difficulty_box(nxt.attrs, where)]
                nb_cells.append(new_markdown_cell("\n".join(lines)))
            elif cell.kind == "exercise":
                stub, solution = split_exercise(cell, where)
                name = exercise_function(solution, where)
                if exercise_function(stub, where) != name:
                    raise ValueError(f"{where}: the stub and the solution define different functions")
                _check_rhythm(cells, i, name, where)
                nb_cells.append(new_code_cell(stub if version == "exercises" else solution))
            elif cell.kind == "answer":
                nb_cells.append(new_code_cell(cell.text, metadata=dict(ANSWER_METADATA)))
            else:
                nb_cells.append(new_code_cell(cell.text))
                prev = cells[i - 1] if i else None
                if version == "exercises" and prev is not None and prev.kind == "exercise":
                    nb_cells.append(new_markdown_cell(_solution_pointer(path, cells[i - 2].lines[0])))
        for j, c in enumerate(nb_cells):  # stable ids, so a rebuild is byte-identical
            c["id"] = f"{path.stem}-{version or 'nb'}-{j:03d}"
        nb = new_notebook(cells=nb_cells, metadata=METADATA)
        nbformat.validate(nb)
        out[f"{path.stem}_{version}.ipynb" if version else f"{path.stem}.ipynb"] = nbformat.writes(nb) + "\n"
    return out


def reference_namespace(path: Path) -> dict:
    """The imports cell and every exercise's reference solution, executed: {name: object}."""
    namespace: dict = {}
    for cell in parse(path):
        if cell.kind == "imports":
            exec(compile(cell.text, f"{path.name}:{cell.line_no}", "exec"), namespace)
        elif cell.kind == "exercise":
            code = split_exercise(cell, path.name)[1]
            exec(compile(code, f"{path.name}:{cell.line_no}", "exec"), namespace)
    return namespace


def stub_namespace(path: Path) -> dict:
    """Like `reference_namespace`, with the exercise stubs (what a student starts from)."""
    namespace: dict = {}
    for cell in parse(path):
        if cell.kind in ("imports", "exercise"):
            code = cell.text if cell.kind == "imports" else split_exercise(cell, path.name)[0]
            exec(compile(code, f"{path.name}:{cell.line_no}", "exec"), namespace)
    return namespace


def exercises(path: Path) -> list[str]:
    """Names of the exercise functions of a source, in order."""
    return [exercise_function(split_exercise(c, path.name)[1], path.name) for c in parse(path) if c.kind == "exercise"]


def questions(path: Path) -> list[str]:
    """Titles of the interpretation questions of a source, in order."""
    return [c.lines[0] for c in parse(path) if _heading(c, "### Question")]


def sources() -> dict[Path, Path]:
    """{source: folder its notebooks go to}."""
    found = {p: ROOT / "tutorials" for p in sorted(TUTORIAL_SOURCES.glob("*.py"))}
    found.update({p: ROOT / "notebooks" for p in sorted(NOTEBOOK_SOURCES.glob("*.py"))})
    return found


def expected() -> dict[Path, str]:
    """Every generated notebook path and the text it must have."""
    return {folder / name: text for src, folder in sources().items() for name, text in build(src).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a notebook is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in expected().items():
        if not path.exists() or path.read_text() != text:
            stale.append(path)
            if not args.check:
                path.write_text(text)
    verb = "stale" if args.check else "written"
    for path in stale:
        print(f"{verb}: {path.relative_to(ROOT)}")
    if args.check and stale:
        print("run `python tutorials/build.py` and commit the notebooks", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
