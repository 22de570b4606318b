"""Learner self-checks: each prints a clear success message or raises :class:`CheckFailed`
(an ``AssertionError``) that says what is wrong and how to look for the cause.

Chapters 3-5 keep their own checks next to their code (``cxrlab.toolbox.probes`` etc.) and use
:func:`passed` and :class:`CheckFailed` from here.

>>> passed("the split is patient-level")
✔ the split is patient-level
"""
from __future__ import annotations

import contextlib
import inspect
import os
import sys
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


class CheckFailed(AssertionError):
    """A self-check failed; the message explains what to fix."""


def passed(message: str) -> None:
    """Print a success line (the learner sees this when a check passes)."""
    print(f"✔ {message}")


def require(condition: bool, message: str) -> None:
    """Raise :class:`CheckFailed` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise CheckFailed(message)


def _split_series(split: pd.Series | Mapping[str, str] | Sequence[str],
                  manifest: pd.DataFrame | None) -> pd.Series:
    """The split as one label per manifest row."""
    if isinstance(split, Mapping):
        require(manifest is not None, "pass the manifest too when the split is a "
                "{patient_id: split} dict")
        missing = sorted(set(manifest["patient_id"].astype(str)) - set(map(str, split)))[:5]
        require(not missing, f"patients without a split, e.g. {', '.join(missing)}: every "
                "patient needs 'train', 'val' or 'test'")
        return manifest["patient_id"].astype(str).map({str(k): v for k, v in split.items()})
    series = pd.Series(np.asarray(split, dtype=object))
    if manifest is not None:
        require(len(series) == len(manifest), f"the split has {len(series)} labels but the "
                f"manifest has {len(manifest)} rows: give one label per image")
    return series


def check_patient_split(split: pd.Series | Mapping[str, str] | Sequence[str],
                        manifest: pd.DataFrame,
                        fractions: tuple[float, float, float] | None = None,
                        tolerance: float = 0.1) -> None:
    """Check a learner's split: every image in train/val/test, no patient in two splits,
    and (optionally) patient fractions near ``fractions``.

    ``split``: one label per manifest row (Series/list) or a ``{patient_id: split}`` dict.

    >>> check_patient_split(my_split, S.manifest, fractions=(0.6, 0.1, 0.3))  # doctest: +SKIP
    ✔ patient-level split: 480/80/240 patients in train/val/test, no patient in two splits
    """
    labels = _split_series(split, manifest).reset_index(drop=True)
    bad = sorted(set(labels.dropna().astype(str)) - set(SPLITS))
    require(not labels.isna().any(), f"{int(labels.isna().sum())} image(s) have no split label")
    require(not bad, f"unknown split label(s) {bad}: use only 'train', 'val' and 'test'")
    table = pd.DataFrame({"patient": manifest["patient_id"].astype(str).to_numpy(),
                          "split": labels.astype(str).to_numpy()})
    per_patient = table.groupby("patient")["split"].nunique()
    leaking = per_patient[per_patient > 1].index.tolist()
    require(not leaking, f"{len(leaking)} patient(s) appear in more than one split, e.g. "
            f"{', '.join(leaking[:3])}: their images would be in training AND in testing. "
            "Assign splits to patients (groupby patient_id), then map them to images.")
    counts = table.drop_duplicates("patient")["split"].value_counts()
    empty = [s for s in SPLITS if counts.get(s, 0) == 0]
    require(not empty, f"split(s) {empty} have no patients")
    if fractions is not None:
        share = counts / counts.sum()
        for name, want in zip(SPLITS, fractions):
            got = float(share.get(name, 0.0))
            require(abs(got - want) <= tolerance, f"{name} holds {got:.0%} of the patients, "
                    f"expected about {want:.0%}")
    passed(f"patient-level split: {counts.get('train', 0)}/{counts.get('val', 0)}/"
           f"{counts.get('test', 0)} patients in train/val/test, no patient in two splits")


def check_no_leakage(train: pd.DataFrame, test: pd.DataFrame,
                     claimed_overlap: int | Sequence[str] | None = None) -> None:
    """Check the learner's leakage proof: the patients shared by ``train`` and ``test``.

    With ``claimed_overlap`` (a count or the list of shared patient ids) the learner's own
    computation is compared with the truth; the check passes when nothing is shared.
    """
    shared = sorted(set(train["patient_id"].astype(str)) & set(test["patient_id"].astype(str)))
    if claimed_overlap is not None:
        claimed = claimed_overlap if isinstance(claimed_overlap, (int, np.integer)) else \
            len(set(map(str, claimed_overlap)))
        require(int(claimed) == len(shared), f"you found {claimed} shared patient(s) but there "
                f"are {len(shared)}: compare the sets of patient_id, not image_id")
    require(not shared, f"{len(shared)} patient(s) are in both train and test, e.g. "
            f"{', '.join(shared[:3])}: this split leaks")
    passed(f"no leakage: the {train['patient_id'].nunique()} training and "
           f"{test['patient_id'].nunique()} test patients are disjoint")


def _shared_patients(labels: np.ndarray, manifest: pd.DataFrame) -> set[str]:
    patients = manifest["patient_id"].astype(str).to_numpy()
    return set(patients[labels == "train"]) & set(patients[labels == "test"])


def check_shared_count(count_shared: Callable, manifest: pd.DataFrame, n_shared: object,
                       my_split: pd.Series | Sequence[str], seed: int = 2024) -> None:
    """Check chapter 1's leakage proof: ``count_shared(split)`` must count the patients with
    images in both train and test of ANY split (tried on an image-level split made here, where
    the answer is not 0), and ``n_shared`` must be its answer for ``my_split``."""
    require(callable(count_shared), "count_shared must be a function: def count_shared(split): ...")
    probe = np.random.default_rng(seed).choice(list(SPLITS), size=len(manifest), p=[0.5, 0.2, 0.3])
    shared = _shared_patients(probe, manifest)
    got = count_shared(list(probe))
    require(isinstance(got, (int, np.integer)) and not isinstance(got, bool),
            f"count_shared should return an int (a count of patients), not {type(got).__name__}")
    test_rows = probe == "test"
    leaked_images = int(manifest["patient_id"].astype(str)[test_rows].isin(shared).sum())
    require(int(got) != leaked_images or leaked_images == len(shared),
            f"on an image-level split your count_shared says {int(got)}: that is the number of test "
            f"IMAGES of shared patients; count the patients (a set of patient_id), there are {len(shared)}")
    require(int(got) != 0, f"on an image-level split where {len(shared)} patients are in both train and "
            "test your count_shared says 0: compute the overlap from the split you are given (compare "
            "sets of patient_id, not image_id), do not return 0")
    require(int(got) == len(shared), f"on an image-level split your count_shared says {int(got)}, but "
            f"{len(shared)} patients have images in both train and test: intersect the set of patient_id "
            "in train with the set in test")
    labels = _split_series(my_split, manifest).reset_index(drop=True).astype(str).to_numpy()
    truth = len(_shared_patients(labels, manifest))
    require(isinstance(n_shared, (int, np.integer)) and int(n_shared) == int(count_shared(list(labels))),
            "n_shared should be count_shared(my_split), an int")
    require(truth == 0, f"{truth} patients have images in both your train and test: the split leaks")
    passed(f"count_shared works (it finds the {len(shared)} shared patients of an image-level split) "
           "and proves your split has none")


def check_image_level_split(split: pd.Series | Sequence[str], manifest: pd.DataFrame) -> None:
    """Check an image-level split for the chapter-2 leakage exercise: every image labelled,
    and (that is the point) some patients have images in both train and test."""
    labels = _split_series(split, manifest).reset_index(drop=True).astype(str)
    bad = sorted(set(labels) - set(SPLITS))
    require(not bad, f"unknown split label(s) {bad}: use only 'train', 'val' and 'test'")
    table = pd.DataFrame({"patient": manifest["patient_id"].astype(str).to_numpy(),
                          "split": labels.to_numpy()})
    in_train = set(table.loc[table.split == "train", "patient"])
    in_test = set(table.loc[table.split == "test", "patient"])
    shared = in_train & in_test
    require(bool(in_train) and bool(in_test), "both train and test need images")
    require(bool(shared), "no patient has images in both train and test: this is still a "
            "patient-level split. Shuffle the IMAGES (not the patients) into splits.")
    passed(f"image-level split: {len(shared)} patient(s) have images in both train and test "
           "(the leakage we want to measure)")


def check_leaky_auc(leaky_auc: object, split: pd.Series | Sequence[str],
                    knn_auc: Callable[[Sequence[str]], float], patient_auc: float) -> None:
    """Check chapter 2's leak measurement: ``leaky_auc`` is a number, and it is
    ``knn_auc(split)`` on the learner's image-level split (not the patient-level score)."""
    require(isinstance(leaky_auc, (float, np.floating)) and not isinstance(leaky_auc, bool),
            f"leaky_auc should be the number knn_auc returns, not {type(leaky_auc).__name__}")
    expected = float(knn_auc(split))
    # both scores can be equal (pixels that tell nothing, as on a course fixture): then the
    # learner's number is right when it is knn_auc on their split
    require(abs(float(leaky_auc) - float(patient_auc)) > 1e-12
            or abs(expected - float(patient_auc)) < 1e-12, "leaky_auc equals patient_auc: did "
            "you measure on the manifest's (patient-level) split instead of my_image_split?")
    require(abs(float(leaky_auc) - expected) < 1e-9, f"leaky_auc is {float(leaky_auc):.4f}, but "
            f"knn_auc(my_image_split) gives {expected:.4f}: measure it on your own image-level split")
    passed(f"leak measured: {expected:.3f} on your image-level split vs {float(patient_auc):.3f} "
           "patient-level")


AUC_COLUMNS = ("class", "auc", "ci_low", "ci_high")


def require_answer(*names: str) -> None:
    """First line of a check cell: fail with "answer the exercise above first" (instead of a
    ``NameError``) while the learner has not yet defined ``names`` in the notebook.

    >>> require_answer("surely_not_defined_here")
    Traceback (most recent call last):
    ...
    cxrlab.toolbox.checks.CheckFailed: answer the exercise above first: `surely_not_defined_here` is not defined yet (write your answer in the cell above and run it, then run this cell)
    """
    caller = inspect.currentframe().f_back  # the notebook's namespace (IPython runs cells there)
    scope = {**caller.f_globals, **caller.f_locals}
    missing = [n for n in names if n not in scope]
    require(not missing, "answer the exercise above first: " + ", ".join(f"`{n}`" for n in missing)
            + f" {'is' if len(missing) == 1 else 'are'} not defined yet (write your answer in the "
            "cell above and run it, then run this cell)")


@contextlib.contextmanager
def library_blocked(*functions: Callable, namespace: dict | None = None,
                    task: str | None = None) -> Iterator[None]:
    """Within the block, the library ``functions`` an exercise re-implements raise
    :class:`CheckFailed` when called: through their own module, through any ``cxrlab`` module
    that re-exports them, and through a name bound to them in ``namespace`` (the notebook's
    ``globals()``). Hidden tests run the learner's code inside it. ``task`` names what the
    learner is asked to write, for the message.

    >>> from cxrlab import metrics
    >>> with library_blocked(metrics.macro_auc):
    ...     metrics.macro_auc([0, 1], np.array([0.1, 0.9]))
    Traceback (most recent call last):
    ...
    cxrlab.toolbox.checks.CheckFailed: your answer calls cxrlab.core.metrics.macro_auc: this exercise asks you to compute it yourself
    >>> with library_blocked(metrics.macro_auc, task="the macro AUC"):
    ...     metrics.macro_auc([0, 1], np.array([0.1, 0.9]))
    Traceback (most recent call last):
    ...
    cxrlab.toolbox.checks.CheckFailed: your answer calls cxrlab.core.metrics.macro_auc: write the macro AUC yourself
    """
    saved: list[tuple[object, str, object]] = []

    def blocker_for(function: Callable) -> Callable:
        what = f"{function.__module__}.{function.__name__}"
        advice = f"write {task} yourself" if task else "this exercise asks you to compute it yourself"

        def blocked(*_args, **_kwargs):
            raise CheckFailed(f"your answer calls {what}: {advice}")
        return blocked

    def replace_in(target: Any, items: list[tuple[str, object]], function: Callable,
                   blocker: Callable) -> None:
        for name, value in items:
            if value is function:
                saved.append((target, name, value))
                if isinstance(target, dict):
                    target[name] = blocker
                else:
                    setattr(target, name, blocker)

    try:
        for function in functions:
            blocker = blocker_for(function)
            homes = {id(m): m for m in [sys.modules[function.__module__],
                                        *(m for n, m in list(sys.modules.items())
                                          if n.startswith("cxrlab.") and m is not None)]}
            for module in homes.values():
                replace_in(module, list(vars(module).items()), function, blocker)
            if namespace is not None:
                replace_in(namespace, list(namespace.items()), function, blocker)
        yield
    finally:
        for target, name, value in reversed(saved):
            if isinstance(target, dict):
                target[name] = value
            else:
                setattr(target, name, value)


def bootstrap_by_hand(y: np.ndarray, P: np.ndarray, units: np.ndarray | None, n_boot: int,
                      seed: int, level: float = 0.95) -> list[tuple[float, float]]:
    """``(ci_low, ci_high)`` per class, resampled exactly as chapter 2's exercise 1 hints:
    one ``np.random.default_rng(seed)``, ``rng.choice(np.unique(units), size, replace=True)``
    per resample (``units=None``: the images themselves), resamples with one class skipped."""
    from cxrlab.core.metrics import weighted_aucs

    y, P = np.asarray(y), np.asarray(P, dtype=float)
    units = np.arange(len(y)) if units is None else np.asarray(units)
    values, codes = np.unique(units, return_inverse=True)
    rng = np.random.default_rng(seed)
    drawn = np.stack([rng.choice(len(values), size=len(values), replace=True) for _ in range(n_boot)])
    weights = np.stack([np.bincount(d, minlength=len(values)) for d in drawn])[:, codes]
    tail = 100 * (1 - level) / 2
    out = []
    for j in range(P.shape[1]):
        boots = weighted_aucs((y == j).astype(int), P[:, j], weights)
        low, high = np.percentile(boots[~np.isnan(boots)], [tail, 100 - tail])
        out.append((float(low), float(high)))
    return out


def _auc_table_floats(table: pd.DataFrame, classes: Sequence[str],
                      allow_nan: bool = False) -> pd.DataFrame:
    """The learner's table as plain floats, one row per class in ``classes`` order."""
    require(isinstance(table, pd.DataFrame), f"expected a DataFrame, got {type(table).__name__}")
    missing = [c for c in AUC_COLUMNS if c not in table.columns]
    require(not missing, f"the table lacks column(s) {missing}: it needs columns {list(AUC_COLUMNS)}")
    require(list(map(str, table["class"])) == list(map(str, classes)),
            f"rows are {list(table['class'])}, expected one per class {list(classes)}, in that order")
    try:
        values = table[list(AUC_COLUMNS[1:])].astype(float).reset_index(drop=True)
    except (TypeError, ValueError) as err:
        raise CheckFailed(f"auc, ci_low and ci_high must be numbers ({err})") from None
    require(allow_nan or bool(values.notna().all().all()), "some values are NaN: does every class occur in the test "
            "split, and did you skip resamples that hold only one class?")
    return values


def _check_point_estimates(mine: np.ndarray, truth: np.ndarray, classes: Sequence[str]) -> None:
    if np.allclose(mine, truth, atol=1e-6):
        return
    inverted = np.isclose(mine, 1 - truth, atol=1e-6) & ~np.isclose(truth, 0.5, atol=1e-6)
    require(not inverted.any(), f"the AUC of {[c for c, i in zip(classes, inverted) if i]} is 1 minus "
            "the right value: score the images of class j (y == j) as positives with P[:, j]")
    require(not np.allclose(np.sort(mine), np.sort(truth), atol=1e-6), "the AUCs are right but in the "
            "wrong rows (swapped classes): row j must use y == j and column j of P")
    worst = int(np.argmax(np.abs(mine - truth)))
    raise CheckFailed(f"the AUC of {classes[worst]} is {mine[worst]:.4f}, expected {truth[worst]:.4f}: "
                      "compute roc_auc_score(y == j, P[:, j]) on the whole test split, not on a resample")


def _exactly(low: np.ndarray, high: np.ndarray, ref: np.ndarray) -> bool:
    return bool(np.allclose(low, ref[:, 0], atol=1e-9) and np.allclose(high, ref[:, 1], atol=1e-9))


def _interval_mistake(low: np.ndarray, high: np.ndarray, y: np.ndarray, P: np.ndarray,
                      patients: np.ndarray, n_boot: int, seed: int) -> str | None:
    """Which interval the learner computed (a key of :data:`INTERVAL_HINTS`), or ``None`` for a
    95% patient-level bootstrap. First the exact resampling of the hints (patients, images,
    90%); other implementations are compared, within Monte Carlo noise, with 1000 resamples."""
    def variants(k: int) -> dict[str, np.ndarray]:
        return {"patients": np.array(bootstrap_by_hand(y, P, patients, k, seed)),
                "images": np.array(bootstrap_by_hand(y, P, None, k, seed)),
                "90%": np.array(bootstrap_by_hand(y, P, patients, k, seed, level=0.90))}

    exact = [name for name, ref in variants(n_boot).items() if _exactly(low, high, ref)]
    if exact:
        return None if exact[0] == "patients" else exact[0]
    refs = variants(1000)
    tolerance = 0.35 * (refs["patients"][:, 1] - refs["patients"][:, 0]) + 0.003
    distance = {name: float(np.max((np.abs(low - ref[:, 0]) + np.abs(high - ref[:, 1])) / tolerance))
                for name, ref in refs.items()}
    return None if distance["patients"] <= 1 else min(distance, key=distance.get)


INTERVAL_HINTS = {
    "images": "did you resample images instead of patients? Draw patient ids with replacement "
              "and take all the rows of each drawn patient",
    "90%": "is this a 90% interval? A 95% interval runs from the 2.5th to the 97.5th percentile",
    "patients": "the interval ends differ from a patient-level bootstrap with 200 resamples: "
                "resample patients with replacement, recompute the AUC on each resample, and take "
                "the 2.5th and 97.5th percentiles",
}


def check_auc_table(table: pd.DataFrame, y: np.ndarray, P: np.ndarray, patients: np.ndarray,
                    classes: Sequence[str], n_boot: int = 200, seed: int = 0) -> None:
    """Check chapter 2's hand-made AUC table against ``y``, ``P`` and ``patients``: one row per
    class with the one-vs-rest AUC and a 95% patient-level bootstrap interval.

    Recognises the likely mistakes and names them: an image-level bootstrap, a 90% interval,
    a zero-width interval, inverted (``1 - AUC``) and swapped AUCs.
    """
    from sklearn.metrics import roc_auc_score

    y, P, patients = np.asarray(y), np.asarray(P, dtype=float), np.asarray(patients)
    defined = [j for j in range(len(classes)) if 0 < int(np.sum(y == j)) < len(y)]
    if 0 < len(defined) < len(classes):       # a class without test positives has no AUC
        _auc_table_floats(table, classes, allow_nan=True)
        names = [str(classes[j]) for j in defined]
        undefined = [str(c) for j, c in enumerate(classes) if j not in defined]
        print(f"{', '.join(undefined)}: no positives (or no negatives) in these rows, so no AUC; "
              "the other classes are checked")
        remap = np.full(max(int(y.max()), len(classes)) + 1, -1)
        remap[defined] = np.arange(len(defined))
        rows = table[table["class"].astype(str).isin(names)].reset_index(drop=True)
        kept_y = np.where(y >= 0, remap[np.clip(y, 0, None)], -1)
        return check_auc_table(rows, kept_y, P[:, defined], patients, names, n_boot, seed)
    values = _auc_table_floats(table, classes)
    truth = np.array([roc_auc_score(y == j, P[:, j]) for j in range(len(classes))])
    _check_point_estimates(values["auc"].to_numpy(), truth, classes)
    low, high = values["ci_low"].to_numpy(), values["ci_high"].to_numpy()
    require(bool(np.all(low <= high + 1e-12)), "ci_low is above ci_high: are the columns swapped?")
    ref = np.array(bootstrap_by_hand(y, P, patients, n_boot, seed))
    flat = (high - low < 1e-9) & (ref[:, 1] - ref[:, 0] > 1e-6)
    require(not flat.any(), f"the interval of {[c for c, f in zip(classes, flat) if f]} has zero width: "
            "recompute the AUC on every resample (new rows each time), then take percentiles")
    require(not (mistake := _interval_mistake(low, high, y, P, patients, n_boot, seed)),
            INTERVAL_HINTS.get(mistake or "", ""))
    summary = ", ".join(f"{c} {a:.3f} ({lo:.3f}-{hi:.3f})" for c, a, lo, hi in zip(classes, truth, low, high))
    passed(f"AUC table with 95% patient-level intervals: {summary}")


def clustered_cohort(seed: int, n_patients: int = 40, images_per_patient: int = 5,
                     n_classes: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fresh test inputs for hidden tests: ``y`` (class per image), ``P`` (probabilities) and
    ``patients``, where a patient's images score alike, so resampling images gives visibly
    narrower intervals than resampling patients."""
    rng = np.random.default_rng(seed)
    patient_class = rng.integers(0, n_classes, n_patients)
    patient_effect = rng.normal(0, 1.2, (n_patients, n_classes))
    patients = np.repeat([f"q{seed}-{i:03d}" for i in range(n_patients)], images_per_patient)
    owner = np.repeat(np.arange(n_patients), images_per_patient)
    logits = patient_effect[owner] + 0.2 * rng.normal(size=(len(owner), n_classes))
    logits[np.arange(len(owner)), patient_class[owner]] += 1.0
    P = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return patient_class[owner], P, patients


# ----------------------------------------------------------------------------- claims
CLAIMS_ENV = "CXRLAB_CLAIMS"


class ClaimFailed(AssertionError):
    """A sentence of the notebook's text is not true of the numbers the notebook printed."""


def claim(condition: bool, sentence: str, detail: str = "") -> bool:
    """Check that a "What to see" sentence is true of the numbers just computed.

    ``sentence`` is quoted verbatim (up to line breaks) from the markdown cell that states it;
    ``tests/test_checks.py`` fails when a notebook's claim quotes a sentence its text no longer
    contains. When ``condition`` holds the call is silent and returns ``True``. When it does
    not, it raises :class:`ClaimFailed`, so nbval, ``make course`` and CI fail as soon as the
    data stop supporting the text; with ``CXRLAB_CLAIMS=warn`` (a learner exploring another
    source or seed) it prints a warning instead and returns ``False``; so it does once the
    kernel has loaded a real source or a course fixture
    (:func:`cxrlab.core.session.claims_advisory`), whose numbers the text was not written for.

    >>> claim(0.97 > 0.5, "every class is recognised well above chance")
    True
    >>> claim(0.42 > 0.5, "every class is recognised well above chance", "AUC 0.42")
    Traceback (most recent call last):
    ...
    cxrlab.toolbox.checks.ClaimFailed: the text says "every class is recognised well above chance", but these numbers do not show it (AUC 0.42)
    """
    if bool(condition):
        return True
    message = (f'the text says "{sentence}", but these numbers do not show it'
               + (f" ({detail})" if detail else ""))
    if os.environ.get(CLAIMS_ENV, "").strip().lower() == "warn":
        print(f"⚠ {message}. Trust the numbers, not the sentence.")
        return False
    from cxrlab.core.session import claims_advisory

    advisory = claims_advisory()
    if advisory:
        print(f"⚠ {message}: only a warning, since {advisory}.")
        return False
    raise ClaimFailed(message)


# ---------------------------------------------------------------------------------------------
# Chapters 3-5: helpers their exercise checks share (plain types, no calling the library)
# ---------------------------------------------------------------------------------------------
PLAIN_NUMBERS = (int, float, np.integer, np.floating)


def require_number(value: Any, name: str, allow_none: bool = False) -> float | None:
    """``value`` as a float, or :class:`CheckFailed` unless it is a plain number (int, float
    or a NumPy scalar: no string, no bool, no subclass with its own arithmetic).

    >>> require_number(np.float64(0.25), "rate")
    0.25
    >>> require_number("100", "radius")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ...
    CheckFailed: radius must be a number, not the str '100': store the value itself (100), not its text
    """
    if value is None and allow_none:
        return None
    exact = type(value) in (int, float) or (isinstance(value, (np.integer, np.floating))
                                            and type(value).__module__ == "numpy")
    if isinstance(value, str):
        raise CheckFailed(f"{name} must be a number, not the str {value!r}: store the value "
                          f"itself ({value}), not its text")
    require(exact and not isinstance(value, bool),
            f"{name} must be a plain number (int or float), not {type(value).__name__}"
            + (" (or None)" if allow_none else ""))
    return float(value)


def require_plain_str(value: Any, name: str, choices: Sequence[str]) -> str:
    """``value`` if it is exactly a ``str`` among ``choices`` (a ``str`` subclass with its own
    ``__eq__`` could match anything), else :class:`CheckFailed`."""
    require(type(value) is str, f"{name} must be a plain string (one of {sorted(choices)}), "
            f"not {type(value).__name__}")
    require(str.__eq__(value, value) and value in set(choices),
            f"{name} must be one of {sorted(choices)}, not {value!r}")
    return value


def _code_names(code: types.CodeType) -> set[str]:
    """Every global or attribute name a code object (and the functions inside it) refers to."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def forbid_library(fn: Callable[..., Any], functions: Sequence[Callable[..., Any]],
                   task: str) -> None:
    """:class:`CheckFailed` if the learner's function ``fn`` refers to any of the library
    ``functions`` (by attribute name, or through a global alias such as ``from module import
    name``).

    The exercise asks learners to write ``task`` themselves; the library's version is what the
    hidden tests compare against, so calling it would pass without learning anything.
    """
    require(callable(fn), f"expected a function, got {type(fn).__name__}")
    code = getattr(fn, "__code__", None)
    if code is None:
        return
    by_name = {f.__name__: f for f in functions}
    targets = {id(f): f.__name__ for f in functions}
    used = _code_names(code)
    seen = dict(getattr(fn, "__globals__", {}))
    for var, cell in zip(code.co_freevars, getattr(fn, "__closure__", None) or ()):
        with contextlib.suppress(ValueError):
            seen[var] = cell.cell_contents
    aliases = [targets[id(seen[n])] for n in (used | set(code.co_freevars))
               if n in seen and id(seen[n]) in targets]
    found = sorted((set(by_name) & used) | set(aliases))
    if found:
        home = by_name[found[0]].__module__
        raise CheckFailed(f"write {task} yourself: your function uses {home}."
                          f"{found[0]}, the library version the grader compares against")


def call_answer(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the learner's function; its untouched placeholder (``NotImplementedError``) becomes
    "answer the exercise above first" instead of a traceback."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise CheckFailed("answer the exercise above first: your function still raises "
                          "NotImplementedError (write it in the cell above, run that cell, then "
                          "run this one)") from None
