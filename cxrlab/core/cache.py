"""A uint8 image array per (dataset, size), built once and memory-mapped.

Decoding PNG/JPEG files is the slow part of training on a CPU. :func:`load_image_cache`
decodes every image of a manifest once, resizes it to ``size`` x ``size`` (grey levels,
antialiased) and writes the result to a ``.npy`` file that later epochs, chapters and kernels
read memory-mapped: nothing is decoded twice and nothing needs to fit in RAM (a Binder session
with 2 GB copes with the ``workshop`` preset).

>>> images = load_image_cache(manifest, 64, "/tmp/cache")   # doctest: +SKIP
>>> images.shape, images.dtype                               # doctest: +SKIP
((2000, 64, 64), dtype('uint8'))
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

CACHE_VERSION = 1
CHUNK = 128


def cache_key(image_ids: Sequence[str], paths: Sequence[str], size: int) -> str:
    """A short hash of the images (ids and paths, in order) and the target size.

    Any change to the set, the order or the size of the images gives a new key, so a stale
    cache is never read.
    """
    digest = hashlib.sha1(f"v{CACHE_VERSION}|{int(size)}|{len(image_ids)}".encode())
    for image_id, path in zip(image_ids, paths):
        digest.update(f"\n{image_id}\t{path}".encode())
    return digest.hexdigest()[:16]


def _to_grey_uint8(img: Image.Image) -> Image.Image:
    """Convert any PIL image (8/16-bit grey, RGB, palette) to 8-bit grey, rescaling 16-bit data."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        low, high = float(arr.min()), float(arr.max())
        scaled = (arr - low) / (high - low) * 255.0 if high > low else np.zeros_like(arr)
        return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), mode="L")
    return img.convert("L")


def decode_image(path: str | Path, size: int) -> np.ndarray:
    """Read one image file as a ``(size, size)`` uint8 grey array (antialiased resize).

    >>> decode_image("img.png", 64).shape   # doctest: +SKIP
    (64, 64)
    """
    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft("L", (size, size))   # let the JPEG decoder shrink big files cheaply
        grey = _to_grey_uint8(img)
        if grey.size != (size, size):
            grey = grey.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
        return np.asarray(grey, dtype=np.uint8)


def _paths(manifest: pd.DataFrame) -> list[str]:
    column = "abspath" if "abspath" in manifest.columns else "path"
    return [str(p) for p in manifest[column]]


def _build(paths: list[str], size: int, target: Path, progress: bool) -> None:
    """Decode ``paths`` into a new ``.npy`` at ``target``, chunk by chunk, atomically.

    The file is written sequentially (header, then :data:`CHUNK` images at a time) rather
    than through a writable memory map: dirty pages of a shared file mapping count towards
    the process's resident memory until the kernel writes them back, so a memory-mapped
    build of a 2 GB cache could hold up to 2 GB resident. Written this way, the builder holds
    one chunk (``CHUNK * size * size`` bytes: 13 MB at 320 px) plus the decoders' buffers,
    whatever the number of images (bench/README.md: peak RSS while building 20,000 images).
    """
    tmp = target.with_name(f"{target.stem}.{os.getpid()}.tmp.npy")
    workers = max(1, min(4, os.cpu_count() or 1))
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
              "fortran_order": False, "shape": (len(paths), size, size)}
    try:
        with open(tmp, "wb") as out, ThreadPoolExecutor(workers) as pool, tqdm(
            total=len(paths), desc=f"caching images at {size} px", unit="img",
            disable=not progress,
        ) as bar:
            np.lib.format.write_array_header_1_0(out, header)
            for start in range(0, len(paths), CHUNK):
                chunk = paths[start:start + CHUNK]
                decoded = list(pool.map(decode_image, chunk, [size] * len(chunk)))
                out.write(np.stack(decoded).astype(np.uint8, copy=False).tobytes())
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def cache_path(manifest: pd.DataFrame, size: int, cache_dir: str | Path) -> Path:
    """Where the cache of ``manifest`` at ``size`` px lives (it may not exist yet)."""
    key = cache_key([str(i) for i in manifest["image_id"]], _paths_key(manifest), size)
    return Path(cache_dir) / f"images_{int(size)}px_{key}.npy"


def _paths_key(manifest: pd.DataFrame) -> list[str]:
    # The relative 'path' identifies an image within a dataset; fall back to abspath.
    column = "path" if "path" in manifest.columns else "abspath"
    return [str(p) for p in manifest[column]]


def load_image_cache(
    manifest: pd.DataFrame, size: int, cache_dir: str | Path, progress: bool = True
) -> np.ndarray:
    """Return a read-only memory-mapped uint8 array ``(N, size, size)`` of the manifest's images.

    Row ``i`` of the array is the image of row ``i`` of ``manifest`` (read from ``abspath`` if
    present, else ``path``). The array is built on the first call (with a progress bar) and
    reused afterwards; the build writes to a temporary file and renames it, so two kernels
    racing on the same dataset never see half a file.

    >>> images = load_image_cache(S.manifest, 64, S.data_dir / "cache")   # doctest: +SKIP
    """
    if size < 8:
        raise ValueError(f"image size must be at least 8 pixels, got {size}")
    target = cache_path(manifest, size, cache_dir)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        paths = _paths(manifest)
        missing = [p for p in paths[:5] if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(f"image file(s) not found, e.g. {missing[0]}; "
                                    "is the manifest's folder complete?")
        _build(paths, int(size), target, progress)
        meta = {"n_images": len(paths), "size": int(size), "version": CACHE_VERSION}
        target.with_suffix(".json").write_text(json.dumps(meta))
    images = np.load(target, mmap_mode="r")
    if images.shape != (len(manifest), size, size):
        raise ValueError(f"cache {target} has shape {images.shape}, expected "
                         f"{(len(manifest), size, size)}; delete it to rebuild")
    return images
