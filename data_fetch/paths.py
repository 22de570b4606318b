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


def atomic_write_bytes(path: str | Path, data: bytes, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` through a temporary name and a rename.

    A crash, a full disk or a read-only folder leaves either the old file or none, never half
    a file under the final name; the temporary file is removed on failure. ``fsync=False``
    skips the flush to the disk (for thousands of small images, where it costs the most).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))
