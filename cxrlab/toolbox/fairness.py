"""Chapter 5: underdiagnosis, group metrics and operating points.

Vocabulary (Seyyed-Kalantari et al. 2021, Nature Medicine 27:2176): a classifier predicts
"No Finding" (the patient looks healthy). The positive class is *healthy*, so

* **underdiagnosis** = false-positive rate of "No Finding" = the fraction of patients *with*
  a finding whom the model calls healthy (their care may be delayed);
* **overdiagnosis** = false-negative rate of "No Finding" = the fraction of healthy patients
  flagged as having a finding.

Everything here works on plain arrays: ``no_finding_true`` (bool, the label you audit
against), a score ``proba`` for "No Finding" (higher = healthier) or thresholded predictions,
and a table of sensitive features (self-reported race or synthetic group, sex, age band).
Point estimates come from :class:`fairlearn.metrics.MetricFrame`; confidence intervals from a
patient-level bootstrap that resamples patients (not images) and computes every cell of a
table from the same resamples, so gaps between groups get an honest interval too.

>>> import numpy as np
>>> y = np.array([True, True, False, False, False])     # 2 healthy, 3 with a finding
>>> pred = np.array([True, False, True, False, False])  # one sick patient called healthy
>>> underdiagnosis_rate(y, pred), overdiagnosis_rate(y, pred)
(0.3333333333333333, 0.5)
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame
from tqdm.auto import tqdm

AGE_EDGES: tuple[float, ...] = (0, 20, 40, 60, 80, np.inf)
AGE_LABELS: tuple[str, ...] = ("0-20", "20-40", "40-60", "60-80", "80+")
TOL = 1e-6

__all__ = [
    "AGE_EDGES", "AGE_LABELS", "OperatingPoint", "age_band", "confusion_counts",
    "underdiagnosis_rate", "overdiagnosis_rate", "accuracy", "true_no_finding",
    "group_metric_frame", "underdiagnosis_table", "threshold_at_fpr", "per_group_thresholds",
    "apply_thresholds", "operating_point", "tradeoff_table", "plot_group_rates",
    "check_underdiagnosis_by_group", "check_threshold_constraint",
]


# ---------------------------------------------------------------------------------------------
# basic rates
# ---------------------------------------------------------------------------------------------
def _as_bool(values: Any, name: str) -> np.ndarray:
    arr = pd.Series(values).to_numpy()
    if pd.isna(arr).any():
        raise ValueError(f"{name} has missing values; drop those rows first")
    if arr.dtype != bool and not np.isin(arr, [0, 1, True, False]).all():
        raise ValueError(f"{name} must be boolean (True = no finding), got values like {arr[:3]}")
    return arr.astype(bool)


def confusion_counts(no_finding_true: Any, no_finding_pred: Any) -> dict[str, int]:
    """Confusion counts with "No Finding" as the positive class.

    ``fp`` = sick patients called healthy (underdiagnosed), ``fn`` = healthy patients flagged.

    >>> confusion_counts([True, False, False], [True, True, False])
    {'tp': 1, 'fp': 1, 'tn': 1, 'fn': 0}
    """
    y = _as_bool(no_finding_true, "no_finding_true")
    p = _as_bool(no_finding_pred, "no_finding_pred")
    if y.shape != p.shape:
        raise ValueError(f"labels and predictions differ in length: {y.shape} vs {p.shape}")
    return {"tp": int((y & p).sum()), "fp": int((~y & p).sum()),
            "tn": int((~y & ~p).sum()), "fn": int((y & ~p).sum())}


def underdiagnosis_rate(no_finding_true: Any, no_finding_pred: Any) -> float:
    """False-positive rate of "No Finding": patients with a finding whom the model calls healthy.

    NaN when there is no patient with a finding.

    >>> underdiagnosis_rate([False, False, False, True], [True, False, False, True])
    0.3333333333333333
    """
    c = confusion_counts(no_finding_true, no_finding_pred)
    n_sick = c["fp"] + c["tn"]
    return c["fp"] / n_sick if n_sick else float("nan")


def overdiagnosis_rate(no_finding_true: Any, no_finding_pred: Any) -> float:
    """False-negative rate of "No Finding": healthy patients flagged as having a finding.

    >>> overdiagnosis_rate([True, True, False], [True, False, False])
    0.5
    """
    c = confusion_counts(no_finding_true, no_finding_pred)
    n_healthy = c["tp"] + c["fn"]
    return c["fn"] / n_healthy if n_healthy else float("nan")


def accuracy(no_finding_true: Any, no_finding_pred: Any) -> float:
    """Fraction of correct "No Finding" calls.

    >>> accuracy([True, False], [True, True])
    0.5
    """
    c = confusion_counts(no_finding_true, no_finding_pred)
    n = sum(c.values())
    return (c["tp"] + c["tn"]) / n if n else float("nan")


def _n_with_finding(no_finding_true: Any, no_finding_pred: Any) -> int:
    return int((~_as_bool(no_finding_true, "no_finding_true")).sum())


def _n_healthy(no_finding_true: Any, no_finding_pred: Any) -> int:
    return int(_as_bool(no_finding_true, "no_finding_true").sum())


def _n(no_finding_true: Any, no_finding_pred: Any) -> int:
    return int(len(no_finding_true))


# ---------------------------------------------------------------------------------------------
# labels and sensitive features
# ---------------------------------------------------------------------------------------------
def age_band(age: Any, edges: Sequence[float] = AGE_EDGES,
             labels: Sequence[str] = AGE_LABELS) -> pd.Series:
    """Age in years -> the paper's bands (0-20, 20-40, 40-60, 60-80, 80+), left-closed.

    >>> age_band([5, 20, 79.5, 80, None]).tolist()
    ['0-20', '20-40', '60-80', '80+', nan]
    """
    if len(labels) != len(edges) - 1:
        raise ValueError(f"need {len(edges) - 1} labels for {len(edges)} edges, got {len(labels)}")
    values = pd.to_numeric(pd.Series(age), errors="coerce").astype(float)
    bands = pd.cut(values, bins=list(edges), labels=list(labels), right=False)
    return bands.astype(object).where(bands.notna(), np.nan)


def true_no_finding(manifest: pd.DataFrame, prefix: str = "true_") -> pd.Series:
    """"No Finding" according to the *true* labels of a synthetic cohort.

    The synthetic manifest's ``finding_*``/``no_finding`` columns hold what was *recorded*
    (possibly with planted under-recording); ``true_*`` columns hold the truth. A patient is
    truly healthy when no ``true_*`` finding column is set. Uses ``true_no_finding`` directly
    when the manifest has it.

    >>> df = pd.DataFrame({"true_finding_a": [True, False], "true_finding_b": [False, False]})
    >>> true_no_finding(df).tolist()
    [False, True]
    """
    if f"{prefix}no_finding" in manifest.columns:
        return manifest[f"{prefix}no_finding"].astype(bool).rename("true_no_finding")
    cols = [c for c in manifest.columns if c.startswith(prefix)]
    if not cols:
        raise KeyError(f"no '{prefix}*' columns: only the synthetic cohort knows the true labels")
    sick = manifest[cols].fillna(False).astype(bool).any(axis=1)
    return (~sick).rename("true_no_finding")


def _features_frame(sensitive: Any) -> pd.DataFrame:
    if isinstance(sensitive, pd.DataFrame):
        frame = sensitive.copy()
    elif isinstance(sensitive, pd.Series):
        frame = sensitive.to_frame(sensitive.name or "group")
    else:
        frame = pd.DataFrame({"group": np.asarray(sensitive, dtype=object)})
    frame = frame.reset_index(drop=True).astype(object)
    return frame.where(frame.notna(), None)


def _complete_rows(frame: pd.DataFrame) -> np.ndarray:
    return frame.notna().all(axis=1).to_numpy()


# ---------------------------------------------------------------------------------------------
# group metrics
# ---------------------------------------------------------------------------------------------
METRICS = {
    "underdiagnosis": underdiagnosis_rate,
    "overdiagnosis": overdiagnosis_rate,
    "accuracy": accuracy,
    "n": _n,
    "n_with_finding": _n_with_finding,
    "n_healthy": _n_healthy,
}


def group_metric_frame(no_finding_true: Any, no_finding_pred: Any, sensitive: Any) -> MetricFrame:
    """A fairlearn ``MetricFrame`` of underdiagnosis, overdiagnosis, accuracy and counts.

    ``sensitive`` is a Series (one attribute) or DataFrame (its columns are crossed, giving
    intersections such as group x sex). Rows with a missing attribute are left out.

    >>> mf = group_metric_frame([False, False, True, False], [True, False, True, False],
    ...                         pd.Series(["A", "A", "B", "B"], name="group"))
    >>> mf.by_group["underdiagnosis"].tolist()
    [0.5, 0.0]
    """
    y = _as_bool(no_finding_true, "no_finding_true")
    p = _as_bool(no_finding_pred, "no_finding_pred")
    frame = _features_frame(sensitive)
    if len(frame) != len(y) or len(p) != len(y):
        raise ValueError(f"lengths differ: labels {len(y)}, predictions {len(p)}, "
                         f"sensitive features {len(frame)}")
    keep = _complete_rows(frame)
    if not keep.any():
        raise ValueError("every row has a missing sensitive feature")
    return MetricFrame(metrics=METRICS, y_true=y[keep], y_pred=p[keep],
                       sensitive_features=frame[keep].reset_index(drop=True))


def _cell_codes(frame: pd.DataFrame) -> tuple[np.ndarray, pd.Index]:
    """Integer cell per row and the sorted cells (an Index, or a MultiIndex for intersections)."""
    keys = list(frame.itertuples(index=False, name=None))
    cells = sorted(set(keys), key=lambda k: tuple(map(str, k)))
    lookup = {k: i for i, k in enumerate(cells)}
    codes = np.array([lookup[k] for k in keys], dtype=int)
    if frame.shape[1] == 1:
        return codes, pd.Index([k[0] for k in cells], name=frame.columns[0])
    return codes, pd.MultiIndex.from_tuples(cells, names=list(frame.columns))


def _patient_cell_counts(y: np.ndarray, p: np.ndarray, patients: np.ndarray,
                         cells: np.ndarray, n_cells: int) -> np.ndarray:
    """Counts (n_patients, n_cells, 4): underdiagnosed, with finding, overdiagnosed, healthy."""
    pid, _ = pd.factorize(pd.Series(patients).astype(str))
    counts = np.zeros((pid.max() + 1, n_cells, 4))
    for k, ind in enumerate((~y & p, ~y, y & ~p, y)):
        np.add.at(counts[:, :, k], (pid, cells), ind.astype(float))
    return counts


def _bootstrap_rates(counts: np.ndarray, n_boot: int, seed: int,
                     chunk: int = 50) -> np.ndarray:
    """Patient-level bootstrap: (n_boot, n_cells, 2) underdiagnosis and overdiagnosis rates."""
    rng = np.random.default_rng(seed)
    n_pat = counts.shape[0]
    flat = counts.reshape(n_pat, -1)
    out = []
    for start in tqdm(range(0, n_boot, chunk), desc="bootstrap", leave=False,
                      disable=n_boot <= 2 * chunk):
        size = min(chunk, n_boot - start)
        draws = rng.integers(0, n_pat, size=(size, n_pat))
        weights = np.stack([np.bincount(d, minlength=n_pat) for d in draws]).astype(float)
        totals = (weights @ flat).reshape(size, counts.shape[1], 4)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.stack([totals[..., 0] / totals[..., 1],
                                 totals[..., 2] / totals[..., 3]], axis=-1))
    return np.concatenate(out)


MIN_PATIENTS_FOR_CI = 2
"""A cell's interval needs at least this many patients in its denominator (else NaN)."""


def underdiagnosis_table(no_finding_true: Any, no_finding_pred: Any, sensitive: Any,
                         patient_ids: Any, *, n_boot: int = 200, seed: int = 0,
                         ci: float = 0.95, reference: Any = None) -> pd.DataFrame:
    """Per-group (or per-intersection) underdiagnosis and overdiagnosis with bootstrap CIs.

    Point estimates come from :func:`group_metric_frame` (fairlearn). The intervals resample
    *patients* with replacement ``n_boot`` times (several images of one patient move together).
    With ``reference`` (a group label, or a tuple for intersections) the table adds
    ``gap`` = underdiagnosis minus the reference's, with an interval from the same resamples.

    Columns: ``n, n_with_finding, n_healthy, underdiagnosis, underdiagnosis_low,
    underdiagnosis_high, overdiagnosis, overdiagnosis_low, overdiagnosis_high, accuracy``
    (and ``gap, gap_low, gap_high``). ``table.attrs['n_dropped']`` counts rows left out for a
    missing attribute. A rate whose denominator holds fewer than :data:`MIN_PATIENTS_FOR_CI`
    patients gets no interval (NaN): resampling one patient always gives the same rate.

    >>> t = underdiagnosis_table([False, False, True, False], [True, False, True, False],
    ...                          pd.Series(["A", "A", "B", "B"], name="group"),
    ...                          ["p1", "p2", "p3", "p4"], n_boot=20)
    >>> t["underdiagnosis"].tolist()
    [0.5, 0.0]
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie in (0, 1), got {ci}")
    mf = group_metric_frame(no_finding_true, no_finding_pred, sensitive)
    frame = _features_frame(sensitive)
    keep = _complete_rows(frame)
    y = _as_bool(no_finding_true, "no_finding_true")[keep]
    p = _as_bool(no_finding_pred, "no_finding_pred")[keep]
    patients = np.asarray(patient_ids, dtype=object)
    if len(patients) != len(keep):
        raise ValueError(f"patient_ids has {len(patients)} rows, labels have {len(keep)}")
    codes, cells = _cell_codes(frame[keep].reset_index(drop=True))
    table = mf.by_group.reindex(cells)
    for col in ("n", "n_with_finding", "n_healthy"):
        table[col] = table[col].astype(int)
    counts = _patient_cell_counts(y, p, patients[keep], codes, len(cells))
    boots = _bootstrap_rates(counts, n_boot, seed)
    lo, hi = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
    for k, name in enumerate(("underdiagnosis", "overdiagnosis")):
        # a rate resting on one patient has no spread to resample: no interval (NaN), not 0-0
        enough = (counts[:, :, 2 * k + 1] > 0).sum(axis=0) >= MIN_PATIENTS_FOR_CI
        table[f"{name}_low"] = np.where(enough, _nanpercentile(boots[..., k], lo), np.nan)
        table[f"{name}_high"] = np.where(enough, _nanpercentile(boots[..., k], hi), np.nan)
    if reference is not None:
        _add_gap(table, boots, cells, reference, lo, hi)
    order = ["n", "n_with_finding", "n_healthy", "underdiagnosis", "underdiagnosis_low",
             "underdiagnosis_high", "overdiagnosis", "overdiagnosis_low", "overdiagnosis_high",
             "accuracy"] + [c for c in ("gap", "gap_low", "gap_high") if c in table]
    table = table[order]
    table.attrs.update(n_dropped=int((~keep).sum()), n_boot=n_boot, ci=ci)
    return table


def _add_gap(table: pd.DataFrame, boots: np.ndarray, cells: pd.Index, reference: Any,
             lo: float, hi: float) -> None:
    if reference not in cells:
        raise KeyError(f"reference {reference!r} is not one of the groups: {list(cells)}")
    ref = cells.get_loc(reference)
    diff = boots[..., 0] - boots[:, [ref], 0]
    table["gap"] = table["underdiagnosis"] - table["underdiagnosis"].iloc[ref]
    table["gap_low"] = _nanpercentile(diff, lo)
    table["gap_high"] = _nanpercentile(diff, hi)


def _nanpercentile(values: np.ndarray, q: float) -> np.ndarray:
    """Percentile over resamples, NaN (quietly) for a cell that never had a denominator."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanpercentile(values, q, axis=0)


# ---------------------------------------------------------------------------------------------
# thresholds and operating points
# ---------------------------------------------------------------------------------------------
def _scores(proba: Any) -> np.ndarray:
    """Scores as a floating array, keeping float32 as float32 so thresholds match its grid."""
    s = np.asarray(proba)
    return s if np.issubdtype(s.dtype, np.floating) else s.astype(float)


def threshold_at_fpr(no_finding_true: Any, proba: Any, target_fpr: float) -> float:
    """The lowest threshold whose underdiagnosis rate (FPR of "No Finding") is <= ``target_fpr``.

    A patient is called healthy when ``proba >= threshold``. Raising the threshold can only
    lower the underdiagnosis rate, so the lowest admissible threshold is the one that calls
    the most healthy patients healthy (the fewest false alarms) under the constraint.

    >>> y = np.array([False, False, False, False, True])
    >>> t = threshold_at_fpr(y, [0.1, 0.2, 0.3, 0.9, 0.8], target_fpr=0.25)
    >>> underdiagnosis_rate(y, np.array([0.1, 0.2, 0.3, 0.9, 0.8]) >= t)
    0.25
    """
    if not 0 <= target_fpr <= 1:
        raise ValueError(f"target_fpr must lie in [0, 1], got {target_fpr}")
    y = _as_bool(no_finding_true, "no_finding_true")
    s = _scores(proba)
    if s.shape != y.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape} vs {s.shape}")
    sick = np.sort(s[~y])
    if len(sick) == 0:
        raise ValueError("no patient with a finding: the underdiagnosis rate is undefined")
    allowed = int(np.floor(target_fpr * len(sick) + TOL))   # sick patients we may call healthy
    if allowed >= len(sick):
        return float(min(s.min(), 0.0))
    # the next representable value in the scores' own dtype (float32 scores compare against a
    # Python float as float32 under NumPy 2, so a float64 step would round away)
    return float(np.nextafter(sick[len(sick) - allowed - 1], s.dtype.type(np.inf)))


def per_group_thresholds(no_finding_true: Any, proba: Any, groups: Any,
                         target_fpr: float) -> dict[Any, float]:
    """One threshold per group, each meeting ``target_fpr`` within its group.

    >>> t = per_group_thresholds([False, True, False, True], [0.2, 0.9, 0.6, 0.7], ["A", "A", "B", "B"], 0.0)
    >>> {k: round(v, 3) for k, v in t.items()}
    {'A': 0.2, 'B': 0.6}
    """
    y = _as_bool(no_finding_true, "no_finding_true")
    s = _scores(proba)
    g = pd.Series(np.asarray(groups, dtype=object))
    out = {}
    for name in sorted(g.dropna().unique(), key=str):
        mask = (g == name).to_numpy()
        out[name] = threshold_at_fpr(y[mask], s[mask], target_fpr)
    return out


def apply_thresholds(proba: Any, groups: Any, thresholds: float | Mapping[Any, float]) -> np.ndarray:
    """Predicted "No Finding" (``proba >= threshold``), one global threshold or one per group.

    >>> apply_thresholds([0.4, 0.6], ["A", "B"], {"A": 0.3, "B": 0.7}).tolist()
    [True, False]
    """
    s = _scores(proba)
    if not isinstance(thresholds, Mapping):
        return s >= float(thresholds)
    g = np.asarray(groups, dtype=object)
    missing = set(pd.Series(g).dropna().unique()) - set(thresholds)
    if missing:
        raise KeyError(f"no threshold for group(s) {sorted(map(str, missing))}")
    t = np.array([thresholds.get(x, np.inf) for x in g], dtype=float)
    return s >= t


@dataclass
class OperatingPoint:
    """Where a classifier operates: its thresholds and what they do to each group."""

    mode: str                                 # "global" or "per_group"
    target_fpr: float
    thresholds: dict[Any, float]              # per group (equal values in global mode)
    per_group: pd.DataFrame                   # index group; underdiagnosis, overdiagnosis, n...
    accuracy: float
    underdiagnosis: float                     # over all patients
    overdiagnosis: float
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for a notebook or a widget."""
        return (f"{self.mode} threshold(s) at target underdiagnosis {self.target_fpr:.2f}: "
                f"accuracy {self.accuracy:.3f}, underdiagnosis {self.underdiagnosis:.3f}, "
                f"overdiagnosis {self.overdiagnosis:.3f}")


def operating_point(no_finding_true: Any, proba: Any, groups: Any, target_fpr: float,
                    mode: str = "global", fit: tuple[Any, Any, Any] | None = None) -> OperatingPoint:
    """Choose thresholds for ``target_fpr`` and measure every group there.

    ``mode="global"``: one threshold so the *overall* underdiagnosis rate is at most the
    target (groups then differ). ``mode="per_group"``: each group gets its own threshold so
    that *its* underdiagnosis rate is at most the target (thresholds then differ by group,
    which means treating patients differently by group: contested, see chapter 5).

    >>> op = operating_point([False, True, False, True], [0.2, 0.9, 0.6, 0.7], ["A", "A", "B", "B"], 0.0)
    >>> op.accuracy, round(op.thresholds["A"], 3)
    (1.0, 0.6)

    ``fit=(labels, scores, groups)`` chooses the thresholds on other rows (the validation
    split, with the labels a hospital has) and measures them on these.
    """
    y = _as_bool(no_finding_true, "no_finding_true")
    s = _scores(proba)
    g = pd.Series(np.asarray(groups, dtype=object), name="group")
    names = sorted(g.dropna().unique(), key=str)
    fy, fs, fg = (y, s, g) if fit is None else (
        _as_bool(fit[0], "fit labels"), _scores(fit[1]), pd.Series(np.asarray(fit[2], dtype=object)))
    if mode == "global":
        t = threshold_at_fpr(fy, fs, target_fpr)
        thresholds = {name: t for name in names}
    elif mode == "per_group":
        thresholds = per_group_thresholds(fy, fs, fg, target_fpr)
    else:
        raise ValueError(f"mode must be 'global' or 'per_group', got {mode!r}")
    pred = apply_thresholds(s, g, thresholds)
    keep = g.notna().to_numpy()
    per_group = group_metric_frame(y[keep], pred[keep], g[keep].reset_index(drop=True)).by_group
    per_group["threshold"] = [thresholds[k] for k in per_group.index]
    return OperatingPoint(mode, float(target_fpr), thresholds, per_group,
                          accuracy(y[keep], pred[keep]), underdiagnosis_rate(y[keep], pred[keep]),
                          overdiagnosis_rate(y[keep], pred[keep]))


def tradeoff_table(no_finding_true: Any, proba: Any, groups: Any,
                   targets: Sequence[float] = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5),
                   fit: tuple[Any, Any, Any] | None = None) -> pd.DataFrame:
    """Global versus per-group thresholds over a grid of target underdiagnosis rates.

    One row per (target, mode, group) with the group's threshold, underdiagnosis and
    overdiagnosis, and the overall accuracy at that operating point; ``fit`` as in
    :func:`operating_point`.

    >>> t = tradeoff_table([False, True, False, True], [0.2, 0.9, 0.6, 0.7], ["A", "A", "B", "B"], [0.0])
    >>> sorted(t["mode"].unique())
    ['global', 'per_group']
    """
    rows = []
    for target in targets:
        for mode in ("global", "per_group"):
            op = operating_point(no_finding_true, proba, groups, target, mode, fit)
            for name, r in op.per_group.iterrows():
                rows.append({"target_fpr": float(target), "mode": mode, "group": name,
                             "threshold": r["threshold"], "underdiagnosis": r["underdiagnosis"],
                             "overdiagnosis": r["overdiagnosis"], "accuracy": op.accuracy})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# figure
# ---------------------------------------------------------------------------------------------
def plot_group_rates(table: pd.DataFrame, metric: str = "underdiagnosis", ax: Any = None,
                     anchors: Mapping[str, float] | None = None, title: str | None = None) -> Any:
    """Bar chart of one rate per group with its CI; optional published values as markers.

    ``table`` is an :func:`underdiagnosis_table`. ``anchors`` maps a label to a published
    rate (e.g. the paper's MIMIC-CXR values), drawn as horizontal ticks on a second panel.
    Returns the matplotlib axes.
    """
    import matplotlib.pyplot as plt

    from cxrlab.core.plots import PALETTE

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    labels = [" x ".join(map(str, k)) if isinstance(k, tuple) else str(k) for k in table.index]
    values = table[metric].to_numpy(float)
    err = np.vstack([values - table[f"{metric}_low"].to_numpy(float),
                     table[f"{metric}_high"].to_numpy(float) - values])
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(labels))]
    ax.bar(labels, values, yerr=np.nan_to_num(err), capsize=4, color=colours)
    if anchors:
        x0 = len(labels) + 0.5
        for i, (name, val) in enumerate(anchors.items()):
            ax.bar(x0 + i, val, color="white", edgecolor="0.3", hatch="//")
        ax.set_xticks(list(range(len(labels))) + [x0 + i for i in range(len(anchors))])
        ax.set_xticklabels(labels + [f"{k}\n(paper)" for k in anchors], rotation=30, ha="right")
    ax.set_ylabel(f"{metric} rate")
    ax.set_title(title or f"{metric.capitalize()} by group (95% patient-bootstrap CI)")
    return ax


# ---------------------------------------------------------------------------------------------
# learner self-checks
# ---------------------------------------------------------------------------------------------
def _answer_by_group(answer: Any) -> pd.Series:
    if isinstance(answer, MetricFrame):
        answer = answer.by_group
    if isinstance(answer, pd.DataFrame):
        if "underdiagnosis" not in answer:
            raise AssertionError("Your table has no 'underdiagnosis' column; return a Series or "
                                 "dict mapping each group to its rate.")
        answer = answer["underdiagnosis"]
    if isinstance(answer, Mapping):
        answer = pd.Series(dict(answer))
    if not isinstance(answer, pd.Series):
        raise AssertionError(f"Expected a dict or pandas Series group -> rate, got {type(answer).__name__}.")
    return answer.astype(float)


def check_underdiagnosis_by_group(answer: Any, no_finding_true: Any, no_finding_pred: Any,
                                  groups: Any) -> None:
    """Self-check: ``answer`` maps each group to its underdiagnosis rate.

    Prints a success message or raises AssertionError saying what went wrong (a false-negative
    rate, specificity, or dividing by all patients are the usual slips).
    """
    y = _as_bool(no_finding_true, "no_finding_true")
    p = _as_bool(no_finding_pred, "no_finding_pred")
    g = pd.Series(np.asarray(groups, dtype=object))
    got = _answer_by_group(answer)
    expected = {k: underdiagnosis_rate(y[(g == k).to_numpy()], p[(g == k).to_numpy()])
                for k in sorted(g.dropna().unique(), key=str)}
    missing = [k for k in expected if k not in got.index]
    if missing:
        raise AssertionError(f"No rate for group(s) {missing}; your answer has {list(got.index)}.")
    for k, want in expected.items():
        have = got[k]
        if abs(have - want) <= TOL:
            continue
        m = (g == k).to_numpy()
        hints = {
            "overdiagnosis (FNR: healthy patients flagged)": overdiagnosis_rate(y[m], p[m]),
            "1 - underdiagnosis (specificity)": 1 - want,
            "sick-called-healthy divided by ALL patients": float((~y[m] & p[m]).mean()),
        }
        slip = next((name for name, v in hints.items() if abs(have - v) <= TOL), None)
        why = (f" That number is the {slip}." if slip else "")
        raise AssertionError(
            f"Group {k}: you have {have:.4f}, expected {want:.4f}.{why} Underdiagnosis is the "
            "fraction of patients WITH a finding (no_finding is False) whom the model calls "
            "healthy (predicted no_finding is True).")
    print(f"Correct: underdiagnosis for {len(expected)} groups "
          + ", ".join(f"{k} {v:.3f}" for k, v in expected.items()) + ".")


def check_threshold_constraint(threshold: float, no_finding_true: Any, proba: Any, groups: Any,
                               max_fpr: float) -> None:
    """Self-check: one global ``threshold`` keeps EVERY group's underdiagnosis <= ``max_fpr``,
    and is the lowest such threshold (so it flags as few healthy patients as it can).
    """
    if not np.isscalar(threshold) or not np.isfinite(float(threshold)):
        raise AssertionError(f"Expected one number, got {threshold!r}.")
    y = _as_bool(no_finding_true, "no_finding_true")
    s = _scores(proba)
    g = pd.Series(np.asarray(groups, dtype=object))
    pred = s >= float(threshold)
    for k in sorted(g.dropna().unique(), key=str):
        m = (g == k).to_numpy()
        rate = underdiagnosis_rate(y[m], pred[m])
        if rate > max_fpr + TOL:
            raise AssertionError(
                f"At threshold {threshold:.4f} group {k}'s underdiagnosis is {rate:.3f} > "
                f"{max_fpr}. Raise the threshold: the constraint must hold for every group, "
                "so the strictest group decides.")
    best = max(per_group_thresholds(y, s, g, max_fpr).values())
    extra = int((s[y] >= best).sum() - (s[y] >= float(threshold)).sum())
    if extra > 0:
        raise AssertionError(
            f"Every group meets the constraint, but a lower threshold ({best:.4f}) also does and "
            f"would call {extra} more healthy patients healthy. Find the lowest admissible one.")
    print(f"Correct: threshold {float(threshold):.4f} keeps every group's underdiagnosis "
          f"<= {max_fpr} and flags as few healthy patients as possible.")


#: The library code each exercise's answer must not call (the checks compare against it).
UNDERDIAGNOSIS_LIBRARY = (underdiagnosis_rate, overdiagnosis_rate, confusion_counts, group_metric_frame,
                          underdiagnosis_table, operating_point, tradeoff_table)
FAIR_THRESHOLD_LIBRARY = (per_group_thresholds, operating_point, tradeoff_table, check_threshold_constraint)


def _exercise_case(seed: int, n: int = 240) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, scores and groups for the self-checks: group C's sick patients score higher."""
    rng = np.random.default_rng(seed)
    groups = rng.choice(np.array(["A", "B", "C"], dtype=object), n, p=[0.5, 0.3, 0.2])
    healthy = rng.random(n) < 0.5
    score = np.clip(0.45 * healthy + 0.25 * (groups == "C") + 0.4 * rng.random(n), 0, 1)
    return healthy, score, groups


def check_underdiagnosis_function(fn: Callable[[Any, Any, Any], Mapping[Any, float]]) -> None:
    """Self-check for "underdiagnosis by hand": ``fn(no_finding_true, called_healthy, groups)``
    returns ``{group: rate}`` (plain numbers), tried on data the notebook has not tabulated.

    The slips it names: dividing by all of a group's patients, the overdiagnosis rate,
    specificity, and calling this module's helpers.
    """
    from cxrlab.toolbox.checks import call_answer, forbid_library, require_number

    forbid_library(fn, UNDERDIAGNOSIS_LIBRARY, "the underdiagnosis rate")
    for seed in (5, 6):
        y, score, g = _exercise_case(seed)
        called = score >= 0.55
        answer = call_answer(fn, pd.Series(y), pd.Series(called), pd.Series(g))
        if isinstance(answer, pd.Series):
            answer = answer.to_dict()
        if not isinstance(answer, Mapping):
            raise AssertionError(f"return a dict (or Series) group -> rate, got {type(answer).__name__}")
        for k in sorted(set(g)):
            if k not in answer:
                raise AssertionError(f"no rate for group {k!r}; your answer has {sorted(map(str, answer))}")
            have = require_number(answer[k], f"the rate of group {k!r}")
            m = g == k
            want = underdiagnosis_rate(y[m], called[m])
            if abs(have - want) <= TOL:
                continue
            slips = {"overdiagnosis rate (healthy patients flagged)": overdiagnosis_rate(y[m], called[m]),
                     "specificity (1 - underdiagnosis)": 1 - want,
                     "sick-called-healthy divided by ALL of the group's patients": float((~y[m] & called[m]).mean())}
            slip = next((name for name, v in slips.items() if abs(have - v) <= TOL), None)
            raise AssertionError(
                f"a test case, group {k}: you have {have:.4f}, expected {want:.4f}."
                + (f" That number is the {slip}." if slip else "")
                + " Underdiagnosis = patients WITH a finding (no_finding False) called healthy, "
                "divided by the group's patients WITH a finding.")
    print("Correct: your function gives every group's underdiagnosis rate on two test cases.")


def check_fair_threshold_function(fn: Callable[[Any, Any, Any, float], float]) -> None:
    """Self-check for "one threshold that keeps every group under a rate":
    ``fn(no_finding_true, score, groups, max_rate)`` returns the lowest such threshold.

    The slips it names: the most lenient group's threshold (the minimum), the overall
    threshold, and calling this module's per-group helper.
    """
    from cxrlab.toolbox.checks import call_answer, forbid_library, require_number

    forbid_library(fn, FAIR_THRESHOLD_LIBRARY, "the constrained threshold")
    for seed, max_rate in ((7, 0.2), (8, 0.1)):
        y, s, g = _exercise_case(seed)
        got = require_number(call_answer(fn, pd.Series(y), pd.Series(s), pd.Series(g), max_rate), "the threshold")
        per_group = per_group_thresholds(y, s, g, max_rate)
        best = max(per_group.values())
        if np.array_equal(s >= got, s >= best):
            continue
        rates = {k: underdiagnosis_rate(y[g == k], s[g == k] >= got) for k in per_group}
        worst = max(rates, key=rates.get)
        if rates[worst] > max_rate + TOL:
            lenient = " (the most lenient group's threshold: use the strictest)" \
                if np.array_equal(s >= got, s >= min(per_group.values())) else ""
            overall = " (the overall rate meets the target; each group's must)" \
                if np.array_equal(s >= got, s >= threshold_at_fpr(y, s, max_rate)) else ""
            raise AssertionError(
                f"a test case with max_rate {max_rate}: at your threshold {got:.4f} group {worst}'s "
                f"underdiagnosis is {rates[worst]:.3f}{lenient}{overall}. Every group must stay "
                "at or below the rate, so the strictest group decides.")
        raise AssertionError(
            f"a test case with max_rate {max_rate}: your threshold {got:.4f} meets the constraint, "
            f"but the lower {best:.4f} does too and calls more healthy patients healthy.")
    print("Correct: your function finds the lowest threshold that keeps every group at or "
          "below the rate, on two test cases.")
