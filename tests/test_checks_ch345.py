"""Chapters 3-5 exercises: each self-check passes the notebook's answer and rejects the two most
likely wrong ones with a message that names the slip; the hidden tests in the solution notebooks
reject copied, library-calling, wrongly typed and `__eq__`-fooling answers too.

The hidden tests run here exactly as nbgrader runs them: the answer cell's source, then the
check cell's source, in one namespace (with small stand-ins for the notebook's data).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrlab.toolbox import checks, degrade, fairness, probes, saliency, sweeps

ROOT = Path(__file__).resolve().parents[1] / "solutions"
NOTEBOOKS = {"ch03": "ch03_confounders.ipynb", "ch04": "ch04_degradations.ipynb",
             "ch05": "ch05_implications.ipynb"}


def _cell(grade_id: str) -> str:
    nb = json.loads((ROOT / NOTEBOOKS[grade_id[:4]]).read_text())
    hits = [c for c in nb["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == grade_id]
    assert len(hits) == 1, grade_id
    return "".join(hits[0]["source"])


def _namespace(**data) -> dict:
    return {"np": np, "pd": pd, "probes": probes, "degrade": degrade, "sweeps": sweeps,
            "fairness": fairness, "saliency": saliency, **data}


def _run_exercise(exercise: str, ns: dict, answer: str | None = None) -> dict:
    """Run the answer cell (or ``answer`` instead of it), then the graded check cell."""
    exec(answer if answer is not None else _cell(f"{exercise}-answer"), ns)
    exec(_cell(f"{exercise}-check"), ns)
    return ns


def _hidden_tests(exercise: str) -> str:
    """The hidden part of an exercise's graded check cell (what nbgrader runs on top of the
    learner-visible check)."""
    return _cell(f"{exercise}-check").split("### BEGIN HIDDEN TESTS")[1]


def _assert_copied_result_fails(exercise: str, make_ns, function: str, result: str,
                                as_literal) -> None:
    """An answer whose ``function`` returns the notebook's own ``result`` as a literal (copied
    from the output, not computed) fails the visible check AND the hidden tests."""
    ns = make_ns()
    exec(_cell(f"{exercise}-answer"), ns)
    copied = as_literal(ns[result])
    answer = f"def {function}(*_args):\n    return {copied!r}\n{result} = {copied!r}\n"
    with pytest.raises(AssertionError, match="a test case"):
        _run_exercise(exercise, make_ns(), answer)
    ns = make_ns()
    exec(answer, ns)
    with pytest.raises(AssertionError):
        exec(_hidden_tests(exercise), ns)


# --------------------------------------------------------------------------- shared helpers
def test_require_number_accepts_plain_numbers_only():
    assert checks.require_number(np.int64(3), "x") == 3.0
    assert checks.require_number(None, "x", allow_none=True) is None

    class Fake(float):
        def __sub__(self, other):
            return 0.0

    for bad, message in (("100", "not the str '100'"), (True, "plain number"), (Fake(1), "plain number"),
                         (np.array([1.0]), "plain number")):
        with pytest.raises(checks.CheckFailed, match=message):
            checks.require_number(bad, "x")


class AlwaysEqual(str):
    """A string that claims to equal anything: the trick a hidden test must not fall for."""

    def __eq__(self, other):
        return True

    __hash__ = str.__hash__


def test_require_plain_str_rejects_a_str_subclass():
    assert checks.require_plain_str("a", "v", ["a", "b"]) == "a"
    with pytest.raises(checks.CheckFailed, match="plain string"):
        checks.require_plain_str(AlwaysEqual("zzz"), "v", ["a", "b"])
    with pytest.raises(checks.CheckFailed, match="one of"):
        checks.require_plain_str("c", "v", ["a", "b"])


def test_forbid_library_sees_attributes_aliases_and_nested_functions():
    from cxrlab.toolbox.probes import stratified_auc as renamed

    def by_attribute(y, s, st):
        return probes.stratified_auc(y, s, st, ["n", "p"])

    def by_alias(y, s, st):
        return renamed(y, s, st, ["n", "p"])

    def nested(y, s, st):
        def inner():
            return probes.stratified_auc(y, s, st, ["n", "p"])
        return inner()

    for fn in (by_attribute, by_alias, nested):
        with pytest.raises(checks.CheckFailed, match="write the task yourself"):
            checks.forbid_library(fn, [probes.stratified_auc], "the task")
    checks.forbid_library(lambda y: np.mean(y), [probes.stratified_auc], "the task")


def test_library_blocked_blocks_disguised_and_re_exported_calls_and_restores():
    from cxrlab.toolbox import degrade

    original, re_exported = probes.stratified_auc, sweeps.HighPass
    namespace = {"mine": probes.stratified_auc}
    with checks.library_blocked(*probes.STRATIFIED_LIBRARY, degrade.HighPass, namespace=namespace,
                                task="it"):
        for call in (lambda: getattr(probes, "stratified" + "_auc")([1], [1], [1], ["a"]),
                     lambda: namespace["mine"]([1], [1], [1], ["a"]),
                     lambda: sweeps.HighPass(3)):          # sweeps imports HighPass from degrade
            with pytest.raises(checks.CheckFailed, match="calls cxrlab.toolbox.*: write it yourself"):
                call()
    assert probes.stratified_auc is original and namespace["mine"] is original
    assert sweeps.HighPass is re_exported is degrade.HighPass


@pytest.mark.parametrize("library", [probes.STRATIFIED_LIBRARY, probes.EQUALISE_LIBRARY,
                                     probes.SHORTCUT_LIBRARY, degrade.HIGH_PASS_LIBRARY,
                                     sweeps.FIRST_LEVEL_LIBRARY, fairness.UNDERDIAGNOSIS_LIBRARY,
                                     fairness.FAIR_THRESHOLD_LIBRARY])
def test_every_library_tuple_holds_the_objects_themselves(library):
    import sys

    for item in library:
        assert callable(item) and getattr(sys.modules[item.__module__], item.__name__) is item


# --------------------------------------------------------------------------- chapter 3, exercise 1
def _strat_no_mask(y_true, score, strata):
    """Wrong: the AUC of all rows, reported for every stratum."""
    from sklearn.metrics import roc_auc_score
    return {s: float(roc_auc_score(y_true, score)) for s in np.unique(strata)}


def _strat_half_for_one_class(y_true, score, strata):
    """Wrong: 0.5 where a stratum holds one class."""
    from sklearn.metrics import roc_auc_score
    y_true, score, strata = map(np.asarray, (y_true, score, strata))
    return {s: float(roc_auc_score(y_true[strata == s], score[strata == s]))
            if len(set(y_true[strata == s])) == 2 else 0.5 for s in np.unique(strata)}


def _strat_by_library(y_true, score, strata):
    t = probes.stratified_auc(y_true, score, strata, ["neg", "pos"], n_boot=0)
    return dict(zip(t["stratum"], t["auc"]))


def _strat_hidden_call(y_true, score, strata):
    t = getattr(probes, "stratified" + "_auc")(y_true, score, strata, ["neg", "pos"], n_boot=0)
    return {s: float(a) for s, a in zip(t["stratum"], t["auc"]) if s != "all"}


def test_ch3_ex1_solution_passes_check_and_hidden_tests(capsys):
    _run_exercise("ch03-ex1", _namespace())
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn, message", [
    (_strat_no_mask, "AUC of ALL rows"),
    (_strat_half_for_one_class, "undefined: return float\\('nan'\\), not 0.5"),
    (_strat_by_library, "write the stratified AUC yourself"),
])
def test_ch3_ex1_check_names_the_slip(fn, message):
    with pytest.raises(AssertionError, match=message):
        probes.check_stratified_auc(fn)


def test_ch3_ex1_hidden_tests_block_a_disguised_library_call():
    ns = _namespace(my_stratified_auc=_strat_hidden_call)
    hidden = _hidden_tests("ch03-ex1")
    with pytest.raises(AssertionError, match="yourself"):
        exec(hidden, ns)


# --------------------------------------------------------------------------- chapter 3, exercise 2
HEAD = '''def my_equalise_groups(df, group_col, seed):
    return df.groupby(group_col).head(int(df[group_col].value_counts().min()))
'''
FIXED_SEED = '''def my_equalise_groups(df, group_col, seed):
    n = int(df[group_col].value_counts().min())
    return df.groupby(group_col).sample(n=n, random_state=0)
'''
WITH_REPLACEMENT = '''def my_equalise_groups(df, group_col, seed):
    n = int(df[group_col].value_counts().min())
    return df.groupby(group_col).sample(n=n, replace=True, random_state=seed)
'''


def test_ch3_ex2_solution_passes(capsys):
    _run_exercise("ch03-ex2", _namespace())
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize("answer, message", [
    (HEAD, "FIRST rows of each group"), (FIXED_SEED, "seed 0 and seed 1 gave the same rows"),
    (WITH_REPLACEMENT, "twice"),
    ("def my_equalise_groups(df, group_col, seed):\n    return probes.equalise_groups(df, group_col, seed)\n",
     "write the equalising step yourself"),
])
def test_ch3_ex2_check_names_the_slip(answer, message):
    with pytest.raises(AssertionError, match=message):
        _run_exercise("ch03-ex2", _namespace(), answer)


@pytest.mark.parametrize("answer", [HEAD, FIXED_SEED])
def test_ch3_ex2_hidden_tests_reject_non_random_draws(answer):
    ns = _namespace()
    exec(answer, ns)
    with pytest.raises(AssertionError):
        exec(_hidden_tests("ch03-ex2"), ns)


# --------------------------------------------------------------------------- chapter 3, exercise 3
def _ch3_ex3_ns() -> dict:
    return _namespace(evidence=probes.toy_shortcut_evidence(seed=0, n=300))


def _rule(body: str) -> str:
    return ("def uses_site_shortcut(site_ci_low, auc_confounded, auc_independent):\n"
            f"    return {body}\n"
            "USES_SHORTCUT = {n: uses_site_shortcut(r.site_ci_low, r.auc_confounded, r.auc_independent)"
            " for n, r in evidence.iterrows()}\n")


def test_ch3_ex3_solution_passes(capsys):
    ns = _run_exercise("ch03-ex3", _ch3_ex3_ns())
    assert sum(ns["USES_SHORTCUT"].values()) == 1 and "Correct" in capsys.readouterr().out


@pytest.mark.parametrize("answer, message", [
    (_rule("bool(site_ci_low >= 0.7)"), "encoded, not relied on"),
    (_rule("bool(auc_confounded - auc_independent >= 0.05)"), "cannot be read off the features"),
    (_rule("'True' if site_ci_low >= 0.7 else 'False'"), "return True or False"),
    (_rule("probes.shortcut_verdict(site_ci_low, (site_ci_low, 1), auc_confounded, auc_independent).flagged"),
     "write the decision rule yourself"),
])
def test_ch3_ex3_check_names_the_slip(answer, message):
    with pytest.raises(AssertionError, match=message):
        _run_exercise("ch03-ex3", _ch3_ex3_ns(), answer)


def test_ch3_ex3_hidden_tests_block_a_disguised_library_call():
    ns = _ch3_ex3_ns()
    exec(_rule("getattr(probes, 'shortcut' + '_verdict')(site_ci_low, (site_ci_low, 1), "
               "auc_confounded, auc_independent).flagged"), ns)
    with pytest.raises(AssertionError, match="yourself"):
        exec(_hidden_tests("ch03-ex3"), ns)


# --------------------------------------------------------------------------- chapter 4, exercise 1
def _high_pass(keep: str, scale: str = "* 224") -> str:
    return ("def my_high_pass(image, d):\n"
            "    h, w = image.shape\n"
            f"    fy = np.fft.fftfreq(h) {scale}\n"
            f"    fx = np.fft.fftfreq(w) {scale}\n"
            "    radius = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)\n"
            f"    return np.real(np.fft.ifft2(np.fft.fft2(image) * ({keep})))\n")


def test_ch4_ex1_solution_passes(capsys):
    _run_exercise("ch04-ex1", _namespace())
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize("answer, message", [
    (_high_pass("radius >= d"), "Keep radius > d, not >= d"),
    (_high_pass("radius > d", "* 64"), "224-px grid"),
    ("def my_high_pass(image, d):\n    return degrade.high_pass(image, d)\n",
     "write the high-pass filter yourself"),
    ("def my_high_pass(image, d):\n    return np.fft.ifft2(np.fft.fft2(image) * 0)\n", "real part"),
])
def test_ch4_ex1_check_names_the_slip(answer, message):
    with pytest.raises(AssertionError, match=message):
        _run_exercise("ch04-ex1", _namespace(), answer)


def test_ch4_ex1_hidden_tests_reject_the_boundary_slip_and_a_disguised_call():
    for answer in (_high_pass("radius >= d"),
                   "def my_high_pass(image, d):\n    return getattr(degrade, 'high' + '_pass')(image, d)\n"):
        ns = _namespace()
        exec(answer, ns)
        with pytest.raises(AssertionError):
            exec(_hidden_tests("ch04-ex1"), ns)


# --------------------------------------------------------------------------- chapter 4, exercise 2
def _ch4_ex2_ns() -> dict:
    table = sweeps.sweep_table((1, 5, 10, 25, 50, 100, 150, 200),
                                 (0.99, 0.97, 0.9, 0.7, 0.58, 0.62, 0.5, 0.52), (0.99, 0.5, 0.9, 0.7, 0.6, 0.6, 0.5, 0.5))
    return _namespace(test_time={"high_pass": table})


def _first_level(body: str, value: str = "my_first_level_below(test_time['high_pass'], 0.6)") -> str:
    return ("def my_first_level_below(table, threshold):\n"
            f"    {body}\n"
            f"radius_below_06 = {value}\n")


def test_ch4_ex2_solution_passes(capsys):
    ns = _run_exercise("ch04-ex2", _ch4_ex2_ns())
    assert ns["radius_below_06"] == 50.0 and "Correct" in capsys.readouterr().out


@pytest.mark.parametrize("answer, message", [
    (_first_level("below = table[table['auc'] < threshold]\n    return None if below.empty else float(below['level'].iloc[0])"),
     "class == 'macro'"),
    (_first_level("m = table[table['class'] == 'macro']\n    return float(m['level'].iloc[int(m['auc'].argmin())])"),
     "LOWEST AUC"),
    (_first_level("return sweeps.first_level_below(table, threshold)"), "write the search yourself"),
])
def test_ch4_ex2_check_names_the_slip(answer, message):
    with pytest.raises(AssertionError, match=message):
        _run_exercise("ch04-ex2", _ch4_ex2_ns(), answer)


def test_ch4_ex2_rejects_the_string_100():
    with pytest.raises(AssertionError, match="not the str '50'"):
        sweeps.check_first_level_below("50", _ch4_ex2_ns()["test_time"]["high_pass"], 0.6)
    ns = _ch4_ex2_ns()
    exec(_cell("ch04-ex2-answer"), ns)
    ns["radius_below_06"] = "50"
    with pytest.raises(AssertionError):
        exec(_hidden_tests("ch04-ex2"), ns)


# --------------------------------------------------------------------------- chapter 4, exercise 3
def _ch4_ex3_ns() -> dict:
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(6, 16, 16))
    masks = np.zeros((6, 16, 16), bool)
    masks[:, 4:12, 2:7] = masks[:, 4:12, 9:14] = True
    return _namespace(ig_maps=maps, ig_masks=masks)


def test_ch4_ex3_solution_passes(capsys):
    _run_exercise("ch04-ex3", _ch4_ex3_ns())
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize("answer, message", [
    ("share_in_lungs = float(saliency.region_fraction(ig_maps, ig_masks).mean())\n"
     "lung_area = float(ig_masks.sum())\nverdict = 'sensitivity'\n", "pixel COUNT"),
    ("share_in_lungs = float(((ig_maps * ig_masks).sum((1, 2)) / ig_maps.sum((1, 2))).mean())\n"
     "lung_area = float(ig_masks.mean())\nverdict = 'sensitivity'\n", "absolute value"),
    ("share_in_lungs = float(saliency.region_fraction(ig_maps, ig_masks).mean())\n"
     "lung_area = float(ig_masks.mean())\nverdict = 'located'\n", "reconsider 'located'"),
])
def test_ch4_ex3_check_names_the_slip(answer, message):
    with pytest.raises(AssertionError, match=message):
        _run_exercise("ch04-ex3", _ch4_ex3_ns(), answer)


def test_ch4_ex3_a_str_subclass_fools_neither_check_nor_hidden_test():
    ns = _ch4_ex3_ns()
    exec(_cell("ch04-ex3-answer"), ns)
    ns["verdict"] = AlwaysEqual("located")
    with pytest.raises(AssertionError, match="plain string"):
        saliency.check_saliency_reading(ns["share_in_lungs"], ns["lung_area"], ns["verdict"],
                                        ns["ig_maps"], ns["ig_masks"])
    with pytest.raises(AssertionError):
        exec(_hidden_tests("ch04-ex3"), ns)


# --------------------------------------------------------------------------- chapter 5, exercise 1
def _ch5_ns() -> dict:
    y, s, g = fairness._exercise_case(99, n=200)
    audit = pd.DataFrame({"recorded_no_finding": y, "score": s, "group": g})
    vy, vs, vg = fairness._exercise_case(98, n=200)
    return _namespace(audit=audit, threshold=0.55, val_recorded=vy, val_score=vs, val_groups=vg)


def _underdiagnosis(expr: str) -> str:
    return ("def my_underdiagnosis_by_group(no_finding_true, called_healthy, groups):\n"
            "    f = pd.DataFrame({'sick': ~np.asarray(no_finding_true, bool),\n"
            "                      'called': np.asarray(called_healthy, bool), 'g': np.asarray(groups, object)})\n"
            f"    return {{k: float({expr}) for k, r in f.groupby('g')}}\n"
            "underdiagnosis_by_group = my_underdiagnosis_by_group(audit['recorded_no_finding'],\n"
            "    audit['score'] >= threshold, audit['group'])\n")


def test_ch5_ex1_solution_passes(capsys):
    _run_exercise("ch05-ex1", _ch5_ns())
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize("answer, message", [
    (_underdiagnosis("(r.sick & r.called).sum() / len(r)"), "divided by ALL of the group's patients"),
    (_underdiagnosis("(~r.sick & ~r.called).sum() / (~r.sick).sum()"), "overdiagnosis rate"),
    (_underdiagnosis("fairness.underdiagnosis_rate(~r.sick, r.called)"), "write the underdiagnosis rate yourself"),
])
def test_ch5_ex1_check_names_the_slip(answer, message):
    with pytest.raises(AssertionError, match=message):
        _run_exercise("ch05-ex1", _ch5_ns(), answer)


def test_ch5_ex1_copying_the_tabulated_rates_fails():
    _assert_copied_result_fails("ch05-ex1", _ch5_ns, "my_underdiagnosis_by_group",
                                "underdiagnosis_by_group", dict)


# --------------------------------------------------------------------------- chapter 5, exercise 2
def _fair(expr: str) -> str:
    return ("def my_fair_threshold(no_finding_true, score, groups, max_rate):\n"
            "    y = pd.Series(no_finding_true).to_numpy(bool); s = pd.Series(score).to_numpy()\n"
            "    g = pd.Series(groups).to_numpy(object)\n"
            "    per = [fairness.threshold_at_fpr(y[g == k], s[g == k], max_rate) for k in pd.unique(g)]\n"
            f"    return {expr}\n"
            "fair_threshold = my_fair_threshold(val_recorded, val_score, val_groups, 0.2)\n")


def test_ch5_ex2_solution_passes(capsys):
    _run_exercise("ch05-ex2", _ch5_ns())
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize("answer, message", [
    (_fair("min(per)"), "most lenient group"),
    (_fair("fairness.threshold_at_fpr(y, s, max_rate)"), "overall rate meets the target"),
    (_fair("max(fairness.per_group_thresholds(y, s, g, max_rate).values())"),
     "write the constrained threshold yourself"),
])
def test_ch5_ex2_check_names_the_slip(answer, message):
    with pytest.raises(AssertionError, match=message):
        _run_exercise("ch05-ex2", _ch5_ns(), answer)


def test_ch5_ex2_copying_the_widgets_maximum_fails():
    _assert_copied_result_fails("ch05-ex2", _ch5_ns, "my_fair_threshold", "fair_threshold", float)


# --------------------------------------------------------------------------- claims in chapters 3-5
@pytest.mark.parametrize("chapter", sorted(NOTEBOOKS))
def test_chapters_3_to_5_check_their_claims(chapter):
    """Each chapter states its comparisons through ``checks.claim`` (quoted verbatim: see
    ``tests/test_checks.py::test_every_claim_quotes_its_notebook``)."""
    from tests.test_checks import notebook_claims

    assert len(notebook_claims(ROOT / NOTEBOOKS[chapter])) >= 5


def test_an_untouched_exercise_says_answer_it_first():
    def stub(*_args):
        raise NotImplementedError("Exercise: not implemented yet")

    for check in (probes.check_stratified_auc, probes.check_equalise_groups, degrade.check_high_pass,
                  sweeps.check_first_level_function, fairness.check_underdiagnosis_function,
                  fairness.check_fair_threshold_function):
        with pytest.raises(checks.CheckFailed, match="answer the exercise above first"):
            check(stub)
    with pytest.raises(checks.CheckFailed, match="answer the exercise above first"):
        probes.check_shortcut_rule(stub, probes.toy_shortcut_evidence(seed=0, n=200))
