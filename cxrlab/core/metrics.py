"""Metrics with patient-level bootstrap confidence intervals.

Patients contribute several images, and images of one patient are alike, so confidence
intervals resample *patients* (keeping all their images), as Gichoya et al. 2022 report
per-class one-vs-rest AUCs with 95% CIs. Point estimates come from scikit-learn.

>>> y = np.array([0, 0, 1, 1]); p = np.array([0.1, 0.4, 0.35, 0.8])
>>> round(float(roc_auc_score(y, p)), 2)
0.75
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve


class CI(NamedTuple):
    """A point estimate with its bootstrap interval and how many resamples were usable."""

    estimate: float
    low: float
    high: float
    n_boot: int
    n_skipped: int = 0

    def __str__(self) -> str:
        return f"{self.estimate:.3f} (95% CI {self.low:.3f}-{self.high:.3f})"


def _group_codes(groups: Sequence | np.ndarray | None, n: int) -> tuple[np.ndarray, int]:
    """Integer codes 0..G-1 for the resampling units (each row its own unit when None)."""
    if groups is None:
        return np.arange(n), n
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} samples")
    _, codes = np.unique(groups.astype(str), return_inverse=True)
    return codes, int(codes.max()) + 1 if n else 0


def bootstrap_weights(groups: Sequence | np.ndarray | None, n: int, n_boot: int,
                      seed: int = 0) -> np.ndarray:
    """``(n_boot, n)`` integer weights: how often each sample appears in each resample.

    Resampling draws whole groups (patients) with replacement, so a sample's weight is the
    number of times its patient was drawn: all images of a patient share one weight.
    """
    codes, n_groups = _group_codes(groups, n)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))
    counts = np.stack([np.bincount(d, minlength=n_groups) for d in draws]) if n_boot else \
        np.zeros((0, n_groups), int)
    return counts[:, codes]


def _percentile_ci(values: list[float], alpha: float) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def weighted_aucs(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUCs of one binary problem under many sample weightings at once, ``(B,)``.

    The Mann-Whitney form (ties count one half), vectorised over the ``(B, N)`` weights:
    identical to ``roc_auc_score(y, score, sample_weight=w)`` for each row, and hundreds of
    times faster for a bootstrap. Rows with no positive or no negative weight give NaN.
    """
    levels, level_of = np.unique(score, return_inverse=True)
    pos = np.zeros((len(weights), len(levels)))
    neg = np.zeros((len(weights), len(levels)))
    positive = y == 1
    np.add.at(pos.T, level_of[positive], weights[:, positive].T)
    np.add.at(neg.T, level_of[~positive], weights[:, ~positive].T)
    below = np.cumsum(neg, axis=1) - neg                   # negatives strictly below each level
    wins = (pos * (below + 0.5 * neg)).sum(axis=1)
    total = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, wins / total, np.nan)


def _auc_with_ci(y: np.ndarray, score: np.ndarray, weights: np.ndarray,
                 alpha: float) -> tuple[float, float, float, int]:
    """One binary AUC with its bootstrap CI; resamples with a single class are skipped."""
    known = ~np.isnan(y.astype(float))
    y, score, weights = y[known].astype(int), score[known], weights[:, known]
    if len(np.unique(y)) < 2:
        return float("nan"), float("nan"), float("nan"), len(weights)
    auc = float(roc_auc_score(y, score))
    boots = weighted_aucs(y, score, weights) if len(weights) else np.zeros(0)
    usable = boots[~np.isnan(boots)]
    low, high = _percentile_ci(list(usable), alpha)
    return auc, low, high, int(len(boots) - len(usable))


def _one_vs_rest(y_true: np.ndarray, proba: np.ndarray,
                 classes: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Binary indicator matrix ``(N, K)`` (NaN = unknown), scores ``(N, K)``, names."""
    y_true, proba = np.asarray(y_true), np.asarray(proba, dtype=float)
    if proba.ndim == 1:                                       # binary: score of the positive
        names = [str(classes[-1])] if classes is not None else ["positive"]
        y = y_true.astype(float).reshape(-1, 1)
        y[y < 0] = np.nan
        return y, proba.reshape(-1, 1), names
    k = proba.shape[1]
    names = [str(c) for c in classes] if classes is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} probability columns")
    if y_true.ndim == 2:                                      # multilabel
        return y_true.astype(float), proba, names
    y = (y_true.reshape(-1, 1) == np.arange(k)).astype(float)  # multiclass, -1 = unknown
    y[y_true < 0] = np.nan
    return y, proba, names


def auc_table(
    y_true: Sequence | np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str] | None = None,
    groups: Sequence | np.ndarray | None = None,
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
    report_skipped: bool = True,
    macro: bool = False,
) -> pd.DataFrame:
    """One-vs-rest AUC per class with a patient-level bootstrap ``1 - alpha`` CI.

    ``y_true``: class indices ``(N,)`` with ``proba`` ``(N, C)`` (multiclass; -1 = unknown),
    0/1 labels with ``proba`` ``(N,)`` (binary: one row, for ``classes[-1]``), or an ``(N, K)``
    0/1 matrix with NaN for unknown (multilabel). ``groups`` (patient ids) are the resampling
    units; ``None`` resamples images. Resamples where a class has no positives or no negatives
    are skipped; ``df.attrs["n_skipped"]`` says how many per class, and a printed note says so
    too unless ``report_skipped`` is False. A class with no positives or no negatives has no
    AUC: its ``auc`` and interval are NaN, and :func:`undefined_auc_note` says why in a sentence
    (show that sentence, not the NaN, to a reader).

    Columns: ``class, auc, ci_low, ci_high, n_pos, n_neg``. With ``macro`` and three or more
    classes a last row, class ``"macro"``, holds :func:`macro_auc_ci` (the mean over the classes
    that have an AUC); its ``n_pos`` / ``n_neg`` are the classes' counts summed.

    >>> y = np.arange(30) % 3
    >>> auc_table(y, np.eye(3)[y], ["A", "B", "C"], n_boot=20).auc.tolist()
    [1.0, 1.0, 1.0]
    >>> auc_table(y, np.eye(3)[y], ["A", "B", "C"], n_boot=0, macro=True)["class"].tolist()
    ['A', 'B', 'C', 'macro']
    """
    y, scores, names = _one_vs_rest(y_true, proba, classes)
    weights = bootstrap_weights(groups, len(y), n_boot, seed)
    rows, skipped = [], {}
    for j, name in enumerate(names):
        auc, low, high, n_skip = _auc_with_ci(y[:, j], scores[:, j], weights, alpha)
        skipped[name] = n_skip
        rows.append({"class": name, "auc": auc, "ci_low": low, "ci_high": high,
                     "n_pos": int(np.nansum(y[:, j] == 1)), "n_neg": int(np.nansum(y[:, j] == 0))})
    if macro and len(names) > 2:
        rows.append(_macro_row(y_true, proba, classes, groups, n_boot, seed, alpha, rows))
    table = pd.DataFrame(rows, columns=["class", "auc", "ci_low", "ci_high", "n_pos", "n_neg"])
    table.attrs.update(n_boot=n_boot, n_skipped=skipped, alpha=alpha)
    if report_skipped and any(skipped.values()):
        worst = max(skipped.values())
        print(f"note: up to {worst} of {n_boot} bootstrap resamples had only one class for some "
              "class and were skipped (small test set)")
    return table


def _macro_row(y_true: Sequence | np.ndarray, proba: np.ndarray, classes: Sequence[str] | None,
               groups: Sequence | np.ndarray | None, n_boot: int, seed: int, alpha: float,
               class_rows: list[dict]) -> dict:
    """The ``macro`` row of :func:`auc_table`: :func:`macro_auc_ci`, NaN when no class has an AUC."""
    counts = {"n_pos": sum(r["n_pos"] for r in class_rows), "n_neg": sum(r["n_neg"] for r in class_rows)}
    if all(np.isnan(r["auc"]) for r in class_rows):
        return {"class": "macro", "auc": float("nan"), "ci_low": float("nan"),
                "ci_high": float("nan"), **counts}
    ci = macro_auc_ci(y_true, proba, classes, groups, n_boot, seed, alpha)
    return {"class": "macro", "auc": ci.estimate, "ci_low": ci.low, "ci_high": ci.high, **counts}


def undefined_auc_note(table: pd.DataFrame, what: str = "the test set") -> str:
    """One sentence naming the classes of an AUC table (``class, auc, n_pos, n_neg``, as
    :func:`auc_table` returns) whose AUC is undefined, and why; ``""`` when every AUC exists.

    An AUC ranks positives against negatives, so a class with none of one kind has no AUC: the
    table holds NaN, and this sentence is what a reader is shown instead.

    >>> t = pd.DataFrame({"class": ["A", "B"], "auc": [0.8, np.nan], "n_pos": [5, 0], "n_neg": [5, 10]})
    >>> undefined_auc_note(t)
    'No AUC for B: the test set holds no image of B (an AUC needs images of the class and of the others).'
    """
    undefined = table[table["auc"].isna() & (table["class"] != "macro")]
    if undefined.empty:
        return ""
    only = [str(c) for c in undefined.loc[(undefined["n_pos"] > 0) & (undefined["n_neg"] == 0), "class"]]
    absent = [str(c) for c in undefined.loc[undefined["n_pos"] == 0, "class"]]
    holds = ([f"images of {', '.join(only)} only"] if only else []) + (
        [f"no image of {', '.join(absent)}"] if absent else [])
    why = (f"{what} holds {' and '.join(holds)}" if holds
           else "too few images of the class or of the others")
    return (f"No AUC for {', '.join(map(str, undefined['class']))}: {why} (an AUC needs images "
            "of the class and of the others).")


def macro_auc(y_true: Sequence | np.ndarray, proba: np.ndarray,
              classes: Sequence[str] | None = None) -> float:
    """Mean of the one-vs-rest AUCs over the classes that have positives and negatives.

    >>> macro_auc([0, 1, 1, 0], np.array([0.2, 0.9, 0.6, 0.1]))
    1.0
    """
    y, scores, _ = _one_vs_rest(y_true, proba, classes)
    aucs = []
    for j in range(y.shape[1]):
        known = ~np.isnan(y[:, j])
        if len(np.unique(y[known, j])) == 2:
            aucs.append(roc_auc_score(y[known, j].astype(int), scores[known, j]))
    if not aucs:
        raise ValueError("macro AUC needs at least one class with positives and negatives")
    return float(np.mean(aucs))


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays: Sequence | np.ndarray,
    groups: Sequence | np.ndarray | None = None,
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
) -> CI:
    """Any metric with a (patient-level) bootstrap CI: ``metric_fn(*arrays)`` on resamples.

    Resamples draw whole groups with replacement and keep all their rows; a resample on
    which ``metric_fn`` raises ``ValueError`` (e.g. only one class) is skipped and counted.

    >>> bootstrap_ci(lambda y, p: float(np.mean(np.abs(y - p))), np.ones(4), np.ones(4),
    ...              n_boot=10).high
    0.0
    """
    arrays_np = [np.asarray(a) for a in arrays]
    n = len(arrays_np[0])
    if any(len(a) != n for a in arrays_np):
        raise ValueError("all arrays must have the same length")
    estimate = float(metric_fn(*arrays_np))
    boots, skipped = [], 0
    for w in bootstrap_weights(groups, n, n_boot, seed):
        index = np.repeat(np.arange(n), w)
        try:
            boots.append(float(metric_fn(*(a[index] for a in arrays_np))))
        except ValueError:
            skipped += 1
    low, high = _percentile_ci(boots, alpha)
    return CI(estimate, low, high, len(boots), skipped)


def macro_auc_ci(y_true: Sequence | np.ndarray, proba: np.ndarray,
                 classes: Sequence[str] | None = None, groups: Sequence | np.ndarray | None = None,
                 n_boot: int = 200, seed: int = 0, alpha: float = 0.05) -> CI:
    """:func:`macro_auc` with a patient-bootstrap CI, vectorised over the resamples.

    The same resamples and result as ``bootstrap_ci(macro_auc, ...)`` (each resample averages
    the classes that have positives and negatives in it; a resample with none is skipped), but
    one :func:`weighted_aucs` call per class instead of one scikit-learn call per class and
    resample: the degradation sweeps of chapter 4 compute dozens of these.
    """
    estimate = macro_auc(y_true, proba, classes)
    y, scores, _ = _one_vs_rest(y_true, proba, classes)
    weights = bootstrap_weights(groups, len(y), n_boot, seed)
    per_class = np.full((len(weights), y.shape[1]), np.nan)
    for j in range(y.shape[1]):
        known = ~np.isnan(y[:, j])
        if len(weights):
            per_class[:, j] = weighted_aucs(y[known, j].astype(int), scores[known, j], weights[:, known])
    usable = ~np.isnan(per_class).all(axis=1)
    with np.errstate(invalid="ignore"):
        boots = np.nanmean(per_class[usable], axis=1) if usable.any() else np.zeros(0)
    low, high = _percentile_ci(list(boots), alpha)
    return CI(estimate, low, high, int(usable.sum()), int((~usable).sum()))


def roc_curves(y_true: Sequence | np.ndarray, proba: np.ndarray,
               classes: Sequence[str] | None = None) -> dict[str, dict[str, np.ndarray | float]]:
    """One-vs-rest ROC curves: ``{class: {"fpr", "tpr", "thresholds", "auc"}}``."""
    y, scores, names = _one_vs_rest(y_true, proba, classes)
    curves = {}
    for j, name in enumerate(names):
        known = ~np.isnan(y[:, j])
        yj = y[known, j].astype(int)
        if len(np.unique(yj)) < 2:
            continue
        fpr, tpr, thr = roc_curve(yj, scores[known, j])
        curves[name] = {"fpr": fpr, "tpr": tpr, "thresholds": thr,
                        "auc": float(roc_auc_score(yj, scores[known, j]))}
    return curves


def confusion(y_true: Sequence | np.ndarray, proba_or_pred: np.ndarray,
              classes: Sequence[str], normalize: str | None = None) -> pd.DataFrame:
    """Confusion matrix as a DataFrame (rows: true class, columns: predicted class).

    ``proba_or_pred``: probabilities ``(N, C)`` (argmax is taken), binary scores ``(N,)``
    (threshold 0.5) or predicted indices. ``normalize``: None, ``"true"``, ``"pred"``, ``"all"``.
    """
    y_true = np.asarray(y_true)
    pred = np.asarray(proba_or_pred)
    if pred.ndim == 2:
        pred = pred.argmax(axis=1)
    elif np.issubdtype(pred.dtype, np.floating):
        pred = (pred >= 0.5).astype(int)
    known = y_true >= 0
    matrix = confusion_matrix(y_true[known], pred[known], labels=np.arange(len(classes)),
                              normalize=normalize)
    return pd.DataFrame(matrix, index=pd.Index(list(classes), name="true"),
                        columns=pd.Index(list(classes), name="predicted"))


def calibration(y_true: Sequence | np.ndarray, proba: np.ndarray,
                classes: Sequence[str] | None = None, n_bins: int = 10,
                strategy: str = "uniform") -> pd.DataFrame:
    """Reliability curve per class (one-vs-rest): ``class, mean_predicted, fraction_positive``.

    Uses :func:`sklearn.calibration.calibration_curve`; empty bins are left out.
    """
    y, scores, names = _one_vs_rest(y_true, proba, classes)
    frames = []
    for j, name in enumerate(names):
        known = ~np.isnan(y[:, j])
        if len(np.unique(y[known, j])) < 2:
            continue
        frac, mean = calibration_curve(y[known, j].astype(int), scores[known, j],
                                       n_bins=n_bins, strategy=strategy)
        frames.append(pd.DataFrame({"class": name, "mean_predicted": mean,
                                    "fraction_positive": frac}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["class", "mean_predicted", "fraction_positive"])


def binary_auc_ci(y_true: Sequence | np.ndarray, score: np.ndarray,
                  groups: Sequence | np.ndarray | None = None, n_boot: int = 200,
                  seed: int = 0) -> CI:
    """AUC of a binary label (1/0, -1 = unknown; e.g. sex, 1 = male) against a score, with a
    patient-level bootstrap CI (vectorised; resamples with one class only are skipped).

    >>> str(binary_auc_ci([0, 1, -1, 1], [0.1, 0.9, 0.2, 0.7], n_boot=0))
    '1.000 (95% CI nan-nan)'
    """
    y = np.asarray(y_true).astype(int)
    known = y >= 0
    g = None if groups is None else np.asarray(groups)[known]
    weights = bootstrap_weights(g, int(known.sum()), n_boot, seed)
    auc, low, high, skipped = _auc_with_ci(y[known], np.asarray(score, float)[known],
                                           weights, 0.05)
    return CI(auc, low, high, n_boot - skipped, skipped)


def age_mae(age_true: Sequence | np.ndarray, age_pred: np.ndarray,
            groups: Sequence | np.ndarray | None = None, n_boot: int = 200,
            seed: int = 0) -> CI:
    """Mean absolute error of an age model in years (NaN ages dropped) with a bootstrap CI.

    >>> str(age_mae([50, 60], [52, 58], n_boot=20))
    '2.000 (95% CI 2.000-2.000)'
    """
    y = np.asarray(age_true, dtype=float)
    p = np.asarray(age_pred, dtype=float)
    known = ~np.isnan(y)
    g = None if groups is None else np.asarray(groups)[known]
    return bootstrap_ci(lambda a, b: float(np.mean(np.abs(a - b))), y[known], p[known],
                        groups=g, n_boot=n_boot, seed=seed)
