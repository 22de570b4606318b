"""Drive JupyterLab in headless Chromium, as a learner meets the course.

Starts ``jupyter lab`` on 127.0.0.1 with a random token, opens a notebook with Playwright's
Python API driving Debian's ``chromium`` (no browser download), runs every cell, and works a
slider widget. Used by ``tests/test_browser.py``; kept separate so it can be reused by hand::

    with JupyterLab(root) as lab, Browser() as browser:
        page = lab.open(browser, "chapters/ch04_degradations.ipynb")
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str | None:
    """Debian's chromium executable, or None when it is not installed."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class JupyterLab:
    """A JupyterLab server on 127.0.0.1 for the duration of a ``with`` block."""

    def __init__(self, root: Path, env: dict[str, str] | None = None, log: Path | None = None):
        self.root = Path(root)
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.env = {**os.environ, **(env or {})}
        self.log = log
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _settings_dir(self) -> str:
        """User settings that render every cell (no windowing), so tests can see all outputs."""
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="jlab-settings-"))
        tracker = folder / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
        tracker.parent.mkdir(parents=True)
        tracker.write_text('{"windowingMode": "none"}')
        news = folder / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
        news.parent.mkdir(parents=True)
        news.write_text('{"fetchNews": "false", "checkForUpdates": false}')
        return str(folder)

    def __enter__(self) -> JupyterLab:
        self.env.setdefault("JUPYTERLAB_SETTINGS_DIR", self._settings_dir())
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
               f"--port={self.port}", f"--ServerApp.token={self.token}",
               f"--ServerApp.root_dir={self.root}", "--LabApp.expose_app_in_browser=True",
               "--LabApp.news_url=", "--ServerApp.allow_remote_access=False"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")  # CI runs as root in a throwaway container
        out = open(self.log, "w") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.process.returncode}")
            try:
                r = requests.get(f"{self.url}/api/status", params={"token": self.token}, timeout=2)
                if r.ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        raise TimeoutError("jupyter lab did not start within 90 s")

    def __exit__(self, *exc) -> None:
        settings = self.env.get("JUPYTERLAB_SETTINGS_DIR", "")
        if self.process:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if Path(settings).name.startswith("jlab-settings-"):
            shutil.rmtree(settings, ignore_errors=True)

    def open(self, page, notebook: str, timeout_ms: int = 120_000):
        """Open ``notebook`` (path relative to root) in ``page`` and wait for its kernel."""
        page.goto(f"{self.url}/lab/tree/{notebook}?token={self.token}", timeout=timeout_ms)
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=timeout_ms)
        self._accept_kernel_dialog(page)
        page.wait_for_function(
            "() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
            " return w && w.sessionContext && w.sessionContext.session &&"
            " w.sessionContext.session.kernel &&"
            " w.sessionContext.session.kernel.status === 'idle'; }",
            timeout=timeout_ms,
        )
        return page

    @staticmethod
    def _accept_kernel_dialog(page) -> None:
        """A notebook without kernel metadata asks which kernel to start: take the default."""
        try:
            page.locator(".jp-Dialog button.jp-mod-accept").click(timeout=5_000)
        except Exception:  # noqa: BLE001 - no dialog is the normal case
            pass

    @staticmethod
    def run_all(page) -> None:
        """Run every cell, as Run > Run All Cells does (cells tagged raises-exception go on)."""
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")

    @staticmethod
    def wait_all_run(page, timeout_ms: int) -> None:
        """Wait until every code cell has run and the kernel is idle.

        Reads the notebook model (cells scrolled out of view are not in the DOM). Raises
        ``AssertionError`` at once when a cell that is not tagged ``raises-exception`` fails,
        since "Run All" stops there.
        """
        handle = page.wait_for_function(_RUN_STATE_JS, timeout=timeout_ms, polling=1000)
        state = handle.json_value()
        assert state == "done", f"the notebook stopped: {state}"


_RUN_STATE_JS = """() => {
  const w = window.jupyterapp.shell.currentWidget;
  const cells = w.content.widgets.filter(c => c.model.type === 'code');
  for (const [i, c] of cells.entries()) {
    const tags = c.model.getMetadata('tags') || [];
    const outs = c.model.outputs.toJSON();
    const err = outs.find(o => o.output_type === 'error');
    if (err && !tags.includes('raises-exception')) {
      return `code cell ${i} raised ${err.ename}: ${String(err.evalue).slice(0, 200)}`;
    }
  }
  const running = cells.some(c => c.model.executionState === 'running');
  const last = cells[cells.length - 1];
  const idle = w.sessionContext.session.kernel.status === 'idle';
  return (!running && idle && last.model.executionCount !== null) ? 'done' : false;
}"""


def launch_browser(playwright):
    """Launch Debian's chromium through Playwright with the flags this closed network needs."""
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)


def set_slider(page, container_selector: str, value: float) -> None:
    """Type ``value`` into the readout of the first ipywidgets slider inside ``container_selector``.

    ipywidgets 8 sliders have an editable readout; typing into it and pressing Enter sets the
    value exactly as a learner would (dragging a handle is pixel-dependent).
    """
    readout = page.locator(f"{container_selector} .widget-slider .widget-readout").first
    readout.scroll_into_view_if_needed()
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(str(value))
    page.keyboard.press("Enter")
