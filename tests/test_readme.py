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
