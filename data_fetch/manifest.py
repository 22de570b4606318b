"""The manifest: the one interface between :mod:`data_fetch` and :mod:`cxrlab`.

A manifest is a table with one row per image. It is written as ``manifest.csv`` next to the
images (paths are relative to the manifest's folder) with a sidecar ``manifest.json`` that
records the schema version, the source and the provenance (the data card).

Columns (see ``REQUIRED_COLUMNS``): ``image_id, path, patient_id, study_id, split, view, sex,
age, race, ethnicity, bmi, site, source``, plus one nullable boolean column per finding named
``finding_<name>`` and ``no_finding``. Extra columns (``race_original``, ``mask_path``...) are
allowed. Missing values are explicit (empty in CSV, ``<NA>`` in pandas).

``split`` is patient-level: no patient appears in two splits (checked on write and on read).

>>> import pandas as pd
>>> df = pd.DataFrame({"image_id": ["a"], "path": ["a.png"], "patient_id": ["p1"]})
>>> validate_manifest(df)
Traceback (most recent call last):
...
data_fetch.manifest.ManifestError: manifest is missing required column(s): study_id, split, view, sex, age, race, ethnicity, bmi, site, source, no_finding
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_fetch.paths import atomic_write_text
from data_fetch.redaction import redact

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.csv"
CARD_FILE = "manifest.json"
FINDING_PREFIX = "finding_"
SPLITS = ("train", "val", "test")
VIEWS = ("PA", "AP")
SEXES = ("F", "M")

STRING_COLUMNS = ("image_id", "path", "patient_id", "study_id", "split", "view", "sex",
                  "race", "ethnicity", "site", "source")
FLOAT_COLUMNS = ("age", "bmi")
REQUIRED_COLUMNS = (
    "image_id", "path", "patient_id", "study_id", "split", "view", "sex", "age", "race",
    "ethnicity", "bmi", "site", "source", "no_finding",
)
NON_NULL_COLUMNS = ("image_id", "path", "patient_id", "study_id", "split", "source")


class ManifestError(ValueError):
    """A manifest breaks the schema. ``column`` and ``rows`` say where."""

    def __init__(self, message: str, column: str | None = None, rows: Sequence[int] = ()):
        self.column = column
        self.rows = list(rows)
        if rows:
            shown = ", ".join(str(r) for r in self.rows[:10])
            more = f" (and {len(self.rows) - 10} more)" if len(self.rows) > 10 else ""
            message = f"{message}; rows {shown}{more}"
        super().__init__(message)


def finding_columns(df: pd.DataFrame) -> list[str]:
    """The finding columns of a manifest (``finding_*``), in table order."""
    return [c for c in df.columns if c.startswith(FINDING_PREFIX)]


def _bad_rows(mask: pd.Series) -> list[int]:
    return [int(i) for i in np.flatnonzero(mask.to_numpy())]


def _check_columns(df: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"manifest is missing required column(s): {', '.join(missing)}")


def _check_non_null(df: pd.DataFrame) -> None:
    for col in NON_NULL_COLUMNS:
        null = df[col].isna() | (df[col].astype("string").str.strip() == "")
        if null.any():
            raise ManifestError(f"column '{col}' must not be empty", col, _bad_rows(null))


def _check_allowed(df: pd.DataFrame, col: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    bad = df[col].notna() & ~df[col].isin(allowed)
    if bad.any():
        raise ManifestError(
            f"column '{col}' must be one of {', '.join(allowed)} or missing", col, _bad_rows(bad)
        )


def _check_ranges(df: pd.DataFrame) -> None:
    for col, low, high in (("age", 0.0, 120.0), ("bmi", 8.0, 90.0)):
        values = pd.to_numeric(df[col], errors="coerce")
        unparsable = df[col].notna() & values.isna()
        if unparsable.any():
            raise ManifestError(f"column '{col}' must be numeric", col, _bad_rows(unparsable))
        out = values.notna() & ((values < low) | (values > high))
        if out.any():
            raise ManifestError(f"column '{col}' must lie in [{low}, {high}]", col, _bad_rows(out))


def _check_booleans(df: pd.DataFrame) -> None:
    for col in [*finding_columns(df), "no_finding"]:
        values = df[col]
        ok = values.isna() | values.isin([True, False, 0, 1])
        if not ok.all():
            raise ManifestError(f"column '{col}' must be boolean or missing", col, _bad_rows(~ok))


def _check_unique_ids(df: pd.DataFrame) -> None:
    dup = df["image_id"].duplicated(keep=False)
    if dup.any():
        raise ManifestError("column 'image_id' must be unique", "image_id", _bad_rows(dup))


def _check_patient_level_split(df: pd.DataFrame) -> None:
    n_splits = df.groupby("patient_id")["split"].transform("nunique")
    leak = n_splits > 1
    if leak.any():
        patients = sorted(df.loc[leak, "patient_id"].astype(str).unique())[:5]
        raise ManifestError(
            "split must be patient-level, but patient(s) "
            f"{', '.join(patients)} appear in more than one split",
            "split",
            _bad_rows(leak),
        )


def validate_manifest(df: pd.DataFrame) -> pd.DataFrame:
    """Check ``df`` against the schema and return it with canonical dtypes.

    Raises :class:`ManifestError` naming the column and the offending row numbers
    (0-based positions in ``df``).
    """
    _check_columns(df)
    df = df.reset_index(drop=True)
    _check_non_null(df)
    _check_allowed(df, "split", SPLITS)
    _check_allowed(df, "view", VIEWS)
    _check_allowed(df, "sex", SEXES)
    _check_ranges(df)
    _check_booleans(df)
    _check_unique_ids(df)
    _check_patient_level_split(df)
    return canonical_dtypes(df)


def canonical_dtypes(df: pd.DataFrame) -> pd.DataFrame:
    """Return a copy with string, float and nullable-boolean dtypes fixed."""
    df = df.copy()
    for col in STRING_COLUMNS:
        df[col] = df[col].astype("string")
    for col in FLOAT_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Float64")
    for col in [*finding_columns(df), "no_finding"]:
        df[col] = df[col].astype("boolean")
    return df


def write_manifest(df: pd.DataFrame, folder: str | Path, card: dict[str, Any] | None = None) -> Path:
    """Validate and write ``manifest.csv`` (and ``manifest.json``, the data card) to ``folder``.

    Paths in ``df['path']`` must be relative to ``folder``. Each file is written atomically
    (temporary name, then rename; the card first, the table last), so a crash or a full disk
    leaves the old manifest or the new one, never half a file. The card passes through
    :func:`data_fetch.redaction.redact` so no URL query or registered secret lands in it.
    """
    folder = Path(folder)
    df = validate_manifest(df)
    missing = [i for i, p in enumerate(df["path"]) if not (folder / str(p)).exists()]
    if missing:
        raise ManifestError("image file(s) named in column 'path' do not exist", "path", missing)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / MANIFEST_FILE
    table = df.to_csv(index=False)
    meta = {"schema_version": SCHEMA_VERSION, "n_images": int(len(df)),
            "n_patients": int(df["patient_id"].nunique()), **(card or {})}
    atomic_write_text(folder / CARD_FILE, redact(json.dumps(meta, indent=2, default=str)))
    atomic_write_text(target, table)
    return target


def read_card(folder: str | Path) -> dict[str, Any]:
    """Read the data card (``manifest.json``) of a prepared dataset, or ``{}`` if absent."""
    path = Path(folder) / CARD_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def read_manifest(path: str | Path, check_files: bool = False) -> pd.DataFrame:
    """Read and validate a manifest (a ``manifest.csv`` file or the folder holding it).

    Adds an absolute ``abspath`` column. ``check_files=True`` also checks every image exists.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    if not path.exists():
        raise FileNotFoundError(f"no manifest at {path}; prepare the data first "
                                "(python -m data_fetch --help)")
    version = read_card(path.parent).get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ManifestError(f"manifest schema version {version} is not supported "
                            f"(this code reads version {SCHEMA_VERSION}); prepare the data again")
    df = pd.read_csv(path, dtype={c: "string" for c in STRING_COLUMNS}, keep_default_na=True)
    df = validate_manifest(df)
    df["abspath"] = [str(path.parent / p) for p in df["path"]]
    if check_files:
        missing = [i for i, p in enumerate(df["abspath"]) if not Path(p).exists()]
        if missing:
            raise ManifestError("image file(s) named in column 'path' do not exist", "path", missing)
    return df


def patient_level_split(
    patient_ids: Iterable[str],
    fractions: tuple[float, float, float] = (0.6, 0.1, 0.3),
    seed: int = 0,
) -> dict[str, str]:
    """Assign each distinct patient to ``train``/``val``/``test`` (default 60/10/30, the paper's).

    The assignment depends only on the set of patients and ``seed``, so it is reproducible.

    >>> s = patient_level_split(["p1", "p2", "p1", "p3"], (0.34, 0.33, 0.33), seed=1)
    >>> sorted(s) == ["p1", "p2", "p3"] and set(s.values()) <= {"train", "val", "test"}
    True
    """
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    patients = sorted(set(map(str, patient_ids)))
    order = np.random.default_rng(seed).permutation(len(patients))
    n = len(patients)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    labels = np.array(["test"] * n, dtype=object)
    labels[order[:n_train]] = "train"
    labels[order[n_train:n_train + n_val]] = "val"
    return dict(zip(patients, labels.tolist()))
