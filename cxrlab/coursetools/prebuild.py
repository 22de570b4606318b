"""Pre-build what the chapters need: ``python -m cxrlab.prebuild --preset demo``.

Binder's ``postBuild`` and instructors preparing a machine run this once. For the synthetic
source it generates the cohorts the chapters use, builds their image caches and trains every
model the chapters ask the model store for at their default parameters (read from the
``parameters`` cells in ``chapters/``), plus chapter 6's debiased "No Finding" models (cached
by :func:`cxrlab.toolbox.debiasing.train_or_load_all`), so no chapter waits for training in
class. A second run
loads everything from the store and takes seconds.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHAPTERS = Path(__file__).resolve().parents[2] / "chapters"


@dataclass(frozen=True)
class PlannedModel:
    """One model a chapter asks for: the target, the cohort's knobs and a training degradation."""

    chapter: str
    target: str
    knobs: dict[str, Any] = field(default_factory=dict)
    degradation: tuple[str, float] | None = None

    def label(self) -> str:
        """A short name for progress lines, e.g. ``ch04 race high_pass-50``."""
        extra = [f"{k}={v}" for k, v in self.knobs.items()]
        if self.degradation:
            extra.append(f"{self.degradation[0]}-{self.degradation[1]:g}")
        return " ".join([self.chapter, self.target, *extra])


@dataclass(frozen=True)
class PlannedDebiasing:
    """Chapter 6's debiased models: every method x seed, trained on the cohort of ``knobs``."""

    chapter: str
    knobs: dict[str, Any]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    epochs: int
    factor: int

    def label(self) -> str:
        """A short name for progress lines, e.g. ``ch06 debiasing erm,reweight x seeds 0,1``."""
        return (f"{self.chapter} debiasing {','.join(self.methods)} x seeds "
                f"{','.join(map(str, self.seeds))}")


def chapter_parameters(stem: str, chapters: Path = CHAPTERS) -> dict[str, Any]:
    """The literal parameters of ``chapters/<stem>.ipynb`` (empty when the file is missing)."""
    import nbformat

    from cxrlab.course import notebook_parameters

    path = chapters / f"{stem}.ipynb"
    return notebook_parameters(nbformat.read(path, as_version=4)) if path.exists() else {}


def planned_models(chapters: Path = CHAPTERS) -> list[PlannedModel]:
    """The models chapters 2-6 request on the synthetic source, in the order they need them."""
    plan = [PlannedModel("ch02", "race"),
            PlannedModel("ch03", "no_finding"),
            PlannedModel("ch03", "race", {"group_signal": 0.0})]   # the site-shortcut cohort
    trained_on = chapter_parameters("ch04_degradations", chapters).get("TRAIN_ON_DEGRADED", {})
    plan += [PlannedModel("ch04", "race", degradation=(name, level))
             for name, levels in trained_on.items() for level in levels]
    ch05 = chapter_parameters("ch05_implications", chapters)
    if ch05:                                                  # the knobs chapter 5 passes to setup
        plan.append(PlannedModel("ch05", "no_finding", {
            "underrecord_group": ch05.get("UNDERRECORD_GROUP"),
            "underrecord_rate": ch05.get("UNDERRECORD_RATE"),
            "finding_visibility": ch05.get("FINDING_VISIBILITY")}))
    ch06 = chapter_parameters("ch06_beyond_recognition", chapters)
    if ch06:                                                  # chapter 6's "No Finding" cohort
        plan.append(PlannedModel("ch06", "no_finding", {
            "underrecord_group": ch06.get("UNDERRECORD_GROUP"),
            "underrecord_rate": ch06.get("UNDERRECORD_RATE"),
            "finding_visibility": ch06.get("FINDING_VISIBILITY")}))
    return plan


def planned_cohorts(chapters: Path = CHAPTERS) -> list[tuple[str, dict[str, Any]]]:
    """Cohorts a chapter prepares itself with ``data_fetch.synthetic.prepare`` (no model):
    chapter 6's second hospital, read from its ``OOD`` parameter."""
    ch06 = chapter_parameters("ch06_beyond_recognition", chapters)
    if "OOD" not in ch06:
        return []
    return [("ch06", {"finding_visibility": ch06.get("FINDING_VISIBILITY"), **ch06["OOD"]})]


def planned_debiasing(chapters: Path = CHAPTERS) -> list[PlannedDebiasing]:
    """Chapter 6's part-2 models, read from its ``METHODS``, ``TRAIN_SEEDS``, ``EPOCHS`` and
    ``SHRINK`` parameters, on the same cohort as its planned "No Finding" model."""
    ch06 = chapter_parameters("ch06_beyond_recognition", chapters)
    if "METHODS" not in ch06:
        return []
    knobs = {"underrecord_group": ch06.get("UNDERRECORD_GROUP"),
             "underrecord_rate": ch06.get("UNDERRECORD_RATE"),
             "finding_visibility": ch06.get("FINDING_VISIBILITY")}
    return [PlannedDebiasing("ch06", knobs, tuple(ch06["METHODS"]), tuple(ch06.get("TRAIN_SEEDS", [0])),
                             int(ch06.get("EPOCHS", 3)), int(ch06.get("SHRINK", 1)))]


def prebuild(preset: str = "demo", seed: int = 0, chapters: Path = CHAPTERS,
             progress: bool = True) -> dict[str, float]:
    """Prepare every cohort and model of :func:`planned_models`, :func:`planned_debiasing`
    and :func:`planned_cohorts`; return seconds per step."""
    from cxrlab.core.presets import get_preset
    from cxrlab.core.session import setup
    from cxrlab.core.store import get_model
    from cxrlab.toolbox.sweeps import degraded_model

    timings: dict[str, float] = {}
    sessions: dict[tuple, Any] = {}
    for job in planned_models(chapters):
        start = time.perf_counter()
        key = tuple(sorted(job.knobs.items()))
        if key not in sessions:
            sessions[key] = setup("synthetic", preset, seed, progress=progress, **job.knobs)
        session = sessions[key]
        if job.degradation is None:
            get_model(session, job.target, progress=progress)
        else:
            degraded_model(session, *job.degradation, target=job.target, progress=progress)
        timings[job.label()] = time.perf_counter() - start
    from cxrlab.toolbox.debiasing import train_or_load_all

    for job in planned_debiasing(chapters):
        start = time.perf_counter()
        key = tuple(sorted(job.knobs.items()))
        if key not in sessions:
            sessions[key] = setup("synthetic", preset, seed, progress=progress, **job.knobs)
        train_or_load_all(sessions[key], job.methods, job.seeds, epochs=job.epochs, factor=job.factor,
                          progress=progress)
        timings[job.label()] = time.perf_counter() - start
    from data_fetch import synthetic

    for chapter, knobs in planned_cohorts(chapters):
        start = time.perf_counter()
        sizes = get_preset(preset)                    # what setup() uses ($CXRLAB_PRESET wins)
        synthetic.prepare(label=sizes.name, image_size=sizes.image_size, progress=progress, **knobs)
        timings[f"{chapter} cohort " + " ".join(f"{k}={v}" for k, v in knobs.items())] = \
            time.perf_counter() - start
    return timings


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo", help="demo, workshop or full (default demo)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for step, seconds in prebuild(args.preset, args.seed).items():
        print(f"{step:<40} ready in {seconds:6.1f} s")


if __name__ == "__main__":
    main()
