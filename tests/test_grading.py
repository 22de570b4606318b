"""Offline grading with nbgrader: scores, timeouts, errors, tampering, attacks on the sandbox, outputs."""
from __future__ import annotations

import csv
import html
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from cxrlab.coursetools import authoring, grading
from cxrlab.coursetools import gradebook as book
from cxrlab.coursetools import sandbox as sandboxing
from tests.test_authoring import _nbg, make_solution_notebook

pytestmark = pytest.mark.slow   # real kernels: the shared grading run takes a minute or more

TIMEOUT, GRACE = 15.0, 40.0  # grace: room for the work after an interrupt on a loaded machine


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


SECRET = "grader-secret-" + uuid.uuid4().hex
LIMITS = sandboxing.Limits(cpu_seconds=600, memory_mb=16384, file_mb=1, processes=48)

PROBE = """import math, glob, os, subprocess, sys
CANARY, SOLUTIONS, WORK = {canary!r}, {solutions!r}, {work!r}
def attempt(action):
    try:
        return str(action())
    except BaseException as err:
        return type(err).__name__
print("PROBE canary=" + attempt(lambda: os.remove(CANARY)))
print("PROBE solutions=" + attempt(lambda: open(os.path.join(SOLUTIONS, "planted.py"), "w").write("x")))
print("PROBE secret=" + os.environ.get("CXRLAB_GRADER_SECRET", "absent"))
print("PROBE env=" + " ".join(sorted(os.environ)))
hits = []
for root in (WORK, os.path.dirname(SOLUTIONS), "/tmp", "/root", "/home"):
    for path in glob.glob(root + "/**/*", recursive=True):
        if path.endswith((".ipynb", "gradebook.db")) and attempt(lambda: open(path, "rb").read(1)) != "PermissionError":
            if "HIDDEN " + "TESTS" in open(path, errors="replace").read() or path.endswith(".db"):
                hits.append(path)
print("PROBE hidden-readable=%d" % len(hits))
print("PROBE hits=" + ",".join(hits))
print("PROBE fsize=" + attempt(lambda: open("big.bin", "wb").write(b"0" * 2 * 2**20)))
procs = []
def spawn_many():
    for _ in range(120):
        procs.append(subprocess.Popen(["sleep", "30"]))
print("PROBE nproc=" + attempt(spawn_many))
for p in procs:
    p.kill()
    p.wait()
print("PROBE escaped=" + attempt(lambda: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1234.5)"], start_new_session=True).pid))
from IPython.display import HTML, display
display(HTML("<b>bold</b><script>window.PWNED = 1</script>"))
print("PROBE orphaned=" + attempt(lambda: subprocess.Popen(["sh", "-c", "(sleep 2345.5 &) ; exit 0"],
                                                            start_new_session=True).wait()))
"""
LEAK = "total = sum(range(10))\nprint(In[-2])"     # the previous cell (ex1's check) with its hidden tests


def _cheat_course(solutions: Path) -> Path:
    """One exercise, two checks: the old `answer == 42` hidden test and a plain-value one."""
    cells = [
        new_code_cell("### BEGIN SOLUTION\nanswer = 42\n### END SOLUTION",
                      metadata=_nbg("ch09-ex1-answer", solution=True, grade=False, locked=False)),
        new_code_cell("assert answer == 42, 'answer should be 42'\n### BEGIN HIDDEN TESTS\n"
                      "assert answer == 42\n### END HIDDEN TESTS",
                      metadata=_nbg("ch09-naive-check", solution=False, grade=True, locked=True, points=1)),
        new_code_cell("assert answer == 42, 'answer should be 42'\n### BEGIN HIDDEN TESTS\n"
                      "assert type(answer) is int and int(answer) == 42\n### END HIDDEN TESTS",
                      metadata=_nbg("ch09-ex1-check", solution=False, grade=True, locked=True, points=2)),
    ]
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    nbformat.write(nb, solutions / "ch09_cheat.ipynb")
    return solutions / "ch09_cheat.ipynb"


ALWAYS_EQUAL = ("class Anything:\n    def __eq__(self, other):\n        return True\n"
                "    __hash__ = object.__hash__\nanswer = Anything()")


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """One grading run (two at a time, sandboxed) over honest, broken, slow and hostile submissions."""
    root = tmp_path_factory.mktemp("grading")
    solutions = root / "solutions"
    make_solution_notebook(solutions / "ch07_tiny.ipynb")
    cheat = _cheat_course(solutions)
    authoring.generate(solutions, root / "chapters", None)
    chapter = root / "chapters" / "ch07_tiny.ipynb"
    subs = root / "submissions"
    work = root / "work"
    work.mkdir()
    canary = root / "canary.txt"
    canary.write_text("still here")
    (subs / "solution").mkdir(parents=True)
    shutil.copy(solutions / "ch07_tiny.ipynb", subs / "solution" / "ch07_tiny.ipynb")
    shutil.copy(cheat, subs / "solution" / "ch09_cheat.ipynb")
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
    right = {"ch07-ex1-answer": "def circle_area(r):\n    return math.pi * r ** 2",
             "ch07-ex2-answer": "total = sum(range(10))"}
    probe = PROBE.format(canary=str(canary), solutions=str(solutions), work=str(work))
    _chapter_with(chapter, {**right, 2: probe}, subs / "attacker" / "ch07_tiny.ipynb")
    _chapter_with(chapter, {"ch07-ex2-answer": LEAK,    # and the delimiter in a comment of its own
                            "ch07-ex1-answer": "def circle_area(r):\n    # ### BEGIN HIDDEN TESTS\n"
                                               "    return math.pi * r ** 2"}, subs / "leaker" / "ch07_tiny.ipynb")
    _chapter_with(chapter, {**right, 2: "import math, os\nos._exit(3)"}, subs / "crasher" / "ch07_tiny.ipynb")
    _chapter_with(chapter, {**right, 2: "import math\nfrom cxrlab.core.restricted import note_restricted_data\n"
                                        "note_restricted_data('chexpert/x')\nprint('PATIENT ROW', 12345 * 2)"},
                  subs / "restricted" / "ch07_tiny.ipynb")
    deleter = nbformat.read(chapter, as_version=4)
    _chapter_with(chapter, right, subs / "deleter" / "ch07_tiny.ipynb")
    deleter = nbformat.read(subs / "deleter" / "ch07_tiny.ipynb", as_version=4)
    deleter.cells = [c for c in deleter.cells if authoring.nb_meta(c).get("grade_id")
                     not in ("ch07-ex2-check", "ch07-reflection")]
    nbformat.write(deleter, subs / "deleter" / "ch07_tiny.ipynb")
    _chapter_with(root / "chapters" / "ch09_cheat.ipynb", {"ch09-ex1-answer": ALWAYS_EQUAL},
                  subs / "cheater" / "ch09_cheat.ipynb")
    out = root / "out"
    old = os.environ.get("CXRLAB_GRADER_SECRET")
    os.environ["CXRLAB_GRADER_SECRET"] = SECRET
    try:
        run = grading.grade_submissions(subs, out, solutions=solutions, timeout=TIMEOUT, grace=GRACE,
                                        progress=False, workdir=work, jobs=2, limits=LIMITS)
    finally:
        os.environ.pop("CXRLAB_GRADER_SECRET")
        if old is not None:
            os.environ["CXRLAB_GRADER_SECRET"] = old
    rows = {r["learner"]: r for r in csv.DictReader(run.gradebook.open())}
    return run, rows, out, subs, work, root


LEARNERS = {"solution", "untouched", "mistake", "forever", "stubborn", "broken", "attacker", "leaker",
            "crasher", "restricted", "deleter", "cheater"}


def _page(out: Path, learner: str, chapter: str = "ch07_tiny") -> str:
    return (out / "feedback" / learner / f"{chapter}.html").read_text()


def _probe(out: Path, learner: str = "attacker") -> dict[str, str]:
    text = html.unescape(re.sub(r"<[^>]+>", "", _page(out, learner)))
    return dict(re.findall(r"^PROBE ([\w-]+)=(.*)$", text, flags=re.M))     # printed lines, not the source


def test_exact_scores_of_the_three_submissions(graded):
    _, rows, _, _, _, _ = graded
    cols = ["ch07-ex1-check", "ch07-ex2-check", "ch07-reflection", "ch07_tiny total", "manual_pending"]
    assert [rows["solution"][c] for c in cols] == ["2", "1", grading.NEEDS_MANUAL, "3", "3"]
    assert [rows["untouched"][c] for c in cols] == ["0", "0", "0", "0", "0"]
    assert [rows["mistake"][c] for c in cols] == ["0", "1", grading.NEEDS_MANUAL, "1", "3"]
    assert rows["solution"]["max"] == "9" and rows["solution"]["total"] == "6"
    assert rows["solution"]["ch07_tiny %"] == "50.0" and rows["solution"]["ch09_cheat total"] == "3"
    assert rows["solution"]["notes"] == ""
    assert "tampering: locked cell ch07-ex1-check was edited (restored before grading)" in rows["mistake"]["notes"]
    assert "ignored notes.ipynb" in rows["mistake"]["notes"]
    assert "graded ch07_tiny (1).ipynb as ch07_tiny (misnamed)" in rows["untouched"]["notes"]


def test_never_ending_notebooks_are_reported_and_do_not_stop_the_run(graded):
    run, rows, _, _, _, _ = graded
    forever = run.results[("forever", "ch07_tiny")]
    assert forever.status == "timeout" and "interrupted" in forever.message
    assert forever.seconds < TIMEOUT + GRACE + 5
    assert rows["forever"]["total"] == "0" and "timeout" in rows["forever"]["notes"]
    stubborn = run.results[("stubborn", "ch07_tiny")]       # ignores Ctrl-C: killed with its kernel
    assert stubborn.status == "timeout" and "not graded" in stubborn.message
    assert rows["stubborn"]["ch07-ex1-check"] == "timeout"
    assert set(rows) == LEARNERS


def test_errors_name_their_cause(graded):
    run, rows, out, _, _, _ = graded
    broken = run.results[("broken", "ch07_tiny")]
    assert broken.status == "error" and broken.message.startswith("not a valid notebook")
    assert rows["broken"]["ch07-ex1-check"] == "error" and "not a valid notebook" in rows["broken"]["notes"]
    assert "not a valid notebook" in _page(out, "broken")
    crasher = run.results[("crasher", "ch07_tiny")]
    assert crasher.status == "error" and "kernel died" in crasher.message
    assert {r.learner for r in run.problems} == {"broken", "crasher", "forever", "stubborn"}


def test_nbgrader_log_reaches_the_notebook_log(graded):
    out = graded[2]
    log = (out / "logs" / "solution" / "ch07_tiny.log").read_text()
    assert "[nbgrader INFO] Autograding" in log and "== cxrlab.coursetools.grading: solution/ch07_tiny: ok" in log
    assert "kernel died" in (out / "logs" / "crasher" / "ch07_tiny.log").read_text()


def test_no_kernel_left_running_and_temp_dir_removed(graded):
    psutil = pytest.importorskip("psutil")
    work = graded[4]
    probe = _probe(graded[2])
    assert probe["escaped"].isdigit() and probe["orphaned"] == "0"     # both were started
    leftovers = [p for p in psutil.process_iter(["cmdline"])
                 if str(work) in " ".join(p.info["cmdline"] or [])
                 or {"1234.5", "2345.5"} & set(p.info["cmdline"] or [])
                 or "time.sleep(1234.5)" in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []
    assert list(work.iterdir()) == []


def test_feedback_pages_hide_the_hidden_tests(graded):
    _, _, out, _, _, _ = graded
    pages = {p.parent.name: p.read_text() for p in (out / "feedback").glob("*/ch07_tiny.html")}
    assert set(pages) == LEARNERS - {"cheater"}
    for who, page in pages.items():
        text = html.unescape(re.sub(r"<[^>]+>", "", page))
        assert "circle_area(2)" not in text and "isinstance(total" not in text, who
        if who != "leaker":                                  # the leaker wrote and printed the delimiters
            assert "### BEGIN HIDDEN TESTS\n" not in text, who
    assert grading.HIDDEN_PLACEHOLDER in pages["leaker"]          # print(In[-2]) shows a placeholder
    assert "Exercise 1: not implemented yet" in pages["untouched"]
    assert "circle_area(1) should be pi" in pages["mistake"]
    assert "Graded by hand" in pages["mistake"] and "Graded by hand" not in pages["untouched"]
    assert "TIMEOUT" in pages["stubborn"] and "TIMEOUT" in pages["forever"]


def test_begin_hidden_tests_in_learner_text_changes_nothing(graded):
    run, rows, out, _, _, _ = graded
    assert (rows["leaker"]["ch07-ex1-check"], rows["leaker"]["ch07-ex2-check"]) == ("2", "1")
    assert run.results[("leaker", "ch07_tiny")].notes == []
    assert "# ### BEGIN HIDDEN TESTS" in html.unescape(re.sub(r"<[^>]+>", "", _page(out, "leaker")))


def test_deleted_graded_cells_are_re_added_and_reported(graded):
    _, rows, _, _, _, _ = graded
    row = rows["deleter"]
    assert (row["ch07-ex1-check"], row["ch07-ex2-check"], row["ch07-reflection"]) == ("2", "1", "0")
    assert "ch07-ex2-check was deleted (re-added and graded)" in row["notes"]
    assert "ch07-reflection was deleted (re-added; scores 0)" in row["notes"]


def test_sandbox_protects_files_secrets_and_hidden_tests(graded):
    run, rows, out, _, _, root = graded
    if run.sandbox_warning:
        pytest.skip(f"bubblewrap is not usable here: {run.sandbox_warning}")
    probe = _probe(out)
    assert probe["canary"] == "FileNotFoundError" and (root / "canary.txt").read_text() == "still here"
    assert probe["solutions"] in ("FileNotFoundError", "PermissionError", "OSError")
    assert not (root / "solutions" / "planted.py").exists()
    assert probe["secret"] == "absent" and "CXRLAB_GRADER_SECRET" not in probe["env"]
    assert probe["hidden-readable"] == "0", probe["hits"]
    assert rows["attacker"]["ch07_tiny total"] == "3"           # the attack cell itself did not break grading
    assert "<script>window.PWNED" not in _page(out, "attacker")  # learners' HTML is sanitised


def test_resource_limits_apply_in_the_kernel(graded):
    probe = _probe(graded[2])
    assert probe["fsize"] == "OSError"                          # 2 MB file over a 1 MB limit
    assert probe["nproc"] in ("BlockingIOError", "OSError")     # 120 processes over a limit of 48


def test_the_graders_secret_reaches_no_output(graded):
    out = graded[2]
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET not in path.read_text(errors="replace"), path


def test_an_always_equal_answer_scores_zero_on_plain_value_tests(graded):
    _, rows, _, _, _, _ = graded
    assert rows["cheater"]["ch09-naive-check"] == "1"            # `answer == 42` is fooled ...
    assert rows["cheater"]["ch09-ex1-check"] == "0"              # ... a type check and int() are not
    assert "review by hand: the learner's code defines __eq__" in rows["cheater"]["notes"]
    flagged = authoring.hidden_test_problems(nbformat.read(graded[5] / "solutions" / "ch09_cheat.ipynb",
                                                           as_version=4), "ch09")
    assert len(flagged) == 1 and "ch09-naive-check" in flagged[0]


def test_restricted_data_outputs_stay_out_of_feedback(graded):
    run, _, out, _, _, _ = graded
    page = _page(out, "restricted")
    assert "PATIENT ROW 24690" not in page and "RESTRICTED DATA" in page
    assert run.results[("restricted", "ch07_tiny")].restricted
    assert "PATIENT ROW" in _page(out, "attacker").replace("PROBE", "PATIENT ROW")   # sanity: pages do hold prints


def test_manual_sheet_summary_and_canvas(graded):
    run, _, out, _, _, _ = graded
    sheet = (out / "manual_grading.md").read_text()
    assert "## mistake — ch07_tiny — `ch07-reflection` (max 3 points)" in sheet
    assert "> Because area is two-dimensional." in sheet
    assert "Full marks: scaling in two dimensions." in sheet
    assert "untouched" not in sheet                          # an unanswered reflection scores 0
    assert any("ignored notes.ipynb" in w for w in run.warnings)
    details = list(csv.DictReader((out / "details.csv").open()))
    assert len(details) == len(LEARNERS) * 5
    summary = {r["cell"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert summary["ch07-ex2-check"]["submitted"] == str(len(LEARNERS) - 1)   # all but the cheater
    assert summary["ch09-ex1-check"]["pass_rate"] == "0.50"
    md = (out / "summary.md").read_text()
    assert "| ch07_tiny | 6 | 11 | 7 | 2 | 2 |" in md            # max, submitted, ok, timeouts, errors
    canvas = list(csv.reader((out / "canvas.csv").open()))
    assert canvas[0][:5] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
    assert canvas[1][0].strip() == "Points Possible" and canvas[1][5:] == ["6", "3"]
    solution = next(r for r in canvas if r[0] == "solution")
    assert solution[3] == "solution" and solution[5:] == ["3", "3"]
    assert next(r for r in canvas if r[0] == "cheater")[5] == ""     # not submitted: left blank


@pytest.mark.slow
def test_without_bubblewrap_env_is_clean_limits_apply_and_processes_die(tmp_path, capsys):
    """The fallback mode: no file isolation (said loudly), but a clean env, limits and no survivors."""
    psutil = pytest.importorskip("psutil")
    solutions = tmp_path / "solutions"
    make_solution_notebook(solutions / "ch07_tiny.ipynb")
    authoring.generate(solutions, tmp_path / "chapters", None)
    work, scratch = tmp_path / "work", tmp_path / "scratch"
    work.mkdir()
    scratch.mkdir()
    probe = PROBE.format(canary=str(scratch / "canary"), solutions=str(scratch), work=str(scratch))
    _chapter_with(tmp_path / "chapters" / "ch07_tiny.ipynb", {2: probe}, tmp_path / "subs" / "ana" / "ch07_tiny.ipynb")
    os.environ["CXRLAB_GRADER_SECRET"] = SECRET
    try:
        code = grading.main([str(tmp_path / "subs"), "--out", str(tmp_path / "out"), "--solutions", str(solutions),
                             "--sandbox", "none", "--timeout", "60", "--jobs", "1", "--file-mb", "1",
                             "--max-processes", "48"])
    finally:
        os.environ.pop("CXRLAB_GRADER_SECRET")
    assert code == 0 and "WARNING: NOT SANDBOXED" in capsys.readouterr().err
    found = _probe(tmp_path / "out", "ana")
    assert found["secret"] == "absent" and found["fsize"] == "OSError"
    if os.geteuid() != 0:                                     # root is exempt from RLIMIT_NPROC
        assert found["nproc"] == "BlockingIOError"
    assert found["escaped"].isdigit() and found["orphaned"] == "0"
    assert not [p for p in psutil.process_iter(["cmdline"]) if {"1234.5", "2345.5"} & set(p.info["cmdline"] or [])
                or "time.sleep(1234.5)" in " ".join(p.info["cmdline"] or [])]


def test_gradebook_persists_imports_hand_marks_and_exit_codes(tmp_path, capsys):
    """Run 1 grades; run 2 re-grades nothing and imports a hand mark; run 3 re-grades a changed notebook."""
    solutions = tmp_path / "solutions"
    make_solution_notebook(solutions / "ch07_tiny.ipynb")
    subs, out = tmp_path / "subs", tmp_path / "out"
    (subs / "ana").mkdir(parents=True)
    shutil.copy(solutions / "ch07_tiny.ipynb", subs / "ana" / "ch07_tiny.ipynb")
    (subs / "bob").mkdir()
    (subs / "bob" / "ch07_tiny.ipynb").write_text("not json")
    args = [str(subs), "--out", str(out), "--solutions", str(solutions), "--timeout", "120", "--jobs", "2"]
    assert grading.main(args) == 1                               # bob's notebook is an error
    assert "bob/ch07_tiny: error: not a valid notebook" in capsys.readouterr().err
    sheet = out / "manual_grading.md"
    text = sheet.read_text()
    assert "**Points awarded:** ____" in text
    sheet.write_text(text.replace("**Points awarded:** ____", "**Points awarded:** 2.5"))
    (subs / "bob" / "ch07_tiny.ipynb").unlink()
    assert grading.main(args) == 0
    assert "graded 0 notebook(s), reused 1 unchanged" in capsys.readouterr().out
    row = next(r for r in csv.DictReader((out / "gradebook.csv").open()) if r["learner"] == "ana")
    assert (row["ch07-reflection"], row["total"], row["manual_pending"], row["percent"]) == ("2.5", "5.5", "0", "91.7")
    assert "**Points awarded:** 2.5" in sheet.read_text()          # the mark is kept in the sheet
    nb = nbformat.read(subs / "ana" / "ch07_tiny.ipynb", as_version=4)
    nb.cells[-1].source = "print('changed')"
    nbformat.write(nb, subs / "ana" / "ch07_tiny.ipynb")
    assert grading.main(args) == 0
    assert "graded 1 notebook(s), reused 0" in capsys.readouterr().out
    row = next(csv.DictReader((out / "gradebook.csv").open()))
    assert row["ch07-reflection"] == "2.5"                         # same answer: the mark still applies
    canvas = list(csv.reader((out / "canvas.csv").open()))
    assert canvas[2][:1] + canvas[2][5:] == ["ana", "5.5"]


def test_hand_marks_out_of_range_or_for_changed_answers_are_not_used(tmp_path):
    from cxrlab.coursetools import gradebook as book

    cell = book.GradedCell("ch07_tiny", "ch07-reflection", "manual", 3.0)
    res = book.NotebookResult("ana", "ch07_tiny", "ok", scores={"ch07-reflection": book.NEEDS_MANUAL},
                              answers={"ch07-reflection": "My answer."})
    book.write_manual_sheet(tmp_path, [cell], {("ana", "ch07_tiny"): res})
    sheet = tmp_path / book.SHEET_FILE
    sheet.write_text(sheet.read_text().replace("____", "7"))
    marks, problems = book.read_manual_marks(sheet, [cell])
    assert marks == {} and "outside 0..3" in problems[0]
    sheet.write_text(sheet.read_text().replace("**Points awarded:** 7", "**Points awarded:** 3"))
    marks, _ = book.read_manual_marks(sheet, [cell])
    res.answers["ch07-reflection"] = "A different answer."
    notes = book.apply_manual_marks({("ana", "ch07_tiny"): res}, marks)
    assert res.scores["ch07-reflection"] == book.NEEDS_MANUAL and "mark it again" in notes[0]


def test_writes_nothing_in_the_submissions(graded):
    _, _, _, subs, _, _ = graded
    names = sorted(str(p.relative_to(subs)) for p in subs.rglob("*") if p.is_file())
    assert len(names) == len(LEARNERS) + 2 and all(n.endswith(".ipynb") for n in names)


def test_the_kernel_python_is_named_by_a_real_path(tmp_path, monkeypatch):
    """A `.venv` that is a link (as in a course checkout) must not reach the sandbox by its link."""
    venv = Path(sys.prefix).resolve()
    (tmp_path / ".venv").symlink_to(venv)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / ".venv"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / ".venv" / "bin" / "python"))
    assert grading.kernel_python() == str(venv / "bin" / "python")


def test_missing_chapters_and_bad_folders(tmp_path):
    make_solution_notebook(tmp_path / "solutions" / "ch07_tiny.ipynb")
    make_solution_notebook(tmp_path / "solutions" / "ch08_more.ipynb", chapter="ch08")
    cells = grading.course_cells(authoring.solution_notebooks(tmp_path / "solutions"))
    assert [c.grade_id for c in cells][:3] == ["ch07-ex1-check", "ch07-ex2-check", "ch07-reflection"]
    empty = tmp_path / "subs"
    (empty / "ana").mkdir(parents=True)
    found, warnings = grading.find_submissions(empty, ["ch07_tiny", "ch08_more"])
    assert found == {"ana": {}} and warnings == ["ana: no chapter notebooks found"]
    path = book.write_gradebook(tmp_path / "out", ["ana"], cells, {})
    row = next(csv.DictReader(path.open()))
    assert row["ch08-ex1-check"] == grading.NOT_SUBMITTED and row["total"] == "0" and row["max"] == "12"
    with pytest.raises(grading.GradingError, match="not found"):
        grading.find_submissions(tmp_path / "nope", ["ch07_tiny"])


def test_cli_help_and_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cxrlab.coursetools.grading", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--timeout" in proc.stdout
    make_solution_notebook(tmp_path / "solutions" / "ch07_tiny.ipynb")
    proc = subprocess.run([sys.executable, "-m", "cxrlab.coursetools.grading", str(tmp_path / "nope")],
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
    # the running venv where the checkout has none (a git worktree): resolving sys.executable
    # would name the base interpreter, whose site-packages hold none of the course's libraries
    (tmp_path / ".venv").symlink_to(REPO / ".venv" if (REPO / ".venv").exists() else Path(sys.prefix))
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
        sub = [words[0]] if words and not words[0].startswith("-") and module != "cxrlab.coursetools.grading" else []
        proc = subprocess.run([sys.executable, "-m", module, *sub, "--help"], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"python -m {module} {' '.join(sub)} --help: {proc.stderr[-1000:]}"
        for option in (w.split("=")[0] for w in words if w.startswith("--")):
            assert option in proc.stdout, f"python -m {module}: the guide uses {option}, --help lists no such option"
