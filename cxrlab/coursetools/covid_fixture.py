"""Chapter 7's data and model: real COVID-19-AR and the authors' weights, or an offline fixture.

:func:`chapter_track` decides. With a prepared ``covid19_ar`` dataset (``python -m data_fetch
covid19_ar``) and the published race weights (downloaded on first use unless offline), the
chapter runs on real patients. Otherwise, and always when ``$CI`` or ``$CXRLAB_OFFLINE_FIXTURE``
is set (never any network then), it builds a **fixture**: DICOM files in COVID-19-AR's real
format (pydicom; CR, MONOCHROME1 and 2, plus one MR and one lateral film the fetcher must
leave out) with synthetic pixels, and a clinical table with self-reported race, served on
127.0.0.1 and fetched through the real fetcher; and a race checkpoint with the published
architecture and state-dict layout but random weights. Numbers from the fixture are not
findings: the chapter says so wherever it prints one.

>>> make_dicom("P1", modality="MR")[128:132]
b'DICM'
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrlab.core import published
from cxrlab.coursetools.loopback import serve_folder
from data_fetch.paths import data_root

FIXTURE_NAME = "offline-fixture"
#: what a fixture's data card says under ``"fixture"`` (``Session.is_fixture`` reads it)
FIXTURE_CARD_NOTE = ("course fixture: synthetic pixels in the source's real format, fetched "
                     "through the real fetcher from 127.0.0.1; its numbers are not findings")
ENV_VAR = "CXRLAB_OFFLINE_FIXTURE"
#: patient group -> (self-reported race as TCIA writes it, patients, images per patient)
FIXTURE_PATIENTS = (("White", 8, 1), ("Black or African American", 8, 1), ("Asian", 1, 2),
                    ("Other", 1, 1))


@dataclass
class Track:
    """What chapter 7 runs on: a manifest folder, the race model, and whether both are a fixture."""

    data_dir: Path
    model: published.Published
    is_fixture: bool
    why: str


def offline_only() -> bool:
    """True in CI or when ``$CXRLAB_OFFLINE_FIXTURE`` is set: use the fixture, no network."""
    return bool(os.environ.get("CI") or os.environ.get(ENV_VAR))


# ----------------------------------------------------------------------------- DICOM files
def fake_radiograph(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A 12-bit frontal-chest-like picture (body, two lungs, spine): synthetic pixels only."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = ((xx - 0.5) / 0.42) ** 2 + ((yy - 0.55) / 0.5) ** 2 < 1
    lungs = sum((((xx - cx) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1)
                for cx in (0.5 - rng.uniform(0.16, 0.2), 0.5 + rng.uniform(0.16, 0.2)))
    spine = np.abs(xx - 0.5) < 0.03
    image = 300 + 2400 * body - 1500 * lungs + 1000 * spine * body
    image = image + rng.normal(0, 120, image.shape)
    return np.clip(image, 0, 4095).astype(np.uint16)


def make_dicom(patient: str, photometric: str = "MONOCHROME2", view: str = "AP",
               modality: str = "CR", pixels: np.ndarray | None = None, window: bool = True,
               with_pixels: bool = True, lut_shape: str | None = None) -> bytes:
    """A DICOM file as COVID-19-AR's radiographs are written (tags the fetcher reads)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if pixels is None:                            # 30 x 40, dark left, bright right
        pixels = np.tile(np.arange(0, 4000, 100, dtype=np.uint16), (30, 1))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientSex, ds.PatientAge = patient, "F", "061Y"
    ds.Modality, ds.ViewPosition = modality, view
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = 2000, 4000
    if lut_shape:
        ds.PresentationLUTShape = lut_shape
    if with_pixels:
        ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_fixture_files(folder: Path, seed: int = 0,
                        patients: tuple[tuple[str, int, int], ...] = FIXTURE_PATIENTS,
                        size: int = 256) -> None:
    """DICOMs under ``folder/idc-open-data/``, ``listing.csv`` and ``clinical.csv``.

    ``patients``: (self-reported race as TCIA writes it, number of patients, images each).
    """
    rng = np.random.default_rng(seed)
    rows, clinical = [], []
    number = 1000
    for race, n_patients, per_patient in patients:
        for _ in range(n_patients):
            number += 1
            patient = f"COVID-19-AR-{number}"
            sex = "Female" if number % 2 else "Male"
            clinical.append({"PATIENT_ID": patient, "RACE": race, "SEX": sex,
                             "AGE": int(rng.integers(25, 90)), "ETHNICITY": "Not Hispanic"})
            for k in range(per_patient):
                pixels = fake_radiograph(rng, size)
                if number % 4 == 0:               # stored inverted, as MONOCHROME1 files are
                    rows.append((f"{patient}-{k}.dcm", make_dicom(
                        patient, "MONOCHROME1", pixels=(4095 - pixels).astype(np.uint16))))
                else:
                    rows.append((f"{patient}-{k}.dcm", make_dicom(patient, pixels=pixels)))
    rows.append(("mr-slice.dcm", make_dicom("COVID-19-AR-1001", modality="MR")))
    rows.append(("lateral.dcm", make_dicom("COVID-19-AR-1002", view="LL")))
    bucket = folder / "idc-open-data" / "fixture"
    bucket.mkdir(parents=True, exist_ok=True)
    for name, data in rows:
        (bucket / name).write_bytes(data)
    listing = pd.DataFrame({"PatientID": "x", "Modality": "CR",
                            "gcs_url": [f"gs://idc-open-data/fixture/{n}" for n, _ in rows]})
    listing.to_csv(folder / "listing.csv", index=False)
    pd.DataFrame(clinical).to_csv(folder / "clinical.csv", index=False)


def build_fixture_dataset(dest: Path | None = None, seed: int = 0,
                          patients: tuple[tuple[str, int, int], ...] = FIXTURE_PATIENTS,
                          size: int = 256) -> Path:
    """Fetch the fixture through :func:`data_fetch.sources.covid19_ar.fetch_covid19_ar` from a
    server on 127.0.0.1; returns the manifest folder (reused when it is already there)."""
    from data_fetch.sources import covid19_ar

    dest = dest or data_root() / covid19_ar.NAME / FIXTURE_NAME
    if (dest / "manifest.csv").exists():
        return dest
    with TemporaryDirectory() as tmp:
        write_fixture_files(Path(tmp), seed, patients, size=max(size, 64))
        with serve_folder(tmp) as base:
            covid19_ar.fetch_covid19_ar(dest, listing=f"{base}/listing.csv",
                                        clinical=f"{base}/clinical.csv", mirror=base,
                                        size=size, progress=False, retries=0, backoff=0,
                                        workers=1)
    return mark_fixture(dest)


def mark_fixture(dest: Path) -> Path:
    """Add :data:`FIXTURE_CARD_NOTE` to the data card the fetcher wrote (atomically)."""
    import json

    from data_fetch.paths import atomic_write_text

    path = Path(dest) / "manifest.json"
    card = json.loads(path.read_text())
    card["fixture"] = FIXTURE_CARD_NOTE
    atomic_write_text(path, json.dumps(card, indent=2))
    return Path(dest)


# ----------------------------------------------------------------------------- weights
def fixture_weights_path(key: str = "race") -> Path:
    """Where the fixture's ``key`` checkpoint lives (apart from the real weights and their pins)."""
    return published.weights_dir() / "fixture" / published.MODELS[key].filename


class FixtureAgeNet(torch.nn.Module):
    """A small random network standing in for the RIKEN age archive: the same interface
    (``(N, 3, 320, 320)`` normalised images -> ``(N, 1)`` years), seeded random weights."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 7, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1))
        self.head = torch.nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 50.0 + 20.0 * torch.tanh(self.head(self.features(x).flatten(1)))


def _fixture_state(key: str) -> object:
    """Seeded random weights in the published file layout of ``key``."""
    import torchvision

    if key == "age":
        return torch.jit.script(FixtureAgeNet().eval())
    net = torchvision.models.resnet34(weights=None)
    if key == "race":        # DataParallel ``module.`` keys, fc = Linear(512, 3) + LogSoftmax
        net.fc = torch.nn.Sequential(torch.nn.Linear(512, 3), torch.nn.LogSoftmax(dim=1))
        return {f"module.{k}": v for k, v in net.state_dict().items()}
    net.fc = torch.nn.Linear(512, 2)          # sex: a Lightning checkpoint, ``model.`` keys
    return {"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}}


def build_fixture_weights(seed: int = 0, key: str = "race") -> Path:
    """A ``key`` checkpoint (``race``, ``sex`` or ``age``) with the published layout and seeded
    random weights: race a DataParallel ResNet-34 state dict, sex a Lightning checkpoint of a
    ResNet-34 (``state_dict`` with ``model.`` keys), age a TorchScript archive
    (:class:`FixtureAgeNet`, far smaller than the published SE-ResNeXt)."""
    path = fixture_weights_path(key)
    if path.exists():
        return path
    torch.manual_seed(seed)
    state = _fixture_state(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if key == "age":
        state.save(str(tmp))
    else:
        torch.save(state, tmp)
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------- the decision
def _real_dataset() -> Path | None:
    from cxrlab.core.session import find_prepared

    from data_fetch.manifest import read_card

    root = data_root() / "covid19_ar"
    real = [p.parent for p in root.glob("*/manifest.csv")       # fixtures are never real patients
            if p.parent.name != FIXTURE_NAME and not read_card(p.parent).get("fixture")]
    return find_prepared("covid19_ar", max(real, key=lambda p: p.stat().st_mtime).name) if real else None


def _fixture(why: str) -> Track:
    model = published.load_published("race", path=build_fixture_weights(key="race"))
    return Track(build_fixture_dataset(), model, True, why)


def chapter_track() -> Track:
    """Real COVID-19-AR with the authors' weights when both can be had, else the fixture."""
    if offline_only():
        return _fixture("CI / $CXRLAB_OFFLINE_FIXTURE is set: offline fixture, no network used")
    real = _real_dataset()
    if real is None:
        return _fixture("no prepared covid19_ar dataset (python -m data_fetch covid19_ar)")
    try:
        model = published.load_published("race")
    except published.WeightsUnavailable as err:
        return _fixture(str(err))
    return Track(real, model, False, "real COVID-19-AR patients and the published weights")


# ----------------------------------------------------------------------------- NIH: sex and age
#: most NIH test images the published models score (whole patients, a fixed order): the real
#: age model is a large network, slow on a CPU
NIH_MAX_IMAGES = 400


@dataclass
class NihTrack:
    """What chapter 7's NIH section runs on: an NIH session and the published sex and age models.

    ``data_is_fixture``: the NIH course fixture (synthetic pixels), not a prepared real ``nih``
    dataset; ``weights_are_fixture``: test-made checkpoints with the published layouts and
    random weights, not the published weights.
    """

    session: Any
    sex: published.Published
    age: published.Published
    data_is_fixture: bool
    weights_are_fixture: bool
    why: str

    @property
    def is_fixture(self) -> bool:
        """True when either the pixels or the weights are a fixture: the numbers are not findings."""
        return self.data_is_fixture or self.weights_are_fixture

    @property
    def note(self) -> str:
        """One sentence saying what the numbers are."""
        if not self.is_fixture:
            return "real NIH patients, published sex and age weights"
        what = " and ".join(w for w, f in (("random weights", self.weights_are_fixture),
                                           ("synthetic pixels", self.data_is_fixture)) if f)
        return f"FIXTURE: these numbers come from {what}; they test the code, they are not findings"


def _real_nih() -> Path | None:
    from data_fetch.manifest import read_card

    root = data_root() / "nih"
    real = [p.parent for p in root.glob("*/manifest.csv") if not read_card(p.parent).get("fixture")]
    return max(real, key=lambda p: p.stat().st_mtime) if real else None


def _sex_age_models() -> tuple[published.Published, published.Published, bool, str]:
    """The published sex and age models, or test-made ones (offline, or not downloadable)."""
    if not offline_only():
        try:
            return (published.load_published("sex"), published.load_published("age"), False,
                    "published sex and age weights")
        except published.WeightsUnavailable as err:
            why = str(err)
    else:
        why = "CI / $CXRLAB_OFFLINE_FIXTURE is set: test-made sex and age checkpoints, no network used"
    return (published.load_published("sex", path=build_fixture_weights(key="sex")),
            published.load_published("age", path=build_fixture_weights(key="age")), True, why)


def nih_track(preset: str = "demo", seed: int = 0, progress: bool = False) -> NihTrack:
    """The NIH session (a prepared real ``nih`` dataset, else the NIH course fixture, built
    through the real fetcher on 127.0.0.1) and the published sex and age models (downloaded
    when allowed, else test-made checkpoints; always test-made in CI / offline).

    The session is NIH whatever ``$CXRLAB_SOURCE`` says: this section is about NIH.
    """
    from cxrlab.core.presets import get_preset
    from cxrlab.core.session import _start
    from cxrlab.coursetools.track_fixtures import build_nih_fixture

    real = _real_nih()
    folder = real if real is not None else build_nih_fixture()
    data_why = "a prepared real NIH dataset" if real is not None else \
        "no prepared real nih dataset (python -m data_fetch nih): the NIH course fixture"
    session = _start("nih", get_preset(preset), seed, None, folder, None, progress, {})
    sex, age, weights_fixture, weights_why = _sex_age_models()
    return NihTrack(session, sex, age, real is None, weights_fixture, f"{data_why}; {weights_why}")


def nih_test_predictions(track: NihTrack, course_sex: Any,
                         max_images: int = NIH_MAX_IMAGES) -> pd.DataFrame:
    """Recorded sex and age beside the three models' predictions on the same NIH test images.

    ``course_sex``: the course's own sex model (:func:`cxrlab.core.store.get_model` with
    ``target="sex"``); its test images (``test_index``), capped at ``max_images`` whole
    patients, are the rows scored. Columns: ``row, patient_id, sex, male, age, course_p_male,
    published_p_male, published_age`` (``male``: 1 = M, 0 = F, the course's coding; the
    published sex model's outputs are in its own order, Male then Female, and are read by name).
    """
    from cxrlab.core.session import cap_patients

    manifest = track.session.manifest
    test = manifest.iloc[course_sex.test_index].assign(
        row=course_sex.test_index, course_p_male=np.asarray(course_sex.test_proba, float))
    test = cap_patients(test, max_images)
    sex_images = published.load_images(test, track.sex.spec.resolution)
    p_male = track.sex.predict(sex_images)[:, track.sex.targets.index("Male")]
    age_images = published.load_images(test, track.age.spec.resolution)
    ages = track.age.predict(age_images)
    return pd.DataFrame({
        "row": test["row"].to_numpy(), "patient_id": test["patient_id"].to_numpy(),
        "sex": test["sex"].to_numpy(), "male": test["sex"].map({"M": 1, "F": 0}).fillna(-1)
        .astype(int).to_numpy(), "age": test["age"].astype(float).to_numpy(),
        "course_p_male": test["course_p_male"].to_numpy(), "published_p_male": p_male,
        "published_age": ages})
