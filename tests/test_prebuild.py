"""Prebuild trains what the chapters ask for, read from their parameters cells, and only once."""
from __future__ import annotations

import nbformat
import pytest

from cxrlab import prebuild, presets

TINY = presets.Preset("tiny", 32, 12, 100, "smallcnn", False, 1, 8, 1, 5e-3, 10)


def _chapter(folder, stem, source):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source, metadata={"tags": ["parameters"]})])
    nbformat.write(nb, folder / f"{stem}.ipynb")


def test_plan_follows_the_chapters_parameters(tmp_path):
    _chapter(tmp_path, "ch04_degradations", 'TRAIN_ON_DEGRADED = {"high_pass": [100], "low_pass": [10, 25]}')
    _chapter(tmp_path, "ch05_implications",
             'UNDERRECORD_GROUP = "C"\nUNDERRECORD_RATE = 0.5\nFINDING_VISIBILITY = 1.5')
    labels = [m.label() for m in prebuild.planned_models(tmp_path)]
    assert labels == ["ch02 race", "ch03 no_finding", "ch03 race group_signal=0.0",
                      "ch04 race high_pass-100", "ch04 race low_pass-10", "ch04 race low_pass-25",
                      "ch05 no_finding underrecord_group=C underrecord_rate=0.5 finding_visibility=1.5"]


def test_chapter_6_plans_its_no_finding_model_and_its_second_hospital(tmp_path):
    _chapter(tmp_path, "ch06_beyond_recognition", 'UNDERRECORD_GROUP = "B"\nUNDERRECORD_RATE = 0.7\n'
             'FINDING_VISIBILITY = 2.0\nOOD = {"seed": 1, "n_patients": 300}')
    assert prebuild.planned_models(tmp_path)[-1].label() == \
        "ch06 no_finding underrecord_group=B underrecord_rate=0.7 finding_visibility=2.0"
    assert prebuild.planned_cohorts(tmp_path) == [
        ("ch06", {"finding_visibility": 2.0, "seed": 1, "n_patients": 300})]
    assert prebuild.planned_cohorts(tmp_path / "nowhere") == []


def test_the_real_chapters_are_planned():
    labels = [m.label() for m in prebuild.planned_models()]
    assert "ch04 race high_pass-100" in labels and labels[-1].startswith("ch06 no_finding underrecord_group=")


@pytest.mark.slow
def test_prebuild_trains_once_and_the_chapter_finds_the_models(tmp_path, monkeypatch, capsys):
    from cxrlab import degrade, store
    from cxrlab.session import setup

    monkeypatch.setenv("CXRLAB_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("CXRLAB_PRESET", raising=False)
    monkeypatch.setitem(presets.PRESETS, "tiny", TINY)
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    _chapter(chapters, "ch04_degradations", 'TRAIN_ON_DEGRADED = {"high_pass": [100]}')
    steps = prebuild.prebuild("tiny", chapters=chapters, progress=False)
    assert list(steps) == ["ch02 race", "ch03 no_finding", "ch03 race group_signal=0.0",
                           "ch04 race high_pass-100"]
    assert capsys.readouterr().out.count("training ") == 4

    def no_training(*args, **kwargs):
        raise AssertionError("trained although prebuild stored this model")

    monkeypatch.setattr(store, "_train", no_training)
    session = setup("synthetic", "tiny", progress=False)
    assert degrade.degraded_model(session, "high_pass", 100, progress=False).variant == "high_pass-100"
    assert store.get_model(setup("synthetic", "tiny", group_signal=0.0, progress=False), "race",
                           progress=False).target == "race"
