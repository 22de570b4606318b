"""Pieces every real source shares: CLI options, image conversion, race mapping, the manifest.

Images are stored as 8-bit greyscale PNGs, centre-cropped to a square and resized to
``--size`` pixels (``--size 0`` keeps the original size), so every source looks the same to
:mod:`cxrlab`. Self-reported race is mapped to the classes of Gichoya et al. 2022 (Asian,
Black, White); anything else becomes missing, and the original string is kept in
``race_original``.
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from data_fetch.manifest import patient_level_split, write_manifest
from data_fetch.paths import dataset_dir

#: The 13 finding labels of the CheXpert labeller (CheXpert and MIMIC-CXR-JPG's chexpert table).
CHEXPERT_LABELS = ("Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                   "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
                   "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices")

log = logging.getLogger("data_fetch")

DEFAULT_NAME = "default"
DEFAULT_SIZE = 256
RACE_CLASSES = ("Asian", "Black", "White")
#: Rough size of one stored PNG at ``size`` pixels (chest X-rays compress to about 0.6 B/px).
PNG_BYTES_PER_PIXEL = 0.6


class CorruptImageError(ValueError):
    """An image could not be decoded."""


# ----------------------------------------------------------------------------- CLI
def add_common_args(parser: argparse.ArgumentParser, mirror_help: str) -> None:
    """Options every source has: where to write, how big, how many, which host, dry run."""
    parser.add_argument("--dest", type=Path, default=None,
                        help="output folder (default: $CXRLAB_DATA/<source>/<name>)")
    parser.add_argument("--name", default=DEFAULT_NAME,
                        help="dataset name under the data folder (default: %(default)s)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE,
                        help="stored image size in pixels, square; 0 keeps the original "
                             "(default: %(default)s)")
    parser.add_argument("--limit", "--max-images", dest="limit", type=int, default=None,
                        help="prepare at most N images")
    parser.add_argument("--mirror", default=None, help=mirror_help)
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient-level split")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be downloaded and the disk it needs, then stop")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def resolve_dest(source: str, dest: str | Path | None, name: str = DEFAULT_NAME) -> Path:
    """``dest`` if given, else ``dataset_dir(source, name)``."""
    return Path(dest).expanduser() if dest else dataset_dir(source, name)


def env_default(name: str) -> str | None:
    """The value of an environment variable, or None when unset or empty."""
    return os.environ.get(name) or None


# ----------------------------------------------------------------------------- images
def to_uint8(img: Image.Image) -> Image.Image:
    """Greyscale 8-bit version of ``img`` (16-bit and RGB(A) inputs included)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(scale_to_uint8(arr))
    if img.mode != "L":
        img = img.convert("L")
    return img


def scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Linearly map an array's min..max to 0..255 (a constant image becomes 0)."""
    arr = np.asarray(arr, dtype=np.float64)
    low, high = float(np.min(arr)), float(np.max(arr))
    if high <= low:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.round((arr - low) / (high - low) * 255.0).astype(np.uint8)


def square_resize(img: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square and resize to ``size`` (``size <= 0`` only converts)."""
    img = to_uint8(img)
    if size <= 0:
        return img
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.Resampling.LANCZOS if side > size
                         else Image.Resampling.BILINEAR)
    return img


def decode_image(data: bytes, name: str) -> Image.Image:
    """Decode image bytes fully (PNG, JPEG...), raising :class:`CorruptImageError` if broken."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as err:  # PIL raises many types for broken files
        detail = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(err))
        raise CorruptImageError(f"{name}: cannot decode image ({type(err).__name__}: {detail})") from None
    return img


def save_png(img: Image.Image, path: Path) -> None:
    """Write ``img`` as PNG atomically (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    tmp.replace(path)


def store_image(data: bytes, name: str, path: Path, size: int) -> None:
    """Decode ``data``, square-resize it to ``size`` and save it as PNG at ``path``."""
    save_png(square_resize(decode_image(data, name), size), path)


def estimate_disk(n_images: int, size: int, original_bytes: int = 0) -> int:
    """Bytes needed to store ``n_images`` PNGs at ``size`` px plus any kept originals."""
    px = (size if size > 0 else 2048) ** 2
    return int(n_images * px * PNG_BYTES_PER_PIXEL) + original_bytes


# ----------------------------------------------------------------------------- labels
def finding_column(label: str) -> str:
    """``finding_<snake_case>`` for a finding name (``'Pleural Effusion'`` -> ``finding_pleural_effusion``)."""
    snake = re.sub(r"[^a-z0-9]+", "_", label.strip().lower()).strip("_")
    return "no_finding" if snake == "no_finding" else f"finding_{snake}"


def map_sex(value: Any) -> Any:
    """``'M'``/``'F'`` from Male/Female/M/F strings, else missing."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return pd.NA
    text = str(value).strip().lower()
    if text in ("m", "male"):
        return "M"
    if text in ("f", "female"):
        return "F"
    return pd.NA


def race_class(text: Any) -> Any:
    """Asian/Black/White when ``text`` names exactly one of them, else missing.

    Works on the value lists of MIMIC-IV (``'BLACK/AFRICAN AMERICAN'``, ``'ASIAN - CHINESE'``),
    CheXpert (``'White, non-Hispanic'``) and TCIA (``'Black or African American'``). Hispanic
    or Latino values (as race or inside the string) are not mapped, following the paper.

    >>> [race_class(v) for v in ["WHITE - RUSSIAN", "Black or African American", "OTHER"]]
    ['White', 'Black', <NA>]
    """
    if text is None or text is pd.NA or (isinstance(text, float) and np.isnan(text)):
        return pd.NA
    low = str(text).lower()
    if is_hispanic(low):
        return pd.NA
    hits = [c for c in RACE_CLASSES if re.search(rf"\b{c.lower()}\b", low)]
    if "african" in low and "Black" not in hits:
        hits.append("Black")
    return hits[0] if len(set(hits)) == 1 else pd.NA


def is_hispanic(text: Any) -> bool:
    """True when a race/ethnicity string says Hispanic or Latino (and not *non*-Hispanic)."""
    if text is None or text is pd.NA or (isinstance(text, float) and np.isnan(text)):
        return False
    low = str(text).lower()
    low = re.sub(r"\b(non|not)[\s-]*(hispanic|latino|latina|latinx)\S*", "", low)
    return bool(re.search(r"hispanic|latin[oax]", low))


# ----------------------------------------------------------------------------- manifest
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


def finalize(df: pd.DataFrame, folder: Path, card: dict[str, Any],
             excluded: list[tuple[str, str]]) -> Path:
    """Report excluded images, then validate and write the manifest and data card."""
    if excluded:
        log.warning("%d image(s) left out as corrupt or undecodable: %s", len(excluded),
                    "; ".join(f"{n} ({why})" for n, why in excluded[:5]))
        card = {**card, "excluded": [{"image": n, "reason": why} for n, why in excluded]}
    if df.empty:
        raise RuntimeError(f"no usable images for {card.get('source')}: nothing written to {folder}")
    df = df.sort_values("image_id").reset_index(drop=True)
    card = {**card, "splits": df["split"].value_counts().to_dict()}
    return write_manifest(df, folder, card)


def say(message: str) -> None:
    """A progress message for the user (goes through logging and stdout)."""
    log.info(message)
    print(message, flush=True)


def whole_patient_subset(df: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """The first ``limit`` images of whole patients taken in a seeded random order.

    Keeps every image of a patient together (up to the cut), so a subset never splits a
    patient's studies; ``limit=None`` or a limit above the table size returns ``df`` unchanged.
    """
    if limit is None or len(df) <= limit:
        return df
    patients = sorted(df["patient_id"].unique())
    order = np.random.default_rng(seed).permutation(len(patients))
    rank = {patients[i]: r for r, i in enumerate(order)}
    df = df.assign(_rank=df["patient_id"].map(rank)).sort_values(["_rank", "image_id"])
    return df.head(limit).drop(columns="_rank")
