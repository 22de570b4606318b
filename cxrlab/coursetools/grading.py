"""Grade learners' notebooks offline: ``python -m cxrlab.grading SUBMISSIONS [--out DIR]``.

``SUBMISSIONS`` holds one folder per learner with the notebooks they handed in (any subset
of the chapters, e.g. ``SUBMISSIONS/ana/ch01_data.ipynb``). The command writes, in ``<out>``
(default ``SUBMISSIONS/_grades``):

* ``gradebook.csv``: one row per learner, one column per graded cell (points, or ``needs
  manual grading`` for a reflection answer not marked yet, or ``not submitted`` / ``timeout``
  / ``error``), each chapter's total and percentage, then ``total``, ``manual_pending``,
  ``max``, ``percent`` and ``notes`` (timeouts, errors, tampering, misnamed or extra files);
* ``details.csv`` (long form), ``summary.md`` / ``summary.csv`` (per-exercise pass rates,
  per-chapter maxima, timeouts and errors), ``canvas.csv`` (Canvas gradebook import layout);
* ``feedback/<learner>/<chapter>.html``: nbgrader's feedback page (hidden tests removed unless
  ``--show-hidden-tests``), or a short page explaining a timeout or error;
* ``manual_grading.md``: every reflection answer beside its rubric. Write the points on its
  ``**Points awarded:**`` line and run the command again: they are imported, totals recomputed;
* ``logs/<learner>/<chapter>.log``: nbgrader's log, the kernel's messages and the outcome;
* ``.grading-state.json``: what was graded from which files. A later run re-grades only new or
  changed submissions (or everything with ``--regrade``).

How. The solution notebooks are staged into a temporary nbgrader course directory and
nbgrader 0.9's ``GenerateAssignment`` fills its gradebook once; each submission is then graded
in its own copy of that directory by ``Autograde`` and ``GenerateFeedback`` (explicit config,
no ``nbgrader_config.py``, no network), up to ``--jobs`` at a time. Autograde runs in a worker
process of the grader: it holds the gradebook and the hidden tests and restores locked cells.
Only the *kernel* that runs the learner's code is sandboxed (:mod:`cxrlab.coursetools.sandbox`):
with bubblewrap it sees a read-only system, Python and course package, the data folder and a
private scratch copy of the submission, and nothing of the grading directory, the solutions,
the gradebook or the instructor's home; it has no network, a cleaned environment and resource
limits, and every process it started dies with it. Without bubblewrap the kernel still gets the
cleaned environment and limits, and one loud warning is printed.

Each notebook has a wall-clock budget (``--timeout``): cells are interrupted when it is spent,
and a worker still alive ``--grace`` seconds later is killed with its kernel. Notebooks run with
``CXRLAB_PRESET`` (default ``demo``) and read the course's data folder (``CXRLAB_DATA``).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import html
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from nbconvert.preprocessors import Preprocessor
from tqdm import tqdm
from traitlets import Bool, List, Unicode

from cxrlab.coursetools import authoring
from cxrlab.core import restricted
from cxrlab.coursetools import gradebook as book
from cxrlab.coursetools import sandbox

KERNEL_NAME = "cxrlab-grading"
NEEDS_MANUAL = book.NEEDS_MANUAL
NOT_SUBMITTED = book.NOT_SUBMITTED
DEFAULT_TIMEOUT = 900.0
DEFAULT_GRACE = 60.0
HIDDEN_PLACEHOLDER = "[hidden test]"
#: Code in an answer cell that can subvert tests run in the same interpreter: flagged for a human.
SUSPICIOUS_CODE = {
    "__eq__": "defines __eq__", "input_transformers": "rewrites cells before they run",
    "events.register": "hooks cell execution", "settrace": "traces execution",
    "builtins": "changes built-ins", "sys.modules": "replaces modules",
    "get_ipython().run_cell": "runs cells itself", "ctypes": "uses ctypes",
}


class GradingError(RuntimeError):
    """The grading run cannot start (bad folders, no solutions); the message says why."""


class _Bar(tqdm):
    """Progress bar without tqdm's monitor thread (workers are forked while it runs)."""

    monitor_interval = 0


GradedCell = book.GradedCell
NotebookResult = book.NotebookResult


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
    """Map ``learner -> {chapter: notebook}``; also return ``"learner: problem"`` warnings.

    Folders whose name starts with ``_`` or ``.``, and earlier grading outputs, are not learners.
    A notebook matches a chapter by its exact name (``ch01_data.ipynb``) or, failing that, by
    its chapter prefix (``ch01_data (1).ipynb``, ``ch01-mine.ipynb``) when that is unambiguous.
    """
    if not submissions.is_dir():
        raise GradingError(f"submissions folder not found: {submissions}")
    found: dict[str, dict[str, Path]] = {}
    problems: list[str] = []
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
                problems.append(f"{folder.name}: ignored {nb_path.name} (not a course chapter)")
            elif chapter in mine:
                problems.append(f"{folder.name}: two notebooks for {chapter}; graded {mine[chapter].name}, "
                                f"ignored {nb_path.name}")
            else:
                if nb_path.name != f"{chapter}.ipynb":
                    problems.append(f"{folder.name}: graded {nb_path.name} as {chapter} (misnamed)")
                mine[chapter] = nb_path
        if not mine:
            problems.append(f"{folder.name}: no chapter notebooks found")
        found[folder.name] = mine
    if not found:
        raise GradingError(f"no learner folders in {submissions} (expected one folder per learner)")
    return found, problems


def _match_chapter(stem: str, chapters: list[str]) -> str | None:
    if stem in chapters:
        return stem
    prefix = stem.split("_")[0].split("-")[0].split(" ")[0].lower()
    matches = [c for c in chapters if c.split("_")[0].lower() == prefix]
    return matches[0] if len(matches) == 1 else None


# ----------------------------------------------------------------------------- the course dir
def prepare_course(course_dir: Path, solutions: list[Path]) -> list[str]:
    """Stage the solutions and run nbgrader's generate step (fills the template gradebook)."""
    names = []
    for path in solutions:
        name = authoring.stage_source(path, course_dir)
        authoring.run_generate_assignment(course_dir, name)
        names.append(name)
    return names


def hidden_test_lines(solutions: list[Path]) -> dict[str, list[str]]:
    """Per chapter, the non-trivial lines of its hidden tests (redacted from feedback outputs)."""
    found: dict[str, list[str]] = {}
    for path in solutions:
        lines: list[str] = []
        for cell in nbformat.read(path, as_version=4).cells:
            if authoring.is_graded_code_cell(cell):
                lines += [ln.strip() for ln in authoring.hidden_test_block(cell.source).splitlines()
                          if len(ln.strip()) >= 8]
        found[path.stem] = sorted(set(lines), key=len, reverse=True)
    return found


@dataclass
class Settings:
    """How notebooks are graded (one object for the whole run)."""

    timeout: float = DEFAULT_TIMEOUT
    grace: float = DEFAULT_GRACE
    preset: str = "demo"
    show_hidden: bool = False
    sandbox_mode: str = "bwrap"            # the mode chosen by sandbox.choose_mode
    limits: sandbox.Limits = field(default_factory=sandbox.Limits)
    allow_restricted: bool = False


def _package_dirs() -> list[Path]:
    """The folders of the course's own packages (``cxrlab``, ``data_fetch``) this grader runs."""
    import cxrlab
    import data_fetch

    return [Path(cxrlab.__file__).resolve().parent, Path(data_fetch.__file__).resolve().parent]


def _package_parents() -> list[str]:
    return sorted({str(p.parent) for p in _package_dirs()})


def kernel_python() -> str:
    """This interpreter by a path that exists inside the sandbox (symlinked folders resolved).

    ``.venv`` may be a link to a virtual environment elsewhere; the sandbox binds real paths.
    """
    exe, prefix = Path(sys.executable), Path(sys.prefix)
    if exe.is_relative_to(prefix):
        return str(prefix.resolve() / exe.relative_to(prefix))
    return str(exe.resolve())


def _sandbox_job(job_dir: Path, notebook: Path, settings: Settings) -> sandbox.Job:
    """The sandbox description of one job: what the kernel may read, and its scratch folder."""
    from data_fetch.paths import data_root

    drop = settings.sandbox_mode == "bwrap" and sandbox.should_drop_privileges()
    data = data_root().resolve()
    hidden = [] if settings.allow_restricted else restricted_datasets(data)
    scratch = sandbox.prepare_scratch(job_dir / "sandbox", notebook, drop, data, hidden)
    packages = _package_dirs()
    read_only = {str(Path(p).resolve()) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    read_only |= {str(p) for p in packages} | {str(data)}
    read_only = {p for p in read_only if not p.startswith(("/usr", "/etc")) and Path(p).exists()}
    env = {"CXRLAB_PRESET": settings.preset, "CXRLAB_DATA": str(scratch / "data")}   # the writable view
    limits = asdict(settings.limits)
    if limits.get("cpu_seconds") is None:
        limits["cpu_seconds"] = int(settings.timeout * (os.cpu_count() or 1)) + 60
    return sandbox.Job(mode=settings.sandbox_mode, scratch=str(scratch), python=kernel_python(),
                       read_only=sorted(read_only),
                       hidden=[str(p) for p in hidden], pythonpath=_package_parents(), env=env,
                       limits=limits, drop_to_nobody=drop)


def restricted_datasets(data: Path) -> list[Path]:
    """Prepared datasets under ``data`` whose data card says ``restricted`` (hidden from kernels)."""
    found = []
    for card in sorted(data.glob("*/*/manifest.json")):
        with contextlib.suppress(OSError, ValueError):
            if json.loads(card.read_text()).get("restricted"):
                found.append(card.parent.resolve())
    return found


def prepare_job(template: Path, job_dir: Path, learner: str, chapter: str, notebook: Path,
                settings: Settings) -> dict[str, Any]:
    """Copy the template course, place the submission, write the job's kernelspec; return the job."""
    course = job_dir / "course"
    shutil.copytree(template, course)
    target = course / "submitted" / learner / chapter / f"{chapter}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(notebook, target)
    spec = _sandbox_job(job_dir, notebook, settings).write(job_dir / "sandbox-job.json")
    kernel_dir = job_dir / "jupyter" / "kernels" / KERNEL_NAME
    kernel_dir.mkdir(parents=True)
    (kernel_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "cxrlab.coursetools.sandbox", "launch", str(spec), "{connection_file}"],
        "display_name": "cxrlab grading (sandboxed)", "language": "python", "interrupt_mode": "message",
        "env": {"PYTHONPATH": os.pathsep.join(_package_parents())}}))   # the launcher: this cxrlab
    for sub in ("runtime", "tmp"):
        (job_dir / sub).mkdir()
    return {"dir": str(job_dir), "course": str(course), "learner": learner, "chapter": chapter,
            "scratch": str(job_dir / "sandbox")}


def worker_env(job: dict[str, Any]) -> dict[str, str]:
    """Environment of the grading worker (not the kernel's): Jupyter folders inside the job."""
    job_dir = Path(job["dir"])
    return {"JUPYTER_PATH": str(job_dir / "jupyter"), "JUPYTER_RUNTIME_DIR": str(job_dir / "runtime"),
            "TMPDIR": str(job_dir / "tmp"),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}


# ----------------------------------------------------------------------------- feedback preprocessors
class HideHiddenTestTracebacks(Preprocessor):
    """Feedback pages: shorten tracebacks of graded cells to ``Error: message``.

    A traceback quotes the lines around the failing statement, which would reveal the hidden
    tests that :class:`ClearInstructorHiddenTests` removed from the cell's source.
    """

    enabled = Bool(True).tag(config=True)

    def preprocess_cell(self, cell, resources, index):  # noqa: D102 - nbconvert hook
        if cell.cell_type == "code" and authoring.nb_meta(cell).get("grade"):
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    out["traceback"] = [f"{out.get('ename', 'Error')}: {out.get('evalue', '')}".rstrip(": ")]
        return cell, resources


class ClearInstructorHiddenTests(Preprocessor):
    """Remove hidden tests from the instructor's locked check cells, and their text from outputs.

    Unlike nbgrader's ``ClearHiddenTests`` it never looks at a learner's own cells, so a learner
    who writes ``BEGIN HIDDEN TESTS`` in an answer (even in a comment) gets normal feedback. Any
    output that quotes a hidden-test line verbatim (e.g. ``print(In[-1])``) shows a placeholder.
    """

    enabled = Bool(True).tag(config=True)
    hidden_lines = List(Unicode(), default_value=[]).tag(config=True)

    def preprocess_cell(self, cell, resources, index):  # noqa: D102 - nbconvert hook
        meta = authoring.nb_meta(cell)
        if cell.cell_type == "code" and meta.get("grade") and meta.get("locked"):
            cell.source = authoring.remove_hidden_tests(cell.source)
        for out in cell.get("outputs", []):
            self._redact(out)
        return cell, resources

    def _redact(self, out) -> None:
        for key in ("text", "evalue"):
            if isinstance(out.get(key), str):
                out[key] = self.redact(out[key])
        if "traceback" in out:
            out["traceback"] = [self.redact(line) for line in out["traceback"]]
        for mime, value in list(out.get("data", {}).items()):
            if isinstance(value, str) and mime.startswith("text/"):
                out["data"][mime] = self.redact(value)

    def redact(self, text: str) -> str:
        """``text`` with every hidden-test line replaced by a placeholder."""
        for line in self.hidden_lines:
            if line in text:
                text = text.replace(line, HIDDEN_PLACEHOLDER)
        return text


class DropRestrictedOutputs(Preprocessor):
    """When the notebook loaded restricted data: keep only graded cells' error messages."""

    enabled = Bool(True).tag(config=True)
    marker = Unicode("").tag(config=True)

    def preprocess(self, nb, resources):  # noqa: D102 - nbconvert hook
        if not (self.marker and restricted.loaded(self.marker)):
            return nb, resources
        for cell in nb.cells:
            if cell.cell_type == "code":
                keep_errors = bool(authoring.nb_meta(cell).get("grade"))
                cell.outputs = [o for o in cell.get("outputs", []) if keep_errors and o.get("output_type") == "error"]
        return nb, resources


def _worker_config(course_dir: Path, job: dict[str, Any], settings: Settings, hidden: list[str]):
    """nbgrader config for autograde + feedback: the course config plus execution limits."""
    from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
    from nbgrader.preprocessors import GetGrades

    cfg = authoring.nbgrader_config(course_dir)
    deadline: list[float] = []                  # set when the first cell runs (kernel start-up excluded)

    def seconds_left(cell) -> int:
        if not deadline:
            deadline.append(time.monotonic() + settings.timeout)
        return max(1, int(deadline[0] - time.monotonic()))

    cfg.Execute.kernel_name = KERNEL_NAME
    cfg.Execute.timeout = max(1, int(settings.timeout))
    cfg.Execute.timeout_func = seconds_left
    cfg.Execute.interrupt_on_timeout = True
    cfg.Execute.startup_timeout = 120
    cfg.KernelManager.transport = "ipc"            # Unix sockets: the sandbox has no network
    cfg.KernelManager.ip = str(Path(job["scratch"]) / "kernel")
    cfg.OverwriteCells.add_missing_cells = True    # a deleted graded cell is put back (and reported)
    cfg.Autograde.force = True
    cfg.GenerateFeedback.force = True
    cfg.ClearInstructorHiddenTests.hidden_lines = [] if settings.show_hidden else hidden
    cfg.DropRestrictedOutputs.marker = str(Path(job["scratch"]) / "restricted-data-loaded")
    feedback = [GetGrades, DropRestrictedOutputs]
    if not settings.show_hidden:
        feedback += [ClearInstructorHiddenTests, HideHiddenTestTracebacks]
    cfg.GenerateFeedback.preprocessors = feedback + [CSSHTMLHeaderPreprocessor]
    cfg.HTMLExporter.sanitize_html = True          # a learner's HTML output cannot run script in your browser
    return cfg


# ----------------------------------------------------------------------------- the worker
def _become_subreaper() -> None:
    """Orphans of the kernel (double forks) re-parent to this worker, so they can be killed."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(36, 1, 0, 0, 0)   # PR_SET_CHILD_SUBREAPER


def _kill_descendants() -> None:
    import psutil

    me = psutil.Process()
    for proc in me.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(me.children(recursive=True), timeout=5)


def _run_converter(converter_class, cfg, chapter: str, learner: str) -> None:
    from nbgrader.coursedir import CourseDirectory

    coursedir = CourseDirectory(config=cfg)
    coursedir.assignment_id, coursedir.student_id = chapter, learner
    converter = converter_class(coursedir=coursedir, config=cfg)
    if not any(getattr(h, "cxrlab", False) for h in converter.log.handlers):   # to the notebook's log file
        handler = logging.StreamHandler(sys.stderr)
        handler.cxrlab = True
        handler.setFormatter(logging.Formatter("[nbgrader %(levelname)s] %(message)s"))
        converter.log.addHandler(handler)
    converter.log.setLevel(logging.INFO)
    converter.start()


def _autograde_worker(job: dict[str, Any], settings: Settings, hidden: list[str], result_path: str) -> None:
    """Body of one worker process: autograde, then feedback, for one notebook; result as JSON."""
    os.environ.update(worker_env(job))
    tempfile.tempdir = os.environ["TMPDIR"]   # the forked worker inherited the parent's cached choice
    log_path = Path(result_path).with_suffix(".log")
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log, 1)   # nbgrader's and the kernel's messages go to the notebook's log file
    os.dup2(log, 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)   # not the parent's (maybe captured) streams
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    warnings.filterwarnings("ignore", message=".*not in session.*")   # nbgrader's SQLAlchemy chatter
    _become_subreaper()
    from nbgrader.converters import Autograde, GenerateFeedback

    course, learner, chapter = Path(job["course"]), job["learner"], job["chapter"]
    cfg = _worker_config(course, job, settings, hidden)
    started = time.monotonic()
    result: dict[str, Any] = {"status": "ok", "message": ""}
    try:
        _run_converter(Autograde, cfg, chapter, learner)
        graded = course / "autograded" / learner / chapter / f"{chapter}.ipynb"
        timed_out = _timed_out_cells(nbformat.read(graded, as_version=4))
        if timed_out:
            result = {"status": "timeout", "message": f"{', '.join(timed_out)} interrupted: the notebook "
                      f"ran past its {settings.timeout:g} s budget; the cells graded before it count"}
    except BaseException as err:  # noqa: BLE001 - report anything to the parent
        sys.stderr.flush()
        result = {"graded": False, **_failure(log_path.read_text(errors="replace"), err,
                                               time.monotonic() - started, settings.timeout)}
    finally:
        _kill_descendants()
    result["restricted"] = bool(restricted.loaded(cfg.DropRestrictedOutputs.marker))
    if result.get("graded", True):
        try:
            _run_converter(GenerateFeedback, cfg, chapter, learner)
        except BaseException as err:  # noqa: BLE001 - feedback problems never change a grade
            sys.stderr.flush()
            result["feedback_error"] = last_error_line(log_path.read_text(errors="replace")) or repr(err)
        finally:
            _kill_descendants()
    Path(result_path).write_text(json.dumps(result))


def _failure(log: str, err: BaseException, seconds: float, timeout: float) -> dict[str, str]:
    """Status and a message naming the cause, for an autograde run that did not finish."""
    cause = last_error_line(log)
    if "DeadKernelError" in log or "Kernel died" in log or "kernel died" in log.lower():
        return {"status": "error", "message": "the kernel died while running the notebook (it exited, "
                "crashed or hit a resource limit: memory, CPU time, file size or processes): not graded"}
    if seconds >= timeout:
        return {"status": "timeout", "message": f"ran past its {timeout:g} s budget and did not stop when "
                "interrupted: not graded" + (f" ({cause})" if cause else "")}
    return {"status": "error", "message": cause or f"{type(err).__name__}: {err}"}


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


# ----------------------------------------------------------------------------- checks before running
def read_submission(path: Path) -> tuple[nbformat.NotebookNode | None, str]:
    """The submitted notebook, or ``(None, reason)`` when it is not a valid notebook."""
    try:
        nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)
        nbformat.validate(nb)
    except Exception as err:  # noqa: BLE001 - JSON, encoding and schema errors alike
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return None, f"not a valid notebook ({first[:200]}): not graded"
    return nb, ""


def tamper_notes(submitted: nbformat.NotebookNode, release: nbformat.NotebookNode) -> list[str]:
    """What the learner changed that they may not: edited locked cells, deleted graded cells.

    A locked cell counts as unchanged when it matches the learner's copy, with or without the
    hidden tests (an instructor checking the grader hands in the solution notebook itself).
    """
    theirs = {}
    for cell in submitted.cells:
        gid = authoring.nb_meta(cell).get("grade_id")
        if gid:
            theirs.setdefault(gid, cell)
    notes = []
    for cell in release.cells:
        meta = authoring.nb_meta(cell)
        gid = meta.get("grade_id")
        if not gid or not (meta.get("locked") or meta.get("grade")):
            continue
        mine = theirs.get(gid)
        if mine is None:
            how = ("re-added; scores 0" if cell.cell_type == "markdown" else "re-added and graded") \
                if meta.get("grade") else "re-added"
            notes.append(f"tampering: {gid} was deleted ({how})")
        elif meta.get("locked") and _normalised(authoring.remove_hidden_tests(mine.source)) != _normalised(cell.source):
            notes.append(f"tampering: locked cell {gid} was edited (restored before grading)")
    return notes


def _normalised(source: str) -> str:
    return "\n".join(line.rstrip() for line in source.strip().splitlines() if line.strip())


def suspicious_notes(submitted: nbformat.NotebookNode) -> list[str]:
    """Answer-cell code that can subvert tests run in the same interpreter (for a human to look at)."""
    found = []
    for cell in submitted.cells:
        if cell.cell_type != "code" or authoring.nb_meta(cell).get("locked"):
            continue
        for pattern, what in SUSPICIOUS_CODE.items():
            if pattern in cell.source and what not in found:
                found.append(what)
    return [f"review by hand: the learner's code {', '.join(found)}"] if found else []


def input_hash(notebook: Path, solution: Path) -> str:
    """Identifies what a result was computed from (the submission and the solution notebook)."""
    digest = hashlib.sha256(notebook.read_bytes())
    digest.update(solution.read_bytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- running the jobs
@dataclass
class _Running:
    job: dict[str, Any]
    process: Any
    result_path: Path
    started: float
    result: NotebookResult


def _start(job: dict[str, Any], settings: Settings, hidden: list[str], result: NotebookResult) -> _Running:
    result_path = Path(job["dir"]) / "result.json"
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    process = ctx.Process(target=_autograde_worker, args=(job, settings, hidden, str(result_path)), daemon=False)
    process.start()
    return _Running(job, process, result_path, time.monotonic(), result)


def _finish(run: _Running, settings: Settings, killed: bool) -> NotebookResult:
    """Fill the result of a finished (or killed) worker from its result file and gradebook."""
    result = run.result
    result.seconds = round(time.monotonic() - run.started, 1)
    limit = settings.timeout + settings.grace
    if killed:
        result.status, result.message = "timeout", (f"still running after {limit:g} s (timeout "
                                                    f"{settings.timeout:g} s + grace {settings.grace:g} s): "
                                                    "stopped, not graded")
        return result
    if not run.result_path.exists():
        result.status, result.message = "error", f"grading worker died (exit code {run.process.exitcode})"
        return result
    outcome = json.loads(run.result_path.read_text())
    result.status, result.message = outcome["status"], outcome["message"]
    result.restricted = bool(outcome.get("restricted"))
    if outcome.get("feedback_error"):
        result.notes.append(f"feedback page could not be generated ({outcome['feedback_error']}); "
                            "the grade stands")
    if outcome.get("graded", True):
        _read_scores(Path(run.job["course"]), result)
    return result


def run_jobs(jobs: list[tuple[dict[str, Any], NotebookResult]], settings: Settings,
             hidden: dict[str, list[str]], n_parallel: int, on_done, progress: bool) -> None:
    """Grade ``jobs`` with up to ``n_parallel`` workers; call ``on_done(job, result)`` for each."""
    pending = deque(jobs)
    running: list[_Running] = []
    with _Bar(total=len(jobs), desc="grading", unit="notebook", disable=not progress) as bar:
        while pending or running:
            while pending and len(running) < n_parallel:
                job, result = pending.popleft()
                running.append(_start(job, settings, hidden.get(job["chapter"], []), result))
            multiprocessing.connection.wait([r.process.sentinel for r in running], timeout=0.5)
            for run in list(running):
                overdue = time.monotonic() - run.started > settings.timeout + settings.grace
                if run.process.is_alive() and not overdue:
                    continue
                if run.process.is_alive():
                    _kill_tree(run.process.pid)
                run.process.join()
                running.remove(run)
                on_done(run.job, _finish(run, settings, killed=overdue))
                bar.update()
                bar.set_postfix_str(f"{run.job['learner']}/{run.job['chapter']}")


def _read_scores(course_dir: Path, result: NotebookResult) -> None:
    """Fill ``result.scores`` and ``result.answers`` from the job's gradebook."""
    from nbgrader.api import Gradebook

    graded_nb = course_dir / "autograded" / result.learner / result.chapter / f"{result.chapter}.ipynb"
    sources = {}
    if graded_nb.exists():
        for cell in nbformat.read(graded_nb, as_version=4).cells:
            sources[authoring.nb_meta(cell).get("grade_id")] = cell.source
    deleted = {n.split()[1] for n in result.notes if n.startswith("tampering: ") and "scores 0" in n}
    with authoring.venv_on_path(), Gradebook(authoring.nbgrader_config(course_dir).CourseDirectory.db_url) as gb:
        submission = gb.find_submission_notebook(result.chapter, result.chapter, result.learner)
        for grade in submission.grades:
            if grade.name in deleted:
                result.scores[grade.name] = 0.0          # re-added by the grader, not answered
            elif grade.needs_manual_grade:
                result.scores[grade.name] = NEEDS_MANUAL
                result.answers[grade.name] = sources.get(grade.name, "")
            else:
                result.scores[grade.name] = float(grade.score or 0.0)


# ----------------------------------------------------------------------------- feedback and logs
def write_feedback(course_dir: Path | None, out: Path, result: NotebookResult) -> Path:
    """Copy nbgrader's feedback page to ``out/feedback/<learner>/<chapter>.html`` (or explain why none)."""
    target = out / "feedback" / result.learner / f"{result.chapter}.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    produced = None if course_dir is None else (
        course_dir / "feedback" / result.learner / result.chapter / f"{result.chapter}.html")
    if result.status != "error" and produced is not None and produced.exists():
        page = produced.read_text(encoding="utf-8")
        if result.status == "timeout":
            page = _insert_after_body(page, _banner(result.status, result.message))
        if result.restricted:
            page = _insert_after_body(page, _banner("restricted data", (
                "this notebook loaded a restricted dataset: its figures, tables and printed "
                "outputs are left out of this page (the data-use agreement forbids sharing them)")))
        if result.answers:
            page = _insert_after_body(page, (
                "<div style=\"border:2px solid #0072B2;padding:1em;margin:1em\"><strong>Graded by hand"
                "</strong>: your written answers (" + ", ".join(html.escape(g) for g in result.answers)
                + ") are scored by your instructor with a rubric; the 0 shown for them below is a "
                "placeholder until then.</div>"))
        _write_atomic(target, page)
    else:
        reason = result.message or "the feedback page could not be generated"
        _write_atomic(target, f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{result.chapter}"
                      f"</title></head><body><h1>{html.escape(result.chapter)}: feedback for "
                      f"{html.escape(result.learner)}</h1>{_banner(result.status, reason)}</body></html>\n")
    return target


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _banner(title: str, message: str) -> str:
    return (f"<div style=\"border:2px solid #D55E00;padding:1em;margin:1em\"><strong>"
            f"{html.escape(title.upper())}</strong>: {html.escape(message)}</div>")


def _insert_after_body(page: str, fragment: str) -> str:
    start = page.find("<body")
    end = page.find(">", start)
    return page[: end + 1] + fragment + page[end + 1:]


def write_log(worker_log: Path | None, target: Path, result: NotebookResult) -> None:
    """Keep nbgrader's and the kernel's messages, followed by the outcome the gradebook shows."""
    target.parent.mkdir(parents=True, exist_ok=True)
    text = worker_log.read_text(errors="replace") if worker_log is not None and worker_log.exists() else ""
    outcome = [f"== cxrlab.coursetools.grading: {result.learner}/{result.chapter}: {result.status} "
               f"({result.seconds:g} s) {result.message}".rstrip()] + [f"== note: {n}" for n in result.notes]
    _write_atomic(target, text + ("\n" if text and not text.endswith("\n") else "") + "\n".join(outcome) + "\n")


# ----------------------------------------------------------------------------- the whole run
@dataclass
class GradingRun:
    """What a grading run produced."""

    gradebook: Path
    results: dict[tuple[str, str], NotebookResult]
    warnings: list[str]
    regraded: list[tuple[str, str]] = field(default_factory=list)
    sandbox_warning: str = ""

    @property
    def problems(self) -> list[NotebookResult]:
        """Notebooks that timed out or could not be graded."""
        return [r for r in self.results.values() if r.status in ("timeout", "error")]


def grade_submissions(submissions: Path, out: Path | None = None, *, solutions: Path | None = None,
                      timeout: float = DEFAULT_TIMEOUT, grace: float = DEFAULT_GRACE, preset: str = "demo",
                      show_hidden: bool = False, progress: bool = True, workdir: Path | None = None,
                      jobs: int | None = None, regrade: bool = False, sandbox_mode: str = "auto",
                      limits: sandbox.Limits | None = None, allow_restricted: bool = False) -> GradingRun:
    """Grade every learner folder in ``submissions``; write the gradebook and feedback to ``out``.

    >>> run = grade_submissions(Path("submissions"), Path("grades"))   # doctest: +SKIP
    >>> run.gradebook                                                   # doctest: +SKIP
    PosixPath('grades/gradebook.csv')

    ``out`` defaults to ``submissions/_grades``; results of unchanged submissions graded "ok"
    before are reused unless ``regrade``. ``jobs`` notebooks run at a time (default: the number
    of cores). The temporary course directory is created in ``workdir`` and removed at the end.
    """
    submissions = Path(submissions)
    out = Path(out) if out is not None else submissions / "_grades"
    sources = authoring.solution_notebooks(default_solutions() if solutions is None else Path(solutions))
    if not sources:
        raise GradingError(f"no solution notebooks in {solutions or default_solutions()}")
    mode, sandbox_warning = sandbox.choose_mode(sandbox_mode)
    settings = Settings(timeout, grace, preset, show_hidden, mode, limits or sandbox.Limits(), allow_restricted)
    by_chapter = {p.stem: p for p in sources}
    found, problems = find_submissions(submissions, list(by_chapter), exclude=out)
    cells = course_cells(sources)
    state = book.load_state(out)
    results: dict[tuple[str, str], NotebookResult] = {}
    todo: list[tuple[str, str, Path, NotebookResult]] = []
    for learner, mine in found.items():
        for chapter, notebook in mine.items():
            digest = input_hash(notebook, by_chapter[chapter])
            previous = state.get((learner, chapter))
            if not regrade and previous is not None and previous.input_hash == digest and previous.status == "ok":
                results[(learner, chapter)] = previous
            else:
                todo.append((learner, chapter, notebook, NotebookResult(learner, chapter, "ok", input_hash=digest)))
    regraded = [(learner, chapter) for learner, chapter, _, _ in todo]
    with tempfile.TemporaryDirectory(prefix="cxrlab-grading-", dir=workdir) as tmp:
        template = Path(tmp) / "template"
        prepare_course(template, sources)
        runnable = _preflight(todo, template, Path(tmp), settings, results, out)
        hidden = {} if show_hidden else hidden_test_lines(sources)

        def done(job: dict[str, Any], result: NotebookResult) -> None:
            results[(result.learner, result.chapter)] = result
            write_feedback(Path(job["course"]), out, result)
            write_log(Path(job["dir"]) / "result.log", out / "logs" / result.learner / f"{result.chapter}.log", result)
            shutil.rmtree(job["dir"], ignore_errors=True)
            book.save_state(out, results)

        run_jobs(runnable, settings, hidden, max(1, jobs or os.cpu_count() or 1), done, progress)
    learner_notes = book.notes_by_learner(problems)
    book.write_all(out, sorted(found), cells, results, learner_notes)
    return GradingRun(out / "gradebook.csv", results, problems, regraded, sandbox_warning)


def _preflight(todo, template: Path, tmp: Path, settings: Settings, results, out: Path):
    """Check each submission before running it; return the jobs to run, record the others."""
    runnable = []
    for i, (learner, chapter, notebook, result) in enumerate(todo):
        nb, problem = read_submission(notebook)
        if nb is None:
            result.status, result.message = "error", problem
            results[(learner, chapter)] = result
            write_feedback(None, out, result)
            write_log(None, out / "logs" / learner / f"{chapter}.log", result)
            continue
        release = nbformat.read(template / "release" / chapter / f"{chapter}.ipynb", as_version=4)
        result.notes += tamper_notes(nb, release) + suspicious_notes(nb)
        job = prepare_job(template, tmp / "jobs" / f"{i:04d}", learner, chapter, notebook, settings)
        runnable.append((job, result))
    return runnable


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
    parser.add_argument("--jobs", type=int, default=None,
                        help="notebooks graded at the same time (default: the number of cores)")
    parser.add_argument("--regrade", action="store_true",
                        help="grade every submission again, even those unchanged since the last run")
    parser.add_argument("--sandbox", choices=("auto", "bwrap", "none"), default="auto",
                        help="run kernels in bubblewrap (auto: when it works; none: never)")
    parser.add_argument("--memory-mb", type=int, default=sandbox.Limits.memory_mb,
                        help=f"address-space limit of each kernel (default {sandbox.Limits.memory_mb})")
    parser.add_argument("--file-mb", type=int, default=sandbox.Limits.file_mb,
                        help=f"largest file a notebook may write (default {sandbox.Limits.file_mb})")
    parser.add_argument("--max-processes", type=int, default=sandbox.Limits.processes,
                        help=f"processes and threads a kernel may add (default {sandbox.Limits.processes})")
    parser.add_argument("--preset", default=os.environ.get("CXRLAB_PRESET", "demo"),
                        help="CXRLAB_PRESET the notebooks run with (default demo)")
    parser.add_argument("--allow-restricted", action="store_true",
                        help="let kernels read restricted datasets in the data folder (feedback still "
                             "leaves their outputs out)")
    parser.add_argument("--show-hidden-tests", action="store_true",
                        help="keep the hidden tests in the learners' feedback pages")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: 0 when every notebook was graded, 1 if any timed out or failed."""
    args = _parser().parse_args(argv)
    try:
        mode, warning = sandbox.choose_mode(args.sandbox)
        if warning:
            print("\n" + "!" * 78 + f"\nWARNING: {warning}\n" + "!" * 78 + "\n", file=sys.stderr)
        run = grade_submissions(args.submissions, args.out, solutions=args.solutions, timeout=args.timeout,
                                grace=args.grace, preset=args.preset, show_hidden=args.show_hidden_tests,
                                jobs=args.jobs, regrade=args.regrade, sandbox_mode=mode,
                                limits=sandbox.Limits(memory_mb=args.memory_mb, file_mb=args.file_mb,
                                                      processes=args.max_processes),
                                allow_restricted=args.allow_restricted)
    except (GradingError, authoring.AuthoringError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for problem in run.warnings:
        print(f"warning: {problem}", file=sys.stderr)
    for res in run.problems:
        print(f"{res.learner}/{res.chapter}: {res.status}: {res.message}", file=sys.stderr)
    print(f"graded {len(run.regraded)} notebook(s), reused {len(run.results) - len(run.regraded)} unchanged "
          f"({len(run.problems)} with problems); gradebook: {run.gradebook}")
    print(f"feedback: {run.gradebook.parent / 'feedback'}; reflections to grade by hand: "
          f"{run.gradebook.parent / 'manual_grading.md'}; summary: {run.gradebook.parent / 'summary.md'}")
    return 1 if run.problems else 0


if __name__ == "__main__":
    sys.exit(main())
