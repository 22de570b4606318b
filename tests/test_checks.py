"""Learner self-checks (cxrlab.checks): each rejects the likely wrong answers with a helpful
message, and every notebook claim quotes a sentence its notebook still says."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata

from cxrlab import checks, metrics

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- claims
def test_claim_is_silent_when_true_and_raises_when_false(capsys, monkeypatch):
    monkeypatch.delenv(checks.CLAIMS_ENV, raising=False)
    assert checks.claim(True, "it goes up") is True
    assert capsys.readouterr().out == ""
    with pytest.raises(checks.ClaimFailed, match='"it goes up".*\\(0.4 < 0.5\\)'):
        checks.claim(False, "it goes up", "0.4 < 0.5")


def test_claim_only_warns_when_asked(capsys, monkeypatch):
    monkeypatch.setenv(checks.CLAIMS_ENV, "warn")
    assert checks.claim(False, "it goes up") is False
    assert "⚠" in capsys.readouterr().out


def _markdown_text(nb: dict) -> str:
    text = " ".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    return re.sub(r"\s+", " ", text.replace("*", "").replace("`", ""))


def notebook_claims(path: Path) -> list[str]:
    """The literal sentences passed to ``checks.claim`` in a notebook's code cells."""
    nb = json.loads(path.read_text())
    sentences = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code" or "claim(" not in "".join(cell["source"]):
            continue
        source = "\n".join(line for line in "".join(cell["source"]).splitlines()
                           if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "claim":
                assert len(node.args) >= 2 and isinstance(node.args[1], ast.Constant), \
                    f"{path.name}: claim() needs the sentence as a literal second argument"
                sentences.append(node.args[1].value)
    return sentences


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("ch*.ipynb")), ids=lambda p: p.stem)
def test_every_claim_quotes_its_notebook(path):
    text = _markdown_text(json.loads(path.read_text()))
    for sentence in notebook_claims(path):
        quoted = re.sub(r"\s+", " ", sentence.replace("*", "").replace("`", ""))
        assert quoted in text, f"{path.name}: claim {sentence!r} is not in the notebook's text"


# ----------------------------------------------------------------------------- ch2 exercise 1
CLASSES = ["A", "B", "C"]


def learner_table(y, P, units, *, level=0.95, n_boot=200, seed=0):
    """The exercise's answer as a learner writes it (``units``: patient ids, or image rows);
    a rank AUC stands in for scikit-learn's ``roc_auc_score`` (same values, 50x faster)."""
    rng = np.random.default_rng(seed)
    unique = np.unique(units)
    rows_of = {u: np.flatnonzero(units == u) for u in unique}
    boot = {c: [] for c in CLASSES}
    for _ in range(n_boot):
        idx = np.concatenate([rows_of[u] for u in rng.choice(unique, size=len(unique), replace=True)])
        for j, c in enumerate(CLASSES):
            positive = y[idx] == j
            if positive.any() and not positive.all():
                boot[c].append(roc_auc_score(positive, P[idx, j]))
    tail = 100 * (1 - level) / 2
    return pd.DataFrame([{"class": c, "auc": roc_auc_score(y == j, P[:, j]),
                          "ci_low": np.percentile(boot[c], tail), "ci_high": np.percentile(boot[c], 100 - tail)}
                         for j, c in enumerate(CLASSES)])


def roc_auc_score(positive, score):
    ranks = rankdata(score)
    n_pos = int(positive.sum())
    return (ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(score) - n_pos))


@pytest.fixture(scope="module")
def cohort():
    y, P, patients = checks.clustered_cohort(seed=11, n_patients=30, images_per_patient=4)
    answers = {"right": learner_table(y, P, patients), "images": learner_table(y, P, np.arange(len(y))),
               "90%": learner_table(y, P, patients, level=0.90)}
    return y, P, patients, answers


def test_auc_table_accepts_the_hinted_answer_and_another_correct_bootstrap(cohort, capsys):
    y, P, patients, answers = cohort
    checks.check_auc_table(answers["right"], y, P, patients, CLASSES)
    library = metrics.auc_table(y, P, CLASSES, groups=patients, n_boot=200, seed=5)
    checks.check_auc_table(library, y, P, patients, CLASSES)
    assert capsys.readouterr().out.count("✔") == 2


def _wrong_table(wrong, y, P, answers):
    right = answers["right"]
    return {
        "image rows, hinted loop": lambda: answers["images"],
        "image rows, other draws": lambda: metrics.auc_table(y, P, CLASSES, groups=None, n_boot=200, seed=3),
        "90% interval": lambda: answers["90%"],
        "zero width": lambda: right.assign(ci_low=right["auc"], ci_high=right["auc"]),
        "inverted": lambda: right.assign(auc=1 - right["auc"]),
        "swapped": lambda: right.assign(auc=right["auc"].to_numpy()[[1, 2, 0]]),
        "strings": lambda: right.assign(auc=["high", "high", "high"]),
        "no auc column": lambda: right.drop(columns="auc"),
    }[wrong]()


@pytest.mark.parametrize("wrong, message", [
    ("image rows, hinted loop", "resample images instead of patients"),
    ("image rows, other draws", "resample images instead of patients"),
    ("90% interval", "90% interval"),
    ("zero width", "zero width"),
    ("inverted", "1 minus the right value"),
    ("swapped", "wrong rows"),
    ("strings", "must be numbers"),
    ("no auc column", "lacks column"),
])
def test_auc_table_names_the_mistake(cohort, wrong, message):
    y, P, patients, answers = cohort
    with pytest.raises(checks.CheckFailed, match=re.escape(message)):
        checks.check_auc_table(_wrong_table(wrong, y, P, answers), y, P, patients, CLASSES)


def test_require_answer_replaces_the_name_error():
    my_answer = 1  # noqa: F841 (found through the caller's frame)
    checks.require_answer("my_answer")
    with pytest.raises(checks.CheckFailed, match="answer the exercise above first: `my_table`"):
        checks.require_answer("my_answer", "my_table")


def test_library_blocked_reaches_module_and_notebook_names():
    namespace = {"auc_table": metrics.auc_table, "metrics": metrics}
    original = metrics.auc_table
    with checks.library_blocked(metrics.auc_table, namespace=namespace):
        for call in (lambda: metrics.auc_table([0, 1], np.eye(2)), lambda: namespace["auc_table"]()):
            with pytest.raises(checks.CheckFailed, match="compute it yourself"):
                call()
    assert metrics.auc_table is original and namespace["auc_table"] is original
