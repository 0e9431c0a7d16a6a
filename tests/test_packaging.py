"""The README's test command works on a fresh machine: every import declared, CI runs exactly that command,
Chromium installed when missing, a failing subprocess's output shown."""

import importlib.util
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_deps", ROOT / ".ci" / "check_deps.py")
check_deps = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_deps)


def test_every_import_is_declared_in_pyproject():
    assert not check_deps.undeclared(), "declare in pyproject.toml (python .ci/check_deps.py lists all imports)"


def test_the_import_check_finds_undeclared_and_indirect_imports(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["pandas>=2", "Tqdm"]\n'
                                             '[project.optional-dependencies]\ntest = ["pytest"]\nviz = ["plotly"]\n')
    (tmp_path / "mi_massive").mkdir()
    (tmp_path / "mi_massive" / "a.py").write_text("import os, tqdm\nfrom . import b\nimport mi_massive.b\n"
                                                  "def f():\n    import plotly.express\n")
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "bench.py").write_text("import pandas, pytest\n")
    (tmp_path / "benchmarks" / "c.py").write_text("import bench, plotly\nx = d.corr(e, method='spearman')\n")
    rows = {m: (group, path) for m, _, group, path in check_deps.report(tmp_path)}
    assert rows == {"tqdm": ("dependencies", "mi_massive/a.py"), "plotly": ("UNDECLARED", "benchmarks/c.py"),
                    "pandas": ("dependencies", "benchmarks/bench.py"), "pytest": ("test", "benchmarks/bench.py"),
                    "scipy": ("UNDECLARED", "benchmarks/c.py")}  # plotly: an extra serves the package only


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"Run the tests:\n\n```bash\n(.+)\n```", readme).group(1)
    assert command.endswith("python -m pytest -q")
    lines = [l for l in (ROOT / ".ci" / "run").read_text().splitlines() if l.strip() and not l.startswith(("#", "set ", "cd ", "export "))]
    assert lines == [command], lines


def test_chromium_is_installed_by_root_or_refused_with_what_to_run(monkeypatch):
    import conftest

    ran = []
    installed = {"chromium": None, "apt-get": "/usr/bin/apt-get", "sudo": None}

    def run(cmd, **kw):
        ran.append(cmd)
        if cmd[-1] == "chromium":
            installed["chromium"] = "/usr/bin/chromium"
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(conftest.shutil, "which", installed.get)
    monkeypatch.setattr(conftest.subprocess, "run", run)
    monkeypatch.setattr(conftest.os, "geteuid", lambda: 0)
    monkeypatch.setattr(conftest, "_INSTALL_FAILED", [])
    assert conftest.find_or_install_chromium() == "/usr/bin/chromium"
    assert ran == [["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]]
    installed["chromium"] = None
    monkeypatch.setattr(conftest.os, "geteuid", lambda: 1000)  # no sudo here
    for _ in range(2):  # said again, not tried again
        with pytest.raises(RuntimeError, match="cannot install it with apt-get.*sudo apt-get install -y chromium"):
            conftest.find_or_install_chromium()
    assert len(ran) == 2


def test_a_failed_subprocess_shows_its_stderr(tmp_path):
    import conftest  # its report hook alone (the whole conftest would import torch in the child)

    hook = inspect.getsource(conftest.pytest_runtest_makereport)
    (tmp_path / "conftest.py").write_text(f"import subprocess\n\nimport pytest\n\n\n{hook}")
    (tmp_path / "test_child.py").write_text(
        "import subprocess, sys\n"
        "def test_child():\n"
        "    subprocess.run([sys.executable, '-c', 'import sys; sys.exit(\"the child says why\")'],\n"
        "                   check=True, capture_output=True, text=True)\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "subprocess stderr" in out.stdout and "the child says why" in out.stdout, out.stdout
