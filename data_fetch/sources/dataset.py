"""Dataset finalisation shared by the real sources: option checks, folder claim, splits,
per-image failures and the manifest with its data card.

A dataset folder holds images of one size from one source. :func:`claim_folder` records both in
``_state/settings.json`` before the first image is written and refuses a later run that asks
for another ``--size`` (or source) into the same folder, so a card never describes images it
does not hold. :func:`finalize` checks every image once more before the manifest is written.
"""
from __future__ import annotations

import gzip
import io
import json
import logging
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_fetch.download import DownloadError
from data_fetch.manifest import CARD_FILE, patient_level_split, write_manifest
from data_fetch.paths import atomic_write_text
from data_fetch.sources.images import png_size

log = logging.getLogger("data_fetch")

DEFAULT_NAME = "default"
DEFAULT_SIZE = 256
MAX_SIZE = 4096
SETTINGS_FILE = Path("_state") / "settings.json"
#: Per-image download failures are skipped and reported until more than this share fail ...
MAX_FAILED_SHARE = 0.1
#: ... and at least this many: a few missing files never end a long run.
MIN_FAILURES_TO_ABORT = 5


class FolderConflictError(ValueError):
    """The dataset folder already holds images made with other settings."""


# ----------------------------------------------------------------------------- options
def check_size(size: int) -> int:
    """``size`` if it is 0 (keep the original) or 1..MAX_SIZE pixels, else ValueError."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 0 <= size <= MAX_SIZE:
        raise ValueError(f"--size must be 0 (keep the original size) or 1 to {MAX_SIZE} pixels, "
                         f"got {size!r}")
    return int(size)


def check_count(value: int | None, option: str = "--limit") -> int | None:
    """``value`` if it is None or a whole number >= 1, else ValueError naming ``option``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{option} must be a whole number of images >= 1, got {value!r}")
    return int(value)


def check_workers(value: int | None) -> int | None:
    """``value`` if it is None (every core) or a whole number of processes >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"--workers must be a whole number of processes >= 1, got {value!r}")
    return int(value)


def check_seed(seed: int) -> int:
    """``seed`` if it is a whole number >= 0 (what numpy's generators accept)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"--seed must be a whole number >= 0, got {seed!r}")
    return int(seed)


def check_fraction(value: float, option: str) -> float:
    """``value`` if 0 <= value < 1, else ValueError naming ``option``."""
    try:
        ok = 0.0 <= float(value) < 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{option} must be a fraction from 0 up to (not including) 1, got {value!r}")
    return float(value)


def check_common(size: int, limit: int | None, seed: int, limit_option: str = "--limit") -> None:
    """Validate the options every source has, before any network or disk work."""
    check_size(size)
    check_count(limit, limit_option)
    check_seed(seed)


# ----------------------------------------------------------------------------- folder
def _recorded_settings(dest: Path) -> dict[str, Any] | None:
    for path in (dest / SETTINGS_FILE, dest / CARD_FILE):
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (ValueError, OSError):
                continue
            if "size" in data:
                return {"source": data.get("source"), "size": data.get("size")}
    return None


def _size_of_existing_images(dest: Path) -> int | None:
    """The side of the first stored PNG (square images only), None when there is none."""
    images = dest / "images"
    if not images.is_dir():
        return None
    first = next(images.rglob("*.png"), None)
    dims = png_size(first) if first else None
    return dims[0] if dims and dims[0] == dims[1] else (None if dims is None else -1)


def claim_folder(dest: Path, source: str, size: int) -> None:
    """Record ``source`` and ``size`` for ``dest``; refuse when it holds other images.

    Raises :class:`FolderConflictError` with what to do instead when an earlier run wrote
    images of another size (or another source) into ``dest``.
    """
    dest = Path(dest)
    recorded = _recorded_settings(dest)
    if recorded is None:
        side = _size_of_existing_images(dest)
        if side is not None and size > 0 and side != size:
            recorded = {"source": source, "size": side if side > 0 else "another size"}
    if recorded is not None:
        other_source = recorded.get("source") not in (None, source)
        if other_source or recorded.get("size") != size:
            what = (f"{recorded.get('source')} images" if other_source
                    else f"images at --size {recorded.get('size')}")
            raise FolderConflictError(
                f"{dest} already holds {what}; this run asks for {source} at --size {size}. "
                f"Use another --name (e.g. --name {source}{size}) or --dest, or delete {dest} "
                "to start over (a folder holds one size of one source).")
    atomic_write_text(dest / SETTINGS_FILE, json.dumps({"source": source, "size": size}))


# ----------------------------------------------------------------------------- rows
def read_table(data: bytes, what: str) -> pd.DataFrame:
    """A csv or csv.gz table from bytes; :class:`DownloadError` naming ``what`` if unreadable."""
    try:
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        return pd.read_csv(io.BytesIO(data))
    except (EOFError, OSError, zlib.error, UnicodeDecodeError, ValueError) as err:
        raise DownloadError(f"{what} is incomplete or not a csv ({type(err).__name__}); "
                            "fetch it again") from None


def empty_columns() -> dict[str, Any]:
    """Schema columns a source may not know, as explicit missing values."""
    return {"race": pd.NA, "ethnicity": pd.NA, "bmi": np.nan, "age": np.nan, "sex": pd.NA,
            "view": pd.NA, "site": pd.NA}


def split_patients(patients: Iterable[str], seed: int,
                   fractions: tuple[float, float, float] = (0.6, 0.1, 0.3)) -> dict[str, str]:
    """Patient-level split (the paper's 60/10/30 by default), fixed by ``seed``."""
    return patient_level_split(patients, fractions, seed)


def carve_val(patients: Iterable[str], val_fraction: float, seed: int) -> dict[str, str]:
    """Split train+val patients into ``train`` and ``val`` at patient level."""
    patients = list(patients)
    if not patients:
        return {}
    split = patient_level_split(patients, (1.0 - val_fraction, val_fraction, 0.0), seed)
    return {p: ("train" if s == "test" else s) for p, s in split.items()}


def whole_patient_subset(df: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """The first ``limit`` images of whole patients taken in a seeded random order.

    Keeps every image of a patient together (up to the cut), so a subset never splits a
    patient's studies; ``limit=None`` or a limit above the table size returns ``df`` unchanged.
    """
    if limit is not None:
        check_count(limit)
    if limit is None or len(df) <= limit:
        return df
    patients = sorted(df["patient_id"].unique())
    order = np.random.default_rng(seed).permutation(len(patients))
    rank = {patients[i]: r for r, i in enumerate(order)}
    df = df.assign(_rank=df["patient_id"].map(rank)).sort_values(["_rank", "image_id"])
    return df.head(limit).drop(columns="_rank")


# ----------------------------------------------------------------------------- failures
class FailureBudget:
    """Per-image download failures: skipped and kept for the card, until too many fail.

    >>> budget = FailureBudget(total=100)
    >>> budget.record("a.jpg", "HTTP 404")
    >>> budget.failed
    [('a.jpg', 'HTTP 404')]
    """

    def __init__(self, total: int, max_share: float = MAX_FAILED_SHARE,
                 min_count: int = MIN_FAILURES_TO_ABORT):
        self.total, self.max_share, self.min_count = total, max_share, min_count
        self.failed: list[tuple[str, str]] = []

    def record(self, name: str, reason: str) -> None:
        """Note one failure; raise :class:`DownloadError` once too many have failed."""
        self.failed.append((name, reason))
        log.warning("%s: %s (skipped)", name, reason)
        n = len(self.failed)
        if n >= self.min_count and n > self.max_share * self.total:
            first = "; ".join(f"{i} ({why})" for i, why in self.failed[:3])
            raise DownloadError(
                f"{n} of {self.total} images could not be downloaded (first: {first}); stopped. "
                "The images fetched so far are kept: check the address and your access, then "
                "run the same command again to fetch the rest.")


# ----------------------------------------------------------------------------- manifest
def _check_images(df: pd.DataFrame, folder: Path, size: Any) -> None:
    """Every image named in ``df`` exists, is a readable PNG and (``size > 0``) is size x size."""
    bad = []
    for rel in df["path"]:
        dims = png_size(folder / rel)
        if dims is None or (isinstance(size, int) and size > 0 and dims != (size, size)):
            bad.append((rel, dims))
    if bad:
        rel, dims = bad[0]
        found = "missing or unreadable" if dims is None else f"{dims[0]} x {dims[1]} px"
        raise FolderConflictError(
            f"{len(bad)} image(s) in {folder} do not match --size {size} (first: {rel}, "
            f"{found}); delete {folder} and run again, or use another --name")


def finalize(df: pd.DataFrame, folder: Path, card: dict[str, Any],
             excluded: list[tuple[str, str]],
             failed: list[tuple[str, str]] | None = None) -> Path:
    """Report excluded and failed images, check the images, write the manifest and data card."""
    if excluded:
        log.warning("%d image(s) left out as corrupt or undecodable: %s", len(excluded),
                    "; ".join(f"{n} ({why})" for n, why in excluded[:5]))
        card = {**card, "excluded": [{"image": n, "reason": why} for n, why in excluded]}
    if failed:
        log.warning("%d image(s) could not be downloaded and are missing; a re-run tries them "
                    "again", len(failed))
        card = {**card, "failed_downloads": [{"image": n, "reason": why} for n, why in failed]}
    if df.empty:
        raise RuntimeError(f"no usable images for {card.get('source')}: nothing written to {folder}")
    df = df.sort_values("image_id").reset_index(drop=True)
    _check_images(df, Path(folder), card.get("size"))
    card = {**card, "splits": df["split"].value_counts().to_dict()}
    return write_manifest(df, folder, card)
