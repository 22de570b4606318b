"""Bad input and faults end in one clear line (exit 2), retried when the server may recover.

Loopback servers answer 429/503 with ``Retry-After``, 404 for single images, 403 for an open
source; the CLI is given negative numbers, a file where a folder belongs, a full disk.
"""
from __future__ import annotations

import errno
import json
import tarfile
import zipfile

import pytest

from data_fetch import download
from data_fetch.__main__ import describe_error, main
from data_fetch.manifest import read_manifest
from data_fetch.sources import images, mimic

from tests.servers import LoopbackServer, Route
from tests.test_fetch_mimic import PASSWORD, USER, build_files
from tests.test_fetch_nih import ARCHIVE_MD5, mirror_routes

BODY = b"x" * 5000


@pytest.fixture(autouse=True)
def pinned_archive_md5(monkeypatch):
    monkeypatch.setattr("data_fetch.sources.nih.ARCHIVE_MD5", {1: ARCHIVE_MD5})


@pytest.fixture()
def waits(monkeypatch):
    """The backoff waits, recorded instead of slept."""
    seen: list[float] = []
    monkeypatch.setattr(download, "_sleep", seen.append)
    return seen


# ----------------------------------------------------------------------------- retries
@pytest.mark.parametrize("status", [429, 503])
def test_rate_limit_and_5xx_are_retried_honouring_retry_after(tmp_path, waits, status):
    route = Route(BODY, fail_first=2, fail_status=status, retry_after="7")
    with LoopbackServer({"/f.bin": route}) as srv:
        out = download.download(srv.url("f.bin"), tmp_path / "f.bin", progress=False, backoff=0.5)
    assert out.read_bytes() == BODY
    assert waits == [7.0, 7.0]                     # Retry-After wins over the 0.5 s backoff


def test_backoff_grows_without_retry_after(tmp_path, waits):
    with LoopbackServer({"/f.bin": Route(BODY, fail_first=3, fail_status=502)}) as srv:
        download.download(srv.url("f.bin"), tmp_path / "f.bin", progress=False, backoff=1.0)
    assert waits == [1.0, 2.0, 4.0]


def test_server_asking_to_wait_too_long_ends_with_a_clear_error(tmp_path, waits):
    with LoopbackServer({"/f.bin": Route(BODY, fail_first=9, fail_status=429,
                                         retry_after="86400")}) as srv:
        with pytest.raises(download.DownloadError, match="asks to wait 86400 s"):
            download.download(srv.url("f.bin"), tmp_path / "f.bin", progress=False)
    assert waits == []


# ----------------------------------------------------------------------------- MIMIC images
@pytest.fixture()
def mimic_files(monkeypatch):
    monkeypatch.setenv("PHYSIONET_USERNAME", USER)
    monkeypatch.setenv("PHYSIONET_PASSWORD", PASSWORD)
    monkeypatch.setattr(mimic, "CREDENTIAL_HOST", "127.0.0.1")
    return build_files()


def run_mimic(srv, tmp_path, *extra) -> int:
    return main(["mimic", "--mirror", srv.url("cxr"), "--mimic-iv", srv.url("iv"),
                 "--dest", str(tmp_path / "mimic"), "--size", "16", "--no-progress",
                 "--allow-http-loopback", *extra])


def image_paths(files: dict[str, bytes]) -> list[str]:
    return [k for k in files if k.endswith("pa.jpg")]


def test_one_missing_image_is_skipped_and_reported(tmp_path, mimic_files, waits):
    missing = image_paths(mimic_files)[0]
    routes = {f"/{k}": Route(v, auth=(USER, PASSWORD)) for k, v in mimic_files.items()
              if k != missing}
    routes["/" + image_paths(mimic_files)[1]].fail_first = 1    # one 503, then the image
    with LoopbackServer(routes) as srv:
        assert run_mimic(srv, tmp_path) == 0
    card = json.loads((tmp_path / "mimic" / "manifest.json").read_text())
    failed = [f["image"] for f in card["failed_downloads"]]
    assert failed == [missing.rsplit("/", 1)[1][:-4]] and "404" in card["failed_downloads"][0]["reason"]
    assert failed[0] not in set(read_manifest(tmp_path / "mimic")["image_id"])
    assert waits                                         # the 503 was retried, not skipped


def test_too_many_failed_images_stop_the_run(tmp_path, mimic_files, capsys, waits):
    routes = {f"/{k}": Route(v, auth=(USER, PASSWORD)) for k, v in mimic_files.items()
              if not k.endswith(".jpg")}
    with LoopbackServer(routes) as srv:
        assert run_mimic(srv, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "could not be downloaded" in err
    assert "run the same command again" in err
    assert not (tmp_path / "mimic" / "manifest.csv").exists()


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize("argv", [
    ["nih", "--limit", "-3"], ["nih", "--size", "-10"], ["nih", "--val-fraction", "1.5"],
    ["nih", "--archives", "0"], ["nih", "--archives", "x"], ["nih", "--seed", "-1"],
    ["chexpert", "--limit", "0"], ["mimic", "--count", "-1"], ["covid19_ar", "--limit", "-2"],
])
def test_bad_numbers_stop_before_any_network(argv, capsys):
    with LoopbackServer(mirror_routes()) as srv:
        with pytest.raises(SystemExit) as done:
            main([*argv, "--mirror", srv.base, "--no-progress"])
        assert srv.seen == []
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "error: argument" in err and "Traceback" not in err


def test_python_api_checks_numbers_too(tmp_path):
    from data_fetch.sources import chexpert, nih
    with pytest.raises(ValueError, match="--limit"):
        chexpert.fetch_chexpert(tmp_path, local=tmp_path, limit=-3)
    with pytest.raises(ValueError, match="--val-fraction"):
        nih.fetch_nih(tmp_path, val_fraction=1.5)
    with pytest.raises(ValueError, match="--count"):
        mimic.fetch_mimic(tmp_path, count=-1, local=tmp_path)


# ----------------------------------------------------------------------------- CLI errors
def test_nih_refusal_is_worded_for_an_open_dataset(capsys):
    routes = mirror_routes()
    routes["/images_001.tar.gz"] = Route(b"", status=403)
    with LoopbackServer(routes) as srv:
        assert main(["nih", "--mirror", srv.base, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "403" in err and "open and needs no login" in err and "logged in" not in err


def test_dest_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with LoopbackServer(mirror_routes()) as srv:
        code = main(["nih", "--mirror", srv.base, "--dest", str(tmp_path / "file" / "nih"),
                     "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "must be a folder" in err
    assert "Traceback" not in err


def test_full_disk_while_saving_images_is_one_line(tmp_path, capsys, monkeypatch):
    def full(path, data, fsync=True):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(images, "atomic_write_bytes", full)
    with LoopbackServer(mirror_routes()) as srv:
        code = main(["nih", "--mirror", srv.base, "--dest", str(tmp_path / "nih"),
                     "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "disk is full" in err and "Traceback" not in err
    assert not (tmp_path / "nih" / "manifest.csv").exists()
    assert not list((tmp_path / "nih").rglob("*.tmp"))


def test_garbage_instead_of_gzip_is_one_line(capsys):
    routes = mirror_routes()
    routes["/images_001.tar.gz"] = Route(b"\x1f\x8b\x08\x00" + b"garbage" * 500)
    with LoopbackServer(routes) as srv:
        assert main(["nih", "--mirror", srv.base, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "damaged" in err


def test_broken_local_zip_is_one_line(tmp_path, capsys):
    broken = tmp_path / "CheXpert-v1.0-small.zip"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["chexpert", "--local", str(broken), "--dest", str(tmp_path / "cx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "download it again" in err


@pytest.mark.parametrize("err, words", [
    (tarfile.ReadError("unexpected end of data"), "damaged or incomplete"),
    (zipfile.BadZipFile("File is not a zip file"), "download it again"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/x"), "cannot be written"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/f/x"), "must be a folder"),
])
def test_each_failure_type_has_what_to_do(err, words):
    assert words in describe_error(err)


def test_unexpected_errors_are_one_line_too(capsys, monkeypatch):
    def boom(args):
        raise KeyError("https://h.org/x?sig=SECRETSIG")
    import data_fetch.sources.nih as nih
    monkeypatch.setattr(nih, "run", boom)
    assert main(["nih"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unexpected KeyError") and "SECRETSIG" not in err


def test_interrupted_stream_says_the_archive_is_read_again(capsys, monkeypatch):
    from data_fetch.sources import nih

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(nih, "stream_archive", interrupted)
    with LoopbackServer(mirror_routes()) as srv:
        assert main(["nih", "--mirror", srv.base, "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "streams the archive again from its start" in err and "interrupted" in err


def test_truncated_mimic_table_is_one_line(tmp_path, mimic_files, capsys):
    key = "cxr/" + mimic.TABLES["metadata"]
    mimic_files[key] = mimic_files[key][:30]
    routes = {f"/{k}": Route(v, auth=(USER, PASSWORD)) for k, v in mimic_files.items()}
    with LoopbackServer(routes) as srv:
        assert run_mimic(srv, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and mimic.TABLES["metadata"] in err and "incomplete" in err


def test_broken_demographics_file_is_one_line(tmp_path, capsys):
    from tests.test_fetch_chexpert import make_zip
    local = tmp_path / "CheXpert-v1.0-small.zip"
    local.write_bytes(make_zip())
    demo = tmp_path / "CHEXPERT DEMO.xlsx"
    demo.write_bytes(b"PK\x03\x04 truncated")
    assert main(["chexpert", "--local", str(local), "--demo", str(demo),
                 "--dest", str(tmp_path / "cx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "CHEXPERT DEMO.xlsx cannot be read" in err
