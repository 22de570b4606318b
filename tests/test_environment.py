"""environment.yml (Binder/conda) and pyproject.toml (pip) must name the same dependencies."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# pip name -> conda-forge name where they differ
CONDA_NAME = {"torch": "pytorch", "matplotlib": "matplotlib-base"}
# Binder's learner image gets the course's dependencies and these extras only; the test and
# grading tools (extras `dev`, `instructor`) stay out of it.
BINDER_EXTRAS = {"real"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ ;\[]", requirement.strip(), maxsplit=1)[0].lower()


def pyproject_requirements() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = list(data["project"]["dependencies"])
    for extra, extra_reqs in data["project"]["optional-dependencies"].items():
        if extra in BINDER_EXTRAS:
            reqs += extra_reqs
    return {_name(r): r for r in reqs}


def conda_requirements() -> dict[str, str]:
    specs: dict[str, str] = {}
    in_deps = False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        if line.startswith("dependencies:"):
            in_deps = True
            continue
        match = re.match(r"\s+-\s+([^#\s]+)", line)
        if in_deps and match and match.group(1) != "pip:":
            spec = match.group(1)
            if line.startswith("      "):            # the `- pip:` sub-list uses pip's `==`
                spec = spec.replace("==", "=")
            specs[_name(spec.split("=")[0] if "=*" in spec else spec)] = spec
    return specs


def test_same_dependencies_in_both_files():
    pip_names = {CONDA_NAME.get(n, n) for n in pyproject_requirements()}
    conda_names = set(conda_requirements()) - {"python", "pip"}
    assert pip_names - conda_names == set(), "in pyproject.toml but missing from environment.yml"
    assert conda_names - pip_names == set(), "in environment.yml but missing from pyproject.toml"


def test_version_ranges_agree():
    conda = conda_requirements()
    for name, req in pyproject_requirements().items():
        if name in ("torch", "torchvision"):
            continue  # checked below: the same release, conda-forge's CPU build
        pip_range = req[len(name):].replace("==", "=")
        conda_range = conda[CONDA_NAME.get(name, name)][len(CONDA_NAME.get(name, name)):]
        assert pip_range == conda_range, f"{name}: pyproject {pip_range!r} vs environment.yml {conda_range!r}"


def test_binder_pins_python_and_cpu_torch():
    conda = conda_requirements()
    assert conda["python"] == "python=3.11"
    pip = pyproject_requirements()
    torch_release = pip["torch"].split("==")[1]
    vision_release = pip["torchvision"].split("==")[1]
    assert conda["pytorch"] == f"pytorch={torch_release}=cpu*", "the same torch release, CPU build"
    assert conda["torchvision"] == f"torchvision={vision_release}"
    post = (ROOT / "postBuild").read_text()
    assert "--no-deps" in post, "postBuild must not let pip replace conda's CPU torch"


def test_learner_image_has_no_test_or_grading_tools():
    conda = conda_requirements()
    for tool in ("pytest", "nbval", "pytest-timeout", "pytest-xdist", "nbgrader", "playwright"):
        assert tool not in conda, f"{tool} is for CI and instructors, not the Binder image"


def test_checker_notices_drift(tmp_path, monkeypatch):
    """The test above can fail: a pyproject with an extra dependency is caught."""
    fake = tmp_path / "pyproject.toml"
    text = (ROOT / "pyproject.toml").read_text().replace('"psutil', '"seaborn>=0.13",\n    "psutil', 1)
    fake.write_text(text)
    data = tomllib.loads(fake.read_text())
    names = {CONDA_NAME.get(_name(r), _name(r)) for r in data["project"]["dependencies"]}
    assert "seaborn" in names - set(conda_requirements())
