"""chapters/ is generated from solutions/: stripping, tagging, determinism, drift and clean notebooks."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from cxrlab.coursetools import authoring

REPO = Path(__file__).resolve().parents[1]


def _nbg(grade_id: str, **kw) -> dict:
    return {"nbgrader": {"schema_version": 3, "grade_id": grade_id, **kw}}


def make_solution_notebook(path: Path, chapter: str = "ch07") -> Path:
    """A tiny solution notebook that follows the exercise conventions of docs/ARCHITECTURE.md.

    Exercise 1 (2 points): ``circle_area(r)``; exercise 2 (1 point): ``total = 45``;
    a reflection worth 3 points with its rubric. Used by test_grading.py too.
    """
    cells = [
        new_markdown_cell(f"# {chapter}: a tiny chapter\nA fabricated chapter for tests."),
        new_code_cell('SOURCE = "synthetic"\nPRESET = "demo"\nSEED = 0', metadata={"tags": ["parameters"]}),
        new_code_cell("import math"),
        new_markdown_cell("## Exercise 1\nWrite `circle_area(r)`."),
        new_code_cell("def circle_area(r):\n    ### BEGIN SOLUTION\n    return math.pi * r ** 2\n    ### END SOLUTION",
                      metadata=_nbg(f"{chapter}-ex1-answer", solution=True, grade=False, locked=False)),
        new_code_cell('assert abs(circle_area(1) - math.pi) < 1e-9, "circle_area(1) should be pi"\n'
                      'print("Exercise 1: correct")\n'
                      "### BEGIN HIDDEN TESTS\nassert abs(circle_area(2) - 4 * math.pi) < 1e-9\n### END HIDDEN TESTS",
                      metadata=_nbg(f"{chapter}-ex1-check", solution=False, grade=True, locked=True, points=2)),
        new_code_cell("### BEGIN SOLUTION\ntotal = sum(range(10))\n### END SOLUTION",
                      metadata=_nbg(f"{chapter}-ex2-answer", solution=True, grade=False, locked=False)),
        new_code_cell('assert total == 45, "total should be 45"\nprint("Exercise 2: correct")\n'
                      "### BEGIN HIDDEN TESTS\nassert isinstance(total, int)\n### END HIDDEN TESTS",
                      metadata=_nbg(f"{chapter}-ex2-check", solution=False, grade=True, locked=True, points=1)),
        new_markdown_cell("**Reflection.** Why does the area grow with r squared?\n\n"
                          "### BEGIN SOLUTION\nFull marks: scaling in two dimensions.\n### END SOLUTION",
                          metadata=_nbg(f"{chapter}-reflection", solution=True, grade=True, task=False,
                                        locked=False, points=3)),
        new_code_cell('print("the end")'),
    ]
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, Path, Path]:
    """solutions/ with one fabricated notebook, and the chapters/ + rubrics generate writes from it."""
    root = tmp_path_factory.mktemp("course")
    make_solution_notebook(root / "solutions" / "ch07_tiny.ipynb")
    authoring.generate(root / "solutions", root / "chapters", root / "rubrics.md")
    return root / "solutions", root / "chapters", root / "rubrics.md"


def _by_id(nb) -> dict:
    return {authoring.nb_meta(c).get("grade_id"): c for c in nb.cells if authoring.nb_meta(c)}


def test_generate_strips_solutions_and_hidden_tests(generated):
    _, chapters, _ = generated
    text = (chapters / "ch07_tiny.ipynb").read_text()
    for secret in ("BEGIN SOLUTION", "math.pi * r ** 2", "sum(range(10))", "HIDDEN TESTS",
                   "circle_area(2)", "isinstance(total", "Full marks"):
        assert secret not in text, f"{secret!r} leaked into the learner's chapter"
    cells = _by_id(nbformat.reads(text, as_version=4))
    assert cells["ch07-ex1-answer"].source == (
        "def circle_area(r):\n    " + authoring.stub_line("ch07-ex1-answer"))
    assert 'NotImplementedError("Exercise 2: not implemented yet' in cells["ch07-ex2-answer"].source
    assert cells["ch07-ex1-check"].source.startswith("assert abs(circle_area(1)")  # visible check kept
    assert authoring.TEXT_STUB in cells["ch07-reflection"].source


def test_generate_tags_exercise_cells_and_keeps_parameters(generated):
    _, chapters, _ = generated
    nb = nbformat.read(chapters / "ch07_tiny.ipynb", as_version=4)
    tagged = [authoring.nb_meta(c).get("grade_id") for c in nb.cells
              if authoring.RAISES_TAG in c.metadata.get("tags", [])]
    assert tagged == ["ch07-ex1-answer", "ch07-ex1-check", "ch07-ex2-answer", "ch07-ex2-check"]
    assert nb.cells[1].metadata["tags"] == ["parameters"]
    assert nb.metadata["cxrlab"]["generated_from"] == "solutions/ch07_tiny.ipynb"


def test_generate_clears_outputs(tmp_path):
    sol = make_solution_notebook(tmp_path / "solutions" / "ch07_tiny.ipynb")
    nb = nbformat.read(sol, as_version=4)
    nb.cells[2].outputs = [new_output("stream", name="stdout", text="secret output\n")]
    nb.cells[2].execution_count = 7
    nbformat.write(nb, sol)
    authoring.generate(tmp_path / "solutions", tmp_path / "chapters", None)
    chapter = nbformat.read(tmp_path / "chapters" / "ch07_tiny.ipynb", as_version=4)
    assert authoring.notebook_output_problems(chapter) == []
    assert "secret output" not in (tmp_path / "chapters" / "ch07_tiny.ipynb").read_text()


def test_untouched_chapter_runs_end_to_end_and_answers_raise(generated):
    """The tags make nbclient (nbval, make course) run past the unfinished exercises."""
    from nbclient import NotebookClient

    _, chapters, _ = generated
    nb = nbformat.read(chapters / "ch07_tiny.ipynb", as_version=4)
    NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    errors = {authoring.nb_meta(c).get("grade_id"): o.ename for c in nb.cells
              for o in c.get("outputs", []) if o.output_type == "error"}
    assert errors == {"ch07-ex1-check": "NotImplementedError", "ch07-ex2-answer": "NotImplementedError",
                      "ch07-ex2-check": "NameError"}
    assert nb.cells[-1].outputs[0].text == "the end\n"


def test_check_passes_then_detects_drift(generated, tmp_path):
    solutions, chapters, rubrics = generated
    assert not authoring.generate(solutions, chapters, rubrics, check=True)
    edited = tmp_path / "chapters"
    edited.mkdir()
    for p in chapters.glob("*.ipynb"):
        (edited / p.name).write_text(p.read_text().replace("the end", "THE END"))
    (edited / "ch99_orphan.ipynb").write_text(next(chapters.glob("*.ipynb")).read_text())
    drift = authoring.generate(solutions, edited, rubrics, check=True)
    assert drift.changed == [str(edited / "ch07_tiny.ipynb")]
    assert drift.extra == [str(edited / "ch99_orphan.ipynb")]
    assert (edited / "ch07_tiny.ipynb").read_text().count("THE END") == 1   # --check writes nothing


def test_generate_is_deterministic(generated, tmp_path):
    solutions, chapters, _ = generated
    again = authoring.build_chapters(authoring.solution_notebooks(solutions))
    assert again["ch07_tiny.ipynb"] == (chapters / "ch07_tiny.ipynb").read_text()
    assert json.loads(again["ch07_tiny.ipynb"])  # valid JSON


def test_rubric_index_lists_points_and_rubrics(generated):
    rubrics = generated[2].read_text()
    assert "| `ch07-ex1-check` | check (auto) | 2 |" in rubrics
    assert "Full marks: scaling in two dimensions." in rubrics
    assert "> **Reflection.** Why does the area grow with r squared?" in rubrics
    assert "**Course total: 6 points.**" in rubrics


def test_convention_warnings_flag_a_sloppy_notebook(tmp_path):
    nb = nbformat.read(make_solution_notebook(tmp_path / "s.ipynb"), as_version=4)
    assert authoring.convention_warnings(nb, "s") == []
    nb.cells[5].metadata.nbgrader["locked"] = False
    nb.cells[7].source = 'assert total == 45'
    del nb.cells[8].metadata.nbgrader["schema_version"]
    warnings = "\n".join(authoring.convention_warnings(nb, "s"))
    assert "ch07-ex1-check): graded check cell is not locked" in warnings
    assert "ch07-ex2-check): graded check cell has no ### BEGIN HIDDEN TESTS" in warnings
    assert "schema_version is None" in warnings


# ------------------------------------------------------------------ clean notebooks (helpers + repo)
def test_output_carrying_notebook_is_rejected_and_strip_fixes_it(tmp_path):
    path = tmp_path / "dirty.ipynb"
    nb = new_notebook(cells=[new_code_cell("print(1)", execution_count=1,
                                           outputs=[new_output("stream", name="stdout", text="1\n")])])
    nbformat.write(nb, path)
    assert authoring.check_clean([str(tmp_path)]) == {str(path): ["cell 0: 1 output(s)",
                                                                   "cell 0: execution_count=1"]}
    assert authoring.main(["check-clean", str(tmp_path)]) == 1
    assert authoring.strip_paths([str(tmp_path)]) == [str(path)]
    assert authoring.check_clean([str(tmp_path)]) == {}
    assert authoring.main(["check-clean", str(tmp_path)]) == 0


def test_committed_notebooks_carry_no_outputs():
    dirty = authoring.check_clean([str(REPO / "solutions"), str(REPO / "chapters")])
    assert not dirty, ("notebooks carry outputs (run `python -m cxrlab.authoring strip-outputs`):\n"
                       + "\n".join(f"{k}: {v}" for k, v in dirty.items()))


def test_chapters_match_solutions():
    """Fails when chapters/ (or instructors/rubrics.md) differs from what generate would write."""
    if not authoring.solution_notebooks(REPO / "solutions"):
        pytest.skip("no solution notebooks yet")
    proc = subprocess.run([sys.executable, "-m", "cxrlab.coursetools.authoring", "generate", "--check"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("notebook", sorted((REPO / "solutions").glob("ch*.ipynb")), ids=lambda p: p.stem)
def test_each_chapter_records_its_results_in_one_tagged_cell_after_its_last_section(notebook):
    """An instructor sees in one place what a chapter writes into build/results.json: every
    ``results.record`` call sits in the one code cell tagged ``results``, the last code cell."""
    code = [c for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code"]
    tagged = [c for c in code if "results" in c.metadata.get("tags", [])]
    recording = [c for c in code if "results.record(" in c.source]
    assert len(tagged) == 1, f"{notebook.name}: {len(tagged)} cells tagged 'results'"
    assert recording == tagged, (f"{notebook.name}: results.record outside the 'results' cell: "
                                 + "; ".join(c.source[:60] for c in recording if c is not tagged[0]))
    assert code[-1] is tagged[0], f"{notebook.name}: the 'results' cell is not the last code cell"


def test_real_solutions_follow_the_exercise_conventions():
    """Every solution notebook follows docs/ARCHITECTURE.md's exercise conventions; grade ids are unique."""
    sources = authoring.solution_notebooks(REPO / "solutions")
    if not sources:
        pytest.skip("no solution notebooks yet")
    problems, seen = [], {}
    for path in sources:
        nb = nbformat.read(path, as_version=4)
        problems += authoring.convention_warnings(nb, path.name)
        for cell in nb.cells:
            meta = authoring.nb_meta(cell)
            gid = meta.get("grade_id")
            if gid and gid in seen:
                problems.append(f"{path.name}: grade_id {gid} also used in {seen[gid]}")
            seen[gid] = path.name
            if meta.get("grade") and not meta.get("points"):
                problems.append(f"{path.name}: graded cell {gid} has no points")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ hidden tests compare plain values
def _with_hidden(hidden: str, answer: str = "### BEGIN SOLUTION\nanswer = 42\n### END SOLUTION") -> NotebookNode:
    cells = [new_code_cell(answer, metadata=_nbg("ch09-ex1-answer", solution=True, grade=False, locked=False)),
             new_code_cell("assert answer == 42\n### BEGIN HIDDEN TESTS\n" + hidden + "\n### END HIDDEN TESTS",
                           metadata=_nbg("ch09-ex1-check", solution=False, grade=True, locked=True, points=1))]
    return new_notebook(cells=cells)


@pytest.mark.parametrize("hidden, flagged", [
    ("assert answer == 42", ["answer"]),
    ("assert 42 != answer", ["answer"]),
    ("_a = answer.values\nassert _a[0] == 42", ["_a"]),                   # computed from the answer
    ("assert f(3) == 9", ["f"]),                                           # a learner's function's result
    ("assert int(answer) == 42 and type(answer) is int", []),
    ("assert float(answer) == 42.0", []),
    ("assert len(answer) == 2 and str(answer) == '42'", []),
    ("assert np.asarray(answer, dtype=float).tolist() == [42.0]", []),
    ("assert set(map(str, answer)) == {'a'}", []),
    ("assert (answer is None) == False", []),
    ("assert other == 42", []),                                            # not a learner name
])
def test_hidden_tests_comparing_learner_values_with_eq_are_flagged(hidden, flagged):
    answer = "### BEGIN SOLUTION\nanswer = 42\ndef f(x):\n    return x * x\n### END SOLUTION"
    problems = authoring.hidden_test_problems(_with_hidden(hidden, answer), "ch09.ipynb")
    assert [p.split(" compares ")[1].split(" with")[0] for p in problems] == flagged
    if flagged:
        assert "ch09-ex1-check" in problems[0] and "float(" in problems[0]


def test_check_hidden_tests_command_and_visible_checks_are_not_flagged(tmp_path):
    nbformat.write(_with_hidden("assert type(answer) is int"), tmp_path / "good.ipynb")
    assert authoring.main(["check-hidden-tests", str(tmp_path)]) == 0     # the visible `answer == 42` is fine
    nbformat.write(_with_hidden("assert answer == 42"), tmp_path / "bad.ipynb")
    assert authoring.main(["check-hidden-tests", str(tmp_path)]) == 1
    assert any("compares answer" in w for w in authoring.convention_warnings(
        nbformat.read(tmp_path / "bad.ipynb", as_version=4), "bad"))


def test_remove_hidden_tests_tolerates_learner_text():
    assert authoring.remove_hidden_tests("x = 1  # ### BEGIN HIDDEN TESTS in a comment") == \
        "x = 1  # ### BEGIN HIDDEN TESTS in a comment"
    assert authoring.remove_hidden_tests("a\n### BEGIN HIDDEN TESTS\nsecret") == "a"   # unterminated
    assert authoring.hidden_test_block("a\n### BEGIN HIDDEN TESTS\nb\n### END HIDDEN TESTS\n") == "b"


def test_install_hook_refuses_commits_of_notebooks_with_outputs(tmp_path):
    import shutil

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    assert authoring.main(["install-hook", "--repo", str(repo)]) == 0
    dirty = new_notebook(cells=[new_code_cell("1", execution_count=1,
                                              outputs=[new_output("stream", name="stdout", text="row 1\n")])])
    nbformat.write(dirty, repo / "nb.ipynb")
    env = {**__import__("os").environ, "PYTHONPATH": str(REPO)}
    subprocess.run([*git, "add", "nb.ipynb"], check=True)
    refused = subprocess.run([*git, "commit", "-qm", "dirty"], capture_output=True, text=True, env=env)
    assert refused.returncode != 0 and "nb.ipynb" in refused.stderr
    assert authoring.main(["strip-outputs", str(repo)]) == 0
    subprocess.run([*git, "add", "nb.ipynb"], check=True)
    assert subprocess.run([*git, "commit", "-qm", "clean"], capture_output=True, env=env).returncode == 0
