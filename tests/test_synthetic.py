"""Tests of the synthetic cohort: config, schema, splits, determinism, atomicity, CLI, gallery."""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data_fetch.manifest import read_manifest
from data_fetch.synthetic import SyntheticConfig, build_table, generate_cohort, prepare
from data_fetch.synthetic import cli as syn_cli
from data_fetch.synthetic.config import FINDINGS

REPO = Path(__file__).resolve().parents[1]
TINY = dict(n_patients=12, image_size=32)


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("bad, message", [
    (dict(n_patients=-1), "n_patients"),
    (dict(n_patients=0), "n_patients"),
    (dict(image_size=16), "image_size"),
    (dict(site_confounding=1.5), "site_confounding"),
    (dict(group_proportions=(0.5, 0.5, 0.5)), "group_proportions"),
    (dict(signal_band=(0.6, 0.2)), "signal_band"),
    (dict(underrecord_group="D"), "underrecord_group"),
    (dict(n_patients=2.5), "whole number"),
])
def test_bad_knob_values_are_rejected_with_the_knob_named(bad, message):
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**bad)


def test_unknown_knob_suggests_the_closest_name():
    with pytest.raises(ValueError, match="did you mean 'group_signal'"):
        SyntheticConfig.from_dict({"group_signl": 1.0})


def test_data_fetch_stands_alone_sizes_are_knobs_and_the_label_only_names_the_folder(tmp_path):
    """data_fetch never imports cxrlab: the caller passes sizes; the label is a folder name."""
    import subprocess
    import sys
    code = ("import sys, data_fetch.synthetic, data_fetch.__main__; "
            "sys.exit(any(m.startswith('cxrlab') for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    a = prepare(label="workshop", root=tmp_path, progress=False, **TINY)
    b = prepare(label="other", root=tmp_path, progress=False, **TINY)
    assert a.name.startswith("workshop-") and b.name.startswith("other-")
    assert a.name.split("-", 1)[1] == b.name.split("-", 1)[1]   # same knobs, same hash


# ------------------------------------------------------------------ schema, split, files
@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory):
    dest = tmp_path_factory.mktemp("syn") / "tiny"
    generate_cohort(dest, SyntheticConfig(n_patients=30, image_size=32), progress=False)
    return dest


def test_manifest_schema_split_and_files(tiny_cohort):
    df = read_manifest(tiny_cohort, check_files=True)
    assert set(df["race"]) <= {"A", "B", "C"} and df["ethnicity"].isna().all()
    assert set(df["source"]) == {"synthetic"} and set(df["view"]) <= {"PA", "AP"}
    assert set(df["site"]) <= {f"site{i}" for i in range(1, 5)}
    for name in FINDINGS:
        assert f"finding_{name}" in df and f"true_{name}" in df
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()
    patients = df.groupby("split")["patient_id"].nunique()
    assert patients.to_dict() == {"train": 18, "val": 3, "test": 9}
    assert (df.groupby("patient_id").size() >= 1).all()
    for rel in list(df["path"]) + list(df["mask_path"]):
        with Image.open(tiny_cohort / rel) as im:
            assert im.mode == "L" and im.size == (32, 32)
    default = SyntheticConfig().group_signal
    assert f"| `group_signal` | {default:g} |" in (tiny_cohort / "DATA_CARD.md").read_text()


def test_no_finding_is_consistent_with_recorded_findings(tiny_cohort):
    df = read_manifest(tiny_cohort)
    any_finding = df[[f"finding_{f}" for f in FINDINGS]].any(axis=1)
    assert (df["no_finding"] == ~any_finding).all()


def test_lung_masks_cover_the_dark_lung_fields(tmp_path):
    dest = tmp_path / "m"
    generate_cohort(dest, SyntheticConfig(n_patients=8, image_size=64), progress=False)
    df = read_manifest(dest)
    for _, row in df.iterrows():
        img = np.asarray(Image.open(dest / row["path"]), float)
        mask = np.asarray(Image.open(dest / row["mask_path"])) > 0
        assert 0.12 < mask.mean() < 0.5, "lungs should cover a plausible part of the image"
        centre = img[16:56, 16:48]
        assert img[mask].mean() < centre[~mask[16:56, 16:48]].mean(), "lungs must be darker"


def test_same_config_gives_byte_identical_cohort(tmp_path):
    cfg = SyntheticConfig(**TINY)
    digests = []
    for name in ("one", "two"):
        generate_cohort(tmp_path / name, cfg, progress=False)
        files = sorted((tmp_path / name).rglob("*"))
        blob = b"".join(f.name.encode() + f.read_bytes() for f in files
                        if f.is_file() and f.name != "manifest.json")
        digests.append(hashlib.sha256(blob).hexdigest())
    assert digests[0] == digests[1]
    generate_cohort(tmp_path / "three", cfg.replace(seed=1), progress=False)
    assert (tmp_path / "three" / "manifest.csv").read_bytes() != \
        (tmp_path / "one" / "manifest.csv").read_bytes()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux only")
def test_two_drawing_processes_give_the_same_cohort(tmp_path, monkeypatch):
    """Chunks drawn by two worker processes: the same files, byte for byte."""
    from data_fetch.synthetic import cohort

    monkeypatch.setattr(cohort, "PARALLEL_MIN_IMAGES", 0)   # decided in this process
    monkeypatch.setattr(cohort, "CHUNK_IMAGES", 7)          # several chunks per worker
    cfg = SyntheticConfig(**TINY)
    renderer_class = type(cohort.make_renderer(cfg))
    render, drawn_by = renderer_class.render, tmp_path / "drawn_by.txt"

    def recording(self, row, image_index):                   # the forked workers inherit it
        with drawn_by.open("a") as log:
            log.write(f"{os.getpid()}\n")
        return render(self, row, image_index)

    monkeypatch.setattr(renderer_class, "render", recording)
    pids = {}
    for workers in (1, 2):
        generate_cohort(tmp_path / f"w{workers}", cfg, progress=False, workers=workers)
        pids[workers] = set(drawn_by.read_text().split())
        drawn_by.unlink()
    assert pids[1] == {str(os.getpid())}
    assert pids[2] and str(os.getpid()) not in pids[2]      # drawn by the workers
    one, two = (sorted(p.relative_to(tmp_path / f"w{w}") for p in (tmp_path / f"w{w}").rglob("*.png"))
                for w in (1, 2))
    assert one == two and len(one) == 2 * len(pd.read_csv(tmp_path / "w1" / "manifest.csv"))
    for rel in one:
        assert (tmp_path / "w1" / rel).read_bytes() == (tmp_path / "w2" / rel).read_bytes(), rel
    assert (tmp_path / "w1" / "manifest.csv").read_bytes() == (tmp_path / "w2" / "manifest.csv").read_bytes()


def test_small_cohorts_are_drawn_in_this_process():
    from data_fetch.synthetic.cohort import PARALLEL_MIN_IMAGES, render_workers

    assert render_workers(PARALLEL_MIN_IMAGES - 1, 8) == 1
    assert render_workers(10_000, 1) == 1
    if sys.platform.startswith("linux"):
        assert render_workers(PARALLEL_MIN_IMAGES, 2) == 2
    # the CT renderer uses torch, whose thread pool deadlocks in a forked child
    assert render_workers(10_000, 8, anatomy="ct") == 1


def test_generation_is_atomic_when_interrupted(tmp_path, monkeypatch):
    from data_fetch.synthetic import make_renderer

    renderer_class = type(make_renderer(SyntheticConfig(**TINY)))
    calls = {"n": 0}
    original = renderer_class.render

    def failing(self, row, image_index):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, row, image_index)

    monkeypatch.setattr(renderer_class, "render", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_cohort(tmp_path / "cohort", SyntheticConfig(**TINY), progress=False)
    assert list(tmp_path.iterdir()) == [], "no half cohort and no temporary folder may remain"


def test_existing_destination_is_protected(tiny_cohort):
    with pytest.raises(FileExistsError):
        generate_cohort(tiny_cohort, SyntheticConfig(**TINY), progress=False)


def test_prepare_is_idempotent_and_safe_under_concurrency(isolated_data_folder):
    results, errors = [], []

    def worker():
        try:
            results.append(prepare(label="demo", progress=False, **TINY))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    path = results[0]
    assert path.parent == isolated_data_folder / "synthetic" and path.name.startswith("demo-")
    stamp = (path / "manifest.csv").stat().st_mtime_ns
    assert prepare(label="demo", progress=False, **TINY) == path
    assert (path / "manifest.csv").stat().st_mtime_ns == stamp
    leftovers = [p for p in path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    read_manifest(path, check_files=True)


# ------------------------------------------------------------------ covariates and labels
def test_covariates_match_the_configured_distributions():
    cfg = SyntheticConfig(n_patients=6000, covariate_shift=0.0, site_confounding=0.0)
    t = build_table(cfg)
    first = t[t["study_index"] == 0]
    assert abs(first["age0"].mean() - cfg.age_mean) < 1.0
    assert abs(first["age0"].std() - cfg.age_sd) < 1.5
    assert abs(first["female"].mean() - cfg.female_fraction) < 0.03
    assert abs(first["bmi"].mean() - cfg.bmi_mean) < 0.5
    assert abs(first["bmi"].std() - cfg.bmi_sd) < 0.8
    assert abs((t["view"] == "AP").mean() - cfg.ap_fraction) < 0.03
    shares = first["group"].value_counts(normalize=True).reindex(["A", "B", "C"]).to_numpy()
    assert np.allclose(shares, cfg.group_proportions, atol=0.025)
    assert abs(first["n_studies"].mean() - cfg.studies_mean) < 0.1
    for name in ("effusion", "opacity"):
        assert abs(t[f"true_{name}"].mean() - getattr(cfg, f"prev_{name}")) < 0.03
    assert abs(first["has_cardiomegaly"].mean() - cfg.prev_cardiomegaly) < 0.03
    sites = pd.crosstab(first["group"], first["site"], normalize="index").to_numpy()
    assert np.abs(sites - 0.25).max() < 0.05, "site must not depend on group at confounding 0"


def test_covariate_shift_and_site_confounding_act_in_the_documented_direction():
    t = build_table(SyntheticConfig(n_patients=6000, site_confounding=1.0))
    first = t[t["study_index"] == 0]
    means = first.groupby("group")[["age0", "bmi"]].mean()
    assert means.loc["B", "bmi"] > means.loc["A", "bmi"] > means.loc["C", "bmi"]
    assert means.loc["C", "age0"] > means.loc["A", "age0"] > means.loc["B", "age0"]
    pairs = set(zip(first["group"], first["site"]))
    assert pairs == {("A", "site1"), ("B", "site2"), ("C", "site3")}


def test_underrecording_hides_findings_of_one_group_only():
    cfg = SyntheticConfig(n_patients=1500, underrecord_group="B", underrecord_rate=1.0)
    t = build_table(cfg)
    b, other = t[t["group"] == "B"], t[t["group"] != "B"]
    for name in FINDINGS:
        assert b[f"true_{name}"].sum() > 0 and b[f"finding_{name}"].sum() == 0
        assert (other[f"finding_{name}"] == other[f"true_{name}"]).all()
    assert b["no_finding"].all() and not b["true_no_finding"].all()


# ------------------------------------------------------------------ CLI and gallery
def _parse(argv):
    parser = argparse.ArgumentParser()
    syn_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["synthetic", *argv])


def test_cli_generates_a_cohort_and_rejects_bad_options(tmp_path, capsys):
    dest = tmp_path / "out"
    args = _parse(["--dest", str(dest), "--patients", "5", "--size", "32", "--seed", "2",
                   "--signal", "0", "--site-confounding", "1", "--quiet",
                   "--set", "signal_band=(0.1, 0.5)"])
    assert args.func(args) == 0
    card = (dest / "manifest.json").read_text()
    assert '"group_signal": 0.0' in card and '"site_confounding": 1.0' in card
    assert '"signal_band": [\n      0.1,\n      0.5\n    ]' in card
    for bad in (["--patients", "-3"], ["--size", "8"], ["--set", "nonsense=1"]):
        args = _parse(["--dest", str(tmp_path / "bad"), "--quiet", *bad])
        assert args.func(args) == 2
    out = capsys.readouterr().out
    assert "n_patients" in out and "image_size" in out and "unknown synthetic knob" in out
    assert not (tmp_path / "bad").exists()


def test_python_m_data_fetch_synthetic_runs(tmp_path):
    dest = tmp_path / "cli"
    for module in ("data_fetch", "data_fetch.synthetic"):
        cmd = [sys.executable, "-m", module] + (["synthetic"] if module == "data_fetch" else [])
        out = subprocess.run(cmd + ["--dest", str(dest / module), "--patients", "3", "--size",
                                    "32", "--quiet"], cwd=REPO, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr + out.stdout
        assert (dest / module / "manifest.csv").exists()


def test_gallery_renders(tmp_path):
    from data_fetch.synthetic.gallery import save_gallery

    path = save_gallery(tmp_path / "gallery.png", n=8, size=64)
    with Image.open(path) as im:
        assert im.size[0] > 400 and im.size[1] > 300
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 30, "the gallery must show images, not a blank canvas"


def test_docs_data_card_documents_every_knob():
    text = (REPO / "docs" / "synthetic_data_card.md").read_text()
    for name in SyntheticConfig.knobs():
        assert f"`{name}`" in text, f"docs/synthetic_data_card.md does not document {name}"
