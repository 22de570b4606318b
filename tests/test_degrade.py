"""Degradations: hand-checkable properties on synthetic signals (sinusoids, constants, noise)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrlab.toolbox import degrade as D
from cxrlab.toolbox import sweeps


def sinusoid(size: int, cycles: int, axis: int = 1, amplitude: float = 0.25) -> np.ndarray:
    """A mid-grey image with a pure sinusoid of ``cycles`` cycles per image along ``axis``."""
    grid = np.arange(size) / size
    wave = amplitude * np.cos(2 * np.pi * cycles * grid)
    img = np.broadcast_to(wave[None, :] if axis == 1 else wave[:, None], (size, size))
    return (0.5 + img).astype(np.float64)


@pytest.fixture
def noise_image() -> np.ndarray:
    return np.random.default_rng(0).random((64, 64))


def test_scaling_convention():
    # 224-grid lengths scale linearly with the image size; None means "already in this image's units"
    assert D.scaled_length(2.0, 224) == 2.0
    assert D.scaled_length(2.0, 64) == pytest.approx(2.0 * 64 / 224)
    assert D.scaled_length(7.0, 64, reference_size=None) == 7.0
    # an axis frequency of k cycles/image on a 64-px image sits at radius k*224/64 on the 224 grid
    r = D.frequency_radius(64, 64)
    assert r[0, 8].item() == pytest.approx(8 * 224 / 64)
    assert r[0, 32].item() == pytest.approx(112.0)  # Nyquist is 112 whatever the size
    assert D.frequency_radius(64, 64, None)[0, 8].item() == pytest.approx(8.0)


def test_sinusoid_kept_or_removed_at_the_right_radius():
    img = sinusoid(64, cycles=8)          # radius 8 * 224 / 64 = 28 on the 224 grid
    kept = D.low_pass(img, 30)
    removed = D.low_pass(img, 26)
    np.testing.assert_allclose(kept, img, atol=1e-10)
    np.testing.assert_allclose(removed, np.full_like(img, 0.5), atol=1e-10)  # only the mean is left
    np.testing.assert_allclose(D.high_pass(img, 26), img - 0.5, atol=1e-10)
    np.testing.assert_allclose(D.high_pass(img, 30), 0.0, atol=1e-10)
    # the same sinusoid in the image's own units: 8 cycles per image
    np.testing.assert_allclose(D.low_pass(img, 8.5, reference_size=None), img, atol=1e-10)
    np.testing.assert_allclose(D.low_pass(img, 7.5, reference_size=None), 0.5, atol=1e-10)


def test_band_pass_and_notch_select_a_ring():
    img = sinusoid(64, 4) + sinusoid(64, 16, axis=0) - 0.5   # radii 14 and 56 on the 224 grid
    band = D.band_pass(img, 40, 60)
    np.testing.assert_allclose(band, sinusoid(64, 16, axis=0) - 0.5, atol=1e-10)
    np.testing.assert_allclose(D.notch(img, 40, 60) + band, img, atol=1e-10)
    with pytest.raises(ValueError, match="d_high"):
        D.band_pass(img, 60, 40)


def test_large_low_pass_is_identity_and_high_pass_removes_dc(noise_image):
    np.testing.assert_allclose(D.low_pass(noise_image, 200), noise_image, atol=1e-10)
    hp = D.high_pass(noise_image, 1)
    assert abs(hp.mean()) < 1e-12
    assert not np.allclose(hp, 0)


def test_low_plus_high_partition_the_spectrum_and_conserve_energy(noise_image):
    for d in (0, 5, 25, 100, 150):
        low, high = D.low_pass(noise_image, d), D.high_pass(noise_image, d)
        np.testing.assert_allclose(low + high, noise_image, atol=1e-10)
        # the two parts are orthogonal, so their energies add up (Parseval)
        total = D.spectral_energy(noise_image)
        assert D.spectral_energy(low) + D.spectral_energy(high) == pytest.approx(total, rel=1e-9)
    assert D.spectral_energy(noise_image) == pytest.approx(float((noise_image ** 2).sum()), rel=1e-9)


def test_low_pass_energy_grows_with_radius(noise_image):
    energies = [D.spectral_energy(D.low_pass(noise_image, d)) for d in sweeps.PAPER_RADII]
    assert all(a <= b + 1e-9 for a, b in zip(energies, energies[1:]))


@pytest.mark.parametrize("make", [
    lambda: np.random.default_rng(1).random((32, 32)).astype(np.float32),
    lambda: np.random.default_rng(1).random((1, 32, 32)),
    lambda: (np.random.default_rng(1).random((3, 1, 32, 32)) * 255).astype(np.uint8),
    lambda: torch.rand(1, 32, 32),
    lambda: torch.rand(4, 1, 32, 32, dtype=torch.float64),
    lambda: (torch.rand(2, 1, 32, 32) * 255).to(torch.uint8),
])
@pytest.mark.parametrize("name", list(sweeps.SEVERITY_SWEEPS))
def test_every_sweep_preserves_type_shape_and_dtype(make, name):
    x = make()
    spec = sweeps.SEVERITY_SWEEPS[name]
    for level in (spec.levels[0], spec.levels[-1]):
        y = sweeps.make_degradation(name, level)(x)
        assert type(y) is type(x)
        assert tuple(y.shape) == tuple(x.shape)
        assert y.dtype == x.dtype


def test_uint8_round_trip_is_exact_for_identity_filters():
    x = (np.random.default_rng(2).random((16, 16)) * 255).astype(np.uint8)
    np.testing.assert_array_equal(D.low_pass(x, 500), x)
    np.testing.assert_array_equal(D.downsample(x, 16), x)


def test_tiles_partition_the_image_exactly():
    for h, w in [(64, 64), (224, 224), (10, 17)]:
        total = sum(D.tile_mask(h, w, t).astype(int) for t in range(9))
        np.testing.assert_array_equal(total, np.ones((h, w), int))
    assert D.tile_bounds(9, 9, (1, 2)) == (slice(3, 6), slice(6, 9))
    with pytest.raises(ValueError, match="outside"):
        D.tile_bounds(9, 9, 9)


def test_black_out_and_keep_tile_are_complements():
    x = torch.rand(2, 1, 30, 30) + 0.1
    for t in range(9):
        kept, blacked = D.keep_tile(x, t), D.black_out_tile(x, t)
        torch.testing.assert_close(kept + blacked, x)
        rows, cols = D.tile_bounds(30, 30, t)
        assert (kept[..., rows, cols] == x[..., rows, cols]).all()
        assert (blacked[..., rows, cols] == 0).all()
        assert int((kept != 0).sum()) == 2 * 10 * 10


def test_downsample_shape_and_content():
    img = sinusoid(64, cycles=16)                    # 16 cycles cannot survive 8 px
    out = D.downsample(img, 8)
    assert out.shape == (64, 64)
    assert np.abs(out - 0.5).max() < 0.05
    const = np.full((64, 64), 0.3)
    np.testing.assert_allclose(D.downsample(const, 7), const, atol=1e-12)
    with pytest.raises(ValueError, match="positive"):
        D.downsample(img, 0)


def test_noise_statistics_and_reproducibility():
    grey = np.full((1, 256, 256), 0.5)
    noisy = D.gaussian_noise(grey, 0.1, seed=3, clip=False)
    diff = noisy - grey
    assert abs(diff.mean()) < 0.002
    assert diff.std() == pytest.approx(0.1, rel=0.02)
    np.testing.assert_array_equal(noisy, D.gaussian_noise(grey, 0.1, seed=3, clip=False))
    clipped = D.gaussian_noise(grey, 1.0, seed=3)
    assert clipped.min() >= 0.0 and clipped.max() <= 1.0
    t = D.GaussianNoise(0.1, seed=0)
    first, second = t(torch.full((1, 8, 8), 0.5)), t(torch.full((1, 8, 8), 0.5))
    assert not torch.equal(first, second)          # fresh draws per call...
    t2 = D.GaussianNoise(0.1, seed=0)
    assert torch.equal(first, t2(torch.full((1, 8, 8), 0.5)))   # ...from a reproducible stream


def test_blur_keeps_the_mean_smooths_and_scales_with_size(noise_image):
    blurred = D.gaussian_blur(noise_image, 8)
    assert blurred.mean() == pytest.approx(noise_image.mean(), abs=0.01)
    assert blurred.std() < 0.5 * noise_image.std()
    np.testing.assert_array_equal(D.gaussian_blur(noise_image, 0), noise_image)
    # sigma on the 224 grid == sigma * 64 / 224 pixels on a 64-px image
    np.testing.assert_allclose(D.gaussian_blur(noise_image, 7.0),
                               D.gaussian_blur(noise_image, 2.0, reference_size=None), atol=1e-12)


def test_blur_of_a_point_is_a_gaussian_of_the_right_width():
    img = np.zeros((65, 65)); img[32, 32] = 1.0
    out = D.gaussian_blur(img, 3.0, reference_size=None)
    assert out.sum() == pytest.approx(1.0, rel=1e-6)
    ys, xs = np.mgrid[:65, :65]
    var_x = float((out * (xs - 32) ** 2).sum())
    assert np.sqrt(var_x) == pytest.approx(3.0, rel=0.03)


def test_clip_bright():
    img = np.linspace(0, 1, 101).reshape(1, 101)
    out = D.clip_bright(img, quantile=0.9)
    assert out.max() == pytest.approx(0.9)
    np.testing.assert_array_equal(out[img <= 0.9], img[img <= 0.9])
    batch = torch.stack([torch.linspace(0, 1, 100), torch.linspace(0, 0.5, 100)]).reshape(2, 1, 10, 10)
    ceilings = D.clip_bright(batch, quantile=0.5).amax(dim=(1, 2, 3))
    torch.testing.assert_close(ceilings, torch.quantile(batch.reshape(2, -1), 0.5, dim=1))  # per image
    with pytest.raises(ValueError, match="exactly one"):
        D.clip_bright(img)


def fake_chest(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Dark background, bright body, two dark lung ellipses; returns (image, true lung mask)."""
    ys, xs = np.mgrid[:size, :size] / size
    body = ((xs - 0.5) / 0.42) ** 2 + ((ys - 0.55) / 0.5) ** 2 < 1
    lungs = (((xs - 0.32) / 0.12) ** 2 + ((ys - 0.5) / 0.25) ** 2 < 1) | \
            (((xs - 0.68) / 0.12) ** 2 + ((ys - 0.5) / 0.25) ** 2 < 1)
    img = np.where(body, 0.75, 0.05) - 0.5 * lungs
    img = img + np.random.default_rng(0).normal(0, 0.02, img.shape)
    return np.clip(img, 0, 1), lungs


def test_lung_mask_otsu_finds_two_lungs():
    img, truth = fake_chest()
    est = D.lung_mask_otsu(img)
    iou = (est & truth).sum() / (est | truth).sum()
    assert iou > 0.8, f"IoU {iou:.2f}"
    out = D.keep_lungs(torch.as_tensor(img)[None, None])
    assert out.shape == (1, 1, 64, 64)
    assert (out[0, 0].numpy()[~est] == 0).all()


def test_keep_region_with_per_image_masks():
    x = torch.ones(2, 1, 4, 4)
    masks = np.zeros((2, 4, 4), bool); masks[0, 0, 0] = True; masks[1, 3, 3] = True
    out = D.keep_region(x, masks)
    assert out.sum() == 2 and out[0, 0, 0, 0] == 1 and out[1, 0, 3, 3] == 1
    with pytest.raises(ValueError, match="does not match"):
        D.keep_region(x, np.ones((3, 3), bool))


def test_sweeps_are_described():
    for name, spec in sweeps.SEVERITY_SWEEPS.items():
        assert spec.name == name and len(spec.levels) >= 4
        assert repr(sweeps.make_degradation(name, spec.levels[1])).startswith(type(spec.make(spec.levels[1])).__name__)
    assert sweeps.SEVERITY_SWEEPS["high_pass"].levels == sweeps.PAPER_RADII
    with pytest.raises(KeyError, match="unknown degradation"):
        sweeps.make_degradation("sepia", 1)


class DetailModel:
    """Stand-in classifier: class 1 iff the image has fine detail; knows nothing else."""

    def predict(self, images: np.ndarray, transform=None) -> np.ndarray:
        if transform is not None:                   # as TrainedModel.predict: floats, batched
            images = sweeps.degrade_images(images, transform, batch_size=16)
        detail = np.abs(np.diff(np.asarray(images, float), axis=-1)).mean(axis=(-2, -1))
        p = 1 / (1 + np.exp(-(detail - 0.02) * 200))
        return np.stack([1 - p, p], axis=1)


@pytest.fixture
def detail_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    smooth = np.full((60, 32, 32), 0.5) + 0.1 * np.linspace(0, 1, 32)[None, None, :]
    texture = 0.08 * rng.standard_normal((60, 32, 32)) * y[:, None, None]
    return (np.clip(smooth + texture, 0, 1) * 255).astype(np.uint8), y


def test_degrade_images_batches_like_the_functional_form(detail_data):
    images, _ = detail_data
    out = sweeps.degrade_images(images, D.LowPass(50), batch_size=7)
    assert out.dtype == np.float32 and out.shape == images.shape
    np.testing.assert_allclose(out, D.low_pass(images.astype(np.float32) / 255, 50), atol=1e-5)


def test_sweep_at_test_time_and_first_level_below(detail_data):
    images, y = detail_data
    table = sweeps.sweep_at_test_time(DetailModel(), images, y, ["smooth", "textured"], "low_pass",
                                 n_boot=20, progress=False)
    assert set(table.columns) >= {"degradation", "level", "class", "auc", "ci_low", "ci_high"}
    macro = table[table["class"] == "macro"].set_index("level")["auc"]
    assert macro[200] == 1.0 and macro[1] == 0.5     # detail removed -> chance
    level = sweeps.first_level_below(table, 0.6)
    assert level is not None and macro[level] < 0.6 and all(macro.loc[: level].iloc[:-1] >= 0.6)
    sweeps.check_first_level_below(level, table)
    with pytest.raises(AssertionError, match="not the first level"):
        sweeps.check_first_level_below(200, table)


def test_tile_auc_grid(detail_data):
    images, y = detail_data
    grid = sweeps.tile_auc_grid(DetailModel(), images, y, ["smooth", "textured"], "keep", n_boot=10)
    assert list(grid["tile"]) == list(range(9)) and grid["auc"].between(0, 1).all()
    with pytest.raises(ValueError, match="mode"):
        sweeps.tile_auc_grid(DetailModel(), images, y, ["a", "b"], "rotate")


def test_check_high_pass_rejects_a_low_pass():
    """The exercise checks (right answer, boundary, scaling, library calls) are in
    tests/test_checks_ch345.py; here: a low-pass is not mistaken for a high-pass."""
    def low(img, d):
        h, w = img.shape
        r = np.hypot(*np.meshgrid(np.fft.fftfreq(h) * 224, np.fft.fftfreq(w) * 224, indexing="ij"))
        return np.real(np.fft.ifft2(np.fft.fft2(img) * (r <= d)))
    with pytest.raises(AssertionError, match="zero frequency"):
        D.check_high_pass(low)


def test_auc_rows_macro_only_and_binary(detail_data):
    images, y = detail_data
    proba = DetailModel().predict(images / 255)
    rows = sweeps.auc_rows(y, proba, ["smooth", "textured"], n_boot=10, per_class=False)
    assert [r["class"] for r in rows] == ["macro"] and rows[0]["auc"] == 1.0
    binary = sweeps.auc_rows(y, proba[:, 1], ["smooth", "textured"], n_boot=10)
    assert [r["class"] for r in binary] == ["textured", "macro"] and binary[1]["auc"] == binary[0]["auc"]


# --------------------------------------------------------------------------- typed transforms
@pytest.mark.parametrize("transform, twin", [
    (D.LowPass(25), lambda x: D.low_pass(x, 25)),
    (D.HighPass(25), lambda x: D.high_pass(x, 25)),
    (D.BandPass(10, 40), lambda x: D.band_pass(x, 10, 40)),
    (D.Notch(10, 40), lambda x: D.notch(x, 10, 40)),
    (D.Downsample(8), lambda x: D.downsample(x, 8)),
    (D.GaussianBlur(2), lambda x: D.gaussian_blur(x, 2)),
    (D.GaussianNoise(0.1, seed=3), lambda x: D.gaussian_noise(x, 0.1, seed=3)),
    (D.ClipBright(0.5), lambda x: D.clip_bright(x, 0.5)),
    (D.ClipBright(threshold=0.4), lambda x: D.clip_bright(x, threshold=0.4)),
    (D.BlackOutTile(4), lambda x: D.black_out_tile(x, 4)),
    (D.KeepTile(2), lambda x: D.keep_tile(x, 2)),
    (D.KeepLungs(), lambda x: D.keep_lungs(x)),
    (D.Identity(), lambda x: x),
])
def test_each_transform_calls_its_functional_twin(transform, twin):
    x = torch.as_tensor(fake_chest(32)[0], dtype=torch.float32)[None, None]
    assert torch.equal(transform(x), twin(x))


def test_transforms_refuse_wrong_arguments_when_made():
    with pytest.raises(TypeError, match="dd"):
        D.LowPass(dd=3)                              # the type()-made classes accepted this
    with pytest.raises(TypeError):
        D.HighPass(50, 60, 70)
    with pytest.raises(TypeError, match="number"):
        D.HighPass("50")
    for bad in (lambda: D.HighPass(-1), lambda: D.BandPass(40, 10), lambda: D.Downsample(0),
                lambda: D.Downsample(2.5), lambda: D.GaussianBlur(-0.1), lambda: D.GaussianNoise(-1),
                lambda: D.ClipBright(), lambda: D.ClipBright(0.5, threshold=0.5),
                lambda: D.ClipBright(1.5), lambda: D.KeepTile(9), lambda: D.LowPass(float("nan")),
                lambda: D.LowPass(10, reference_size=0)):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(TypeError, match="list of transforms"):
        D.Compose(D.HighPass(5))
    with pytest.raises(TypeError, match="typed transforms"):
        D.Compose([D.HighPass(5), lambda x: x])
    with pytest.raises(AttributeError):
        D.HighPass(5).d = 6                          # frozen: a made transform never changes


def test_transform_reprs_are_stable_and_readable():
    assert repr(D.HighPass(100)) == "HighPass(d=100)"
    assert repr(D.HighPass(np.float64(100.0))) == repr(D.HighPass(100)) == repr(D.HighPass(100.0))
    assert repr(D.LowPass(10, reference_size=None)) == "LowPass(d=10, reference_size=None)"
    assert repr(D.GaussianNoise(0.1, seed=np.int64(0))) == "GaussianNoise(sigma=0.1, seed=0)"
    assert repr(D.ClipBright(0.5)) == "ClipBright(quantile=0.5)"
    assert repr(D.KeepTile(4, fill=1.0)) == "KeepTile(tile=4, fill=1)"
    assert repr(D.Identity()) == "Identity()"
    both = D.Compose([D.HighPass(50), D.GaussianBlur(2)])
    assert repr(both) == "Compose([HighPass(d=50), GaussianBlur(sigma=2)])"
    assert D.HighPass(50) == D.HighPass(50.0) and D.HighPass(50) != D.LowPass(50)
    assert D.BlackOutTile(4) != D.KeepTile(4)


def test_compose_applies_in_order_and_noise_stays_reproducible():
    x = torch.as_tensor(fake_chest(32)[0], dtype=torch.float32)[None, None]
    both = D.Compose([D.HighPass(50), D.GaussianBlur(2)])
    assert torch.allclose(both(x), D.gaussian_blur(D.high_pass(x, 50), 2))
    first, second = D.GaussianNoise(0.1, seed=1), D.GaussianNoise(0.1, seed=1)
    drawn = first(x)
    assert torch.equal(drawn, second(x))             # same seed, same sequence of draws
    assert not torch.equal(first(x), drawn)          # each call draws fresh noise


def test_moved_sweep_names_still_import_from_degrade_with_a_warning():
    with pytest.warns(DeprecationWarning, match="moved to cxrlab.toolbox.sweeps.sweep_at_test_time"):
        assert D.sweep_at_test_time is sweeps.sweep_at_test_time
    with pytest.warns(DeprecationWarning, match="sweeps.sweep_table"):
        assert D._sweep_table is sweeps.sweep_table
    with pytest.warns(DeprecationWarning, match="as_float_tensor"):
        assert D._as_float_tensor is D.as_float_tensor
    for name in D.MOVED_TO_SWEEPS - {"_sweep_table"}:
        assert hasattr(sweeps, name), name
    with pytest.raises(AttributeError):
        D.no_such_name


def test_lung_masks_for_reads_the_manifest_masks_or_estimates_them(tmp_path):
    from types import SimpleNamespace

    import pandas as pd
    from PIL import Image

    img, truth = fake_chest(32)
    images = np.stack([(img * 255).astype(np.uint8)] * 3)
    for i in range(3):
        Image.fromarray((np.roll(truth, i, axis=1) * 255).astype(np.uint8)).resize((64, 64)).save(
            tmp_path / f"m{i}.png")
    with_masks = pd.DataFrame({"mask_path": [f"m{i}.png" for i in range(3)]})
    session = SimpleNamespace(manifest=with_masks, images=images, data_dir=tmp_path,
                              preset=SimpleNamespace(image_size=32))
    masks, source = D.lung_masks_for(session, [2, 0])
    assert "true lung masks" in source and masks.shape == (2, 32, 32) and masks.dtype == bool
    np.testing.assert_array_equal(masks[1], truth)
    np.testing.assert_array_equal(masks[0], np.roll(truth, 2, axis=1))
    session.manifest = with_masks.assign(mask_path=["m0.png", None, "m2.png"])   # one missing: estimate all
    masks, source = D.lung_masks_for(session, np.array([0, 1]))
    assert "Otsu" in source and masks.shape == (2, 32, 32)
    np.testing.assert_array_equal(masks[0], D.lung_mask_otsu(images[0]))
