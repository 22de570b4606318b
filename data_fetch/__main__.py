"""``python -m data_fetch``: fetch, verify and prepare chest X-ray datasets.

Every source writes PNG images plus ``manifest.csv`` / ``manifest.json`` into
``$CXRLAB_DATA/<source>/<name>/`` (or ``--dest``). ``python -m data_fetch list`` shows what is
prepared; ``python -m data_fetch SOURCE --help`` the options of one source.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from data_fetch import download as dl
from data_fetch.credentials import CredentialsError
from data_fetch.manifest import CARD_FILE, MANIFEST_FILE, ManifestError, read_card
from data_fetch.paths import data_root
from data_fetch.sources import SOURCES

SYNTHETIC_ACCESS = "offline, generated on this machine (no download)"


def _epilog() -> str:
    rows = [f"  {'synthetic':<11} {SYNTHETIC_ACCESS}"]
    rows += [f"  {s.name:<11} {s.title}: {s.access}" for s in SOURCES.values()]
    return ("sources and what access each needs:\n" + "\n".join(rows) +
            "\n\ndata folder: $CXRLAB_DATA (default ~/.cache/cxrlab)")


def _add_synthetic(subparsers: argparse._SubParsersAction) -> dict:
    """Register the synthetic source when its module is there (it lives in data_fetch.synthetic)."""
    try:
        from data_fetch.synthetic import cli as synthetic_cli
    except ImportError:
        return {}
    synthetic_cli.add_parser(subparsers)
    return {"synthetic": synthetic_cli.run}


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The CLI parser and a map from subcommand to its ``run(args)`` function."""
    parser = argparse.ArgumentParser(
        prog="python -m data_fetch", description=__doc__, epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", metavar="SOURCE")
    runners = _add_synthetic(sub)
    for info in SOURCES.values():
        module = info.load()
        module.add_parser(sub)
        runners[info.name] = module.run
    status = sub.add_parser("list", aliases=["status"], help="show prepared datasets")
    status.add_argument("--root", type=Path, default=None, help="data folder to inspect")
    runners["list"] = runners["status"] = run_list
    return parser, runners


def prepared_datasets(root: Path | None = None) -> list[dict]:
    """One dict per prepared dataset under ``root`` (default: ``data_root()``)."""
    root = Path(root) if root else data_root()
    found = []
    for manifest in sorted(root.glob(f"*/*/{MANIFEST_FILE}")):
        card = read_card(manifest.parent)
        found.append({"source": manifest.parent.parent.name, "name": manifest.parent.name,
                      "folder": str(manifest.parent), "images": card.get("n_images"),
                      "patients": card.get("n_patients"), "size": card.get("size"),
                      "card": (manifest.parent / CARD_FILE).exists()})
    return found


def run_list(args: argparse.Namespace) -> int:
    """Print the prepared datasets and the sources not prepared yet."""
    root = Path(args.root) if getattr(args, "root", None) else data_root()
    rows = prepared_datasets(root)
    print(f"data folder: {root}")
    for r in rows:
        print(f"  {r['source']:<11} {r['name']:<12} {r['images'] or '?':>7} images "
              f"{r['patients'] or '?':>6} patients  {r['folder']}")
    done = {r["source"] for r in rows}
    for name in ["synthetic", *SOURCES]:
        if name not in done:
            print(f"  {name:<11} not prepared: python -m data_fetch {name} --help")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m data_fetch`` and ``cxr-fetch``; returns an exit status."""
    parser, runners = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.command:
        parser.print_help()
        return 0
    try:
        return int(runners[args.command](args) or 0)
    except (dl.DownloadError, CredentialsError, ManifestError, FileNotFoundError,
            ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
