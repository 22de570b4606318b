"""Run the whole course headless: ``python -m cxrlab.course --preset demo --out build``.

Executes every learner chapter ``chapters/ch*.ipynb`` in order in a fresh kernel (the
exercises stay unanswered, so a self-learner who runs the course first sees no answer; with
``--solutions`` the instructors' ``solutions/ch*.ipynb`` run instead, written under
``<out>/solutions/``), with the preset injected
papermill-style (a cell tagged ``injected-parameters`` after the ``parameters`` cell) and in
the environment (``CXRLAB_PRESET``), and with ``CXRLAB_RESULTS=<out>/results.json`` so each
chapter's :func:`cxrlab.core.results.record` calls land in one file. It writes

- ``<out>/notebooks/<chapter>.ipynb``: the executed notebooks (with outputs),
- ``<out>/html/<chapter>.html``: an HTML copy of each (nbconvert),
- ``<out>/results.json``: the chapters' headline numbers plus a ``course`` section with each
  chapter's status and seconds,

prints one progress line per chapter and a summary table, keeps going past a failing chapter
and exits non-zero if any chapter failed. Outputs of restricted sources (MIMIC, CheXpert) are
never written unless ``--allow-restricted`` is given: their data-use agreements forbid sharing
images or derived outputs, and ``build/`` is easy to publish by accident. Two guards: a chapter
whose parameters cell names a restricted source is refused before it runs, and a chapter whose
kernel *loaded* a restricted dataset (its data card says ``restricted``; the session writes the
file named by ``CXRLAB_RESTRICTED_MARKER``), however it chose the source, runs but has its
executed notebook and HTML withheld; its ``results.json`` numbers are kept.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from cxrlab.core.results import merge_into_json
from data_fetch.sources import RESTRICTED_SOURCES
from cxrlab.core import restricted

RESULTS_SECTION = "course"
DEFAULT_PATTERN = "ch*.ipynb"


@dataclass
class ChapterRun:
    """The outcome of running one chapter."""

    chapter: str
    status: str                  # "ok", "failed" or "refused"
    seconds: float
    source: str | None = None
    error: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)


def discover(folder: str | Path, pattern: str = DEFAULT_PATTERN) -> list[Path]:
    """The chapter notebooks in ``folder``, in course order (sorted by file name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no notebook folder at {folder}")
    return sorted(p for p in folder.glob(pattern) if p.is_file())


def _parameters_index(nb: nbformat.NotebookNode) -> int | None:
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return i
    return None


def notebook_parameters(nb: nbformat.NotebookNode) -> dict[str, Any]:
    """Literal assignments (``NAME = <literal>``) in the ``parameters`` cell (and injected ones).

    >>> nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
    ...     'SOURCE = "nih"\\nSEED = 3', metadata={"tags": ["parameters"]})])
    >>> notebook_parameters(nb)
    {'SOURCE': 'nih', 'SEED': 3}
    """
    params: dict[str, Any] = {}
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.cell_type != "code" or not {"parameters", "injected-parameters"} & set(tags):
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                    and isinstance(node.targets[0], ast.Name):
                try:
                    params[node.targets[0].id] = ast.literal_eval(node.value)
                except ValueError:
                    pass
    return params


def inject_parameters(nb: nbformat.NotebookNode, params: dict[str, Any]) -> nbformat.NotebookNode:
    """Insert a cell tagged ``injected-parameters`` right after the ``parameters`` cell.

    Like papermill: the notebook's own defaults stay visible, the injected values win.
    Without a ``parameters`` cell the injected cell goes first. Returns ``nb`` (modified).
    """
    if not params:
        return nb
    body = "\n".join(f"{name} = {value!r}" for name, value in params.items())
    cell = nbformat.v4.new_code_cell(f"# Parameters injected by cxrlab.coursetools.runner\n{body}",
                                     metadata={"tags": ["injected-parameters"]})
    where = _parameters_index(nb)
    nb.cells.insert(0 if where is None else where + 1, cell)
    return nb


def write_html(nb: nbformat.NotebookNode, target: Path) -> Path:
    """Write an HTML copy of an executed notebook (images embedded)."""
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nb)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(body, encoding="utf-8")
    return target


def _execute(nb: nbformat.NotebookNode, cwd: Path, env: dict[str, str],
             timeout: int, kernel: str) -> str | None:
    """Execute ``nb`` in place; return an error summary or None.

    Cells tagged ``raises-exception`` (learners' unfinished exercises) may fail; any other
    error stops the chapter, as in Jupyter's "run all".
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel,
                            resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute(env=env, cwd=str(cwd))
    except CellExecutionError as exc:
        return f"{exc.ename}: {str(exc.evalue).splitlines()[0] if exc.evalue else ''}"
    except (CellTimeoutError, DeadKernelError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def run_chapter(path: Path, out: Path, *, preset: str, source: str | None = None,
                timeout: int = 900, kernel: str = "python3",
                allow_restricted: bool = False) -> ChapterRun:
    """Execute one chapter notebook into ``out`` (notebooks/ and html/); never raises on failure."""
    chapter = path.stem
    nb = nbformat.read(path, as_version=4)
    params: dict[str, Any] = {"PRESET": preset}
    if source is not None:
        params["SOURCE"] = source
    effective_source = (params.get("SOURCE") or os.environ.get("CXRLAB_SOURCE")
                        or notebook_parameters(nb).get("SOURCE"))
    if effective_source in RESTRICTED_SOURCES and not allow_restricted:
        return ChapterRun(chapter, "refused", 0.0, effective_source,
                          f"source {effective_source!r} is restricted: its outputs may not be "
                          "written to a shareable build; rerun with --allow-restricted "
                          "and keep the build private")
    inject_parameters(nb, params)
    results_path = (out / "results.json").resolve()
    marker = out.resolve() / f".restricted-{chapter}"
    marker.unlink(missing_ok=True)
    env = {**os.environ, "CXRLAB_PRESET": preset, "CXRLAB_RESULTS": str(results_path),
           **({"CXRLAB_SOURCE": effective_source} if effective_source else {}),
           restricted.MARKER_ENV: str(marker),
           # figures must reach the outputs (and the HTML), even when the caller set Agg
           "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    start = time.perf_counter()
    error = _execute(nb, path.parent.resolve(), env, timeout, kernel)
    seconds = round(time.perf_counter() - start, 1)
    loaded = restricted.loaded(marker)
    marker.unlink(missing_ok=True)
    if loaded and not allow_restricted:
        return ChapterRun(chapter, "refused", seconds, effective_source,
                          f"the chapter loaded restricted data ({', '.join(loaded)}): its "
                          "notebook and HTML were not written (results.json keeps its numbers); rerun "
                          "with --allow-restricted and keep the build private")
    nb_path = out / "notebooks" / path.name
    nb_path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, nb_path)
    html_path = write_html(nb, out / "html" / f"{chapter}.html")
    return ChapterRun(chapter, "failed" if error else "ok", seconds, effective_source, error,
                      {"notebook": str(nb_path), "html": str(html_path)})


def summary_table(runs: list[ChapterRun]) -> str:
    """A plain-text table: chapter, status, seconds, and the error if any."""
    width = max([len(r.chapter) for r in runs] + [7])
    lines = [f"{'chapter':<{width}}  {'status':<8} {'seconds':>8}  note",
             f"{'-' * width}  {'-' * 8} {'-' * 8}  {'-' * 4}"]
    for r in runs:
        lines.append(f"{r.chapter:<{width}}  {r.status:<8} {r.seconds:>8.1f}  {r.error or ''}")
    total = sum(r.seconds for r in runs)
    n_ok = sum(r.status == "ok" for r in runs)
    lines.append(f"{n_ok}/{len(runs)} chapters ok in {total:.0f} s")
    return "\n".join(lines)


def run_course(notebooks: list[Path], out: Path, *, preset: str = "demo",
               source: str | None = None, timeout: int = 900, kernel: str = "python3",
               allow_restricted: bool = False) -> list[ChapterRun]:
    """Run ``notebooks`` in order into ``out``; results.json starts fresh and records each run."""
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results_path.unlink(missing_ok=True)
    merge_into_json(results_path, RESULTS_SECTION, "preset", preset)
    runs: list[ChapterRun] = []
    for i, path in enumerate(notebooks, 1):
        print(f"[{i}/{len(notebooks)}] {path.stem} ...", end=" ", flush=True)
        run = run_chapter(path, out, preset=preset, source=source, timeout=timeout,
                          kernel=kernel, allow_restricted=allow_restricted)
        runs.append(run)
        note = f": {run.error}" if run.error else ""
        print(f"{run.status} ({run.seconds:.1f} s){note}", flush=True)
        merge_into_json(results_path, RESULTS_SECTION, "chapters",
                       {r.chapter: {k: v for k, v in asdict(r).items() if k != "chapter"}
                        for r in runs})
    merge_into_json(results_path, RESULTS_SECTION, "ok", all(r.status == "ok" for r in runs))
    return runs


SOLUTION_MARK = "### BEGIN SOLUTION"


def _default_notebook_dir(name: str) -> Path:
    here = Path.cwd() / name
    return here if here.is_dir() else Path(__file__).resolve().parents[2] / name


def holds_solutions(path: Path) -> bool:
    """Whether a notebook still carries exercise solutions (an instructor copy)."""
    return any(SOLUTION_MARK in cell.source for cell in nbformat.read(path, as_version=4).cells)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns 0 when every chapter ran, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="python -m cxrlab.course",
                                     description="Run every chapter headless into a build folder.")
    parser.add_argument("--preset", default="demo", help="demo, workshop or full (default demo)")
    parser.add_argument("--out", default="build", type=Path, help="build folder (default build)")
    parser.add_argument("--notebooks", type=Path, default=None,
                        help="folder of chapter notebooks (default: chapters/, the learner copies)")
    parser.add_argument("--solutions", action="store_true",
                        help="instructors: run solutions/ (answers included) into OUT/solutions/")
    parser.add_argument("--pattern", default=DEFAULT_PATTERN, help="which notebooks (glob)")
    parser.add_argument("--source", default=None,
                        help="override every chapter's SOURCE (default: each notebook's own)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name")
    parser.add_argument("--allow-restricted", action="store_true",
                        help="allow outputs of MIMIC/CheXpert runs (keep that build private)")
    args = parser.parse_args(argv)
    from cxrlab.core.presets import PRESETS

    if args.preset not in PRESETS:
        parser.error(f"unknown preset {args.preset!r}; choose one of {', '.join(PRESETS)}")
    preset = args.preset
    notebooks = discover(args.notebooks or _default_notebook_dir(
        "solutions" if args.solutions else "chapters"), args.pattern)
    if not notebooks:
        print(f"no notebooks matching {args.pattern} found", file=sys.stderr)
        return 2
    spoilers = [p.name for p in notebooks if holds_solutions(p)] if not args.solutions else []
    if spoilers:
        print(f"{', '.join(spoilers)} hold(s) the exercise solutions: pass --solutions to run them "
              f"into {args.out / 'solutions'}/ (kept apart from the learners' {args.out}/html)",
              file=sys.stderr)
        return 2
    if args.solutions:
        args.out = args.out / "solutions"
    print(f"Running {len(notebooks)} chapter(s) with preset {preset!r} into {args.out}/")
    runs = run_course(notebooks, args.out, preset=preset, source=args.source,
                      timeout=args.timeout, kernel=args.kernel,
                      allow_restricted=args.allow_restricted)
    print()
    print(summary_table(runs))
    print(f"Headline numbers: {args.out / 'results.json'}")
    return 0 if all(r.status == "ok" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
