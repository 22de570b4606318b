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

The fetchers (``nih``, ``chexpert``, ``mimic``; ``--workers N``, see :func:`fetch_pool`) decide
each image in their own loop and use a :class:`StoreQueue`: it hands results back in order
and lets the loop wait for the ones a decision depends on (a ``--limit`` budget, an earlier
file of the same name), so the dataset is the same, byte for byte, with 1 or N workers. Worker
processes ignore Ctrl-C; the fetcher gets it, cancels what has not started and waits for the
PNGs being written. ``covid19_ar`` converts DICOMs, not JPEGs or PNGs: it hands its own
conversion to the pool with :meth:`ImagePool.call` and collects the results in order.

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

import os
import signal
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

from data_fetch.sources.images import (PNG_COMPRESS_LEVEL, CorruptImageError, corrupt,
                                       open_image, save_png, square_resize, to_uint8)

#: Largest difference, in grey levels of 255, that draft decoding may make (stated tolerance).
DRAFT_MAX_ABS_DIFF = 4
#: Largest mean difference over the image, in grey levels, that draft decoding may make.
DRAFT_MEAN_ABS_DIFF = 0.5
__all__ = ["DRAFT_MAX_ABS_DIFF", "DRAFT_MEAN_ABS_DIFF", "PENDING_PER_WORKER", "Done",
           "PNG_COMPRESS_LEVEL", "ImagePool", "IngestItem", "StoreQueue", "Stored",
           "default_workers", "fetch_pool", "radiograph_like", "save_png_atomic",
           "square_resize_bytes", "store_all", "store_item"]
#: Images submitted ahead of the one being collected, per worker (bounds memory).
PENDING_PER_WORKER = 4


class IngestItem(NamedTuple):
    """One image to store: its encoded ``data`` (``None``: already stored, pass through),
    a ``name`` for messages, the PNG's ``out_path`` and the target ``size`` (0 keeps it).

    ``skip``: with ``data=None``, the reason the caller left this image out without decoding
    it (a duplicate name, a member over the size cap, a failed read); it comes back as the
    result's ``error`` in its place in the order.
    """

    data: bytes | None
    name: str
    out_path: Path
    size: int
    skip: str | None = None


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
    :class:`~data_fetch.sources._common.CorruptImageError` for broken data, and for data over
    the fetchers' caps (:func:`data_fetch.sources.images.open_image`: bytes, then pixels).
    """
    img = open_image(data, name)
    try:
        if draft and size > 0 and img.format == "JPEG":
            return _drafted_square(img, size)
        img.load()
        return square_resize(img, size)
    except CorruptImageError:
        raise
    except Exception as err:  # truncated files fail at load time
        raise corrupt(name, err) from None


#: Write a PNG under a temporary name, then rename (the fetchers' one saver; a failure
#: leaves neither half a PNG nor a stray temporary file).
save_png_atomic = save_png


def store_item(item: IngestItem, draft: bool = True) -> Stored:
    """Decode, resize and atomically save one item (the work a pool process does)."""
    data, name, out_path, size, skip = IngestItem(*item)
    out_path = Path(out_path)
    if data is None:
        return Stored(name, out_path, skip)
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
    images). Workers ignore Ctrl-C: the calling process gets it, and closing the pool lets
    the images being written finish (each PNG is renamed into place whole) and stops them.
    """

    def __init__(self, workers: int | None = None, *, draft: bool = True, batch: int = 1) -> None:
        self.workers = default_workers() if workers is None else int(workers)
        if self.workers < 0:
            raise ValueError(f"workers must be 0 or more, got {workers}")
        self.draft = draft
        self.batch = max(1, int(batch))
        self._executor = (ProcessPoolExecutor(self.workers, initializer=_ignore_interrupts)
                          if self.workers > 0 else None)

    def __enter__(self) -> "ImagePool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes (pending work is cancelled)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def start(self, item: IngestItem) -> "Future | Done":
        """Begin storing one item: a future, or a finished one when no worker is needed
        (an item without data, or a pool of 0 workers, which stores it right here)."""
        if item.data is None or self._executor is None:
            return Done(store_item(item, self.draft))
        return self._executor.submit(store_item, item, self.draft)

    def call(self, fn: Callable[..., Any], *args: Any) -> "Future | Done":
        """Run ``fn(*args)`` in a worker: a future of its result. With 0 workers it runs here,
        at once, and the finished future holds its result or the exception it raised.

        For conversions that are not :func:`store_item` (the DICOMs of ``covid19_ar``);
        ``fn`` must be a module-level function (it is pickled to the worker).
        """
        if self._executor is None:
            return Done.run(fn, *args)
        return self._executor.submit(fn, *args)

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


def _ignore_interrupts() -> None:
    """Worker initializer: Ctrl-C is for the calling process, which stops the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Done:
    """A result known without waiting for a worker, shaped like a finished future."""

    def __init__(self, value: Any, error: Exception | None = None) -> None:
        self.value, self.error = value, error

    @classmethod
    def run(cls, fn: Callable[..., Any], *args: Any) -> "Done":
        """Call ``fn`` now; keep its result, or the exception, for :meth:`result` to give."""
        try:
            return cls(fn(*args))
        except Exception as err:  # noqa: BLE001 - raised again by result(), like a future's
            return cls(None, err)

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value

    def done(self) -> bool:
        return True

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False


class StoreQueue:
    """Hand :class:`IngestItem` s to an :class:`ImagePool` one at a time, as a fetcher's loop
    decides them; ``on_done(tag, stored)`` gets every result in the order of :meth:`put`.

    For loops that must know earlier results before deciding the next item (a ``--limit``
    budget, a duplicate name): :attr:`in_flight` and :meth:`pending` say what is undecided,
    :meth:`settle` waits for it. With a pool of 0 workers every result arrives inside
    :meth:`put`, exactly as a one-thread loop. Use it as a context manager: leaving the block
    normally waits for everything; leaving it with an error (or Ctrl-C) cancels what no worker
    has started, waits for what one has (so no half-written PNG), reports the images that
    were finished, and lets the error through.

    >>> done = []
    >>> with StoreQueue(ImagePool(0), lambda tag, s: done.append((tag, s.error))) as queue:
    ...     queue.put(IngestItem(None, "a.png", Path("a.png"), 32, "left out"), tag=7)
    >>> done
    [(7, 'left out')]
    """

    def __init__(self, pool: ImagePool, on_done: Callable[[Any, Stored], None]) -> None:
        self.pool, self.on_done = pool, on_done
        self._queue: deque[tuple[Any, Path, Future | Done]] = deque()
        self._paths: Counter[Path] = Counter()
        self._limit = max(1, pool.workers * PENDING_PER_WORKER)

    def __enter__(self) -> "StoreQueue":
        return self

    def __exit__(self, exc_type: type | None, *rest: object) -> None:
        if exc_type is None:
            self.settle()
        else:
            self.abandon()

    @property
    def in_flight(self) -> int:
        """Items put whose results have not been handed to ``on_done`` yet."""
        return len(self._queue)

    def pending(self, out_path: str | Path) -> bool:
        """Whether an item writing ``out_path`` is still in flight."""
        return self._paths[Path(out_path)] > 0

    def put(self, item: IngestItem | tuple, tag: Any = None) -> None:
        """Start storing ``item``; hand on the results that are due (in order), waiting for
        the oldest while more than ``workers * PENDING_PER_WORKER`` are in flight."""
        item = IngestItem(*item)
        path = Path(item.out_path)
        try:
            job = self.pool.start(item)
        except BrokenProcessPool:
            raise _stopped(path) from None
        self._queue.append((tag, path, job))
        self._paths[path] += 1
        while self._queue and (isinstance(self._queue[0][2], Done)
                               or len(self._queue) > self._limit):
            self._collect()

    def settle(self, out_path: str | Path | None = None) -> None:
        """Wait for every item in flight, or (``out_path``) until none writes that path."""
        while self._queue and (out_path is None or self.pending(out_path)):
            self._collect()

    def abandon(self) -> None:
        """Cancel the items no worker has started; wait for the others and report them."""
        jobs = list(self._queue)
        self._queue.clear()
        self._paths.clear()
        for _tag, _path, job in jobs:
            job.cancel()
        for tag, _path, job in jobs:
            if job.cancelled():
                continue
            try:
                stored = job.result()
            except Exception:  # noqa: BLE001 - the error that stopped the loop is the one to show
                continue
            self.on_done(tag, stored)

    def _collect(self) -> None:
        tag, path, job = self._queue.popleft()
        self._paths[path] -= 1
        try:
            stored = job.result()
        except BrokenProcessPool:
            raise _stopped(path) from None
        self.on_done(tag, stored)


def _stopped(path: Path) -> RuntimeError:
    """The error for a pool whose process died (the kernel's out-of-memory killer, a crash)."""
    return RuntimeError(f"a decoding process stopped while storing {path.name} (out of memory?);"
                        " the images stored so far are kept: run again, with a smaller --workers")


def fetch_pool(workers: int | None = None) -> ImagePool:
    """The pool a fetcher's ``--workers N`` asks for: N processes, except that N = 1 decodes
    in the fetcher's own process (no pool, as before) and None uses every core."""
    count = default_workers() if workers is None else int(workers)
    return ImagePool(0 if count == 1 else count)


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
