"""Build the learner notebooks in ``chapters/`` from the instructor notebooks in ``solutions/``.

``solutions/`` is the source of truth; ``chapters/`` is generated and never edited by hand::

    python -m cxrlab.authoring generate           # (re)write chapters/ and instructors/rubrics.md
    python -m cxrlab.authoring generate --check   # exit 1 if they differ from what generate writes
    python -m cxrlab.authoring strip-outputs solutions chapters
    python -m cxrlab.authoring check-clean solutions chapters
    python -m cxrlab.authoring check-hidden-tests solutions   # no `answer == expected` in hidden tests
    python -m cxrlab.authoring install-hook                   # git pre-commit hook running check-clean

How it works (and why through nbgrader's own converter). ``generate`` copies the solution
notebooks into a temporary nbgrader course directory (``source/<chapter>/<chapter>.ipynb``)
and runs nbgrader 0.9's ``GenerateAssignment`` converter through its Python API with an
explicit ``traitlets`` config: every folder and the SQLite gradebook live in that temporary
directory, no ``nbgrader_config.py`` from the user's machine is read, nothing touches the
network. Going through the converter, rather than calling nbgrader's preprocessors one by
one, keeps the learner copy byte-for-byte what nbgrader's autograder expects: the same cell
locking, checksums and metadata validation that :mod:`cxrlab.coursetools.grading` relies on when it
runs ``GenerateAssignment`` + ``Autograde`` on learners' submissions. The converter clears
outputs, replaces ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` by a stub and removes
``### BEGIN HIDDEN TESTS`` ... ``### END HIDDEN TESTS``. We then post-process its output:

* each answer cell's stub becomes one clear line,
  ``raise NotImplementedError("Exercise K: not implemented yet — ...")``;
* every answer cell and every graded check cell gets the ``raises-exception`` tag, so nbval,
  papermill/nbclient and ``make course`` run the untouched chapter end to end (the course's
  chosen convention: an unfinished exercise raises a clear, expected error);
* execution metadata, widget state and execution counts are dropped, and the notebook is
  written with sorted keys and one-space indentation, so the output is a pure function of
  the solution notebook and ``--check`` can detect drift.

``generate`` also writes ``instructors/rubrics.md``: the index of every graded exercise with
its points, and the rubric of every reflection question.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import nbformat
from nbformat import NotebookNode

REPO_ROOT = Path(__file__).resolve().parents[2]
# Command-line defaults are relative to the working directory (the course checkout, as `make` runs).
SOLUTIONS_DIR = Path("solutions")
CHAPTERS_DIR = Path("chapters")
RUBRICS_PATH = Path("instructors") / "rubrics.md"

RAISES_TAG = "raises-exception"
_STUB_TOKEN = "@@CXRLAB_EXERCISE_STUB@@"
TEXT_STUB = "*Your answer here: double-click this cell to write it.*"
_GRADE_ID = re.compile(r"^(?P<chapter>ch\d+)-ex(?P<number>\d+)-(?P<role>answer|check)$")
_VOLATILE_CELL_META = ("execution", "ExecuteTime", "papermill", "scrolled")
_VOLATILE_NB_META = ("widgets", "papermill", "execution")
_LOG = logging.getLogger("cxrlab.coursetools.authoring")


class AuthoringError(RuntimeError):
    """A solution notebook cannot be turned into a chapter (the message says which and why)."""


# ----------------------------------------------------------------------------- notebook helpers
def dumps_notebook(nb: NotebookNode) -> str:
    """Serialise ``nb`` deterministically: sorted keys, indent 1, UTF-8 text, final newline.

    >>> dumps_notebook(nbformat.v4.new_notebook()).endswith("}\\n")
    True
    """
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def nb_meta(cell: NotebookNode) -> dict:
    """The cell's ``nbgrader`` metadata dict (empty when the cell is not an nbgrader cell)."""
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def is_answer_cell(cell: NotebookNode) -> bool:
    """True for a code cell learners write in (nbgrader ``solution: true``)."""
    return cell.cell_type == "code" and bool(nb_meta(cell).get("solution"))


def is_graded_code_cell(cell: NotebookNode) -> bool:
    """True for an auto-graded code cell (nbgrader ``grade: true``)."""
    return cell.cell_type == "code" and bool(nb_meta(cell).get("grade"))


def is_reflection_cell(cell: NotebookNode) -> bool:
    """True for a manually graded markdown answer (``solution`` and ``grade`` both true)."""
    meta = nb_meta(cell)
    return cell.cell_type == "markdown" and bool(meta.get("solution")) and bool(meta.get("grade"))


def notebook_output_problems(nb: NotebookNode) -> list[str]:
    """Describe every output, execution count or volatile metadata entry that ``nb`` carries.

    An empty list means the notebook is clean (fit to commit).

    >>> nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1", execution_count=3)])
    >>> notebook_output_problems(nb)
    ['cell 0: execution_count=3']
    """
    problems = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"cell {i}: {len(cell.outputs)} output(s)")
        if cell.get("execution_count") is not None:
            problems.append(f"cell {i}: execution_count={cell.execution_count}")
    if "widgets" in nb.metadata:
        problems.append("notebook metadata: saved widget state")
    return problems


def strip_outputs(nb: NotebookNode) -> NotebookNode:
    """Return a copy of ``nb`` without outputs, execution counts or volatile metadata."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        for key in _VOLATILE_CELL_META:
            cell.metadata.pop(key, None)
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    for key in _VOLATILE_NB_META:
        nb.metadata.pop(key, None)
    return nb


def _ensure_cell_ids(nb: NotebookNode, name: str) -> None:
    """Give cells lacking an id (nbformat >= 4.5) a deterministic one derived from name and index."""
    if (nb.nbformat, nb.nbformat_minor) < (4, 5):
        return
    for i, cell in enumerate(nb.cells):
        if not cell.get("id"):
            cell["id"] = hashlib.sha1(f"{name}:{i}".encode()).hexdigest()[:8]


# ----------------------------------------------------------------------------- exercise helpers
def exercise_label(grade_id: str) -> str:
    """Human label for an answer/check cell id: ``ch01-ex2-answer`` -> ``Exercise 2``."""
    match = _GRADE_ID.match(grade_id or "")
    return f"Exercise {int(match['number'])}" if match else f"Exercise {grade_id}"


def stub_line(grade_id: str) -> str:
    """The line that replaces a solution in the learner's copy of the answer cell."""
    label = exercise_label(grade_id)
    return (f'raise NotImplementedError("{label}: not implemented yet (this error is expected until '
            'you write your answer) — replace this line with your answer, then run the check cell below.")')


def convention_warnings(nb: NotebookNode, name: str) -> list[str]:
    """Check one solution notebook against the exercise conventions of docs/ARCHITECTURE.md.

    Returns human-readable warnings (empty when the notebook follows them).
    """
    warnings: list[str] = []
    answers, checks = set(), set()
    for i, cell in enumerate(nb.cells):
        meta = nb_meta(cell)
        if not meta:
            continue
        where = f"{name} cell {i} ({meta.get('grade_id', 'no grade_id')})"
        if meta.get("schema_version") != 3:
            warnings.append(f"{where}: nbgrader schema_version is {meta.get('schema_version')!r}, not 3")
        if is_answer_cell(cell):
            answers.add(meta.get("grade_id"))
            if "### BEGIN SOLUTION" not in cell.source or "### END SOLUTION" not in cell.source:
                warnings.append(f"{where}: answer cell lacks ### BEGIN/END SOLUTION (the whole cell is replaced)")
        elif is_graded_code_cell(cell):
            checks.add(meta.get("grade_id"))
            if not meta.get("locked"):
                warnings.append(f"{where}: graded check cell is not locked")
            if "### BEGIN HIDDEN TESTS" not in cell.source:
                warnings.append(f"{where}: graded check cell has no ### BEGIN HIDDEN TESTS block")
        elif is_reflection_cell(cell) and "### BEGIN SOLUTION" not in cell.source:
            warnings.append(f"{where}: reflection cell has no rubric between ### BEGIN/END SOLUTION")
    for answer in sorted(a for a in answers if a):
        if answer.endswith("-answer") and answer[: -len("answer")] + "check" not in checks:
            warnings.append(f"{name}: {answer} has no graded check cell {answer[:-6]}check")
    return warnings + hidden_test_problems(nb, name)


_HIDDEN_BLOCK = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS[ \t]*\n(.*?)(?:^[ \t]*### END HIDDEN TESTS[ \t]*\n?|\Z)",
                           flags=re.S | re.M)
#: Calls whose result is a plain built-in value whatever the learner's object does.
PLAIN_CONVERSIONS = frozenset({"float", "int", "str", "bool", "len", "round", "isinstance", "type", "callable"})


def hidden_test_block(source: str) -> str:
    """The text between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` (all blocks)."""
    return "\n".join(m.group(1).rstrip("\n") for m in _HIDDEN_BLOCK.finditer(source))


def remove_hidden_tests(source: str) -> str:
    r"""``source`` without its hidden-test blocks; an unterminated block runs to the end.

    >>> remove_hidden_tests("a = 1\n### BEGIN HIDDEN TESTS\nassert a\n### END HIDDEN TESTS\nb = 2")
    'a = 1\nb = 2'
    """
    return _HIDDEN_BLOCK.sub("", source).rstrip("\n")


def _bound_names(tree: "ast.AST") -> set[str]:
    """Names a cell binds at its top level (assignments, defs, classes, loops, imports)."""
    import ast

    names: set[str] = set()
    stack = list(getattr(tree, "body", []))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
            continue
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.For, ast.AsyncFor)):
            targets = [node.target]
        for target in targets:
            names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.stmt):
                stack.append(child)
    return names


def _raw_learner_names(node: "ast.AST", learner: set[str]) -> set[str]:
    """Learner names used in ``node`` other than through a plain conversion (``float(x)``...)."""
    import ast

    if isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name in PLAIN_CONVERSIONS or (name in ("asarray", "array") and any(k.arg == "dtype" for k in node.keywords)):
            return set()
        if name == "map" and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in PLAIN_CONVERSIONS:
            return set()                                   # map(str, x): plain values
    if isinstance(node, ast.Compare) and all(isinstance(op, (ast.Is, ast.IsNot)) for op in node.ops):
        return set()                                       # `x is None` is a real bool
    if isinstance(node, ast.Name):
        return {node.id} & learner
    found: set[str] = set()
    for child in ast.iter_child_nodes(node):
        found |= _raw_learner_names(child, learner)
    return found


def hidden_test_problems(nb: NotebookNode, name: str) -> list[str]:
    """Hidden-test lines that compare a learner's value with ``==``/``!=`` as it is.

    A learner's object can define ``__eq__`` to return True, so ``answer == expected`` proves
    nothing; compare plain values instead (``float(answer)``, ``int(...)``, ``str(...)``,
    ``len(...)``, ``np.asarray(answer, dtype=float)``, ``type(answer) is int``). The learner's
    names are those bound by answer cells, and any name a hidden test computes from them.
    """
    import ast

    learner: set[str] = set()
    problems = []
    for i, cell in enumerate(nb.cells):
        if is_answer_cell(cell):
            with contextlib.suppress(SyntaxError):
                learner |= _bound_names(ast.parse(cell.source))
        if not is_graded_code_cell(cell):
            continue
        block = hidden_test_block(cell.source)
        try:
            tree = ast.parse(block)
        except SyntaxError as err:
            problems.append(f"{name} cell {i}: hidden tests do not parse ({err.msg})")
            continue
        tainted = set(learner)
        for stmt in tree.body:
            if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and stmt.value is not None \
                    and _raw_learner_names(stmt.value, tainted):
                tainted |= _bound_names(ast.Module(body=[stmt], type_ignores=[]))
            for node in ast.walk(stmt):
                if not isinstance(node, ast.Compare) or not any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
                    continue
                raw = set().union(*(_raw_learner_names(n, tainted) for n in [node.left, *node.comparators]))
                if raw:
                    gid = nb_meta(cell).get("grade_id", f"cell {i}")
                    problems.append(f"{name} {gid}: hidden test line {node.lineno} compares {', '.join(sorted(raw))} "
                                    f"with ==/!= as it is: `{ast.get_source_segment(block, node)}` "
                                    "(compare float(...), int(...), str(...), len(...) or np.asarray(..., dtype=float))")
    return problems


# ----------------------------------------------------------------------------- nbgrader
def nbgrader_config(course_dir: Path):
    """An nbgrader config confined to ``course_dir`` (folders, SQLite gradebook), used offline."""
    from traitlets.config import Config

    cfg = Config()
    cfg.CourseDirectory.root = str(course_dir)
    cfg.CourseDirectory.course_id = "cxr-race-course"
    cfg.CourseDirectory.db_url = f"sqlite:///{course_dir / 'gradebook.db'}"
    cfg.ClearSolutions.code_stub = {"python": _STUB_TOKEN}
    cfg.ClearSolutions.text_stub = TEXT_STUB
    cfg.GenerateAssignment.force = True
    return cfg


def stage_source(solution: Path, course_dir: Path) -> str:
    """Copy one solution notebook to ``course_dir/source/<name>/<name>.ipynb``; return ``name``."""
    name = solution.stem
    nb = nbformat.read(solution, as_version=4)
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3",
                                          "language": "python"})
    nb.metadata.kernelspec.setdefault("language", "python")
    target = course_dir / "source" / name / f"{name}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(dumps_notebook(nb), encoding="utf-8")
    return name


@contextlib.contextmanager
def venv_on_path() -> Iterator[None]:
    """Put this interpreter's ``bin/`` first on ``PATH`` for the block.

    nbgrader's gradebook shells out to the ``alembic`` command by name; in a virtual
    environment that is not activated (``.venv/bin/python -m ...``) it would not be found.
    """
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), old])
    try:
        yield
    finally:
        os.environ["PATH"] = old


def run_generate_assignment(course_dir: Path, name: str) -> Path:
    """Run nbgrader's ``GenerateAssignment`` for assignment ``name``; return the release notebook."""
    from nbgrader.converters import GenerateAssignment
    from nbgrader.coursedir import CourseDirectory

    cfg = nbgrader_config(course_dir)
    coursedir = CourseDirectory(config=cfg)
    coursedir.assignment_id = name
    converter = GenerateAssignment(coursedir=coursedir, config=cfg)
    converter.log.setLevel(logging.ERROR)
    try:
        with venv_on_path():
            converter.start()
    except Exception as err:  # nbgrader raises NbGraderException with its log above it
        raise AuthoringError(f"nbgrader could not generate {name}: {err}") from err
    return course_dir / "release" / name / f"{name}.ipynb"


def finalize_chapter(nb: NotebookNode, name: str) -> NotebookNode:
    """Turn nbgrader's release notebook into the committed learner chapter (see module doc)."""
    from nbgrader.utils import compute_checksum

    nb = strip_outputs(nb)
    for cell in nb.cells:
        if is_answer_cell(cell) and _STUB_TOKEN in cell.source:
            cell.source = cell.source.replace(_STUB_TOKEN, stub_line(nb_meta(cell).get("grade_id", "")))
            cell.metadata.nbgrader["checksum"] = compute_checksum(cell)
        if _STUB_TOKEN in cell.source:
            raise AuthoringError(f"{name}: a solution stub was left in a non-answer cell")
        if is_answer_cell(cell) or is_graded_code_cell(cell):
            tags = list(cell.metadata.get("tags", []))
            if RAISES_TAG not in tags:
                tags.append(RAISES_TAG)
            cell.metadata["tags"] = tags
    nb.metadata["cxrlab"] = {"generated_from": f"solutions/{name}.ipynb",
                             "generator": "python -m cxrlab.authoring generate",
                             "note": "learner copy: edit solutions/, then regenerate"}
    _ensure_cell_ids(nb, name)
    return nb


def build_chapters(solutions: Iterable[Path]) -> dict[str, str]:
    """Generate every chapter from ``solutions``; return ``{file name: notebook JSON text}``."""
    solutions = sorted(solutions)
    out: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="cxrlab-generate-") as tmp:
        course_dir = Path(tmp)
        for solution in solutions:
            name = stage_source(solution, course_dir)
            release = run_generate_assignment(course_dir, name)
            chapter = finalize_chapter(nbformat.read(release, as_version=4), name)
            out[f"{name}.ipynb"] = dumps_notebook(chapter)
    return out


# ----------------------------------------------------------------------------- rubrics index
def split_rubric(markdown: str) -> tuple[str, str]:
    """Split a reflection cell into (prompt shown to learners, rubric between the delimiters)."""
    match = re.search(r"^[ \t]*### BEGIN SOLUTION[ \t]*\n(.*?)^[ \t]*### END SOLUTION[ \t]*$",
                      markdown, flags=re.S | re.M)
    if not match:
        return markdown.strip(), ""
    prompt = (markdown[: match.start()] + markdown[match.end():]).strip()
    return prompt, match.group(1).strip()


def reflection_prompt(cells: list[NotebookNode], index: int) -> str:
    """The question text: the reflection cell's own text, or the markdown cell just before it."""
    prompt, _ = split_rubric(cells[index].source)
    if prompt:
        return prompt
    for cell in reversed(cells[:index]):
        if cell.cell_type == "markdown":
            return cell.source.strip()
    return ""


def render_rubrics(solutions: Iterable[Path]) -> str:
    """Markdown index of every graded exercise (points) and every reflection rubric."""
    lines = ["# Exercises, points and reflection rubrics", "",
             "Generated by `python -m cxrlab.authoring generate` from `solutions/`; do not edit by hand.",
             "Auto-graded checks are scored by `make grade`; reflection answers are graded by hand with",
             "the rubric below (see `instructors/README.md`, section Grading).", ""]
    grand = 0.0
    for path in sorted(solutions):
        nb = nbformat.read(path, as_version=4)
        lines += [f"## {path.stem}", "", "| cell | kind | points |", "|---|---|---|"]
        rubrics: list[str] = []
        total = 0.0
        for i, cell in enumerate(nb.cells):
            meta = nb_meta(cell)
            if not meta.get("grade"):
                continue
            points = float(meta.get("points", 0) or 0)
            total += points
            kind = "reflection (manual)" if cell.cell_type == "markdown" else "check (auto)"
            lines.append(f"| `{meta.get('grade_id')}` | {kind} | {points:g} |")
            if cell.cell_type == "markdown":
                prompt, rubric = split_rubric(cell.source)
                prompt = prompt or reflection_prompt(nb.cells, i)
                rubrics += [f"### `{meta.get('grade_id')}` ({points:g} points)", "",
                            "**Question.**", "", quote_markdown(prompt), "", "**Rubric.**", "",
                            rubric or "_No rubric written yet._", ""]
        grand += total
        lines += [f"| **total** | | **{total:g}** |", ""] + rubrics
    lines += [f"**Course total: {grand:g} points.**", ""]
    return "\n".join(lines)


def quote_markdown(text: str) -> str:
    """Prefix every line of ``text`` with ``> `` (a Markdown block quote)."""
    return "\n".join("> " + line if line else ">" for line in text.splitlines()) or "> (no prompt)"


# ----------------------------------------------------------------------------- commands
@dataclass
class Drift:
    """What differs between the committed files and what ``generate`` would write."""

    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changed or self.missing or self.extra)

    def describe(self) -> str:
        """One line per problem, for the error message."""
        return "\n".join([f"  out of date: {p}" for p in self.changed]
                         + [f"  missing:     {p}" for p in self.missing]
                         + [f"  stale (no solution): {p}" for p in self.extra])


def solution_notebooks(solutions_dir: Path) -> list[Path]:
    """The solution notebooks in ``solutions_dir`` (``*.ipynb``, checkpoints ignored), sorted."""
    return sorted(p for p in Path(solutions_dir).glob("*.ipynb") if not p.name.startswith("."))


def generate(solutions_dir: Path = SOLUTIONS_DIR, chapters_dir: Path = CHAPTERS_DIR,
             rubrics_path: Path | None = RUBRICS_PATH, check: bool = False) -> Drift:
    """Write (or with ``check=True`` only compare) chapters and the rubric index.

    Returns the drift found *before* writing; with ``check=False`` the files are then updated
    (chapters with no solution any more are removed).
    """
    sources = solution_notebooks(solutions_dir)
    if not sources:
        raise AuthoringError(f"no solution notebooks in {solutions_dir}")
    for path in sources:
        for warning in convention_warnings(nbformat.read(path, as_version=4), path.name):
            _LOG.warning("convention: %s", warning)
    wanted = {Path(chapters_dir) / name: text for name, text in build_chapters(sources).items()}
    if rubrics_path is not None:
        wanted[Path(rubrics_path)] = render_rubrics(sources)
    drift = Drift()
    for path, text in wanted.items():
        if not path.exists():
            drift.missing.append(str(path))
        elif path.read_text(encoding="utf-8") != text:
            drift.changed.append(str(path))
    existing = set(Path(chapters_dir).glob("*.ipynb")) if Path(chapters_dir).exists() else set()
    drift.extra = sorted(str(p) for p in existing - set(wanted))
    if not check:
        for path, text in wanted.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        for stale in drift.extra:
            Path(stale).unlink()
    return drift


def _notebook_paths(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths):
        found += sorted(p.rglob("*.ipynb")) if p.is_dir() else [p]
    return [p for p in found if ".ipynb_checkpoints" not in p.parts]


def check_clean(paths: list[str]) -> dict[str, list[str]]:
    """Map each notebook under ``paths`` that carries outputs to its problems (empty: all clean)."""
    return {str(p): probs for p in _notebook_paths(paths)
            if (probs := notebook_output_problems(nbformat.read(p, as_version=4)))}


def strip_paths(paths: list[str]) -> list[str]:
    """Strip outputs in place from every notebook under ``paths``; return the files changed."""
    changed = []
    for path in _notebook_paths(paths):
        text = path.read_text(encoding="utf-8")
        nb = nbformat.reads(text, as_version=4)
        clean = dumps_notebook(strip_outputs(nb))
        if clean != text and notebook_output_problems(nb):
            path.write_text(clean, encoding="utf-8")
            changed.append(str(path))
    return changed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cxrlab.authoring", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="build chapters/ (and instructors/rubrics.md) from solutions/")
    gen.add_argument("--check", action="store_true", help="only compare; exit 1 when anything differs")
    gen.add_argument("--solutions", type=Path, default=SOLUTIONS_DIR)
    gen.add_argument("--chapters", type=Path, default=CHAPTERS_DIR)
    gen.add_argument("--rubrics", type=Path, default=RUBRICS_PATH,
                     help="rubric index to write (default instructors/rubrics.md)")
    gen.add_argument("--no-rubrics", action="store_true", help="do not write or check the rubric index")
    for name, text in (("strip-outputs", "remove outputs and execution counts in place"),
                       ("check-clean", "exit 1 when a notebook carries outputs"),
                       ("check-hidden-tests", "exit 1 when a hidden test compares a learner's value with ==")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("paths", nargs="*", default=[str(SOLUTIONS_DIR), str(CHAPTERS_DIR)]
                         if name != "check-hidden-tests" else [str(SOLUTIONS_DIR)])
    hook = sub.add_parser("install-hook", help="install a git pre-commit hook that runs check-clean")
    hook.add_argument("--repo", type=Path, default=Path("."), help="the git checkout (default: here)")
    return parser


PRE_COMMIT_HOOK = """#!/bin/sh
# Installed by `python -m cxrlab.authoring install-hook`: refuse to commit notebooks with outputs
# (outputs can hold restricted patient data, images and tokens). Strip them with
#   python -m cxrlab.authoring strip-outputs <notebooks>
files=$(git diff --cached --name-only --diff-filter=ACM -- '*.ipynb')
[ -z "$files" ] && exit 0
exec "{python}" -m cxrlab.authoring check-clean $files
"""


def install_hook(repo: Path) -> Path:
    """Write ``.git/hooks/pre-commit`` running ``check-clean`` on the notebooks being committed."""
    git_dir = Path(repo) / ".git"
    if git_dir.is_file():                      # a worktree: ".git" names the real folder
        git_dir = (Path(repo) / git_dir.read_text().split(":", 1)[1].strip()).resolve()
    if not git_dir.is_dir():
        raise AuthoringError(f"{repo} is not a git checkout (no .git folder)")
    hook = git_dir / "hooks" / "pre-commit"
    hook.parent.mkdir(parents=True, exist_ok=True)
    if hook.exists() and "cxrlab.coursetools.authoring" not in hook.read_text(errors="replace"):
        raise AuthoringError(f"{hook} exists and is not ours; add this line to it instead:\n"
                             f"  {sys.executable} -m cxrlab.authoring check-clean <notebooks>")
    hook.write_text(PRE_COMMIT_HOOK.replace("{python}", sys.executable))
    hook.chmod(0o755)
    return hook


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "generate":
        rubrics = None if args.no_rubrics else args.rubrics
        try:
            drift = generate(args.solutions, args.chapters, rubrics, check=args.check)
        except AuthoringError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if args.check:
            if drift:
                print("chapters/ is out of date with solutions/:\n" + drift.describe()
                      + "\nRun: python -m cxrlab.authoring generate", file=sys.stderr)
                return 1
            print("chapters/ matches solutions/.")
            return 0
        print(f"generated {len(solution_notebooks(args.solutions))} chapter(s) in {args.chapters}"
              + (f" ({len(drift.changed) + len(drift.missing)} changed)" if drift else " (no change)"))
        return 0
    if args.command == "install-hook":
        try:
            print(f"installed {install_hook(args.repo)}: commits of notebooks with outputs are refused")
        except AuthoringError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    if args.command == "check-hidden-tests":
        problems = [p for path in _notebook_paths(args.paths)
                    for p in hidden_test_problems(nbformat.read(path, as_version=4), path.name)]
        print("\n".join(problems) or "hidden tests compare plain values.", file=sys.stderr if problems else sys.stdout)
        return 1 if problems else 0
    if args.command == "check-clean":
        dirty = check_clean(args.paths)
        for path, problems in dirty.items():
            print(f"{path}: " + "; ".join(problems), file=sys.stderr)
        if dirty:
            print("Notebooks carry outputs. Run: python -m cxrlab.authoring strip-outputs", file=sys.stderr)
            return 1
        print("all notebooks are clean.")
        return 0
    changed = strip_paths(args.paths)
    print("\n".join(f"stripped {p}" for p in changed) or "nothing to strip.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
