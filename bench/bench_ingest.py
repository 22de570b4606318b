"""Ingest speed and cache-building memory, on real-sized images this script makes.

1. ``data_fetch.ingest.ImagePool``: images/s for NIH-like 1,024 x 1,024 PNGs -> 256 px and
   MIMIC-CXR-JPG-like 2,500 x 3,000 JPEGs -> 320 px (with and without JPEG draft decoding),
   in the main process (``workers=0``) and with 1 and 2 worker processes. "per core" divides
   by the workers; "CPU ms/img" is the CPU time the decoding processes spent per image, which
   a busy shared machine inflates less than the wall clock.
2. ``cxrlab.core.cache.load_image_cache``: peak resident memory (VmHWM) of a fresh process that
   builds a cache of ``--cache-images`` images at 320 px (20,000 by default: 2 GB written
   under ``--workdir``, deleted afterwards).

Run under ``nice`` on a shared machine:
``nice .venv/bin/python bench/bench_ingest.py --workdir $CXRLAB_DATA/bench-ingest``.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from data_fetch.ingest import ImagePool, radiograph_like

MIMIC_IMAGES = 377_110          # MIMIC-CXR-JPG 2.0.0/2.1.0 (Johnson et al. 2019)


def _encode(img, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def make_sources(kind: str, distinct: int) -> list[bytes]:
    """``distinct`` encoded images of one kind (each different, so no cache helps)."""
    if kind == "png1024":
        return [_encode(radiograph_like(1024, 1024, seed=i), "PNG") for i in range(distinct)]
    return [_encode(radiograph_like(3000, 2500, seed=i), "JPEG", quality=95)
            for i in range(distinct)]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_pool(sources: list[bytes], n_images: int, size: int, workers: int, draft: bool,
              out: Path) -> dict:
    """Store ``n_images`` (cycling over ``sources``) and time it, pool start-up included."""
    out.mkdir(parents=True, exist_ok=True)
    items = ((sources[i % len(sources)], f"{i}.png", out / f"{i}.png", size)
             for i in range(n_images))
    cpu_before = children_cpu() if workers else self_cpu()
    start = time.perf_counter()
    with ImagePool(workers, draft=draft) as pool:
        failures = [r for r in pool.map_store(items) if not r.ok]
    wall = time.perf_counter() - start
    cpu = (children_cpu() if workers else self_cpu()) - cpu_before
    shutil.rmtree(out)
    if failures:
        raise RuntimeError(f"{len(failures)} images failed: {failures[0].error}")
    cores = max(workers, 1)
    return {"images": n_images, "workers": workers, "draft": draft, "seconds": round(wall, 2),
            "images_per_s": round(n_images / wall, 1),
            "images_per_s_per_core": round(n_images / wall / cores, 1),
            "cpu_ms_per_image": round(1000 * cpu / n_images, 1)}


def bench_ingest(workdir: Path, n_png: int, n_jpeg: int) -> list[dict]:
    rows = []
    plans = [("png1024", 256, n_png, [True]), ("jpeg2500x3000", 320, n_jpeg, [True, False])]
    for kind, size, n_images, drafts in plans:
        sources = make_sources(kind, 12)
        mb = sum(len(s) for s in sources) / len(sources) / 1e6
        for draft in drafts:
            for workers in (0, 1, 2):
                row = time_pool(sources, n_images, size, workers, draft, workdir / "ingest")
                row.update(kind=kind, size=size, source_mb=round(mb, 2))
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


BUILD_SNIPPET = r"""
import json, sys, time
import pandas as pd
from cxrlab.core.cache import load_image_cache
manifest = pd.read_csv(sys.argv[1])
start = time.perf_counter()
images = load_image_cache(manifest, int(sys.argv[2]), sys.argv[3], progress=False)
seconds = time.perf_counter() - start
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"images": len(images), "seconds": round(seconds, 1),
                  "bytes": int(images.nbytes),
                  "vm_hwm_mb": int(status["VmHWM"].split()[0]) // 1024,
                  "rss_file_mb_at_end": int(status["RssFile"].split()[0]) // 1024}))
"""


def bench_cache(workdir: Path, n_images: int, size: int, distinct: int) -> dict:
    """Peak RSS of a fresh process building an ``n_images`` cache at ``size`` px."""
    import pandas as pd

    folder = workdir / "cache-src"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(distinct):               # fetched PNGs at 512 px, as `--size 512` stores
        radiograph_like(512, 512, seed=i).save(folder / f"{i}.png")
    manifest = pd.DataFrame({"image_id": [f"i{k}" for k in range(n_images)],
                             "path": [f"{k % distinct}.png" for k in range(n_images)]})
    manifest["abspath"] = [str(folder / p) for p in manifest["path"]]
    manifest_csv = workdir / "cache-manifest.csv"
    manifest.to_csv(manifest_csv, index=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run([sys.executable, "-c", BUILD_SNIPPET, str(manifest_csv), str(size),
                               str(workdir / "cache")], env=env, check=True,
                              capture_output=True, text=True)
    finally:
        shutil.rmtree(workdir / "cache", ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
        manifest_csv.unlink(missing_ok=True)
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row.update(size=size, images_per_s=round(row["images"] / row["seconds"], 1))
    print(json.dumps(row), flush=True)
    return row


WRITER_SNIPPET = r"""
import json, sys
import numpy as np
n, size, path, how = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
chunk = np.random.default_rng(0).integers(0, 256, (128, size, size), dtype=np.uint8)
if how == "memmap":                     # the builder before: fill a writable memory map
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, size, size))
    for start in range(0, n, 128):
        array[start:start + 128] = chunk[:min(128, n - start)]
    array.flush()
    del array
else:                                   # cxrlab.core.cache now: header, then sequential writes
    with open(path, "wb") as out:
        np.lib.format.write_array_header_1_0(out, {"descr": "|u1", "fortran_order": False,
                                                   "shape": (n, size, size)})
        for start in range(0, n, 128):
            out.write(chunk[:min(128, n - start)].tobytes())
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"writer": how, "vm_hwm_mb": int(status["VmHWM"].split()[0]) // 1024}))
"""


def writer_rss(workdir: Path, n_images: int, size: int) -> list[dict]:
    """Peak RSS of writing an ``n_images`` cache through a memmap vs sequentially (no decoding:
    the difference is the dirty file pages a writable mapping keeps resident)."""
    rows = []
    for how in ("memmap", "sequential"):
        path = workdir / f"writer-{how}.npy"
        try:
            done = subprocess.run([sys.executable, "-c", WRITER_SNIPPET, str(n_images), str(size),
                                   str(path), how], check=True, capture_output=True, text=True)
        finally:
            path.unlink(missing_ok=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def mimic_projection(rows: list[dict], cores: int = 16) -> str:
    """What ``cores`` would take for MIMIC-CXR from the measured JPEG CPU cost per image."""
    jpeg = [r for r in rows if r["kind"].startswith("jpeg") and r["draft"] and r["workers"] == 2]
    if not jpeg:
        return ""
    ms = jpeg[0]["cpu_ms_per_image"]
    hours = MIMIC_IMAGES * ms / 1000 / cores / 3600
    return (f"MIMIC-CXR ({MIMIC_IMAGES:,} JPEGs -> 320 px) at {ms} CPU ms/image on {cores} "
            f"cores with linear scaling: {hours:.2f} h of decoding (reading 570 GB from disk "
            "or network not included)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="scratch folder (deleted)")
    parser.add_argument("--png-images", type=int, default=240)
    parser.add_argument("--jpeg-images", type=int, default=96)
    parser.add_argument("--cache-images", type=int, default=20_000,
                        help="images in the cache whose build memory is measured (0: skip)")
    parser.add_argument("--cache-size", type=int, default=320)
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f} "
          f"{load[2]:.1f} at start", flush=True)
    rows = [] if args.skip_ingest else bench_ingest(args.workdir, args.png_images,
                                                    args.jpeg_images)
    if rows:
        print(mimic_projection(rows))
    cache_row = (bench_cache(args.workdir, args.cache_images, args.cache_size, 200)
                 if args.cache_images else None)
    writers = writer_rss(args.workdir, args.cache_images, args.cache_size) \
        if args.cache_images else []
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"ingest": rows, "cache": cache_row, "writers": writers,
                                         "load_at_start": load}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
