"""Decode and resize downloaded images in a process pool, in stream order, atomically.

Every fetcher ends each image the same way: bytes in, a square 8-bit grey PNG of ``--size``
pixels out (see :func:`data_fetch.sources._common.store_image`). That step is CPU-bound (a
2,500 x 3,000 MIMIC-CXR JPEG takes about 0.1 s to decode in full on one core), so
:class:`ImagePool` spreads it over worker processes while the caller keeps reading its stream
(a tar archive, a folder, HTTP downloads) in the main process:

>>> items = ((data, name, out_dir / name, 256) for name, data in stream)   # doctest: +SKIP
>>> with ImagePool(workers=4) as pool:                                     # doctest: +SKIP
...     for done in pool.map_store(items):
...         if not done.ok:
...             excluded.append((done.name, done.error))

Results come back in the order of ``items`` (so manifests, budgets and resume state stay what
they were with one thread), at most ``workers * PENDING_PER_WORKER`` images are in flight (the
memory of a pool is bounded whatever the stream's length), and each PNG is written to a
temporary name and renamed, so an interrupted run never leaves half a file.

JPEG draft decoding: libjpeg can decode at 1/2, 1/4 or 1/8 scale by dropping DCT
coefficients, which is much cheaper than decoding every pixel. :func:`square_resize_bytes`
asks for the smallest draft that is still at least ``size`` pixels on its short side, then
does the same centre crop (in the original image's coordinates, as a fractional box) and the
same Lanczos resize as the full decode. On a 2,500 x 3,000 radiograph resized to 320 px the
result differs from the full decode by at most :data:`DRAFT_MAX_ABS_DIFF` grey levels and on
average by less than :data:`DRAFT_MEAN_ABS_DIFF` (tests/test_ingest.py measures both on an
image of that size); pass ``draft=False`` for the bit-exact full decode. PNG (NIH's 1,024-px
originals, CheXpert's) has no reduced decode: every pixel is inflated, then resized, exactly
as the fetchers did. Stored PNGs are written with zlib level :data:`PNG_COMPRESS_LEVEL`
(same pixels, faster).
"""
from __future__ import annotations

import argparse
import io
import os
import re
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from data_fetch.sources._common import CorruptImageError, square_resize, to_uint8

#: Largest difference, in grey levels of 255, that draft decoding may make (stated tolerance).
DRAFT_MAX_ABS_DIFF = 4
#: Largest mean difference over the image, in grey levels, that draft decoding may make.
DRAFT_MEAN_ABS_DIFF = 0.5
#: zlib level of the stored PNGs. Level 1 encodes a noisy 256-px radiograph 3-5x faster than
#: Pillow's default 6 (3-5 ms instead of 14 ms on one core, measured here) for a file about
#: 17% larger; the pixels are the same (PNG is lossless).
PNG_COMPRESS_LEVEL = 1
#: Images submitted ahead of the one being collected, per worker (bounds memory).
PENDING_PER_WORKER = 4


class IngestItem(NamedTuple):
    """One image to store: its encoded ``data`` (``None``: already stored, pass through),
    a ``name`` for messages, the PNG's ``out_path`` and the target ``size`` (0 keeps it)."""

    data: bytes | None
    name: str
    out_path: Path
    size: int


class Stored(NamedTuple):
    """What became of one :class:`IngestItem`: ``error`` is None when the PNG was written
    (or already there), else the reason the image could not be decoded."""

    name: str
    out_path: Path
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the PNG exists."""
        return self.error is None


def default_workers() -> int:
    """The CPU cores this process may use (its affinity mask, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS and Windows have no affinity call
        return max(1, os.cpu_count() or 1)


def add_workers_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--workers N`` (decode/resize processes; default: the machine's cores)."""
    parser.add_argument(
        "--workers", type=int, default=None, metavar="N",
        help="processes that decode and resize images (default: this machine's "
             f"{default_workers()} cores; 0 decodes in the main process)")


def _open(data: bytes, name: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except Exception as err:  # PIL raises many types for broken files
        raise CorruptImageError(f"{name}: cannot decode image ({type(err).__name__}: "
                                f"{_clean(err)})") from None


def _clean(err: BaseException) -> str:
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(err))


def _drafted_square(img: Image.Image, size: int) -> Image.Image:
    """Draft-decode a JPEG and centre-crop + resize it like :func:`square_resize` does."""
    width, height = img.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    _, box = img.draft("L", (size, size))          # box: the original's extent after the draft
    scale = width / box[2] if box else 1.0
    img.load()
    if scale == 1.0:                               # too small to draft: the full decode's path
        return square_resize(img, size)
    crop = (left / scale, top / scale, (left + side) / scale, (top + side) / scale)
    return to_uint8(img).resize((size, size), Image.Resampling.LANCZOS, box=crop)


def square_resize_bytes(data: bytes, name: str, size: int, draft: bool = True) -> Image.Image:
    """Decode ``data`` and return the square ``size``-px grey image the fetchers store.

    ``draft=True`` lets a JPEG decode at a reduced scale first (within the tolerance stated
    in the module docstring); other formats, ``size <= 0`` and ``draft=False`` decode in full
    and go through :func:`data_fetch.sources._common.square_resize` unchanged. Raises
    :class:`~data_fetch.sources._common.CorruptImageError` for broken data.
    """
    img = _open(data, name)
    try:
        if draft and size > 0 and img.format == "JPEG":
            return _drafted_square(img, size)
        img.load()
        return square_resize(img, size)
    except CorruptImageError:
        raise
    except Exception as err:  # truncated files fail at load time
        raise CorruptImageError(f"{name}: cannot decode image ({type(err).__name__}: "
                                f"{_clean(err)})") from None


def save_png_atomic(img: Image.Image, path: Path) -> None:
    """Write ``img`` as PNG under a temporary name, then rename; on failure remove the
    temporary file, so neither a half PNG nor a stray temporary file is left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        img.save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def store_item(item: IngestItem, draft: bool = True) -> Stored:
    """Decode, resize and atomically save one item (the work a pool process does)."""
    data, name, out_path, size = item
    out_path = Path(out_path)
    if data is None:
        return Stored(name, out_path)
    try:
        save_png_atomic(square_resize_bytes(data, name, size, draft), out_path)
    except CorruptImageError as err:
        return Stored(name, out_path, str(err).split(": ", 1)[-1])
    return Stored(name, out_path)


def _store_batch(items: list[IngestItem], draft: bool) -> list[Stored]:
    return [store_item(item, draft) for item in items]


class ImagePool:
    """A pool of ``workers`` processes that store :class:`IngestItem` s in order.

    ``workers=None`` uses every core (:func:`default_workers`); ``workers=0`` works in the
    calling process (no pool; what tests and debuggers like). Use it as a context manager, or
    call :meth:`close`. ``batch`` items go to a worker at a time (fewer round trips for small
    images).
    """

    def __init__(self, workers: int | None = None, *, draft: bool = True, batch: int = 1) -> None:
        self.workers = default_workers() if workers is None else int(workers)
        if self.workers < 0:
            raise ValueError(f"workers must be 0 or more, got {workers}")
        self.draft = draft
        self.batch = max(1, int(batch))
        self._executor = ProcessPoolExecutor(self.workers) if self.workers > 0 else None

    def __enter__(self) -> "ImagePool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes (pending work is cancelled)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def map_store(self, items: Iterable[IngestItem | tuple]) -> Iterator[Stored]:
        """Store every item; yield one :class:`Stored` per item, in the order of ``items``.

        ``items`` is consumed lazily, at most ``workers * PENDING_PER_WORKER`` batches ahead
        of the result being yielded, so a generator that downloads or reads a tar stream
        keeps memory bounded. Undecodable images come back with ``error`` set; any other
        failure (disk full, a worker killed) raises.
        """
        if self._executor is None:
            for item in items:
                yield store_item(IngestItem(*item), self.draft)
            return
        pending: deque[Future] = deque()
        limit = self.workers * PENDING_PER_WORKER
        for chunk in _chunks(items, self.batch):
            pending.append(self._executor.submit(_store_batch, chunk, self.draft))
            if len(pending) >= limit:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def _chunks(items: Iterable[IngestItem | tuple], size: int) -> Iterator[list[IngestItem]]:
    chunk: list[IngestItem] = []
    for item in items:
        chunk.append(IngestItem(*item))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def store_all(items: Iterable[IngestItem | tuple], workers: int | None = None,
              draft: bool = True) -> list[Stored]:
    """Store ``items`` with a temporary :class:`ImagePool`; the results, in order."""
    with ImagePool(workers, draft=draft) as pool:
        return list(pool.map_store(items))


def radiograph_like(height: int, width: int, seed: int = 0, noise: float = 2.0) -> Image.Image:
    """A grey image with a radiograph's structure at a real size, for tests and benchmarks.

    Smooth anatomy-scale shading, rib-like bands and sensor noise: what makes real chest
    X-rays compress and decode as they do (a 2,500 x 3,000 one saved as JPEG at quality 95
    is about 1.5 MB, like a MIMIC-CXR-JPG file). Not a medical image.

    >>> radiograph_like(300, 250).size
    (250, 300)
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    body = 110 + 55 * np.sin(3.0 * np.pi * x) * np.cos(2.0 * np.pi * y + seed)
    lungs = 45 * np.exp(-(((x - 0.5) * 2.2) ** 2 + ((y - 0.45) * 2.0) ** 2) * 3.0)
    ribs = 18 * np.sin(y * 85.0 + 2.0 * np.sin(x * 6.0 + seed))
    image = body + lungs + ribs + rng.normal(0.0, noise, (height, width)).astype(np.float32)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), mode="L")
