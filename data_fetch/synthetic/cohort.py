"""Generating a synthetic cohort on disk: images, lung masks, manifest and data card.

>>> import tempfile, pathlib
>>> from data_fetch.synthetic.config import SyntheticConfig
>>> dest = pathlib.Path(tempfile.mkdtemp()) / "tiny"
>>> df = generate_cohort(dest, SyntheticConfig(n_patients=6, image_size=32), progress=False)
>>> sorted(set(df["race"])) <= ["A", "B", "C"], (dest / "DATA_CARD.md").exists()
(True, True)
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from data_fetch.manifest import patient_level_split, write_manifest
from data_fetch.paths import data_root
from data_fetch.synthetic.anatomy import record_findings, sample_patients, sample_studies
from data_fetch.synthetic.card import write_data_card
from data_fetch.synthetic.config import FINDINGS, SyntheticConfig
from data_fetch.synthetic.render import Renderer
from data_fetch.synthetic.version import GENERATOR_VERSION

SOURCE = "synthetic"


def build_table(cfg: SyntheticConfig) -> pd.DataFrame:
    """Everything about every study (one row per image) before any pixel is drawn."""
    patients = sample_patients(cfg)
    studies = sample_studies(cfg, patients)
    table = studies.merge(patients, on="patient_index", how="left", validate="many_to_one")
    table = pd.concat([table, record_findings(cfg, table, table["group"].to_numpy())], axis=1)
    table["study_id"] = [f"{p}-s{k}" for p, k in zip(table["patient_id"], table["study_index"])]
    table["image_id"] = table["study_id"]
    split = patient_level_split(table["patient_id"], tuple(cfg.split_fractions), seed=cfg.seed)
    table["split"] = table["patient_id"].map(split)
    return table


def manifest_columns(table: pd.DataFrame, cfg: SyntheticConfig) -> pd.DataFrame:
    """The manifest: schema columns, recorded findings, ground truth and extras."""
    df = pd.DataFrame({
        "image_id": table["image_id"],
        "path": "images/" + table["image_id"] + ".png",
        "patient_id": table["patient_id"], "study_id": table["study_id"],
        "split": table["split"], "view": table["view"],
        "sex": np.where(table["female"], "F", "M"),
        "age": table["age"].round(1), "race": table["group"], "ethnicity": pd.NA,
        "bmi": table["bmi"].round(1), "site": table["site"], "source": SOURCE,
    })
    for name in FINDINGS:
        df[f"finding_{name}"] = table[f"finding_{name}"].astype(bool)
    df["no_finding"] = table["no_finding"].astype(bool)
    for name in (*FINDINGS, "no_finding"):
        df[f"true_{name}"] = table[f"true_{name}"].astype(bool)
    df["mask_path"] = "masks/" + table["image_id"] + ".png"
    df["study_index"] = table["study_index"]
    df["signal_strength"] = (cfg.group_signal * table["signal_amp"]).round(4)
    return df


def make_renderer(cfg: SyntheticConfig) -> Renderer:
    """The renderer the config's ``anatomy`` knob asks for (``ct`` or ``drawn``)."""
    if cfg.anatomy == "ct":
        from data_fetch.synthetic.compose import CTRenderer

        return CTRenderer(cfg)
    return Renderer(cfg)


def _render_all(folder: Path, table: pd.DataFrame, cfg: SyntheticConfig, progress: bool) -> None:
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    renderer = make_renderer(cfg)
    rows = table.to_dict("records")
    for i, row in enumerate(tqdm(rows, desc=f"synthetic {cfg.image_size}px", unit="img",
                                 disable=not progress)):
        img, mask = renderer.render(row, image_index=i)
        Image.fromarray(img).save(folder / "images" / f"{row['image_id']}.png")
        Image.fromarray(mask).save(folder / "masks" / f"{row['image_id']}.png")


def card_dict(cfg: SyntheticConfig) -> dict[str, Any]:
    """The machine-readable data card stored in ``manifest.json``."""
    return {"source": SOURCE, "generator_version": GENERATOR_VERSION,
            "config": cfg.as_dict(), "changed_knobs": cfg.changed(),
            "data_card": "DATA_CARD.md",
            "groups": "A, B, C are abstract labels standing in for self-reported race",
            "finding_columns": "finding_* = as recorded (may be under-recorded); "
                               "true_* = ground truth"}


def _write_into(folder: Path, cfg: SyntheticConfig, progress: bool) -> pd.DataFrame:
    table = build_table(cfg)
    _render_all(folder, table, cfg, progress)
    df = manifest_columns(table, cfg)
    write_manifest(df, folder, card=card_dict(cfg))
    write_data_card(folder, cfg, df)
    return df


def _temp_beside(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def generate_cohort(dest: str | Path, config: SyntheticConfig | None = None,
                    progress: bool = True, overwrite: bool = False) -> pd.DataFrame:
    """Write a cohort (images/, masks/, manifest.csv, manifest.json, DATA_CARD.md) to ``dest``.

    The cohort is built in a temporary folder beside ``dest`` and renamed into place at the
    end, so an interruption never leaves half a cohort. ``dest`` must not exist (or be
    empty) unless ``overwrite=True``. Returns the manifest as written.
    """
    cfg = config or SyntheticConfig()
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise FileExistsError(f"{dest} already exists and is not empty; "
                              "choose another --dest or pass overwrite=True")
    tmp = _temp_beside(dest)
    try:
        df = _write_into(tmp, cfg, progress)
        _move_into_place(tmp, dest, replace=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return df


def _move_into_place(tmp: Path, dest: Path, replace: bool) -> bool:
    """Rename ``tmp`` to ``dest``; returns False if another process got there first."""
    old = None
    if dest.exists() and replace:
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        dest.rename(old)
    try:
        tmp.rename(dest)
        return True
    except OSError:
        if old is not None and not dest.exists():
            old.rename(dest)
            old = None
        if dest.exists():
            return False
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def cohort_name(cfg: SyntheticConfig, label: str | None) -> str:
    """Folder name: a label (e.g. the course preset, or ``custom``) plus a hash of the knobs."""
    return f"{label or 'custom'}-v{GENERATOR_VERSION}-{cfg.digest(8)}"


def prepare(config: SyntheticConfig | None = None, label: str | None = None,
            root: str | Path | None = None, progress: bool = True, **overrides: Any) -> Path:
    """Return the folder of the cohort for ``config`` (or the knobs in ``overrides``), making it once.

    Sizes are knobs like any other (``n_patients``, ``image_size``): the caller passes them, and
    ``label`` only names the folder ``<root or data_root()>/synthetic/<label>-v<version>-<hash>``
    (cxrlab passes its preset's name and sizes). If it is
    already complete it is reused; otherwise it is generated into a temporary folder and
    renamed. When two processes race, the loser discards its copy and uses the winner's.

    >>> import tempfile
    >>> path = prepare(label="demo", root=tempfile.mkdtemp(), progress=False,
    ...                n_patients=4, image_size=32)
    >>> (path / "manifest.csv").exists()
    True
    """
    if config is None:
        config = SyntheticConfig.from_dict(overrides)
    elif overrides:
        config = config.replace(**overrides)
    base = Path(root) if root is not None else data_root()
    dest = base / SOURCE / cohort_name(config, label)
    if (dest / "manifest.csv").exists() and (dest / "DATA_CARD.md").exists():
        return dest
    if dest.exists() and any(dest.iterdir()) and not (dest / "manifest.csv").exists():
        raise FileExistsError(f"{dest} exists but holds no complete cohort (no manifest.csv); "
                              "delete it and call prepare() again")
    tmp = _temp_beside(dest)
    try:
        _write_into(tmp, config, progress)
        _move_into_place(tmp, dest, replace=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
