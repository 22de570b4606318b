"""Parallel ingest: same pixels as the one-thread fetchers, stream order, atomic writes, and
JPEG draft decoding within its stated tolerance on a real-sized radiograph."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from data_fetch import ingest
from data_fetch.sources import _common as C


def _encoded(img: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def mimic_sized_jpeg() -> bytes:
    """A 2,500 x 3,000 radiograph-like JPEG, as MIMIC-CXR-JPG ships them."""
    return _encoded(ingest.radiograph_like(3000, 2500, seed=1), "JPEG", quality=95)


def _pixels(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img, dtype=np.int16)


def test_draft_decoding_within_the_stated_tolerance(mimic_sized_jpeg, tmp_path):
    assert 1_000_000 < len(mimic_sized_jpeg) < 3_000_000       # a real file's size, not a toy
    full = np.asarray(C.square_resize(C.decode_image(mimic_sized_jpeg, "x"), 320), np.int16)
    drafted = np.asarray(ingest.square_resize_bytes(mimic_sized_jpeg, "x", 320), np.int16)
    assert drafted.shape == full.shape == (320, 320)
    diff = np.abs(drafted - full)
    assert diff.max() <= ingest.DRAFT_MAX_ABS_DIFF, diff.max()
    assert diff.mean() <= ingest.DRAFT_MEAN_ABS_DIFF, diff.mean()
    assert diff.max() > 0            # the draft path really ran (it is not the full decode)


def test_draft_is_off_for_png_and_when_asked(mimic_sized_jpeg):
    full = np.asarray(C.square_resize(C.decode_image(mimic_sized_jpeg, "x"), 320))
    exact = np.asarray(ingest.square_resize_bytes(mimic_sized_jpeg, "x", 320, draft=False))
    np.testing.assert_array_equal(exact, full)
    png = _encoded(ingest.radiograph_like(1024, 1024, seed=2), "PNG")
    np.testing.assert_array_equal(
        np.asarray(ingest.square_resize_bytes(png, "p", 256)),
        np.asarray(C.square_resize(C.decode_image(png, "p"), 256)))


def test_pool_matches_store_image_in_order_and_reports_corrupt_files(tmp_path):
    sources = [ingest.radiograph_like(300 + 20 * i, 280, seed=i) for i in range(7)]
    payloads = [_encoded(img, "PNG") for img in sources]
    payloads[3] = b"not an image at all"
    items = [(data, f"img{i}.png", tmp_path / "out" / f"img{i}.png", 64)
             for i, data in enumerate(payloads)]
    with ingest.ImagePool(workers=2, batch=2) as pool:
        results = list(pool.map_store(iter(items)))
    assert [r.name for r in results] == [f"img{i}.png" for i in range(7)]
    assert [r.ok for r in results] == [True, True, True, False, True, True, True]
    assert "cannot decode image" in results[3].error
    assert not (tmp_path / "out" / "img3.png").exists()
    for i in (0, 6):
        reference = tmp_path / f"ref{i}.png"
        C.store_image(payloads[i], f"img{i}.png", reference, 64)
        np.testing.assert_array_equal(_pixels(results[i].out_path), _pixels(reference))
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_already_stored_items_pass_through_without_work(tmp_path):
    out = tmp_path / "kept.png"
    results = ingest.store_all([(None, "kept.png", out, 64)], workers=0)
    assert results == [ingest.Stored("kept.png", out, None)] and not out.exists()


def test_pool_reads_the_stream_lazily(tmp_path):
    """A long stream is not read ahead without bound: memory stays bounded."""
    data = _encoded(ingest.radiograph_like(64, 64), "PNG")
    read = []

    def stream():
        for i in range(200):
            read.append(i)
            yield data, f"{i}.png", tmp_path / f"{i}.png", 32

    with ingest.ImagePool(workers=1) as pool:
        results = pool.map_store(stream())
        next(results)
        assert len(read) <= 1 + ingest.PENDING_PER_WORKER
        assert len(list(results)) == 199


def test_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import builtins

    from data_fetch import paths

    data = _encoded(ingest.radiograph_like(64, 64), "JPEG")

    class FullDisk:
        """A file that takes half of what is written, then reports a full disk."""

        def __init__(self, path, mode):
            self.handle = builtins.open(path, mode)

        def write(self, payload):
            self.handle.write(payload[: len(payload) // 2])   # half a PNG reaches the disk
            raise OSError(28, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(paths, "open", FullDisk, raising=False)
    with pytest.raises(OSError, match="No space"):
        ingest.store_all([(data, "a.jpg", tmp_path / "out" / "a.png", 32)], workers=0)
    assert os.listdir(tmp_path / "out") == []


def test_pool_sizes():
    for workers, expected in ((None, ingest.default_workers()), (1, 0), (2, 2)):
        with ingest.fetch_pool(workers) as pool:       # --workers 1: this process, no pool
            assert pool.workers == expected
    with ingest.ImagePool(None) as pool:
        assert pool.workers == ingest.default_workers() >= 1
    with pytest.raises(ValueError):
        ingest.ImagePool(-1)


def _bench_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_ingest.py"
    spec = importlib.util.spec_from_file_location("bench_ingest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_bench_ingest_measures_on_tiny_inputs(tmp_path):
    bench = _bench_module()
    sources = [_encoded(ingest.radiograph_like(200, 160, seed=i), "JPEG") for i in range(2)]
    row = bench.time_pool(sources, 6, 64, 1, True, tmp_path / "out")
    assert row["images"] == 6 and row["cpu_ms_per_image"] > 0 and row["images_per_s"] > 0
    assert not (tmp_path / "out").exists()
    cache = bench.bench_cache(tmp_path, 40, 16, 4)
    assert cache["images"] == 40 and cache["bytes"] == 40 * 16 * 16 and cache["vm_hwm_mb"] > 0
    writers = bench.writer_rss(tmp_path, 300, 64)
    assert [w["writer"] for w in writers] == ["memmap", "sequential"]
    assert list(tmp_path.iterdir()) == []            # everything it wrote is gone
    assert "16 cores" in bench.mimic_projection([{**row, "kind": "jpeg", "workers": 2}])


def test_a_killed_worker_is_one_clear_error(tmp_path):
    """A decoder process that dies (the kernel's OOM killer) stops the run with a sentence."""
    data = _encoded(ingest.radiograph_like(64, 64), "PNG")
    done = []
    with ingest.ImagePool(workers=1) as pool:
        with pytest.raises(RuntimeError, match="decoding process stopped.*--workers"):
            with ingest.StoreQueue(pool, lambda tag, stored: done.append(stored)) as queue:
                queue.put((data, "a.png", tmp_path / "a.png", 32))
                queue.settle()
                for process in list(pool._executor._processes.values()):
                    process.kill()
                    process.join()
                queue.put((data, "b.png", tmp_path / "b.png", 32))
                queue.settle()
    assert [s.name for s in done] == ["a.png"] and (tmp_path / "a.png").exists()


def test_store_queue_keeps_order_and_waits_for_a_path_in_flight(tmp_path):
    good = _encoded(ingest.radiograph_like(64, 64), "PNG")
    items = [(good, "0", tmp_path / "0.png", 16), (b"broken", "1", tmp_path / "1.png", 16),
             (None, "2", tmp_path / "2.png", 16, "left out"), (good, "3", tmp_path / "3.png", 16)]
    done = []
    with ingest.ImagePool(workers=2) as pool:
        with ingest.StoreQueue(pool, lambda tag, stored: done.append((tag, stored.error))) as queue:
            for i, item in enumerate(items):
                queue.put(item, tag=i)
            assert queue.pending(tmp_path / "3.png") or done[-1][0] == 3
            queue.settle(tmp_path / "3.png")
            assert not queue.pending(tmp_path / "3.png") and queue.in_flight == 0
    assert [tag for tag, _ in done] == [0, 1, 2, 3]
    assert done[0][1] is None and "cannot decode" in done[1][1] and done[2][1] == "left out"
