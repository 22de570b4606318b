"""Model store: the first call trains and saves, the second loads without training."""
from __future__ import annotations

import numpy as np
import pytest

from tests.test_session import write_fake_dataset

from cxrlab.core import presets

TINY = presets.Preset("tiny", 16, 10, 100, "smallcnn", False, 2, 8, 1, 5e-3, 20)


@pytest.fixture
def session(isolated_data_folder, monkeypatch):
    from cxrlab.core.session import setup

    monkeypatch.setitem(presets.PRESETS, "tiny", TINY)
    folder = write_fake_dataset(isolated_data_folder / "synthetic" / "fake", size=16)
    return setup("synthetic", "tiny", device="cpu", data_dir=folder, progress=False)


def test_second_call_loads_without_training(session, capsys, monkeypatch):
    from cxrlab.core import store

    first = store.get_model(session, "race", progress=False)
    out = capsys.readouterr().out
    assert "training race model" in out and "about" in out
    assert first.path.exists() and first.path.with_suffix(".json").exists()
    assert first.test_proba.shape == (len(first.test_index), 3)
    assert np.allclose(first.test_proba.sum(axis=1), 1, atol=1e-5)
    assert set(session.manifest.loc[first.test_index, "split"]) == {"test"}

    def no_training(*args, **kwargs):
        raise AssertionError("the store trained although a stored model exists")

    monkeypatch.setattr(store, "fit", no_training)
    second = store.get_model(session, "race", progress=False)
    assert "loaded from cache" in capsys.readouterr().out
    assert second.key == first.key and second.classes == ["A", "B", "C"]
    np.testing.assert_allclose(second.test_proba, first.test_proba, atol=1e-6)
    np.testing.assert_allclose(second.predict(session.images[first.test_index]),
                               first.test_proba, atol=1e-5)
    assert second.history.best_epoch == first.history.best_epoch


def test_keys_separate_targets_variants_and_filters(session):
    from cxrlab.core.store import model_key

    base = model_key(session, "race")
    assert base == "synthetic-fake-tiny-seed0-race-clean"
    assert model_key(session, "race", "lowpass10") != base
    mask = session.targets("no_finding") == 1
    assert model_key(session, "race", train_filter=mask) != base


def test_keys_separate_training_transforms_whatever_the_variant(session):
    from cxrlab.core.store import model_key
    from cxrlab.toolbox.degrade import Compose, GaussianNoise, HighPass, LowPass

    transforms = [HighPass(50), HighPass(100), LowPass(50),
                  Compose([HighPass(50), GaussianNoise(0.1, seed=0)])]
    keys = [model_key(session, "race", "degraded", train_transform=t) for t in transforms]
    assert len(set(keys)) == len(transforms)
    assert model_key(session, "race", "degraded") not in keys
    assert keys[0] == model_key(session, "race", "degraded", train_transform=HighPass(50.0))
    with pytest.raises(ValueError, match="stable repr"):
        model_key(session, "race", train_transform=lambda x: x)


def test_two_transforms_with_one_variant_name_get_two_models(session, capsys):
    from cxrlab.core.store import get_model
    from cxrlab.toolbox.degrade import HighPass, LowPass

    high = get_model(session, "race", variant="filtered", train_transform=HighPass(50), progress=False)
    low = get_model(session, "race", variant="filtered", train_transform=LowPass(10), progress=False)
    assert capsys.readouterr().out.count("training race model") == 2    # not loaded from high's entry
    assert high.key != low.key and high.path.exists() and low.path.exists()
    again = get_model(session, "race", variant="filtered", train_transform=LowPass(10), progress=False)
    assert "loaded from cache" in capsys.readouterr().out and again.key == low.key
    np.testing.assert_allclose(again.test_proba, low.test_proba, atol=1e-6)


def test_patient_subset_filter_keeps_validation_and_whole_training_patients(session):
    from cxrlab.core.store import model_key, patient_subset_filter

    m = session.manifest
    half = patient_subset_filter(session, 0.5)
    assert patient_subset_filter(session, 1.0) is None
    assert half[(m["split"] == "val").to_numpy()].all()                 # every validation image
    assert not half[(m["split"] == "test").to_numpy()].any()
    train = m[m["split"] == "train"]
    kept = set(train.loc[half[train.index], "patient_id"])
    assert 0 < len(kept) < train["patient_id"].nunique()
    assert round(train["patient_id"].nunique() / 2) == len(kept)
    assert half[train.index[train["patient_id"].isin(kept)]].all()      # whole patients
    np.testing.assert_array_equal(half, patient_subset_filter(session, 0.5))
    assert model_key(session, "race", train_filter=half) != model_key(session, "race")
    with pytest.raises(ValueError, match="fraction"):
        patient_subset_filter(session, 0)


def test_other_targets_and_filter(session):
    from cxrlab.core.store import get_model

    sex = get_model(session, "sex", progress=False)
    assert sex.task == "binary" and sex.test_proba.ndim == 1
    age = get_model(session, "age", progress=False)
    assert age.task == "regression" and 20 < float(np.mean(age.test_proba)) < 80
    mask = session.targets("no_finding") == 1
    filtered = get_model(session, "race", train_filter=mask, progress=False)
    assert "filter" in filtered.key
    with pytest.raises(ValueError, match="train_filter"):
        get_model(session, "race", train_filter=mask[:3], progress=False)


class _RunsCode:
    """Unpickling this object calls ``open(path, "w")``: what a crafted model file would do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_crafted_model_file_does_not_run_and_is_rebuilt(session, capsys, tmp_path):
    import torch

    from cxrlab.core import store
    from cxrlab.core.train import load_checkpoint

    first = store.get_model(session, "race", progress=False)
    capsys.readouterr()
    canary = tmp_path / "pwned"
    torch.save({"state_dict": {}, "n_images": len(session.manifest), "payload": _RunsCode(canary)}, first.path)
    with pytest.raises(Exception, match="(?i)weights only"):
        load_checkpoint(first.path)
    assert not canary.exists()
    again = store.get_model(session, "race", progress=False)
    out = capsys.readouterr().out
    assert not canary.exists(), "loading the crafted file ran its code"
    assert "could not be used" in out and "could run code" in out and "training race model" in out
    np.testing.assert_allclose(again.test_proba, first.test_proba, atol=1e-5)
    assert "payload" not in load_checkpoint(again.path)       # the rebuilt entry is a plain one


def test_degraded_models_train_on_half_the_training_patients(session, capsys):
    import re

    from cxrlab.core.store import get_model
    from cxrlab.toolbox import sweeps

    def images_trained() -> int:
        return int(re.search(r"training race model \(smallcnn, (\d+) images", capsys.readouterr().out)[1])

    get_model(session, "race", progress=False)
    everything = images_trained()
    degraded = sweeps.degraded_model(session, "high_pass", 100, progress=False)
    assert 0 < images_trained() < everything and "-filter" in degraded.key
    everyone = sweeps.degraded_model(session, "high_pass", 100, progress=False, train_fraction=1.0)
    assert "-filter" not in everyone.key and "high_pass-100-transform" in everyone.key
