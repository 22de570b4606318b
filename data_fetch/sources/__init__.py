"""The registry of real data sources: name -> access requirements and CLI hooks.

Every source module defines ``NAME``, ``TITLE``, ``ACCESS``, ``add_parser(subparsers)``,
``run(args) -> int`` and a Python function ``fetch_<name>(...)`` that returns the path of the
manifest it wrote. ``run`` is one call to :func:`data_fetch.sources.cli.run_fetch`, which maps
the shared options; the shared pieces live in ``cli``, ``images``, ``labels``, ``dataset`` and
``archives`` (``_common`` re-exports them). Modules are imported only when used, so ``--help``
stays fast.

>>> [s.name for s in SOURCES.values()]
['nih', 'covid19_ar', 'chexpert', 'mimic']
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

    def load(self) -> ModuleType:
        """Import the source's module."""
        return importlib.import_module(self.module)


SOURCES: dict[str, SourceInfo] = {
    s.name: s for s in (
        SourceInfo("nih", "NIH ChestX-ray14", "open, no login; about 2 GB per archive",
                   "data_fetch.sources.nih"),
        SourceInfo("covid19_ar", "TCIA COVID-19-AR",
                   "open (CC BY 4.0) via Imaging Data Commons; about 262 radiographs",
                   "data_fetch.sources.covid19_ar"),
        SourceInfo("chexpert", "CheXpert (Stanford AIMI)",
                   "free registration + research use agreement; a local copy or signed URL",
                   "data_fetch.sources.chexpert"),
        SourceInfo("mimic", "MIMIC-CXR-JPG 2.1.0 + MIMIC-IV",
                   "PhysioNet credentialed account + signed data use agreements",
                   "data_fetch.sources.mimic"),
    )
}


def get_source(name: str) -> ModuleType:
    """The module of source ``name``; raises ``KeyError`` listing the known sources."""
    try:
        return SOURCES[name].load()
    except KeyError:
        raise KeyError(f"unknown source {name!r}; known: {', '.join(SOURCES)}") from None
