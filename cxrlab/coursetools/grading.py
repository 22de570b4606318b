"""Grade learners' notebooks offline: ``python -m cxrlab.grading SUBMISSIONS [--out DIR]``.

``SUBMISSIONS`` holds one folder per learner with the notebooks they handed in (any subset
of the chapters, e.g. ``SUBMISSIONS/ana/ch01_data.ipynb``). The command writes:

* ``<out>/gradebook.csv``: one row per learner, one column per graded cell (points, or
  ``needs manual grading`` for a reflection answer, or ``not submitted`` / ``timeout`` /
  ``error``), then ``total`` (points scored so far), ``manual_pending`` (points still to be
  graded by hand) and ``max`` (points available in the whole course), and ``notes``;
* ``<out>/details.csv``: the same in long form (learner, chapter, cell, kind, score, max);
* ``<out>/feedback/<learner>/<chapter>.html``: nbgrader's feedback page (hidden tests
  removed unless ``--show-hidden-tests``), or a short page explaining a timeout or error;
* ``<out>/manual_grading.md``: every reflection answer that needs a human, beside its rubric;
* ``<out>/logs/<learner>/<chapter>.log``: nbgrader's and the kernel's messages for that notebook.

How. The solution notebooks (``solutions/`` by default) are staged into a temporary nbgrader
course directory whose folders and SQLite gradebook all live in the temporary directory, and
nbgrader 0.9's ``GenerateAssignment``, ``Autograde`` and ``GenerateFeedback`` converters run
through their Python API with an explicit config (no ``nbgrader_config.py``, no JupyterHub,
no Docker, no network). Notebooks execute in this interpreter's environment: a kernelspec
pointing at ``sys.executable`` is written to the temporary directory and used for every
notebook, and the kernel's runtime and IPython folders are redirected there too.

Each notebook is graded in its own worker process with a wall-clock budget (``--timeout``):
cells are interrupted when the budget is spent, and a worker still alive ``--grace`` seconds
later (a notebook that ignores interrupts) is killed with its kernel. Either way the notebook
is reported and the run goes on. Notebooks run with ``CXRLAB_PRESET`` (default ``demo``);
``CXRLAB_DATA`` is inherited, so graded notebooks reuse the course's data cache.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import html
import json
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from nbconvert.preprocessors import Preprocessor
from tqdm import tqdm
from traitlets import Bool

from cxrlab import authoring

KERNEL_NAME = "cxrlab-grading"
NEEDS_MANUAL = "needs manual grading"
NOT_SUBMITTED = "not submitted"
DEFAULT_TIMEOUT = 900.0
DEFAULT_GRACE = 60.0


class GradingError(RuntimeError):
    """The grading run cannot start (bad folders, no solutions); the message says why."""


class _Bar(tqdm):
    """Progress bar without tqdm's monitor thread (workers are forked while it runs)."""

    monitor_interval = 0


# ----------------------------------------------------------------------------- data model
@dataclass(frozen=True)
class GradedCell:
    """One graded cell of the course, as written in the solution notebook."""

    chapter: str
    grade_id: str
    kind: str            # "auto" or "manual"
    max_score: float
    rubric: str = ""
    prompt: str = ""


@dataclass
class NotebookResult:
    """The outcome of grading one learner's notebook for one chapter."""

    learner: str
    chapter: str
    status: str                      # ok | timeout | error | not submitted
    message: str = ""
    seconds: float = 0.0
    scores: dict[str, float | str] = field(default_factory=dict)
    answers: dict[str, str] = field(default_factory=dict)   # reflection answers needing a human


def course_cells(solutions: list[Path]) -> list[GradedCell]:
    """Every graded cell of the course, in chapter then notebook order, read from ``solutions``."""
    cells: list[GradedCell] = []
    for path in solutions:
        nb = nbformat.read(path, as_version=4)
        for i, cell in enumerate(nb.cells):
            meta = authoring.nb_meta(cell)
            if not meta.get("grade"):
                continue
            prompt, rubric = authoring.split_rubric(cell.source) if cell.cell_type == "markdown" else ("", "")
            cells.append(GradedCell(path.stem, meta["grade_id"],
                                    "manual" if cell.cell_type == "markdown" else "auto",
                                    float(meta.get("points", 0) or 0), rubric,
                                    prompt or (authoring.reflection_prompt(nb.cells, i) if rubric else "")))
    return cells


def find_submissions(submissions: Path, chapters: list[str], exclude: Path | None = None
                     ) -> tuple[dict[str, dict[str, Path]], list[str]]:
    """Map ``learner -> {chapter: notebook}``; also return warnings about files not understood.

    Folders whose name starts with ``_`` or ``.``, and earlier grading outputs, are not learners.
    A notebook matches a chapter by its exact name (``ch01_data.ipynb``) or, failing that, by
    its chapter prefix (``ch01_data (1).ipynb``, ``ch01-mine.ipynb``) when that is unambiguous.
    """
    if not submissions.is_dir():
        raise GradingError(f"submissions folder not found: {submissions}")
    found: dict[str, dict[str, Path]] = {}
    warnings: list[str] = []
    for folder in sorted(p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (exclude is not None and folder.resolve() == exclude.resolve()) or folder.name.startswith("_") \
                or (folder / "gradebook.csv").exists():
            continue   # our own output (default SUBMISSIONS/_grades), not a learner
        mine: dict[str, Path] = {}
        for nb_path in sorted(folder.rglob("*.ipynb")):
            if ".ipynb_checkpoints" in nb_path.parts:
                continue
            chapter = _match_chapter(nb_path.stem, chapters)
            if chapter is None:
                warnings.append(f"{folder.name}: ignored {nb_path.name} (not a course chapter)")
            elif chapter in mine:
                warnings.append(f"{folder.name}: two notebooks for {chapter}; grading {mine[chapter].name}")
            else:
                mine[chapter] = nb_path
        if not mine:
            warnings.append(f"{folder.name}: no chapter notebooks found")
        found[folder.name] = mine
    if not found:
        raise GradingError(f"no learner folders in {submissions} (expected one folder per learner)")
    return found, warnings


def _match_chapter(stem: str, chapters: list[str]) -> str | None:
    if stem in chapters:
        return stem
    prefix = stem.split("_")[0].split("-")[0].split(" ")[0].lower()
    matches = [c for c in chapters if c.split("_")[0].lower() == prefix]
    return matches[0] if len(matches) == 1 else None


# ----------------------------------------------------------------------------- the course dir
def prepare_course(course_dir: Path, solutions: list[Path]) -> list[str]:
    """Stage the solutions and run nbgrader's generate step (fills the temporary gradebook)."""
    names = []
    for path in solutions:
        name = authoring.stage_source(path, course_dir)
        authoring.run_generate_assignment(course_dir, name)
        names.append(name)
    kernel_dir = course_dir / "jupyter" / "kernels" / KERNEL_NAME
    kernel_dir.mkdir(parents=True, exist_ok=True)
    (kernel_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "cxrlab grading (this environment)", "language": "python"}))
    for sub in ("runtime", "ipython", "tmp"):
        (course_dir / sub).mkdir(exist_ok=True)
    return names


def kernel_env(course_dir: Path, preset: str) -> dict[str, str]:
    """Environment variables for a grading worker and its kernel (all folders in the temp dir)."""
    return {
        "JUPYTER_PATH": str(course_dir / "jupyter"),
        "JUPYTER_RUNTIME_DIR": str(course_dir / "runtime"),
        "IPYTHONDIR": str(course_dir / "ipython"),
        "TMPDIR": str(course_dir / "tmp"),   # kernel connection files and anything a notebook writes to /tmp
        "MPLBACKEND": "Agg",
        "CXRLAB_PRESET": preset,
        "CXRLAB_RESULTS": str(course_dir / "results.json"),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }


class HideHiddenTestTracebacks(Preprocessor):
    """Feedback pages: shorten tracebacks of graded cells to ``Error: message``.

    A traceback quotes the lines around the failing statement, which would reveal the hidden
    tests that ``ClearHiddenTests`` removed from the cell's source.
    """

    enabled = Bool(True).tag(config=True)

    def preprocess_cell(self, cell, resources, index):  # noqa: D102 - nbconvert hook
        if cell.cell_type == "code" and authoring.nb_meta(cell).get("grade"):
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    out["traceback"] = [f"{out.get('ename', 'Error')}: {out.get('evalue', '')}".rstrip(": ")]
        return cell, resources


def _worker_config(course_dir: Path, timeout: float, show_hidden: bool):
    """nbgrader config for autograde + feedback: the course config plus execution limits."""
    from nbgrader.preprocessors import ClearHiddenTests, GetGrades
    from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor

    cfg = authoring.nbgrader_config(course_dir)
    deadline = time.monotonic() + timeout
    cfg.Execute.kernel_name = KERNEL_NAME
    cfg.Execute.timeout = max(1, int(timeout))
    cfg.Execute.timeout_func = lambda cell: max(1, int(deadline - time.monotonic()))
    cfg.Execute.interrupt_on_timeout = True
    cfg.Autograde.force = True
    cfg.GenerateFeedback.force = True
    feedback = [GetGrades, CSSHTMLHeaderPreprocessor]
    cfg.GenerateFeedback.preprocessors = feedback if show_hidden else [
        GetGrades, ClearHiddenTests, HideHiddenTestTracebacks, CSSHTMLHeaderPreprocessor]
    return cfg


def _autograde_worker(course_dir: str, learner: str, chapter: str, timeout: float,
                      show_hidden: bool, env: dict[str, str], result_path: str) -> None:
    """Body of one worker process: autograde and feedback for one notebook; result as JSON."""
    os.environ.update(env)
    tempfile.tempdir = env["TMPDIR"]   # the forked worker inherited the parent's cached choice
    log = os.open(Path(result_path).with_suffix(".log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log, 1)   # nbgrader's and the kernel's chatter goes to the notebook's log file
    os.dup2(log, 2)
    warnings.filterwarnings("ignore", message=".*not in session.*")   # nbgrader's SQLAlchemy chatter
    started = time.monotonic()
    result: dict[str, Any] = {"status": "ok", "message": ""}
    try:
        from nbgrader.converters import Autograde, GenerateFeedback
        from nbgrader.coursedir import CourseDirectory

        cfg = _worker_config(Path(course_dir), timeout, show_hidden)
        for converter_class in (Autograde, GenerateFeedback):
            coursedir = CourseDirectory(config=cfg)
            coursedir.assignment_id, coursedir.student_id = chapter, learner
            converter = converter_class(coursedir=coursedir, config=cfg)
            converter.log.setLevel("ERROR")
            converter.start()
        graded = Path(course_dir) / "autograded" / learner / chapter / f"{chapter}.ipynb"
        timed_out = _timed_out_cells(nbformat.read(graded, as_version=4))
        if timed_out:
            result = {"status": "timeout", "message": f"{', '.join(timed_out)} interrupted: "
                      f"the notebook ran past its {timeout:g} s budget; the cells graded before it count"}
    except BaseException as err:  # noqa: BLE001 - report anything to the parent
        sys.stderr.flush()
        cause = last_error_line(Path(result_path).with_suffix(".log").read_text(errors="replace"))
        if time.monotonic() - started >= timeout:
            result = {"status": "timeout", "graded": False, "message": f"ran past its {timeout:g} s budget "
                      "and did not stop when interrupted: not graded" + (f" ({cause})" if cause else "")}
        else:
            result = {"status": "error", "graded": False, "message": cause or f"{type(err).__name__}: {err}"}
    Path(result_path).write_text(json.dumps(result))


def last_error_line(log: str) -> str:
    r"""The last ``SomeError: message`` line of a log (nbgrader's own summary exception excluded).

    >>> last_error_line("Traceback ...\nValueError: bad cell\nNbGraderException: see above")
    'ValueError: bad cell'
    """
    found = ""
    for line in log.splitlines():
        line = line.strip()
        if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b.*:", line) and "NbGraderException" not in line:
            found = line
    return found[:500]


def _timed_out_cells(nb: nbformat.NotebookNode) -> list[str]:
    """Labels of cells whose output is a timeout error (``CellTimeoutError``)."""
    labels = []
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error" and "Timeout" in out.get("ename", ""):
                labels.append(authoring.nb_meta(cell).get("grade_id") or f"cell {i}")
    return labels


def _kill_tree(pid: int) -> None:
    """Kill a worker and every process it started (its kernel runs in a session of its own)."""
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        parent = psutil.Process(pid)
        for proc in parent.children(recursive=True) + [parent]:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


def grade_one(course_dir: Path, learner: str, chapter: str, notebook: Path, *, timeout: float,
              grace: float, preset: str, show_hidden: bool = False) -> NotebookResult:
    """Grade one submitted notebook in a worker process, never waiting past ``timeout + grace``."""
    target = course_dir / "submitted" / learner / chapter / f"{chapter}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(notebook, target)
    result_path = course_dir / f"result-{learner}-{chapter}.json"
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    worker = ctx.Process(target=_autograde_worker, daemon=False,
                         args=(str(course_dir), learner, chapter, timeout, show_hidden,
                               kernel_env(course_dir, preset), str(result_path)))
    start = time.monotonic()
    worker.start()
    worker.join(timeout + grace)
    seconds = time.monotonic() - start
    if worker.is_alive():
        _kill_tree(worker.pid)
        worker.join()
        return NotebookResult(learner, chapter, "timeout", seconds=seconds,
                              message=f"still running after {timeout + grace:g} s (timeout {timeout:g} s "
                              f"+ grace {grace:g} s): stopped, not graded")
    if not result_path.exists():
        return NotebookResult(learner, chapter, "error", seconds=seconds,
                              message=f"grading worker died (exit code {worker.exitcode})")
    outcome = json.loads(result_path.read_text())
    result = NotebookResult(learner, chapter, outcome["status"], outcome["message"], seconds)
    if outcome.get("graded", True):
        _read_scores(course_dir, result)
    return result


def _read_scores(course_dir: Path, result: NotebookResult) -> None:
    """Fill ``result.scores`` and ``result.answers`` from the temporary gradebook."""
    from nbgrader.api import Gradebook

    graded_nb = course_dir / "autograded" / result.learner / result.chapter / f"{result.chapter}.ipynb"
    sources = {}
    if graded_nb.exists():
        for cell in nbformat.read(graded_nb, as_version=4).cells:
            sources[authoring.nb_meta(cell).get("grade_id")] = cell.source
    with authoring.venv_on_path(), Gradebook(authoring.nbgrader_config(course_dir).CourseDirectory.db_url) as gb:
        submission = gb.find_submission_notebook(result.chapter, result.chapter, result.learner)
        for grade in submission.grades:
            if grade.needs_manual_grade:
                result.scores[grade.name] = NEEDS_MANUAL
                result.answers[grade.name] = sources.get(grade.name, "")
            else:
                result.scores[grade.name] = float(grade.score or 0.0)


# ----------------------------------------------------------------------------- outputs
def _fmt(value: float | str) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def write_gradebook(out: Path, learners: list[str], cells: list[GradedCell],
                    results: dict[tuple[str, str], NotebookResult]) -> Path:
    """Write ``gradebook.csv`` (wide) and ``details.csv`` (long); return the gradebook path."""
    course_max = sum(c.max_score for c in cells)
    header = ["learner"] + [c.grade_id for c in cells] + ["total", "manual_pending", "max", "notes"]
    rows, details = [], []
    for learner in learners:
        row, total, pending, notes = [learner], 0.0, 0.0, []
        for cell in cells:
            res = results.get((learner, cell.chapter))
            value: float | str = NOT_SUBMITTED if res is None else (
                res.scores.get(cell.grade_id, res.status if res.status in ("timeout", "error") else 0.0))
            if isinstance(value, float):
                total += value
            elif value == NEEDS_MANUAL:
                pending += cell.max_score
            row.append(_fmt(value))
            details.append([learner, cell.chapter, cell.grade_id, cell.kind, _fmt(value),
                            _fmt(cell.max_score), "" if res is None else res.status])
        for (who, chapter), res in sorted(results.items()):
            if who == learner and res.status != "ok":
                notes.append(f"{chapter}: {res.status}: {res.message}")
        rows.append(row + [_fmt(total), _fmt(pending), _fmt(course_max), " | ".join(notes)])
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gradebook.csv"
    _write_csv(path, header, rows)
    _write_csv(out / "details.csv", ["learner", "chapter", "cell", "kind", "score", "max", "status"], details)
    return path


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def write_feedback(course_dir: Path, out: Path, result: NotebookResult) -> Path:
    """Copy nbgrader's feedback page to ``out/feedback/<learner>/<chapter>.html`` (or explain why none)."""
    target = out / "feedback" / result.learner / f"{result.chapter}.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    produced = course_dir / "feedback" / result.learner / result.chapter / f"{result.chapter}.html"
    if result.status != "error" and produced.exists():
        page = produced.read_text(encoding="utf-8")
        if result.status == "timeout":
            page = _insert_after_body(page, _banner(result))
        if result.answers:
            page = _insert_after_body(page, (
                "<div style=\"border:2px solid #0072B2;padding:1em;margin:1em\"><strong>Graded by hand"
                "</strong>: your written answers (" + ", ".join(html.escape(g) for g in result.answers)
                + ") are scored by your instructor with a rubric; the 0 shown for them below is a "
                "placeholder until then.</div>"))
        target.write_text(page, encoding="utf-8")
    else:
        target.write_text(f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{result.chapter}"
                          f"</title></head><body><h1>{html.escape(result.chapter)}: feedback for "
                          f"{html.escape(result.learner)}</h1>{_banner(result)}</body></html>\n",
                          encoding="utf-8")
    return target


def _keep_log(log: Path, target: Path) -> None:
    """Keep a worker's log (nbgrader and kernel messages) for the instructor."""
    if log.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, target)


def _banner(result: NotebookResult) -> str:
    return (f"<div style=\"border:2px solid #D55E00;padding:1em;margin:1em\"><strong>"
            f"{html.escape(result.status.upper())}</strong>: {html.escape(result.message)}</div>")


def _insert_after_body(page: str, fragment: str) -> str:
    start = page.find("<body")
    end = page.find(">", start)
    return page[: end + 1] + fragment + page[end + 1:]


def write_manual_sheet(out: Path, cells: list[GradedCell], results: dict[tuple[str, str], NotebookResult]) -> Path:
    """Write ``manual_grading.md``: each reflection answer awaiting a human, with its rubric."""
    by_id = {c.grade_id: c for c in cells}
    lines = ["# Reflection answers to grade by hand", "",
             "Score each answer with its rubric and enter the points in `gradebook.csv`", ""]
    pending = 0
    for (learner, chapter), res in sorted(results.items()):
        for grade_id, answer in res.answers.items():
            cell = by_id.get(grade_id)
            pending += 1
            lines += [f"## {learner} — {chapter} — `{grade_id}` (max {cell.max_score:g} points)" if cell
                      else f"## {learner} — {chapter} — `{grade_id}`", "",
                      "**Question.**", "", authoring.quote_markdown(cell.prompt if cell else ""), "",
                      "**Learner's answer.**", "", authoring.quote_markdown(answer.strip()), "",
                      "**Rubric.**", "", (cell.rubric if cell else "") or "_no rubric_", "",
                      "**Points awarded:** ____", ""]
    if not pending:
        lines.append("Nothing to grade by hand.")
    path = out / "manual_grading.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- the whole run
@dataclass
class GradingRun:
    """What a grading run produced."""

    gradebook: Path
    results: dict[tuple[str, str], NotebookResult]
    warnings: list[str]


def grade_submissions(submissions: Path, out: Path | None = None, *, solutions: Path | None = None,
                      timeout: float = DEFAULT_TIMEOUT, grace: float = DEFAULT_GRACE, preset: str = "demo",
                      show_hidden: bool = False, progress: bool = True,
                      workdir: Path | None = None) -> GradingRun:
    """Grade every learner folder in ``submissions``; write the gradebook and feedback to ``out``.

    >>> run = grade_submissions(Path("submissions"), Path("grades"))   # doctest: +SKIP
    >>> run.gradebook                                                   # doctest: +SKIP
    PosixPath('grades/gradebook.csv')

    ``out`` defaults to ``submissions/_grades``. The temporary course directory is created in
    ``workdir`` (default: the system's temporary folder) and removed at the end.
    """
    submissions = Path(submissions)
    out = Path(out) if out is not None else submissions / "_grades"
    sources = authoring.solution_notebooks(default_solutions() if solutions is None else Path(solutions))
    if not sources:
        raise GradingError(f"no solution notebooks in {solutions or default_solutions()}")
    chapters = [p.stem for p in sources]
    found, warnings = find_submissions(submissions, chapters, exclude=out)
    cells = course_cells(sources)
    results: dict[tuple[str, str], NotebookResult] = {}
    jobs = [(learner, chapter, nb) for learner, mine in found.items() for chapter, nb in mine.items()]
    with tempfile.TemporaryDirectory(prefix="cxrlab-grading-", dir=workdir) as tmp:
        course_dir = Path(tmp)
        prepare_course(course_dir, sources)
        with _Bar(jobs, desc="grading", unit="notebook", disable=not progress) as bar:
            for learner, chapter, notebook in bar:
                bar.set_postfix_str(f"{learner}/{chapter}")
                res = grade_one(course_dir, learner, chapter, notebook, timeout=timeout, grace=grace,
                                preset=preset, show_hidden=show_hidden)
                results[(learner, chapter)] = res
                write_feedback(course_dir, out, res)
                _keep_log(course_dir / f"result-{learner}-{chapter}.log", out / "logs" / learner / f"{chapter}.log")
    gradebook = write_gradebook(out, sorted(found), cells, results)
    write_manual_sheet(out, cells, results)
    return GradingRun(gradebook, results, warnings)


def default_solutions() -> Path:
    """``./solutions`` when run from a course checkout, else the repository's own ``solutions/``."""
    local = Path.cwd() / "solutions"
    return local if local.is_dir() else authoring.REPO_ROOT / "solutions"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cxrlab.grading",
        description="Grade learners' notebooks offline with nbgrader (one folder per learner).")
    parser.add_argument("submissions", type=Path, help="folder with one sub-folder of notebooks per learner")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write gradebook.csv and feedback/ (default SUBMISSIONS/_grades)")
    parser.add_argument("--solutions", type=Path, default=None,
                        help="solution notebooks (default ./solutions, else the repository's)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds each notebook may run (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE,
                        help=f"extra seconds before a notebook that ignores interrupts is killed "
                             f"(default {DEFAULT_GRACE:g})")
    parser.add_argument("--preset", default=os.environ.get("CXRLAB_PRESET", "demo"),
                        help="CXRLAB_PRESET the notebooks run with (default demo)")
    parser.add_argument("--show-hidden-tests", action="store_true",
                        help="keep the hidden tests in the learners' feedback pages")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns 0 when every submitted notebook was graded."""
    args = _parser().parse_args(argv)
    try:
        run = grade_submissions(args.submissions, args.out, solutions=args.solutions, timeout=args.timeout,
                                grace=args.grace, preset=args.preset, show_hidden=args.show_hidden_tests)
    except (GradingError, authoring.AuthoringError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for warning in run.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    problems = [r for r in run.results.values() if r.status != "ok"]
    for res in problems:
        print(f"{res.learner}/{res.chapter}: {res.status}: {res.message}", file=sys.stderr)
    print(f"graded {len(run.results)} notebook(s) "
          f"({len(problems)} with problems); gradebook: {run.gradebook}")
    print(f"feedback: {run.gradebook.parent / 'feedback'}; reflections to grade by hand: "
          f"{run.gradebook.parent / 'manual_grading.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
