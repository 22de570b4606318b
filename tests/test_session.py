"""Session: setup on a tiny fake prepared dataset, preset override, real-source lookup and cap."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


from tests.fakes import write_fake_dataset


def test_setup_on_prepared_folder(fake_dataset, capsys):
    from cxrlab.core.session import setup

    S = setup("synthetic", "demo", seed=1, device="cpu", data_dir=fake_dataset, progress=False)
    line = capsys.readouterr().out
    assert "synthetic" in line and "demo" in line and "48 images of 24 patients" in line
    assert "cpu" in line
    assert S.images.shape == (48, 64, 64) and S.images.dtype == np.uint8
    assert isinstance(S.images, np.memmap)
    assert S.classes == ["A", "B", "C"]
    race = S.targets("race")
    assert race.tolist()[:6] == [0, 0, 1, 1, 2, 2]
    assert set(S.targets("sex")) == {0, 1}
    assert S.targets("age")[0] == 30.0
    assert S.targets("findings").shape == (48, 1)
    assert len(S.split("train")) + len(S.split("val")) + len(S.split("test")) == 48
    assert S.results_key == "synthetic-fake-demo-seed1"
    assert S.card["name"] == "fake" and S.seed == 1 and S.data_dir == fake_dataset
    # brighter groups give brighter cached images
    means = [S.images[race == g].mean() for g in range(3)]
    assert means[0] < means[1] < means[2]


def test_env_preset_wins(fake_dataset, monkeypatch):
    from cxrlab.core.session import setup

    monkeypatch.setenv("CXRLAB_PRESET", "workshop")
    S = setup("synthetic", "demo", data_dir=fake_dataset, progress=False)
    assert S.preset.name == "workshop" and S.images.shape[1:] == (128, 128)


def test_synthetic_calls_prepare(fake_dataset, monkeypatch):
    import cxrlab.core.session as session

    calls = {}

    def fake_prepare(preset, progress, **overrides):
        calls.update(preset=preset, **overrides)
        return fake_dataset

    monkeypatch.setattr(session, "_prepare_synthetic",
                        lambda p, o, progress: fake_prepare(p.name, progress, **o))
    S = session.setup("synthetic", "demo", group_signal=0.0, progress=False)
    assert calls == {"preset": "demo", "group_signal": 0.0}
    assert len(S.manifest) == 48


def test_real_source_missing_shows_command(fake_dataset):
    from cxrlab.core.session import setup

    with pytest.raises(FileNotFoundError, match="python -m data_fetch nih"):
        setup("nih", "demo", progress=False)


def test_real_source_found_and_capped(isolated_data_folder, monkeypatch):
    from cxrlab.core import presets
    from cxrlab.core.session import cap_patients, setup

    write_fake_dataset(isolated_data_folder / "nih" / "subset", n_patients=12, source="nih")
    small = presets.Preset("tiny", 16, 10, 9, "smallcnn", False, 1, 8, 1, 1e-3, 10)
    monkeypatch.setitem(presets.PRESETS, "tiny", small)
    S = setup("nih", "tiny", progress=False)
    assert len(S.manifest) <= 9 and len(S.manifest) % 2 == 0       # whole patients only
    assert S.images.shape == (len(S.manifest), 16, 16)
    again = cap_patients(S.manifest.sample(frac=1, random_state=3), 9)
    assert set(again["patient_id"]) == set(S.manifest["patient_id"])   # deterministic
    with pytest.raises(FileNotFoundError, match="found: subset"):
        setup("nih", "tiny", dataset="other", progress=False)


def test_split_checks_catch_leakage(fake_dataset, capsys):
    from cxrlab.toolbox import checks
    from data_fetch.manifest import read_manifest

    manifest = read_manifest(fake_dataset)
    checks.check_patient_split(manifest["split"], manifest)
    assert "no patient in two splits" in capsys.readouterr().out
    as_dict = dict(zip(manifest["patient_id"], manifest["split"]))
    checks.check_patient_split(as_dict, manifest, fractions=(0.5, 0.17, 0.33))
    image_level = np.where(np.arange(len(manifest)) % 2 == 0, "train", "test")
    with pytest.raises(checks.CheckFailed, match="more than one split"):
        checks.check_patient_split(image_level, manifest)
    with pytest.raises(AssertionError, match="expected about 80%"):
        checks.check_patient_split(manifest["split"], manifest, fractions=(0.8, 0.1, 0.1))
    checks.check_image_level_split(image_level, manifest)
    with pytest.raises(checks.CheckFailed, match="still a patient-level split"):
        checks.check_image_level_split(manifest["split"], manifest)
    train, test = manifest[manifest.split == "train"], manifest[manifest.split == "test"]
    checks.check_no_leakage(train, test, claimed_overlap=0)
    leaky_test = pd.concat([test, train.iloc[:2]])
    with pytest.raises(checks.CheckFailed, match="there are 1"):
        checks.check_no_leakage(train, leaky_test, claimed_overlap=0)
