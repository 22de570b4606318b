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
    assert prebuild.planned_debiasing(tmp_path) == []            # no METHODS: nothing to train


CH06 = ('UNDERRECORD_GROUP = "B"\nUNDERRECORD_RATE = 0.7\nFINDING_VISIBILITY = 2.0\n'
        'METHODS = ["erm", "groupdro"]\nTRAIN_SEEDS = [0, 3]\nEPOCHS = 1\nSHRINK = 2\n'
        'OOD = {"seed": 1, "n_patients": 60}')


def test_chapter_6s_debiased_models_are_planned_from_its_parameters(tmp_path):
    _chapter(tmp_path, "ch06_beyond_recognition", CH06)
    [job] = prebuild.planned_debiasing(tmp_path)
    assert (job.methods, job.seeds, job.epochs, job.factor) == (("erm", "groupdro"), (0, 3), 1, 2)
    assert job.knobs == prebuild.planned_models(tmp_path)[-1].knobs
    assert job.label() == "ch06 debiasing erm,groupdro x seeds 0,3"


def test_the_real_chapters_are_planned():
    labels = [m.label() for m in prebuild.planned_models()]
    assert "ch04 race high_pass-100" in labels and labels[-1].startswith("ch06 no_finding underrecord_group=")
    [job] = prebuild.planned_debiasing()
    assert set(job.methods) == {"erm", "reweight", "groupdro", "adversarial"} and len(job.seeds) >= 2


@pytest.mark.slow
def test_prebuild_trains_once_and_the_chapter_finds_the_models(tmp_path, monkeypatch, capsys):
    from cxrlab.core import store
    from cxrlab.core.session import setup
    from cxrlab.toolbox import sweeps

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
    assert sweeps.degraded_model(session, "high_pass", 100, progress=False).variant == "high_pass-100"
    assert store.get_model(setup("synthetic", "tiny", group_signal=0.0, progress=False), "race",
                           progress=False).target == "race"


@pytest.mark.slow
def test_prebuild_trains_chapter_6s_models_and_the_chapter_loads_them(tmp_path, monkeypatch):
    from cxrlab.session import setup
    from cxrlab.toolbox import debiasing

    monkeypatch.setitem(presets.PRESETS, "tiny", TINY)
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    _chapter(chapters, "ch06_beyond_recognition", CH06)
    steps = prebuild.prebuild("tiny", chapters=chapters, progress=False)
    assert "ch06 debiasing erm,groupdro x seeds 0,3" in steps

    def no_training(*args, **kwargs):
        raise AssertionError("trained although prebuild cached this model")

    monkeypatch.setattr(debiasing, "train_debiased", no_training)
    [job] = prebuild.planned_debiasing(chapters)
    session = setup("synthetic", "tiny", **job.knobs, progress=False)
    trained = debiasing.train_or_load_all(session, ["erm", "groupdro"], [0, 3], epochs=1, factor=2,
                                          progress=False)
    assert sorted(trained) == [("erm", 0), ("erm", 3), ("groupdro", 0), ("groupdro", 3)]
    assert all(run.loaded for _, run in trained.values())
    with pytest.raises(AssertionError, match="trained although"):   # another knob: trains again
        debiasing.train_or_load_all(session, ["erm"], [0], epochs=2, factor=2, progress=False)
