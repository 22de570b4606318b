"""Learner self-checks: each prints a clear success message or raises :class:`CheckFailed`
(an ``AssertionError``) that says what is wrong and how to look for the cause.

Chapters 3-5 keep their own checks next to their code (``cxrlab.probes`` etc.) and use
:func:`passed` and :class:`CheckFailed` from here.

>>> passed("the split is patient-level")
✔ the split is patient-level
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

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


AUC_COLUMNS = ("class", "auc", "ci_low", "ci_high")


def check_auc_table(table: pd.DataFrame, classes: Sequence[str] | None = None,
                    min_auc: float | None = None) -> None:
    """Check an AUC table from :func:`cxrlab.metrics.auc_table`: its columns, one row per
    class, AUCs in [0, 1] inside their confidence intervals, optionally above ``min_auc``."""
    require(isinstance(table, pd.DataFrame), f"expected a DataFrame, got {type(table).__name__}")
    missing = [c for c in AUC_COLUMNS if c not in table.columns]
    require(not missing, f"the table lacks column(s) {missing}; use cxrlab.metrics.auc_table")
    if classes is not None:
        require(list(map(str, table["class"])) == list(map(str, classes)),
                f"rows are {list(table['class'])}, expected one per class {list(classes)}: "
                "did you pass the class names in the order of the probability columns?")
    auc = table["auc"].astype(float)
    require(auc.notna().all(), "some AUCs are NaN: does every class occur in the test split?")
    require(auc.between(0, 1).all(), "AUCs must lie between 0 and 1")
    inside = (table["ci_low"] <= auc + 1e-9) & (auc <= table["ci_high"] + 1e-9)
    require(inside.all(), "every AUC should lie inside its confidence interval: did you swap "
            "columns or pass probabilities of the wrong class?")
    if min_auc is not None:
        low = table.loc[auc < min_auc, "class"].tolist()
        require(not low, f"AUC below {min_auc} for {low}: were the probabilities computed on "
                "the test split with the trained model (not an untrained one)?")
    summary = ", ".join(f"{c} {a:.3f}" for c, a in zip(table["class"], auc))
    passed(f"AUC table looks right: {summary}")


# ---------------------------------------------------------------------------------------------
# Chapters 3-5: helpers their exercise checks share (plain types, no calling the library)
# ---------------------------------------------------------------------------------------------
import contextlib  # noqa: E402
import types  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

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


def forbid_library(fn: Callable[..., Any], module: types.ModuleType, names: Sequence[str],
                   task: str) -> None:
    """:class:`CheckFailed` if the learner's function ``fn`` refers to ``module.<name>`` for any
    of ``names`` (by attribute, or through a global alias such as ``from module import name``).

    The exercise asks learners to write ``task`` themselves; the library's version is what the
    hidden tests compare against, so calling it would pass without learning anything.
    """
    require(callable(fn), f"expected a function, got {type(fn).__name__}")
    code = getattr(fn, "__code__", None)
    if code is None:
        return
    targets = {id(getattr(module, n)): n for n in names if hasattr(module, n)}
    used = _code_names(code)
    seen = dict(getattr(fn, "__globals__", {}))
    for var, cell in zip(code.co_freevars, getattr(fn, "__closure__", None) or ()):
        with contextlib.suppress(ValueError):
            seen[var] = cell.cell_contents
    aliases = [targets[id(seen[n])] for n in (used | set(code.co_freevars))
               if n in seen and id(seen[n]) in targets]
    found = sorted((set(names) & used) | set(aliases))
    if found:
        raise CheckFailed(f"write {task} yourself: your function uses {module.__name__}."
                          f"{found[0]}, the library version the grader compares against")


@contextlib.contextmanager
def library_hidden(module: types.ModuleType, names: Sequence[str], task: str) -> Iterator[None]:
    """Inside the block, ``module.<name>`` raises :class:`CheckFailed` ("write it yourself");
    restored afterwards. Hidden tests call the learner's function inside it."""
    saved = {n: getattr(module, n) for n in names if hasattr(module, n)}

    def blocked(*_args: Any, **_kwargs: Any) -> Any:
        raise CheckFailed(f"write {task} yourself instead of calling {module.__name__}'s version")

    try:
        for n in saved:
            setattr(module, n, blocked)
        yield
    finally:
        for n, f in saved.items():
            setattr(module, n, f)


def call_answer(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the learner's function; its untouched placeholder (``NotImplementedError``) becomes
    "answer the exercise above first" instead of a traceback."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise CheckFailed("answer the exercise above first: your function still raises "
                          "NotImplementedError (write it in the cell above, run that cell, then "
                          "run this one)") from None
