"""COVID-19-AR fetcher: tiny DICOMs (incl. MONOCHROME1) served as IDC objects on 127.0.0.1."""
from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from cxrlab.coursetools.covid_fixture import make_dicom
from data_fetch.__main__ import main
from data_fetch.manifest import read_manifest
from data_fetch.sources import covid19_ar as cov

from tests.servers import LoopbackServer, Route

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
def served():
    files = {}
    for i, patient in enumerate(PATIENTS):
        files[f"series{i}/inst{i}.dcm"] = make_dicom(patient, "MONOCHROME1" if i == 0 else "MONOCHROME2")
    files["series0/lat.dcm"] = make_dicom("COVID-19-AR-1001", view="LL")
    files["series1/broken.dcm"] = b"DICM but not really" * 10
    files["series3/mr.dcm"] = make_dicom("COVID-19-AR-1004", modality="MR")    # listed as CR
    files["series3/nopixels.dcm"] = make_dicom("COVID-19-AR-1004", with_pixels=False)
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
    assert len(df) == 4                          # lateral, broken, MR and header-only left out
    by_patient = df.set_index("patient_id")
    assert by_patient.loc["COVID-19-AR-1001", "race"] == "White"
    assert by_patient.loc["COVID-19-AR-1002", "race"] == "Black"
    assert by_patient.loc["COVID-19-AR-1003", "race"] == "Asian"
    assert pd.isna(by_patient.loc["COVID-19-AR-1004", "race"])
    assert by_patient.loc["COVID-19-AR-1004", "race_original"] == "Other"
    assert by_patient.loc["COVID-19-AR-1002", "sex"] == "F" and by_patient.loc["COVID-19-AR-1002", "age"] == 44
    assert set(df["modality"]) == {"CR"}
    assert "broken" in caplog.text
    assert not list((tmp_path / "cov").rglob("*.dcm"))    # DICOMs not kept by default
    card = json.loads((tmp_path / "cov" / "manifest.json").read_text())
    reasons = {e["image"]: e["reason"] for e in card["excluded"]}
    assert reasons["lat"] == "lateral view LL"
    assert reasons["mr"].startswith("modality MR, not a radiograph")
    assert "no pixel data" in reasons["nopixels"] and "pylibjpeg" not in reasons["nopixels"]
    assert "not a readable DICOM" in reasons["broken"]
    assert card["clinical"].endswith("clinical.xlsx") and len(card["clinical_sha256"]) == 64


def test_monochrome1_is_inverted(served, tmp_path):
    out = cov.fetch_covid19_ar(tmp_path / "cov", listing=served.url("listing.csv"),
                               mirror=served.base, size=0, progress=False, backoff=0,
                               no_clinical=True)
    df = read_manifest(out).set_index("patient_id")
    mono1 = np.asarray(Image.open(df.loc["COVID-19-AR-1001", "abspath"]), dtype=int)
    mono2 = np.asarray(Image.open(df.loc["COVID-19-AR-1002", "abspath"]), dtype=int)
    assert mono2[:, 0].mean() < 10 and mono2[:, -1].mean() > 245   # raw high values bright
    assert mono1[:, 0].mean() > 245 and mono1[:, -1].mean() < 10   # MONOCHROME1 flipped
    assert df["race"].isna().all()                                   # no clinical table given


@pytest.mark.parametrize("photometric, shape, flipped", [
    ("MONOCHROME2", "INVERSE", True), ("MONOCHROME1", "INVERSE", True),   # one inversion, not two
    ("MONOCHROME2", "IDENTITY", False), ("MONOCHROME2", None, False)])
def test_presentation_lut_shape_inverse_is_honoured(photometric, shape, flipped):
    img, _ = cov.dicom_to_image(make_dicom("p", photometric, lut_shape=shape), "x")
    left = np.asarray(img, dtype=int)[:, 0].mean()
    assert bool(left > 245) is flipped and bool(left < 10) is (not flipped)


def test_rerun_skips_converted_and_excluded_images(served, tmp_path):
    kw = dict(listing=served.url("listing.csv"), mirror=served.base, size=16, progress=False,
              backoff=0, no_clinical=True)
    cov.fetch_covid19_ar(tmp_path / "cov", **kw)
    before = len(served.seen)
    cov.fetch_covid19_ar(tmp_path / "cov", **kw)
    fetched = [s.path for s in served.seen[before:]]
    assert fetched == ["/listing.csv", "/idc-open-data/series1/broken.dcm"]  # corrupt: tried again


def test_s5cmd_manifest_lists_series_folders(tmp_path):
    one, two = make_dicom("P1"), make_dicom("P2")
    routes = {"/idc-open-data": Route(s3_listing([("ser/a.dcm", len(one)), ("ser/b.dcm", len(two))]),
                                      "application/xml"),
              "/idc-open-data/ser/a.dcm": Route(one), "/idc-open-data/ser/b.dcm": Route(two),
              "/m.s5cmd": Route(b"cp s3://idc-open-data/ser/* .\n", "text/plain")}
    with LoopbackServer(routes) as srv:
        table = cov.read_listing(srv.url("m.s5cmd"), mirror=srv.base)
        assert list(table["url"]) == [srv.url("idc-open-data/ser/*")]
        files = cov.expand_folders(table, tmp_path / "d", retries=0)
        assert srv.seen[-1].query == "list-type=2&prefix=ser/"
        assert files == [(srv.url("idc-open-data/ser/a.dcm"), len(one)),
                         (srv.url("idc-open-data/ser/b.dcm"), len(two))]
        out = cov.fetch_covid19_ar(tmp_path / "d", listing=srv.url("m.s5cmd"), mirror=srv.base,
                                   size=16, progress=False, backoff=0, no_clinical=True)
    assert sorted(read_manifest(out)["patient_id"]) == ["P1", "P2"]


def test_dry_run(served, tmp_path, capsys):
    assert cov.fetch_covid19_ar(tmp_path / "cov", listing=served.url("listing.csv"),
                                mirror=served.base, dry_run=True) is None
    assert "8 entries" in capsys.readouterr().out      # the CT row is dropped by its Modality


# ----------------------------------------------------------------------------- IDC route
def s3_listing(objects: list[tuple[str, int]]) -> bytes:
    items = "".join(f"<Contents><Key>{k}</Key><Size>{n}</Size></Contents>" for k, n in objects)
    return ("<?xml version='1.0'?><ListBucketResult xmlns='http://s3.amazonaws.com/doc/2006-03-01/'>"
            f"{items}</ListBucketResult>").encode()


def fake_index() -> pd.DataFrame:
    """Rows shaped like :func:`cov.idc_selection` (checked against the real index below)."""
    rows = [("COVID-19-AR-1001", "uuid-a", "DX", "AP", "CHEST", True),
            ("COVID-19-AR-1002", "uuid-b", "CR", None, "CHEST", True),
            ("COVID-19-AR-1002", "uuid-c", "DX", "Lateral L", "CHEST", False)]
    return pd.DataFrame([{"patient_id": p, "series_uid": f"1.2.{i}", "study_uid": f"1.3.{i}",
                          "modality": m, "series_description": d, "body_part": b,
                          "series_aws_url": f"s3://idc-open-data/{u}/*", "series_bytes": 5e6,
                          "instances": 1, "photometric": "MONOCHROME2", "frontal_chest": f}
                         for i, (p, u, m, d, b, f) in enumerate(rows)])


def idc_clinical_parquet() -> bytes:
    pytest.importorskip("pyarrow", reason="reading IDC's parquet clinical table needs pyarrow "
                                          "(installed with the [real] extra)")
    df = pd.DataFrame({"dicom_patient_id": list(PATIENTS), "patient_id": ["1", "2", "3", "4"],
                       "race": [r for r, _, _ in PATIENTS.values()],
                       "sex": [s for _, s, _ in PATIENTS.values()],
                       "age": [str(a) for _, _, a in PATIENTS.values()]})
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


@pytest.fixture()
def idc_mirror(monkeypatch):
    """A loopback IDC: two frontal series (one cut off once mid-transfer) and the clinical table."""
    monkeypatch.setattr(cov, "idc_selection", fake_index)
    a, b = make_dicom("COVID-19-AR-1001"), make_dicom("COVID-19-AR-1002", "MONOCHROME1")
    clinical_key = (f"bigquery_export/idc_{cov.idc_version()}_clinical/"
                    f"{cov.IDC_CLINICAL_TABLE}/000000000000")
    parquet = idc_clinical_parquet()
    objects = [("uuid-a/i1.dcm", len(a)), ("uuid-b/i2.dcm", len(b)), ("uuid-c/lat.dcm", 9)]
    routes = {"/idc-open-data": Route(s3_listing(objects), "application/xml"),
              "/idc-open-data/uuid-a/i1.dcm": Route(a, truncate_first=1),
              "/idc-open-data/uuid-b/i2.dcm": Route(b),
              "/idc-open-metadata": Route(s3_listing([(clinical_key, len(parquet))]), "application/xml"),
              f"/idc-open-metadata/{clinical_key}": Route(parquet)}
    with LoopbackServer(routes) as srv:
        yield srv


def test_index_route_fetches_resumes_and_joins_idc_clinical(idc_mirror, tmp_path):
    out = cov.fetch_covid19_ar(tmp_path / "cov", mirror=idc_mirror.base, size=16,
                               progress=False, backoff=0)
    # the manifest is sorted by image_id (the SOP Instance UID, random in these test DICOMs)
    df = read_manifest(out, check_files=True).set_index("patient_id").sort_index()
    assert list(df.index) == ["COVID-19-AR-1001", "COVID-19-AR-1002"]    # lateral series not fetched
    assert list(df["race"]) == ["White", "Black"] and list(df["age"]) == [70, 44]
    ranged = [s for s in idc_mirror.seen if s.path.endswith("i1.dcm") and "Range" in s.headers]
    assert ranged, "the cut-off transfer was resumed with a ranged GET"
    card = json.loads((tmp_path / "cov" / "manifest.json").read_text())
    assert card["clinical"] == f"IDC {cov.idc_version()} clinical table covid_19_ar_clinical"
    assert "250" not in card["selection"] and "CR/DX 3 series of 2 patients" in card["selection"]


def test_size_mismatch_with_the_listing_is_not_taken(idc_mirror, tmp_path):
    url = idc_mirror.url("idc-open-data/uuid-b/i2.dcm")
    with pytest.raises(Exception, match="listing declares 12"):
        cov._fetch_one(url, 12, tmp_path / "d", 16, False, {"retries": 0, "backoff": 0})
    assert not list((tmp_path / "d").rglob("*.dcm"))          # nothing partial kept


def test_no_clinical_table_reachable_is_one_clear_line(monkeypatch, capsys):
    monkeypatch.setattr(cov, "idc_selection", fake_index)
    with LoopbackServer({}) as srv:                  # answers 404 to everything
        code = main(["covid19_ar", "--mirror", srv.base, "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "no clinical table reachable" in err and "--clinical" in err and "--no-clinical" in err


def test_clinical_checksum_pin_is_verified(served, tmp_path):
    with pytest.raises(Exception, match="SHA256 mismatch"):
        cov.fetch_covid19_ar(tmp_path / "cov", listing=served.url("listing.csv"),
                             clinical=served.url("clinical.xlsx"), clinical_sha256="0" * 64,
                             mirror=served.base, progress=False, backoff=0)


def test_bundled_index_query_runs_offline(capsys):
    """The real IDC v25 index from idc-index-data: one query, no network."""
    pytest.importorskip("idc_index_data", reason="idc-index-data is not installed: "
                                                 "pip install -e '.[real]' runs this test")
    pytest.importorskip("duckdb", reason="duckdb comes with idc-index: pip install -e '.[real]'")
    table = cov.idc_selection()
    assert list(table.columns) == list(fake_index().columns)
    assert set(table["modality"]) == {"CR", "DX"}
    assert table["series_aws_url"].str.match(r"s3://idc-open-data/[0-9a-f-]{36}/\*$").all()
    if cov.idc_version() == "v25":
        assert (len(table), table["patient_id"].nunique()) == (262, 104)
        assert round(table["series_bytes"].sum() / 1e9, 2) == 3.21
        assert int(table["frontal_chest"].sum()) == 250
    assert main(["covid19_ar", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "CR/DX" in out and "selected (frontal chest)" in out and "s3.amazonaws.com" in out


def test_pinned_idc_version_matches_the_extra():
    import tomllib
    from pathlib import Path
    data = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    pin = next(r for r in data["project"]["optional-dependencies"]["real"]
               if r.startswith("idc-index-data=="))
    assert cov.PINNED_IDC_VERSION == "v" + pin.split("==")[1].split(".")[0]
