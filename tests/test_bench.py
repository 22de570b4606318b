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


def test_course_bench_table_has_a_total_row():
    bench = _load("run_course_bench")
    rows = [{"chapter": "ch00", "preset": "demo", "status": "ok", "wall_s": 10.0, "peak_kernel_rss_mb": 900},
            {"chapter": "ch01", "preset": "demo", "status": "ok", "wall_s": 5.0, "peak_kernel_rss_mb": 950}]
    table = bench.markdown_table(rows)
    assert "| **all** | demo | | **15** | **950** |" in table
