"""CheXpert: a tiny zip in the real layout, served behind a 'signed' URL or read locally."""
from __future__ import annotations

import io
import logging
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data_fetch import download
from data_fetch.__main__ import main
from data_fetch.manifest import read_manifest
from data_fetch.sources import chexpert as cx

from tests.servers import LoopbackServer, Route

ROOT = "CheXpert-v1.0-small"
SECRET = "sig=TOPSECRET-SIGNATURE"
# patient -> (PRIMARY_RACE, ETHNICITY, expected class); values from the documented value list
DEMO = {
    "patient00001": ("White, non-Hispanic", "Non-Hispanic/Non-Latino", "White"),
    "patient00002": ("Black or African American", "Non-Hispanic/Non-Latino", "Black"),
    "patient00003": ("Asian", "Not Hispanic/Latino", "Asian"),
    "patient00004": ("White, Hispanic", "Hispanic/Latino", None),
    "patient00005": ("Black, Hispanic", "Non-Hispanic/Non-Latino", None),
    "patient00006": ("Other", "Non-Hispanic/Non-Latino", None),
    "patient00007": ("Native Hawaiian or Other Pacific Islander", "Unknown", None),
    "patient00008": ("Race and Ethnicity Unknown", "Unknown", None),
    "patient00009": ("Asian, non-Hispanic", "Patient Refused", "Asian"),
}


def jpeg(seed: int) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (40, 32), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def make_zip(with_demo: bool = False) -> bytes:
    rows, buf = [], io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, patient in enumerate(DEMO):
            for view, kind in (("view1_frontal", "Frontal"), ("view2_lateral", "Lateral")):
                path = f"{ROOT}/train/{patient}/study1/{view}.jpg"
                data = b"\xff\xd8 corrupt" if (i == 8 and kind == "Frontal") else jpeg(i)
                z.writestr(path, data)
                rows.append({"Path": path, "Sex": "Female" if i % 2 else "Male", "Age": 40 + i,
                             "Frontal/Lateral": kind, "AP/PA": "AP" if kind == "Frontal" else None,
                             "No Finding": 1.0 if i == 0 else np.nan,
                             "Cardiomegaly": [np.nan, 1.0, -1.0, 0.0][i % 4]})
        z.writestr(f"{ROOT}/train.csv", pd.DataFrame(rows).to_csv(index=False))
        z.writestr(f"{ROOT}/valid.csv", pd.DataFrame(rows[:1]).to_csv(index=False).splitlines()[0])
        if with_demo:
            z.writestr(f"{ROOT}/{cx.DEMO_FILE}", demo_xlsx())
    return buf.getvalue()


def demo_xlsx() -> bytes:
    df = pd.DataFrame([{"PATIENT": p, "GENDER": "Female", "AGE_AT_CXR": 60, "PRIMARY_RACE": r,
                        "ETHNICITY": e} for p, (r, e, _) in DEMO.items()])
    buf = io.BytesIO()
    df.to_excel(buf, index=False, engine="openpyxl")
    return buf.getvalue()


@pytest.fixture(autouse=True)
def no_chexpert_location(monkeypatch):
    monkeypatch.delenv("CHEXPERT_URL", raising=False)
    monkeypatch.delenv("CHEXPERT_DIR", raising=False)


def check_races(df: pd.DataFrame) -> None:
    got = df.set_index("patient_id")
    for patient, (primary, ethnicity, expected) in DEMO.items():
        if patient not in got.index:
            continue
        assert got.loc[patient, "race_original"] == primary
        assert got.loc[patient, "ethnicity"] == ethnicity
        value = got.loc[patient, "race"]
        assert (pd.isna(value) if expected is None else value == expected), patient


def test_signed_url_fetch_joins_demo_and_never_shows_the_signature(tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    with LoopbackServer({"/chexpert.zip": Route(make_zip(), truncate_first=1),
                         "/demo.xlsx": Route(demo_xlsx())}) as srv:
        code = main(["chexpert", "--url", srv.url(f"chexpert.zip?sv=2020&{SECRET}"),
                     "--demo", srv.url("demo.xlsx"), "--dest", str(tmp_path / "cx"),
                     "--size", "16", "--no-progress", "--allow-http-loopback"])
        assert srv.seen[0].query.endswith(SECRET)          # the signature did reach the server
    assert code == 0
    df = read_manifest(tmp_path / "cx", check_files=True)
    assert len(df) == 8                                    # frontal only, corrupt one left out
    check_races(df)
    assert df.set_index("patient_id").loc["patient00002", "finding_cardiomegaly"]
    assert pd.isna(df.set_index("patient_id").loc["patient00003", "finding_cardiomegaly"])
    assert not (tmp_path / "cx" / "_download" / "chexpert.zip").exists()
    files = "".join(p.read_text(errors="ignore") for p in (tmp_path / "cx").rglob("*")
                    if p.suffix in (".csv", ".json"))
    out = capsys.readouterr()
    assert "TOPSECRET" not in out.out + out.err + caplog.text + files


def test_local_zip_with_demo_inside_and_limit(tmp_path):
    local = tmp_path / "CheXpert-v1.0-small.zip"
    local.write_bytes(make_zip(with_demo=True))
    out = cx.fetch_chexpert(tmp_path / "cx", local=local, size=16, limit=4, progress=False)
    df = read_manifest(out)
    assert len(df) == 4 and df["race"].notna().any()
    check_races(df)
    assert local.exists()                                  # a user's own copy is never deleted


def test_local_folder_from_env(tmp_path, monkeypatch):
    folder = tmp_path / "copy"
    with zipfile.ZipFile(io.BytesIO(make_zip(with_demo=True))) as z:
        z.extractall(folder)
    monkeypatch.setenv("CHEXPERT_DIR", str(folder))
    df = read_manifest(cx.fetch_chexpert(size=16, progress=False))
    assert (df["source"] == "chexpert").all() and len(df) == 8


def test_expired_url_gives_agreement_message(tmp_path):
    with LoopbackServer({"/chexpert.zip": Route(b"", status=403)}) as srv:
        with pytest.raises(Exception) as err:
            cx.fetch_chexpert(tmp_path / "cx", url=srv.url(f"chexpert.zip?{SECRET}"), progress=False,
                              allow_http_loopback=True)
    assert "research use agreement" in str(err.value) and "TOPSECRET" not in str(err.value)


def test_race_mapping_table():
    for primary, ethnicity, expected in DEMO.values():
        got = cx.chexpert_race(primary, ethnicity)
        assert (got is pd.NA) if expected is None else got == expected, primary


def test_truncated_zip_never_gets_the_final_name(tmp_path):
    whole = make_zip()
    cut = whole[:len(whole) * 2 // 3]              # the server itself holds a cut file
    with LoopbackServer({"/chexpert.zip": Route(cut)}) as srv:
        with pytest.raises(download.DownloadError, match="not a complete zip"):
            cx.fetch_chexpert(tmp_path / "cx", url=srv.url(f"chexpert.zip?{SECRET}"),
                              size=16, progress=False, allow_http_loopback=True)
    download_dir = tmp_path / "cx" / "_download"
    assert not (download_dir / "chexpert.zip").exists()
    assert not (download_dir / "chexpert.zip.part").exists()


def test_truncated_zip_left_by_an_older_run_is_downloaded_again(tmp_path):
    whole = make_zip()
    stale = tmp_path / "cx" / "_download" / "chexpert.zip"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(whole[:len(whole) // 2])     # final name, half the bytes
    with LoopbackServer({"/chexpert.zip": Route(whole)}) as srv:
        out = cx.fetch_chexpert(tmp_path / "cx", url=srv.url(f"chexpert.zip?{SECRET}"),
                                size=16, progress=False, allow_http_loopback=True)
        assert [s.path for s in srv.seen] == ["/chexpert.zip"]
    assert len(read_manifest(out, check_files=True)) == 8


def test_zip_member_over_the_cap_is_left_out(tmp_path, monkeypatch, caplog):
    from data_fetch.sources import images
    local = tmp_path / "CheXpert-v1.0-small.zip"
    local.write_bytes(make_zip(with_demo=True))
    monkeypatch.setattr(images, "MAX_MEMBER_BYTES", 200)      # every JPEG is larger
    monkeypatch.setattr(cx, "MAX_MEMBER_BYTES", 200)
    with pytest.raises(RuntimeError, match="no usable images"):
        cx.fetch_chexpert(tmp_path / "cx", local=local, size=16, progress=False, limit=2)
    assert "200-byte cap" in caplog.text             # left out unread, reported


def test_damaged_member_crc_is_reported_per_image(tmp_path):
    data = bytearray(make_zip(with_demo=True))
    first = data.find(b"view1_frontal.jpg") + len("view1_frontal.jpg") + 40
    data[first] ^= 0xFF                            # one byte inside the first stored JPEG
    local = tmp_path / "CheXpert-v1.0-small.zip"
    local.write_bytes(bytes(data))
    out = cx.fetch_chexpert(tmp_path / "cx", local=local, size=16, progress=False)
    card = (out.parent / "manifest.json").read_text()
    assert "damaged in the zip" in card or "cannot decode" in card
