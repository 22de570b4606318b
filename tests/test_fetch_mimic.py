"""MIMIC-CXR-JPG + MIMIC-IV: fake csv.gz tables and JPEGs behind Basic auth on 127.0.0.1."""
from __future__ import annotations

import gzip
import json
import io
import logging

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data_fetch import download
from data_fetch.__main__ import main
from data_fetch.manifest import read_manifest
from data_fetch.sources import mimic

from tests.servers import LoopbackServer, Route

USER, PASSWORD = "ada", "correct-horse-battery"
# subject -> race per admission (MIMIC-IV 2.x value list) and the expected class
ADMISSIONS = {
    10000032: (["WHITE", "WHITE"], "White"),
    10000033: (["BLACK/AFRICAN AMERICAN", "UNKNOWN"], "Black"),
    10000034: (["ASIAN - CHINESE"], "Asian"),
    10000035: (["WHITE", "BLACK/CAPE VERDEAN"], "dropped"),       # conflict
    10000036: (["HISPANIC/LATINO - PUERTO RICAN"], None),
    11000037: (["WHITE - OTHER EUROPEAN", "WHITE"], "White"),     # same group
}
SPLITS = {10000032: "train", 10000033: "train", 10000034: "validate", 10000035: "train",
          10000036: "test", 11000037: "test"}


def gz_csv(df: pd.DataFrame) -> bytes:
    return gzip.compress(df.to_csv(index=False).encode())


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (30, 24), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def build_files(race_column: str = "race") -> dict[str, bytes]:
    meta, split, labels, adm, pats, files = [], [], [], [], [], {}
    for i, (subject, (races, _)) in enumerate(ADMISSIONS.items()):
        study = 50000000 + i
        for view in ("PA", "LATERAL"):
            dicom = f"d{i}{view.lower()}"
            meta.append({"dicom_id": dicom, "subject_id": subject, "study_id": study,
                         "ViewPosition": view, "StudyDate": 21800615 + i})
            split.append({"dicom_id": dicom, "study_id": study, "subject_id": subject,
                          "split": SPLITS[subject]})
            files[mimic.image_rel(subject, study, dicom)] = b"garbage" if i == 5 and view == "PA" else jpeg(i)
        labels.append({"subject_id": subject, "study_id": study, "No Finding": 1.0 if i == 0 else np.nan,
                       "Edema": -1.0 if i == 1 else np.nan})
        for k, race in enumerate(races):
            adm.append({"subject_id": subject, "hadm_id": i * 10 + k, "admittime": f"2180-0{k + 1}-01",
                        race_column: race, "insurance": "Medicare" if k else "Other"})
        pats.append({"subject_id": subject, "gender": "F" if i % 2 else "M",
                     "anchor_age": 60, "anchor_year": 2178})
    return {
        "cxr/" + mimic.TABLES["metadata"]: gz_csv(pd.DataFrame(meta)),
        "cxr/" + mimic.TABLES["split"]: gz_csv(pd.DataFrame(split)),
        "cxr/" + mimic.TABLES["chexpert"]: gz_csv(pd.DataFrame(labels)),
        "iv/hosp/admissions.csv.gz": gz_csv(pd.DataFrame(adm)),
        "iv/hosp/patients.csv.gz": gz_csv(pd.DataFrame(pats)),
        **{f"cxr/{k}": v for k, v in files.items()},
    }


@pytest.fixture()
def server(tmp_path, monkeypatch):
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setattr(mimic, "CREDENTIAL_HOST", "127.0.0.1")  # $PHYSIONET_* belong to the test host
    routes = {f"/{k}": Route(v, auth=(USER, PASSWORD)) for k, v in build_files().items()}
    with LoopbackServer(routes) as srv:
        yield srv


def run_cli(srv, tmp_path, *extra) -> int:
    return main(["mimic", "--mirror", srv.url("cxr"), "--mimic-iv", srv.url("iv"),
                 "--dest", str(tmp_path / "mimic"), "--size", "16", "--no-progress",
                 "--allow-http-loopback", *extra])


def test_fetch_with_credentials_race_age_and_split(server, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("PHYSIONET_USERNAME", USER)
    monkeypatch.setenv("PHYSIONET_PASSWORD", PASSWORD)
    caplog.set_level(logging.DEBUG)
    assert run_cli(server, tmp_path) == 0
    df = read_manifest(tmp_path / "mimic", check_files=True)
    got = df.set_index("patient_id")
    assert "10000035" not in got.index                   # conflicting race: dropped
    assert "11000037" not in got.index                   # corrupt JPEG: left out
    assert (df["view"] == "PA").all()
    for subject, (_, expected) in ADMISSIONS.items():
        if str(subject) in got.index:
            value = got.loc[str(subject), "race"]
            assert (pd.isna(value) if expected is None else value == expected), subject
    assert got.loc["10000034", "split"] == "val" and got.loc["10000036", "split"] == "test"
    assert got.loc["10000033", "age"] == 60 + (2180 - 2178)
    assert got.loc["10000032", "no_finding"] and pd.isna(got.loc["10000033", "finding_edema"])
    assert got.loc["10000033", "insurance"] == "Medicare"
    assert got.loc["10000036", "race_original"] == "HISPANIC/LATINO - PUERTO RICAN"
    out = capsys.readouterr()
    text = out.out + out.err + caplog.text + (tmp_path / "mimic" / "manifest.csv").read_text() \
        + (tmp_path / "mimic" / "manifest.json").read_text()
    assert PASSWORD not in text


def test_wrong_password_gives_account_message_not_the_password(server, tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.setenv("PHYSIONET_USERNAME", USER)
    monkeypatch.setenv("PHYSIONET_PASSWORD", "wrong-secret-pw")
    assert run_cli(server, tmp_path) == 2
    err = capsys.readouterr().err
    assert "401" in err and "credentialed" in err and "data use agreement" in err
    assert "wrong-secret-pw" not in err + caplog.text


def test_no_credentials_says_how_to_provide_them(server, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PHYSIONET_USERNAME", raising=False)
    monkeypatch.delenv("PHYSIONET_PASSWORD", raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert run_cli(server, tmp_path) == 2
    assert "PHYSIONET_USERNAME" in capsys.readouterr().err


def test_netrc_credentials_count_and_list(server, tmp_path, monkeypatch):
    monkeypatch.delenv("PHYSIONET_USERNAME", raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    out = mimic.fetch_mimic(tmp_path / "m1", mirror=server.url("cxr"), mimic_iv=server.url("iv"),
                            count=2, size=16, progress=False, allow_http_loopback=True)
    card = json.loads((out.parent / "manifest.json").read_text())
    assert len(read_manifest(out)) + len(card.get("excluded", [])) == 2
    listing = tmp_path / "IMAGE_FILENAMES"
    listing.write_text(mimic.image_rel(10000034, 50000002, "d2pa") + "\n")
    out = mimic.fetch_mimic(tmp_path / "m2", mirror=server.url("cxr"), mimic_iv=server.url("iv"),
                            image_list=listing, size=16, progress=False, allow_http_loopback=True)
    assert list(read_manifest(out)["image_id"]) == ["d2pa"]


def test_old_ethnicity_column_and_strict_rule():
    adm = pd.DataFrame({"subject_id": [1, 1, 2, 2, 3],
                        "ethnicity": ["WHITE", "WHITE", "ASIAN", "UNABLE TO OBTAIN", "BLACK/AFRICAN AMERICAN"]})
    table, dropped = mimic.patient_race(adm)
    assert dict(zip(table.subject_id, table.race)) == {1: "White", 2: "Asian", 3: "Black"}
    two = pd.DataFrame({"subject_id": [4, 4], "race": ["WHITE", "WHITE - RUSSIAN"]})
    assert mimic.patient_race(two)[1] == [] and mimic.patient_race(two, strict=True)[1] == [4]


def test_dry_run_needs_no_credentials(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PHYSIONET_USERNAME", raising=False)
    assert mimic.fetch_mimic(tmp_path / "m", count=100, dry_run=True) is None
    assert "physionet.org" in capsys.readouterr().out


def test_access_error_type(server, tmp_path):
    remote = mimic.Remote(server.url("cxr"), auth=None)
    with pytest.raises(download.AccessError):
        remote.table(mimic.TABLES["metadata"])
