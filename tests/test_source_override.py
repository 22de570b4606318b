"""$CXRLAB_SOURCE overrides a notebook's SOURCE as $CXRLAB_PRESET overrides PRESET; the course
runner injects --source and sets the variable to the same value, and checks the restricted
sources against what will really run."""
from __future__ import annotations

import nbformat
import pytest

from cxrlab.coursetools import runner
from cxrlab.core.session import resolve_source, setup

from tests.test_session import write_fake_dataset


@pytest.fixture
def two_tracks(isolated_data_folder):
    write_fake_dataset(isolated_data_folder / "nih" / "fixture", n_patients=6, source="nih")
    return isolated_data_folder


def test_env_source_wins_over_the_argument(two_tracks, monkeypatch):
    assert resolve_source("synthetic") == "synthetic" and resolve_source(None) == "synthetic"
    monkeypatch.setenv("CXRLAB_SOURCE", "nih")
    assert resolve_source("synthetic") == "nih"
    S = setup("synthetic", "demo", progress=False)
    assert S.source == "nih" and S.dataset == "fixture"


def test_synthetic_knobs_keep_the_synthetic_source(monkeypatch):
    monkeypatch.setenv("CXRLAB_SOURCE", "nih")
    assert resolve_source("synthetic", synthetic_knobs=True) == "synthetic"


def test_unknown_env_source_names_the_variable(monkeypatch):
    monkeypatch.setenv("CXRLAB_SOURCE", "nhi")
    with pytest.raises(ValueError, match=r"'nhi' \(from \$CXRLAB_SOURCE\)"):
        resolve_source("synthetic")


def test_runner_refuses_a_restricted_source_named_only_in_the_environment(tmp_path, monkeypatch):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        'SOURCE = "synthetic"\nPRESET = "demo"', metadata={"tags": ["parameters"]})])
    path = tmp_path / "chx.ipynb"
    nbformat.write(nb, path)
    monkeypatch.setenv("CXRLAB_SOURCE", "mimic")
    run = runner.run_chapter(path, tmp_path / "out", preset="demo")
    assert run.status == "refused" and "mimic" in run.error
    assert not (tmp_path / "out" / "notebooks").exists()
