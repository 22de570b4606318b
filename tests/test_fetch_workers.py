"""``--workers N``: NIH, CheXpert, MIMIC and COVID-19-AR give the same dataset with 1 and 2 processes.

Each fetcher reads its stream (tar, zip, HTTP) in order in the main process and hands the
bytes to a pool of decoder processes; these tests run the same fetch with ``--workers 1`` (no
pool) and ``--workers 2`` against the loopback servers of the per-source tests, with a corrupt
image among good ones, and compare the manifests, the data cards' exclusions and every PNG
byte for byte. Also: a bad ``--workers`` stops before any request, a worker's failure aborts
the run as it did in one process, and Ctrl-C leaves no half-written PNG and no worker behind.
"""
from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from data_fetch.__main__ import main
from data_fetch.sources import chexpert, covid19_ar, images, nih

from tests import test_fetch_chexpert as cx_case
from tests import test_fetch_covid19_ar as covid_case
from tests import test_fetch_mimic as mimic_case
from tests import test_fetch_nih as nih_case
from tests.servers import LoopbackServer, Route

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_chexpert_location(monkeypatch):
    monkeypatch.delenv("CHEXPERT_URL", raising=False)
    monkeypatch.delenv("CHEXPERT_DIR", raising=False)


def dataset_files(folder: Path) -> dict[str, bytes]:
    """Every stored PNG of a dataset folder by its path, as bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def excluded(folder: Path) -> list[dict]:
    return json.loads((folder / "manifest.json").read_text())["excluded"]


def assert_same_dataset(one: Path, two: Path) -> None:
    """The same manifest, the same exclusions in the same order, identical PNG bytes."""
    assert (one / "manifest.csv").read_bytes() == (two / "manifest.csv").read_bytes()
    assert excluded(one) == excluded(two)
    assert dataset_files(one) == dataset_files(two)
    assert not [p for p in two.rglob("*") if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------- NIH
def nih_archive() -> bytes:
    """Good PNGs with a corrupt one, a duplicate name and a non-image among them."""
    buf = io.BytesIO()
    names = [n for n, *_ in nih_case.IMAGES]
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i, name in enumerate(names[:2]):
            nih_case._add(tar, f"images/{name}", nih_case.png_bytes(i, ["L", "I;16"][i % 2]))
            if i == 0:      # the same name again while the first is still being decoded
                nih_case._add(tar, f"other/{name}", nih_case.png_bytes(98))
        nih_case._add(tar, f"images/{nih_case.CORRUPT}", b"\x89PNG\r\n\x1a\n not a png")
        nih_case._add(tar, "images/README.txt", b"not an image")
        for i, name in enumerate(names[2:], start=2):
            nih_case._add(tar, f"images/{name}", nih_case.png_bytes(i, ["L", "RGBA"][i % 2]))
        nih_case._add(tar, f"more/{names[1]}", nih_case.png_bytes(99))   # a second name
    return buf.getvalue()


def nih_routes() -> dict[str, Route]:
    routes = nih_case.mirror_routes()
    routes["/images_001.tar.gz"] = Route(nih_archive())
    return routes


@pytest.mark.parametrize("limit", [None, 3])
def test_nih_same_dataset_with_one_and_two_workers(tmp_path, monkeypatch, limit):
    monkeypatch.setattr(nih, "ARCHIVE_MD5", {})
    with LoopbackServer(nih_routes()) as srv:
        for workers in (1, 2):
            nih.fetch_nih(tmp_path / f"w{workers}", mirror=srv.base, size=32, limit=limit,
                          progress=False, backoff=0, workers=workers)
    one, two = tmp_path / "w1", tmp_path / "w2"
    assert_same_dataset(one, two)
    reasons = {x["image"]: x["reason"] for x in excluded(two)}
    assert "cannot decode image" in reasons[nih_case.CORRUPT]
    names = pd.read_csv(two / "manifest.csv")["image_id"].tolist()
    expected = [Path(n).stem for n, *_ in nih_case.IMAGES]
    assert names == (expected[:3] if limit else expected)
    assert "a second file named" in reasons[nih_case.IMAGES[0][0]]
    if limit is None:
        assert "a second file named" in reasons[nih_case.IMAGES[1][0]]


def test_nih_kept_archive_rerun_with_two_workers_skips_what_is_stored(tmp_path, monkeypatch):
    monkeypatch.setattr(nih, "ARCHIVE_MD5", {})
    with LoopbackServer(nih_routes()) as srv:
        nih.fetch_nih(tmp_path / "w1", mirror=srv.base, size=32, progress=False, backoff=0,
                      keep_archive=True, workers=1)
        (tmp_path / "w1" / "images" / nih_case.IMAGES[2][0]).unlink()   # deleted: made again
        nih.fetch_nih(tmp_path / "w1", mirror=srv.base, size=32, progress=False, backoff=0,
                      keep_archive=True, workers=2)
        nih.fetch_nih(tmp_path / "w2", mirror=srv.base, size=32, progress=False, backoff=0,
                      keep_archive=True, workers=1)
    assert_same_dataset(tmp_path / "w1", tmp_path / "w2")


def test_nih_damaged_archive_deletes_the_images_the_workers_made(tmp_path, monkeypatch):
    """A CRC mismatch found at the end: every image made from the archive is deleted,
    including those still being decoded when the stream ended."""
    monkeypatch.setattr(nih, "ARCHIVE_MD5", {})
    data = bytearray(nih_archive())
    data[-8] ^= 0xFF                                   # the gzip trailer's CRC-32
    routes = nih_case.mirror_routes()
    routes["/images_001.tar.gz"] = Route(bytes(data))
    with LoopbackServer(routes) as srv:
        code = main(["nih", "--mirror", srv.base, "--dest", str(tmp_path / "nih"),
                     "--size", "32", "--no-progress", "--workers", "2"])
    assert code == 2
    assert not list((tmp_path / "nih").rglob("*.png"))
    assert not (tmp_path / "nih" / "manifest.csv").exists()


def test_full_disk_in_a_worker_stops_the_run_as_in_one_process(tmp_path, capsys, monkeypatch):
    def full(path, data, fsync=True):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(images, "atomic_write_bytes", full)   # inherited by the workers
    with LoopbackServer(nih_routes()) as srv:
        code = main(["nih", "--mirror", srv.base, "--dest", str(tmp_path / "nih"),
                     "--no-progress", "--workers", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "disk is full" in err and "Traceback" not in err
    assert not (tmp_path / "nih" / "manifest.csv").exists()


# ----------------------------------------------------------------------------- CheXpert
def test_chexpert_same_dataset_with_one_and_two_workers(tmp_path):
    local = tmp_path / "CheXpert-v1.0-small.zip"
    local.write_bytes(cx_case.make_zip(with_demo=True))
    for workers in (1, 2):
        code = main(["chexpert", "--local", str(local), "--dest", str(tmp_path / f"w{workers}"),
                     "--size", "16", "--no-progress", "--workers", str(workers)])
        assert code == 0
    assert_same_dataset(tmp_path / "w1", tmp_path / "w2")
    reasons = {x["image"]: x["reason"] for x in excluded(tmp_path / "w2")}
    assert "cannot decode image" in reasons["train/patient00009/study1/view1_frontal"]
    assert len(pd.read_csv(tmp_path / "w2" / "manifest.csv")) == 8


def test_chexpert_corrupt_and_missing_among_good_ones(tmp_path):
    local = tmp_path / "copy.zip"
    chexpert_zip(local, 12, corrupt=(2, 7), missing=(4,))
    for workers in (1, 2):
        chexpert.fetch_chexpert(tmp_path / f"w{workers}", local=local, size=16, progress=False,
                                workers=workers)
    assert_same_dataset(tmp_path / "w1", tmp_path / "w2")
    reasons = [(x["image"].split("/")[1], x["reason"]) for x in excluded(tmp_path / "w2")]
    assert [name for name, _ in reasons] == ["patient00003", "patient00005", "patient00008"]
    assert "missing from the copy" in reasons[1][1] and "cannot decode" in reasons[2][1]
    assert len(pd.read_csv(tmp_path / "w2" / "manifest.csv")) == 9


# ----------------------------------------------------------------------------- MIMIC
def test_mimic_same_dataset_with_one_and_two_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("PHYSIONET_USERNAME", mimic_case.USER)
    monkeypatch.setenv("PHYSIONET_PASSWORD", mimic_case.PASSWORD)
    monkeypatch.setattr(mimic_case.mimic, "CREDENTIAL_HOST", "127.0.0.1")
    files = mimic_case.build_files()
    missing = next(k for k in files if k.endswith("d0pa.jpg"))
    routes = {f"/{k}": Route(v, auth=(mimic_case.USER, mimic_case.PASSWORD))
              for k, v in files.items() if k != missing}      # one image is not there (404)
    with LoopbackServer(routes) as srv:
        for workers in (1, 2):
            dest = tmp_path / f"w{workers}"
            assert main(["mimic", "--mirror", srv.url("cxr"), "--mimic-iv", srv.url("iv"),
                         "--dest", str(dest), "--size", "16", "--no-progress",
                         "--allow-http-loopback", "--workers", str(workers)]) == 0
    assert_same_dataset(tmp_path / "w1", tmp_path / "w2")
    card = json.loads((tmp_path / "w2" / "manifest.json").read_text())
    assert "cannot decode image" in json.dumps(card["excluded"])       # the corrupt JPEG
    assert "d0pa" in json.dumps(card)                                   # the missing one


# ----------------------------------------------------------------------------- COVID-19-AR
served_covid = covid_case.served      # the loopback IDC of the per-source tests, as a fixture here


def test_covid19_ar_same_dataset_with_one_and_two_workers(served_covid, tmp_path, monkeypatch):
    """Good DICOMs among a lateral, a broken, an MR and a header-only file: the same
    manifest, exclusions and PNG bytes, and with 2 workers the DICOMs are decoded elsewhere."""
    decoded_in = tmp_path / "decoded_in.txt"
    decode = covid19_ar.dicom_to_image

    def recording(data, name):               # the forked workers inherit this patch
        with decoded_in.open("a") as log:
            log.write(f"{os.getpid()}\n")
        return decode(data, name)

    monkeypatch.setattr(covid19_ar, "dicom_to_image", recording)
    pids = {}
    for workers in (1, 2):
        covid19_ar.fetch_covid19_ar(tmp_path / f"w{workers}", listing=served_covid.url("listing.csv"),
                                    clinical=served_covid.url("clinical.xlsx"),
                                    mirror=served_covid.base, size=20, progress=False, backoff=0,
                                    workers=workers)
        pids[workers] = set(decoded_in.read_text().split())
        decoded_in.unlink()
    assert_same_dataset(tmp_path / "w1", tmp_path / "w2")
    assert pids[1] == {str(os.getpid())}
    assert pids[2] and str(os.getpid()) not in pids[2]
    reasons = {x["image"]: x["reason"] for x in excluded(tmp_path / "w2")}
    assert list(reasons) == ["lat", "broken", "mr", "nopixels"]     # in the listing's order
    assert "not a readable DICOM" in reasons["broken"]
    assert len(pd.read_csv(tmp_path / "w2" / "manifest.csv")) == 4
    assert not list((tmp_path / "w2").rglob("*.dcm"))


def test_covid19_ar_rerun_with_two_workers_skips_what_is_stored(served_covid, tmp_path):
    kw = dict(listing=served_covid.url("listing.csv"), mirror=served_covid.base, size=16,
              progress=False, backoff=0, no_clinical=True)
    covid19_ar.fetch_covid19_ar(tmp_path / "cov", workers=2, **kw)
    before = len(served_covid.seen)
    covid19_ar.fetch_covid19_ar(tmp_path / "cov", workers=2, **kw)
    fetched = [s.path for s in served_covid.seen[before:]]
    assert fetched == ["/listing.csv", "/idc-open-data/series1/broken.dcm"]  # corrupt: tried again


def test_covid19_ar_full_disk_in_a_worker_stops_the_run(served_covid, tmp_path, capsys,
                                                         monkeypatch):
    def full(path, data, fsync=True):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(images, "atomic_write_bytes", full)   # inherited by the workers
    code = main(["covid19_ar", "--listing", served_covid.url("listing.csv"), "--mirror",
                 served_covid.base, "--no-clinical", "--dest", str(tmp_path / "cov"),
                 "--no-progress", "--workers", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "disk is full" in err and "Traceback" not in err
    assert not (tmp_path / "cov" / "manifest.csv").exists()


# ----------------------------------------------------------------------------- the option
@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
@pytest.mark.parametrize("source", ["nih", "chexpert", "mimic", "covid19_ar"])
def test_bad_workers_stop_before_any_request(source, value, tmp_path, capsys):
    with LoopbackServer({"/x": Route(b"")}) as srv:
        where = {"nih": ["--mirror", srv.base],
                 "chexpert": ["--url", srv.url("chexpert.zip"), "--allow-http-loopback"],
                 "mimic": ["--mirror", srv.url("cxr"), "--mimic-iv", srv.url("iv"),
                           "--allow-http-loopback"],
                 "covid19_ar": ["--listing", srv.url("x"), "--mirror", srv.base]}[source]
        with pytest.raises(SystemExit) as stop:
            main([source, *where, "--dest", str(tmp_path / "d"), f"--workers={value}"])
        assert srv.seen == []
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--workers" in err and "Traceback" not in err


def test_python_api_checks_workers_before_any_request(tmp_path):
    with LoopbackServer({"/x": Route(b"")}) as srv:
        with pytest.raises(ValueError, match="--workers must be"):
            nih.fetch_nih(tmp_path / "n", mirror=srv.base, workers=0)
        with pytest.raises(ValueError, match="--workers must be"):
            chexpert.fetch_chexpert(tmp_path / "c", url=srv.url("c.zip"), workers=-1,
                                    allow_http_loopback=True)
        with pytest.raises(ValueError, match="--workers must be"):
            mimic_case.mimic.fetch_mimic(tmp_path / "m", mirror=srv.url("cxr"), workers=True)
        with pytest.raises(ValueError, match="--workers must be"):
            covid19_ar.fetch_covid19_ar(tmp_path / "v", listing=srv.url("x"), workers=0)
        assert srv.seen == []


@pytest.mark.parametrize("source", ["nih", "chexpert", "mimic", "covid19_ar"])
def test_help_documents_workers(source, capsys):
    with pytest.raises(SystemExit):
        main([source, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--workers N" in text and "cores" in text


# ----------------------------------------------------------------------------- Ctrl-C
def chexpert_zip(path: Path, n_images: int, corrupt: tuple[int, ...] = (),
                 missing: tuple[int, ...] = ()) -> None:
    """A CheXpert-layout zip of ``n_images`` frontal JPEGs (one patient each); the images
    numbered in ``corrupt`` are broken, those in ``missing`` listed but not in the zip."""
    rows = []
    with zipfile.ZipFile(path, "w") as z:
        for i in range(n_images):
            member = f"{cx_case.ROOT}/train/patient{i + 1:05d}/study1/view1_frontal.jpg"
            if i not in missing:
                z.writestr(member, b"\xff\xd8 broken" if i in corrupt else cx_case.jpeg(i))
            rows.append({"Path": member, "Sex": "Female", "Age": 50, "Frontal/Lateral": "Frontal",
                         "AP/PA": "AP"})
        z.writestr(f"{cx_case.ROOT}/train.csv", pd.DataFrame(rows).to_csv(index=False))


SLOW_FETCH = textwrap.dedent("""
    import sys, time
    from data_fetch import ingest
    from data_fetch.__main__ import main
    resize = ingest.square_resize_bytes

    def slow(*args, **kwargs):          # a real decode made slow enough to be interrupted
        time.sleep(0.1)
        return resize(*args, **kwargs)

    ingest.square_resize_bytes = slow   # the forked workers inherit it
    sys.exit(main(sys.argv[1:]))
""")


def _group_members(pgid: int) -> list[int]:
    """Live processes of a process group (from /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_ctrl_c_leaves_no_partial_png_and_no_worker(tmp_path):
    local = tmp_path / "copy.zip"
    chexpert_zip(local, 60)
    dest = tmp_path / "cx"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_FETCH, "chexpert", "--local", str(local), "--dest",
         str(dest), "--size", "16", "--no-progress", "--workers", "2"],
        env=env, cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(dest.rglob("*.png")) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        assert len(_group_members(proc.pid)) >= 3          # the fetcher and its two workers
        os.killpg(proc.pid, signal.SIGINT)                 # what a terminal's Ctrl-C does
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    deadline = time.monotonic() + 5
    while _group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _group_members(proc.pid) == []                  # no orphan worker
    assert not (dest / "manifest.csv").exists()
    assert not [p for p in dest.rglob("*") if p.name.endswith(".tmp")]
    stored = list(dest.rglob("*.png"))
    assert 0 < len(stored) < 60                            # really stopped part-way
    for path in stored:                                    # each PNG is whole
        with Image.open(path) as img:
            img.load()
            assert img.size == (16, 16)
