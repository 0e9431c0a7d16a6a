"""Shared fixtures: the real embedded models (loaded once per session) and tiny planted models; headless Chromium
for the tests that render in a browser (installed when missing); a failed subprocess's output in the report."""

import inspect
import os
import shutil
import subprocess

import pytest
import torch

torch.set_grad_enabled(True)  # tests check that analyses do not depend on the global grad mode


@pytest.fixture(scope="session")
def smollm2():
    from mi_massive import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3():
    from mi_massive import load_model

    return load_model("gemma3-270m")


@pytest.fixture(scope="session")
def tiny_llama():
    from mi_massive.testing import tiny_model

    return tiny_model("llama")


@pytest.fixture(scope="session")
def tiny_random():
    from mi_massive.testing import tiny_model

    return tiny_model("llama", plant=False)


PROMPTS = [
    "Summer is warm. Winter is cold.",
    "The quick brown fox jumps over the lazy dog.",
    "In 1905, Albert Einstein published four papers that changed physics.",
]


@pytest.fixture(scope="session")
def prompts():
    return list(PROMPTS)


# --- headless Chromium: found, or installed with apt-get (Debian's `chromium`) before the first test that may use it

def _chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


_INSTALL_FAILED: list[str] = []  # why installing failed, once: not tried again in this session


def find_or_install_chromium() -> str:
    """The path of a Chromium; when there is none, Debian's `chromium` is installed with apt-get by root or by
    sudo without a password. Anything else raises RuntimeError saying what to run (a test fails, never skips)."""
    if exe := _chromium_path():
        return exe
    if _INSTALL_FAILED:
        raise RuntimeError(_INSTALL_FAILED[0])
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if shutil.which("apt-get") is None or (sudo and (
            shutil.which("sudo") is None or subprocess.run([*sudo, "true"], capture_output=True).returncode != 0)):
        _INSTALL_FAILED.append("headless Chromium is missing and this user cannot install it with apt-get: install "
                               "it (Debian: `sudo apt-get install -y chromium`) and rerun")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        if _INSTALL_FAILED:
            break
        done = subprocess.run([*sudo, *cmd], capture_output=True, text=True, env=env)
        if done.returncode != 0:
            _INSTALL_FAILED.append(f"installing Chromium failed: `{' '.join([*sudo, *cmd])}` exited "
                                   f"{done.returncode}:\n{done.stderr[-3000:]}")
    if not _INSTALL_FAILED and not _chromium_path():
        _INSTALL_FAILED.append("apt-get installed chromium, but no `chromium` is on PATH")
    if _INSTALL_FAILED:
        raise RuntimeError(_INSTALL_FAILED[0])
    return _chromium_path()


def _source(obj) -> str:
    try:
        return inspect.getsource(obj).lower()
    except (OSError, TypeError):
        return ""


def pytest_runtest_setup(item):
    """Chromium is installed when missing before the first test of a module that mentions it; a test marked
    `browser` fails here if that is impossible (the others fail in their own helper, if they do need it)."""
    marked = item.get_closest_marker("browser") is not None
    if marked or "chromium" in _source(getattr(item, "module", None)):
        try:
            find_or_install_chromium()
        except RuntimeError as e:
            if marked:
                pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of headless Chromium (installed when missing, see find_or_install_chromium)."""
    try:
        return find_or_install_chromium()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


# --- a test that fails in a subprocess shows the subprocess's stderr and stdout ------------------------------

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    seen, e = set(), call.excinfo.value if call.excinfo is not None else None
    while e is not None and id(e) not in seen:  # the exception and those it was raised from or during
        seen.add(id(e))
        if isinstance(e, subprocess.SubprocessError):
            cmd = " ".join(map(str, e.cmd)) if isinstance(e.cmd, (list, tuple)) else str(e.cmd)
            for stream in ("stderr", "stdout"):
                text = getattr(e, stream, None)
                if isinstance(text, bytes):
                    text = text.decode(errors="replace")
                if text:
                    report.sections.append((f"subprocess {stream}: {cmd[:100]}", text[-20000:]))
        e = e.__cause__ or e.__context__
