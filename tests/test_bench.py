"""The benchmark scripts run (on tiny inputs): their numbers are measured, not written down."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from data_fetch.synthetic import SyntheticConfig, generate_cohort

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_bench_training_measures_cache_and_throughput(tmp_path):
    bench = _load("bench_training")
    generate_cohort(tmp_path / "c", SyntheticConfig(n_patients=12, image_size=32), progress=False)
    row = bench.cache_versus_png(tmp_path / "c", 32)
    assert row["images"] >= 12 and row["cache_s"] > 0 and row["png_s"] > 0
    assert row["speed-up"] == pytest.approx(row["png_s"] / row["cache_s"])
    assert bench.training_images_per_second("smallcnn", 32, batch_size=4, batches=1) > 0
    assert bench.inference_images_per_second("smallcnn", 32, images=8) > 0


def test_course_bench_table_has_a_total_row():
    bench = _load("run_course_bench")
    rows = [{"chapter": "ch00", "preset": "demo", "status": "ok", "wall_s": 10.0, "cpu_s": 8.0,
             "peak_kernel_rss_mb": 900, "gpu_libraries_mb": 200},
            {"chapter": "ch01", "preset": "demo", "status": "ok", "wall_s": 5.0, "cpu_s": 3.0,
             "peak_kernel_rss_mb": 950, "gpu_libraries_mb": 300}]
    table = bench.markdown_table(rows)
    assert "| ch00 | demo | ok | 10 | 8 | 900 | 200 | 700 |" in table
    assert "| **all** | demo | | **15** | **11** | **950** | | **700** |" in table


@pytest.mark.slow
def test_peak_memory_sampler_sees_a_child_and_its_torch_libraries():
    import subprocess
    import sys

    import torch

    bench = _load("run_course_bench")
    with bench.PeakKernelMemory(interval=0.05, maps_every=0.5) as memory:
        subprocess.run([sys.executable, "-c", "import torch, time; x = torch.ones(2**25); time.sleep(1.5)"],
                       check=True)
        subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\n"
                        "while time.process_time() - t < 1.0: pass"], check=True)
    assert memory.peak_bytes > 128 * 2**20                  # the 128 MB tensor was seen
    assert memory.cpu_seconds >= 0.7                        # the busy child's second of CPU
    if torch.version.cuda:                                  # the CUDA wheel maps its libraries
        assert 0 < memory.gpu_library_bytes < memory.peak_bytes
    else:
        assert memory.gpu_library_bytes == 0


def test_bench_calibration_parses_knobs_and_renders_in_memory():
    bench = _load("bench_calibration")
    assert bench.parse_settings(["group_signal=1.5", "signal_band=[0.03, 0.25]"]) == {
        "group_signal": 1.5, "signal_band": (0.03, 0.25)}
    table, images = bench.render_cohort(SyntheticConfig(n_patients=4, image_size=32))
    assert images.shape == (len(table), 32, 32) and images.dtype.name == "uint8"
    assert images.std() > 10, "rendered radiographs, not a blank stack"
