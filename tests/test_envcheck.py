"""Chapter 0's environment report: contents, secrecy of credentials, and no network in CI."""
from __future__ import annotations

import socket

import pytest

from cxrlab.coursetools import envcheck


@pytest.fixture(autouse=True)
def _no_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no real ~/.netrc
    monkeypatch.delenv("NETRC", raising=False)
    for names in envcheck.RESTRICTED_TRACK_ENV.values():
        for group in names.values():
            for name in group:
                monkeypatch.delenv(name, raising=False)


def _by_source(rows):
    return {r.source: r for r in rows}


def test_report_has_versions_hardware_and_data_location(isolated_data_folder):
    rep = envcheck.report()
    assert rep["versions"]["python"].count(".") == 2
    assert rep["versions"]["torch"] != "missing"
    assert rep["hardware"]["cpu_count"] >= 1
    assert rep["hardware"]["memory_available_gb"] > 0
    assert rep["data"]["data_root"] == str(isolated_data_folder)
    assert rep["data"]["chosen_by"] == "$CXRLAB_DATA"
    assert rep["data"]["disk_free_gb"] > 0
    assert [t["source"] for t in rep["tracks"]] == list(envcheck.ALL_TRACKS)
    text = envcheck.format_report(rep)
    assert "synthetic" in text and "Versions" in text


def test_missing_library_is_reported_not_raised():
    versions = envcheck.library_versions(("numpy", "surely-not-installed-dist"))
    assert versions["surely-not-installed-dist"] == "missing"
    problems = envcheck.warnings_for({"versions": versions, "hardware": {}, "data": {}})
    assert any("surely-not-installed-dist" in p for p in problems)


def test_low_memory_and_disk_are_warned():
    rep = {"versions": {}, "hardware": {"memory_available_gb": 0.5}, "data": {"disk_free_gb": 0.1}}
    problems = envcheck.warnings_for(rep)
    assert len(problems) == 2 and "CXRLAB_DATA" in problems[1]


def test_network_untouched_by_default_and_in_ci(monkeypatch):
    def explode(*args, **kwargs):
        raise AssertionError("the network must not be touched")

    rows = _by_source(envcheck.track_status(connect=explode, env={}))
    assert rows["synthetic"].ready is True
    assert rows["nih"].ready is None and "not checked" in rows["nih"].detail
    rows = _by_source(envcheck.track_status(check_network=True, connect=explode, env={"CI": "true"}))
    assert rows["covid19_ar"].ready is None and "CI" in rows["covid19_ar"].detail


def test_network_check_uses_connect_with_timeout():
    calls = []

    def fake(host, port, timeout):
        calls.append((host, port, timeout))
        return host == envcheck.OPEN_TRACK_HOSTS["nih"]

    rows = _by_source(envcheck.track_status(check_network=True, timeout=0.5, connect=fake, env={}))
    assert rows["nih"].ready is True and "reachable" in rows["nih"].detail
    assert rows["covid19_ar"].ready is False and "NOT reachable" in rows["covid19_ar"].detail
    assert {c[2] for c in calls} == {0.5}


def test_can_connect_on_loopback():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    # the listen backlog completes the TCP handshake; no accept() needed
    try:
        assert envcheck.can_connect("127.0.0.1", port, timeout=2)
    finally:
        server.close()
    assert not envcheck.can_connect("127.0.0.1", port, timeout=0.5)


def test_credentials_detected_but_never_shown(tmp_path):
    secret = "hunter2-very-secret"
    env = {"PHYSIONET_USERNAME": "alice", "PHYSIONET_PASSWORD": secret,
           "CHEXPERT_URL": f"https://example.org/signed?sig={secret}"}
    rows = _by_source(envcheck.track_status(env=env))
    assert rows["mimic"].ready and rows["chexpert"].ready
    rendered = repr(rows) + envcheck.format_report(
        {"versions": {}, "hardware": {}, "data": {},
         "tracks": [vars(r) for r in rows.values()]})
    assert secret not in rendered and "alice" not in rendered
    # only one of username/password is not enough
    rows = _by_source(envcheck.track_status(env={"PHYSIONET_USERNAME": "alice"}))
    assert rows["mimic"].ready is False and "PHYSIONET_PASSWORD" in rows["mimic"].detail


def test_netrc_and_prepared_copies_count(tmp_path, isolated_data_folder):
    home = tmp_path / "home"
    home.mkdir()
    netrc_file = home / ".netrc"
    netrc_file.write_text("machine physionet.org login alice password s3cret\n")
    netrc_file.chmod(0o600)
    (isolated_data_folder / "chexpert" / "small").mkdir(parents=True)
    (isolated_data_folder / "chexpert" / "small" / "manifest.csv").write_text("image_id\n")
    rows = _by_source(envcheck.track_status(env={}))
    assert rows["mimic"].ready and "netrc" in rows["mimic"].detail and "s3cret" not in rows["mimic"].detail
    assert rows["chexpert"].prepared and rows["chexpert"].ready


def test_cli_prints_report_and_returns_status(capsys):
    code = envcheck.main([])
    out = capsys.readouterr().out
    assert "Tracks" in out and code in (0, 1)


def test_training_speed_measures_a_positive_rate():
    speed = envcheck.training_speed("smallcnn", image_size=32, batch_size=4, n_batches=2, device="cpu")
    assert speed["images_per_s"] > 0 and speed["device"] == "cpu" and speed["image_size"] == 32
