"""The registry of real data sources: name -> access requirements and CLI hooks.

Every source module defines ``NAME``, ``TITLE``, ``ACCESS``, ``add_parser(subparsers)``,
``run(args) -> int`` and a Python function ``fetch_<name>(...)`` that returns the path of the
manifest it wrote. ``run`` is one call to :func:`data_fetch.sources.cli.run_fetch`, which maps
the shared options; the shared pieces live in ``cli``, ``images``, ``labels``, ``dataset`` and
``archives`` (``_common`` re-exports them). Modules are imported only when used, so ``--help``
stays fast.

This registry is the one place that says which sources exist, how they are reached and which
hold restricted data; cxrlab derives its lists from it.

>>> [s.name for s in SOURCES.values()]
['nih', 'covid19_ar', 'chexpert', 'mimic']
>>> sorted(RESTRICTED_SOURCES), TRACKS[0]
(['chexpert', 'mimic'], 'synthetic')
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class SourceInfo:
    """One real data source and what a user needs to fetch it."""

    name: str
    title: str
    access: str
    module: str
    fetch_hint: str
    restricted: bool = False

    def load(self) -> ModuleType:
        """Import the source's module."""
        return importlib.import_module(self.module)


SOURCES: dict[str, SourceInfo] = {
    s.name: s for s in (
        SourceInfo("nih", "NIH ChestX-ray14", "open, no login; about 2 GB per archive",
                   "data_fetch.sources.nih",
                   "python -m data_fetch nih --max-images 2000      (open; first archive, 2 GB)"),
        SourceInfo("covid19_ar", "TCIA COVID-19-AR",
                   "open (CC BY 4.0) via Imaging Data Commons; about 262 radiographs",
                   "data_fetch.sources.covid19_ar",
                   "python -m data_fetch covid19_ar             (open, CC BY 4.0, 3.0 GB; "
                   'needs pip install -e ".[real]")'),
        SourceInfo("chexpert", "CheXpert (Stanford AIMI)",
                   "free registration + research use agreement; a local copy or signed URL",
                   "data_fetch.sources.chexpert",
                   "python -m data_fetch chexpert --source-dir /path/to/CheXpert   "
                   "(or $CHEXPERT_URL with your signed URL; research use agreement)",
                   restricted=True),
        SourceInfo("mimic", "MIMIC-CXR-JPG 2.1.0 + MIMIC-IV",
                   "PhysioNet credentialed account + signed data use agreements",
                   "data_fetch.sources.mimic",
                   "python -m data_fetch mimic --source-dir /path/to/mimic-cxr-jpg   "
                   "(or --count 2000 with PhysioNet credentials)",
                   restricted=True),
    )
}

#: the real sources, in the order the course presents them.
REAL_SOURCES: tuple[str, ...] = tuple(SOURCES)
#: sources whose images and rows must never appear in shareable outputs.
RESTRICTED_SOURCES: frozenset[str] = frozenset(n for n, s in SOURCES.items() if s.restricted)
#: every data track a chapter can run on: the offline synthetic cohort, then the real sources.
TRACKS: tuple[str, ...] = ("synthetic", *REAL_SOURCES)


def fetch_hint(name: str) -> str:
    """The command that prepares a dataset of source ``name``."""
    info = SOURCES.get(name)
    return info.fetch_hint if info else f"python -m data_fetch {name}"


def get_source(name: str) -> ModuleType:
    """The module of source ``name``; raises ``KeyError`` listing the known sources."""
    try:
        return SOURCES[name].load()
    except KeyError:
        raise KeyError(f"unknown source {name!r}; known: {', '.join(SOURCES)}") from None
