"""Chapter 3: is the model reading group from something simpler that travels with it?

Gichoya et al. (Lancet Digital Health 2022) asked whether race recognition from chest X-rays
could be explained by confounders: body-mass index, disease distribution, age, sex, view or
the hospital the image came from. This module holds the probes the chapter uses to test each
explanation, on any manifest (synthetic, where the truth is known, or a real source):

* **covariate-only models** (:func:`covariate_probe`): predict the target from age, sex, BMI,
  view, findings and site without the image (logistic regression and gradient boosting in
  scikit-learn pipelines with one-hot encoding);
* **intensity histograms** (:func:`intensity_histograms`, :func:`histogram_probe`): grey-level
  counts alone, no spatial structure (Burns et al., J Med Imaging 2023);
* **stratified evaluation** (:func:`stratified_auc`, :func:`stratified_evaluation`): AUC with
  a patient-level confidence interval within each stratum of any column, binning continuous
  ones (:func:`bin_continuous`);
* **test-set resampling** (:func:`glocker_resample`): equalise group proportions, then finding
  prevalence within group, then age within group x finding (Glocker et al., eBioMedicine 2023);
* **the site shortcut** (:func:`decorrelate`, :func:`site_shortcut_probe`,
  :func:`shortcut_verdict`): train where group and site are confounded, test where they are
  independent, and ask whether site can be read off the model's features;
* **frozen features** (:func:`linear_probe`, :func:`frozen_feature_probe`): a linear head on
  the features of a model trained for something else (the paper's transfer experiment);
* **learner self-checks** for the chapter's exercises (``check_*``).

Every table has one row per (probe, class) with ``auc``, ``ci_low``, ``ci_high``, ``n_pos`` and
``n_neg`` (:func:`cxrlab.core.metrics.auc_table`'s columns, with its ``macro`` row);
confidence intervals resample patients, not images, because images of one patient are not
independent.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from tqdm.auto import tqdm

from cxrlab.toolbox import checks
from cxrlab.core import metrics

NUMERIC_COVARIATES = ("age", "bmi")
CATEGORICAL_COVARIATES = ("sex", "view", "site")
COVARIATE_SETS = ("age", "sex", "bmi", "view", "findings", "site")
MODEL_KINDS = ("logistic", "boosting")
DEFAULT_AGE_BINS = (0.0, 40.0, 60.0, 80.0, 120.0)
MISSING = "missing"


# ---------------------------------------------------------------------------------------------
# AUCs with patient-level confidence intervals
# ---------------------------------------------------------------------------------------------

def macro_ovr_auc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Deprecated name of :func:`cxrlab.core.metrics.macro_auc` (chapter 3 called it until the
    AUC code became one family); kept so a learner's saved notebook still runs."""
    return metrics.macro_auc(y_true, proba)


def _auc_table(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str],
               groups: np.ndarray | None, n_boot: int, seed: int) -> pd.DataFrame:
    """A probe's AUC table: :func:`cxrlab.core.metrics.auc_table` with its ``macro`` row, and
    without the note on skipped resamples (a chapter prints dozens of these tables)."""
    return metrics.auc_table(np.asarray(y_true).astype(int), proba, classes, groups, n_boot, seed,
                             report_skipped=False, macro=True)


# ---------------------------------------------------------------------------------------------
# Probes: a model on some features -> AUC table
# ---------------------------------------------------------------------------------------------

@dataclass
class ProbeResult:
    """What a probe returns: its AUC ``table``, the fitted ``model`` and the test ``proba``."""

    table: pd.DataFrame
    model: Any
    proba: np.ndarray
    classes: list[str]

    @property
    def macro_auc(self) -> float:
        """The macro (or, for two classes, positive-class) AUC of the probe."""
        row = self.table[self.table["class"] == "macro"]
        return float((row if len(row) else self.table.tail(1))["auc"].iloc[0])


def encode_target(values: Iterable[Any], classes: Sequence[str]) -> np.ndarray:
    """Class indices of ``values`` in ``classes`` (``-1`` for missing or unknown values)."""
    lookup = {str(c): i for i, c in enumerate(classes)}
    return np.array([lookup.get(str(v), -1) if not pd.isna(v) else -1 for v in values], dtype=int)


def make_linear_probe(seed: int = 0, C: float = 1.0) -> Pipeline:
    """Standardise features, then multinomial logistic regression (a linear "head")."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed))


def fit_probe(model: Any, X_train: Any, y_train: np.ndarray, X_test: Any, y_test: np.ndarray,
              classes: Sequence[str], groups: np.ndarray | None = None, n_boot: int = 200,
              seed: int = 0) -> ProbeResult:
    """Fit a scikit-learn classifier on the training rows and score it on the test rows.

    ``y_*`` hold class indices into ``classes``; the probability columns are aligned with
    ``classes`` even when a class is missing from the training rows.
    """
    y_train = np.asarray(y_train).astype(int)
    present = np.unique(y_train)
    if len(present) < 2:
        raise ValueError(f"the training rows hold only class(es) {[classes[i] for i in present]}; "
                         "a probe needs at least two")
    model.fit(X_train, y_train)
    raw = model.predict_proba(X_test)
    proba = np.zeros((len(raw), len(classes)))
    proba[:, list(model.classes_)] = raw
    table = _auc_table(y_test, proba[:, 1] if len(classes) == 2 else proba, classes, groups,
                       n_boot, seed)
    return ProbeResult(table, model, proba, [str(c) for c in classes])


def linear_probe(features_train: np.ndarray, y_train: np.ndarray, features_test: np.ndarray,
                 y_test: np.ndarray, classes: Sequence[str], groups: np.ndarray | None = None,
                 n_boot: int = 200, seed: int = 0, C: float = 1.0) -> ProbeResult:
    """A logistic-regression head on fixed features (embeddings, histograms...).

    >>> rng = np.random.default_rng(0); X = rng.normal(size=(80, 3)); y = (X[:, 0] > 0).astype(int)
    >>> r = linear_probe(X[:60], y[:60], X[60:], y[60:], ["no", "yes"], n_boot=0)
    >>> bool(r.table["auc"].iloc[0] > 0.9)
    True
    """
    return fit_probe(make_linear_probe(seed, C), features_train, y_train, features_test, y_test,
                     classes, groups, n_boot, seed)


# ---------------------------------------------------------------------------------------------
# 1. Covariates alone
# ---------------------------------------------------------------------------------------------

def finding_names(manifest: pd.DataFrame) -> list[str]:
    """The finding columns of a manifest (``finding_*`` and ``no_finding``)."""
    return [c for c in manifest.columns if c.startswith("finding_")] + (
        ["no_finding"] if "no_finding" in manifest.columns else [])


def covariate_columns(manifest: pd.DataFrame, include: Iterable[str] = COVARIATE_SETS
                      ) -> tuple[list[str], list[str]]:
    """Split the chosen covariates into (numeric, categorical) manifest columns.

    ``include`` names covariates from :data:`COVARIATE_SETS`; ``"findings"`` expands to every
    finding column. Columns that are entirely missing in ``manifest`` are left out.
    """
    include = list(include)
    unknown = [c for c in include if c not in COVARIATE_SETS]
    if unknown:
        raise ValueError(f"unknown covariate(s) {unknown}; choose from {list(COVARIATE_SETS)}")
    numeric = [c for c in NUMERIC_COVARIATES if c in include]
    categorical = [c for c in CATEGORICAL_COVARIATES if c in include]
    if "findings" in include:
        categorical += finding_names(manifest)
    keep = lambda cols: [c for c in cols if c in manifest.columns and manifest[c].notna().any()]  # noqa: E731
    return keep(numeric), keep(categorical)


def covariate_frame(manifest: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str]
                    ) -> pd.DataFrame:
    """The covariates as a plain frame: numbers as float (NaN if missing), the rest as strings."""
    out = pd.DataFrame(index=manifest.index)
    for c in numeric:
        out[c] = pd.to_numeric(manifest[c], errors="coerce").astype(float)
    for c in categorical:
        out[c] = manifest[c].astype(object).where(manifest[c].notna(), MISSING).astype(str)
    return out


def make_covariate_model(numeric: Sequence[str], categorical: Sequence[str],
                         kind: str = "logistic", seed: int = 0) -> Pipeline:
    """A scikit-learn pipeline: impute + scale numbers, one-hot categories, then a classifier.

    ``kind`` is ``"logistic"`` (logistic regression) or ``"boosting"`` (histogram gradient
    boosting, which finds interactions and non-linear effects such as an age band).
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {list(MODEL_KINDS)}")
    parts = []
    if numeric:
        parts.append(("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
                      list(numeric)))
    if categorical:
        parts.append(("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                      list(categorical)))
    if not parts:
        raise ValueError("no covariates to model: every requested column is missing")
    clf = (LogisticRegression(max_iter=2000, random_state=seed) if kind == "logistic"
           else HistGradientBoostingClassifier(max_iter=60, max_depth=3, learning_rate=0.1,
                                               random_state=seed))
    return Pipeline([("encode", ColumnTransformer(parts)), ("model", clf)])


def default_feature_sets(manifest: pd.DataFrame) -> dict[str, list[str]]:
    """One feature set per covariate plus ``all`` of them (the chapter's table rows)."""
    sets = {name: [name] for name in COVARIATE_SETS}
    sets["all"] = list(COVARIATE_SETS)
    return {k: v for k, v in sets.items() if any(covariate_columns(manifest, v))}


def _train_test(manifest: pd.DataFrame, target: str, classes: Sequence[str],
                train_splits: Sequence[str], test_split: str
                ) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, np.ndarray]:
    y = encode_target(manifest[target], classes)
    ok = y >= 0
    train = ok & manifest["split"].isin(list(train_splits)).to_numpy()
    test = ok & (manifest["split"] == test_split).to_numpy()
    if not train.any() or not test.any():
        raise ValueError(f"no labelled rows for target '{target}' in splits {list(train_splits)} "
                         f"and/or '{test_split}'")
    return manifest[train], y[train], manifest[test], y[test]


def covariate_probe(manifest: pd.DataFrame, target: str = "race",
                    classes: Sequence[str] | None = None,
                    feature_sets: Mapping[str, Sequence[str]] | None = None,
                    kinds: Sequence[str] = MODEL_KINDS, train_splits: Sequence[str] = ("train", "val"),
                    test_split: str = "test", n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Predict ``target`` from covariates alone (no image); AUC with patient-level CI.

    One row per (feature set, model kind, class) with columns ``features, model, class, auc,
    ci_low, ci_high, n_pos, n_neg``. Gichoya et al. 2022 report AUC 0.55 from BMI and 0.61 from the
    disease distribution on MIMIC-CXR.

    >>> table = covariate_probe(S.manifest, feature_sets={"bmi": ["bmi"]})   # doctest: +SKIP
    """
    classes = list(classes) if classes is not None else sorted(manifest[target].dropna().astype(str).unique())
    train, y_train, test, y_test = _train_test(manifest, target, classes, train_splits, test_split)
    feature_sets = dict(feature_sets) if feature_sets is not None else default_feature_sets(manifest)
    groups = test["patient_id"].astype(str).to_numpy() if "patient_id" in test else None
    tables = []
    jobs = [(name, cols, kind) for name, cols in feature_sets.items() for kind in kinds]
    for name, cols, kind in tqdm(jobs, desc="covariate probes", leave=False):
        numeric, categorical = covariate_columns(manifest, cols)
        model = make_covariate_model(numeric, categorical, kind, seed)
        X_train = covariate_frame(train, numeric, categorical)
        X_test = covariate_frame(test, numeric, categorical)
        result = fit_probe(model, X_train, y_train, X_test, y_test, classes, groups, n_boot, seed)
        tables.append(result.table.assign(features=name, model=kind))
    table = pd.concat(tables, ignore_index=True)
    return table[["features", "model", "class", "auc", "ci_low", "ci_high", "n_pos", "n_neg"]]


# ---------------------------------------------------------------------------------------------
# 2. Intensity histogram alone
# ---------------------------------------------------------------------------------------------

def intensity_histograms(images: np.ndarray, bins: int = 64, chunk: int = 256) -> np.ndarray:
    """Normalised grey-level histogram of each uint8 image: (N, bins) rows that sum to 1.

    All spatial structure is thrown away: only how many pixels have each grey level remains
    (Burns et al. 2023). ``bins`` must divide 256.

    >>> intensity_histograms(np.array([[[0, 255], [255, 255]]], dtype=np.uint8), bins=2).tolist()
    [[0.25, 0.75]]
    """
    if 256 % bins:
        raise ValueError(f"bins must divide 256, got {bins}")
    images = np.asarray(images) if not isinstance(images, np.memmap) else images
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    n = len(images)
    out = np.empty((n, bins), dtype=np.float64)
    width = 256 // bins
    for start in range(0, n, chunk):
        block = np.asarray(images[start:start + chunk]).reshape(min(chunk, n - start), -1)
        idx = block.astype(np.int64) // width + np.arange(len(block))[:, None] * bins
        counts = np.bincount(idx.ravel(), minlength=len(block) * bins).reshape(len(block), bins)
        out[start:start + len(block)] = counts / block.shape[1]
    return out


def histogram_probe(images: np.ndarray, manifest: pd.DataFrame, target: str = "race",
                    classes: Sequence[str] | None = None, bins: int = 64,
                    kinds: Sequence[str] = MODEL_KINDS, train_splits: Sequence[str] = ("train", "val"),
                    test_split: str = "test", n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Predict ``target`` from the intensity histogram alone (rows of ``images`` align with ``manifest``).

    Returns the same columns as :func:`covariate_probe` (``features`` is ``"histogram"``).
    """
    if len(images) != len(manifest):
        raise ValueError(f"{len(images)} images but {len(manifest)} manifest rows")
    classes = list(classes) if classes is not None else sorted(manifest[target].dropna().astype(str).unique())
    hist = intensity_histograms(images, bins)
    y = encode_target(manifest[target], classes)
    train = (y >= 0) & manifest["split"].isin(list(train_splits)).to_numpy()
    test = (y >= 0) & (manifest["split"] == test_split).to_numpy()
    groups = manifest.loc[test, "patient_id"].astype(str).to_numpy()
    tables = []
    for kind in tqdm(kinds, desc="histogram probes", leave=False):
        model = (make_linear_probe(seed) if kind == "logistic"
                 else HistGradientBoostingClassifier(max_iter=60, max_depth=3, random_state=seed))
        result = fit_probe(model, hist[train], y[train], hist[test], y[test], classes, groups,
                           n_boot, seed)
        tables.append(result.table.assign(features="histogram", model=kind))
    table = pd.concat(tables, ignore_index=True)
    return table[["features", "model", "class", "auc", "ci_low", "ci_high", "n_pos", "n_neg"]]


# ---------------------------------------------------------------------------------------------
# 3. Stratified evaluation
# ---------------------------------------------------------------------------------------------

def bin_continuous(values: Iterable[Any], bins: int | Sequence[float] = 4,
                   precision: int = 0) -> pd.Series:
    """Turn a continuous column into string strata.

    ``bins`` is a number of quantile bins or a sequence of edges (left-closed, ``[a, b)``).
    Missing values become ``"missing"``.

    >>> bin_continuous([20, 35, 50, None], bins=[0, 30, 60]).tolist()
    ['[0, 30)', '[30, 60)', '[30, 60)', 'missing']
    """
    s = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").astype(float)
    if isinstance(bins, int):
        edges = np.unique(np.nanquantile(s.dropna(), np.linspace(0, 1, bins + 1)))
        edges[-1] = np.nextafter(edges[-1], np.inf)
    else:
        edges = np.asarray(bins, dtype=float)
    fmt = lambda v: f"{v:.{precision}f}"  # noqa: E731
    labels = [f"[{fmt(a)}, {fmt(b)})" for a, b in zip(edges[:-1], edges[1:])]
    cut = pd.cut(s, edges, right=False, labels=labels)
    return cut.astype(object).where(cut.notna(), MISSING).astype(str)


def stratified_auc(y_true: np.ndarray, proba: np.ndarray, strata: Iterable[Any],
                   classes: Sequence[str], groups: np.ndarray | None = None, n_boot: int = 200,
                   seed: int = 0, min_per_class: int = 1) -> pd.DataFrame:
    """AUC with CI within each stratum: one row per (stratum, class) plus an ``all`` stratum.

    ``proba`` is (N, K) with class indices in ``y_true``, or a 1-D score for a binary label
    (``y_true`` in {0, 1}). Strata where a class has fewer than ``min_per_class`` positives or
    negatives get ``nan``: an AUC needs both.

    >>> t = stratified_auc([1, 0, 0, 1, 1, 0], [.9, .8, .1, .2, .6, .4], list("aaabbb"), ["neg", "pos"], n_boot=0)
    >>> t[["stratum", "auc"]].round(4).values.tolist()
    [['a', 1.0], ['b', 0.5], ['all', 0.6667]]
    """
    y_true = np.asarray(y_true).astype(int)
    proba = np.asarray(proba, dtype=float)
    strata = np.asarray([MISSING if pd.isna(s) else str(s) for s in strata], dtype=object)
    if not (len(y_true) == len(proba) == len(strata)):
        raise ValueError(f"lengths differ: y_true {len(y_true)}, proba {len(proba)}, strata {len(strata)}")
    groups = None if groups is None else np.asarray(groups)
    tables = []
    for stratum in [*sorted(set(strata)), "all"]:
        mask = np.ones(len(strata), bool) if stratum == "all" else strata == stratum
        table = _auc_table(y_true[mask], proba[mask], classes,
                           None if groups is None else groups[mask], n_boot, seed)
        too_few = ((table["n_pos"] < min_per_class) | (table["n_neg"] < min_per_class)) & (
            table["class"] != "macro")
        table.loc[too_few, ["auc", "ci_low", "ci_high"]] = np.nan
        tables.append(table.assign(stratum=stratum))
    out = pd.concat(tables, ignore_index=True)
    return out[["stratum", "class", "auc", "ci_low", "ci_high", "n_pos", "n_neg"]]


def stratified_evaluation(test: pd.DataFrame, proba: np.ndarray, classes: Sequence[str],
                          column: str, target: str = "race",
                          bins: int | Sequence[float] | None = None, n_boot: int = 200,
                          seed: int = 0, min_per_class: int = 5) -> pd.DataFrame:
    """Stratified AUC of a model's test predictions within strata of ``column``.

    ``test`` is the test manifest (rows aligned with ``proba``). Numeric columns are binned
    with :func:`bin_continuous` (``bins`` edges or quantile count; default 4 quantile bins).
    The table gains a ``column`` column so several can be stacked.
    """
    if len(test) != len(proba):
        raise ValueError(f"{len(test)} test rows but {len(proba)} predictions")
    values = test[column]
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    strata = bin_continuous(values, bins if bins is not None else 4) if numeric else values
    y = encode_target(test[target], classes)
    keep = y >= 0
    table = stratified_auc(y[keep], np.asarray(proba)[keep], np.asarray(strata, dtype=object)[keep],
                           classes, test["patient_id"].astype(str).to_numpy()[keep], n_boot, seed,
                           min_per_class)
    return table.assign(column=column)[["column", *table.columns]]


# ---------------------------------------------------------------------------------------------
# 4. Test-set resampling (Glocker et al. 2023)
# ---------------------------------------------------------------------------------------------

def match_within(df: pd.DataFrame, group_col: str, cell_cols: Sequence[str] = (),
                 seed: int = 0) -> pd.DataFrame:
    """Subsample so every group has the same number of rows in every cell of ``cell_cols``.

    For each cell the count kept per group is the smallest group's count there; rows are drawn
    without replacement with ``seed``. Rows with a missing group or cell value are dropped.
    The result keeps ``df``'s index and order. With no ``cell_cols`` this equalises group sizes.
    """
    cols = [group_col, *cell_cols]
    df = df[df[cols].notna().all(axis=1)]
    groups = sorted(df[group_col].astype(str).unique())
    rng = np.random.default_rng(seed)
    keep: list[Any] = []
    cells = df.groupby(list(cell_cols), sort=True, dropna=True) if cell_cols else [((), df)]
    for _, cell in cells:
        by_group = {g: cell.index[cell[group_col].astype(str).to_numpy() == g] for g in groups}
        n = min(len(ix) for ix in by_group.values())
        for g in groups:
            if n:
                keep.extend(rng.choice(by_group[g], size=n, replace=False).tolist())
    return df.loc[df.index.isin(keep)]


def equalise_groups(df: pd.DataFrame, group_col: str = "race", seed: int = 0) -> pd.DataFrame:
    """Step 1 of Glocker et al. 2023: the same number of rows for every group."""
    return match_within(df, group_col, (), seed)


def glocker_resample(df: pd.DataFrame, group_col: str = "race", finding_col: str = "no_finding",
                     age_col: str = "age", age_bins: Sequence[float] = DEFAULT_AGE_BINS,
                     seed: int = 0) -> dict[str, pd.DataFrame]:
    """Resample a test set in three nested steps (Glocker et al., eBioMedicine 2023).

    1. ``groups``: equal group proportions;
    2. ``prevalence``: equal ``finding_col`` prevalence within every group;
    3. ``age``: equal age distribution (in ``age_bins``) within group x finding.

    Returns ``{"original", "groups", "prevalence", "age"}``, each a subset of ``df`` with its
    index kept (so predictions can be looked up by position). Each step applies to the output
    of the step before; the same ``seed`` gives the same rows.
    """
    for col in (group_col, finding_col, age_col):
        if col not in df.columns:
            raise KeyError(f"column '{col}' is not in the table; columns are {list(df.columns)}")
    step1 = equalise_groups(df, group_col, seed)
    step2 = match_within(step1, group_col, [finding_col], seed + 1)
    aged = step2.assign(_age_bin=bin_continuous(step2[age_col], list(age_bins)).to_numpy())
    aged = aged[aged["_age_bin"] != MISSING]
    step3 = match_within(aged, group_col, [finding_col, "_age_bin"], seed + 2).drop(columns="_age_bin")
    return {"original": df, "groups": step1, "prevalence": step2, "age": step3}


def resampled_aucs(steps: Mapping[str, pd.DataFrame], y_true: np.ndarray, proba: np.ndarray,
                   classes: Sequence[str], n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """AUC table per resampling step; ``steps`` index positions into ``y_true``/``proba``."""
    y_true = np.asarray(y_true)
    proba = np.asarray(proba)
    tables = []
    for name, sub in steps.items():
        idx = sub.index.to_numpy()
        groups = sub["patient_id"].astype(str).to_numpy() if "patient_id" in sub else None
        tables.append(_auc_table(y_true[idx], proba[idx], classes, groups, n_boot, seed)
                      .assign(step=name))
    out = pd.concat(tables, ignore_index=True)
    return out[["step", "class", "auc", "ci_low", "ci_high", "n_pos", "n_neg"]]


# ---------------------------------------------------------------------------------------------
# 5. The site shortcut
# ---------------------------------------------------------------------------------------------

def decorrelate(df: pd.DataFrame, group_col: str = "race", site_col: str = "site",
                seed: int = 0) -> pd.DataFrame:
    """A subset in which group and site are independent: every group equally common at every site."""
    return match_within(df, group_col, [site_col], seed)


def association(df: pd.DataFrame, a: str = "race", b: str = "site") -> float:
    """Cramer's V between two categorical columns (0 = independent, 1 = one determines the other)."""
    table = pd.crosstab(df[a], df[b]).to_numpy().astype(float)
    if min(table.shape) < 2 or table.sum() == 0:
        return 0.0
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    chi2 = float(((table - expected) ** 2 / np.where(expected > 0, expected, 1)).sum())
    return float(np.sqrt(chi2 / table.sum() / (min(table.shape) - 1)))


@dataclass
class ShortcutVerdict:
    """The site-shortcut probe's conclusion and the evidence behind it.

    ``flagged`` is True when the evidence says the model leans on the site: the site can be read
    off its features (CI lower bound of the site AUC at least ``site_threshold``) and, when a
    site-independent test set was given, its AUC drops by at least ``drop_threshold`` there.
    """

    flagged: bool
    level: str
    site_auc: float
    site_ci: tuple[float, float]
    auc_confounded: float | None = None
    auc_independent: float | None = None
    site_threshold: float = 0.7
    drop_threshold: float = 0.05
    reasons: list[str] = field(default_factory=list)

    @property
    def drop(self) -> float | None:
        """AUC on the confounded test set minus AUC on the independent one."""
        if self.auc_confounded is None or self.auc_independent is None:
            return None
        return float(self.auc_confounded - self.auc_independent)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for :func:`cxrlab.core.results.record`."""
        out = asdict(self)
        out["site_ci"] = list(self.site_ci)
        out["drop"] = self.drop
        return out

    def __str__(self) -> str:
        head = "SITE SHORTCUT FLAGGED" if self.flagged else "no site shortcut flagged"
        return f"{head} ({self.level}): " + "; ".join(self.reasons)


def shortcut_verdict(site_auc: float, site_ci: tuple[float, float],
                     auc_confounded: float | None = None, auc_independent: float | None = None,
                     site_threshold: float = 0.7, drop_threshold: float = 0.05) -> ShortcutVerdict:
    """Decide from evidence whether a model uses the site shortcut.

    Levels: ``"shortcut"`` (site decodable and performance drops when site stops predicting
    group: flagged), ``"site decodable"`` (no independent test given: flagged, to be confirmed),
    ``"site encoded, not relied on"`` (decodable, no drop), ``"drop without site"`` (a drop, but
    site is not linearly decodable: look for another confounder), ``"no evidence"``.

    >>> shortcut_verdict(0.95, (0.9, 0.97), 0.85, 0.55).level
    'shortcut'
    """
    lo = float(site_ci[0])
    decodable = bool(np.isfinite(lo) and lo >= site_threshold)
    reasons = [f"site AUC from the features {site_auc:.2f} (95% CI {site_ci[0]:.2f}-{site_ci[1]:.2f}) "
               f"{'>=' if decodable else '<'} {site_threshold:.2f} at the lower bound"]
    has_drop_data = auc_confounded is not None and auc_independent is not None
    drops = False
    if has_drop_data:
        drop = float(auc_confounded) - float(auc_independent)
        drops = drop >= drop_threshold
        reasons.append(f"AUC {auc_confounded:.2f} where site and group travel together, "
                       f"{auc_independent:.2f} where they are independent (drop {drop:+.2f}, "
                       f"threshold {drop_threshold:.2f})")
    if decodable and (drops or not has_drop_data):
        level = "shortcut" if has_drop_data else "site decodable"
    elif decodable:
        level = "site encoded, not relied on"
    elif drops:
        level = "drop without site"
    else:
        level = "no evidence"
    flagged = level in ("shortcut", "site decodable")
    return ShortcutVerdict(flagged, level, float(site_auc), (float(site_ci[0]), float(site_ci[1])),
                           None if auc_confounded is None else float(auc_confounded),
                           None if auc_independent is None else float(auc_independent),
                           site_threshold, drop_threshold, reasons)


def model_features(model: Any, images: np.ndarray, batch_size: int = 64, **kwargs: Any) -> np.ndarray:
    """Penultimate-layer features of a trained model: :func:`cxrlab.core.models.embed`."""
    from cxrlab.core.models import embed

    return np.asarray(embed(model, images, batch_size=batch_size, **kwargs), dtype=np.float64)


def site_probe(features_train: np.ndarray, sites_train: Iterable[Any], features_test: np.ndarray,
               sites_test: Iterable[Any], groups: np.ndarray | None = None, n_boot: int = 200,
               seed: int = 0) -> ProbeResult:
    """How well can a linear head read the acquisition site off a model's features?"""
    sites = sorted(set(map(str, sites_train)) | set(map(str, sites_test)))
    if len(sites) < 2:
        raise ValueError("a site probe needs images from at least two sites")
    return linear_probe(features_train, encode_target(sites_train, sites), features_test,
                        encode_target(sites_test, sites), sites, groups, n_boot, seed)


def _group_auc(proba: np.ndarray, frame: pd.DataFrame, target: str, classes: Sequence[str]) -> float:
    y = encode_target(frame[target], classes)
    keep = y >= 0
    proba = np.asarray(proba)[keep]
    return metrics.macro_auc(y[keep], proba if len(classes) > 2 else proba[:, 1])


def _rows(pair: tuple[np.ndarray, pd.DataFrame], frame: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """The images and rows of ``pair`` kept in ``frame`` (a subset of ``pair[1]`` by position)."""
    positions = pair[1].index.get_indexer(frame.index)
    return np.asarray(pair[0])[positions], frame


def site_shortcut_probe(model: Any, train: tuple[np.ndarray, pd.DataFrame],
                        confounded: tuple[np.ndarray, pd.DataFrame],
                        independent: tuple[np.ndarray, pd.DataFrame] | None = None, *,
                        classes: Sequence[str], target: str = "race", predict: Callable | None = None,
                        batch_size: int = 64, n_boot: int = 200, seed: int = 0,
                        site_threshold: float = 0.7, drop_threshold: float = 0.05,
                        embed_kwargs: Mapping[str, Any] | None = None) -> ShortcutVerdict:
    """The chapter's shortcut probe: embed -> logistic regression -> site AUC -> verdict.

    Each argument is an ``(images, manifest rows)`` pair. The site head is fitted on the
    training rows and scored on the ``independent`` test set (or, without one, on a subset of
    ``confounded`` where group and site are made independent with :func:`decorrelate`), both
    restricted to rows where group does not predict site: otherwise a model that sees only the
    group would seem to "encode" the site through the confounding. ``predict(images) -> proba``
    (for example ``TrainedModel.predict``) gives the model's own ``target`` AUC on
    ``confounded`` and on ``independent``, whose difference is the drop.
    """
    kw = dict(embed_kwargs or {})
    fit_imgs, fit_rows = _rows(train, decorrelate(train[1], target, "site", seed))
    score_pair = independent if independent is not None else \
        _rows(confounded, decorrelate(confounded[1], target, "site", seed))
    f_fit = model_features(model, fit_imgs, batch_size, **kw)
    f_score = model_features(model, score_pair[0], batch_size, **kw)
    probe = site_probe(f_fit, fit_rows["site"], f_score, score_pair[1]["site"],
                       score_pair[1]["patient_id"].astype(str).to_numpy(), n_boot, seed)
    row = probe.table[probe.table["class"] == "macro"] if len(probe.classes) > 2 else probe.table
    site_auc, lo, hi = (float(row[c].iloc[0]) for c in ("auc", "ci_low", "ci_high"))
    auc_c = auc_i = None
    if predict is not None and independent is not None:
        auc_c = _group_auc(predict(confounded[0]), confounded[1], target, classes)
        auc_i = _group_auc(predict(independent[0]), independent[1], target, classes)
    return shortcut_verdict(site_auc, (lo, hi), auc_c, auc_i, site_threshold, drop_threshold)


# ---------------------------------------------------------------------------------------------
# 6. Frozen features
# ---------------------------------------------------------------------------------------------

def frozen_feature_probe(model: Any, train: tuple[np.ndarray, pd.DataFrame],
                         test: tuple[np.ndarray, pd.DataFrame], classes: Sequence[str],
                         target: str = "race", batch_size: int = 64, n_boot: int = 200,
                         seed: int = 0, C: float = 1.0,
                         embed_kwargs: Mapping[str, Any] | None = None) -> ProbeResult:
    """Linear ``target`` head on the frozen features of a model trained for something else.

    Gichoya et al. 2022 (code) trained a race head on frozen disease-classifier features and
    reached AUC 0.80-0.84: the features of a findings model already carry race information.
    """
    kw = dict(embed_kwargs or {})
    y_train = encode_target(train[1][target], classes)
    y_test = encode_target(test[1][target], classes)
    keep_tr, keep_te = y_train >= 0, y_test >= 0
    f_train = model_features(model, np.asarray(train[0])[keep_tr], batch_size, **kw)
    f_test = model_features(model, np.asarray(test[0])[keep_te], batch_size, **kw)
    groups = test[1]["patient_id"].astype(str).to_numpy()[keep_te]
    return linear_probe(f_train, y_train[keep_tr], f_test, y_test[keep_te], classes, groups,
                        n_boot, seed, C)


def paired_macro_auc_difference(y_true: np.ndarray, proba_a: np.ndarray, proba_b: np.ndarray,
                                groups: np.ndarray | None = None, n_boot: int = 200,
                                seed: int = 0) -> metrics.CI:
    """Macro one-vs-rest AUC of ``proba_a`` minus that of ``proba_b`` on the same test rows, with
    a paired patient bootstrap: both are scored on the SAME resamples, so the interval is that
    of the difference (two separate intervals that overlap can still hide a clear difference).

    >>> y = np.arange(60) % 3; good = np.eye(3)[y] + 0.1; bad = np.full((60, 3), 1 / 3)
    >>> ci = paired_macro_auc_difference(y, good, bad, n_boot=50)
    >>> round(ci.estimate, 2), ci.low > 0
    (0.5, True)
    """
    y_true = np.asarray(y_true).astype(int)
    keep = y_true >= 0
    y, pa, pb = y_true[keep], np.asarray(proba_a, float)[keep], np.asarray(proba_b, float)[keep]
    g = None if groups is None else np.asarray(groups)[keep]
    estimate = metrics.macro_auc(y, pa) - metrics.macro_auc(y, pb)
    weights = metrics.bootstrap_weights(g, len(y), n_boot, seed)
    diffs = np.zeros(len(weights))
    for k in range(pa.shape[1]):
        positive = (y == k).astype(int)
        diffs += metrics.weighted_aucs(positive, pa[:, k], weights) - \
            metrics.weighted_aucs(positive, pb[:, k], weights)
    diffs = diffs[np.isfinite(diffs)] / pa.shape[1]
    low, high = np.percentile(diffs, [2.5, 97.5]) if len(diffs) else (np.nan, np.nan)
    return metrics.CI(float(estimate), float(low), float(high), int(len(diffs)),
                      int(len(weights) - len(diffs)))


# ---------------------------------------------------------------------------------------------
# 7. Toy shortcut models and learner self-checks for the chapter's exercises
# ---------------------------------------------------------------------------------------------

def _toy_cohort(n: int, confounding: float, rng: np.random.Generator) -> pd.DataFrame:
    """Groups 0/1 and sites 0/1; with ``confounding`` 1 the site equals the group."""
    group = rng.integers(0, 2, n)
    same = rng.random(n) < (1 + confounding) / 2
    site = np.where(same, group, 1 - group)
    return pd.DataFrame({"group": group, "site": site, "patient_id": [f"p{i}" for i in range(n)]})


def _toy_features(kind: str, cohort: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """Features of a toy 'model': what it has learnt to look at."""
    n = len(cohort)
    noise = rng.normal(size=(n, 4))
    site = cohort["site"].to_numpy()[:, None] * np.array([[2.0, -1.5, 0.0, 0.0]])
    group = cohort["group"].to_numpy()[:, None] * np.array([[0.0, 0.0, 1.6, 1.0]])
    return {"site only": noise + site, "group only": noise + group,
            "both": noise + 0.8 * site + 3.0 * group}[kind]


def toy_shortcut_evidence(seed: int = 0, n: int = 600) -> pd.DataFrame:
    """Evidence for three toy models (exercise: which of them uses the site shortcut?).

    Each toy model is a linear group classifier on features that carry the site, the group,
    or both, trained where site and group agree for 90% of patients. For each we report the
    site-probe AUC with CI (a linear site head on its features, fitted and scored where site
    and group are independent) and its group AUC on a confounded and on a site-independent
    test set. Model names do not reveal which is which.
    """
    rng = np.random.default_rng(seed)
    kinds = ["site only", "group only", "both"]
    order = rng.permutation(len(kinds))
    rows = []
    for name, k in zip(("model_1", "model_2", "model_3"), order):
        kind = kinds[k]
        train, conf, probe_fit, indep = (_toy_cohort(n, c, rng) for c in (0.8, 0.8, 0.0, 0.0))
        feats = [_toy_features(kind, c, rng) for c in (train, conf, probe_fit, indep)]
        head = make_linear_probe(seed).fit(feats[0], train["group"])
        site = site_probe(feats[2], probe_fit["site"], feats[3], indep["site"],
                          indep["patient_id"].to_numpy(), n_boot=100, seed=seed).table.iloc[0]
        rows.append({"model": name, "site_auc": site["auc"], "site_ci_low": site["ci_low"],
                     "site_ci_high": site["ci_high"],
                     "auc_confounded": metrics.macro_auc(conf["group"], head.predict_proba(feats[1])[:, 1]),
                     "auc_independent": metrics.macro_auc(indep["group"], head.predict_proba(feats[3])[:, 1])})
    return pd.DataFrame(rows).set_index("model")


def verdicts_from_evidence(evidence: pd.DataFrame, site_threshold: float = 0.7,
                           drop_threshold: float = 0.05) -> dict[str, ShortcutVerdict]:
    """:func:`shortcut_verdict` for every row of :func:`toy_shortcut_evidence`-style evidence."""
    return {str(name): shortcut_verdict(r["site_auc"], (r["site_ci_low"], r["site_ci_high"]),
                                        r["auc_confounded"], r["auc_independent"],
                                        site_threshold, drop_threshold)
            for name, r in evidence.iterrows()}


HAND_CASE = {
    "y_true": np.array([1, 0, 0, 1, 1, 0, 1, 1]),
    "score": np.array([0.9, 0.8, 0.1, 0.2, 0.6, 0.4, 0.3, 0.7]),
    "strata": np.array(["a", "a", "a", "b", "b", "b", "c", "c"]),
    "expected": {"a": 1.0, "b": 0.5, "c": float("nan")},
}
"""The exercise's hand-worked case: stratum ``c`` holds positives only (no AUC)."""

#: The library code each exercise's answer must not call (the checks compare against it).
STRATIFIED_LIBRARY = (stratified_auc, stratified_evaluation)
EQUALISE_LIBRARY = (equalise_groups, match_within, glocker_resample, decorrelate)
SHORTCUT_LIBRARY = (shortcut_verdict, verdicts_from_evidence, ShortcutVerdict)


def _stratum_value(got: Mapping[Any, Any], stratum: str) -> float:
    """The learner's AUC for ``stratum`` as a float (keys may be str or NumPy str)."""
    value = got[stratum] if stratum in got else got.get(str(stratum), None)
    checks.require(value is not None, f"no entry for stratum {stratum!r}")
    return float(checks.require_number(value, f"the AUC of stratum {stratum!r}"))


def check_stratified_auc(fn: Callable[[np.ndarray, np.ndarray, np.ndarray], Mapping[str, float]]) -> None:
    """Self-check for the exercise "implement the stratified AUC".

    ``fn(y_true, score, strata)`` must return ``{stratum: AUC}`` (plain floats) with ``nan``
    for a stratum that holds one class only. The usual slips, each named: the AUC of all rows
    for every stratum (no mask), 0.5 or 0 for a one-class stratum, calling the library.
    """
    checks.forbid_library(fn, STRATIFIED_LIBRARY, "the stratified AUC")
    case = HAND_CASE
    got = checks.call_answer(fn, case["y_true"].copy(), case["score"].copy(), case["strata"].copy())
    checks.require(isinstance(got, Mapping), f"return a dict {{stratum: AUC}}, got {type(got).__name__}")
    checks.require(set(map(str, got)) == {"a", "b", "c"},
                   f"expected one entry per stratum ('a', 'b', 'c'), got {sorted(map(str, got))}")
    overall = metrics.macro_auc(case["y_true"], case["score"])
    for s, want in case["expected"].items():
        value = _stratum_value(got, s)
        if np.isnan(want):
            checks.require(np.isnan(value), (
                f"stratum '{s}' holds positives only, so its AUC is undefined: return "
                f"float('nan'), not {value} (0.5 would claim a coin-flip ranking that was never "
                "measured)"))
            continue
        hint = (" That is the AUC of ALL rows: select the stratum's rows first (a boolean mask)."
                if abs(value - overall) < 1e-9 else
                " Count the positive-negative pairs ranked the right way inside the stratum only.")
        checks.require(abs(value - want) < 1e-9, f"stratum '{s}': expected AUC {want}, got {value}.{hint}")
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 90)
    score = y * 0.4 + rng.random(90)
    strata = rng.choice(["x", "y", "z"], 90)
    y[strata == "z"] = 0
    got = checks.call_answer(fn, y, score, strata)
    ref = stratified_auc(y, score, strata, ["neg", "pos"], n_boot=0)
    for s in ("x", "y", "z"):
        want = float(ref.loc[ref["stratum"] == s, "auc"].iloc[0])
        value = _stratum_value(got, s)
        same = (np.isnan(want) and np.isnan(value)) or abs(value - want) < 1e-9
        checks.require(same, f"stratum '{s}' of a random case: expected {want:.4f}, got {value:.4f}")
    checks.passed("Correct: your stratified AUC matches the hand-computed strata (a: 1.0, b: 0.5, "
                  "c: nan) and a random case.")


def _first_rows(df: pd.DataFrame, group_col: str, n: int) -> list[Any]:
    return sorted(df.groupby(group_col).head(n).index)


def check_equalise_groups(fn: Callable[..., pd.DataFrame]) -> None:
    """Self-check for the exercise "implement step 1 of the resampling".

    ``fn(df, group_col, seed)`` must return a subset of ``df``'s rows (index kept, no row twice)
    with the same number of rows in every group, as many as the smallest group allows, drawn
    at random: the same ``seed`` gives the same rows, another seed other rows.
    """
    checks.forbid_library(fn, EQUALISE_LIBRARY, "the equalising step")
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"race": rng.choice(["A", "B", "C"], 120, p=[0.6, 0.3, 0.1]),
                       "x": rng.random(120)}, index=rng.permutation(np.arange(500, 620)))
    smallest = int(df["race"].value_counts().min())
    out = checks.call_answer(fn, df.copy(), "race", 0)
    checks.require(isinstance(out, pd.DataFrame), f"return a DataFrame, got {type(out).__name__}")
    checks.require(bool(out.index.isin(df.index).all()),
                   "keep the original index: return rows OF df (use .loc or .sample)")
    checks.require(not out.index.duplicated().any(), "a row appears twice: sample WITHOUT replacement")
    counts = out["race"].value_counts()
    checks.require(set(counts.index) == {"A", "B", "C"}, f"every group must stay, got {sorted(counts.index)}")
    checks.require(counts.nunique() == 1, f"group counts differ: {counts.to_dict()}")
    checks.require(int(counts.iloc[0]) == smallest, (
        f"keep as many rows as the smallest group allows ({smallest} per group), got {counts.iloc[0]}"))
    checks.require(bool((out["x"] == df.loc[out.index, "x"]).all()), "rows were changed: return them untouched")
    checks.require(sorted(out.index) != _first_rows(df, "race", smallest), (
        "you kept the FIRST rows of each group (like groupby().head(n)): whatever order the "
        "table happens to be in decides who stays. Draw the rows at random with the seed "
        "(groupby().sample(n=..., random_state=seed))"))
    again = fn(df.copy(), "race", 0)
    checks.require(sorted(again.index) == sorted(out.index), "the same seed must give the same rows")
    other = fn(df.copy(), "race", 1)
    checks.require(sorted(other.index) != sorted(out.index), (
        "seed 0 and seed 1 gave the same rows: use the seed argument (random_state=seed), not "
        "a fixed one, so a resampling can be repeated with other draws"))
    checks.passed(f"Correct: {smallest} rows per group, drawn at random without replacement, "
                  "reproducible with the seed.")


SHORTCUT_CASES = (
    # site_ci_low, auc_confounded, auc_independent, uses the shortcut?, what the case tests
    (0.92, 0.95, 0.93, False, "the site is encoded but the AUC barely moves where site and group "
                              "are independent: encoded, not relied on"),
    (0.55, 0.90, 0.70, False, "the AUC drops, but the site cannot be read off the features (CI "
                              "lower bound below 0.7): look for another confounder"),
    (0.80, 0.90, 0.60, True, "site decodable and a large drop: a shortcut"),
    (0.70, 0.90, 0.84, True, "the CI lower bound is exactly 0.7: the rule says 'at least 0.7'"),
    (0.69, 0.85, 0.60, False, "the CI lower bound 0.69 is below 0.7"),
)


def check_shortcut_rule(fn: Callable[[float, float, float], bool], evidence: pd.DataFrame) -> None:
    """Self-check for "decide from the evidence whether a model uses the site shortcut".

    ``fn(site_ci_low, auc_confounded, auc_independent)`` returns True (uses the shortcut) or
    False; it is tried on the toy ``evidence`` and on boundary cases. The usual slips are to
    flag on decodability alone or on the drop alone.
    """
    checks.forbid_library(fn, SHORTCUT_LIBRARY, "the decision rule")
    verdicts = {name: shortcut_verdict(r.site_auc, (r.site_ci_low, r.site_ci_high),
                                       r.auc_confounded, r.auc_independent)
                for name, r in evidence.iterrows()}
    cases = [(float(r.site_ci_low), float(r.auc_confounded), float(r.auc_independent),
              verdicts[name].flagged, f"the evidence on {name} reads '{verdicts[name].level}'")
             for name, r in evidence.iterrows()]
    for lo, conf, indep, want, why in [*cases, *SHORTCUT_CASES]:
        got = checks.call_answer(fn, lo, conf, indep)
        checks.require(type(got) in (bool, np.bool_),
                       f"return True or False (a bool), got {type(got).__name__} {got!r}")
        checks.require(bool(got) == want, (
            f"site CI lower bound {lo:.2f}, AUC {conf:.2f} confounded vs {indep:.2f} independent: "
            f"you said {bool(got)}, but {why}. A shortcut needs BOTH: the site is decodable AND the "
            "model loses accuracy where the site stops predicting the group"))
    checks.passed("Correct: your rule flags a model only when the site is decodable and the AUC "
                  "drops where site and group are independent.")
