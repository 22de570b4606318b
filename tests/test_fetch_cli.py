"""``python -m data_fetch``: help, list/status, and a source run end to end through the CLI."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from data_fetch.__main__ import main, prepared_datasets
from data_fetch.manifest import read_manifest

from tests.servers import LoopbackServer

from tests.test_fetch_nih import ARCHIVE_MD5, IMAGES, mirror_routes  # noqa: E402


def test_help_lists_every_source_with_its_access(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for name, needs in (("nih", "open"), ("covid19_ar", "CC BY 4.0"), ("chexpert", "agreement"),
                        ("mimic", "credentialed"), ("synthetic", "offline")):
        assert name in text and needs in text


@pytest.mark.parametrize("source", ["nih", "covid19_ar", "chexpert", "mimic"])
def test_each_source_has_help(source, capsys):
    with pytest.raises(SystemExit):
        main([source, "--help"])
    text = capsys.readouterr().out
    assert "--dest" in text and "--dry-run" in text and "--size" in text


def test_nih_through_cli_then_list(isolated_data_folder, capsys, monkeypatch):
    monkeypatch.setattr("data_fetch.sources.nih.ARCHIVE_MD5", {1: ARCHIVE_MD5})
    with LoopbackServer(mirror_routes()) as srv:
        assert main(["nih", "--mirror", srv.base, "--size", "16", "--no-progress"]) == 0
    df = read_manifest(isolated_data_folder / "nih" / "default")
    assert len(df) == len(IMAGES)
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "nih" in out and f"{len(IMAGES)} images" in out and "chexpert    not prepared" in out
    assert [d["source"] for d in prepared_datasets()] == ["nih"]


def test_errors_are_one_clear_line(tmp_path, capsys):
    with LoopbackServer(mirror_routes(html=True)) as srv:
        assert main(["nih", "--mirror", srv.base, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "HTML page" in err and "Traceback" not in err


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "data_fetch", "nih", "--dry-run"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "images_001" not in done.stderr
    assert "nihcc.box.com" in done.stdout


@pytest.mark.skipif(importlib.util.find_spec("data_fetch.synthetic.cli") is None,
                    reason="synthetic CLI not there yet")
def test_synthetic_is_registered(capsys):
    with pytest.raises(SystemExit) as done:
        main(["synthetic", "--help"])
    assert done.value.code == 0


def test_aliases_used_by_the_chapters_hints(capsys):
    with pytest.raises(SystemExit):
        main(["chexpert", "--help"])
    text = capsys.readouterr().out
    assert "--max-images" in text and "--source-dir" in text


def test_covid_without_index_or_listing_explains_both_routes(capsys, monkeypatch):
    monkeypatch.delenv("COVID19_AR_LISTING", raising=False)
    monkeypatch.setitem(sys.modules, "idc_index_data", None)   # as if the [real] extra is missing
    assert main(["covid19_ar", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert ".[real]" in err and "--listing" in err and "IDC portal" in err
