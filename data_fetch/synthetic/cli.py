"""The ``synthetic`` subcommand: ``python -m data_fetch synthetic --dest DIR [options]``.

The main CLI registers it with :func:`add_parser` and dispatches to :func:`run`; the same
command also runs as ``python -m data_fetch.synthetic``.

>>> import argparse
>>> parser = argparse.ArgumentParser(); sub = parser.add_subparsers(dest="command")
>>> _ = add_parser(sub)
>>> args = parser.parse_args(["synthetic", "--patients", "10", "--signal", "0"])
>>> config_from_args(args).group_signal
0.0
"""
from __future__ import annotations

import argparse
import sys
import ast
from pathlib import Path
from typing import Any

from data_fetch.synthetic.config import SyntheticConfig

# option -> knob; every other knob is reachable with --set KNOB=VALUE
OPTIONS = {
    "patients": "n_patients", "size": "image_size", "seed": "seed", "signal": "group_signal",
    "site_confounding": "site_confounding", "covariate_shift": "covariate_shift",
    "sites": "n_sites", "underrecord_group": "underrecord_group",
    "underrecord_rate": "underrecord_rate",
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``synthetic`` subcommand on an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "synthetic", help="generate the synthetic chest X-ray cohort (offline, known truth)",
        description="Generate synthetic chest radiographs with a manifest and a data card. "
                    "Without --dest the cohort goes to $CXRLAB_DATA/synthetic/<label>-<hash> "
                    "and is reused if already there.")
    p.add_argument("--dest", type=Path, help="output folder (must not exist or be empty)")
    p.add_argument("--label", default="custom", help="folder label when --dest is not given "
                   "(sizes come from --patients and --size; to build a course preset's cohort "
                   "run: python -m cxrlab.prebuild --preset NAME)")
    p.add_argument("--patients", type=int, help="number of patients")
    p.add_argument("--size", type=int, help="image size in pixels (>= 32)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--signal", type=float, help="group-signal strength (0 = off)")
    p.add_argument("--site-confounding", type=float, help="0 = site independent of group, 1 = full")
    p.add_argument("--covariate-shift", type=float, help="group shift of covariates (0 = none)")
    p.add_argument("--sites", type=int, help="number of sites")
    p.add_argument("--underrecord-group", choices=["A", "B", "C"], help="group whose findings "
                   "are under-recorded")
    p.add_argument("--underrecord-rate", type=float, help="probability a true finding of that "
                   "group goes unrecorded")
    p.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE",
                   help="any other knob, e.g. --set signal_band=0.1,0.5 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --dest")
    p.add_argument("--gallery", type=Path, help="also write a gallery PNG of example images")
    p.add_argument("--list-knobs", action="store_true", help="print every knob and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _parse_value(text: str) -> Any:
    if text.lower() == "none":
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return tuple(value) if isinstance(value, list) else value


def config_from_args(args: argparse.Namespace) -> SyntheticConfig:
    """Build the config from parsed options (named options win over ``--set``)."""
    overrides: dict[str, Any] = {}
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set expects KNOB=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = _parse_value(value.strip())
    for option, knob in OPTIONS.items():
        value = getattr(args, option, None)
        if value is not None:
            overrides[knob] = value
    return SyntheticConfig.from_dict(overrides)


def run(args: argparse.Namespace) -> int:
    """Execute the subcommand; returns a process exit code (0 success, 2 bad options)."""
    from data_fetch.synthetic.card import knobs_markdown
    from data_fetch.synthetic.cohort import generate_cohort, prepare

    if args.list_knobs:
        print(knobs_markdown())
        return 0
    try:
        cfg = config_from_args(args)
    except (ValueError, TypeError) as err:
        print(f"error: {err}")
        return 2
    progress = not args.quiet
    if args.dest is not None:
        try:
            df = generate_cohort(args.dest, cfg, progress=progress, overwrite=args.overwrite)
        except FileExistsError as err:
            print(f"error: {err}")
            return 2
        folder = args.dest
    else:
        folder = prepare(cfg, label=args.label, progress=progress)
        from data_fetch.manifest import read_manifest
        df = read_manifest(folder)
    print(f"{len(df)} images of {df['patient_id'].nunique()} patients in {folder}")
    if args.gallery is not None:
        from data_fetch.synthetic.gallery import save_gallery
        print(f"gallery: {save_gallery(args.gallery, cfg)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m data_fetch.synthetic``)."""
    parser = argparse.ArgumentParser(prog="python -m data_fetch.synthetic")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["synthetic", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)
