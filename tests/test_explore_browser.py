"""The explorer where students use it: JupyterLab on localhost, driven in headless Chromium over the DevTools
protocol. The test runs `explore(model)` in a notebook, drags the layer slider, picks a head, and checks that the
figure and the attention view follow (the Python side alone is tested in test_viz.py)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

NOTEBOOK_CODE = """from mi_massive import explore
from mi_massive.testing import tiny_model
app = explore(tiny_model("llama"), prompt="hello world")
app"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, what: str, timeout: float = 60.0, every: float = 0.25):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class DevTools:
    """A minimal Chrome DevTools protocol client: one page, commands answered in order."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=None, open_timeout=30)
        self.next_id = 0

    def send(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def js(self, expression: str):
        out = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expression[:80]}: {out['exceptionDetails'].get('exception', out['exceptionDetails'])}")
        return out["result"].get("value")

    def drag(self, x0: float, y0: float, x1: float, y1: float) -> None:
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x0, y=y0)
        self.send("Input.dispatchMouseEvent", type="mousePressed", x=x0, y=y0, button="left", clickCount=1)
        for i in range(1, 9):
            self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x0 + (x1 - x0) * i / 8,
                      y=y0 + (y1 - y0) * i / 8, button="left", buttons=1)
        self.send("Input.dispatchMouseEvent", type="mouseReleased", x=x1, y=y1, button="left", clickCount=1)

    def close(self) -> None:
        self.ws.close()


def _start(cmd: list[str], log: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, **kwargs)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on a free localhost port, serving a notebook that opens the explorer on the tiny model."""
    pytest.importorskip("jupyterlab", reason="pip install -e '.[test]' installs JupyterLab")
    import nbformat

    root = tmp_path / "lab"
    root.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(NOTEBOOK_CODE)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "explore.ipynb")
    config = tmp_path / "jcfg"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(json.dumps({"ServerApp": {"jpserver_extensions": {
        "jupyter_lsp": False, "jupyter_server_terminals": False}}}))  # not needed here: a faster start
    port, token = _free_port(), "mi-massive-test"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "jcfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "jrt"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "jws")}
    server = _start([sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
                     f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--allow-root",
                     "--LabApp.expose_app_in_browser=True", "--ServerApp.disable_check_xsrf=True"],
                    tmp_path / "lab.log", env=env)

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2) as r:
                return r.status == 200
        except OSError:
            assert server.poll() is None, (tmp_path / "lab.log").read_text()[-3000:]
            return False

    try:
        _wait(up, "JupyterLab to answer", timeout=40)
        yield f"http://127.0.0.1:{port}/lab/tree/explore.ipynb?token={token}", tmp_path
    finally:
        _stop(server)


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium with a DevTools port; yields a client of its first page."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("headless Chromium is missing: apt-get install -y chromium (.ci/run does it)")
    profile = tmp_path / "chromium"
    proc = _start([exe, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
                   f"--user-data-dir={profile}", "--no-first-run", "--disable-background-networking",
                   "--window-size=1280,1600", "about:blank"], tmp_path / "chromium.log")
    try:
        port_file = profile / "DevToolsActivePort"
        _wait(lambda: port_file.exists() and port_file.read_text().strip(), "Chromium's DevTools port", timeout=30)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        client = DevTools(page["webSocketDebuggerUrl"])
        yield client
        client.close()
    finally:
        _stop(proc)


FIGURE_TITLE = "(() => { const p = document.querySelector('.js-plotly-plot'); return p && p.layout && p.layout.title " \
               "? (p.layout.title.text || p.layout.title) : null; })()"
PAGE_TEXT = "document.querySelector('.jp-OutputArea') ? document.querySelector('.jp-Notebook').innerText : ''"


def test_explorer_in_jupyterlab(lab, browser):
    url, tmp_path = lab
    page = browser
    start = time.monotonic()
    page.send("Page.enable")
    page.send("Runtime.enable")
    page.send("Page.navigate", url=url)
    _wait(lambda: page.js("!!(window.jupyterapp && document.querySelector('.jp-Notebook .jp-Cell'))"),
          "JupyterLab to show the notebook")
    notebook = "[...window.jupyterapp.shell.widgets('main')].find(w => w.sessionContext)"
    _wait(lambda: page.js(f"(() => {{ const w = {notebook}; return !!(w && w.sessionContext.session && "
                          "w.sessionContext.session.kernel); })()"), "the kernel to start")
    page.js(f"window.jupyterapp.shell.activateById(({notebook}).id)")  # headless: no window focus makes it current
    page.js("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    title0 = _wait(lambda: page.js(FIGURE_TITLE), "the explorer's figure", timeout=90)
    slider = _wait(lambda: page.js("(() => { const h = document.querySelector('.widget-slider .noUi-handle'), "
                                   "t = document.querySelector('.widget-slider .noUi-target'); if (!h || !t) return null;"
                                   " const a = h.getBoundingClientRect(), b = t.getBoundingClientRect(); "
                                   "return [a.x + a.width / 2, a.y + a.height / 2, b.x, b.width]; })()"),
                   "the layer slider")
    readout = page.js("document.querySelector('.widget-slider .widget-readout').innerText")
    assert "blocks.1.hook_resid_post" in title0 and readout.strip() == "1"  # starts where the plant writes
    text0 = page.js(PAGE_TEXT)
    assert "massive dims here: [5]" in text0 and "averaged over queries: head 0" in text0

    x, y, left, _ = slider
    page.drag(x, y, left - 20, y)  # drag the handle past the slider's left end: layer 0
    title1 = _wait(lambda: (lambda t: t if t != title0 else None)(page.js(FIGURE_TITLE)),
                   "the figure to follow the slider")
    assert "blocks.0.hook_resid_post" in title1
    assert page.js("document.querySelector('.widget-slider .widget-readout').innerText").strip() == "0"
    _wait(lambda: "layer 0: tokens shaded" in page.js(PAGE_TEXT), "the token view to follow the slider")

    page.js("(() => { const s = document.querySelector('.widget-dropdown select'); "  # labels use no-break spaces
            "s.selectedIndex = [...s.options].findIndex(o => o.text.replace(/\\u00a0/g, ' ') === 'head 2'); "
            "s.dispatchEvent(new Event('change', {bubbles: true})); })()")
    try:
        text2 = _wait(lambda: (lambda t: t if "averaged over queries: head 2" in t else None)(page.js(PAGE_TEXT)),
                      "the attention view to follow the head picker", timeout=20)
    except AssertionError as e:
        raise AssertionError(page.js("JSON.stringify([...document.querySelectorAll('select')].map(s => [s.className, s.parentElement.className, s.selectedIndex, [...s.options].map(o => o.text)]))") + page.js(PAGE_TEXT)[-3000:])
    assert "head 0 " not in text2.split("averaged over queries:")[-1]
    assert page.js(FIGURE_TITLE) == title1  # the head picker leaves the figure alone

    shot = Path(os.environ.get("MI_MASSIVE_ARTIFACTS", tmp_path)) / "explorer_jupyterlab.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    import base64

    shot.write_bytes(base64.b64decode(page.send("Page.captureScreenshot", format="png")["data"]))
    assert time.monotonic() - start < 120
