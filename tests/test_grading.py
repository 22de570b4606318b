"""Offline grading with nbgrader: exact scores for three synthetic submissions, timeouts, outputs."""
from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from cxrlab import authoring, grading
from tests.test_authoring import make_solution_notebook

TIMEOUT, GRACE = 3.0, 12.0   # grace: room for the work after an interrupt on a loaded machine


def _chapter_with(chapter: Path, answers: dict[str, str], dest: Path) -> None:
    """What a learner hands in: the generated chapter with some cells rewritten."""
    nb = nbformat.read(chapter, as_version=4)
    for cell in nb.cells:
        gid = authoring.nb_meta(cell).get("grade_id")
        if gid in answers:
            cell.source = answers[gid]
    for index, source in answers.items():
        if isinstance(index, int):
            nb.cells[index].source = source
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """One grading run over six learners: solution, untouched, mistake, never-ending, stubborn, broken."""
    root = tmp_path_factory.mktemp("grading")
    solutions = root / "solutions"
    make_solution_notebook(solutions / "ch07_tiny.ipynb")
    authoring.generate(solutions, root / "chapters", None)
    chapter = root / "chapters" / "ch07_tiny.ipynb"
    subs = root / "submissions"
    (subs / "solution").mkdir(parents=True)
    shutil.copy(solutions / "ch07_tiny.ipynb", subs / "solution" / "ch07_tiny.ipynb")
    _chapter_with(chapter, {}, subs / "untouched" / "ch07_tiny (1).ipynb")     # renamed by a download
    _chapter_with(chapter, {   # typical mistake: the circumference instead of the area
        "ch07-ex1-answer": "def circle_area(r):\n    return 2 * math.pi * r",
        "ch07-ex2-answer": "total = sum(range(10))",
        "ch07-ex1-check": "print('I removed the check')",                     # locked: restored
        "ch07-reflection": "**Reflection.**\n\nBecause area is two-dimensional."}, subs / "mistake" / "ch07_tiny.ipynb")
    _chapter_with(chapter, {2: "import math\nwhile True:\n    pass"}, subs / "forever" / "ch07_tiny.ipynb")
    _chapter_with(chapter, {2: "import math, signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                               "while True:\n    pass"}, subs / "stubborn" / "ch07_tiny.ipynb")
    (subs / "mistake" / "notes.ipynb").write_text(chapter.read_text())        # not a chapter: ignored
    (subs / "broken").mkdir()
    (subs / "broken" / "ch07_tiny.ipynb").write_text('{"cells": [')          # truncated upload
    out = root / "out"
    work = root / "work"
    work.mkdir()
    run = grading.grade_submissions(subs, out, solutions=solutions, timeout=TIMEOUT, grace=GRACE,
                                    progress=False, workdir=work)
    rows = {r["learner"]: r for r in csv.DictReader(run.gradebook.open())}
    return run, rows, out, subs, work


def test_exact_scores_of_the_three_submissions(graded):
    _, rows, _, _, _ = graded
    cols = ["ch07-ex1-check", "ch07-ex2-check", "ch07-reflection", "total", "manual_pending", "max"]
    assert [rows["solution"][c] for c in cols] == ["2", "1", grading.NEEDS_MANUAL, "3", "3", "6"]
    assert [rows["untouched"][c] for c in cols] == ["0", "0", "0", "0", "0", "6"]
    assert [rows["mistake"][c] for c in cols] == ["0", "1", grading.NEEDS_MANUAL, "1", "3", "6"]
    assert rows["solution"]["notes"] == rows["mistake"]["notes"] == ""


def test_never_ending_notebooks_are_reported_and_do_not_stop_the_run(graded):
    run, rows, _, _, _ = graded
    forever = run.results[("forever", "ch07_tiny")]
    assert forever.status == "timeout" and "interrupted" in forever.message
    assert forever.seconds < TIMEOUT + GRACE
    assert rows["forever"]["total"] == "0" and "timeout" in rows["forever"]["notes"]
    stubborn = run.results[("stubborn", "ch07_tiny")]       # ignores Ctrl-C: killed with its kernel
    assert stubborn.status == "timeout" and "not graded" in stubborn.message
    assert rows["stubborn"]["ch07-ex1-check"] == "timeout"
    assert set(rows) == {"solution", "untouched", "mistake", "forever", "stubborn", "broken"}


def test_a_broken_notebook_is_reported(graded):
    run, rows, out, _, _ = graded
    broken = run.results[("broken", "ch07_tiny")]
    assert broken.status == "error"
    assert rows["broken"]["ch07-ex1-check"] == "error" and "ch07_tiny: error" in rows["broken"]["notes"]
    assert "ERROR" in (out / "feedback" / "broken" / "ch07_tiny.html").read_text()


def test_no_kernel_left_running_and_temp_dir_removed(graded):
    psutil = pytest.importorskip("psutil")
    work = graded[4]
    leftovers = [p for p in psutil.process_iter(["cmdline"])
                 if str(work) in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []
    assert list(work.iterdir()) == []


def test_feedback_pages_hide_the_hidden_tests(graded):
    _, _, out, _, _ = graded
    pages = {p.parent.name: p.read_text() for p in (out / "feedback").glob("*/ch07_tiny.html")}
    assert set(pages) == {"solution", "untouched", "mistake", "forever", "stubborn", "broken"}
    for who, page in pages.items():
        assert "HIDDEN TESTS" not in page and "circle_area(2)" not in page, who
    assert "Exercise 1: not implemented yet" in pages["untouched"]
    assert "circle_area(1) should be pi" in pages["mistake"]
    assert "Graded by hand" in pages["mistake"] and "Graded by hand" not in pages["untouched"]
    assert "TIMEOUT" in pages["stubborn"] and "TIMEOUT" in pages["forever"]


def test_manual_sheet_and_warnings(graded):
    run, _, out, _, _ = graded
    sheet = (out / "manual_grading.md").read_text()
    assert "## mistake — ch07_tiny — `ch07-reflection` (max 3 points)" in sheet
    assert "> Because area is two-dimensional." in sheet
    assert "Full marks: scaling in two dimensions." in sheet
    assert "untouched" not in sheet                          # an unanswered reflection scores 0
    assert any("ignored notes.ipynb" in w for w in run.warnings)
    details = list(csv.DictReader((out / "details.csv").open()))
    assert len(details) == 6 * 3


def test_writes_nothing_in_the_submissions(graded):
    _, _, _, subs, _ = graded
    names = sorted(str(p.relative_to(subs)) for p in subs.rglob("*"))
    assert names == ["broken", "broken/ch07_tiny.ipynb", "forever", "forever/ch07_tiny.ipynb", "mistake", "mistake/ch07_tiny.ipynb",
                     "mistake/notes.ipynb", "solution", "solution/ch07_tiny.ipynb", "stubborn",
                     "stubborn/ch07_tiny.ipynb", "untouched", "untouched/ch07_tiny (1).ipynb"]


def test_missing_chapters_and_bad_folders(tmp_path):
    make_solution_notebook(tmp_path / "solutions" / "ch07_tiny.ipynb")
    make_solution_notebook(tmp_path / "solutions" / "ch08_more.ipynb", chapter="ch08")
    cells = grading.course_cells(authoring.solution_notebooks(tmp_path / "solutions"))
    assert [c.grade_id for c in cells][:3] == ["ch07-ex1-check", "ch07-ex2-check", "ch07-reflection"]
    empty = tmp_path / "subs"
    (empty / "ana").mkdir(parents=True)
    found, warnings = grading.find_submissions(empty, ["ch07_tiny", "ch08_more"])
    assert found == {"ana": {}} and warnings == ["ana: no chapter notebooks found"]
    path = grading.write_gradebook(tmp_path / "out", ["ana"], cells, {})
    row = next(csv.DictReader(path.open()))
    assert row["ch08-ex1-check"] == grading.NOT_SUBMITTED and row["total"] == "0" and row["max"] == "12"
    with pytest.raises(grading.GradingError, match="not found"):
        grading.find_submissions(tmp_path / "nope", ["ch07_tiny"])


def test_cli_help_and_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cxrlab.grading", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--timeout" in proc.stdout
    make_solution_notebook(tmp_path / "solutions" / "ch07_tiny.ipynb")
    proc = subprocess.run([sys.executable, "-m", "cxrlab.grading", str(tmp_path / "nope")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "submissions folder not found" in proc.stderr


# ------------------------------------------------------------------ the instructor guide, as written
REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "instructors" / "README.md"
_BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.S | re.M)


def _guide_blocks() -> list[tuple[str, bool, str]]:
    """(language, marked for testing, body) of every fenced block in the instructor guide."""
    return [(m[1], "test" in m[2].split(), m[3]) for m in _BLOCK.finditer(GUIDE.read_text())]


@pytest.fixture
def sandbox(tmp_path) -> Path:
    """A course checkout in miniature: the Makefile, the venv, one fabricated chapter, one learner."""
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    (tmp_path / ".venv").symlink_to(Path(sys.executable).resolve().parents[1]
                                    if not (REPO / ".venv").exists() else REPO / ".venv")
    make_solution_notebook(tmp_path / "solutions" / "ch07_tiny.ipynb")
    (tmp_path / "submissions" / "ana").mkdir(parents=True)
    shutil.copy(tmp_path / "solutions" / "ch07_tiny.ipynb", tmp_path / "submissions" / "ana")
    return tmp_path


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_instructor_guide_commands_run_as_written(sandbox):
    tested = [body for lang, marked, body in _guide_blocks() if marked]
    assert len(tested) >= 3, "the guide should mark its chapters and grading commands for testing"
    for body in tested:
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=sandbox,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"guide block failed:\n{body}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert (sandbox / "chapters" / "ch07_tiny.ipynb").exists()
    assert (sandbox / "instructors" / "rubrics.md").exists()
    for out in (sandbox / "submissions" / "_grades", sandbox / "grades"):
        row = next(csv.DictReader((out / "gradebook.csv").open()))
        assert (row["learner"], row["total"], row["max"]) == ("ana", "3", "6")
        assert (out / "feedback" / "ana" / "ch07_tiny.html").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_every_make_target_in_the_guide_exists(sandbox):
    text = "\n".join(body for lang, _, body in _guide_blocks() if lang in ("bash", "sh"))
    targets = set(re.findall(r"^\s*make (\w[\w-]*)", text, flags=re.M))
    assert {"setup", "course", "chapters", "grade"} <= targets
    for target in sorted(targets):
        proc = subprocess.run(["make", "-n", target, "SUBMISSIONS=submissions"], cwd=sandbox,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"make {target}: {proc.stderr}"


def test_every_python_module_command_in_the_guide_accepts_its_options():
    """Each ``python -m module [sub] --opt`` quoted in the guide exists and knows its options."""
    calls = set(re.findall(r"python -m ([\w.]+)((?: [^`\n]*)?)", GUIDE.read_text()))
    assert len(calls) >= 4
    for module, rest in sorted(calls):
        words = rest.split()
        sub = [words[0]] if words and not words[0].startswith("-") and module != "cxrlab.grading" else []
        proc = subprocess.run([sys.executable, "-m", module, *sub, "--help"], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"python -m {module} {' '.join(sub)} --help: {proc.stderr[-1000:]}"
        for option in (w.split("=")[0] for w in words if w.startswith("--")):
            assert option in proc.stdout, f"python -m {module}: the guide uses {option}, --help lists no such option"
