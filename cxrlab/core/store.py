"""The model store: "the chapter-2 race model for this source and preset", loaded or trained.

Every chapter can start cold: :func:`get_model` loads the model from
``S.data_dir/models/<key>.pt`` if an earlier chapter (or Binder's postBuild) trained it, and
otherwise trains it on the train split (early stopping on the val split) and evaluates it on the
test split. The key is (source, dataset, preset, target, variant, seed), plus a short hash of
``train_filter`` and one of the ``train_transform``'s ``repr`` when they are given: two models
trained on different images or through different transforms never share an entry, whatever
their ``variant`` says.

>>> tm = get_model(S, "race")                  # doctest: +SKIP
loaded from cache: synthetic-synth-demo-seed0-race-clean
>>> tm.test_proba.shape                        # doctest: +SKIP
(600, 3)
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrlab.core.targets import target_spec, task_spec
from cxrlab.core.datasets import CXRDataset
from cxrlab.core.models import build_model
from cxrlab.core.train import (History, fit, load_checkpoint, predict, release_unused_memory, save_checkpoint,
                          seed_everything)

# Training images per second on 2 CPU cores at 64 px, augmentation included (bench/README.md,
# 2026-11-28, channels-last models); scaled by pixel count.
CPU_IMAGES_PER_S_64PX = {"smallcnn": 1000, "resnet18": 170, "resnet34": 90, "densenet121": 85}
GPU_SPEEDUP = 20


@dataclass
class TrainedModel:
    """A trained model with what it was trained for and how it did on the test split.

    ``test_index``: manifest row positions of the test images it was evaluated on (the test
    split, rows with a known target); ``test_proba``: its predictions there (probabilities, or
    values for regression). ``test_targets``: the true targets of those rows.
    """

    model: nn.Module
    classes: list[str]
    history: History
    target: str
    task: str
    variant: str
    key: str
    path: Path
    test_index: np.ndarray
    test_proba: np.ndarray
    test_targets: np.ndarray
    device: str = "cpu"
    train_transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def predict(self, images: np.ndarray, transform: Callable | None = None,
                batch_size: int = 256) -> np.ndarray:
        """Probabilities (or values) for uint8 images ``(N, H, W)``; ``transform`` is applied
        to each float batch ``(B, 1, H, W)`` (e.g. a test-time degradation)."""
        return predict(self.model, images, device=self.device, batch_size=batch_size,
                       transform=transform, task=self.task)

    def __repr__(self) -> str:
        return (f"TrainedModel({self.key}: {self.task}, classes={self.classes}, "
                f"best epoch {self.history.best_epoch}, {len(self.test_index)} test images)")


def task_for(target: str) -> str:
    """The training task of a target (``finding_*`` columns are binary; see ``targets``)."""
    return target_spec(target).task


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def transform_fingerprint(transform: Callable | None) -> str | None:
    """The text of a training transform that goes into the store key: its ``repr``.

    The typed transforms of :mod:`cxrlab.toolbox.degrade` (``HighPass(d=50)``, ``Compose([...])``)
    have a stable, readable one. A callable whose ``repr`` holds a memory address (a lambda, a
    plain function's object) would give a new key every session, so it is refused.

    >>> transform_fingerprint(None) is None
    True
    """
    if transform is None:
        return None
    text = repr(transform)
    if re.search(r" at 0x[0-9a-fA-F]+", text):
        raise ValueError(f"train_transform {text} has no stable repr (it names a memory address), "
                         "so the store could not tell it from another transform: use a typed "
                         "transform of cxrlab.toolbox.degrade (e.g. HighPass(50), or Compose([...]))")
    return text


def model_key(session, target: str, variant: str = "clean",
              train_filter: np.ndarray | None = None,
              train_transform: Callable | None = None) -> str:
    """``source-dataset-preset-seedN-target-variant[-filter<hash>][-transform<hash>]``.

    The transform part is a short hash of :func:`transform_fingerprint`, so ``variant`` names a
    model for people while the key alone decides which stored model is the right one.
    """
    key = f"{session.results_key}-{target}-{variant}"
    if train_filter is not None:
        digest = hashlib.sha1(np.packbits(np.asarray(train_filter, bool)).tobytes()).hexdigest()
        key += f"-filter{digest[:8]}"
    fingerprint = transform_fingerprint(train_transform)
    if fingerprint is not None:
        key += f"-transform{hashlib.sha1(fingerprint.encode()).hexdigest()[:8]}"
    return _slug(key)


def patient_subset_filter(session, fraction: float, seed: int | None = None) -> np.ndarray | None:
    """A ``train_filter`` for :func:`get_model` that keeps every validation image and the
    images of a seeded random ``fraction`` of the training patients (whole patients; the test
    split is never filtered). ``None`` when ``fraction`` >= 1 (train on everything).

    ``seed`` defaults to the session's; the same session and fraction give the same subset,
    hence the same store key.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction >= 1:
        return None
    split, patients = session.manifest["split"], session.manifest["patient_id"].astype(str)
    train_patients = np.array(sorted(patients[split == "train"].unique()))
    rng = np.random.default_rng(session.seed if seed is None else seed)
    kept = rng.permutation(train_patients)[:max(1, round(fraction * len(train_patients)))]
    return ((split == "val") | ((split == "train") & patients.isin(kept))).to_numpy()


def _rows(session, split: str, targets: np.ndarray, task: str,
          train_filter: np.ndarray | None) -> np.ndarray:
    mask = (session.manifest["split"] == split).to_numpy() & task_spec(task).known(targets)
    if train_filter is not None and split != "test":
        mask &= np.asarray(train_filter, bool)
    return np.flatnonzero(mask)


def estimate_seconds(arch: str, image_size: int, n_images: int, epochs: int,
                     device: str) -> float:
    """A rough training-time estimate from the throughputs measured on 2 CPU cores."""
    rate = CPU_IMAGES_PER_S_64PX.get(arch, 100) * (64 / image_size) ** 2
    if str(device).startswith("cuda"):
        rate *= GPU_SPEEDUP
    return n_images * epochs / rate * 1.15          # + validation


def predict_rows(model: nn.Module, images: np.ndarray, rows: np.ndarray,
                 chunk: int = 4096, **kwargs: Any) -> np.ndarray:
    """:func:`cxrlab.core.train.predict` on ``images[rows]``, reading the memmap chunk by chunk
    (a full-preset test split would not fit in memory at once)."""
    parts = [predict(model, images[rows[i:i + chunk]], **kwargs)
             for i in range(0, len(rows), chunk)]
    return np.concatenate(parts) if parts else np.zeros((0,), np.float32)


def _load(path: Path, session) -> dict[str, Any]:
    """Read a stored model safely (tensors and plain values only; see ``load_checkpoint``)."""
    try:
        saved = load_checkpoint(path, "cpu")
    except pickle.UnpicklingError as error:
        raise ValueError("it holds more than tensors and plain values, so it was not loaded "
                         f"(it could run code): {str(error).splitlines()[0][:120]}") from None
    if not isinstance(saved, dict) or saved.get("n_images") != len(session.manifest):
        raise ValueError("stored model was trained on a different manifest")
    return saved


def _train(session, target, task, classes, train_transform, train_filter, path,
           progress) -> dict[str, Any]:
    p = session.preset
    targets = task_spec(task).typed(session.targets(target))
    train_rows = _rows(session, "train", targets, task, train_filter)
    val_rows = _rows(session, "val", targets, task, train_filter)
    estimate = estimate_seconds(p.model, p.image_size, len(train_rows), p.epochs, session.device)
    print(f"training {target} model ({p.model}, {len(train_rows)} images, up to {p.epochs} "
          f"epochs; about {estimate:.0f} s)")
    release_unused_memory()                       # start the training peak from a trimmed heap
    seed_everything(session.seed)                 # same seed -> same initial weights
    model = build_model(p.model, task_spec(task).n_outputs(classes), pretrained=p.pretrained)
    train_ds = CXRDataset(session.images, targets[train_rows], transform=train_transform,
                          augment=True, indices=train_rows)
    val_ds = CXRDataset(session.images, targets[val_rows], transform=train_transform,
                        indices=val_rows)
    checkpoint = path.with_suffix(".best.pt")
    history = fit(model, train_ds, val_ds, epochs=p.epochs, lr=p.lr, batch_size=p.batch_size,
                  patience=p.patience, device=session.device, task=task, checkpoint=checkpoint,
                  seed=session.seed, progress=progress,
                  monitor=task_spec(task).monitor)
    checkpoint.unlink(missing_ok=True)
    test_rows = _rows(session, "test", targets, task, None)
    test_proba = predict_rows(model, session.images, test_rows, device=session.device,
                              transform=train_transform, task=task)
    return {"state_dict": model.state_dict(), "arch": p.model, "task": task, "target": target,
            "classes": classes, "history": history.to_dict(), "test_index": test_rows,
            "test_proba": test_proba, "n_images": len(session.manifest),
            "pretrained": bool(getattr(model, "pretrained", False))}


def _write_sidecar(path: Path, saved: dict[str, Any], seconds: float) -> None:
    meta = {k: saved[k] for k in ("arch", "task", "target", "classes", "history", "pretrained")}
    meta["train_seconds"] = round(seconds, 1)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.json.tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, path.with_suffix(".json"))


def get_model(
    session,
    target: str = "race",
    variant: str = "clean",
    train_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    task: str | None = None,
    train_filter: np.ndarray | None = None,
    force: bool = False,
    progress: bool = True,
) -> TrainedModel:
    """Load the ``target`` model of this session from the store, or train and store it.

    Args:
        session: from :func:`cxrlab.setup`.
        target: ``race`` (multiclass over ``S.classes``), ``sex``, ``no_finding``,
            ``finding_*`` (binary), ``age`` (regression), ``findings`` (multilabel).
        variant: a name for how it was trained (``clean``, ``lowpass10``, ...); part of the key.
        train_transform: applied to every float image at train, validation AND test time
            (chapter 4 trains and tests on degraded images, as Gichoya et al. 2022 did). Its
            ``repr`` is part of the key (:func:`model_key`), so use a typed transform of
            :mod:`cxrlab.toolbox.degrade`; ``variant`` is only a readable name.
        task: override the default task of the target.
        train_filter: boolean mask over manifest rows restricting train and val images (e.g.
            no-finding only); the test split is never filtered.
        force: retrain even if a stored model exists.
    """
    task = task or task_for(target)
    if train_filter is not None and len(train_filter) != len(session.manifest):
        raise ValueError(f"train_filter has {len(train_filter)} entries, the manifest "
                         f"{len(session.manifest)} rows")
    classes = session.class_names(target)
    key = model_key(session, target, variant, train_filter, train_transform)
    path = session.model_dir / f"{key}.pt"
    saved = None
    if path.exists() and not force:
        try:
            saved = _load(path, session)
            print(f"loaded from cache: {key}")
        except Exception as error:  # noqa: BLE001 - a stale or broken file is retrained
            print(f"stored model {path.name} could not be used ({error}); training again")
    if saved is None:
        start = time.perf_counter()
        saved = _train(session, target, task, classes, train_transform, train_filter, path,
                       progress)
        save_checkpoint(saved, path)
        _write_sidecar(path, saved, time.perf_counter() - start)
        release_unused_memory()
    return _trained_model(saved, session, key, path, variant, train_transform)


def _trained_model(saved, session, key, path, variant, train_transform) -> TrainedModel:
    model = build_model(saved["arch"], task_spec(saved["task"]).n_outputs(saved["classes"]))
    model.load_state_dict(saved["state_dict"])
    model.task = saved["task"]
    model.to(session.device).eval()
    test_index = np.asarray(saved["test_index"], dtype=np.int64)
    targets = session.targets(saved["target"])[test_index]
    return TrainedModel(model=model, classes=list(saved["classes"]),
                        history=History.from_dict(saved["history"]), target=saved["target"],
                        task=saved["task"], variant=variant, key=key, path=path,
                        test_index=test_index, test_proba=np.asarray(saved["test_proba"]),
                        test_targets=targets, device=session.device,
                        train_transform=train_transform)
