"""Nothing partial is taken as complete: NIH archives cut short, damaged caches, stale state.

Each test serves a fault from a loopback server and checks the fetcher refuses it (one clear
error, no manifest, nothing saved that a re-run would trust) or repairs it on the re-run.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zlib

import pytest

from data_fetch import download
from data_fetch.__main__ import main
from data_fetch.manifest import read_manifest
from data_fetch.sources import images, nih
from data_fetch.sources.archives import ArchiveError, ArchiveTruncatedError
from data_fetch.sources.dataset import FolderConflictError

from tests.servers import LoopbackServer, Route
from tests.test_fetch_nih import CORRUPT, IMAGES, data_entry_csv, mirror_routes, png_bytes


def tar_bytes(members: list[tuple[str, bytes]]) -> tuple[bytes, list[int]]:
    """An uncompressed tar and the offset where each member ends (a member boundary)."""
    buf, ends = io.BytesIO(), []
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            ends.append(tar.offset)
    return buf.getvalue(), ends


def flushed_gzip(raw: bytes, boundaries: list[int]) -> tuple[bytes, list[int]]:
    """gzip ``raw`` with a full flush at each boundary; returns the blob and the flush offsets.

    Cutting the blob at a flush offset gives a gzip stream that decompresses cleanly up to
    that tar-member boundary and simply stops: the fault the issue reports.
    """
    z = zlib.compressobj(6, zlib.DEFLATED, 31)
    out, cuts, prev = b"", [], 0
    for b in boundaries:
        out += z.compress(raw[prev:b]) + z.flush(zlib.Z_FULL_FLUSH)
        cuts.append(len(out))
        prev = b
    return out + z.compress(raw[prev:]) + z.flush(), cuts


MEMBERS = [(f"images/{n}", png_bytes(i)) for i, (n, *_rest) in enumerate(IMAGES)]


def serve(archive: bytes, **kw) -> dict[str, Route]:
    routes = mirror_routes()
    routes["/images_001.tar.gz"] = Route(archive, **kw)
    return routes


def fetch(srv, dest, **kw):
    kw.setdefault("md5", {1: None})
    return nih.fetch_nih(dest, mirror=srv.base, size=16, progress=False, backoff=0, **kw)


@pytest.fixture()
def no_published_md5(monkeypatch):
    """Archives 2-12 have no published MD5: gzip and tar checks are all there is."""
    monkeypatch.setattr(nih, "ARCHIVE_MD5", {})


def test_gzip_cut_on_a_member_boundary_is_rejected(tmp_path, no_published_md5):
    raw, ends = tar_bytes(MEMBERS)
    blob, cuts = flushed_gzip(raw, ends[:3])
    cut = blob[:cuts[2]]                         # three whole members, then nothing
    with tarfile.open(fileobj=io.BytesIO(cut), mode="r|gz") as tar:
        assert len([m for m in tar]) == 3        # what plain stream mode accepts
    with LoopbackServer(serve(cut)) as srv:
        with pytest.raises(ArchiveTruncatedError, match="gzip end-of-stream") as err:
            fetch(srv, tmp_path / "nih")
    assert "streams the archive again" in str(err.value)
    assert not (tmp_path / "nih" / "manifest.csv").exists()
    assert not (tmp_path / "nih" / "_state" / "images_001.tar.gz.json").exists()
    with LoopbackServer(serve(blob)) as srv:     # the whole file: the re-run completes
        out = fetch(srv, tmp_path / "nih")
    card = json.loads((out.parent / "manifest.json").read_text())
    assert card["archives"]["images_001.tar.gz"]["gzip_and_tar_verified"] is True
    assert len(read_manifest(out, check_files=True)) == len(IMAGES)


def test_complete_gzip_of_a_cut_tar_lacks_the_end_marker(tmp_path, no_published_md5):
    raw, ends = tar_bytes(MEMBERS)
    with LoopbackServer(serve(gzip.compress(raw[:ends[2]]))) as srv:
        with pytest.raises(ArchiveTruncatedError, match="end-of-archive marker"):
            fetch(srv, tmp_path / "nih")
    assert not (tmp_path / "nih" / "manifest.csv").exists()


def test_crc_mismatch_deletes_the_images_made_from_the_archive(tmp_path, no_published_md5):
    blob = bytearray(gzip.compress(tar_bytes(MEMBERS)[0]))
    blob[-8] ^= 0xFF                             # the CRC-32 in the gzip trailer
    with LoopbackServer(serve(bytes(blob))) as srv:
        with pytest.raises(ArchiveError, match="CRC-32") as err:
            fetch(srv, tmp_path / "nih")
    assert not isinstance(err.value, ArchiveTruncatedError)
    assert not list((tmp_path / "nih" / "images").glob("*.png"))


def test_body_shorter_than_content_length_is_an_error(tmp_path):
    body = bytes(range(256)) * 40
    with LoopbackServer({"/f.bin": Route(body, declared_length=len(body) + 500)}) as srv:
        with pytest.raises(download.DownloadError, match="kept failing|Content-Length"):
            download.download(srv.url("f.bin"), tmp_path / "f.bin", progress=False, backoff=0,
                              retries=1)
    assert not (tmp_path / "f.bin").exists()


def test_deleted_image_is_restored_on_rerun(tmp_path):
    with LoopbackServer(mirror_routes()) as srv:
        out = fetch(srv, tmp_path / "nih")
        victim = tmp_path / "nih" / "images" / IMAGES[0][0]
        victim.unlink()
        out = fetch(srv, tmp_path / "nih")
    assert victim.exists()
    assert len(read_manifest(out, check_files=True)) == len(IMAGES)


def test_two_members_with_one_base_name_keep_the_first(tmp_path, no_published_md5):
    members = MEMBERS + [("other/" + IMAGES[0][0], png_bytes(99))]
    with LoopbackServer(serve(gzip.compress(tar_bytes(members)[0]))) as srv:
        out = fetch(srv, tmp_path / "nih")
        again = fetch(srv, tmp_path / "nih")       # the saved state is usable, not poisoned
    assert len(read_manifest(again)) == len(IMAGES)
    card = json.loads((out.parent / "manifest.json").read_text())
    assert any("a second file named" in x["reason"] for x in card["excluded"])


def test_stale_state_listing_a_name_twice_is_discarded(tmp_path):
    with LoopbackServer(mirror_routes()) as srv:
        fetch(srv, tmp_path / "nih")
        state_file = tmp_path / "nih" / "_state" / "images_001.tar.gz.json"
        state = json.loads(state_file.read_text())
        state["images"].append(state["images"][0])  # what an older version could save
        state_file.write_text(json.dumps(state))
        out = fetch(srv, tmp_path / "nih")
    assert len(read_manifest(out)) == len(IMAGES)


def test_other_size_into_the_same_folder_is_refused(tmp_path, capsys):
    with LoopbackServer(mirror_routes()) as srv:
        fetch(srv, tmp_path / "nih")
        n_requests = len(srv.seen)
        with pytest.raises(FolderConflictError, match="--size 16"):
            nih.fetch_nih(tmp_path / "nih", mirror=srv.base, size=32, progress=False,
                          md5={1: None})
        assert len(srv.seen) == n_requests       # refused before any download
        code = main(["nih", "--mirror", srv.base, "--dest", str(tmp_path / "nih"),
                     "--size", "32", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "--name" in err
    assert len(read_manifest(tmp_path / "nih", check_files=True)) == len(IMAGES)  # untouched


def test_images_of_another_size_without_a_record_are_refused(tmp_path):
    folder = tmp_path / "nih" / "images"
    folder.mkdir(parents=True)
    images.save_png(images.square_resize(images.decode_image(png_bytes(0), "x"), 24),
                    folder / "00000001_000.png")
    with LoopbackServer(mirror_routes()) as srv:
        with pytest.raises(FolderConflictError, match="--size 24"):
            fetch(srv, tmp_path / "nih")


def test_oversized_member_is_skipped_not_read(tmp_path, no_published_md5, monkeypatch):
    monkeypatch.setattr(nih, "MAX_MEMBER_BYTES", 5_000)
    big = ("images/00000009_000.png", b"\0" * 50_000)   # a zero-filled 'bomb', scaled down
    with LoopbackServer(serve(gzip.compress(tar_bytes(MEMBERS + [big])[0]))) as srv:
        out = fetch(srv, tmp_path / "nih")
    card = json.loads((out.parent / "manifest.json").read_text())
    assert any("cap" in x["reason"] for x in card["excluded"] if x["image"] == "00000009_000.png")
    assert not (tmp_path / "nih" / "images" / "00000009_000.png").exists()


def test_decoder_refuses_an_image_over_the_pixel_cap(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    with pytest.raises(images.CorruptImageError, match="Mpx cap"):
        images.decode_image(png_bytes(1), "big.png")


def test_truncated_data_entry_cache_is_replaced(tmp_path):
    cache = tmp_path / "nih" / "_meta" / f"{nih.DATA_ENTRY}.gz"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(gzip.compress(data_entry_csv())[:40])       # a disk-full leftover
    with LoopbackServer(mirror_routes()) as srv:
        out = fetch(srv, tmp_path / "nih")
    assert json.loads((out.parent / "manifest.json").read_text())["data_entry"] == "mirror"
    assert len(nih._read_table(cache.read_bytes(), "cache")) == len(IMAGES) + 1
    assert not list(cache.parent.glob(".*.tmp"))


def test_stream_failure_says_what_a_rerun_does(tmp_path, no_published_md5):
    blob = gzip.compress(tar_bytes(MEMBERS)[0])
    with LoopbackServer(serve(blob, truncate_first=1, truncate_at=0.5)) as srv:
        with pytest.raises(download.DownloadError) as err:
            nih.fetch_nih(tmp_path / "nih", mirror=srv.base, size=16, progress=False,
                          backoff=0, retries=0)
    assert "streams the archive again from its start" in str(err.value)
    assert "resume" not in str(err.value).split("(")[0]


def test_kept_archive_resumes_after_a_failed_run(tmp_path):
    archive = mirror_routes()["/images_001.tar.gz"].body
    with LoopbackServer(serve(archive, truncate_first=1, truncate_at=0.5)) as srv:
        with pytest.raises(download.DownloadError, match="resumes from the bytes kept"):
            nih.fetch_nih(tmp_path / "nih", mirror=srv.base, size=16, progress=False, backoff=0,
                          retries=0, keep_archive=True,
                          md5={1: hashlib.md5(archive).hexdigest()})
        part = tmp_path / "nih" / "archives" / "images_001.tar.gz.part"
        assert 0 < part.stat().st_size < len(archive)
        out = nih.fetch_nih(tmp_path / "nih", mirror=srv.base, size=16, progress=False,
                            backoff=0, keep_archive=True, md5={1: hashlib.md5(archive).hexdigest()})
        ranges = [s.headers.get("Range") for s in srv.seen if s.path == "/images_001.tar.gz"]
    assert ranges[-1] and ranges[-1].startswith("bytes=")
    assert len(read_manifest(out)) == len(IMAGES)
    assert CORRUPT not in set(read_manifest(out)["path"])


@pytest.mark.slow
def test_zero_filled_bomb_is_skipped_with_bounded_memory(tmp_path, no_published_md5):
    import tracemalloc
    bomb_size = images.MAX_MEMBER_BYTES + 16 * 1024 * 1024          # 80 MB of zeros
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for name, data in MEMBERS[:2]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("images/00000009_000.png")
        info.size = bomb_size
        tar.addfile(info, _Zeros(bomb_size))
    with LoopbackServer(serve(buf.getvalue())) as srv:
        tracemalloc.start()
        try:
            out = fetch(srv, tmp_path / "nih")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 24 * 1024 * 1024, f"peak {peak / 1e6:.0f} MB"    # never the 80 MB member
    assert len(read_manifest(out)) == 2


class _Zeros(io.RawIOBase):
    """A readable stream of ``n`` zero bytes that never holds them all."""

    def __init__(self, n: int):
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        k = min(len(b), self.left)
        b[:k] = bytes(k)
        self.left -= k
        return k


def test_damaged_kept_archive_is_deleted_then_downloaded_again(tmp_path, no_published_md5):
    blob = gzip.compress(tar_bytes(MEMBERS)[0])
    kept = tmp_path / "nih" / "archives" / "images_001.tar.gz"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(blob[:len(blob) // 2])        # an older run's cut copy, final name
    with LoopbackServer(serve(blob)) as srv:
        with pytest.raises(ArchiveError, match="deleted; run again"):
            fetch(srv, tmp_path / "nih", keep_archive=True)
        assert not kept.exists()
        out = fetch(srv, tmp_path / "nih", keep_archive=True)
    assert kept.read_bytes() == blob
    assert len(read_manifest(out, check_files=True)) == len(IMAGES)
