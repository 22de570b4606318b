"""Generating a synthetic cohort on disk: images, lung masks, manifest and data card.

>>> import tempfile, pathlib
>>> from data_fetch.synthetic.config import SyntheticConfig
>>> dest = pathlib.Path(tempfile.mkdtemp()) / "tiny"
>>> df = generate_cohort(dest, SyntheticConfig(n_patients=6, image_size=32), progress=False)
>>> sorted(set(df["race"])) <= ["A", "B", "C"], (dest / "DATA_CARD.md").exists()
(True, True)
"""
from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
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
#: Cohorts with fewer images are drawn in the calling process: a pool would cost more than it saves.
PARALLEL_MIN_IMAGES = 500
#: Images one worker draws at a time (consecutive rows, so a patient's studies mostly stay together).
CHUNK_IMAGES = 100


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


def render_workers(n_images: int, workers: int | None = None, anatomy: str = "drawn") -> int:
    """How many processes draw a cohort of ``n_images``: ``workers`` (None: every core this
    process may use), but one for a cohort under :data:`PARALLEL_MIN_IMAGES` images, one
    where processes cannot be forked (macOS, Windows: a spawned worker would re-run the
    caller's script, which a script without a ``__main__`` guard does not survive), and one
    for ``anatomy="ct"``: the CT renderer resizes its projections with torch, and torch's
    thread pool deadlocks in a child forked from a process that has already used it (seen:
    the knob tests hung in ``CTRenderer.__init__``).

    >>> render_workers(100, 8), render_workers(5000, 1), render_workers(5000, 8, anatomy="ct")
    (1, 1, 1)
    """
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if n_images < PARALLEL_MIN_IMAGES or anatomy == "ct" or not _can_fork():
        return 1
    return max(1, min(int(workers), -(-n_images // CHUNK_IMAGES)))


def _can_fork() -> bool:
    """Whether worker processes can be forked here (Linux: yes; macOS, Windows: no)."""
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


_WORKER_RENDERER: dict[str, Renderer] = {}


def _worker_renderer(cfg: SyntheticConfig) -> Renderer:
    """The renderer of a worker process, made once per config (a worker draws many chunks)."""
    key = cfg.digest()
    if key not in _WORKER_RENDERER:
        _WORKER_RENDERER.clear()
        _WORKER_RENDERER[key] = make_renderer(cfg)
    return _WORKER_RENDERER[key]


def render_rows(folder: Path, cfg: SyntheticConfig, rows: list[dict[str, Any]], start: int,
                renderer: Renderer | None = None) -> int:
    """Draw ``rows`` (image numbers ``start``, ``start + 1``, ...) into ``folder``'s images/ and
    masks/ with ``renderer`` (None: this worker process's own); returns how many were drawn.
    Every image depends only on its row, its number and the config, so the cohort is the same
    whichever process draws which rows."""
    renderer = renderer or _worker_renderer(cfg)
    for i, row in enumerate(rows, start=start):
        img, mask = renderer.render(row, image_index=i)
        Image.fromarray(img).save(folder / "images" / f"{row['image_id']}.png")
        Image.fromarray(mask).save(folder / "masks" / f"{row['image_id']}.png")
    return len(rows)


def _render_all(folder: Path, table: pd.DataFrame, cfg: SyntheticConfig, progress: bool,
                workers: int | None = None) -> None:
    """Draw every image of ``table``, in :func:`render_workers` processes."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rows = table.to_dict("records")
    n_workers = render_workers(len(rows), workers, cfg.anatomy)
    bar = tqdm(total=len(rows), desc=f"synthetic {cfg.image_size}px", unit="img",
               disable=not progress)
    with bar:
        if n_workers == 1:
            renderer = make_renderer(cfg)
            for start in range(0, len(rows), CHUNK_IMAGES):
                bar.update(render_rows(folder, cfg, rows[start:start + CHUNK_IMAGES], start,
                                       renderer))
            return
        # forked: nothing is imported again, and the drawn renderer only uses numpy, scipy and
        # PIL (never torch, whose thread pool does not survive a fork; see render_workers)
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(n_workers, mp_context=context) as pool:
            jobs = [pool.submit(render_rows, folder, cfg, rows[start:start + CHUNK_IMAGES], start)
                    for start in range(0, len(rows), CHUNK_IMAGES)]
            for job in as_completed(jobs):
                bar.update(job.result())


def card_dict(cfg: SyntheticConfig) -> dict[str, Any]:
    """The machine-readable data card stored in ``manifest.json``."""
    return {"source": SOURCE, "generator_version": GENERATOR_VERSION,
            "config": cfg.as_dict(), "changed_knobs": cfg.changed(),
            "data_card": "DATA_CARD.md",
            "groups": "A, B, C are abstract labels standing in for self-reported race",
            "finding_columns": "finding_* = as recorded (may be under-recorded); "
                               "true_* = ground truth"}


def _write_into(folder: Path, cfg: SyntheticConfig, progress: bool,
                workers: int | None = None) -> pd.DataFrame:
    table = build_table(cfg)
    _render_all(folder, table, cfg, progress, workers)
    df = manifest_columns(table, cfg)
    write_manifest(df, folder, card=card_dict(cfg))
    write_data_card(folder, cfg, df)
    return df


def _temp_beside(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def generate_cohort(dest: str | Path, config: SyntheticConfig | None = None,
                    progress: bool = True, overwrite: bool = False,
                    workers: int | None = None) -> pd.DataFrame:
    """Write a cohort (images/, masks/, manifest.csv, manifest.json, DATA_CARD.md) to ``dest``.

    The cohort is built in a temporary folder beside ``dest`` and renamed into place at the
    end, so an interruption never leaves half a cohort. ``dest`` must not exist (or be
    empty) unless ``overwrite=True``. ``workers``: processes that draw the images (None:
    every core; see :func:`render_workers`); the images are the same whatever the number.
    Returns the manifest as written.
    """
    cfg = config or SyntheticConfig()
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise FileExistsError(f"{dest} already exists and is not empty; "
                              "choose another --dest or pass overwrite=True")
    tmp = _temp_beside(dest)
    try:
        df = _write_into(tmp, cfg, progress, workers)
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
            root: str | Path | None = None, progress: bool = True, workers: int | None = None,
            **overrides: Any) -> Path:
    """Return the folder of the cohort for ``config`` (or the knobs in ``overrides``), making it once.

    Sizes are knobs like any other (``n_patients``, ``image_size``): the caller passes them, and
    ``label`` only names the folder ``<root or data_root()>/synthetic/<label>-v<version>-<hash>``
    (cxrlab passes its preset's name and sizes). If it is
    already complete it is reused; otherwise it is generated into a temporary folder and
    renamed. When two processes race, the loser discards its copy and uses the winner's.
    ``workers``: processes that draw the images (None: every core; the same images whatever
    the number; see :func:`render_workers`).

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
        _write_into(tmp, config, progress, workers)
        _move_into_place(tmp, dest, replace=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
