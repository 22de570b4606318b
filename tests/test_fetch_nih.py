"""NIH ChestX-ray14 fetcher against a loopback mirror serving a tiny fabricated archive."""
from __future__ import annotations

import hashlib
import io
import tarfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data_fetch import download
from data_fetch.manifest import read_manifest
from data_fetch.sources import nih

from tests.servers import LoopbackServer, Route

# (image name, finding labels, age, sex, view); patient 3 is in the official test list
IMAGES = [
    ("00000001_000.png", "Cardiomegaly|Effusion", 58, "M", "PA"),
    ("00000001_001.png", "No Finding", 58, "M", "PA"),
    ("00000002_000.png", "No Finding", 81, "F", "AP"),
    ("00000003_000.png", "Hernia", 74, "F", "PA"),
    ("00000004_000.png", "Mass|Nodule", 33, "M", "PA"),
    ("00000005_000.png", "No Finding", 45, "F", "PA"),
]
CORRUPT = "00000006_000.png"


def png_bytes(seed: int, mode: str = "L") -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (48, 40), dtype=np.uint8)
    img = Image.fromarray(arr)
    if mode == "I;16":
        img = Image.fromarray(arr.astype(np.uint16) * 200)
    elif mode == "RGBA":
        img = img.convert("RGBA")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i, (name, *_rest) in enumerate(IMAGES):
            _add(tar, f"images/{name}", png_bytes(i, ["L", "I;16", "RGBA"][i % 3]))
        _add(tar, f"images/{CORRUPT}", b"\x89PNG\r\n\x1a\n this is not a png")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def data_entry_csv() -> bytes:
    rows = [{"Image Index": n, "Finding Labels": lab, "Follow-up #": 0,
             "Patient ID": int(n[:8]), "Patient Age": age, "Patient Gender": sex,
             "View Position": view} for n, lab, age, sex, view in IMAGES]
    rows.append({"Image Index": CORRUPT, "Finding Labels": "No Finding", "Follow-up #": 0,
                 "Patient ID": 6, "Patient Age": 50, "Patient Gender": "M", "View Position": "PA"})
    return pd.DataFrame(rows).to_csv(index=False).encode()


ARCHIVE = make_archive()
ARCHIVE_MD5 = hashlib.md5(ARCHIVE).hexdigest()


def mirror_routes(**archive_kw) -> dict[str, Route]:
    test = "00000003_000.png\n"
    train_val = "\n".join(n for n, *_ in IMAGES if not n.startswith("00000003")) + "\n" + CORRUPT
    return {"/images_001.tar.gz": Route(ARCHIVE, **archive_kw),
            "/Data_Entry_2017_v2020.csv": Route(data_entry_csv(), "text/csv"),
            "/test_list.txt": Route(test.encode(), "text/plain"),
            "/train_val_list.txt": Route(train_val.encode(), "text/plain")}


def fetch(srv, dest, **kw):
    kw.setdefault("md5", {1: ARCHIVE_MD5})
    return nih.fetch_nih(dest, mirror=srv.base, size=32, progress=False, backoff=0, **kw)


def test_complete_fetch_writes_valid_manifest(tmp_path, caplog):
    with LoopbackServer(mirror_routes()) as srv:
        out = fetch(srv, tmp_path / "nih")
    df = read_manifest(out, check_files=True)
    assert len(df) == len(IMAGES)                         # the corrupt one is left out
    assert CORRUPT not in set(df["path"].str.split("/").str[-1])
    assert "left out" in caplog.text and CORRUPT in caplog.text
    assert set(df.loc[df.patient_id == "00000003", "split"]) == {"test"}
    assert set(df.loc[df.patient_id != "00000003", "split"]) <= {"train", "val"}
    row = df.set_index("image_id").loc["00000001_000"]
    assert row["finding_cardiomegaly"] and row["finding_pleural_effusion"] and not row["no_finding"]
    assert row["sex"] == "M" and row["age"] == 58 and row["view"] == "PA"
    assert df["race"].isna().all()
    img = Image.open(df["abspath"].iloc[0])
    assert img.size == (32, 32) and img.mode == "L"
    card = (out.parent / "manifest.json").read_text()
    assert '"md5_verified": true' in card and CORRUPT in card


def test_dropped_stream_resumes_and_archive_not_kept(tmp_path):
    with LoopbackServer(mirror_routes(truncate_first=1, truncate_at=0.4)) as srv:
        out = fetch(srv, tmp_path / "nih")
        ranges = [s.headers.get("Range") for s in srv.seen if s.path == "/images_001.tar.gz"]
    assert ranges[0] is None and ranges[1].startswith("bytes=")
    assert len(read_manifest(out)) == len(IMAGES)
    assert not list(tmp_path.rglob("*.tar.gz")) and not list(tmp_path.rglob("*.part"))


def test_wrong_md5_deletes_images_and_writes_no_manifest(tmp_path):
    with LoopbackServer(mirror_routes()) as srv:
        with pytest.raises(download.ChecksumError, match="MD5 mismatch.*deleted"):
            fetch(srv, tmp_path / "nih", md5={1: "0" * 32})
    assert not (tmp_path / "nih" / "manifest.csv").exists()
    assert not list((tmp_path / "nih" / "images").glob("*.png"))


def test_published_md5_applies_to_mirrors_too(tmp_path):
    with LoopbackServer(mirror_routes()) as srv:
        with pytest.raises(download.ChecksumError, match=nih.ARCHIVE_MD5[1]):
            fetch(srv, tmp_path / "nih", md5={})


def test_html_instead_of_archive(tmp_path):
    with LoopbackServer(mirror_routes(html=True)) as srv:
        with pytest.raises(download.HTMLPageError):
            fetch(srv, tmp_path / "nih")


def test_keep_archive_limit_and_rerun_skips(tmp_path):
    with LoopbackServer(mirror_routes()) as srv:
        out = fetch(srv, tmp_path / "nih", keep_archive=True, limit=3)
        assert len(read_manifest(out)) == 3
        assert (tmp_path / "nih" / "archives" / "images_001.tar.gz").exists()
        out = fetch(srv, tmp_path / "nih", keep_archive=True)
        gets = [s for s in srv.seen if s.path == "/images_001.tar.gz"]
    assert len(gets) == 1                 # the kept archive was reused, not downloaded again
    assert len(read_manifest(out)) == len(IMAGES)


def test_without_lists_falls_back_to_random_patient_split(tmp_path):
    routes = mirror_routes()
    del routes["/test_list.txt"]
    with LoopbackServer(routes) as srv:
        out = fetch(srv, tmp_path / "nih")
    card = (out.parent / "manifest.json").read_text()
    assert "random patient-level" in card
    assert read_manifest(out).groupby("patient_id")["split"].nunique().max() == 1


def test_dry_run_prints_plan_and_downloads_nothing(tmp_path, capsys):
    assert nih.fetch_nih(tmp_path / "nih", archives=[1, 2], dry_run=True) is None
    text = capsys.readouterr().out
    assert "nihcc.box.com" in text and "disk needed" in text
    assert not (tmp_path / "nih").exists()


def test_parse_archives():
    assert nih.parse_archives("1,3-4") == [1, 3, 4]
    with pytest.raises(ValueError):
        nih.archive_url(13)


def test_data_entry_from_torchxrayvision_copy(tmp_path, monkeypatch):
    import gzip
    monkeypatch.setattr(nih, "_bundled_data_entry", lambda: gzip.compress(data_entry_csv()))
    routes = mirror_routes()
    del routes["/Data_Entry_2017_v2020.csv"]
    with LoopbackServer(routes) as srv:
        out = fetch(srv, tmp_path / "nih")
    assert "torchxrayvision package" in (out.parent / "manifest.json").read_text()
    assert len(read_manifest(out)) == len(IMAGES)
