"""``python -m data_fetch``: fetch, verify and prepare chest X-ray datasets.

Every source writes PNG images plus ``manifest.csv`` / ``manifest.json`` into
``$CXRLAB_DATA/<source>/<name>/`` (or ``--dest``). ``python -m data_fetch list`` shows what is
prepared; ``python -m data_fetch SOURCE --help`` the options of one source.
"""
from __future__ import annotations

import argparse
import errno
import logging
import sys
import tarfile
import traceback
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import requests

from data_fetch.credentials import CredentialsError
from data_fetch.download import DownloadError
from data_fetch.manifest import CARD_FILE, MANIFEST_FILE, ManifestError, read_card
from data_fetch.paths import data_root
from data_fetch.redaction import install_log_filters, redact
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


#: Error types that end a run with one line (their messages are written for users).
USER_ERRORS = (DownloadError, CredentialsError, ManifestError, ValueError, RuntimeError)
INTERRUPTED = ("interrupted: finished images are kept; run the same command again to continue "
               "(see the note above, if any, for what a re-run reads again)")


def _os_error_hint(err: OSError) -> str:
    """What to do about a file-system error."""
    if isinstance(err, NotADirectoryError) or err.errno == errno.ENOTDIR:
        return "a path that must be a folder is a file: check --dest and $CXRLAB_DATA"
    if isinstance(err, FileNotFoundError):
        return "check the path"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full: free some space or choose another --dest, then run again"
    if isinstance(err, PermissionError) or err.errno == errno.EROFS:
        return "that folder cannot be written: choose a writable --dest or set $CXRLAB_DATA"
    return "check the disk and the paths given, then run again"


def describe_error(err: BaseException) -> str | None:
    """The ``error: ...`` line (with what to do) for a failure, or None when unexpected."""
    if isinstance(err, (tarfile.TarError, zlib.error, EOFError)):
        return (f"{type(err).__name__}: {err}. The archive is damaged or incomplete: run again "
                "to download it afresh (delete a kept archive under <dest>/archives first)")
    if isinstance(err, zipfile.BadZipFile):
        return f"{err}. The zip is damaged or incomplete: download it again"
    if isinstance(err, requests.exceptions.RequestException):
        return (f"{type(err).__name__}: {err}. Check the address (scheme, host, port) and "
                "your network")
    if isinstance(err, USER_ERRORS):
        return str(err)
    if isinstance(err, OSError):
        where = f" ({err.filename})" if err.filename else ""
        return f"{err.strerror or err}{where}: {_os_error_hint(err)}"
    return None


def _run(runner, args: argparse.Namespace) -> int:
    """Call a subcommand; every failure becomes one redacted ``error:`` line and status 2."""
    try:
        return int(runner(args) or 0)
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the one place that turns failures into a line
        line = describe_error(err)
        if line is None:
            line = (f"unexpected {type(err).__name__}: {err}. Nothing was committed; run with -v "
                    "for details and report it if it persists")
        if args.verbose:
            print(redact("".join(traceback.format_exception(err))), file=sys.stderr)
        print(f"error: {redact(line)}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m data_fetch`` and ``cxr-fetch``; returns an exit status."""
    parser, runners = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    install_log_filters(*logging.getLogger().handlers)
    if not args.command:
        parser.print_help()
        return 0
    return _run(runners[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
