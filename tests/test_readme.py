"""The README's quickstart: exactly three commands, each in its own code block, that exist in the Makefile."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quickstart_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_quickstart_is_three_single_commands():
    blocks = quickstart_blocks()
    assert blocks == ["make setup", "make course", "make test"]


def test_quickstart_targets_exist_in_makefile():
    for command in quickstart_blocks():
        result = subprocess.run([*command.split(), "-n"], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make setup" in ci and "make test" in ci
    assert ci.index("make setup") < ci.index("make test")


def test_readme_links_point_to_files():
    text = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(((?!https?://)[^)#]+)\)", text):
        if target.startswith("chapters/"):
            continue  # generated learner copies; tests/test_authoring.py checks them
        assert (ROOT / target).exists(), f"README links to missing {target}"


def readme_chapter_times() -> dict[str, str]:
    """``{chapter stem: time cell}`` from the README's chapter table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Chapters", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*\[[^\]]+\]\(chapters/(ch\d+_\w+)\.ipynb\)\s*\|[^|]*\|\s*([^|]+?)\s*\|\s*$",
                      section, flags=re.M)
    return dict(rows)


def test_readme_chapter_times_are_the_notebooks_time_lines():
    from cxrlab.coursetools.chapter_times import chapter_times, format_times

    readme = readme_chapter_times()
    for notebook in sorted((ROOT / "solutions").glob("ch*.ipynb")):
        stated = format_times(chapter_times(notebook))
        assert notebook.stem in readme, f"README's chapter table has no row for {notebook.stem}"
        assert readme[notebook.stem] == stated, (
            f"{notebook.stem}: README says {readme[notebook.stem]!r}, the notebook's **Time.** line "
            f"says {stated!r}: change one to match the other")


def _fake_python(tmp_path: Path, cpu_index_reachable: bool) -> tuple[Path, Path]:
    """A stand-in for .venv/bin/python that logs each call; pip's CPU index may 'fail'."""
    log = tmp_path / "calls.log"
    fake = tmp_path / "python"
    fail = "" if cpu_index_reachable else 'case "$*" in *--index-url*) exit 1;; esac\n'
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n{fail}exit 0\n')
    fake.chmod(0o755)
    return fake, log


def _setup_calls(tmp_path: Path, torch: str, reachable: bool) -> tuple[str, list[str]]:
    fake, log = _fake_python(tmp_path, reachable)
    result = subprocess.run(["make", "-s", "setup", f"PY={fake}", f"TORCH={torch}"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout, log.read_text().splitlines()


def test_setup_takes_the_cpu_wheel_when_its_index_answers(tmp_path):
    out, calls = _setup_calls(tmp_path, "cpu", reachable=True)
    torch_calls = [c for c in calls if "torch==" in c]
    assert len(torch_calls) == 1 and "--index-url https://download.pytorch.org/whl/cpu" in torch_calls[0]
    assert any("install -e .[dev,instructor,real]" in c for c in calls)


def test_setup_falls_back_to_the_pinned_wheel(tmp_path):
    out, calls = _setup_calls(tmp_path, "cpu", reachable=False)
    torch_calls = [c for c in calls if "torch==" in c]
    assert len(torch_calls) == 2 and "--index-url" not in torch_calls[1]
    assert "torch==2.14.1 torchvision==0.29.1" in torch_calls[1]
    assert "not reachable" in out


def test_setup_pypi_skips_the_cpu_index(tmp_path):
    _, calls = _setup_calls(tmp_path, "pypi", reachable=True)
    assert [c for c in calls if "torch==" in c] == ["-m pip install torch==2.14.1 torchvision==0.29.1"]


def test_course_runs_learner_copies_unless_solutions_are_asked_for():
    plain = subprocess.run(["make", "-n", "course"], cwd=ROOT, capture_output=True, text=True).stdout
    asked = subprocess.run(["make", "-n", "course", "SOLUTIONS=1"], cwd=ROOT, capture_output=True,
                           text=True).stdout
    assert "--solutions" not in plain and "--solutions" in asked


def test_readme_says_how_to_run_jupyterlab_headless():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Open it in JupyterLab", 1)[1].split("\n## ", 1)[0]
    assert "jupyter lab --no-browser --ip=127.0.0.1" in section
    assert "token=" in section and "--allow-root` only" in section
