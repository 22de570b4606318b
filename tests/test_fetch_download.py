"""The shared download machinery against a loopback server: resume, checksums, HTML, 401."""
from __future__ import annotations

import hashlib
import io
import tarfile

import pytest

from data_fetch import download
from data_fetch.credentials import Credentials, CredentialsError, get_credentials

from tests.servers import LoopbackServer, Route

BODY = bytes(range(256)) * 400  # 100 kB


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_complete_download_verifies_md5(tmp_path):
    with LoopbackServer({"/f.bin": Route(BODY)}) as srv:
        out = download.download(srv.url("f.bin"), tmp_path / "f.bin", md5=md5(BODY), progress=False)
    assert out.read_bytes() == BODY
    assert not (tmp_path / "f.bin.part").exists()


def test_dropped_connection_resumes_with_range(tmp_path):
    route = Route(BODY, truncate_first=2, truncate_at=0.3)
    with LoopbackServer({"/f.bin": route}) as srv:
        out = download.download(srv.url("f.bin"), tmp_path / "f.bin", md5=md5(BODY), backoff=0,
                          progress=False)
        ranges = [s.headers.get("Range") for s in srv.seen if s.method == "GET"]
    assert out.read_bytes() == BODY
    assert ranges[0] is None and all(r and r.startswith("bytes=") for r in ranges[1:])
    assert len(ranges) == 3


def test_resume_from_part_file_of_earlier_run(tmp_path):
    (tmp_path / "f.bin.part").write_bytes(BODY[:1000])
    with LoopbackServer({"/f.bin": Route(BODY)}) as srv:
        download.download(srv.url("f.bin"), tmp_path / "f.bin", md5=md5(BODY), progress=False)
        assert srv.seen[0].headers["Range"] == "bytes=1000-"
    assert (tmp_path / "f.bin").read_bytes() == BODY


def test_server_that_ignores_range_still_gives_right_bytes(tmp_path):
    (tmp_path / "f.bin.part").write_bytes(BODY[:5000])
    with LoopbackServer({"/f.bin": Route(BODY, ignore_range=True)}) as srv:
        download.download(srv.url("f.bin"), tmp_path / "f.bin", md5=md5(BODY), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == BODY


def test_wrong_checksum_leaves_nothing_that_looks_complete(tmp_path):
    with LoopbackServer({"/f.bin": Route(BODY)}) as srv:
        with pytest.raises(download.ChecksumError, match="MD5 mismatch"):
            download.download(srv.url("f.bin"), tmp_path / "f.bin", md5="0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_html_page_instead_of_data_is_detected(tmp_path):
    with LoopbackServer({"/f.bin": Route(BODY, html=True)}) as srv:
        with pytest.raises(download.HTMLPageError, match="HTML page"):
            download.download(srv.url("f.bin"), tmp_path / "f.bin", progress=False)
    assert not (tmp_path / "f.bin").exists()


def test_404_and_head_are_not_used(tmp_path):
    with LoopbackServer({"/f.bin": Route(BODY)}) as srv:
        with pytest.raises(download.DownloadError, match="404"):
            download.download(srv.url("missing.bin"), tmp_path / "x", progress=False)
        download.download(srv.url("f.bin"), tmp_path / "f.bin", progress=False)  # HEAD would say 404
        assert all(s.method == "GET" for s in srv.seen)


def test_401_message_names_the_account_and_hides_the_password(tmp_path, capsys, caplog):
    creds = Credentials("ada", "hunter2-secret", "environment")
    with LoopbackServer({"/f.bin": Route(BODY, auth=("ada", "right-one"))}) as srv:
        with pytest.raises(download.AccessError) as err:
            auth = creds.bound_to(srv.url("f.bin"), allow_http_loopback=True)
            download.download(srv.url("f.bin"), tmp_path / "f.bin", auth=auth, progress=False,
                        access_hint="You need a PhysioNet credentialed account.")
    text = str(err.value) + repr(creds) + str(creds) + capsys.readouterr().out + caplog.text
    assert "401" in str(err.value) and "PhysioNet" in str(err.value)
    assert "hunter2-secret" not in text


def test_signed_url_query_is_redacted_in_errors(tmp_path):
    with LoopbackServer({}) as srv:
        with pytest.raises(download.DownloadError) as err:
            download.download(srv.url("x.zip?sig=TOPSECRET"), tmp_path / "x.zip", progress=False)
    assert "TOPSECRET" not in str(err.value)


def test_remote_stream_feeds_tarfile_across_a_dropped_connection():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in range(3):
            data = bytes([i]) * 20000
            info = tarfile.TarInfo(f"images/{i}.bin")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    with LoopbackServer({"/a.tar.gz": Route(blob, truncate_first=1)}) as srv:
        with download.RemoteStream(srv.url("a.tar.gz"), backoff=0) as stream:
            with tarfile.open(fileobj=stream, mode="r|gz") as tar:
                names = [m.name for m in tar]
            stream.drain()
            assert stream.reconnects == 1
            assert stream.digests()["md5"] == md5(blob)
    assert names == ["images/0.bin", "images/1.bin", "images/2.bin"]


def test_free_space_check():
    with pytest.raises(download.DownloadError, match="not enough disk space"):
        download.check_free_space("/tmp/somewhere/new", needed=10**18)
    download.check_free_space("/tmp", needed=1)


def test_credentials_from_env_netrc_and_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("X_USER", raising=False)
    monkeypatch.delenv("X_PASS", raising=False)
    netrc_file = tmp_path / "netrc"
    netrc_file.write_text("machine example.org login bob password pw-from-netrc\n")
    netrc_file.chmod(0o600)
    got = get_credentials("example.org", user_env="X_USER", password_env="X_PASS",
                          account_hint="Get an account.", netrc_file=netrc_file)
    assert (got.username, got.password, got.origin) == ("bob", "pw-from-netrc", "netrc")
    assert "pw-from-netrc" not in repr(got)
    monkeypatch.setenv("X_USER", "amy")
    monkeypatch.setenv("X_PASS", "pw-env")
    got = get_credentials("example.org", user_env="X_USER", password_env="X_PASS",
                          account_hint="", netrc_file=netrc_file)
    assert got.origin == "environment" and got.username == "amy"
    monkeypatch.delenv("X_USER")
    with pytest.raises(CredentialsError, match="Get an account"):
        get_credentials("other.org", user_env="X_USER", password_env="X_PASS",
                        account_hint="Get an account.", interactive=False, netrc_file=netrc_file)


def test_requests_ask_for_the_bytes_as_stored(tmp_path):
    with LoopbackServer({"/f.bin": Route(BODY)}) as srv:
        download.download(srv.url("f.bin"), tmp_path / "f.bin", progress=False)
        assert srv.seen[0].headers["Accept-Encoding"] == "identity"  # Content-Length = bytes read


def test_malformed_urls_fail_before_any_request_without_their_query():
    for url in ("http://127.0.0.1:99999/x?sig=S3CR3T", "ftp://h.org/x?sig=S3CR3T",
                "https:///x?sig=S3CR3T", "http://[::1/x?sig=S3CR3T"):
        with pytest.raises(ValueError) as err:
            download.check_url(url)
        assert "S3CR3T" not in str(err.value)
        assert "not a valid URL" in str(err.value) or "http(s)://" in str(err.value)
