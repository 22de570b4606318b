"""Chapter 7's NIH section: the published sex and age models, or test-made checkpoints with
their layouts (offline, in CI), scored on the same NIH test images as the course's sex model.
Nothing is downloaded: the online path is exercised with a loader that reports no network."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

pytest.importorskip("torchxrayvision", reason="torchxrayvision is not installed: "
                                              "pip install -e '.[real]' runs these tests")

from cxrlab.core import published  # noqa: E402
from cxrlab.coursetools import covid_fixture as cf  # noqa: E402


@pytest.fixture
def offline(monkeypatch, isolated_data_folder):
    monkeypatch.setenv("CI", "1")
    return isolated_data_folder


@pytest.mark.parametrize("key", ["sex", "age"])
def test_fixture_checkpoints_have_the_published_layout(offline, key):
    path = cf.build_fixture_weights(key=key)
    assert path == cf.fixture_weights_path(key) and path.name == published.MODELS[key].filename
    assert path.parent.name == "fixture" and not published.weights_path(key).exists()
    if key == "sex":                                  # a Lightning checkpoint, tensors only
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        keys = set(ckpt["state_dict"])
        assert all(k.startswith("model.") for k in keys) and "model.fc.weight" in keys
        assert tuple(ckpt["state_dict"]["model.fc.weight"].shape) == (2, 512)
    else:                                             # a TorchScript archive, as the published one
        net = torch.jit.load(str(path), map_location="cpu")
        assert tuple(net(torch.zeros(2, 3, 320, 320)).shape) == (2, 1)
    assert cf.build_fixture_weights(key=key) == path  # reused, not rewritten


def test_offline_gives_fixture_models_with_the_library_outputs(offline):
    sex, age, is_fixture, why = cf._sex_age_models()
    assert is_fixture and "no network" in why
    assert isinstance(sex.net, published._library_class(published.MODELS["sex"]))
    images = np.random.default_rng(0).integers(0, 256, (3, 48, 40), dtype=np.uint8)
    proba = sex.predict(images)
    assert sex.targets == ["Male", "Female"] and proba.shape == (3, 2)
    assert np.allclose(proba.sum(1), 1, atol=1e-5)
    years = age.predict(images)
    assert years.shape == (3,) and ((years > 30) & (years < 70)).all()
    assert not published.weights_path("sex").exists() and not published.weights_path("age").exists()


def test_without_network_the_message_is_kept_and_fixtures_are_used(monkeypatch, isolated_data_folder):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv(cf.ENV_VAR, raising=False)
    real_load = published.load_published

    def no_network(key, *args, path=None, **kwargs):
        if path is None:                              # the published weights: not reachable
            raise published.WeightsUnavailable(published.offline_message(key))
        return real_load(key, *args, path=path, **kwargs)

    monkeypatch.setattr(published, "load_published", no_network)
    _sex, _age, is_fixture, why = cf._sex_age_models()
    assert is_fixture and why == published.offline_message("sex")


def test_the_note_says_what_the_numbers_are():
    def track(data, weights):
        return cf.NihTrack(None, None, None, data, weights, "")

    assert not track(False, False).is_fixture and "real NIH" in track(False, False).note
    both = track(True, True).note
    assert both.startswith("FIXTURE") and "random weights and synthetic pixels" in both
    assert "synthetic pixels" not in track(False, True).note and "not findings" in track(False, True).note


def _female_sex_model(folder) -> published.Published:
    """A sex checkpoint of the published layout that calls every image Female (index 1)."""
    import torchvision

    net = torchvision.models.resnet34(weights=None)
    net.fc = torch.nn.Linear(512, 2)
    with torch.no_grad():
        net.fc.weight.zero_()
        net.fc.bias.copy_(torch.tensor([0.0, 3.0]))
    path = folder / "female.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}, path)
    return published.load_published("sex", path=path)


def test_test_predictions_keep_rows_patients_and_output_order(offline, tmp_path):
    rows = []
    for i in range(12):
        path = tmp_path / f"{i:03d}.png"
        Image.fromarray(np.full((40, 40), 20 * i, np.uint8)).save(path)
        rows.append({"abspath": str(path), "patient_id": f"p{i // 2}", "sex": "MF"[i % 2],
                     "age": 30.0 + i})
    manifest = pd.DataFrame(rows)
    age = published.load_published("age", path=cf.build_fixture_weights(key="age"))
    track = cf.NihTrack(SimpleNamespace(manifest=manifest), _female_sex_model(tmp_path), age,
                        True, True, "")
    test_index = np.array([1, 3, 4, 5, 8, 9])
    course = SimpleNamespace(test_index=test_index, test_proba=np.linspace(0.1, 0.6, 6))
    scores = cf.nih_test_predictions(track, course)
    assert list(scores.columns) == ["row", "patient_id", "sex", "male", "age", "course_p_male",
                                    "published_p_male", "published_age"]
    assert sorted(scores["row"]) == sorted(test_index)
    by_row = scores.set_index("row")
    assert list(by_row.loc[[4, 5], "patient_id"]) == ["p2", "p2"]
    assert by_row.loc[3, "male"] == 0 and by_row.loc[4, "male"] == 1     # F = 0, M = 1
    assert by_row.loc[8, "age"] == 38.0
    assert by_row.loc[9, "course_p_male"] == pytest.approx(0.6)
    assert (scores["published_p_male"] < 0.1).all()         # read by name: "Male" is column 0
    assert scores["published_age"].between(30, 70).all()
    capped = cf.nih_test_predictions(track, course, max_images=4)
    per_patient = scores.groupby("patient_id").size()
    assert 0 < len(capped) <= 4                                  # whole patients only
    assert (capped.groupby("patient_id").size() == per_patient[capped["patient_id"].unique()]).all()


@pytest.mark.slow
def test_nih_track_runs_on_the_course_fixture_offline(offline, monkeypatch):
    from cxrlab.coursetools import track_fixtures as tf

    real_build = tf.build_nih_fixture
    monkeypatch.setattr(tf, "build_nih_fixture", lambda: real_build(n_images=60))
    monkeypatch.setenv("CXRLAB_SOURCE", "covid19_ar")       # the section is NIH whatever runs
    track = cf.nih_track("demo", 0)
    assert track.session.source == "nih" and track.session.is_fixture
    assert track.data_is_fixture and track.weights_are_fixture and track.is_fixture
    assert "course fixture" in track.why and cf._real_nih() is None   # fixtures are never real
    assert {"sex", "age"} <= set(track.session.manifest.columns)
