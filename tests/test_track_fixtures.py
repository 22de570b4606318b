"""The course fixtures of the nih and covid19_ar tracks: built by the real fetchers from 127.0.0.1,
marked as fixtures, and what a chapter section needs (race, sites, BMI) said in one sentence."""
from __future__ import annotations

import gzip
import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import cxrlab
from cxrlab.core import session as session_mod
from cxrlab.coursetools import covid_fixture
from cxrlab.coursetools import track_fixtures as tf
from cxrlab.toolbox import checks
from data_fetch.manifest import read_card, read_manifest
from data_fetch.sources import covid19_ar, nih

pytestmark = pytest.mark.slow
pytest.importorskip("torchxrayvision", reason="the NIH fixture uses torchxrayvision's Data_Entry")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Both fixtures, built once through spies on the real fetchers."""
    calls = []
    real_nih, real_covid = nih.fetch_nih, covid19_ar.fetch_covid19_ar
    mp = pytest.MonkeyPatch()
    mp.setattr(nih, "fetch_nih", lambda *a, **k: calls.append(("nih", k)) or real_nih(*a, **k))
    mp.setattr(covid19_ar, "fetch_covid19_ar",
               lambda *a, **k: calls.append(("covid19_ar", k)) or real_covid(*a, **k))
    root = tmp_path_factory.mktemp("track-fixtures")
    try:
        folders = {"nih": tf.build_nih_fixture(root / "nih" / tf.FIXTURE_NAME, n_images=80),
                   "covid19_ar": tf.build_covid19_ar_fixture(root / "covid19_ar" / tf.FIXTURE_NAME)}
    finally:
        mp.undo()
    return root, folders, calls


def test_both_go_through_the_real_fetchers_on_loopback(built):
    _root, _folders, calls = built
    assert [source for source, _ in calls] == ["nih", "covid19_ar"]
    for _source, kwargs in calls:
        urls = [str(v) for k, v in kwargs.items() if k in ("mirror", "listing", "clinical")]
        assert urls and all(u.startswith("http://127.0.0.1:") for u in urls)


def test_nih_fixture_has_real_names_and_data_entry_rows(built):
    _root, folders, _calls = built
    df = read_manifest(folders["nih"], check_files=True)
    card = read_card(folders["nih"])
    table = pd.read_csv(io.BytesIO(gzip.decompress(nih._bundled_data_entry()))).set_index("Image Index")
    names = df["path"].str.split("/").str[-1]
    assert 20 <= len(df) <= 80 and names.isin(table.index).all()         # whole patients
    assert names.str.fullmatch(r"\d{8}_\d{3}\.png").all()
    row = table.loc[names]
    assert (df["sex"].to_numpy() == row["Patient Gender"].to_numpy()).all()
    assert (df["age"].to_numpy() == row["Patient Age"].to_numpy()).all()
    assert (df["patient_id"].astype(int).to_numpy() == row["Patient ID"].to_numpy()).all()
    assert card["archives"]["images_001.tar.gz"]["md5_verified"] is True
    assert card["data_entry"] == "mirror" and card["split_method"].startswith("official")
    test_patients = set(df.loc[df["split"] == "test", "patient_id"])
    assert test_patients and not test_patients & set(df.loc[df["split"] != "test", "patient_id"])
    assert df["race"].isna().all() and card["fixture"] == tf.FIXTURE_NOTE
    assert Image.open(df["abspath"].iloc[0]).size == (tf.FETCH_SIZE, tf.FETCH_SIZE)


def test_covid19_ar_fixture_is_about_100_patients_from_dicoms(built):
    _root, folders, _calls = built
    df = read_manifest(folders["covid19_ar"], check_files=True)
    card = read_card(folders["covid19_ar"])
    assert df["patient_id"].nunique() == 100
    assert set(df["race"].dropna()) == {"White", "Black", "Asian"}
    assert df.loc[df["race"].isna(), "race_original"].eq("Other").all()
    reasons = " ".join(e["reason"] for e in card["excluded"])
    assert "modality MR" in reasons and "lateral view LL" in reasons
    assert df["site"].nunique() == 1 and df["bmi"].isna().all()
    assert card["fixture"] == tf.FIXTURE_NOTE


def test_rebuild_reuses_and_chapter7_never_takes_it_for_real(built, monkeypatch):
    root, folders, calls = built
    before = len(calls)
    assert tf.build_track_fixture("nih", folders["nih"]) == folders["nih"]
    assert len(calls) == before
    monkeypatch.setenv("CXRLAB_DATA", str(root))
    assert covid_fixture._real_dataset() is None
    chapter7 = covid_fixture.build_fixture_dataset()             # newer, but not the course's
    assert read_card(chapter7)["fixture"] and covid_fixture._real_dataset() is None
    assert session_mod.find_prepared("covid19_ar") == folders["covid19_ar"]
    real = root / "covid19_ar" / "mine"
    real.mkdir()
    for name in ("manifest.csv", "manifest.json"):
        text = (folders["covid19_ar"] / name).read_text()
        (real / name).write_text(text.replace('"fixture"', '"not_a_fixture"'))
    try:
        assert session_mod.find_prepared("covid19_ar") == real      # real data comes first
    finally:
        shutil.rmtree(real)
    with pytest.raises(ValueError, match="no course fixture for 'mimic'"):
        tf.build_track_fixture("mimic")


def test_sessions_say_what_each_track_lacks(built, monkeypatch, capsys, fake_dataset):
    root, _folders, _calls = built
    monkeypatch.setenv("CXRLAB_DATA", str(root))
    S = cxrlab.setup("nih", "demo", progress=False)
    assert S.is_fixture and "FIXTURE" in capsys.readouterr().out
    assert S.missing("sites") and "no self-reported race" in S.missing("race")
    assert S.can_run("race", section="Section 3") is False
    assert capsys.readouterr().out.strip() == ("Section 3 is skipped on nih: NIH ChestX-ray14 "
                                               "records no self-reported race.")
    C = cxrlab.setup("covid19_ar", "demo", progress=False)
    assert C.missing("race") is None and "one site" in C.missing("sites")
    assert "no body-mass index" in C.missing("bmi") and C.missing("race", "bmi") == C.missing("bmi")
    assert C.missing("sites", "bmi") == f"{C.missing('sites')}; {C.missing('bmi')}"
    with pytest.raises(ValueError, match="unknown need"):
        C.missing("height")
    F = cxrlab.setup("synthetic", "demo", data_dir=fake_dataset, progress=False)
    assert not F.is_fixture and F.missing("race", "sites", "bmi") is None


def test_setup_falls_back_even_when_the_variable_names_the_track(built, monkeypatch, capsys):
    root, _folders, _calls = built
    monkeypatch.setenv("CXRLAB_DATA", str(root))
    monkeypatch.setenv("CXRLAB_SOURCE", "nih")
    S = cxrlab.setup("covid19_ar", "demo", needs=["race"], fallback="covid19_ar", progress=False)
    assert S.source == "covid19_ar" and len(S.classes) >= 2
    out = capsys.readouterr().out
    assert "needs what nih lacks (NIH ChestX-ray14 records no self-reported race)" in out
    kept = cxrlab.setup("nih", "demo", needs=["race"], progress=False)
    assert kept.source == "nih" and "Some sections are skipped on nih" in capsys.readouterr().out


def test_claims_only_warn_once_a_fixture_is_loaded(built, monkeypatch, capsys):
    root, _folders, _calls = built
    with pytest.raises(checks.ClaimFailed):
        checks.claim(False, "the text")
    monkeypatch.setenv("CXRLAB_DATA", str(root))
    cxrlab.setup("covid19_ar", "demo", progress=False)
    capsys.readouterr()
    assert checks.claim(False, "the text", "AUC 0.5") is False
    out = capsys.readouterr().out
    assert 'the text says "the text"' in out and "numbers are not findings" in out
    assert session_mod.claims_advisory() is not None


def test_cli_builds_into_the_data_folder(isolated_data_folder, monkeypatch, capsys):
    monkeypatch.setattr(tf, "NIH_IMAGES", 30)
    assert tf.main(["nih"]) == 0
    folder = isolated_data_folder / "nih" / tf.FIXTURE_NAME
    assert str(folder) in capsys.readouterr().out and (folder / "manifest.csv").exists()
    with pytest.raises(SystemExit):
        tf.main(["chexpert"])
