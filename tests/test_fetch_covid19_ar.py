"""COVID-19-AR fetcher: tiny DICOMs (incl. MONOCHROME1) served as IDC objects on 127.0.0.1."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from data_fetch.manifest import read_manifest
from data_fetch.sources import covid19_ar as cov

from tests.servers import LoopbackServer, Route

GRADIENT = np.tile(np.arange(0, 4000, 100, dtype=np.uint16), (30, 1))  # 30 x 40, dark left


def make_dicom(patient: str, photometric: str = "MONOCHROME2", view: str = "AP",
               window: bool = True) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientSex, ds.PatientAge = patient, "F", "061Y"
    ds.Modality, ds.ViewPosition = "CR", view
    ds.Rows, ds.Columns = GRADIENT.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = 2000, 4000
    ds.PixelData = GRADIENT.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


PATIENTS = {  # patient -> (RACE as in the spreadsheet, SEX, AGE)
    "COVID-19-AR-1001": ("White", "Male", 70),
    "COVID-19-AR-1002": ("Black or African American", "Female", 44),
    "COVID-19-AR-1003": ("Asian", "Female", 52),
    "COVID-19-AR-1004": ("Other", "Male", 38),
}


def clinical_xlsx() -> bytes:
    df = pd.DataFrame([{"PATIENT_ID": p, "RACE": r, "SEX": s, "AGE": a, "ETHNICITY": "Not Hispanic"}
                       for p, (r, s, a) in PATIENTS.items()])
    buf = io.BytesIO()
    df.to_excel(buf, index=False, engine="openpyxl")
    return buf.getvalue()


@pytest.fixture()
def served(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRLAB_DATA", str(tmp_path / "data"))
    files = {}
    for i, patient in enumerate(PATIENTS):
        files[f"series{i}/inst{i}.dcm"] = make_dicom(patient, "MONOCHROME1" if i == 0 else "MONOCHROME2")
    files["series0/lat.dcm"] = make_dicom("COVID-19-AR-1001", view="LL")
    files["series1/broken.dcm"] = b"DICM but not really" * 10
    routes = {f"/idc-open-data/{k}": Route(v, truncate_first=1 if k.startswith("series2") else 0)
              for k, v in files.items()}
    routes["/clinical.xlsx"] = Route(clinical_xlsx())
    listing = "PatientID,Modality,gcs_url\n" + "\n".join(
        f"x,CR,gs://idc-open-data/{k}" for k in files) + "\nx,CT,gs://idc-open-data/ct/ignored.dcm\n"
    routes["/listing.csv"] = Route(listing.encode(), "text/csv")
    with LoopbackServer(routes) as srv:
        yield srv


def test_fetch_joins_race_and_converts_dicom(served, tmp_path, caplog):
    out = cov.fetch_covid19_ar(tmp_path / "cov", listing=served.url("listing.csv"),
                               clinical=served.url("clinical.xlsx"), mirror=served.base,
                               size=20, progress=False, backoff=0)
    df = read_manifest(out, check_files=True)
    assert len(df) == 4                                  # lateral and broken left out
    by_patient = df.set_index("patient_id")
    assert by_patient.loc["COVID-19-AR-1001", "race"] == "White"
    assert by_patient.loc["COVID-19-AR-1002", "race"] == "Black"
    assert by_patient.loc["COVID-19-AR-1003", "race"] == "Asian"
    assert pd.isna(by_patient.loc["COVID-19-AR-1004", "race"])
    assert by_patient.loc["COVID-19-AR-1004", "race_original"] == "Other"
    assert by_patient.loc["COVID-19-AR-1002", "sex"] == "F" and by_patient.loc["COVID-19-AR-1002", "age"] == 44
    assert "broken" in caplog.text
    assert not list((tmp_path / "cov").rglob("*.dcm"))    # DICOMs not kept by default
    card = (tmp_path / "cov" / "manifest.json").read_text()
    assert "lateral view LL" in card


def test_monochrome1_is_inverted(served, tmp_path):
    out = cov.fetch_covid19_ar(tmp_path / "cov", listing=served.url("listing.csv"),
                               mirror=served.base, size=0, progress=False, backoff=0)
    df = read_manifest(out).set_index("patient_id")
    mono1 = np.asarray(Image.open(df.loc["COVID-19-AR-1001", "abspath"]), dtype=int)
    mono2 = np.asarray(Image.open(df.loc["COVID-19-AR-1002", "abspath"]), dtype=int)
    assert mono2[:, 0].mean() < 10 and mono2[:, -1].mean() > 245   # raw high values bright
    assert mono1[:, 0].mean() > 245 and mono1[:, -1].mean() < 10   # MONOCHROME1 flipped
    assert df["race"].isna().all()                                   # no clinical table given


def test_rerun_skips_converted_images(served, tmp_path):
    kw = dict(listing=served.url("listing.csv"), mirror=served.base, size=16, progress=False,
              backoff=0)
    cov.fetch_covid19_ar(tmp_path / "cov", **kw)
    before = len(served.seen)
    cov.fetch_covid19_ar(tmp_path / "cov", **kw)
    fetched = [s.path for s in served.seen[before:]]
    assert fetched == ["/listing.csv", "/idc-open-data/series1/broken.dcm"]


def test_s5cmd_manifest_lists_series_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRLAB_DATA", str(tmp_path / "data"))
    xml = ("<?xml version='1.0'?><ListBucketResult xmlns='http://s3.amazonaws.com/doc/2006-03-01/'>"
           "<Contents><Key>ser/a.dcm</Key></Contents><Contents><Key>ser/b.dcm</Key></Contents>"
           "</ListBucketResult>")
    routes = {"/idc-open-data": Route(xml.encode(), "application/xml"),
              "/m.s5cmd": Route(b"cp s3://idc-open-data/ser/* .\n", "text/plain")}
    with LoopbackServer(routes) as srv:
        table = cov.read_listing(srv.url("m.s5cmd"), mirror=srv.base)
        assert srv.seen[-1].query == "list-type=2&prefix=ser/"
    assert list(table["url"]) == [srv.url("idc-open-data/ser/a.dcm"), srv.url("idc-open-data/ser/b.dcm")]


def test_dry_run(served, tmp_path, capsys):
    assert cov.fetch_covid19_ar(tmp_path / "cov", listing=served.url("listing.csv"),
                                mirror=served.base, dry_run=True) is None
    assert "6 DICOM files" in capsys.readouterr().out
