"""Which kernels loaded restricted data: the marker that keeps their outputs out of shared files.

MIMIC-CXR and CheXpert come with data-use agreements that forbid sharing images or rows. The
course runner (``make course``) and the grader (``make grade``) set ``CXRLAB_RESTRICTED_MARKER``
to a file path before they start a kernel; :func:`cxrlab.core.session.setup` calls
:func:`note_restricted_data` when the dataset it loads has ``"restricted": true`` in its data
card, whatever the notebook's ``SOURCE`` says. Afterwards the runner asks :func:`loaded` and
withholds the executed notebook, HTML and feedback outputs (numbers in ``results.json`` stay).
"""
from __future__ import annotations

import os
from pathlib import Path

MARKER_ENV = "CXRLAB_RESTRICTED_MARKER"


def note_restricted_data(dataset: str | Path) -> Path | None:
    """Record that this kernel loaded the restricted ``dataset`` (appends to the marker file).

    Returns the marker written, or None when nobody asked (``$CXRLAB_RESTRICTED_MARKER`` unset).

    >>> note_restricted_data("chexpert/x") is None or True
    True
    """
    target = os.environ.get(MARKER_ENV)
    if not target:
        return None
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(f"{dataset}\n")
    return path


def loaded(marker: str | Path) -> list[str]:
    """The restricted datasets a kernel noted in ``marker`` (empty: it loaded none)."""
    path = Path(marker)
    return sorted(set(path.read_text(encoding="utf-8").split())) if path.exists() else []
