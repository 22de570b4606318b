"""The session: the parameters cell's companion.

``setup`` resolves the source (``$CXRLAB_SOURCE`` wins) and the preset (``$CXRLAB_PRESET``
wins), seeds everything, picks the device, prepares or finds the data, builds the image cache
and prints one line saying what runs where. Precedence (docs/ARCHITECTURE.md): environment
variable > value passed to ``setup`` (a papermill-injected parameter or the notebook's default);
``python -m cxrlab.course`` sets both variables to the values it injects, so they agree.

>>> import cxrlab
>>> S = cxrlab.setup("synthetic", "demo", seed=0)     # doctest: +SKIP
synthetic | preset demo: 64 px, smallcnn, 6 epochs | 2000 images of 800 patients | device cpu
>>> S.targets("race")[:5], S.classes                   # doctest: +SKIP
(array([2, 0, 0, 1, 2]), ['A', 'B', 'C'])
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrlab.core.restricted import note_restricted_data
from cxrlab.core.presets import Preset, get_preset
from cxrlab.core.targets import TARGETS, Target, target_spec
from cxrlab.core.train import pick_device, seed_everything
from data_fetch.manifest import finding_columns, read_card, read_manifest
from data_fetch.paths import data_root
from data_fetch.sources import TRACKS as SOURCES
from data_fetch.sources import fetch_hint

SOURCE_ENV_VAR = "CXRLAB_SOURCE"


@dataclass
class Session:
    """Everything a chapter needs: data, images, targets, device and sizes.

    Attributes:
        manifest: validated manifest (with ``abspath``), rows aligned with ``images``.
        images: uint8 ``(N, H, W)`` memmap at ``preset.image_size``.
        classes: the self-reported race (or synthetic group) categories present, sorted.
        device: ``"cuda"`` or ``"cpu"``.
        preset, source, seed, data_dir, card: what was asked for and where the data lives.
        dataset: name of the prepared dataset (``data_dir.name``).
        results_key: ``source-dataset-preset-seedN``, the model store's prefix.
    """

    manifest: pd.DataFrame
    images: np.ndarray
    classes: list[str]
    device: str
    preset: Preset
    source: str
    seed: int
    data_dir: Path
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def dataset(self) -> str:
        """Name of the prepared dataset folder."""
        return self.data_dir.name

    @property
    def results_key(self) -> str:
        """Key that identifies this session's data, preset and seed (used by the model store)."""
        return f"{self.source}-{self.dataset}-{self.preset.name}-seed{self.seed}"

    @property
    def cache_dir(self) -> Path:
        """Folder of the image caches."""
        return self.data_dir / "cache"

    @property
    def model_dir(self) -> Path:
        """Folder of the model store."""
        return self.data_dir / "models"

    @property
    def finding_columns(self) -> list[str]:
        """The ``finding_*`` columns of the manifest."""
        return finding_columns(self.manifest)

    def split(self, name: str) -> pd.DataFrame:
        """The rows of split ``name`` (``train``, ``val`` or ``test``); index = manifest rows."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; use 'train', 'val' or 'test'")
        return self.manifest[self.manifest["split"] == name]

    def split_index(self, name: str) -> np.ndarray:
        """Row positions of split ``name`` (for ``S.images[...]``)."""
        return np.flatnonzero((self.manifest["split"] == name).to_numpy())

    def target(self, target: str = "race") -> Target:
        """The :class:`~cxrlab.core.targets.Target` called ``target`` in this dataset."""
        spec = target_spec(target, self.finding_columns)
        if target.startswith("finding_") and target not in self.finding_columns:
            raise ValueError(_unknown_target(target, self.finding_columns))
        return spec

    def class_names(self, target: str = "race") -> list[str]:
        """Names of the classes of ``target`` (race, sex, no_finding, findings, finding_*)."""
        return self.target(target).class_names(self.classes, self.finding_columns)

    def targets(self, target: str = "race") -> np.ndarray:
        """Targets aligned with ``manifest`` rows.

        ``race``: int class indices into :attr:`classes`; ``sex`` (M = 1), ``no_finding`` and
        ``finding_*``: 0/1 ints; missing values are -1. ``age``: float years (NaN missing).
        ``findings``: float ``(N, K)`` over the finding columns (NaN missing).
        (:data:`cxrlab.core.targets.TARGETS` says the same for each target.)
        """
        return self.target(target).values(self.manifest, self.classes, self.finding_columns)

    @property
    def is_fixture(self) -> bool:
        """True for a course fixture (synthetic pixels in a real source's format): its numbers
        are not findings (:mod:`cxrlab.coursetools.track_fixtures`)."""
        return bool(self.card.get("fixture"))

    def missing(self, *needs: str) -> str | None:
        """Why this dataset cannot serve a section that needs ``needs`` (every reason, joined
        by "; "), or None if it can.

        Needs (:data:`NEEDS`): ``race`` (two or more self-reported race classes), ``sites``
        (two or more acquisition sites), ``bmi`` (recorded body-mass index).
        """
        unknown = [need for need in needs if need not in NEEDS]
        if unknown:
            raise ValueError(f"unknown need {unknown[0]!r}; choose from {', '.join(NEEDS)}")
        reasons = [reason for need in needs if (reason := NEEDS[need](self))]
        return "; ".join(reasons) if reasons else None

    def can_run(self, *needs: str, section: str = "This section") -> bool:
        """Whether this dataset has what a section ``needs``; if not, print one sentence saying
        why it is skipped here and return False (``if S.can_run("sites"): ...``)."""
        reason = self.missing(*needs)
        if reason is None:
            return True
        print(f"{section} is skipped on {self.source}: {reason}.")
        return False

    def describe(self) -> str:
        """The one-line "what runs where" note."""
        p = self.preset
        fixture = " | FIXTURE: synthetic pixels, numbers are not findings" if self.is_fixture else ""
        return (f"{self.source} ({self.dataset}) | preset {p.name}: {p.image_size} px, "
                f"{p.model}, up to {p.epochs} epochs | {len(self.manifest)} images of "
                f"{self.manifest['patient_id'].nunique()} patients | device {self.device}"
                f"{fixture}")

    def __repr__(self) -> str:
        return f"Session({self.describe()})"


def _title(session: Session) -> str:
    return str(session.card.get("title") or session.source)


def _lacks_race(session: Session) -> str | None:
    if len(session.classes) >= 2:
        return None
    return f"{_title(session)} records no self-reported race"


def _lacks_sites(session: Session) -> str | None:
    sites = session.manifest["site"].dropna().unique()
    if len(sites) >= 2:
        return None
    where = f" ({sites[0]})" if len(sites) else ""
    return f"all of {_title(session)} comes from one site{where}, so there is no site to tell apart"


def _lacks_bmi(session: Session) -> str | None:
    if pd.to_numeric(session.manifest["bmi"], errors="coerce").notna().any():
        return None
    return f"{_title(session)} records no body-mass index"


#: what a chapter section can need, and the check that says why a dataset lacks it
NEEDS = {"race": _lacks_race, "sites": _lacks_sites, "bmi": _lacks_bmi}


def _unknown_target(target: str, findings: list[str]) -> str:
    options = [*TARGETS, *findings]
    return f"unknown target {target!r}; choose one of {', '.join(options)}"


def resolve_source(source: str | None = None, synthetic_knobs: bool = False) -> str:
    """``$CXRLAB_SOURCE`` if set, else ``source`` (default ``synthetic``), as ``$CXRLAB_PRESET``
    does for the preset. A call with synthetic-cohort knobs keeps its own source: those
    experiments exist only on the synthetic cohort.

    >>> resolve_source("synthetic", synthetic_knobs=True)     # knobs: $CXRLAB_SOURCE ignored
    'synthetic'
    """
    env = os.environ.get(SOURCE_ENV_VAR)
    chosen = source if (synthetic_knobs or not env) else env
    chosen = chosen or "synthetic"
    if chosen not in SOURCES:
        where = f" (from ${SOURCE_ENV_VAR})" if chosen == env else ""
        raise ValueError(f"unknown source {chosen!r}{where}; choose one of {', '.join(SOURCES)}")
    return chosen


def _prepare_synthetic(preset: Preset, overrides: dict[str, Any], progress: bool) -> Path:
    try:
        from data_fetch import synthetic
    except ImportError as error:  # pragma: no cover - only while the package is incomplete
        raise RuntimeError("data_fetch.synthetic is not available in this installation; pass "
                           "data_dir= to a prepared dataset") from error
    sizes = {"n_patients": preset.n_patients, "image_size": preset.image_size}
    return Path(synthetic.prepare(label=preset.name, progress=progress, **{**sizes, **overrides}))


#: the course fixture every chapter runs on (cxrlab.coursetools.track_fixtures)
COURSE_FIXTURE = "course-fixture"


def _preference(folder: Path) -> tuple[bool, bool, float]:
    """Real data first, then the course fixture, then other fixtures; newest first within each."""
    fixture = bool(read_card(folder).get("fixture"))
    return (not fixture, folder.name == COURSE_FIXTURE, (folder / "manifest.csv").stat().st_mtime)


def find_prepared(source: str, dataset: str | None = None) -> Path:
    """The folder of a prepared dataset of ``source``: ``dataset`` if named, else the newest
    real one (a fixture only when there is none: the course fixture before chapter 7's).

    Raises ``FileNotFoundError`` with the ``python -m data_fetch`` command that prepares one.
    """
    root = data_root() / source
    candidates = sorted((p.parent for p in root.glob("*/manifest.csv")),
                        key=_preference, reverse=True)
    if dataset is not None:
        chosen = [p for p in candidates if p.name == dataset]
        if chosen:
            return chosen[0]
    elif candidates:
        return candidates[0]
    named = f" named {dataset!r}" if dataset else ""
    found = f" (found: {', '.join(p.name for p in candidates)})" if candidates else ""
    hint = fetch_hint(source)
    raise FileNotFoundError(
        f"no prepared {source} dataset{named} under {root}{found}.\n"
        f"Prepare it first, for example:\n    {hint}\n"
        f"(see python -m data_fetch --help; set CXRLAB_DATA to use another data folder)")


def _patient_rank(patient_id: str) -> str:
    return hashlib.sha1(str(patient_id).encode()).hexdigest()


def cap_patients(manifest: pd.DataFrame, max_images: int) -> pd.DataFrame:
    """Keep whole patients, in a fixed hash order of their ids, up to ``max_images`` images.

    Deterministic (independent of the seed, row order and machine), so every chapter and every
    kernel of one preset sees the same subset and shares one image cache.
    """
    if len(manifest) <= max_images:
        return manifest.reset_index(drop=True)
    counts = manifest.groupby("patient_id", sort=False).size()
    order = sorted(counts.index, key=_patient_rank)
    cumulative = counts.loc[order].cumsum()
    keep = set(cumulative.index[cumulative <= max_images])
    if not keep:                                 # one huge patient: keep at least that one
        keep = {order[0]}
    kept = manifest[manifest["patient_id"].isin(keep)]
    return kept.reset_index(drop=True)


def _race_classes(manifest: pd.DataFrame) -> list[str]:
    return sorted(str(v) for v in manifest["race"].dropna().unique())


#: sources loaded in this process other than the synthetic cohort (see :func:`claims_advisory`)
_LOADED: dict[str, bool] = {}


def claims_advisory() -> str | None:
    """Why the text's claims only warn in this kernel, or None when they are strict.

    The chapters' "What to see" sentences were written for the synthetic cohort's defaults.
    Once a kernel has loaded a fixture (synthetic pixels: its numbers are not findings) or a
    real source (other data, other numbers), a claim the numbers do not bear out is printed as
    a warning (:func:`cxrlab.toolbox.checks.claim`) instead of stopping the notebook.
    """
    if any(_LOADED.values()):
        return "a course fixture was loaded, and its numbers are not findings"
    if _LOADED:
        return f"real data ({', '.join(sorted(_LOADED))}) was loaded, not the cohort the text describes"
    return None


def setup(
    source: str = "synthetic",
    preset: str = "demo",
    seed: int = 0,
    device: str | None = None,
    *,
    data_dir: str | Path | None = None,
    dataset: str | None = None,
    progress: bool = True,
    needs: tuple[str, ...] | list[str] = (),
    fallback: str | None = None,
    **synthetic_overrides: Any,
) -> Session:
    """Start a course session.

    Args:
        source: ``synthetic`` (default, offline), ``nih``, ``covid19_ar``, ``chexpert``,
            ``mimic``; ``$CXRLAB_SOURCE`` overrides it (not for calls with synthetic knobs).
        preset: ``demo``, ``workshop`` or ``full``; ``$CXRLAB_PRESET`` overrides it.
        seed: seeds Python, NumPy and PyTorch.
        device: ``"cuda"``/``"cpu"``; default: CUDA when available.
        data_dir: use this prepared folder (holding ``manifest.csv``) instead of preparing one.
        dataset: for a real source, the name of a prepared dataset under
            ``data_root()/<source>/`` (default: the newest).
        needs: what the chapter cannot do without (:data:`NEEDS`: ``race``, ``sites``,
            ``bmi``); when the chosen data lacks one, one sentence says so and ``fallback``
            (e.g. ``"synthetic"``) is set up instead; without ``fallback`` the sentence is
            printed and the session returned as it is.
        **synthetic_overrides: knobs of the synthetic cohort (see its data card), passed to
            ``data_fetch.synthetic.prepare``.

    Real sources are capped at ``preset.max_images`` images (whole patients, deterministic).
    """
    chosen = get_preset(preset)
    source = resolve_source(source, synthetic_knobs=bool(synthetic_overrides))
    if synthetic_overrides and source != "synthetic":
        raise ValueError(f"options {sorted(synthetic_overrides)} apply to the synthetic source "
                         f"only, not {source!r}")
    session = _start(source, chosen, seed, device, data_dir, dataset, progress,
                     synthetic_overrides)
    reason = session.missing(*needs)
    if reason is None:
        return session
    if fallback is None or fallback == source:
        print(f"Some sections are skipped on {source}: {reason}.")
        return session
    print(f"This chapter needs what {source} lacks ({reason}): it runs on {fallback} instead.")
    return _start(resolve_source(fallback, synthetic_knobs=True), chosen, seed, device, None,
                  None, progress, {})


def _start(source: str, chosen: Preset, seed: int, device: str | None,
           data_dir: str | Path | None, dataset: str | None, progress: bool,
           synthetic_overrides: dict[str, Any]) -> Session:
    """Seed, prepare or find the data, build the image cache and print what runs where."""
    seed_everything(seed)
    if data_dir is not None:
        folder = Path(data_dir)
    elif source == "synthetic":
        folder = _prepare_synthetic(chosen, synthetic_overrides, progress)
    else:
        folder = find_prepared(source, dataset)
    manifest = read_manifest(folder)
    if source != "synthetic":
        manifest = cap_patients(manifest, chosen.max_images)
    from cxrlab.core.cache import load_image_cache

    images = load_image_cache(manifest, chosen.image_size, folder / "cache", progress=progress)
    card = read_card(folder)
    if card.get("restricted"):
        note_restricted_data(folder)
    session = Session(manifest=manifest, images=images, classes=_race_classes(manifest),
                      device=str(pick_device(device)), preset=chosen, source=source,
                      seed=int(seed), data_dir=folder, card=card)
    if source != "synthetic" or session.is_fixture:
        _LOADED[source] = _LOADED.get(source, False) or session.is_fixture
    print(session.describe())
    return session
