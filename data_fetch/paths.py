"""Where data lives: ``$CXRLAB_DATA`` or a per-user cache folder outside the repository."""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "CXRLAB_DATA"


def data_root() -> Path:
    """Return the folder that holds every prepared dataset, creating it if needed.

    ``$CXRLAB_DATA`` wins; otherwise ``~/.cache/cxrlab`` (``$XDG_CACHE_HOME/cxrlab`` when set).
    Nothing fetched is ever written inside the repository.

    >>> import os; os.environ["CXRLAB_DATA"] = "/tmp/cxr"; str(data_root())
    '/tmp/cxr'
    """
    configured = os.environ.get(ENV_VAR)
    if configured:
        root = Path(configured).expanduser()
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        root = cache / "cxrlab"
    root.mkdir(parents=True, exist_ok=True)
    return root


def dataset_dir(source: str, name: str) -> Path:
    """Folder of one prepared dataset: ``<data_root>/<source>/<name>`` (not created)."""
    return data_root() / source / name
