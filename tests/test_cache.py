"""Image cache: built once, deterministic, memory-mapped, keyed by images and size."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrlab.core import cache


def _manifest(folder, n=6, size=40, mode="L"):
    ramp = np.linspace(0, 1, size)[None, :] * np.linspace(0.5, 1, size)[:, None]
    rows = []
    for i in range(n):
        if mode == "I;16":                       # 12-bit data in a 16-bit PNG, not square
            img = Image.fromarray((np.tile(ramp, (1, 2))[:, :size + 8] * 4000).astype(np.uint16))
        else:                                    # a smooth ramp, offset per image
            img = Image.fromarray((ramp * 150 + 15 * i).astype(np.uint8), mode="L")
        path = folder / f"img{i}.png"
        img.save(path)
        rows.append({"image_id": f"i{i}", "path": f"img{i}.png", "abspath": str(path)})
    return pd.DataFrame(rows)


def test_build_once_and_memmap(tmp_path, monkeypatch):
    df = _manifest(tmp_path)
    images = cache.load_image_cache(df, 16, tmp_path / "cache", progress=False)
    assert isinstance(images, np.memmap) and images.dtype == np.uint8
    assert images.shape == (6, 16, 16) and not images.flags.writeable
    # row i is image i, antialiased: close to a box-filtered reference
    with Image.open(tmp_path / "img2.png") as img:
        reference = np.asarray(img.resize((16, 16), Image.Resampling.BOX), dtype=float)
    assert np.abs(images[2].astype(float) - reference).mean() < 3
    files = sorted(p.name for p in (tmp_path / "cache").glob("*.npy"))
    assert len(files) == 1 and not list((tmp_path / "cache").glob("*tmp*"))

    def never(*args, **kwargs):
        raise AssertionError("decoded again although the cache exists")

    monkeypatch.setattr(cache, "decode_image", never)
    again = cache.load_image_cache(df, 16, tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(again, images)


def test_deterministic_and_keyed(tmp_path):
    df = _manifest(tmp_path)
    a = np.array(cache.load_image_cache(df, 16, tmp_path / "c1", progress=False))
    b = np.array(cache.load_image_cache(df, 16, tmp_path / "c2", progress=False))
    np.testing.assert_array_equal(a, b)
    assert cache.cache_path(df, 16, tmp_path) != cache.cache_path(df, 24, tmp_path)
    assert cache.cache_path(df, 16, tmp_path) != cache.cache_path(df.iloc[::-1], 16, tmp_path)
    reordered = cache.load_image_cache(df.iloc[::-1], 16, tmp_path / "c1", progress=False)
    np.testing.assert_array_equal(reordered[0], a[-1])


def test_sixteen_bit_is_rescaled(tmp_path):
    df = _manifest(tmp_path, n=2, mode="I;16")
    images = cache.load_image_cache(df, 16, tmp_path / "cache", progress=False)
    assert images.max() > 200 and images.min() < 50      # full range, not clipped to white


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    df = _manifest(tmp_path, n=3)

    def broken(path, size):
        raise OSError("disk on fire")

    monkeypatch.setattr(cache, "decode_image", broken)
    with pytest.raises(OSError):
        cache.load_image_cache(df, 16, tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").iterdir())


def test_missing_file_is_explained(tmp_path):
    df = pd.DataFrame({"image_id": ["x"], "path": ["nope.png"],
                       "abspath": [str(tmp_path / "nope.png")]})
    with pytest.raises(FileNotFoundError, match="nope.png"):
        cache.load_image_cache(df, 16, tmp_path / "cache", progress=False)


def test_chunked_build_equals_one_chunk_and_is_a_plain_npy(tmp_path, monkeypatch):
    """The builder writes chunk by chunk (bounded memory); a short last chunk is kept."""
    df = _manifest(tmp_path, n=7)
    whole = np.array(cache.load_image_cache(df, 16, tmp_path / "one", progress=False))
    monkeypatch.setattr(cache, "CHUNK", 3)
    decoded = []
    real_decode = cache.decode_image

    def counting(path, size):
        decoded.append(path)
        return real_decode(path, size)

    monkeypatch.setattr(cache, "decode_image", counting)
    chunked = cache.load_image_cache(df, 16, tmp_path / "three", progress=False)
    np.testing.assert_array_equal(chunked, whole)
    assert len(decoded) == 7
    target = cache.cache_path(df, 16, tmp_path / "three")
    assert target.stat().st_size == 7 * 16 * 16 + 128      # header + pixels, nothing else
    np.testing.assert_array_equal(np.load(target), whole)   # a standard .npy file
