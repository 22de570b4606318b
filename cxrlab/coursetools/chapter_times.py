"""Chapter times: each notebook's ``**Time.**`` sentence is the one place they are written.

A chapter's first markdown cell says how long it takes, in one fixed form::

    **Time.** Teaching 35 min, exercises 25 min.
    **Time.** Teaching 40 min, exercises 30 min, discussion 15 min.

:func:`chapter_times` reads it; the README's chapter table shows :func:`format_times` of it
and ``tests/test_readme.py`` fails when the two disagree. A new chapter only writes its own
sentence and its README row.

>>> parse_time_sentence("**Time.** Teaching 40 min, exercises 30 min, discussion 15 min.")
{'teaching': 40, 'exercises': 30, 'discussion': 15}
>>> format_times({'teaching': 40, 'exercises': 30, 'discussion': 15})
'40 + 30 + 15 min'
"""
from __future__ import annotations

import json
import re
from pathlib import Path

_SENTENCE = re.compile(r"\*\*Time\.\*\*(?P<body>[^.]*?)(?:\.\s|\.$|\(|$)", re.S)
_PART = re.compile(r"(?P<what>[A-Za-z][A-Za-z ]*?)\s+(?P<minutes>\d+)\s*min\b")


class TimeSentenceMissing(ValueError):
    """A chapter has no ``**Time.** <part> N min, ...`` sentence."""


def parse_time_sentence(markdown: str) -> dict[str, int]:
    """``{part: minutes}`` from the first ``**Time.**`` sentence in ``markdown``, in order."""
    match = _SENTENCE.search(markdown)
    parts = _PART.findall(match["body"]) if match else []
    if not parts:
        raise TimeSentenceMissing("no '**Time.** Teaching N min, exercises M min.' sentence")
    return {what.strip().lower(): int(minutes) for what, minutes in parts}


def chapter_times(notebook: str | Path) -> dict[str, int]:
    """The times a chapter notebook states in its first markdown cell that has a
    ``**Time.**`` sentence (its introduction)."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and "**Time.**" in source:
            return parse_time_sentence(source)
    raise TimeSentenceMissing(f"{Path(notebook).name} has no '**Time.** ...' sentence")


def format_times(times: dict[str, int]) -> str:
    """How the README shows a chapter's times: the parts in the chapter's order."""
    return " + ".join(str(m) for m in times.values()) + " min"
