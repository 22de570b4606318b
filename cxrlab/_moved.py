"""Old module names that moved when cxrlab was arranged in three wings (issue 20).

``import cxrlab.metrics`` and ``python -m cxrlab.course`` keep working: a finder maps each old
name to the module's new home and both names then refer to the *same* module object (so
monkeypatching one patches the other). New code imports the new names. The old names are
deprecated and will go once no chapter or learner notebook uses them.

>>> import cxrlab.metrics, cxrlab.core.metrics
>>> cxrlab.metrics is cxrlab.core.metrics
True
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import CodeType, ModuleType

#: old dotted name -> new dotted name.
MOVED: dict[str, str] = {
    **{f"cxrlab.{m}": f"cxrlab.core.{m}" for m in (
        "session", "presets", "cache", "datasets", "models", "train", "store", "metrics",
        "plots", "results", "anchors")},
    **{f"cxrlab.{m}": f"cxrlab.toolbox.{m}" for m in (
        "probes", "degrade", "saliency", "fairness", "checks")},
    "cxrlab.widgets": "cxrlab.toolbox.widgets.degradation",
    "cxrlab.widgets_ch3": "cxrlab.toolbox.widgets.test_mix",
    "cxrlab.widgets_ch5": "cxrlab.toolbox.widgets.threshold",
    **{f"cxrlab.{m}": f"cxrlab.coursetools.{m}" for m in (
        "authoring", "grading", "prebuild", "envcheck")},
    "cxrlab.course": "cxrlab.coursetools.runner",
}

#: short command names that stay: ``python -m cxrlab.replicate`` (the replication) and
#: ``python -m cxrlab.published fetch race`` (the authors' model weights).
COMMANDS: dict[str, str] = {"cxrlab.replicate": "cxrlab.core.replicate",
                            "cxrlab.published": "cxrlab.core.published"}

ALIASES: dict[str, str] = {**MOVED, **COMMANDS}


class _AliasLoader(importlib.abc.Loader):
    """Loads an old name by importing the new one; ``get_code`` serves ``python -m old``."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self._real_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._real_spec      # importlib set the alias spec; put the real one back

    def get_code(self, fullname: str) -> CodeType | None:
        spec = importlib.util.find_spec(self.target)
        return spec.loader.get_code(self.target)  # type: ignore[union-attr]


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the names listed in :data:`ALIASES` (deprecated old names and short commands)."""

    def find_spec(self, fullname: str, path=None, target=None):  # noqa: ANN001 - importlib API
        new = ALIASES.get(fullname)
        if new is None:
            return None
        real = importlib.util.find_spec(new)
        # the real file as origin, so ``python -m old`` runs it with the right ``__file__``
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new),
                                              origin=real.origin if real else None)


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
