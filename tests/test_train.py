"""Training loop: a short fit saves the best checkpoint, restores it, and is reproducible."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrlab.core.datasets import CXRDataset
from cxrlab.core.models import build_model
from cxrlab.core.train import History, fit, predict, seed_everything


def _data(n=48, size=16, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    images = np.clip(rng.normal(60 + 60 * y[:, None, None], 25, (n, size, size)), 0, 255)
    return images.astype(np.uint8), y


def test_one_epoch_saves_and_restores_best(tmp_path):
    images, y = _data()
    model = build_model("smallcnn", 3)
    ckpt = tmp_path / "best.pt"
    history = fit(model, CXRDataset(images, y, augment=True), CXRDataset(images[:24], y[:24]),
                  epochs=1, lr=1e-2, batch_size=16, patience=1, device="cpu",
                  task="multiclass", checkpoint=ckpt, progress=False)
    assert ckpt.exists() and history.best_epoch == 1 and len(history.epochs) == 1
    assert {"train_loss", "val_loss", "val_auc", "seconds"} <= set(history.epochs[0])
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, saved[name])
    proba = predict(model, images, device="cpu")
    assert proba.shape == (48, 3) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert model.task == "multiclass"


def test_early_stopping_restores_best_epoch(tmp_path, monkeypatch):
    import cxrlab.core.train as train

    images, y = _data()
    losses = iter([0.5, 0.3, 0.4, 0.45, 0.2])
    real = train._run_epoch
    snapshots = {}

    def scripted(model, loader, loss_fn, task, device, optimizer=None, desc="", progress=True,
                 scheduler=None):
        loss, ys, preds = real(model, loader, loss_fn, task, device, optimizer, desc, progress,
                               scheduler)
        if optimizer is None:
            snapshots[len(snapshots) + 1] = {k: v.clone() for k, v in model.state_dict().items()}
            return next(losses), ys, preds
        return loss, ys, preds

    monkeypatch.setattr(train, "_run_epoch", scripted)
    model = build_model("smallcnn", 3)
    history = fit(model, CXRDataset(images, y), CXRDataset(images[:12], y[:12]), epochs=5,
                  lr=1e-2, batch_size=16, patience=2, device="cpu", task="multiclass",
                  checkpoint=tmp_path / "b.pt", progress=False)
    assert history.best_epoch == 2 and len(history.epochs) == 4 and history.stopped_early
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, snapshots[2][name])


@pytest.mark.parametrize("aucs, best, trained", [
    ([0.8, 1.0, 0.9, 0.95, 0.97, 0.99], 2, 2),       # perfect at epoch 2: stops there
    ([1.0, 0.9, 0.95, 0.97, 0.99, 0.99], 1, 2),      # perfect at once: still a second epoch
    ([0.8, 0.9, 0.95, 0.97, 0.99, 0.999], 6, 6)])    # never perfect: every epoch
def test_a_perfect_validation_auc_ends_training(monkeypatch, aucs, best, trained):
    """No epoch can beat an AUC of 1.0, so training stops (from epoch 2) with the same best."""
    import cxrlab.core.train as train

    scripted = iter(aucs)
    monkeypatch.setattr(train, "_validation_metric", lambda task, y, pred: ("val_auc", next(scripted)))
    images, y = _data()
    history = fit(build_model("smallcnn", 3), CXRDataset(images, y), CXRDataset(images[:12], y[:12]),
                  epochs=6, lr=1e-2, batch_size=16, patience=5, device="cpu", task="multiclass",
                  monitor="val_auc", progress=False)
    assert history.best_epoch == best and len(history.epochs) == trained
    assert history.stopped_early is (trained < 6)


def test_a_perfect_auc_does_not_stop_a_run_watching_the_loss(monkeypatch):
    import cxrlab.core.train as train

    monkeypatch.setattr(train, "_validation_metric", lambda task, y, pred: ("val_auc", 1.0))
    images, y = _data()
    history = fit(build_model("smallcnn", 3), CXRDataset(images, y), CXRDataset(images[:12], y[:12]),
                  epochs=3, lr=1e-2, batch_size=16, patience=5, device="cpu", task="multiclass",
                  monitor="val_loss", progress=False)
    assert len(history.epochs) == 3


def test_reproducible_with_seed():
    images, y = _data(n=24)
    runs = []
    for _ in range(2):
        seed_everything(3)
        model = build_model("smallcnn", 3)
        fit(model, CXRDataset(images, y, augment=True), CXRDataset(images, y), epochs=1,
            batch_size=8, patience=1, device="cpu", seed=3, progress=False)
        runs.append(predict(model, images, device="cpu"))
    np.testing.assert_allclose(runs[0], runs[1], atol=1e-6)


@pytest.mark.parametrize("task", ["binary", "multilabel", "regression"])
def test_other_tasks(task):
    images, y = _data(n=32)
    if task == "binary":
        targets, n_out = (y > 0).astype(np.float32), 1
    elif task == "multilabel":
        targets = np.stack([(y > 0), (y > 1)], 1).astype(np.float32)
        targets[0, 1] = np.nan                       # unknown label is masked, not learned
        n_out = 2
    else:
        targets, n_out = (40 + 10 * y).astype(np.float32), 1
    model = build_model("smallcnn", n_out)
    history = fit(model, CXRDataset(images, targets), CXRDataset(images, targets), epochs=2,
                  lr=1e-2, batch_size=8, patience=2, device="cpu", task=task, progress=False)
    out = predict(model, images, device="cpu")
    assert np.isfinite([e["val_loss"] for e in history.epochs]).all()
    if task == "regression":
        assert out.shape == (32,) and "val_mae" in history.epochs[0]
        assert 20 < out.mean() < 80                 # predictions are in years, not z-scores
    else:
        assert out.shape == ((32,) if task == "binary" else (32, 2))
        assert ((out >= 0) & (out <= 1)).all()


def test_history_round_trip_and_plot():
    h = History(task="multiclass", epochs=[{"epoch": 1, "train_loss": 1.0, "val_loss": 0.9,
                                            "val_auc": 0.7, "seconds": 1.0}], best_epoch=1)
    assert History.from_dict(h.to_dict()) == h
    assert "best_epoch=1" in repr(h)


def test_inference_batches_follow_a_pixel_budget(monkeypatch):
    """Big images are predicted in smaller batches (memory), with the same predictions."""
    from cxrlab.core import models

    assert models.inference_batch_size(256, np.zeros((3, 64, 64))) == 64
    assert models.inference_batch_size(256, np.zeros((3, 128, 128))) == 16
    assert models.inference_batch_size(8, np.zeros((3, 128, 128))) == 8
    assert models.inference_batch_size(256, np.zeros((3, 4096, 4096))) == 1
    torch.manual_seed(0)
    net = models.build_model("smallcnn", 3)
    images = (np.random.default_rng(0).random((40, 32, 32)) * 255).astype(np.uint8)
    seen = []
    real_forward = net.forward
    monkeypatch.setattr(net, "forward", lambda x: seen.append(len(x)) or real_forward(x))
    whole = predict(net, images, batch_size=256)
    monkeypatch.setattr(models, "INFERENCE_PIXELS", 32 * 32 * 8)
    seen.clear()
    chunked = predict(net, images, batch_size=256)
    assert seen == [8] * 5
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)


def test_dataset_transform_runs_once_per_batch_during_fit():
    from cxrlab.toolbox import degrade

    images, y = _data(n=40)
    calls = []

    def high_pass(batch):
        calls.append(tuple(batch.shape))
        return degrade.high_pass(batch, 50)

    ds = CXRDataset(images, y, transform=high_pass)
    batch, targets = ds.collate([ds[0], ds[1]])
    expected = torch.stack([degrade.high_pass(ds[i][0], 50) for i in (0, 1)])
    assert torch.allclose(batch, expected, atol=1e-6) and targets.tolist() == y[:2].tolist()
    calls.clear()
    fit(build_model("smallcnn", 3), ds, CXRDataset(images[:8], y[:8], transform=high_pass),
        epochs=1, batch_size=16, patience=1, device="cpu", progress=False)
    assert calls[:3] == [(16, 1, 16, 16), (16, 1, 16, 16), (8, 1, 16, 16)]  # 40 train images
    assert len(calls) == 4                                                  # + one val batch


def test_release_unused_memory_returns_freed_heap_to_the_os():
    psutil = pytest.importorskip("psutil")
    import platform

    from cxrlab.core.train import release_unused_memory

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's")
    rss = lambda: psutil.Process().memory_info().rss / 2**20  # noqa: E731
    release_unused_memory()
    before = rss()
    chunks = [bytearray(64 * 1024) for _ in range(4000)]       # 250 MB in heap-sized pieces
    del chunks[:-1]                      # the last one pins the heap top: only a trim frees the rest
    held = rss()
    assert release_unused_memory() is True
    assert held - before > 200 and held - rss() > 150
