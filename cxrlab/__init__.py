"""cxrlab: the course's toolkit for everything after the manifest.

Start every notebook with::

    import cxrlab
    S = cxrlab.setup(SOURCE, PRESET, SEED)

See docs/ARCHITECTURE.md for the modules and their roles.
"""
from __future__ import annotations

__version__ = "0.1.0"


def setup(*args, **kwargs):  # noqa: D401 - thin re-export, imported lazily to keep import light
    """Prepare a course session: see :func:`cxrlab.session.setup`."""
    from cxrlab.session import setup as _setup

    return _setup(*args, **kwargs)


__all__ = ["setup", "__version__"]
