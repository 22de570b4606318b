"""Pre-build what the first chapters need: ``python -m cxrlab.prebuild --preset demo``.

Binder's ``postBuild`` and instructors preparing a machine run this once. It prepares the
synthetic cohort for the preset, builds its image cache and trains (or loads) the models the
chapters ask for, so a learner's first run does not wait.
"""
from __future__ import annotations

import argparse
import time

#: Models the chapters request from the store, in the order they are first needed.
PREBUILT_TARGETS = ("race", "no_finding", "findings")


def prebuild(preset: str = "demo", seed: int = 0, targets: tuple[str, ...] = PREBUILT_TARGETS) -> dict[str, float]:
    """Prepare the synthetic cohort and train/load each model in ``targets``; return seconds per step."""
    from cxrlab.session import setup
    from cxrlab.store import get_model

    timings: dict[str, float] = {}
    start = time.perf_counter()
    session = setup("synthetic", preset, seed)
    timings["data"] = time.perf_counter() - start
    for target in targets:
        start = time.perf_counter()
        get_model(session, target=target)
        timings[target] = time.perf_counter() - start
    return timings


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo", help="demo, workshop or full (default demo)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for step, seconds in prebuild(args.preset, args.seed).items():
        print(f"{step:<12} ready in {seconds:6.1f} s")


if __name__ == "__main__":
    main()
