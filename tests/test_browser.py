"""A real-browser test: JupyterLab in headless Chromium, cells run, a slider moved, a prediction changes.

Skipped (with the reason) only where Debian's chromium or Playwright is not installed;
``.ci/run`` installs chromium. Screenshots go to ``build/screenshots/``.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
import pytest

from tests.browser import JupyterLab, chromium_path, launch_browser, set_slider

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "build" / "screenshots"
CHAPTER4 = "chapters/ch04_degradations.ipynb"

playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium_path() is None,
                       reason="Debian's chromium is not installed (apt-get install chromium)"),
]


def course_env() -> dict[str, str]:
    data = os.environ.get("CXRLAB_TEST_DATA", str(ROOT / "build" / "test-data"))
    return {"CXRLAB_PRESET": "demo", "CXRLAB_DATA": data, "MPLBACKEND": "module://matplotlib_inline.backend_inline"}


def prediction_text(page) -> str:
    return page.locator(".cxr-prediction").first.inner_text()


def write_slider_notebook(folder: Path) -> str:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A slider that changes a prediction"),
        nbformat.v4.new_code_cell(
            "import ipywidgets as w\n"
            "slider = w.FloatSlider(value=0.1, min=0, max=1, step=0.1, description='strength')\n"
            "out = w.HTML()\nout.add_class('cxr-prediction')\n"
            "def show(change=None):\n"
            "    out.value = f'p(A) = {1 - slider.value:.2f}'\n"
            "slider.observe(show, names='value'); show()\n"
            "w.VBox([slider, out])"),
    ]
    nbformat.write(nb, folder / "slider.ipynb")
    return "slider.ipynb"


def test_slider_changes_displayed_value_in_jupyterlab(tmp_path):
    """The harness itself: a two-cell notebook whose slider drives an HTML readout."""
    name = write_slider_notebook(tmp_path)
    with JupyterLab(tmp_path, env=course_env(), log=tmp_path / "lab.log") as lab, \
            playwright_api.sync_playwright() as pw:
        browser = launch_browser(pw)
        page = lab.open(browser.new_page(viewport={"width": 1280, "height": 900}), name)
        lab.run_all(page)
        page.wait_for_selector(".cxr-prediction", timeout=60_000)
        before = prediction_text(page)
        assert before == "p(A) = 0.90"
        set_slider(page, ".jp-OutputArea", 0.7)
        page.wait_for_function(
            "b => document.querySelector('.cxr-prediction').innerText !== b", arg=before, timeout=30_000)
        assert prediction_text(page) == "p(A) = 0.30"
        browser.close()


def probabilities(text: str) -> str:
    """The numbers after "predicted probabilities:" (the caption before it names the level)."""
    return text.split("predicted probabilities:", 1)[-1].strip()


@pytest.mark.skipif(not (ROOT / CHAPTER4).exists(), reason="chapter 4 has not been generated")
def test_chapter4_degradation_widget_updates_prediction(tmp_path):
    """Open chapter 4 as a learner would, run it, move the degradation slider, see the prediction move."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    # a copy, so JupyterLab's autosave never writes outputs into the committed chapter
    (tmp_path / "chapters").mkdir()
    shutil.copy(ROOT / CHAPTER4, tmp_path / CHAPTER4)
    with JupyterLab(tmp_path, env=course_env(), log=tmp_path / "lab.log") as lab, \
            playwright_api.sync_playwright() as pw:
        browser = launch_browser(pw)
        page = lab.open(browser.new_page(viewport={"width": 1400, "height": 1000}), CHAPTER4)
        lab.run_all(page)
        lab.wait_all_run(page, timeout_ms=1_200_000)
        page.wait_for_selector(".cxr-prediction", timeout=60_000)
        page.locator(".cxr-prediction").first.scroll_into_view_if_needed()
        before = prediction_text(page)
        assert "predicted probabilities" in before, before
        page.screenshot(path=str(SHOTS / "ch04_widget_before.png"))
        slider = page.locator(".cxr-strength").first
        high = slider.locator(".widget-readout").first
        # the strongest setting the slider allows: the model's output must move
        set_slider(page, ".jp-OutputArea-output:has(.cxr-strength)", 1e9)
        page.wait_for_function(
            "b => document.querySelector('.cxr-prediction').innerText !== b", arg=before, timeout=120_000)
        after = prediction_text(page)
        page.screenshot(path=str(SHOTS / "ch04_widget_after.png"))
        assert probabilities(after) != probabilities(before), (before, after)
        assert high.inner_text() != ""
        browser.close()
