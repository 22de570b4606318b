"""Secrets go only where they belong and never into anything a run writes.

Credentials are bound to their host and sent over HTTPS only (plain HTTP only to loopback with
``--allow-http-loopback``); requests' implicit ``~/.netrc`` use is off for open sources. Then
every secret (password, Base64 Basic header, URL token, signature) is searched for in
everything a run writes, after a success and after each failure: stdout, stderr, the log
(DEBUG, HTTP libraries included), manifests, data cards and every file under the data folder.
"""
from __future__ import annotations

import base64
import logging

import pytest
import requests

from data_fetch import download
from data_fetch.__main__ import main
from data_fetch.credentials import Credentials, InsecureTransportError
from data_fetch.redaction import redact
from data_fetch.sources import mimic

from tests.servers import LoopbackServer, Route
from tests.test_fetch_chexpert import demo_xlsx, make_zip
from tests.test_fetch_mimic import PASSWORD, USER, build_files
from tests.test_fetch_nih import ARCHIVE_MD5, mirror_routes

TOKEN = "tok-7f3a9c1e5b"
SIGNATURE = "sig-Zq8XwP2mN4"
QUERY = f"sv=2020&token={TOKEN}&sig={SIGNATURE}"
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
SECRETS = (PASSWORD, BASIC, TOKEN, SIGNATURE)


@pytest.fixture(autouse=True)
def quiet_env(tmp_path, monkeypatch):
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for name in ("CHEXPERT_URL", "CHEXPERT_DIR", "PHYSIONET_USERNAME", "PHYSIONET_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(download, "_sleep", lambda s: None)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def everything_written(capsys, caplog, tmp_path) -> str:
    out = capsys.readouterr()
    text = out.out + out.err + caplog.text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            text += path.name + path.read_bytes().decode("latin-1")
    return text


def assert_no_secret(text: str) -> None:
    found = [s for s in SECRETS if s in text]
    assert not found, f"secret(s) leaked: {len(found)}"


# ----------------------------------------------------------------------------- CheXpert
CHEXPERT_FAULTS = {
    "success": ({}, None, 0),
    "expired (403)": ({"status": 403}, None, 2),
    "html page": ({"html": True}, None, 2),
    "cut short": ({"declared_length": 10**6}, None, 2),
    "busy (503)": ({"fail_first": 99}, None, 2),
    "bad port": ({}, "http://127.0.0.1:99999/chexpert.zip", 2),
    "bad scheme": ({}, "htp://127.0.0.1/chexpert.zip", 2),
    "no host": ({}, "https:///chexpert.zip", 2),
}


@pytest.mark.parametrize("fault", CHEXPERT_FAULTS)
def test_chexpert_signed_url_never_written(fault, tmp_path, capsys, caplog, monkeypatch):
    route_kw, address, code = CHEXPERT_FAULTS[fault]
    caplog.set_level(logging.DEBUG)
    with LoopbackServer({"/chexpert.zip": Route(make_zip(), **route_kw),
                         "/demo.xlsx": Route(demo_xlsx())}) as srv:
        monkeypatch.setenv("CHEXPERT_URL", f"{address or srv.url('chexpert.zip')}?{QUERY}")
        got = main(["-v", "chexpert", "--demo", srv.url("demo.xlsx"), "--dest",
                    str(tmp_path / "cx"), "--size", "16", "--no-progress", "--allow-http-loopback"])
    assert got == code
    text = everything_written(capsys, caplog, tmp_path)
    assert ("error: " in text) if code else ("ready" in text)
    assert_no_secret(text)


def test_signed_url_over_plain_http_is_never_sent(tmp_path, capsys, caplog, monkeypatch):
    with LoopbackServer({"/chexpert.zip": Route(make_zip())}) as srv:
        monkeypatch.setenv("CHEXPERT_URL", srv.url(f"chexpert.zip?{QUERY}"))
        assert main(["chexpert", "--dest", str(tmp_path / "cx"), "--no-progress"]) == 2
        assert srv.seen == []
    text = everything_written(capsys, caplog, tmp_path)
    assert "--allow-http-loopback" in text
    assert_no_secret(text)


def test_url_on_the_command_line_gets_a_process_list_warning(tmp_path, capsys, caplog):
    with LoopbackServer({"/chexpert.zip": Route(b"", status=403)}) as srv:
        main(["chexpert", "--url", srv.url(f"chexpert.zip?{QUERY}"), "--dest",
              str(tmp_path / "cx"), "--no-progress", "--allow-http-loopback"])
    text = everything_written(capsys, caplog, tmp_path)
    assert "process list" in text and "CHEXPERT_URL" in text
    assert_no_secret(text)


# ----------------------------------------------------------------------------- MIMIC
def mimic_routes(**kw) -> dict[str, Route]:
    return {f"/{k}": Route(v, auth=(USER, PASSWORD), **kw) for k, v in build_files().items()}


MIMIC_FAULTS = {
    "success": (mimic_routes, PASSWORD, 0),
    "wrong password": (mimic_routes, "not-the-" + PASSWORD, 2),
    "all images missing": (lambda: {k: r for k, r in mimic_routes().items()
                                    if not k.endswith(".jpg")}, PASSWORD, 2),
    "server busy": (lambda: mimic_routes(fail_first=99), PASSWORD, 2),
}


@pytest.mark.parametrize("fault", MIMIC_FAULTS)
def test_mimic_password_never_written(fault, tmp_path, capsys, caplog, monkeypatch):
    routes, password, code = MIMIC_FAULTS[fault]
    caplog.set_level(logging.DEBUG)
    monkeypatch.setattr(mimic, "CREDENTIAL_HOST", "127.0.0.1")
    monkeypatch.setenv("PHYSIONET_USERNAME", USER)
    monkeypatch.setenv("PHYSIONET_PASSWORD", password)
    with LoopbackServer(routes()) as srv:
        got = main(["-v", "mimic", "--mirror", srv.url("cxr"), "--mimic-iv", srv.url("iv"),
                    "--dest", str(tmp_path / "mimic"), "--size", "16", "--no-progress",
                    "--allow-http-loopback"])
    assert got == code
    text = everything_written(capsys, caplog, tmp_path)
    assert_no_secret(text)
    assert password not in text


# ----------------------------------------------------------------------------- binding
def test_environment_credentials_stay_with_their_own_host(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PHYSIONET_USERNAME", USER)
    monkeypatch.setenv("PHYSIONET_PASSWORD", PASSWORD)     # for physionet.org only
    monkeypatch.setattr("sys.stdin", None)
    with LoopbackServer(mimic_routes()) as srv:
        code = main(["mimic", "--mirror", srv.url("cxr"), "--mimic-iv", srv.url("iv"),
                     "--dest", str(tmp_path / "m"), "--no-progress", "--allow-http-loopback"])
        assert srv.auth_headers() == []
    err = capsys.readouterr().err
    assert code == 2 and "only sent to physionet.org" in err


def test_plain_http_mirror_never_gets_credentials(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(mimic, "CREDENTIAL_HOST", "127.0.0.1")
    monkeypatch.setenv("PHYSIONET_USERNAME", USER)
    monkeypatch.setenv("PHYSIONET_PASSWORD", PASSWORD)
    with LoopbackServer(mimic_routes()) as srv:
        code = main(["mimic", "--mirror", srv.url("cxr"), "--mimic-iv", srv.url("iv"),
                     "--dest", str(tmp_path / "m"), "--no-progress"])
        assert srv.seen == []
    assert code == 2 and "plain HTTP" in capsys.readouterr().err
    with pytest.raises(InsecureTransportError, match="only https"):
        Credentials(USER, PASSWORD).bound_to("http://mirror.example.org/x")


def test_each_base_gets_only_its_own_hosts_credentials(tmp_path, monkeypatch):
    files = build_files()
    other_user, other_pw = "bob", "another-pass-9"
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n"
                     f"machine localhost login {other_user} password {other_pw}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    cxr = {f"/{k}": Route(v, auth=(USER, PASSWORD)) for k, v in files.items() if k.startswith("cxr/")}
    iv = {f"/{k}": Route(v, auth=(other_user, other_pw)) for k, v in files.items() if k.startswith("iv/")}
    with LoopbackServer(cxr) as one, LoopbackServer(iv) as two:
        mimic.fetch_mimic(tmp_path / "m", mirror=one.url("cxr"),
                          mimic_iv=two.url("iv", host="localhost"), size=16, progress=False,
                          allow_http_loopback=True)
        assert set(one.auth_headers()) == {basic(USER, PASSWORD)}
        assert set(two.auth_headers()) == {basic(other_user, other_pw)}


def test_open_sources_never_send_netrc_passwords(tmp_path, monkeypatch):
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setattr("data_fetch.sources.nih.ARCHIVE_MD5", {1: ARCHIVE_MD5})
    with LoopbackServer(mirror_routes()) as srv:
        assert main(["nih", "--mirror", srv.base, "--size", "16", "--no-progress"]) == 0
        assert srv.auth_headers() == []
        assert requests.get(srv.url("test_list.txt")).request.headers.get("Authorization")  # plain requests would


def test_redirect_to_another_host_drops_the_credentials(tmp_path):
    with LoopbackServer({"/t.csv": Route(b"a,b\n1,2\n")}) as target, LoopbackServer() as first:
        first.add("/t.csv", Route(b"", redirect=target.url("t.csv", host="localhost")))
        auth = Credentials(USER, PASSWORD).bound_to(first.url("t.csv"), allow_http_loopback=True)
        assert download.read_location(first.url("t.csv"), auth=auth) == b"a,b\n1,2\n"
        assert first.auth_headers() == [basic(USER, PASSWORD)]
        assert target.auth_headers() == []


def test_one_redaction_for_every_form_of_secret():
    Credentials(USER, PASSWORD)  # registers the password and its Basic form
    text = (f"user {USER} pw {PASSWORD} header Authorization: {basic(USER, PASSWORD)} "
            f"url https://u:p@h.org/f.zip?{QUERY} log \"GET /f.zip?{QUERY} HTTP/1.1\" "
            f"bare {BASIC} token={TOKEN}")
    assert_no_secret(redact(text))
