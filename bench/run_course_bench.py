"""Time and memory budget of the course: each chapter headless, per preset.

    .venv/bin/python bench/run_course_bench.py --presets demo workshop

For each preset, every chapter in ``solutions/`` runs in order (as ``make course`` does) in a
fresh data folder, so the first chapter pays for generating the cohort and training the
chapter-2 model, exactly as a learner starting cold would. While a chapter runs, a thread
samples the resident memory (RSS) of the kernel process every 0.2 s; the peak is reported.
Writes ``bench/results/course_<preset>.csv`` and prints a Markdown table to paste into
``bench/README.md``. Targets (issue 10): whole course on ``demo`` under 10 minutes on 2 cores;
each chapter on ``workshop`` under 15 minutes and under 1.5 GB peak kernel memory.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import psutil

from cxrlab.course import discover, run_chapter

ROOT = Path(__file__).resolve().parents[1]


GPU_LIBRARY_MARKERS = ("/nvidia/", "/triton/", "cuda", "cudnn", "cublas", "nccl")
"""Path fragments of the shared libraries a CUDA build of torch maps and a CPU build has not."""


def gpu_library_rss(process: psutil.Process) -> int:
    """Resident bytes of ``process``'s CUDA/Triton library mappings (0 with a CPU-only torch)."""
    return sum(m.rss for m in process.memory_maps()
               if any(marker in m.path for marker in GPU_LIBRARY_MARKERS))


class PeakKernelMemory:
    """Sample the RSS of this process's child processes (the Jupyter kernel) in a thread.

    ``peak_bytes`` is the highest RSS seen; ``gpu_library_bytes`` the most of it ever taken by
    CUDA and Triton libraries (read from the memory maps every ``maps_every`` seconds), which
    the CPU build of torch that Binder installs does not load.
    """

    def __init__(self, interval: float = 0.2, maps_every: float = 5.0):
        self.interval = interval
        self.maps_every = maps_every
        self.peak_bytes = 0
        self.gpu_library_bytes = 0
        self._cpu_by_pid: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        last_maps = 0.0
        while not self._stop.is_set():
            read_maps = time.monotonic() - last_maps >= self.maps_every
            for child in me.children(recursive=True):
                try:
                    self.peak_bytes = max(self.peak_bytes, child.memory_info().rss)
                    times = child.cpu_times()
                    self._cpu_by_pid[child.pid] = times.user + times.system
                    if read_maps:
                        self.gpu_library_bytes = max(self.gpu_library_bytes, gpu_library_rss(child))
                except psutil.Error:
                    pass
            if read_maps:
                last_maps = time.monotonic()
            time.sleep(self.interval)

    @property
    def cpu_seconds(self) -> float:
        """User + system CPU time of the kernel and its child processes, as last sampled.

        Every descendant is sampled on its own (its reaped children are not added again), so
        forked cohort workers count once; it misses at most the last 0.2 s of each process.
        It depends less on what else the machine does than wall time, but not little: when
        the cores are oversubscribed, torch's OpenMP threads spin while they wait, and that
        counts as CPU (the demo course read 1,408 CPU s at load 5-7 where a quieter run took
        604). Compare runs made at the same load and thread count.
        """
        return sum(self._cpu_by_pid.values())

    def __enter__(self) -> PeakKernelMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def bench_preset(preset: str, chapters: list[Path], data_dir: Path, out: Path) -> list[dict]:
    """Run ``chapters`` on ``preset`` with data in ``data_dir``; return one row per chapter."""
    os.environ["CXRLAB_DATA"] = str(data_dir)
    rows = []
    for path in chapters:
        with PeakKernelMemory() as memory:
            run = run_chapter(path, out / preset, preset=preset, timeout=3600)
        row = {"chapter": run.chapter, "preset": preset, "status": run.status,
               "wall_s": run.seconds, "cpu_s": round(memory.cpu_seconds, 1),
               "peak_kernel_rss_mb": round(memory.peak_bytes / 2**20),
               "gpu_libraries_mb": round(memory.gpu_library_bytes / 2**20)}
        print(f"{row['chapter']:<22} {preset:<9} {row['status']:<7} {row['wall_s']:>8.1f} s "
              f"(CPU {row['cpu_s']:.0f} s) {row['peak_kernel_rss_mb']:>6} MB (CUDA/Triton libraries {row['gpu_libraries_mb']} MB)"
              f"  {run.error or ''}", flush=True)
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """Rows as a Markdown table, with a total per preset."""
    lines = ["| chapter | preset | status | wall time (s) | CPU time (s) | peak kernel memory (MB) "
             "| of which CUDA/Triton libraries (MB) | peak without them (MB) |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['chapter']} | {r['preset']} | {r['status']} | {r['wall_s']:.0f} | {r.get('cpu_s', float('nan')):.0f} | "
                     f"{r['peak_kernel_rss_mb']} | {r['gpu_libraries_mb']} | "
                     f"{r['peak_kernel_rss_mb'] - r['gpu_libraries_mb']} |")
    for preset in dict.fromkeys(r["preset"] for r in rows):
        mine = [r for r in rows if r["preset"] == preset]
        total = sum(r["wall_s"] for r in mine)
        cpu = sum(r.get("cpu_s", 0.0) for r in mine)
        peak = max(r["peak_kernel_rss_mb"] for r in mine)
        cpu_peak = max(r["peak_kernel_rss_mb"] - r["gpu_libraries_mb"] for r in mine)
        lines.append(f"| **all** | {preset} | | **{total:.0f}** | **{cpu:.0f}** | **{peak}** | | **{cpu_peak}** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["demo"])
    parser.add_argument("--chapters", nargs="*", help="chapter names (default: all)")
    parser.add_argument("--warm", action="store_true",
                        help="reuse $CXRLAB_DATA instead of a fresh folder (caches warm)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    chapters = discover(ROOT / "solutions")
    if args.chapters:
        chapters = [p for p in chapters if p.stem in args.chapters or p.stem[:4] in args.chapters]
    print(f"{platform.node()}: {psutil.cpu_count()} CPUs, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB; torch build:", end=" ")
    import torch
    print(torch.__version__, "CUDA" if torch.version.cuda else "CPU-only")
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for preset in args.presets:
        with tempfile.TemporaryDirectory(prefix=f"bench-{preset}-") as tmp:
            data = Path(os.environ["CXRLAB_DATA"]) if args.warm else Path(tmp)
            preset_rows = bench_preset(preset, chapters, data, Path(tmp) / "build")
        with open(args.out / f"course_{preset}.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(preset_rows[0]))
            writer.writeheader()
            writer.writerows(preset_rows)
        rows += preset_rows
    print()
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
