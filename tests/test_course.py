"""The headless course runner on tiny throwaway notebooks: layout, HTML, results.json, failures."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from cxrlab.coursetools import runner as course

pytestmark = pytest.mark.slow  # starts real kernels (a few seconds)


def _write(folder: Path, name: str, cells: list) -> Path:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / name
    nbformat.write(nb, path)
    return path


def _params(source: str = "synthetic") -> nbformat.NotebookNode:
    return new_code_cell(f'SOURCE = "{source}"\nPRESET = "workshop"\nSEED = 0',
                         metadata={"tags": ["parameters"]})


@pytest.fixture()
def chapters(tmp_path: Path) -> Path:
    folder = tmp_path / "solutions"
    folder.mkdir()
    _write(folder, "ch00_ok.ipynb", [
        new_markdown_cell("# A chapter that works"),
        _params(),
        new_code_cell("import os\nfrom cxrlab import results\n"
                      "results.record('ch0', 'preset_seen', [PRESET, os.environ['CXRLAB_PRESET']])\n"
                      "print('hello from', PRESET)"),
        new_code_cell("raise NotImplementedError('learner exercise')",
                      metadata={"tags": ["raises-exception"]}),
        new_code_cell("results.record('ch0', 'after_exercise', 1)"),
    ])
    _write(folder, "ch01_fails.ipynb", [
        _params(),
        new_code_cell("1 / 0"),
        new_code_cell("from cxrlab import results\nresults.record('ch1', 'never', 1)"),
    ])
    _write(folder, "ch02_ok.ipynb", [
        _params(),
        new_code_cell("from cxrlab import results\nresults.record('ch2', 'macro_auc', 0.5)"),
        new_code_cell("import matplotlib.pyplot as plt\nplt.plot([0, 1], [0, 1])\nplt.title('roc')\nplt.show()"),
    ])
    _write(folder, "notes.ipynb", [new_code_cell("raise SystemExit")])  # not a chapter
    return folder


def test_discover_orders_chapters_and_ignores_others(chapters):
    names = [p.name for p in course.discover(chapters)]
    assert names == ["ch00_ok.ipynb", "ch01_fails.ipynb", "ch02_ok.ipynb"]
    with pytest.raises(FileNotFoundError):
        course.discover(chapters / "missing")


def test_parameters_are_read_and_injected_after_the_parameters_cell():
    nb = new_notebook(cells=[new_markdown_cell("x"), _params("nih"), new_code_cell("pass")])
    assert course.notebook_parameters(nb) == {"SOURCE": "nih", "PRESET": "workshop", "SEED": 0}
    course.inject_parameters(nb, {"PRESET": "demo"})
    assert nb.cells[2].metadata["tags"] == ["injected-parameters"]
    assert "PRESET = 'demo'" in nb.cells[2].source
    assert course.notebook_parameters(nb)["PRESET"] == "demo"


def test_course_runs_all_chapters_and_records_failure(chapters, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CXRLAB_RESULTS", raising=False)
    monkeypatch.setenv("MPLBACKEND", "Agg")  # as in CI: figures must still reach the HTML
    out = tmp_path / "build"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"stale": {"x": 1}}))
    code = course.main(["--notebooks", str(chapters), "--out", str(out), "--preset", "demo",
                        "--timeout", "60"])
    assert code == 1  # one chapter failed
    printed = capsys.readouterr().out
    assert "[2/3] ch01_fails ... failed" in printed and "ZeroDivisionError" in printed
    assert "2/3 chapters ok" in printed

    for stem in ("ch00_ok", "ch01_fails", "ch02_ok"):
        executed = nbformat.read(out / "notebooks" / f"{stem}.ipynb", as_version=4)
        code_cells = [c for c in executed.cells if c.cell_type == "code"]
        assert code_cells[0].execution_count == 1  # executed, not just copied
        html = (out / "html" / f"{stem}.html").read_text()
        assert html.lstrip().lower().startswith("<!doctype html")
    assert "hello from demo" in (out / "html" / "ch00_ok.html").read_text()
    assert "data:image/png;base64" in (out / "html" / "ch02_ok.html").read_text()

    results = json.loads((out / "results.json").read_text())
    assert "stale" not in results
    assert results["ch0"]["preset_seen"] == ["demo", "demo"]  # injected and in the environment
    assert results["ch0"]["after_exercise"] == 1  # ran past the tolerated exercise error
    assert results["ch2"]["macro_auc"] == 0.5  # ran past the failing chapter
    assert "ch1" not in results
    runs = results["course"]["chapters"]
    assert runs["ch00_ok"]["status"] == "ok" and runs["ch02_ok"]["status"] == "ok"
    assert runs["ch01_fails"]["status"] == "failed"
    assert runs["ch01_fails"]["error"].startswith("ZeroDivisionError")
    assert all(r["seconds"] > 0 for r in runs.values())
    assert results["course"]["ok"] is False and results["course"]["preset"] == "demo"


def test_restricted_sources_are_refused_unless_allowed(tmp_path):
    folder = tmp_path / "nbs"
    folder.mkdir()
    nb = _write(folder, "ch02_mimic.ipynb", [_params("mimic"), new_code_cell("print('secret image stats')")])
    out = tmp_path / "build"
    runs = course.run_course([nb], out, preset="demo")
    assert runs[0].status == "refused" and "--allow-restricted" in runs[0].error
    assert not (out / "html").exists() and not (out / "notebooks").exists()
    runs = course.run_course([nb], out, preset="demo", source="chexpert")
    assert runs[0].status == "refused"
    runs = course.run_course([nb], out, preset="demo", allow_restricted=True, timeout=60)
    assert runs[0].status == "ok" and (out / "html" / "ch02_mimic.html").exists()


def test_unknown_preset_is_a_usage_error(chapters, tmp_path):
    with pytest.raises(SystemExit):
        course.main(["--notebooks", str(chapters), "--out", str(tmp_path / "b"), "--preset", "huge"])


def test_summary_table_lists_every_chapter():
    runs = [course.ChapterRun("ch00_a", "ok", 1.5), course.ChapterRun("ch01_b", "failed", 2.0,
                                                                      error="ValueError: x")]
    table = course.summary_table(runs)
    assert "ch00_a" in table and "ValueError: x" in table and "1/2 chapters ok" in table


def test_learner_copies_by_default_solutions_only_when_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CXRLAB_RESULTS", raising=False)
    for folder, answer in (("chapters", "raise NotImplementedError('expected')"),
                           ("solutions", "### BEGIN SOLUTION\nanswer = 42\n### END SOLUTION")):
        (tmp_path / folder).mkdir()
        _write(tmp_path / folder, "ch00_x.ipynb", [
            _params(), new_code_cell(answer, metadata={"tags": ["raises-exception"]}),
            new_code_cell(f"print('ran the {folder} copy')")])
    monkeypatch.chdir(tmp_path)
    assert course.main(["--out", "build", "--timeout", "60"]) == 0
    assert "ran the chapters copy" in (tmp_path / "build" / "html" / "ch00_x.html").read_text()
    assert not (tmp_path / "build" / "solutions").exists()

    assert course.main(["--out", "build", "--timeout", "60", "--solutions"]) == 0
    assert "ran the solutions copy" in (tmp_path / "build" / "solutions" / "html" / "ch00_x.html").read_text()
    assert "ran the chapters copy" in (tmp_path / "build" / "html" / "ch00_x.html").read_text()

    capsys.readouterr()
    assert course.main(["--notebooks", "solutions", "--out", "build"]) == 2  # no flag: refused
    assert "pass --solutions" in capsys.readouterr().err
