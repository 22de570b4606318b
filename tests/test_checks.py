"""Learner self-checks (cxrlab.toolbox.checks): each rejects the likely wrong answers with a helpful
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

from cxrlab.toolbox import checks
from cxrlab.core import metrics

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


def test_auc_table_with_a_class_absent_from_the_test_rows(cohort, capsys):
    """A class with no test positives (two Asian patients on COVID-19-AR) has no AUC: its row
    may be NaN, and the other classes are still checked."""
    y, P, patients, _answers = cohort
    keep = y != 2
    library = metrics.auc_table(y[keep], P[keep], CLASSES, groups=patients[keep], n_boot=200, seed=5)
    assert library["auc"].isna().iloc[2]
    checks.check_auc_table(library, y[keep], P[keep], patients[keep], CLASSES)
    assert "no AUC" in capsys.readouterr().out
    wrong = library.assign(auc=1 - library["auc"])
    with pytest.raises(checks.CheckFailed):
        checks.check_auc_table(wrong, y[keep], P[keep], patients[keep], CLASSES)


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


# ----------------------------------------------------------------------------- ch1 exercise 1
@pytest.fixture(scope="module")
def manifest():
    """60 patients with 1-4 images each: a small stand-in for chapter 1's ``m``."""
    rng = np.random.default_rng(3)
    counts = rng.integers(1, 5, 60)
    patients = np.repeat([f"p{i:02d}" for i in range(60)], counts)
    return pd.DataFrame({"patient_id": patients, "image_id": [f"i{k}" for k in range(len(patients))]})


def patient_split(manifest, seed=0):
    patients = np.random.default_rng(seed).permutation(np.sort(manifest["patient_id"].unique()))
    table = {p: "train" for p in patients[:36]} | {p: "val" for p in patients[36:42]} | \
        {p: "test" for p in patients[42:]}
    return manifest["patient_id"].map(table)


def right_count(manifest):
    def count_shared(split):
        split = np.asarray(split, dtype=object)
        return len(set(manifest.loc[split == "train", "patient_id"]) & set(manifest.loc[split == "test", "patient_id"]))
    return count_shared


def test_patient_split_check_rejects_an_image_level_split_and_wrong_fractions(manifest):
    checks.check_patient_split(patient_split(manifest), manifest, fractions=(0.6, 0.1, 0.3))
    by_image = np.random.default_rng(0).choice(["train", "val", "test"], size=len(manifest), p=[0.6, 0.1, 0.3])
    with pytest.raises(checks.CheckFailed, match="more than one split.*Assign splits to patients"):
        checks.check_patient_split(by_image, manifest, fractions=(0.6, 0.1, 0.3))
    swapped = patient_split(manifest).map({"train": "train", "val": "test", "test": "val"})
    with pytest.raises(checks.CheckFailed, match="val holds 30% of the patients, expected about 10%"):
        checks.check_patient_split(swapped, manifest, fractions=(0.6, 0.1, 0.3))


def test_shared_count_check_accepts_a_real_count(manifest, capsys):
    split = patient_split(manifest)
    checks.check_shared_count(right_count(manifest), manifest, right_count(manifest)(split), split)
    assert "✔" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    ("always zero", "says 0"),
    ("counts images", "number of test IMAGES of shared patients"),
    ("by image_id", "says 0"),
    ("returns a float", "should return an int"),
    ("n_shared typed in", "n_shared should be count_shared(my_split)"),
])
def test_shared_count_check_names_the_mistake(manifest, wrong, message):
    split, count = patient_split(manifest), right_count(manifest)
    n_shared = count(split)

    def images_of_shared(s):
        s = np.asarray(s, dtype=object)
        train = set(manifest.loc[s == "train", "patient_id"])
        return int(manifest.loc[s == "test", "patient_id"].isin(train).sum())

    def by_image_id(s):
        s = np.asarray(s, dtype=object)
        return len(set(manifest.loc[s == "train", "image_id"]) & set(manifest.loc[s == "test", "image_id"]))

    count = {"always zero": lambda s: 0, "counts images": images_of_shared, "by image_id": by_image_id,
             "returns a float": lambda s: float(right_count(manifest)(s)),
             "n_shared typed in": count}[wrong]
    if wrong == "n_shared typed in":
        n_shared = "0"
    with pytest.raises(checks.CheckFailed, match=re.escape(message)):
        checks.check_shared_count(count, manifest, n_shared, split)


# ----------------------------------------------------------------------------- ch2 exercise 2
def test_image_level_split_check_rejects_a_patient_level_split(manifest):
    by_image = np.random.default_rng(0).choice(["train", "val", "test"], size=len(manifest), p=[0.6, 0.1, 0.3])
    checks.check_image_level_split(by_image, manifest)
    with pytest.raises(checks.CheckFailed, match="still a patient-level split"):
        checks.check_image_level_split(patient_split(manifest), manifest)


class AlwaysEqual(float):
    def __eq__(self, other):
        return True


@pytest.mark.parametrize("leaky, message", [
    (0.71, "equals patient_auc"),          # measured on the manifest's split
    ("0.83", "not str"),                   # the printed value, copied as text
    (0.80, "measure it on your own image-level split"),
    (AlwaysEqual(0.5), "measure it on your own"),
])
def test_leaky_auc_check_names_the_mistake(leaky, message):
    knn_auc = lambda split: 0.83  # noqa: E731 (the notebook's function, for one split)
    checks.check_leaky_auc(0.83, ["train"], knn_auc, 0.71)
    with pytest.raises(checks.CheckFailed, match=re.escape(message)):
        checks.check_leaky_auc(leaky, ["train"], knn_auc, 0.71)


def test_leaky_auc_check_accepts_a_leak_that_changes_nothing():
    """Pixels that tell nothing (a course fixture) can give both splits the same score."""
    checks.check_leaky_auc(0.5, ["train"], lambda split: 0.5, 0.5)
    with pytest.raises(checks.CheckFailed, match="equals patient_auc"):
        checks.check_leaky_auc(0.5, ["train"], lambda split: 0.6, 0.5)


# ----------------------------------------------------------------------------- exercise cells
def _exercise_cells(path: Path) -> dict[str, str]:
    cells = json.loads(path.read_text())["cells"]
    return {c["metadata"]["nbgrader"]["grade_id"]: "".join(c["source"]) for c in cells
            if c["cell_type"] == "code" and c["metadata"].get("nbgrader", {}).get("grade_id")}


def _defined_names(source: str) -> set[str]:
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("ch*.ipynb")), ids=lambda p: p.stem)
def test_check_cells_wait_for_the_names_their_answer_defines(path):
    cells = _exercise_cells(path)
    for grade_id, source in cells.items():
        if not grade_id.endswith("-check"):
            continue
        first = source.lstrip().splitlines()[0]
        if path.stem < "ch03":  # chapters 0-2 all guard their checks; later chapters may opt in
            assert first.startswith("checks.require_answer("), f"{grade_id} starts with {first!r}"
        if first.startswith("checks.require_answer("):
            wanted = {a.value for a in ast.parse(first).body[0].value.args}
            answer = cells[grade_id.replace("-check", "-answer")]
            assert wanted <= _defined_names(answer), f"{grade_id} waits for names its answer never defines"
