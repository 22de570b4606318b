"""Headline numbers each chapter produces, collected into ``build/results.json``.

A notebook calls :func:`record` for each number that matters ("chapter 2: AUC for group A with
its 95% CI"). Records go to the JSON file named by ``$CXRLAB_RESULTS`` (set by ``make course``);
when it is unset they are only kept in memory, so learners' own runs write nothing.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

ENV_VAR = "CXRLAB_RESULTS"
_MEMORY: dict[str, dict[str, Any]] = {}


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def record(chapter: str, key: str, value: Any) -> None:
    """Record one headline number (or small dict/list) for ``chapter`` under ``key``.

    >>> record("ch2", "macro_auc", 0.93); recorded()["ch2"]["macro_auc"]
    0.93
    """
    value = _jsonable(value)
    _MEMORY.setdefault(chapter, {})[key] = value
    target = os.environ.get(ENV_VAR)
    if target:
        merge_into_json(Path(target), chapter, key, value)


def merge_into_json(path: Path, section: str, key: str, value: Any) -> None:
    """Merge ``{section: {key: value}}`` into the JSON file at ``path`` (atomic write)."""
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault(section, {})[key] = _jsonable(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def recorded() -> dict[str, dict[str, Any]]:
    """What this process has recorded so far."""
    return {k: dict(v) for k, v in _MEMORY.items()}
