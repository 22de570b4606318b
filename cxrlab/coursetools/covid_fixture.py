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
def fixture_weights_path() -> Path:
    """Where the fixture's race checkpoint lives (apart from the real weights and their pins)."""
    return published.weights_dir() / "fixture" / published.MODELS["race"].filename


def build_fixture_weights(seed: int = 0) -> Path:
    """A race checkpoint with the published layout (DataParallel ``module.`` keys, ResNet-34,
    ``fc = Linear(512, 3) + LogSoftmax``) and seeded random weights."""
    import torchvision

    path = fixture_weights_path()
    if path.exists():
        return path
    torch.manual_seed(seed)
    net = torchvision.models.resnet34(weights=None)
    net.fc = torch.nn.Sequential(torch.nn.Linear(512, 3), torch.nn.LogSoftmax(dim=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, tmp)
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
    model = published.load_published("race", path=build_fixture_weights())
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
