"""cxrlab.core.published: torchxrayvision's published models, loaded from a checkpoint the tests
make with the same architecture and state-dict layout (nothing is downloaded)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

xrv = pytest.importorskip("torchxrayvision", reason="torchxrayvision is not installed: "
                                                   "pip install -e '.[real]' runs these tests")

from cxrlab.core import published as pub  # noqa: E402
from data_fetch import download as dl  # noqa: E402

from tests.servers import LoopbackServer, Route  # noqa: E402


def race_state_dict(favour: int | None = None) -> dict[str, torch.Tensor]:
    """A ResNet-34 race checkpoint laid out as the published one (DataParallel ``module.``)."""
    import torchvision

    net = torchvision.models.resnet34(weights=None)
    net.fc = nn.Sequential(nn.Linear(512, 3), nn.LogSoftmax(dim=1))
    if favour is not None:                       # every image goes to class `favour`
        with torch.no_grad():
            net.fc[0].weight.zero_()
            net.fc[0].bias.copy_(torch.tensor([0.0, 0.0, 0.0]).index_fill_(0, torch.tensor(favour), 4.0))
    return nn.DataParallel(net).state_dict()


def place(key: str, obj) -> None:
    """Put ``obj`` where the published ``key`` model's weights belong in this test's data folder."""
    pub.weights_path(key).parent.mkdir(parents=True, exist_ok=True)
    if key == "age":
        obj.save(str(pub.weights_path(key)))
    else:
        torch.save(obj, pub.weights_path(key))


def test_state_dict_layout_matches_the_library():
    """The library's own RaceModel (built without its download) has the keys we write."""
    library = pub._library_class(pub.MODELS["race"])
    assert library.targets == list(pub.MODELS["race"].targets) == ["Asian", "Black", "White"]
    keys = set(race_state_dict())
    assert all(k.startswith("module.") for k in keys) and "module.fc.0.weight" in keys


@pytest.mark.slow
def test_race_model_loads_and_keeps_the_output_order(capsys):
    place("race", race_state_dict(favour=1))
    model = pub.load_published("race", download=False)
    assert "recorded" in capsys.readouterr().out           # placed by hand: pin recorded
    assert isinstance(model.net, pub._library_class(model.spec))   # the library's forward runs
    images = np.random.default_rng(0).integers(0, 256, (3, 40, 52), dtype=np.uint8)
    proba = model.predict(images)
    assert proba.shape == (3, 3) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert model.targets[int(proba[0].argmax())] == "Black"
    assert len(pub.recorded_pins()[pub.MODELS["race"].filename]) == 64


def test_preprocessing_is_the_library_recipe():
    img = np.zeros((1, 30, 50), dtype=np.uint8)
    img[0, :, 10:40] = 255                                  # the centre square is white
    x = pub.preprocess(img, 320)
    assert tuple(x.shape) == (1, 1, 320, 320) and x.dtype == torch.float32
    assert float(x.min()) == pytest.approx(1024, abs=1e-3)   # centre-cropped: only white left
    expected = xrv.datasets.XRayResizer(320)(xrv.datasets.XRayCenterCrop()(
        xrv.datasets.normalize(np.full((30, 50), 100, np.float32), 255)[None]))
    got = pub.preprocess(np.full((1, 30, 50), 100, np.uint8), 320).numpy()[0]
    assert np.allclose(got, expected) and float(got.max()) == pytest.approx(2 * 100 / 255 * 1024 - 1024, abs=1e-2)
    floats = pub.preprocess(np.full((1, 30, 50), 100 / 255, np.float32), 320).numpy()[0]
    assert np.allclose(floats, expected, atol=1e-2)          # [0, 1] floats read the same


@pytest.mark.slow
def test_changed_weights_are_refused():
    place("race", race_state_dict())
    pub.verified_weights("race", download=False)             # records the pin
    torch.save(race_state_dict(favour=0), pub.weights_path("race"))
    with pytest.raises(dl.ChecksumError, match="expected"):
        pub.load_published("race", download=False)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickles_with_code_are_not_loaded():
    place("race", {"state": Evil()})
    with pytest.raises(RuntimeError, match="weights_only=True refused"):
        pub.load_published("race", download=False)


def test_offline_gives_one_sentence():
    with pytest.raises(pub.WeightsUnavailable) as err:
        pub.load_published("race", download=False)
    text = str(err.value)
    assert text.count(". ") == 0 and text.endswith(".") and "\n" not in text
    assert pub.MODELS["race"].url in text and str(pub.weights_path("race")) in text
    with LoopbackServer({}) as srv:                          # a download that fails (404)
        with pytest.raises(pub.WeightsUnavailable, match="could not be downloaded"):
            pub.fetch_weights("race", url=srv.url("missing.pt"), progress=False)
    assert not pub.weights_path("race").exists()


@pytest.mark.slow
def test_first_download_records_the_pin_then_checks_it(tmp_path, capsys):
    blob = tmp_path / "w.pt"
    torch.save(race_state_dict(favour=2), blob)
    with LoopbackServer({"/w.pt": Route(blob.read_bytes(), truncate_first=1)}) as srv:
        pub.fetch_weights("race", url=srv.url("w.pt"), progress=False)      # resumed after a cut
    assert "first download" in capsys.readouterr().out
    assert pub.expected_sha256("race") == dl.file_digest(blob, "sha256")
    model = pub.load_published("race", download=False)
    assert model.targets[int(model.predict(np.full((1, 64, 64), 128, np.uint8))[0].argmax())] == "White"


@pytest.mark.slow
def test_sex_model_reads_a_lightning_checkpoint():
    import torchvision

    net = torchvision.models.resnet34(weights=None)
    net.fc = nn.Linear(512, 2)
    with torch.no_grad():
        net.fc.weight.zero_()
        net.fc.bias.copy_(torch.tensor([0.0, 3.0]))
    ckpt = {"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}, "epoch": 13}
    place("sex", ckpt)
    model = pub.load_published("sex", download=False)
    proba = model.predict(np.full((2, 64, 64), 90, np.uint8))
    assert model.targets == ["Male", "Female"] and proba.shape == (2, 2)
    assert (proba.argmax(1) == 1).all()


def test_age_model_reads_torchscript():
    class TinyAge(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(1, 2, 3)).reshape(-1, 1) * 0 + 42.0

    place("age", torch.jit.script(TinyAge()))
    ages = pub.load_published("age", download=False).predict(np.full((2, 50, 50), 90, np.uint8))
    assert ages.shape == (2,) and np.allclose(ages, 42.0)


def test_race_report_names_a_class_with_too_few_patients():
    rng = np.random.default_rng(0)
    races = ["Black"] * 40 + ["White"] * 40 + ["Asian"] * 2
    patients = [f"p{i // 2}" for i in range(80)] + ["a1", "a1"]
    y = pub.race_targets(races)
    proba = np.full((82, 3), 0.1)
    proba[np.arange(82), y] = 0.8 + rng.normal(0, 0.05, 82)
    report = pub.race_auc_report(proba, races, patients, n_boot=20).set_index("class")
    assert report.loc["Asian", "patients"] == 1 and pd.isna(report.loc["Asian", "auc"])
    assert report.loc["Asian", "result"].startswith("no AUC: only 1 Asian patient")
    assert float(report.loc["Black", "auc"]) == pytest.approx(1.0)
    assert "95% CI" in report.loc["White", "result"] and "nan" not in " ".join(report["result"])


def test_cli_where_and_unknown_model(capsys):
    assert pub.main(["where", "race", "age"]) == 0
    assert str(pub.weights_path("age")) in capsys.readouterr().out
    with pytest.raises(SystemExit):
        pub.main(["fetch", "colour"])


def test_exercise_self_check_rejects_counting_images(capsys):
    races = ["Black", "Black", "Black", "White", "Asian"]
    patients = ["b1", "b1", "b2", "w1", "a1"]
    with pytest.raises(AssertionError, match="number of images"):
        pub.check_patients_per_class({"Asian": 1, "Black": 3, "White": 1}, races, patients)
    with pytest.raises(AssertionError, match="keys"):
        pub.check_patients_per_class({"Black": 2}, races, patients)
    pub.check_patients_per_class({"Asian": 1, "Black": 2, "White": 1}, races, patients)
    assert "Correct" in capsys.readouterr().out
