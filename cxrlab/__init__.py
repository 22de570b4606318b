"""cxrlab: the course's toolkit for everything after the manifest.

Start every notebook with::

    import cxrlab
    S = cxrlab.setup(SOURCE, PRESET, SEED)

Three wings (docs/ARCHITECTURE.md):

- :mod:`cxrlab.core`: the science every chapter stands on (session, presets, cache, datasets,
  models, train, store, metrics, plots, results, anchors);
- :mod:`cxrlab.toolbox`: one toolbox per chapter concern (probes, degrade, sweeps, saliency,
  fairness, checks, widgets);
- :mod:`cxrlab.coursetools`: running, authoring and grading the course (runner, authoring,
  grading, prebuild, envcheck).

Modules that used to live at the top (``cxrlab.core.metrics``, ``cxrlab.coursetools.runner``, ...) are still
importable under their old names (see :mod:`cxrlab._moved`).
"""
from __future__ import annotations

from cxrlab import _moved

_moved.install()

from cxrlab.core.session import Session, setup  # noqa: E402 - the finder must be in place first

__version__ = "0.1.0"

__all__ = ["Session", "setup", "__version__"]
