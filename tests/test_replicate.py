"""The replication command on CPU: 2 gloo processes = 1 process with the same global batch,
and a run killed mid-epoch resumes from its checkpoint to the same result.

Every run is a child process forked from the test (the entry point ``replicate.main`` reads
``RANK``/``WORLD_SIZE`` as under torchrun); the test process itself never computes with torch.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import socket
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrlab.core.cache import load_image_cache
from cxrlab.core import replicate
from data_fetch.manifest import write_manifest

pytestmark = pytest.mark.slow

SIZE = 24
CLASSES = ("A", "B", "C")


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory) -> str:
    """96 images of 48 patients (train 64, val 16, test 16) whose class shows as a bright blob
    in one of three places, with noise; the cache is built once here."""
    folder = tmp_path_factory.mktemp("tiny")
    (folder / "images").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for patient in range(48):
        split = "train" if patient < 32 else ("val" if patient < 40 else "test")
        group = patient % 3
        for view in range(2):
            image = rng.normal(100, 25, (SIZE, SIZE))
            image[4:12, 2 + 7 * group:9 + 7 * group] += rng.uniform(20, 70)
            name = f"images/p{patient}_{view}.png"
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / name)
            rows.append({"image_id": f"p{patient}_{view}", "path": name,
                         "patient_id": f"p{patient}", "study_id": f"s{patient}_{view}",
                         "split": split, "view": "PA", "sex": "F", "age": 50.0,
                         "race": CLASSES[group], "ethnicity": pd.NA, "bmi": np.nan,
                         "site": "x", "source": "synthetic", "no_finding": True})
    write_manifest(pd.DataFrame(rows), folder)
    manifest = pd.read_csv(folder / "manifest.csv")
    manifest["abspath"] = [str(folder / p) for p in manifest["path"]]
    load_image_cache(manifest, SIZE, folder / "cache", progress=False)
    # The first Adam imports torch._dynamo (seconds, more on a busy machine): do it once
    # here so the forked runs inherit it instead of each importing it again.
    torch.optim.Adam(torch.nn.Linear(1, 1).parameters())
    return str(folder)


def _argv(data_dir: str, out, *extra: str) -> list[str]:
    return ["--source", "synthetic", "--data-dir", data_dir, "--out", str(out),
            "--model", "smallcnn", "--image-size", str(SIZE), "--batch-size", "16",
            "--epochs", "3", "--patience", "3", "--bootstrap", "10", "--no-pretrained",
            "--save-predictions", *extra]


def _process(rank: int, world: int, port: int, argv: list[str]) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    sys.stdout = open(os.path.join(argv[argv.index("--out") + 1], f"log{rank}.txt"), "a")
    code = replicate.main(argv)
    sys.stdout.flush()
    os._exit(code)


def _launch(world: int, argv: list[str], timeout: float = 120) -> list[int]:
    """Run ``replicate.main(argv)`` in ``world`` forked processes, as torchrun would."""
    os.makedirs(argv[argv.index("--out") + 1], exist_ok=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    fork = multiprocessing.get_context("fork")
    children = [fork.Process(target=_process, args=(rank, world, port, argv))
                for rank in range(world)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout)
        if child.is_alive():
            child.kill()
    return [child.exitcode for child in children]


def _predictions(out) -> np.ndarray:
    return np.load(out / "test_predictions.npy")


def test_two_gloo_processes_match_one_and_a_killed_run_resumes(tiny_cohort, tmp_path):
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    assert _launch(1, _argv(tiny_cohort, one)) == [0]
    assert _launch(2, _argv(tiny_cohort, two)) == [0, 0]

    p1, p2 = _predictions(one), _predictions(two)
    assert p1.shape == (16, 3) and np.allclose(p1.sum(1), 1, atol=1e-5)
    assert np.abs(p1 - p2).max() < 1e-4, np.abs(p1 - p2).max()
    untrained = 1 / 3
    assert np.abs(p1 - untrained).max() > 0.05       # training moved the predictions
    r1 = json.loads((one / "results.json").read_text())
    r2 = json.loads((two / "results.json").read_text())
    assert r2["world_size"] == 2 and r1["world_size"] == 1
    assert [e["val_loss"] for e in r1["history"]] == pytest.approx(
        [e["val_loss"] for e in r2["history"]], abs=1e-4)
    assert [row["class"] for row in r1["test_auc"]] == list(CLASSES)
    assert r1["table3"][0]["paper_class"] == "" and r1["table3"][0]["comparison"] == \
        "for scale only"                          # synthetic groups are never paired with races

    # 4 steps per epoch; checkpoints every 3 steps; killed at step 7 = epoch 2, step 3
    interrupted = _argv(tiny_cohort, killed, "--checkpoint-every", "3")
    assert _launch(1, [*interrupted, "--stop-after-steps", "7"]) == [-9]
    saved = torch.load(killed / "checkpoint.pt", weights_only=True)["progress"]
    assert (saved["epoch"], saved["step"], saved["global_step"]) == (1, 3, 7)
    assert not (killed / "results.json").exists()
    assert _launch(1, interrupted) == [0]
    log = (killed / "log0.txt").read_text()
    assert "resuming from" in log and "epoch 2, step 3" in log
    np.testing.assert_allclose(_predictions(killed), p1, atol=1e-6)


def test_recipe_follows_the_preset_and_refuses_a_changed_one(tmp_path):
    recipe = replicate.Recipe.from_preset("full")
    assert (recipe.image_size, recipe.batch_size, recipe.model, recipe.lr) == \
        (320, 256, "resnet34", 1e-3)
    assert replicate.Recipe.from_preset("full", image_size=64).image_size == 64
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    procs = replicate.Processes(0, 1, torch.device("cpu"))
    precision = replicate.Precision(procs.device)
    replicate.write_checkpoint(tmp_path / "c.pt", model, optimizer, precision,
                               replicate.Progress(history=[]), recipe)
    with pytest.raises(ValueError, match="image_size"):
        replicate.read_checkpoint(tmp_path / "c.pt", model, optimizer, precision,
                                  replicate.Recipe.from_preset("full", image_size=64))


def test_a_source_without_race_labels_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(4):
        Image.fromarray(np.full((SIZE, SIZE), 40 * i, np.uint8)).save(tmp_path / f"images/{i}.png")
        rows.append({"image_id": str(i), "path": f"images/{i}.png", "patient_id": str(i),
                     "study_id": str(i), "split": "train", "view": "PA", "sex": "M",
                     "age": 40.0, "race": pd.NA, "ethnicity": pd.NA, "bmi": np.nan,
                     "site": "x", "source": "nih", "no_finding": True})
    write_manifest(pd.DataFrame(rows), tmp_path)
    code = replicate.main(["--source", "mimic", "--data-dir", str(tmp_path), "--image-size",
                           str(SIZE), "--out", str(tmp_path / "run")])
    assert code == 2
    assert "needs race labels" in capsys.readouterr().err


def test_augmentation_depends_on_seed_epoch_and_row_only():
    images = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE), dtype=np.uint8)
    labels = np.array([0, 1, 2])
    a = replicate.CacheImages(images, labels, np.arange(3), augment=True, seed=1)
    b = replicate.CacheImages(images, labels, np.array([2, 1]), augment=True, seed=1)
    x, y = a[1]
    assert x.dtype == torch.uint8 and x.shape == (1, SIZE, SIZE) and int(y) == 1
    torch.rand(5)                                             # global RNG use changes nothing
    assert torch.equal(b[1][0], x)                            # same row, another subset
    assert not torch.equal(x, torch.from_numpy(images[1]).unsqueeze(0))   # it did augment
    a.epoch = 1
    assert not torch.equal(a[1][0], x)                        # a new epoch, a new draw


def test_bench_replicate_counts_flops_and_activations():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_replicate.py"
    spec = importlib.util.spec_from_file_location("bench_replicate", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from cxrlab.core.models import build_model

    model = build_model("smallcnn", 3)
    small, large = (bench.activation_bytes_per_image(model, s) for s in (32, 64))
    assert small > 0 and large == pytest.approx(4 * small, rel=0.05)     # grows with pixels
    assert bench.forward_flops(model, 64) == pytest.approx(4 * bench.forward_flops(model, 32),
                                                           rel=0.05)
    assert bench.cpu_training_speed(model, 32, batch=4, steps=1) > 0


def test_a_synthetic_replication_asks_for_the_presets_sizes(monkeypatch, tmp_path):
    """data_fetch knows no presets: the replication passes the preset's sizes and its name as label."""
    from cxrlab.core import replicate
    from data_fetch import synthetic

    calls = {}
    monkeypatch.setattr(synthetic, "prepare", lambda **kw: calls.update(kw) or tmp_path)
    assert replicate._dataset_folder("synthetic", None, None, 40, "full") == tmp_path
    assert calls == {"label": "full", "progress": False, "n_patients": 40, "image_size": 320}
