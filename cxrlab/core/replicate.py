"""The paper's main experiment at its own scale, on one GPU, many GPUs or CPU processes.

Gichoya et al. 2022 (Lancet Digit Health 4:e406) trained an ImageNet ResNet-34 at 320 px
with Adam (learning rate 1e-3), batch 256 and early stopping on the validation loss, and
report one-vs-rest AUCs per self-reported race class with 95% CIs (Table 3). This command
runs that recipe on a prepared dataset and writes ``results.json`` with our AUCs beside
Table 3::

    python -m cxrlab.core.replicate --source mimic --preset full
    torchrun --nproc_per_node=8 -m cxrlab.core.replicate --source mimic --preset full

Under ``torchrun`` each process trains a
:class:`~torch.nn.parallel.DistributedDataParallel` replica on its share of every global
batch (``batch_size / world_size`` images; a :class:`~torch.utils.data.DistributedSampler`
over the memory-mapped image cache). Processes talk over NCCL on GPUs and gloo on CPUs.
Batch norm statistics are synchronised over the global batch (``nn.SyncBatchNorm`` on GPUs,
:class:`GlooSyncBatchNorm` on CPUs, where PyTorch's has no kernel), so N processes compute
what one process with the whole batch would, up to floating-point rounding (tested). On a
GPU the forward and backward passes run in mixed precision (bfloat16 where supported, else
float16 with loss scaling) on channels-last tensors.

Why a loop of its own rather than :func:`cxrlab.core.train.fit`: ``fit`` is the course's
single-process loop (cosine schedule, augmentation, CPU-sized inference batches). This one
needs per-rank samplers, gradient all-reduce, sharded evaluation gathered on every rank,
mixed precision and a checkpoint that can resume in the middle of an epoch; putting those
into ``fit`` would make the loop every learner reads much harder to read.

Checkpoints (``checkpoint.pt``: weights, optimiser, loss scaler, position in the epoch, the
RNG state, the early-stopping state) are written atomically every ``--checkpoint-every``
steps and at every epoch's end, and loaded with ``torch.load(..., weights_only=True)``. A
killed run started again with the same command continues from its last checkpoint, with any
number of processes (a step is a global batch).

Not measured on a GPU: this repository's machines have none. See README.md, "Replicating the
paper at scale", for commands and the time and memory we expect.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from cxrlab.core import anchors, metrics
from cxrlab.core.presets import PRESETS
from cxrlab.core.train import save_checkpoint, seed_everything

#: Table 3 row of each source the paper trained and tested on.
TABLE3_ROWS = {"mimic": "MIMIC-CXR", "chexpert": "CheXpert"}
#: Recipe fields a resumed run may change (they do not alter what was trained so far).
RESUMABLE_CHANGES = ("epochs", "patience", "bootstrap", "loader_workers", "checkpoint_every")
#: Read the loss back from the device every this many steps (each read waits for the GPU).
LOSS_EVERY = 20
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
RESULTS = "results.json"


# ----------------------------------------------------------------------------- recipe
@dataclass(frozen=True)
class Recipe:
    """Everything that decides the training run (from a preset, with any overrides).

    ``batch_size`` is the global batch, split evenly over the processes. ``max_images``
    ``None`` uses the whole dataset. ``dropout`` is 0: the paper's ResNet-34 ends in a plain
    linear layer. ``augment`` adds the course's augmentation (the paper's main model is
    described without one).
    """

    image_size: int
    model: str
    pretrained: bool
    epochs: int
    batch_size: int
    patience: int
    lr: float
    bootstrap: int
    max_images: int | None = None
    seed: int = 0
    dropout: float = 0.0
    augment: bool = False
    checkpoint_every: int = 200
    loader_workers: int = 4

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "Recipe":
        """The recipe of preset ``name``, then ``overrides`` (``None`` values are ignored).

        The preset named here wins over ``$CXRLAB_PRESET`` (which is for the notebooks).
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        p = PRESETS[name]
        recipe = cls(image_size=p.image_size, model=p.model, pretrained=p.pretrained,
                     epochs=p.epochs, batch_size=p.batch_size, patience=p.patience, lr=p.lr,
                     bootstrap=p.bootstrap)
        return replace(recipe, **{k: v for k, v in overrides.items() if v is not None})


# ----------------------------------------------------------------------------- processes
@dataclass(frozen=True)
class Processes:
    """Where this process stands: its rank among ``world`` processes and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        """True on the process that writes files and prints."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every process (no-op when alone)."""
        if self.world > 1:
            dist.barrier()


def start_processes(device: str | None = None) -> Processes:
    """Join the process group ``torchrun`` (or a test) describes in the environment.

    Without ``WORLD_SIZE`` (or with 1) this is a single process and no group is made. The
    backend is NCCL when the process has a GPU, else gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    chosen = torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(chosen)
        torch.backends.cudnn.benchmark = True         # one input size: pick the fastest kernels
    elif world > 1 and "OMP_NUM_THREADS" not in os.environ:   # share the cores, don't fight
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return Processes(rank, world, chosen)


def stop_processes() -> None:
    """Leave the process group, if one was made."""
    if dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- data
@dataclass
class Cohort:
    """The images and labels of one prepared dataset, rows aligned with the cache."""

    manifest: pd.DataFrame
    images: np.ndarray
    classes: list[str]
    labels: np.ndarray          # class index per manifest row, -1 when race is missing
    folder: Path

    def rows(self, split: str) -> np.ndarray:
        """Rows of ``split`` that have a race label."""
        in_split = (self.manifest["split"] == split).to_numpy()
        return np.flatnonzero(in_split & (self.labels >= 0))


def _dataset_folder(source: str, data_dir: str | Path | None, dataset: str | None,
                    synthetic_patients: int | None, preset: str) -> Path:
    if data_dir is not None:
        return Path(data_dir)
    if source == "synthetic":
        from cxrlab.core.presets import PRESETS
        from data_fetch import synthetic

        chosen = PRESETS[preset]
        sizes = {"n_patients": synthetic_patients or chosen.n_patients,
                 "image_size": chosen.image_size}
        return Path(synthetic.prepare(label=chosen.name, progress=False, **sizes))
    from cxrlab.core.session import find_prepared

    return find_prepared(source, dataset)


def load_cohort(source: str, recipe: Recipe, procs: Processes, *, data_dir: str | Path | None = None,
                dataset: str | None = None, synthetic_patients: int | None = None,
                preset: str = "full") -> Cohort:
    """Find (or, for ``synthetic``, make) the dataset and its image cache at the recipe's size.

    The main process builds the cache first; the others wait, then open the same file
    memory-mapped (one copy in the page cache, whatever the number of processes).
    """
    from cxrlab.core.cache import load_image_cache
    from cxrlab.core.session import Session, _race_classes, cap_patients
    from data_fetch.manifest import read_manifest

    cohort: Cohort | None = None
    folder = Path(".")
    for turn in ("main", "others"):
        if (turn == "main") == procs.main:
            folder = _dataset_folder(source, data_dir, dataset, synthetic_patients, preset)
            manifest = read_manifest(folder)
            if recipe.max_images is not None:
                manifest = cap_patients(manifest, recipe.max_images)
            images = load_image_cache(manifest, recipe.image_size, folder / "cache",
                                      progress=procs.main)
            session = Session(manifest=manifest, images=images,
                              classes=_race_classes(manifest), device=procs.device.type,
                              preset=PRESETS[preset], source=source, seed=recipe.seed,
                              data_dir=folder)
            cohort = Cohort(manifest, images, session.classes, session.targets("race"), folder)
        procs.barrier()
    if cohort is None or len(cohort.classes) < 2:
        found = len(cohort.classes) if cohort else 0
        raise ValueError(f"{folder} has {found} self-reported race class(es); "
                         "the replication needs race labels (mimic, chexpert, covid19_ar or "
                         "synthetic)")
    return cohort


class CacheImages(Dataset):
    """Rows of the uint8 cache as ``(1, H, W)`` uint8 tensors with their labels.

    Images stay uint8 until they reach the device (a quarter of the bytes through the loader
    and the host-to-GPU copy). With ``augment`` the course's augmentation is applied with a
    generator seeded by ``(seed, epoch, row)``: the same image gets the same augmentation
    whatever the number of processes, loader workers or restarts.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, rows: np.ndarray,
                 augment: bool = False, seed: int = 0) -> None:
        self.images, self.labels, self.rows = images, labels, np.asarray(rows, dtype=np.int64)
        self.augmentation = None
        if augment:
            from cxrlab.core.datasets import default_augmentation

            self.augmentation = default_augmentation()
        self.seed, self.epoch = int(seed), 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.rows[item])
        raw = np.asarray(self.images[row])
        label = torch.tensor(int(self.labels[row]))
        if self.augmentation is None:
            return torch.from_numpy(raw.copy()).unsqueeze(0), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, self.epoch, row)) % 2**63)
            augmented = self.augmentation(raw)                    # float (1, H, W) in [0, 1]
        return (augmented * 255.0).round_().to(torch.uint8), label


def _to_model_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- batch norm
class GlooSyncBatchNorm(nn.BatchNorm2d):
    """Batch norm whose training statistics cover the global batch, over any process group.

    ``nn.SyncBatchNorm`` runs on GPUs only; this one all-reduces the per-channel sums, sums of
    squares and counts (differentiably, through ``torch.distributed.nn``), so CPU processes
    over gloo normalise each batch as one process holding the whole batch would.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn import functional as dist_nn

        channels = x.shape[1]
        count = torch.full((1,), x.numel() / channels, dtype=x.dtype, device=x.device)
        local = torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), count])
        total = dist_nn.all_reduce(local)
        n = total[-1]
        mean = total[:channels] / n
        var = (total[channels:2 * channels] / n - mean * mean).clamp_min(0.0)
        self._update_running(mean.detach(), var.detach(), float(n))
        shape = (1, channels, 1, 1)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return out * self.weight.view(shape) + self.bias.view(shape) if self.affine else out

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        if not self.track_running_stats:
            return
        self.num_batches_tracked += 1
        momentum = self.momentum if self.momentum is not None else \
            1.0 / float(self.num_batches_tracked)
        self.running_mean.lerp_(mean, momentum)
        self.running_var.lerp_(var * n / max(n - 1.0, 1.0), momentum)


def sync_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replace every ``BatchNorm2d`` by a synchronised one (GPU: PyTorch's; CPU: ours)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = GlooSyncBatchNorm(child.num_features, child.eps, child.momentum,
                                       child.affine, child.track_running_stats)
            synced.load_state_dict(child.state_dict())
            setattr(model, name, synced)
        else:
            sync_batch_norm(child, device)
    return model


# ----------------------------------------------------------------------------- model
def build_replica(recipe: Recipe, n_classes: int, procs: Processes) -> nn.Module:
    """The recipe's model on this process's device (channels-last; DDP when world > 1).

    The main process builds first, so only it downloads the ImageNet weights (offline, it
    trains from scratch, as :func:`cxrlab.core.models.build_model` explains); DDP then copies the
    main process's weights to every other process.
    """
    from cxrlab.core.models import build_model

    model = None
    for turn in ("main", "others"):
        if (turn == "main") == procs.main:
            seed_everything(recipe.seed)
            model = build_model(recipe.model, n_classes, pretrained=recipe.pretrained)
        procs.barrier()
    assert model is not None
    model.dropout.p = recipe.dropout
    model.task = "multiclass"
    if procs.world > 1:
        model = sync_batch_norm(model, procs.device)
    model = model.to(procs.device, memory_format=torch.channels_last)
    if procs.world == 1:
        return model
    ids = [procs.device.index] if procs.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _plain(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class Precision:
    """Mixed precision on a GPU (bfloat16, else float16 with loss scaling); float32 on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.enabled = device.type == "cuda"
        self.dtype = torch.bfloat16 if self.enabled and torch.cuda.is_bf16_supported() \
            else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.enabled
                                           and self.dtype == torch.float16)

    def autocast(self):
        """The context that runs a forward pass in this precision."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.enabled)

    @property
    def name(self) -> str:
        """``float32``, ``bfloat16`` or ``float16``."""
        return str(self.dtype).removeprefix("torch.") if self.enabled else "float32"


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def predict_rows(model: nn.Module, cohort: Cohort, rows: np.ndarray, procs: Processes,
                 precision: Precision, batch_size: int) -> np.ndarray:
    """Softmax ``(len(rows), C)`` for ``rows``: each process predicts every world-th row, then
    every process gathers all of them (so every process takes the same decisions)."""
    from cxrlab.core.models import inference_batch_size

    net = _plain(model).eval()
    mine = np.arange(procs.rank, len(rows), procs.world)
    if procs.device.type == "cpu":
        batch_size = inference_batch_size(batch_size, cohort.images[:1])
    data = CacheImages(cohort.images, cohort.labels, rows[mine])
    out = []
    for x, _ in DataLoader(data, batch_size=batch_size, shuffle=False):
        with precision.autocast():
            out.append(torch.softmax(net(_to_model_input(x, procs.device)).float(), 1).cpu())
    mine_proba = torch.cat(out).numpy() if out else np.zeros((0, len(cohort.classes)), np.float32)
    net.train()
    if procs.world == 1:
        return mine_proba
    gathered: list[Any] = [None] * procs.world
    dist.all_gather_object(gathered, (mine, mine_proba))
    proba = np.zeros((len(rows), len(cohort.classes)), np.float32)
    for index, part in gathered:
        proba[index] = part
    return proba


def validation_scores(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Cross-entropy and macro one-vs-rest AUC of predictions ``proba`` for labels ``y``."""
    loss = float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, None))))
    try:
        auc = metrics.macro_auc(y, proba)
    except ValueError:
        auc = float("nan")
    return {"val_loss": loss, "val_auc": float(auc)}


# ----------------------------------------------------------------------------- checkpoint
@dataclass
class Progress:
    """Where training is: the next ``epoch`` (0-based) and ``step`` within it, and the
    early-stopping state. Saved in every checkpoint."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    best_loss: float | None = None
    best_epoch: int | None = None
    waited: int = 0
    seconds: float = 0.0
    history: list[dict[str, float]] | None = None


def write_checkpoint(path: Path, model: nn.Module, optimizer, precision: Precision,
                     progress: Progress, recipe: Recipe) -> None:
    """Save everything a resumed run needs (atomically; tensors and plain values only)."""
    save_checkpoint({"model": _plain(model).state_dict(), "optimizer": optimizer.state_dict(),
                     "scaler": precision.scaler.state_dict(), "progress": asdict(progress),
                     "rng": torch.get_rng_state(), "recipe": asdict(recipe)}, path)


def read_checkpoint(path: Path, model: nn.Module, optimizer, precision: Precision,
                    recipe: Recipe) -> Progress:
    """Load a checkpoint written by :func:`write_checkpoint` (``weights_only=True``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = {k: v for k, v in state["recipe"].items() if k not in RESUMABLE_CHANGES}
    wanted = {k: v for k, v in asdict(recipe).items() if k in saved}
    if saved != wanted:
        changed = sorted(k for k in saved if saved[k] != wanted[k])
        raise ValueError(f"{path} was written with another recipe ({', '.join(changed)} "
                         "differ); pass --no-resume to start afresh or --out elsewhere")
    _plain(model).load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    precision.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"])
    return Progress(**state["progress"])


# ----------------------------------------------------------------------------- training
def _epoch_batches(train: CacheImages, recipe: Recipe, procs: Processes, epoch: int,
                   start_step: int) -> DataLoader:
    """This process's batches of ``epoch`` from global step ``start_step`` on.

    A global step is one batch of ``recipe.batch_size`` images, ``batch_size / world`` from
    each process; the sampler's permutation depends on the seed and the epoch only, so step
    ``s`` covers the same images whatever the number of processes.
    """
    per_rank = recipe.batch_size // procs.world
    sampler = DistributedSampler(train, num_replicas=procs.world, rank=procs.rank, shuffle=True,
                                 seed=recipe.seed, drop_last=True)
    sampler.set_epoch(epoch)
    train.epoch = epoch
    order = list(sampler)[start_step * per_rank:]
    workers = recipe.loader_workers if procs.device.type == "cuda" else 0
    return DataLoader(train, batch_size=per_rank, sampler=order, num_workers=workers,
                      pin_memory=procs.device.type == "cuda", persistent_workers=False)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, precision: Precision,
               x: torch.Tensor, y: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One optimiser step on a uint8 batch ``x`` with labels ``y``; the loss, on the device."""
    with precision.autocast():
        loss = nn.functional.cross_entropy(model(_to_model_input(x, device)),
                                           y.to(device, non_blocking=True))
    optimizer.zero_grad(set_to_none=True)
    precision.scaler.scale(loss).backward()
    precision.scaler.step(optimizer)
    precision.scaler.update()
    return loss.detach()


def train(cohort: Cohort, recipe: Recipe, procs: Processes, out: Path, *, resume: bool = True,
          stop_after_steps: int | None = None) -> tuple[nn.Module, Progress, Precision]:
    """Train with early stopping on the validation loss; return the best model.

    ``stop_after_steps`` kills this process (SIGKILL, nothing flushed) after that many
    optimiser steps: how the tests interrupt a run.
    """
    if recipe.batch_size % procs.world:
        raise ValueError(f"batch size {recipe.batch_size} does not split over {procs.world} "
                         "processes; choose a multiple")
    model = build_replica(recipe, len(cohort.classes), procs)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    precision = Precision(procs.device)
    progress = Progress(history=[])
    if resume and (out / CHECKPOINT).exists():
        progress = read_checkpoint(out / CHECKPOINT, model, optimizer, precision, recipe)
        _say(procs, f"resuming from {out / CHECKPOINT}: epoch {progress.epoch + 1}, step "
                    f"{progress.step}")
    else:
        torch.manual_seed(recipe.seed)
    train_set = CacheImages(cohort.images, cohort.labels, cohort.rows("train"),
                            recipe.augment, recipe.seed)
    val_rows = cohort.rows("val")
    used = len(train_set) // procs.world * procs.world          # the sampler's drop_last
    steps_per_epoch = -(-used // recipe.batch_size)
    while progress.epoch < recipe.epochs and progress.waited < recipe.patience:
        start = time.perf_counter()
        bar = tqdm(_epoch_batches(train_set, recipe, procs, progress.epoch, progress.step),
                   desc=f"epoch {progress.epoch + 1}/{recipe.epochs}", unit="step",
                   initial=progress.step, total=steps_per_epoch, disable=not procs.main,
                   leave=False)
        for x, y in bar:
            loss = train_step(model, optimizer, precision, x, y, procs.device)
            progress.step += 1
            progress.global_step += 1
            if progress.step % LOSS_EVERY == 1:
                bar.set_postfix(loss=f"{float(loss):.3f}", refresh=False)
            if progress.step % recipe.checkpoint_every == 0:
                progress.seconds += time.perf_counter() - start
                start = time.perf_counter()
                if procs.main:
                    write_checkpoint(out / CHECKPOINT, model, optimizer, precision, progress,
                                     recipe)
            if stop_after_steps is not None and progress.global_step >= stop_after_steps:
                os.kill(os.getpid(), signal.SIGKILL)
        bar.close()
        progress.seconds += time.perf_counter() - start
        _end_epoch(model, optimizer, precision, progress, cohort, val_rows, recipe, procs, out)
    best = out / BEST
    _plain(model).load_state_dict(torch.load(best, map_location=procs.device, weights_only=True))
    return model, progress, precision


def _end_epoch(model, optimizer, precision, progress: Progress, cohort: Cohort,
               val_rows: np.ndarray, recipe: Recipe, procs: Processes, out: Path) -> None:
    """Validate, keep the best weights, advance the epoch and write the checkpoint."""
    proba = predict_rows(model, cohort, val_rows, procs, precision, 2 * recipe.batch_size)
    scores = validation_scores(cohort.labels[val_rows], proba)
    epoch = progress.epoch + 1
    improved = progress.best_loss is None or scores["val_loss"] < progress.best_loss
    if improved:
        progress.best_loss, progress.best_epoch, progress.waited = scores["val_loss"], epoch, 0
        if procs.main:
            save_checkpoint(_plain(model).state_dict(), out / BEST)
    else:
        progress.waited += 1
    n_train = len(cohort.rows("train"))
    record = {"epoch": epoch, **scores, "seconds": round(progress.seconds, 1),
              "images_per_s": round(n_train / max(progress.seconds, 1e-9), 1)}
    progress.history = [*(progress.history or []), record]
    progress.epoch, progress.step, progress.seconds = epoch, 0, 0.0
    if procs.main:
        write_checkpoint(out / CHECKPOINT, model, optimizer, precision, progress, recipe)
    _say(procs, f"epoch {epoch}: val loss {scores['val_loss']:.4f}, val AUC "
                f"{scores['val_auc']:.3f}, {record['images_per_s']:.0f} img/s"
                + ("  <- best so far" if improved else ""))
    procs.barrier()


# ----------------------------------------------------------------------------- results
def evaluate(model: nn.Module, cohort: Cohort, recipe: Recipe, procs: Processes,
             precision: Precision, source: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Test-split probabilities (every process) and, on the main process only, the per-class
    AUCs with patient-bootstrap 95% CIs beside Table 3 (the bootstrap runs once)."""
    rows = cohort.rows("test")
    proba = predict_rows(model, cohort, rows, procs, precision, 2 * recipe.batch_size)
    if not procs.main:
        return proba, {}
    y = cohort.labels[rows]
    patients = cohort.manifest["patient_id"].to_numpy()[rows]
    table = metrics.auc_table(y, proba, cohort.classes, groups=patients,
                              n_boot=recipe.bootstrap, seed=recipe.seed)
    beside = anchors.compare_to_table3(table, TABLE3_ROWS.get(source, "MIMIC-CXR"), source)
    return proba, {"test_auc": table.to_dict("records"), "table3": beside.to_dict("records"),
                   "n_test_images": int(len(rows)),
                   "n_test_patients": int(len(set(patients)))}


def write_results(path: Path, payload: dict[str, Any]) -> None:
    """Write ``results.json`` atomically (NaN becomes null)."""
    from cxrlab.core.results import _jsonable

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_jsonable(payload), indent=2))
    os.replace(tmp, path)


def _say(procs: Processes, message: str) -> None:
    if procs.main:
        print(message, flush=True)


# ----------------------------------------------------------------------------- command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options (see ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="python -m cxrlab.replicate",
        description="Train the paper's race model (ResNet-34, 320 px, Adam 1e-3, batch 256, "
                    "early stopping) on a prepared dataset and write results.json beside "
                    "Table 3. Run under torchrun --nproc_per_node=N for N GPUs.")
    parser.add_argument("--source", default="mimic",
                        choices=["mimic", "chexpert", "covid19_ar", "synthetic"],
                        help="a source with self-reported race labels (default: %(default)s)")
    parser.add_argument("--preset", default="full", choices=list(PRESETS))
    parser.add_argument("--dataset", default=None, help="prepared dataset name (default: newest)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="a prepared folder holding manifest.csv (instead of --dataset)")
    parser.add_argument("--out", type=Path, default=None,
                        help="run folder for checkpoints and results.json (default: "
                             "<dataset>/replication/<preset>-seed<N>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    group = parser.add_argument_group("recipe overrides (default: the preset's)")
    for flag, kind in (("--image-size", int), ("--model", str), ("--epochs", int),
                       ("--batch-size", int), ("--patience", int), ("--lr", float),
                       ("--bootstrap", int), ("--max-images", int),
                       ("--checkpoint-every", int), ("--loader-workers", int)):
        group.add_argument(flag, type=kind, default=None)
    group.add_argument("--augment", action="store_true", help="the course's augmentation")
    group.add_argument("--no-pretrained", action="store_true", help="random initialisation")
    parser.add_argument("--synthetic-patients", type=int, default=None,
                        help="size of the synthetic cohort (synthetic source only)")
    parser.add_argument("--no-resume", action="store_true",
                        help="ignore an existing checkpoint in --out and start afresh")
    parser.add_argument("--save-predictions", action="store_true",
                        help="also save the test split's probabilities (test_predictions.npy, "
                             "rows in manifest order) in the run folder")
    parser.add_argument("--stop-after-steps", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The preset's recipe with the command line's overrides."""
    overrides = {k: getattr(args, k) for k in ("image_size", "model", "epochs", "batch_size",
                                               "patience", "lr", "bootstrap", "max_images",
                                               "checkpoint_every", "loader_workers")}
    if args.augment:
        overrides["augment"] = True
    if args.no_pretrained:
        overrides["pretrained"] = False
    return Recipe.from_preset(args.preset, seed=args.seed, **overrides)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train, evaluate and write ``results.json``; return what was written."""
    procs = start_processes(args.device)
    recipe = recipe_from_args(args)
    cohort = load_cohort(args.source, recipe, procs, data_dir=args.data_dir,
                         dataset=args.dataset, synthetic_patients=args.synthetic_patients,
                         preset=args.preset)
    out = args.out or cohort.folder / "replication" / f"{args.preset}-seed{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    if args.no_resume and procs.main:
        (out / CHECKPOINT).unlink(missing_ok=True)
    procs.barrier()
    _say(procs, f"{args.source} ({cohort.folder.name}): {len(cohort.manifest)} images, classes "
                f"{', '.join(cohort.classes)} | {recipe.model} at {recipe.image_size} px, batch "
                f"{recipe.batch_size} over {procs.world} process(es) on {procs.device.type}")
    model, progress, precision = train(cohort, recipe, procs, out, resume=not args.no_resume,
                                       stop_after_steps=args.stop_after_steps)
    proba, scores = evaluate(model, cohort, recipe, procs, precision, args.source)
    payload = {"source": args.source, "dataset": cohort.folder.name, "preset": args.preset,
               "recipe": asdict(recipe), "world_size": procs.world,
               "device": procs.device.type, "precision": precision.name,
               "history": progress.history, "best_epoch": progress.best_epoch,
               "epochs_run": progress.epoch, "classes": cohort.classes,
               "citation": anchors.CITATIONS["TABLE3"], **scores}
    if procs.main:
        if args.save_predictions:       # beside the data: restricted where the data are
            np.save(out / "test_predictions.npy", proba)
        write_results(out / RESULTS, payload)
        print(f"wrote {out / RESULTS}", flush=True)
    procs.barrier()
    return payload


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m cxrlab.core.replicate`` (and of each torchrun process)."""
    args = parse_args(argv)
    try:
        run(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        stop_processes()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
