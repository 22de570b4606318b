"""Chapter 6: training-time debiasing methods, each a small function that does one thing.

Four ways to train a "No Finding" classifier, compared by Yang et al. (*Nature Medicine*
2024;30:2838-2848) for how much they encode demographics and how fair they are in and out of
distribution:

* ``erm``: plain empirical risk minimisation (the mean loss);
* ``reweight``: every (group, label) cell gets the same total weight (:func:`group_weights`;
  :func:`balanced_sampler` draws the same balance by resampling instead);
* ``groupdro``: the loss of the worst (group, label) cell is minimised
  (:class:`GroupDROLoss`, Sagawa, Koh, Hashimoto and Liang, ICLR 2020, Algorithm 1);
* ``adversarial``: an adversary tries to read the group off the features through a
  gradient-reversal layer (:class:`GradientReversal`, Ganin and Lempitsky, ICML 2015), so the
  encoder learns features from which the group is hard to read (:class:`AdversarialHead`).

Post-processing with thresholds is in :func:`fit_threshold_optimizer` (fairlearn's
``ThresholdOptimizer``). :func:`train_debiased` trains a :mod:`cxrlab.models` network with any
of the four and :func:`group_encoding` measures how well a linear probe reads the group off its
frozen features. :func:`train_or_load` wraps :func:`train_debiased` with a small on-disk cache
(see :func:`model_cache_key`), so a re-run of the chapter, or a chapter after
``python -m cxrlab.prebuild``, loads its models instead of training them.

>>> group_weights(["A", "A", "A", "B"]).round(2).tolist()
[0.67, 0.67, 0.67, 2.0]
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from torch import nn
from tqdm.auto import tqdm

METHODS: tuple[str, ...] = ("erm", "reweight", "groupdro", "adversarial")

__all__ = [
    "METHODS", "cell_codes", "group_weights", "effective_group_weight", "balanced_sampler",
    "GroupDROLoss", "GradientReversal", "grad_reverse", "AdversarialHead", "TrainingRun",
    "train_debiased", "small_network", "shrink", "group_encoding", "underdiagnosis_gap",
    "ScoreColumn", "fit_threshold_optimizer", "check_gap_shift", "training_split",
    "model_cache_dir", "model_cache_key", "train_or_load", "train_or_load_all",
]


# ---------------------------------------------------------------------------------------------
# groups and weights
# ---------------------------------------------------------------------------------------------
def cell_codes(groups: Any, labels: Any = None) -> tuple[np.ndarray, list[tuple]]:
    """Integer cell per sample: the group, or the (group, label) pair when ``labels`` is given.

    >>> codes, cells = cell_codes(["A", "B", "A"], [1, 0, 0])
    >>> codes.tolist(), cells
    ([1, 2, 0], [('A', 0), ('A', 1), ('B', 0)])
    """
    g = [str(x) for x in np.asarray(groups, dtype=object)]
    keys = [(x,) for x in g] if labels is None else \
        list(zip(g, (int(v) for v in np.asarray(labels))))
    cells = sorted(set(keys))
    lookup = {k: i for i, k in enumerate(cells)}
    return np.array([lookup[k] for k in keys], dtype=np.int64), cells


def group_weights(groups: Any, labels: Any = None) -> np.ndarray:
    """Per-sample weights that give every group (or (group, label) cell) the same total weight.

    A sample in a cell of ``n_c`` samples gets ``n / (n_cells * n_c)``, so the weights have
    mean 1 and each cell's weights sum to ``n / n_cells``: a minority counts as much as a
    majority ("group-balanced reweighting"; Idrissi et al. 2022 call it simple data balancing).

    >>> group_weights(["A", "A", "B", "B"], [0, 1, 1, 1]).tolist()
    [1.3333333333333333, 1.3333333333333333, 0.6666666666666666, 0.6666666666666666]
    """
    codes, cells = cell_codes(groups, labels)
    counts = np.bincount(codes, minlength=len(cells)).astype(float)
    return len(codes) / (len(cells) * counts[codes])


def effective_group_weight(weights: Any, groups: Any) -> dict[str, float]:
    """Each group's share of the total weight (1 / n_groups each after :func:`group_weights`).

    >>> effective_group_weight([1, 1, 1, 3], ["A", "A", "A", "B"])
    {'A': 0.5, 'B': 0.5}
    """
    w = pd.Series(np.asarray(weights, dtype=float))
    g = pd.Series([str(x) for x in np.asarray(groups, dtype=object)])
    share = w.groupby(g).sum() / w.sum()
    return {str(k): float(v) for k, v in share.items()}


def balanced_sampler(groups: Any, labels: Any = None, num_samples: int | None = None,
                     seed: int = 0) -> torch.utils.data.WeightedRandomSampler:
    """A sampler that draws every group (or cell) equally often, with replacement (resampling).

    >>> s = balanced_sampler(["A"] * 90 + ["B"] * 10, num_samples=2000)
    >>> draws = np.array(list(s)); 0.45 < float((draws >= 90).mean()) < 0.55
    True
    """
    weights = torch.as_tensor(group_weights(groups, labels), dtype=torch.double)
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.WeightedRandomSampler(weights, num_samples or len(weights),
                                                  replacement=True, generator=generator)


# ---------------------------------------------------------------------------------------------
# GroupDRO (Sagawa et al. 2020)
# ---------------------------------------------------------------------------------------------
class GroupDROLoss(nn.Module):
    """Online GroupDRO: minimise the worst group's expected loss.

    Keeps a distribution ``q`` over ``n_groups`` groups. Each step it computes every group's
    mean loss in the batch, raises ``q_g`` by ``exp(step_size * loss_g)`` and renormalises
    (exponentiated gradient ascent on the group weights), then returns ``sum_g q_g loss_g`` for
    the model to descend (Sagawa et al., "Distributionally robust neural networks", ICLR 2020,
    Algorithm 1). Groups absent from a batch keep their weight and contribute nothing.

    >>> dro = GroupDROLoss(2, step_size=1.0)
    >>> loss = dro(torch.tensor([1.0, 1.0, 3.0]), torch.tensor([0, 0, 1]))
    >>> bool(dro.q[1] > dro.q[0]), round(float(loss), 3)
    (True, 2.762)
    """

    def __init__(self, n_groups: int, step_size: float = 0.01) -> None:
        super().__init__()
        if n_groups < 1:
            raise ValueError(f"need at least one group, got {n_groups}")
        self.n_groups = int(n_groups)
        self.step_size = float(step_size)
        self.register_buffer("q", torch.full((self.n_groups,), 1.0 / self.n_groups))

    def group_losses(self, losses: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss per group in the batch and which groups were present."""
        groups = groups.long()
        total = torch.zeros(self.n_groups, dtype=losses.dtype, device=losses.device)
        total = total.index_add(0, groups, losses)
        count = torch.bincount(groups, minlength=self.n_groups).to(losses.dtype)
        present = count > 0
        return total / count.clamp(min=1), present

    def forward(self, losses: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """``losses``: per-sample losses ``(B,)``; ``groups``: group index per sample ``(B,)``."""
        mean, present = self.group_losses(losses, groups)
        if self.training:
            with torch.no_grad():
                q = self.q * torch.exp(self.step_size * mean.detach() * present)
                self.q.copy_(q / q.sum())
        return (self.q * mean).sum()


# ---------------------------------------------------------------------------------------------
# gradient reversal (Ganin and Lempitsky 2015)
# ---------------------------------------------------------------------------------------------
class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, strength: float) -> torch.Tensor:
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.strength * grad, None


def grad_reverse(x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Identity forwards; multiplies the gradient by ``-strength`` backwards.

    >>> x = torch.ones(2, requires_grad=True); grad_reverse(x, 0.5).sum().backward(); x.grad.tolist()
    [-0.5, -0.5]
    """
    return _ReverseGradient.apply(x, float(strength))


class GradientReversal(nn.Module):
    """The gradient-reversal layer of Ganin and Lempitsky ("Unsupervised domain adaptation by
    backpropagation", ICML 2015) as a module: whatever is trained *after* it learns to predict,
    everything *before* it learns to make that prediction fail."""

    def __init__(self, strength: float = 1.0) -> None:
        super().__init__()
        self.strength = float(strength)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.strength)


class AdversarialHead(nn.Module):
    """Gradient reversal, then a small MLP that predicts the group from the features.

    Add its cross-entropy to the task loss: the head gets better at reading the group, the
    encoder (through the reversed gradient) gets better at hiding it.

    >>> head = AdversarialHead(8, 3); head(torch.zeros(4, 8)).shape
    torch.Size([4, 3])
    """

    def __init__(self, n_features: int, n_groups: int, hidden: int = 32,
                 strength: float = 1.0) -> None:
        super().__init__()
        self.reverse = GradientReversal(strength)
        self.net = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU(),
                                 nn.Linear(hidden, n_groups))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(self.reverse(features))


# ---------------------------------------------------------------------------------------------
# training a network with one of the methods
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainingRun:
    """What :func:`train_debiased` did: the method, the seed and the mean loss per epoch."""

    method: str
    seed: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    dro_weights: list[float] | None = None
    loaded: bool = False


def _as_float_images(images: np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images))
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return x.unsqueeze(1) if x.ndim == 3 else x


def train_debiased(model: nn.Module, images: np.ndarray, labels: Any, groups: Any,
                   method: str = "erm", *, epochs: int = 3, lr: float = 2e-3,
                   batch_size: int = 64, seed: int = 0, adversary_strength: float = 1.0,
                   dro_step: float = 0.05, device: str = "cpu",
                   progress: bool = True) -> TrainingRun:
    """Train a binary classifier (``model(x)`` -> one logit; ``model.features(x)`` -> features)
    on uint8 ``images (N, H, W)`` and 0/1 ``labels`` with one of :data:`METHODS`.

    ``groups`` are the sensitive attribute (never an input to the model). ``reweight`` and
    ``groupdro`` work on (group, label) cells; ``adversarial`` adds an :class:`AdversarialHead`
    on ``model.features`` whose reversed gradient has ``adversary_strength``. Adam with a
    cosine schedule, a fixed number of epochs; ``model.task`` is set to ``"binary"`` so
    :func:`cxrlab.train.predict` returns probabilities.
    """
    import time

    from cxrlab.train import seed_everything

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    start = time.perf_counter()
    seed_everything(seed)
    y = torch.as_tensor(np.asarray(labels, dtype=np.float32))
    group_idx, _ = cell_codes(groups)
    cells, cell_list = cell_codes(groups, np.asarray(labels).astype(int))
    weights = torch.as_tensor(group_weights(groups, np.asarray(labels).astype(int)), dtype=torch.float32)
    x_all = _as_float_images(images)
    model.to(device).train()
    model.task = "binary"
    adversary = (AdversarialHead(model.n_features, int(group_idx.max()) + 1,
                                 strength=adversary_strength).to(device)
                 if method == "adversarial" else None)
    dro = GroupDROLoss(len(cell_list), dro_step).to(device) if method == "groupdro" else None
    params = list(model.parameters()) + (list(adversary.parameters()) if adversary else [])
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=1e-4)
    n_batches = (len(y) + batch_size - 1) // batch_size
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(epochs * n_batches, 1),
                                                          eta_min=lr * 0.01)
    generator = torch.Generator().manual_seed(seed)
    run = TrainingRun(method, seed)
    bar = tqdm(range(epochs), desc=f"{method} seed {seed}", disable=not progress, leave=False)
    for _ in bar:
        order, total = torch.randperm(len(y), generator=generator), 0.0
        for b in range(n_batches):
            idx = order[b * batch_size:(b + 1) * batch_size]
            loss = _batch_loss(model, x_all[idx].to(device), y[idx].to(device), method,
                               weights[idx].to(device), torch.as_tensor(cells[idx]).to(device),
                               torch.as_tensor(group_idx[idx]).to(device), adversary, dro)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
        run.losses.append(total / len(y))
        bar.set_postfix(loss=f"{run.losses[-1]:.3f}")
    model.eval()
    run.seconds = time.perf_counter() - start
    run.dro_weights = dro.q.tolist() if dro is not None else None
    return run


def _batch_loss(model, x, y, method, w, cells, group_idx, adversary, dro) -> torch.Tensor:
    features = model.features(x)
    logits = model.head(model.dropout(features)).squeeze(1)
    per_sample = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    if method == "reweight":
        return (w * per_sample).sum() / w.sum()
    if method == "groupdro":
        return dro(per_sample, cells)
    loss = per_sample.mean()
    if method == "adversarial":
        loss = loss + nn.functional.cross_entropy(adversary(features), group_idx)
    return loss


def small_network(channels: Sequence[int] = (8, 16, 32, 64)) -> nn.Module:
    """A :class:`cxrlab.models.OneChannelNet` on a narrower :class:`~cxrlab.models.SmallCNN`
    (half the default width) with one output: the chapter trains eight of them in CPU minutes.

    >>> small_network().n_features
    64
    """
    from cxrlab.models import OneChannelNet, SmallCNN

    return OneChannelNet("smallcnn-narrow", SmallCNN(tuple(channels)), int(channels[-1]), 1)


def shrink(images: np.ndarray, factor: int) -> np.ndarray:
    """Average-pool uint8 images ``(N, H, W)`` by ``factor`` (64 px -> 32 px with 2).

    >>> shrink(np.arange(16, dtype=np.uint8).reshape(1, 4, 4), 2).tolist()
    [[[2, 4], [10, 12]]]
    """
    if factor == 1:
        return np.asarray(images)
    n, h, w = np.shape(images)
    x = np.asarray(images, dtype=np.float32)[:, :h - h % factor, :w - w % factor]
    x = x.reshape(n, h // factor, factor, w // factor, factor).mean(axis=(2, 4))
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# the chapter's training data and a cache of trained models
# ---------------------------------------------------------------------------------------------
def training_split(session: Any, factor: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chapter 6's training data from a session: the train split's images shrunk by ``factor``
    (:func:`shrink`), its recorded "No Finding" labels (0/1) and its groups (``race``)."""
    rows = session.split_index("train")
    labels = session.manifest["no_finding"].to_numpy()[rows].astype(int)
    groups = session.manifest["race"].to_numpy()[rows]
    return shrink(session.images[rows], factor), labels, groups


def model_cache_dir(session: Any) -> Path:
    """Where chapter 6's models of this session are cached: ``<data>/models/debiasing``."""
    return Path(session.model_dir) / "debiasing"


def _digest(*arrays: Any) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a) if np.asarray(a).dtype != object
                                 else np.asarray(a).astype(str))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def model_cache_key(images: np.ndarray, labels: Any, groups: Any, method: str, seed: int,
                    channels: Sequence[int], options: dict[str, Any]) -> dict[str, Any]:
    """Everything that changes a trained model: the method, the seed, the network's widths,
    the training options (epochs, lr, batch size, ...) and a SHA-256 digest of the training
    images, labels and groups (so the cohort, the preset, the image size and the shrink factor
    are all in it). Plain values only: it is saved next to the weights and compared on load.

    >>> k = model_cache_key(np.zeros((2, 4, 4), np.uint8), [0, 1], ["A", "B"], "erm", 0, (8,), {"epochs": 1})
    >>> k["method"], k["seed"], len(k["data"])
    ('erm', 0, 64)
    """
    return {"version": 1, "method": str(method), "seed": int(seed),
            "channels": [int(c) for c in channels],
            "options": {k: options[k] for k in sorted(options)},
            "data": _digest(images, np.asarray(labels, dtype=np.int64), groups)}


def _cache_file(cache_dir: Path, key: dict[str, Any], tag: str) -> Path:
    short = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = "-".join(p for p in (tag, key["method"], f"seed{key['seed']}", short) if p)
    return Path(cache_dir) / f"{name}.pt"


def _save_atomically(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        torch.save(payload, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _load_cached(path: Path, key: dict[str, Any], channels: Sequence[int]):
    """The cached model and run at ``path`` if it holds ``key``, else ``None``."""
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") != key:
            return None
        model = small_network(channels)
        model.load_state_dict(saved["state_dict"])
    except Exception as error:   # a damaged or foreign file: say so in one line, then retrain
        print(f"ignoring unreadable cached model {path.name}: {type(error).__name__}: {error}")
        return None
    model.task = "binary"
    model.eval()
    run = TrainingRun(key["method"], key["seed"], list(saved["losses"]), float(saved["seconds"]),
                      saved["dro_weights"], loaded=True)
    return model, run


def train_or_load(images: np.ndarray, labels: Any, groups: Any, method: str = "erm", *,
                  seed: int = 0, channels: Sequence[int] = (8, 16, 32, 64),
                  cache_dir: str | Path | None = None, tag: str = "", progress: bool = True,
                  **options: Any) -> tuple[nn.Module, TrainingRun]:
    """A :func:`small_network` trained with :func:`train_debiased`, or loaded from ``cache_dir``.

    The network is initialised from ``seed`` (:func:`cxrlab.train.seed_everything`), then
    trained with ``options`` (``epochs``, ``lr``, ``batch_size``, ``adversary_strength``,
    ``dro_step``). With a ``cache_dir`` the weights and the run are saved there atomically as
    plain tensors and values under :func:`model_cache_key` (``tag``, e.g. the session's
    ``results_key``, only makes the file name readable) and loaded with
    ``torch.load(..., weights_only=True)`` next time; ``run.loaded`` tells which happened.
    Any change of the data or a knob gives a new key, so the model is trained again.
    """
    from cxrlab.train import seed_everything

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    key = model_cache_key(images, labels, groups, method, seed, channels, options)
    path = _cache_file(Path(cache_dir), key, tag) if cache_dir is not None else None
    cached = _load_cached(path, key, channels) if path is not None else None
    if cached is not None:
        return cached
    seed_everything(seed)
    model = small_network(channels)
    run = train_debiased(model, images, labels, groups, method, seed=seed, progress=progress, **options)
    if path is not None:
        _save_atomically(path, {"key": key, "state_dict": model.state_dict(),
                                "losses": [float(v) for v in run.losses], "seconds": float(run.seconds),
                                "dro_weights": run.dro_weights})
    return model, run


def train_or_load_all(session: Any, methods: Sequence[str], seeds: Sequence[int], *,
                      epochs: int = 3, factor: int = 1, progress: bool = True,
                      **options: Any) -> dict[tuple[str, int], tuple[nn.Module, TrainingRun]]:
    """Chapter 6's models: one :func:`train_or_load` per (method, seed) on
    :func:`training_split` ``(session, factor)``, cached in :func:`model_cache_dir`. The chapter
    and ``python -m cxrlab.prebuild`` both call this, so what prebuild trains is what the
    chapter loads."""
    x, y, g = training_split(session, factor)
    jobs = [(m, int(s)) for m in methods for s in seeds]
    out = {}
    for method, seed in tqdm(jobs, desc="No Finding models", disable=not progress, leave=False):
        out[method, seed] = train_or_load(x, y, g, method, seed=seed, epochs=epochs,
                                          cache_dir=model_cache_dir(session), tag=session.results_key,
                                          progress=False, **options)
    return out


# ---------------------------------------------------------------------------------------------
# how much does a model encode the group, and how unfair is it?
# ---------------------------------------------------------------------------------------------
def group_encoding(model: nn.Module, train_images: np.ndarray, train_groups: Any,
                   test_images: np.ndarray, test_groups: Any, patients: Any,
                   classes: Sequence[str], n_boot: int = 200, seed: int = 0) -> dict[str, float]:
    """Macro one-vs-rest AUC (with a patient-bootstrap CI) of a linear probe for the group on
    the model's frozen penultimate features: Yang et al. 2024's "demographic encoding".

    Returns ``{"auc", "ci_low", "ci_high"}``; 0.5 means the features do not carry the group.
    """
    from cxrlab import probes

    f_train = probes.model_features(model, train_images)
    f_test = probes.model_features(model, test_images)
    result = probes.linear_probe(f_train, probes.encode_target(train_groups, classes), f_test,
                                 probes.encode_target(test_groups, classes), classes,
                                 np.asarray(patients).astype(str), n_boot, seed)
    row = result.table[result.table["class"] == ("macro" if len(classes) > 2 else str(classes[-1]))]
    return {k: float(row[k].iloc[0]) for k in ("auc", "ci_low", "ci_high")}


def underdiagnosis_gap(no_finding_true: Any, called_healthy: Any, groups: Any, patients: Any,
                       group: str, reference: str, n_boot: int = 200,
                       seed: int = 0) -> dict[str, float]:
    """Underdiagnosis of ``group`` minus that of ``reference`` with a patient-bootstrap CI
    (:func:`cxrlab.fairness.underdiagnosis_table`). Returns ``{"gap", "ci_low", "ci_high"}``.

    >>> underdiagnosis_gap([False, False, False, False], [True, True, False, True],
    ...                    ["B", "B", "A", "A"], [1, 2, 3, 4], "B", "A", n_boot=20)["gap"]
    0.5
    """
    from cxrlab import fairness

    table = fairness.underdiagnosis_table(np.asarray(no_finding_true, bool),
                                          np.asarray(called_healthy, bool),
                                          pd.Series(np.asarray(groups, dtype=object), name="group"),
                                          np.asarray(patients), n_boot=n_boot, seed=seed,
                                          reference=reference)
    row = table.loc[group]
    return {"gap": float(row["gap"]), "ci_low": float(row["gap_low"]), "ci_high": float(row["gap_high"])}


# ---------------------------------------------------------------------------------------------
# post-processing with fairlearn
# ---------------------------------------------------------------------------------------------
class ScoreColumn(ClassifierMixin, BaseEstimator):
    """A "classifier" whose input is already a score: ``predict_proba(X)`` -> ``[1 - s, s]``
    for ``s = X[:, 0]``. It lets fairlearn's ``ThresholdOptimizer`` post-process the scores of
    a network that was trained elsewhere (``prefit=True``)."""

    def fit(self, X: Any, y: Any = None) -> "ScoreColumn":
        self.classes_ = np.array([0, 1])
        self.is_fitted_ = True
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        s = np.asarray(X, dtype=float).reshape(len(X), -1)[:, 0]
        return np.column_stack([1 - s, s])

    def predict(self, X: Any) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)


def fit_threshold_optimizer(no_finding: Any, score: Any, groups: Any,
                            constraint: str = "false_positive_rate_parity", seed: int = 0):
    """fairlearn's ``ThresholdOptimizer`` on fixed scores: group-specific (randomised)
    thresholds that equalise the false-positive rate of "No Finding" (underdiagnosis) across
    ``groups`` while keeping balanced accuracy as high as it can (Hardt et al. 2016).

    Predict with ``opt.predict(np.c_[score], sensitive_features=groups, random_state=seed)``.
    """
    from fairlearn.postprocessing import ThresholdOptimizer

    opt = ThresholdOptimizer(estimator=ScoreColumn().fit(None), constraints=constraint,
                             objective="balanced_accuracy_score", prefit=True,
                             predict_method="predict_proba")
    opt.fit(np.c_[np.asarray(score, dtype=float)], np.asarray(no_finding).astype(int),
            sensitive_features=np.asarray(groups, dtype=object))
    return opt


# ---------------------------------------------------------------------------------------------
# learner self-check
# ---------------------------------------------------------------------------------------------
def check_gap_shift(answer: Any, results: pd.DataFrame) -> None:
    """Self-check for the chapter's exercise: ``answer`` maps each method to the mean change of
    its underdiagnosis gap from in distribution to out of distribution (OOD minus ID, averaged
    over seeds), from the ``results`` table (columns ``method, gap_id, gap_ood``).

    Rejects the usual slip, ID minus OOD (the sign flipped), and a mean of absolute gaps.
    """
    if isinstance(answer, pd.Series):
        answer = answer.to_dict()
    if not isinstance(answer, dict):
        raise AssertionError(f"Expected a dict or Series method -> number, got {type(answer).__name__}.")
    expected = (results["gap_ood"] - results["gap_id"]).groupby(results["method"]).mean()
    missing = [m for m in expected.index if m not in answer]
    if missing:
        raise AssertionError(f"No value for method(s) {missing}; your answer has {sorted(answer)}.")
    for method, want in expected.items():
        have = float(answer[method])
        if abs(have - want) <= 1e-9:
            continue
        sub = results[results["method"] == method]
        slips = {"in-distribution minus out-of-distribution (the sign is flipped)": -want,
                 "a change of absolute gaps": float((sub["gap_ood"].abs() - sub["gap_id"].abs()).mean()),
                 "the out-of-distribution gap alone": float(sub["gap_ood"].mean())}
        slip = next((name for name, v in slips.items() if abs(have - v) <= 1e-9), None)
        raise AssertionError(
            f"{method}: you have {have:+.4f}, expected {want:+.4f}."
            + (f" That number is {slip}." if slip else "")
            + " Take gap_ood - gap_id for each seed, then the mean over seeds.")
    print("Correct: change of the gap from in to out of distribution, per method: "
          + ", ".join(f"{m} {v:+.3f}" for m, v in expected.items()) + ".")
