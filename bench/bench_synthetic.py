"""Images per second of the synthetic generator at 64, 128 and 224 px (one process, one core).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/bench_synthetic.py [--images N] [--anatomy ct|drawn]``.
Prints a Markdown table of render-only and render+PNG-write rates, the time to build the CT
projection cache (``--cold``: into a fresh folder), and the time for the whole ``demo`` cohort.
Not a test: numbers depend on the machine and on what else runs on it.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from PIL import Image

from data_fetch.synthetic import CT_SIGNAL, SyntheticConfig, build_table, generate_cohort, make_renderer


def _knobs(anatomy: str) -> dict:
    """The group-signal knobs a renderer is calibrated with (``CT_SIGNAL`` for the CT one)."""
    return dict(CT_SIGNAL) if anatomy == "ct" else {}


def rate(size: int, n_images: int, folder: Path, anatomy: str) -> tuple[float, float]:
    """(render-only img/s, render+write img/s) at ``size`` px, in CPU time of this process.

    CPU time, not wall time, so the figure means "one core" even on a busy machine.
    """
    cfg = SyntheticConfig(n_patients=max(4, n_images // 2), image_size=size, anatomy=anatomy,
                          **_knobs(anatomy))
    rows = build_table(cfg).head(n_images).to_dict("records")
    renderer = make_renderer(cfg)
    t0 = time.process_time()
    images = [renderer.render(row, i) for i, row in enumerate(rows)]
    t1 = time.process_time()
    for i, (img, mask) in enumerate(images):
        Image.fromarray(img).save(folder / f"{size}-{i}.png")
        Image.fromarray(mask).save(folder / f"{size}-{i}-m.png")
    t2 = time.process_time()
    return len(rows) / (t1 - t0), len(rows) / (t2 - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="images per size")
    parser.add_argument("--skip-demo", action="store_true", help="skip the full demo cohort")
    parser.add_argument("--anatomy", default=SyntheticConfig().anatomy, choices=("ct", "drawn"))
    parser.add_argument("--cold", action="store_true",
                        help="time building the CT projection cache into a fresh folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.anatomy == "ct" and args.cold:
            import os

            from data_fetch.synthetic import ct

            os.environ[ct.ENV_CACHE] = str(Path(tmp) / "anatomy")
            t0, c0 = time.perf_counter(), time.process_time()
            ct.load_projections()
            print(f"CT projection cache: {time.process_time() - c0:.1f} s CPU, "
                  f"{time.perf_counter() - t0:.1f} s wall\n")
        print("| size (px) | render img/s (CPU time) | render + PNG img/s |\n|---|---|---|")
        for size in (64, 128, 224):
            r, w = rate(size, args.images, Path(tmp), args.anatomy)
            print(f"| {size} | {r:.0f} | {w:.0f} |")
        if not args.skip_demo:
            t0, c0 = time.perf_counter(), time.process_time()
            df = generate_cohort(Path(tmp) / "demo",
                                 SyntheticConfig(n_patients=800, image_size=64, anatomy=args.anatomy,
                                                 **_knobs(args.anatomy)),
                                 progress=False)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            print(f"\ndemo cohort: {len(df)} images, {cpu:.1f} s CPU, {wall:.1f} s wall")


if __name__ == "__main__":
    main()
