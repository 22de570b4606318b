"""The grader's records: results that persist between runs, hand marks, and the files it writes.

:mod:`cxrlab.coursetools.grading` produces one :class:`NotebookResult` per submitted notebook; this module
keeps them in ``<out>/.grading-state.json`` (so a later run re-grades only what changed), reads
the points an instructor wrote into ``manual_grading.md``, and writes ``gradebook.csv``,
``details.csv``, ``summary.md``/``summary.csv``, ``canvas.csv`` and the manual-grading sheet.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

NEEDS_MANUAL = "needs manual grading"
NOT_SUBMITTED = "not submitted"
STATE_FILE = ".grading-state.json"
SHEET_FILE = "manual_grading.md"
_SECTION = re.compile(r"^## (?P<learner>.+?) — (?P<chapter>\S+) — `(?P<grade_id>[^`]+)`", re.M)
_AWARDED = re.compile(r"^\*\*Points awarded:\*\*\s*(?P<points>\S*)", re.M)
_ANSWER_SHA = re.compile(r"<!-- answer (?P<sha>[0-9a-f]{12}) -->")


@dataclass(frozen=True)
class GradedCell:
    """One graded cell of the course, as written in the solution notebook."""

    chapter: str
    grade_id: str
    kind: str            # "auto" or "manual"
    max_score: float
    rubric: str = ""
    prompt: str = ""


@dataclass
class NotebookResult:
    """The outcome of grading one learner's notebook for one chapter."""

    learner: str
    chapter: str
    status: str                      # ok | timeout | error
    message: str = ""
    seconds: float = 0.0
    scores: dict[str, float | str] = field(default_factory=dict)
    answers: dict[str, str] = field(default_factory=dict)   # reflection answers needing a human
    notes: list[str] = field(default_factory=list)          # tampering, feedback problems, ...
    input_hash: str = ""
    restricted: bool = False


# ----------------------------------------------------------------------------- persistence
def load_state(out: Path) -> dict[tuple[str, str], NotebookResult]:
    """The results saved by earlier runs in ``out`` (empty when none or unreadable)."""
    path = Path(out) / STATE_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        return {(r["learner"], r["chapter"]): NotebookResult(**r) for r in saved["results"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def save_state(out: Path, results: dict[tuple[str, str], NotebookResult]) -> Path:
    """Save ``results`` atomically (a crash mid-run keeps what was graded so far).

    Hand marks are not saved here: ``manual_grading.md`` is their record, read on every run.
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / STATE_FILE
    saved = []
    for _, res in sorted(results.items()):
        record = asdict(res)
        record["scores"].update({grade_id: NEEDS_MANUAL for grade_id in res.answers})
        saved.append(record)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"version": 1, "results": saved}, indent=1), encoding="utf-8")
    os.replace(tmp, path)
    return path


def notes_by_learner(warnings: list[str]) -> dict[str, list[str]]:
    """Group ``"learner: problem"`` warnings (misnamed, extra or duplicate notebooks) by learner."""
    notes: dict[str, list[str]] = {}
    for warning in warnings:
        learner, _, text = warning.partition(": ")
        notes.setdefault(learner, []).append(text)
    return notes


def answer_sha(answer: str) -> str:
    """A short fingerprint of a reflection answer (a hand mark applies to that text only)."""
    return hashlib.sha256(answer.strip().encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------- hand marks
def read_manual_marks(sheet: Path, cells: list[GradedCell]) -> tuple[dict[tuple[str, str], tuple[float, str]], list[str]]:
    """Points written in ``manual_grading.md``: ``{(learner, grade_id): (points, answer_sha)}``.

    Also returns problems (a mark above the maximum, a mark that is not a number).
    """
    if not sheet.exists():
        return {}, []
    text = sheet.read_text(encoding="utf-8")
    maxima = {c.grade_id: c.max_score for c in cells}
    marks, problems = {}, []
    sections = list(_SECTION.finditer(text))
    for i, match in enumerate(sections):
        body = text[match.end(): sections[i + 1].start() if i + 1 < len(sections) else len(text)]
        awarded, sha = _AWARDED.search(body), _ANSWER_SHA.search(body)
        raw = awarded["points"].strip() if awarded else ""
        if not raw or set(raw) == {"_"}:
            continue
        learner, grade_id = match["learner"], match["grade_id"]
        try:
            points = float(raw)
        except ValueError:
            problems.append(f"{learner}: {grade_id}: hand mark {raw!r} is not a number (ignored)")
            continue
        if not 0 <= points <= maxima.get(grade_id, float("inf")):
            problems.append(f"{learner}: {grade_id}: hand mark {points:g} is outside 0..{maxima.get(grade_id, 0):g} (ignored)")
            continue
        marks[(learner, grade_id)] = (points, sha["sha"] if sha else "")
    return marks, problems


def apply_manual_marks(results: dict[tuple[str, str], NotebookResult], marks) -> list[str]:
    """Replace ``needs manual grading`` by the hand mark where its answer is unchanged."""
    notes = []
    for (learner, _), res in results.items():
        for grade_id, answer in res.answers.items():
            mark = marks.get((learner, grade_id))
            if mark is None:
                continue
            points, sha = mark
            if sha and sha != answer_sha(answer):
                notes.append(f"{learner}: {grade_id} was re-submitted after it was marked: mark it again")
                continue
            res.scores[grade_id] = points
    return notes


def write_manual_sheet(out: Path, cells: list[GradedCell], results: dict[tuple[str, str], NotebookResult]) -> Path:
    """Write ``manual_grading.md``: each reflection answer with its rubric and its mark so far."""
    by_id = {c.grade_id: c for c in cells}
    lines = ["# Reflection answers to grade by hand", "",
             "Score each answer with its rubric: write the points after **Points awarded:** (replace the",
             "underscores) and run the grading command again; the marks are imported and the totals",
             "recomputed. A mark stays with the answer it was given to.", ""]
    pending = 0
    for (learner, chapter), res in sorted(results.items()):
        for grade_id, answer in res.answers.items():
            cell = by_id.get(grade_id)
            pending += 1
            mark = res.scores.get(grade_id)
            lines += [f"## {learner} — {chapter} — `{grade_id}` (max {cell.max_score:g} points)" if cell
                      else f"## {learner} — {chapter} — `{grade_id}`", "",
                      f"<!-- answer {answer_sha(answer)} -->", "",
                      "**Question.**", "", quote_markdown(cell.prompt if cell else ""), "",
                      "**Learner's answer.**", "", quote_markdown(answer.strip()), "",
                      "**Rubric.**", "", (cell.rubric if cell else "") or "_no rubric_", "",
                      f"**Points awarded:** {_fmt(mark) if isinstance(mark, float) else '____'}", ""]
    if not pending:
        lines.append("Nothing to grade by hand.")
    return _write_text(out / SHEET_FILE, "\n".join(lines) + "\n")


def quote_markdown(text: str) -> str:
    """Prefix every line of ``text`` with ``> `` (a Markdown block quote)."""
    return "\n".join("> " + line if line else ">" for line in text.splitlines()) or "> (no prompt)"


# ----------------------------------------------------------------------------- tables
def _fmt(value: float | str) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def cell_value(res: NotebookResult | None, cell: GradedCell) -> float | str:
    """What the gradebook shows for one cell of one learner."""
    if res is None:
        return NOT_SUBMITTED
    if cell.grade_id in res.scores:
        return res.scores[cell.grade_id]
    return res.status if res.status in ("timeout", "error") else 0.0


def chapter_maxima(cells: list[GradedCell]) -> dict[str, float]:
    """Points available per chapter."""
    maxima: dict[str, float] = {}
    for cell in cells:
        maxima[cell.chapter] = maxima.get(cell.chapter, 0.0) + cell.max_score
    return maxima


def _pct(points: float, maximum: float) -> str:
    return f"{100 * points / maximum:.1f}" if maximum else ""


def learner_totals(learner: str, cells: list[GradedCell], results) -> dict[str, float]:
    """Points scored per chapter, plus ``total`` and ``manual_pending``."""
    totals: dict[str, float] = {"total": 0.0, "manual_pending": 0.0}
    for cell in cells:
        value = cell_value(results.get((learner, cell.chapter)), cell)
        totals.setdefault(cell.chapter, 0.0)
        if isinstance(value, float):
            totals[cell.chapter] += value
            totals["total"] += value
        elif value == NEEDS_MANUAL:
            totals["manual_pending"] += cell.max_score
    return totals


def write_gradebook(out: Path, learners: list[str], cells: list[GradedCell], results,
                    learner_notes: dict[str, list[str]] | None = None) -> Path:
    """Write ``gradebook.csv`` (wide) and ``details.csv`` (long); return the gradebook path."""
    learner_notes = learner_notes or {}
    maxima = chapter_maxima(cells)
    course_max = sum(maxima.values())
    header = (["learner"] + [c.grade_id for c in cells]
              + [f"{ch} {what}" for ch in maxima for what in ("total", "%")]
              + ["total", "manual_pending", "max", "percent", "notes"])
    rows, details = [], []
    for learner in learners:
        totals = learner_totals(learner, cells, results)
        row = [learner] + [_fmt(cell_value(results.get((learner, c.chapter)), c)) for c in cells]
        for chapter, maximum in maxima.items():
            row += [_fmt(totals[chapter]), _pct(totals[chapter], maximum)]
        for cell in cells:
            res = results.get((learner, cell.chapter))
            details.append([learner, cell.chapter, cell.grade_id, cell.kind, _fmt(cell_value(res, cell)),
                            _fmt(cell.max_score), "" if res is None else res.status])
        rows.append(row + [_fmt(totals["total"]), _fmt(totals["manual_pending"]), _fmt(course_max),
                           _pct(totals["total"], course_max), " | ".join(_notes(learner, results, learner_notes))])
    out.mkdir(parents=True, exist_ok=True)
    path = _write_csv(out / "gradebook.csv", header, rows)
    _write_csv(out / "details.csv", ["learner", "chapter", "cell", "kind", "score", "max", "status"], details)
    return path


def _notes(learner: str, results, learner_notes: dict[str, list[str]]) -> list[str]:
    notes = list(learner_notes.get(learner, []))
    for (who, chapter), res in sorted(results.items()):
        if who != learner:
            continue
        if res.status != "ok":
            notes.append(f"{chapter}: {res.status}: {res.message}")
        notes += [f"{chapter}: {n}" for n in res.notes]
    return notes


def write_summary(out: Path, learners: list[str], cells: list[GradedCell], results) -> Path:
    """``summary.csv`` (one row per exercise) and ``summary.md`` (exercises and chapters)."""
    rows, md = [], ["# Grading summary", "", f"{len(learners)} learner(s).", "",
                    "| cell | kind | max | submitted | full marks | pass rate | mean |", "|---|---|---|---|---|---|---|"]
    for cell in cells:
        values = [cell_value(results.get((lr, cell.chapter)), cell) for lr in learners]
        submitted = [v for v in values if v != NOT_SUBMITTED]
        scored = [v for v in submitted if isinstance(v, float)]
        full = sum(v >= cell.max_score for v in scored)
        rate = f"{full / len(submitted):.2f}" if submitted and cell.kind == "auto" else ""
        mean = f"{sum(scored) / len(scored):.2f}" if scored else ""
        rows.append([cell.chapter, cell.grade_id, cell.kind, _fmt(cell.max_score), str(len(submitted)),
                     str(full), rate, mean])
        md.append(f"| `{cell.grade_id}` | {cell.kind} | {cell.max_score:g} | {len(submitted)} | {full} | {rate} | {mean} |")
    md += ["", "| chapter | max | submitted | ok | timeouts | errors |", "|---|---|---|---|---|---|"]
    for chapter, maximum in chapter_maxima(cells).items():
        mine = [r for (_, ch), r in results.items() if ch == chapter]
        counts = {s: sum(r.status == s for r in mine) for s in ("ok", "timeout", "error")}
        md.append(f"| {chapter} | {maximum:g} | {len(mine)} | {counts['ok']} | {counts['timeout']} | {counts['error']} |")
    _write_csv(out / "summary.csv", ["chapter", "cell", "kind", "max", "submitted", "full_marks",
                                     "pass_rate", "mean"], rows)
    return _write_text(out / "summary.md", "\n".join(md) + "\n")


def write_canvas(out: Path, learners: list[str], cells: list[GradedCell], results) -> Path:
    """``canvas.csv``: Canvas's gradebook import layout, one assignment column per chapter.

    The learner's folder name goes in *SIS Login ID* (Canvas matches a row by ID, SIS User ID or
    SIS Login ID); a "Points Possible" row gives each chapter's maximum. Chapters not submitted
    are left blank, so an import never overwrites a grade with 0.
    """
    maxima = chapter_maxima(cells)
    header = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"] + list(maxima)
    rows = [["    Points Possible", "", "", "", ""] + [_fmt(m) for m in maxima.values()]]
    for learner in learners:
        totals = learner_totals(learner, cells, results)
        rows.append([learner, "", "", learner, ""] + [
            _fmt(totals[ch]) if (learner, ch) in results else "" for ch in maxima])
    return _write_csv(out / "canvas.csv", header, rows)


def write_all(out: Path, learners: list[str], cells: list[GradedCell], results,
              learner_notes: dict[str, list[str]]) -> Path:
    """Import hand marks, then write every table and the manual sheet; return the gradebook path."""
    marks, problems = read_manual_marks(out / SHEET_FILE, cells)
    for note in apply_manual_marks(results, marks) + problems:
        learner, _, text = note.partition(": ")
        learner_notes.setdefault(learner, []).append(text)
    path = write_gradebook(out, learners, cells, results, learner_notes)
    write_summary(out, learners, cells, results)
    write_canvas(out, learners, cells, results)
    write_manual_sheet(out, cells, results)
    save_state(out, results)
    return path


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
