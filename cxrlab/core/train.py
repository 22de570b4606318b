"""The training loop: progress bar, validation each epoch, early stopping, best checkpoint.

Tasks and their losses:

=============  ==============================  ==========================  =================
task           targets                         loss                        ``predict`` gives
=============  ==============================  ==========================  =================
multiclass     int class index                 cross-entropy               softmax (N, C)
binary         0/1                             BCE with logits             sigmoid (N,)
multilabel     (K,) of 0/1, NaN = unknown      BCE per column, NaN masked  sigmoid (N, K)
regression     float (e.g. age in years)       L1 (or MSE), standardised   values (N,)
=============  ==============================  ==========================  =================

>>> history = fit(model, train_ds, val_ds, epochs=6, lr=2e-3, batch_size=32, patience=2,
...               device="cpu", task="multiclass", checkpoint="best.pt")   # doctest: +SKIP
>>> proba = predict(model, images, device="cpu")                          # doctest: +SKIP
"""
from __future__ import annotations

import copy
import ctypes
import gc
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from cxrlab.core.targets import task_spec


def release_unused_memory() -> bool:
    """Collect garbage and hand the heap's free pages back to the operating system.

    Training frees its batches, gradients and optimiser state, but glibc keeps the freed heap
    and the kernel's resident memory stays at its training peak; on Binder (about 2 GB) that
    is memory the later cells cannot have. Calls glibc's ``malloc_trim``; returns False where
    there is no glibc (macOS, Windows, musl), which is harmless.
    """
    gc.collect()
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (CPU and GPU) for reproducible runs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class History:
    """What happened in :func:`fit`: one dict per epoch and the epoch whose weights were kept.

    ``epochs[i]`` has ``epoch, train_loss, val_loss, seconds, images_per_s`` and ``val_auc``
    (macro, classification) or ``val_mae`` (regression).
    """

    task: str
    monitor: str = "val_loss"
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False

    @property
    def best(self) -> dict[str, float]:
        """The record of the best epoch."""
        if self.best_epoch is None:
            raise ValueError("no epoch has been run")
        return next(e for e in self.epochs if e["epoch"] == self.best_epoch)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"task": self.task, "monitor": self.monitor, "epochs": self.epochs,
                "best_epoch": self.best_epoch, "stopped_early": self.stopped_early}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "History":
        """Inverse of :meth:`to_dict`."""
        return cls(**data)

    def plot(self, ax=None):
        """Loss and the validation metric per epoch (see :func:`cxrlab.core.plots.plot_history`)."""
        from cxrlab.core.plots import plot_history

        return plot_history(self, ax=ax)

    def __repr__(self) -> str:
        if not self.epochs:
            return f"History(task={self.task!r}, no epochs)"
        best = self.best
        metric = "val_auc" if "val_auc" in best else "val_mae"
        return (f"History(task={self.task!r}, epochs={len(self.epochs)}, "
                f"best_epoch={self.best_epoch}, {metric}={best.get(metric, float('nan')):.3f})")


def _outputs_to_predictions(out: torch.Tensor, task: str, model: nn.Module) -> torch.Tensor:
    """Predictions from raw outputs; regression values are scaled back to the target's units."""
    pred = task_spec(task).to_predictions(out)
    if _is_regression(task):                         # undo the target scaling
        shift, scale = _target_scaling(model)
        pred = pred * scale + shift
    return pred


def _target_scaling(model: nn.Module) -> tuple[float, float]:
    shift = getattr(model, "target_shift", None)
    scale = getattr(model, "target_scale", None)
    return (float(shift) if shift is not None else 0.0, float(scale) if scale is not None else 1.0)


def _set_target_scaling(model: nn.Module, train_ds: Dataset) -> None:
    targets = np.asarray(getattr(train_ds, "targets", []), dtype=float)
    if targets.size == 0 or not hasattr(model, "target_shift"):
        return
    model.target_shift.fill_(float(np.nanmean(targets)))
    model.target_scale.fill_(float(np.nanstd(targets)) or 1.0)


def _scaled_targets(y: torch.Tensor, task: str, model: nn.Module) -> torch.Tensor:
    if not _is_regression(task):
        return y
    shift, scale = _target_scaling(model)
    return (y - shift) / scale


def _is_regression(task: str) -> bool:
    return task_spec(task).name == "regression"


def _validation_metric(task: str, y: np.ndarray, pred: np.ndarray) -> tuple[str, float]:
    from cxrlab.core.metrics import macro_auc

    if _is_regression(task):
        return "val_mae", float(np.mean(np.abs(pred - y)))
    try:
        return "val_auc", float(macro_auc(y, pred))
    except ValueError:
        return "val_auc", float("nan")


def _scheduler(optimizer, kind: str | None, total_steps: int):
    if kind is None:
        return None
    if kind != "cosine":
        raise ValueError(f"unknown lr_schedule {kind!r}; use 'cosine' or None")
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1),
                                                      eta_min=optimizer.defaults["lr"] * 0.01)


def _run_epoch(model, loader, loss_fn, task, device, optimizer=None, desc="", progress=True,
               scheduler=None):
    training = optimizer is not None
    model.train(training)
    total, count, preds, ys = 0.0, 0, [], []
    with torch.set_grad_enabled(training), tqdm(loader, desc=desc, leave=False,
                                                 disable=not progress, unit="batch") as bar:
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x)
            loss = loss_fn(out, _scaled_targets(y, task, model))
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
            else:
                preds.append(_outputs_to_predictions(out, task, model).float().cpu())
                ys.append(y.cpu())
            total += float(loss.detach()) * len(x)
            count += len(x)
            bar.set_postfix(loss=f"{total / count:.3f}")
    if training:
        return total / max(count, 1), None, None
    return total / max(count, 1), torch.cat(ys).numpy(), torch.cat(preds).numpy()


def _improved(value: float, best: float | None, monitor: str) -> bool:
    if np.isnan(value):
        return best is None
    if best is None or np.isnan(best):
        return True
    return value > best if monitor == "val_auc" else value < best


def checkpoint_safe(value: Any) -> Any:
    """``value`` with NumPy arrays as tensors and NumPy scalars as Python numbers.

    What :func:`load_checkpoint` can read back with ``weights_only=True`` (tensors, dicts,
    lists, tuples, strings, numbers, None), so no checkpoint needs the unsafe unpickler.

    >>> checkpoint_safe({"a": np.float64(0.5), "b": np.arange(2)})
    {'a': 0.5, 'b': tensor([0, 1])}
    """
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value).copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: checkpoint_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(checkpoint_safe(v) for v in value)
    return value


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` plain values (:func:`checkpoint_safe`) to a temporary file, then rename
    (a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(checkpoint_safe(state), tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``: tensors and plain values only.

    A file whose unpickling would import or call anything else (a crafted ``.pt`` can run code
    with ``weights_only=False``) raises ``pickle.UnpicklingError`` instead of running it.
    """
    return torch.load(path, map_location=device, weights_only=True)


def _validation_batch_size(val_ds: Dataset, batch_size: int) -> int:
    """At least the training batch, at most 128 images or the inference pixel budget."""
    from cxrlab.core.models import inference_batch_size

    if len(val_ds) == 0:
        return max(batch_size, 128)
    return max(batch_size, inference_batch_size(128, val_ds[0][0]))


def _loader(ds: Dataset, batch_size: int, shuffle: bool, seed: int, device: torch.device,
            num_workers: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      num_workers=num_workers, pin_memory=device.type == "cuda",
                      persistent_workers=num_workers > 0,
                      collate_fn=getattr(ds, "collate", None))   # CXRDataset: batch transforms


def fit(
    model: nn.Module,
    train_ds: Dataset,
    val_ds: Dataset,
    *,
    epochs: int = 6,
    lr: float = 1e-3,
    batch_size: int = 32,
    patience: int = 2,
    device: str | torch.device | None = None,
    task: str = "multiclass",
    checkpoint: str | Path | None = None,
    seed: int = 0,
    weight_decay: float = 1e-4,
    monitor: str = "val_loss",
    regression_loss: str = "l1",
    lr_schedule: str | None = "cosine",
    num_workers: int = 0,
    progress: bool = True,
) -> History:
    """Train ``model`` with Adam, validate each epoch, stop early, keep the best weights.

    The weights of the epoch with the best ``monitor`` (``"val_loss"``, lower is better, or
    ``"val_auc"``, higher is better) are saved to ``checkpoint`` (atomically; kept in memory
    when ``checkpoint`` is None) and loaded back into ``model`` at the end. Training stops
    after ``patience`` epochs without improvement, or (``monitor="val_auc"``) as soon as the
    validation AUC is perfect, from the second epoch on: no later epoch could beat it, so the
    weights kept are the same and the remaining epochs would only cost time (the course's
    synthetic race models reach 1.0 within a few epochs). ``seed`` fixes initialisation order,
    shuffling and augmentation. For regression the targets are standardised with the training
    mean and std (stored in the model, so :func:`predict` answers in the original units).

    ``lr_schedule="cosine"`` decays the learning rate from ``lr`` to near zero over
    ``epochs`` (per batch), which settles a short CPU run; ``None`` keeps it constant.

    Returns a :class:`History`; ``model.task`` is set to ``task``.
    """
    if monitor not in ("val_loss", "val_auc"):
        raise ValueError("monitor must be 'val_loss' or 'val_auc'")
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise ValueError(f"need training and validation images, got {len(train_ds)} and "
                         f"{len(val_ds)}")
    seed_everything(seed)
    device = pick_device(device)
    loss_fn = task_spec(task).loss(regression_loss)
    model.to(device)
    model.task = task
    if _is_regression(task):
        _set_target_scaling(model, train_ds)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    train_loader = _loader(train_ds, batch_size, True, seed, device, num_workers)
    val_loader = _loader(val_ds, _validation_batch_size(val_ds, batch_size), False, seed, device,
                         num_workers)
    scheduler = _scheduler(optimizer, lr_schedule, epochs * len(train_loader))
    history = History(task=task, monitor=monitor)
    best_value, best_state, waited = None, None, 0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        train_loss, _, _ = _run_epoch(model, train_loader, loss_fn, task, device, optimizer,
                                      f"epoch {epoch}/{epochs} train", progress, scheduler)
        seconds = time.perf_counter() - start
        val_loss, y, pred = _run_epoch(model, val_loader, loss_fn, task, device,
                                       desc=f"epoch {epoch}/{epochs} val", progress=progress)
        name, value = _validation_metric(task, y, pred)
        record = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, name: value,
                  "seconds": round(seconds, 2),
                  "images_per_s": round(len(train_ds) / max(seconds, 1e-9), 1)}
        history.epochs.append(record)
        current = value if monitor == "val_auc" and name == "val_auc" else val_loss
        watched = monitor if name == "val_auc" else "val_loss"
        if _improved(current, best_value, watched):
            best_value, waited, history.best_epoch = current, 0, epoch
            best_state = copy.deepcopy(model.state_dict())
            if checkpoint is not None:
                save_checkpoint({"state_dict": best_state, "epoch": epoch,
                                 "history": history.to_dict()}, checkpoint)
        else:
            waited += 1
        if progress:
            print(_epoch_line(record, epoch == history.best_epoch))
        if waited >= patience or _cannot_improve(best_value, watched, epoch):
            history.stopped_early = epoch < epochs
            break
    _restore_best(model, checkpoint, best_state, device)
    return history


#: Epochs always trained before a perfect validation AUC stops a run (a learning curve needs two).
MIN_EPOCHS_BEFORE_PERFECT_STOP = 2


def _cannot_improve(best: float | None, monitor: str, epoch: int) -> bool:
    """Whether the best value so far is a validation AUC of 1.0, which no epoch can beat
    (:func:`_improved` needs a strictly higher AUC), after the first epochs."""
    return (monitor == "val_auc" and best is not None and not np.isnan(best) and best >= 1.0
            and epoch >= MIN_EPOCHS_BEFORE_PERFECT_STOP)


def _epoch_line(record: dict[str, float], best: bool) -> str:
    metric = (f"val AUC {record['val_auc']:.3f}" if "val_auc" in record
              else f"val MAE {record['val_mae']:.2f}")
    return (f"epoch {record['epoch']}: train loss {record['train_loss']:.3f}, val loss "
            f"{record['val_loss']:.3f}, {metric}, {record['images_per_s']:.0f} img/s"
            + ("  <- best so far" if best else ""))


def _restore_best(model, checkpoint, best_state, device) -> None:
    if checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(checkpoint, device)["state_dict"]
        model.load_state_dict(state)
    elif best_state is not None:
        model.load_state_dict(best_state)


@torch.no_grad()
def predict(
    model: nn.Module,
    images: np.ndarray,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    task: str | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Predict for uint8 ``(N, H, W)`` images (or floats in [0, 1]).

    Returns probabilities (softmax ``(N, C)`` for multiclass, sigmoid ``(N,)`` for binary,
    ``(N, K)`` for multilabel) or values ``(N,)`` for regression. ``task`` defaults to
    ``model.task`` (set by :func:`fit`). ``transform`` is applied to each float batch
    ``(B, 1, H, W)`` (e.g. a chapter-4 degradation at test time), so one FFT serves a batch.
    """
    from cxrlab.core.models import image_batches, inference_batch_size

    batch_size = inference_batch_size(batch_size, images)
    task = task or getattr(model, "task", "multiclass")
    device = pick_device(device)
    was_training = model.training
    model.eval().to(device)
    out = []
    n_batches = (len(images) + batch_size - 1) // batch_size
    for batch in tqdm(image_batches(images, batch_size, transform), total=n_batches,
                      desc="predicting", disable=not progress, leave=False):
        out.append(_outputs_to_predictions(model(batch.to(device)), task, model).float().cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0,), np.float32)


def history_to_json(history: History, path: str | Path) -> None:
    """Write a history as JSON (atomic)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(history.to_dict(), indent=2))
    os.replace(tmp, path)
