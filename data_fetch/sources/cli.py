"""The command line every real source shares: checked options, the destination, one ``run`` shim.

Numeric options are checked by argparse itself (``type=``), so a negative ``--limit`` or
``--size`` stops with one line before anything is downloaded.
"""
from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data_fetch.ingest import default_workers
from data_fetch.paths import dataset_dir
from data_fetch.sources.dataset import (DEFAULT_NAME, DEFAULT_SIZE, check_count, check_fraction,
                                        check_seed, check_size, check_workers)

log = logging.getLogger("data_fetch")


def checked_type(check: Callable[[Any], Any],
                 parse: Callable[[str], Any] = int) -> Callable[[str], Any]:
    """An argparse ``type`` that parses a string and runs one of the ``check_*`` functions."""
    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        try:
            return check(value)
        except ValueError as err:  # "--size must be ..." -> "must be ..." after argparse's name
            message = str(err)
            raise argparse.ArgumentTypeError(message.split(" ", 1)[1] if message.startswith("-")
                                             else message) from None
    convert.__name__ = parse.__name__  # argparse names the type in its messages
    return convert


size_arg = checked_type(check_size)
count_arg = checked_type(check_count)
seed_arg = checked_type(check_seed)
fraction_arg = checked_type(lambda v: check_fraction(v, "it"), float)
workers_arg = checked_type(check_workers)


def add_common_args(parser: argparse.ArgumentParser, mirror_help: str) -> None:
    """Options every source has: where to write, how big, how many, which host, dry run."""
    parser.add_argument("--dest", type=Path, default=None,
                        help="output folder (default: $CXRLAB_DATA/<source>/<name>)")
    parser.add_argument("--name", default=DEFAULT_NAME,
                        help="dataset name under the data folder (default: %(default)s)")
    parser.add_argument("--size", type=size_arg, default=DEFAULT_SIZE,
                        help="stored image size in pixels, square; 0 keeps the original "
                             "(default: %(default)s)")
    parser.add_argument("--limit", "--max-images", dest="limit", type=count_arg, default=None,
                        help="prepare at most N images (N >= 1)")
    parser.add_argument("--mirror", default=None, help=mirror_help)
    parser.add_argument("--seed", type=seed_arg, default=0, help="seed of the patient-level split")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be downloaded and the disk it needs, then stop")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_workers_arg(parser: argparse.ArgumentParser) -> None:
    """``--workers N``: processes that decode and resize the images (default: every core).

    Passed to the fetch function as ``workers=``; checked (N >= 1) before any network.
    """
    parser.add_argument(
        "--workers", type=workers_arg, default=None, metavar="N",
        help="processes that decode and resize images, N >= 1; images are still stored in "
             "the order read and each PNG is written whole (default: this machine's "
             f"{default_workers()} cores; 1 decodes in this process)")


def add_http_loopback_arg(parser: argparse.ArgumentParser) -> None:
    """``--allow-http-loopback``: let secrets go over plain HTTP to this machine (tests only)."""
    parser.add_argument("--allow-http-loopback", action="store_true",
                        help="allow credentials or signed URLs over plain http:// to 127.0.0.1 or "
                             "localhost (a test server); never needed for the real hosts")


def resolve_dest(source: str, dest: str | Path | None, name: str = DEFAULT_NAME) -> Path:
    """``dest`` if given, else ``dataset_dir(source, name)``."""
    return Path(dest).expanduser() if dest else dataset_dir(source, name)


def env_default(name: str) -> str | None:
    """The value of an environment variable, or None when unset or empty."""
    return os.environ.get(name) or None


def say(message: str) -> None:
    """A progress message for the user (goes through logging and stdout)."""
    log.info(message)
    print(message, flush=True)


def run_fetch(fetch: Callable[..., Path | None], title: str, args: argparse.Namespace,
              **options: Any) -> int:
    """Call ``fetch(dest, size=, seed=, name=, dry_run=, progress=, **options)`` from ``args``.

    The ``run(args)`` of every source: the common options come from :func:`add_common_args`,
    the source's own ones in ``options``. Prints where the dataset is when one was written.
    """
    out = fetch(args.dest, size=args.size, seed=args.seed, name=args.name, dry_run=args.dry_run,
                progress=not args.no_progress, **options)
    if out is not None:
        say(f"{title} ready: {out}")
    return 0
