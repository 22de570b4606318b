"""What a model can be trained to predict: one registry of targets, one of tasks.

A *target* is a manifest attribute (``race``, ``sex``, ``age``, ``no_finding``, ``findings``,
any ``finding_*`` column): its task, its class names and how its values are encoded. A *task*
(``multiclass``, ``binary``, ``multilabel``, ``regression``) says how a network is trained and
read for such a target: how many outputs, which loss, how outputs become predictions, which
values are missing, and what early stopping watches. Every other module asks these two
registries instead of comparing strings.

>>> target_spec("sex").task, target_spec("sex").classes
('binary', ('F', 'M'))
>>> target_spec("finding_effusion").classes
('absent', 'present')
>>> task_spec("multiclass").n_outputs(["A", "B", "C"]), task_spec("regression").monitor
(3, 'val_loss')
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import pandas as pd
import torch
from torch import nn

Task = Literal["multiclass", "binary", "multilabel", "regression"]
TASKS: tuple[Task, ...] = get_args(Task)

Reader = Callable[[pd.DataFrame, str, Sequence[str], Sequence[str]], np.ndarray]


# ----------------------------------------------------------------------------------- tasks
def _masked_bce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    known = ~torch.isnan(y)
    return nn.functional.binary_cross_entropy_with_logits(out[known], y[known])


def _binary_bce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(out.squeeze(1), y)


def _regression_loss(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    base = nn.functional.l1_loss if kind == "l1" else nn.functional.mse_loss
    return lambda out, y: base(out.squeeze(1), y)


@dataclass(frozen=True)
class TaskSpec:
    """How a network is trained and read for one kind of target.

    Attributes:
        name: the task.
        per_class_outputs: one output per class (multiclass, multilabel) instead of one.
        dtype: NumPy dtype of the training targets.
        monitor: what early stopping watches (``val_auc`` or ``val_loss``).
    """

    name: Task
    per_class_outputs: bool
    dtype: type
    monitor: str

    def n_outputs(self, classes: Sequence[str]) -> int:
        """Number of network outputs for ``classes``."""
        return len(classes) if self.per_class_outputs else 1

    def loss(self, regression_loss: str = "l1") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The training loss on raw outputs (``regression_loss``: ``l1`` or ``mse``)."""
        if self.name == "multiclass":
            return nn.functional.cross_entropy
        if self.name == "binary":
            return _binary_bce
        if self.name == "multilabel":
            return _masked_bce
        return _regression_loss(regression_loss)

    def to_predictions(self, out: torch.Tensor) -> torch.Tensor:
        """Probabilities from raw outputs (regression: the raw values, still scaled)."""
        if self.name == "multiclass":
            return torch.softmax(out, dim=1)
        if self.name == "binary":
            return torch.sigmoid(out.squeeze(1))
        if self.name == "multilabel":
            return torch.sigmoid(out)
        return out.squeeze(1)

    def known(self, targets: np.ndarray) -> np.ndarray:
        """Which rows have a target (missing: -1 for class indices, NaN for floats)."""
        if self.name == "regression":
            return ~np.isnan(targets)
        if self.name == "multilabel":
            return ~np.all(np.isnan(targets), axis=1)
        return targets >= 0

    def typed(self, targets: np.ndarray) -> np.ndarray:
        """Targets in the dtype the loss expects."""
        return targets.astype(self.dtype)


TASK_SPECS: dict[Task, TaskSpec] = {
    "multiclass": TaskSpec("multiclass", True, np.int64, "val_auc"),
    "binary": TaskSpec("binary", False, np.float32, "val_auc"),
    "multilabel": TaskSpec("multilabel", True, np.float32, "val_auc"),
    "regression": TaskSpec("regression", False, np.float32, "val_loss"),
}


def task_spec(task: str) -> TaskSpec:
    """The :class:`TaskSpec` of ``task``; ``ValueError`` names the known tasks."""
    try:
        return TASK_SPECS[task]  # type: ignore[index]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}") from None


# --------------------------------------------------------------------------------- targets
def _read_categories(df: pd.DataFrame, column: str, categories: Sequence[str],
                     findings: Sequence[str]) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(categories)}
    return np.array([lookup.get(v, -1) if isinstance(v, str) else -1
                     for v in df[column].astype(object)], dtype=np.int64)


def _read_sex(df: pd.DataFrame, column: str, categories: Sequence[str],
              findings: Sequence[str]) -> np.ndarray:
    return df[column].map({"F": 0, "M": 1}).fillna(-1).astype("int64").to_numpy()


def _read_flag(df: pd.DataFrame, column: str, categories: Sequence[str],
               findings: Sequence[str]) -> np.ndarray:
    return df[column].astype("Int64").fillna(-1).to_numpy(dtype=np.int64)


def _read_float(df: pd.DataFrame, column: str, categories: Sequence[str],
                findings: Sequence[str]) -> np.ndarray:
    return df[column].astype("float64").to_numpy(dtype=np.float64, na_value=np.nan)


def _read_findings(df: pd.DataFrame, column: str, categories: Sequence[str],
                   findings: Sequence[str]) -> np.ndarray:
    if not findings:
        raise ValueError("this dataset has no finding_* columns")
    return df[list(findings)].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)


@dataclass(frozen=True)
class Target:
    """One attribute a model can predict.

    Attributes:
        name: the target's name (also its manifest column, except ``findings``).
        task: how it is learned (:data:`TASKS`).
        encoding: how :meth:`values` encodes it, in words.
        classes: fixed class names; ``None`` where they come from the data (``race``: the
            categories present; ``findings``: the finding columns).
        read: the function that reads the values from a manifest.
    """

    name: str
    task: Task
    encoding: str
    classes: tuple[str, ...] | None
    read: Reader

    def class_names(self, categories: Sequence[str], findings: Sequence[str]) -> list[str]:
        """Class names, given the data's race categories and finding columns."""
        if self.classes is not None:
            return list(self.classes)
        if self.task == "multilabel":
            return [c.removeprefix("finding_") for c in findings]
        return list(categories)

    def values(self, manifest: pd.DataFrame, categories: Sequence[str],
               findings: Sequence[str]) -> np.ndarray:
        """The encoded values aligned with ``manifest`` rows (see :attr:`encoding`)."""
        return self.read(manifest, self.name, categories, findings)


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("race", "multiclass", "index into the categories present, sorted; -1 missing",
           None, _read_categories),
    Target("sex", "binary", "0 = F, 1 = M; -1 missing", ("F", "M"), _read_sex),
    Target("no_finding", "binary", "1 = no finding recorded, 0 = a finding; -1 missing",
           ("finding", "no finding"), _read_flag),
    Target("age", "regression", "years as floats; NaN missing", ("age",), _read_float),
    Target("findings", "multilabel", "one 0/1 float column per finding_*; NaN missing",
           None, _read_findings),
)}


def target_spec(name: str, findings: Sequence[str] = ()) -> Target:
    """The :class:`Target` called ``name``; ``finding_*`` columns are binary targets.

    ``findings`` (the dataset's finding columns) only makes the error message complete.
    """
    if name in TARGETS:
        return TARGETS[name]
    if name.startswith("finding_"):
        return Target(name, "binary", "1 = finding recorded, 0 = not; -1 missing",
                      ("absent", "present"), _read_flag)
    options = [*TARGETS, *findings]
    raise ValueError(f"unknown target {name!r}; choose one of {', '.join(options)}")
