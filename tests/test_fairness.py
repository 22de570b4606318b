"""Unit tests for cxrlab.toolbox.fairness: hand-computed confusion matrices, fairlearn agreement,
thresholds, intersections, bootstrap intervals and the learner self-checks."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame, false_negative_rate, false_positive_rate

from cxrlab.toolbox import fairness as F

# A hand-made audit: 10 images, 8 patients, groups A and B.
#   no_finding_true: True = healthy.  pred: True = model says healthy.
# Group A (rows 0-4): sick rows 0,1,2 -> pred T,F,F  => 1 of 3 sick called healthy (1/3)
#                     healthy rows 3,4 -> pred T,F   => 1 of 2 healthy flagged (1/2)
# Group B (rows 5-9): sick rows 5,6,7,8 -> pred T,T,F,F => 2 of 4 (1/2)
#                     healthy row 9 -> pred T        => 0 of 1
Y = np.array([False, False, False, True, True, False, False, False, False, True])
P = np.array([True, False, False, True, False, True, True, False, False, True])
G = pd.Series(list("AAAAABBBBB"), name="group")
SEX = pd.Series(list("FMFMFFFMMM"), name="sex")
PAT = np.array(["a1", "a1", "a2", "a3", "a4", "b1", "b2", "b3", "b3", "b4"])


def test_confusion_counts_by_hand():
    assert F.confusion_counts(Y, P) == {"tp": 2, "fp": 3, "tn": 4, "fn": 1}


def test_rates_by_hand():
    a, b = (G == "A").to_numpy(), (G == "B").to_numpy()
    assert F.underdiagnosis_rate(Y[a], P[a]) == pytest.approx(1 / 3)
    assert F.overdiagnosis_rate(Y[a], P[a]) == pytest.approx(1 / 2)
    assert F.underdiagnosis_rate(Y[b], P[b]) == pytest.approx(1 / 2)
    assert F.overdiagnosis_rate(Y[b], P[b]) == 0.0
    assert F.accuracy(Y, P) == pytest.approx(6 / 10)


def test_rates_undefined_without_denominator():
    assert np.isnan(F.underdiagnosis_rate([True, True], [True, False]))
    assert np.isnan(F.overdiagnosis_rate([False], [True]))


def test_inputs_are_validated():
    with pytest.raises(ValueError, match="differ in length"):
        F.confusion_counts([True, False], [True])
    with pytest.raises(ValueError, match="missing"):
        F.confusion_counts(pd.Series([True, None]), [True, False])
    with pytest.raises(ValueError, match="boolean"):
        F.confusion_counts([0.3, 0.7], [True, False])


def test_underdiagnosis_is_fairlearn_fpr_with_no_finding_positive():
    mf = MetricFrame(metrics={"fpr": false_positive_rate, "fnr": false_negative_rate},
                     y_true=Y, y_pred=P, sensitive_features=G)
    ours = F.group_metric_frame(Y, P, G).by_group
    np.testing.assert_allclose(ours["underdiagnosis"], mf.by_group["fpr"])
    np.testing.assert_allclose(ours["overdiagnosis"], mf.by_group["fnr"])
    assert ours.loc["A", "n_with_finding"] == 3 and ours.loc["B", "n_healthy"] == 1


def test_intersections_by_hand():
    mf = F.group_metric_frame(Y, P, pd.concat([G, SEX], axis=1))
    by = mf.by_group
    # A x F: rows 0,2 (sick: T,F) and 4 (healthy, F) ; A x M: row 1 (sick,F), row 3 (healthy,T)
    assert by.loc[("A", "F"), "underdiagnosis"] == pytest.approx(1 / 2)
    assert by.loc[("A", "F"), "overdiagnosis"] == pytest.approx(1.0)
    assert by.loc[("A", "M"), "underdiagnosis"] == 0.0
    # B x F: rows 5,6 both sick, both called healthy; B x M: rows 7,8 sick not called, 9 healthy
    assert by.loc[("B", "F"), "underdiagnosis"] == 1.0
    assert by.loc[("B", "M"), "underdiagnosis"] == 0.0
    assert by["n"].sum() == 10


def test_missing_attribute_rows_are_dropped_and_counted():
    g = G.astype(object).copy()
    g.iloc[0] = None                      # row 0 (sick, called healthy) leaves group A
    t = F.underdiagnosis_table(Y, P, g, PAT, n_boot=20)
    assert t.attrs["n_dropped"] == 1
    assert t.loc["A", "underdiagnosis"] == 0.0 and t.loc["A", "n"] == 4


def test_table_point_estimates_match_and_ci_brackets_them():
    rng = np.random.default_rng(1)
    n = 600
    groups = pd.Series(rng.choice(list("ABC"), n), name="group")
    y = rng.random(n) < 0.4
    miss = np.where(groups == "B", 0.4, 0.15)           # B is underdiagnosed more often
    pred = np.where(y, rng.random(n) < 0.8, rng.random(n) < miss)
    patients = np.arange(n) // 2                          # two images per patient
    t = F.underdiagnosis_table(y, pred, groups, patients, n_boot=200, seed=0, reference="A")
    for k in "ABC":
        m = (groups == k).to_numpy()
        assert t.loc[k, "underdiagnosis"] == pytest.approx(F.underdiagnosis_rate(y[m], pred[m]))
        assert t.loc[k, "underdiagnosis_low"] <= t.loc[k, "underdiagnosis"] <= t.loc[k, "underdiagnosis_high"]
        assert t.loc[k, "overdiagnosis_low"] <= t.loc[k, "overdiagnosis"] <= t.loc[k, "overdiagnosis_high"]
    assert t.loc["A", "gap"] == 0.0
    assert t.loc["B", "gap_low"] > 0            # the planted gap is detected
    assert t.loc["C", "gap_low"] < 0 < t.loc["C", "gap_high"]
    width = t["underdiagnosis_high"] - t["underdiagnosis_low"]
    assert (width > 0.02).all() and (width < 0.25).all()


def test_bootstrap_resamples_patients_not_images():
    # One patient holds all 20 images of group A: resampling patients moves them together, so
    # the A estimate never jitters; an interval resting on one patient is reported as NaN.
    y = np.array([False] * 20 + [False] * 20)
    p = np.array([True, False] * 10 + [True, False] * 10)
    g = pd.Series(["A"] * 20 + ["B"] * 20, name="group")
    patients = ["solo"] * 20 + [f"b{i}" for i in range(20)]
    t = F.underdiagnosis_table(y, p, g, patients, n_boot=100, seed=3)
    assert t.loc["A", "underdiagnosis"] == 0.5
    assert np.isnan(t.loc["A", "underdiagnosis_low"]) and np.isnan(t.loc["A", "underdiagnosis_high"])
    assert t.loc["B", "underdiagnosis_low"] < 0.5 < t.loc["B", "underdiagnosis_high"]


def test_interval_of_a_two_patient_cell_is_kept():
    y = np.array([False, False, True, True])
    p = np.array([True, False, False, True])
    t = F.underdiagnosis_table(y, p, pd.Series(["A"] * 4, name="group"), ["p1", "p2", "p3", "p4"],
                               n_boot=200, seed=0)
    assert t.loc["A", "underdiagnosis_low"] == 0.0 and t.loc["A", "underdiagnosis_high"] == 1.0


def test_operating_point_fitted_on_other_rows():
    y_fit, s_fit = np.array([False, False, True, True]), np.array([0.2, 0.6, 0.7, 0.9])
    y, s = np.array([False, False, True]), np.array([0.65, 0.1, 0.95])
    op = F.operating_point(y, s, ["A"] * 3, 0.0, fit=(y_fit, s_fit, ["A"] * 4))
    assert op.thresholds["A"] == pytest.approx(np.nextafter(0.6, 1))   # from the fit rows
    assert op.underdiagnosis == 0.5            # measured on these: 0.65 is called healthy
    table = F.tradeoff_table(y, s, ["A"] * 3, [0.0], fit=(y_fit, s_fit, ["A"] * 4))
    assert (table["threshold"] == op.thresholds["A"]).all()


def test_bootstrap_is_reproducible_and_seed_matters():
    rng = np.random.default_rng(0)
    y, p = rng.random(200) < 0.5, rng.random(200) < 0.5
    g = pd.Series(rng.choice(list("AB"), 200), name="group")
    a = F.underdiagnosis_table(y, p, g, np.arange(200), n_boot=50, seed=1)
    b = F.underdiagnosis_table(y, p, g, np.arange(200), n_boot=50, seed=1)
    c = F.underdiagnosis_table(y, p, g, np.arange(200), n_boot=50, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert not a["underdiagnosis_low"].equals(c["underdiagnosis_low"])


def test_intersection_table_has_multiindex_and_reference_tuple():
    t = F.underdiagnosis_table(Y, P, pd.concat([G, SEX], axis=1), PAT, n_boot=20,
                               reference=("A", "M"))
    assert list(t.index.names) == ["group", "sex"]
    assert t.loc[("B", "F"), "gap"] == 1.0
    with pytest.raises(KeyError, match="reference"):
        F.underdiagnosis_table(Y, P, G, PAT, n_boot=5, reference="Z")


def test_age_band_edges():
    assert F.age_band([0, 19.9, 20, 59, 60, 80, 95]).tolist() == [
        "0-20", "0-20", "20-40", "40-60", "60-80", "80+", "80+"]
    assert pd.isna(F.age_band([np.nan])[0])


def test_true_no_finding_from_true_columns():
    df = pd.DataFrame({"true_finding_x": [True, False, False],
                       "true_finding_y": [False, False, None], "no_finding": [True, True, True]})
    assert F.true_no_finding(df).tolist() == [False, True, True]
    with pytest.raises(KeyError, match="synthetic"):
        F.true_no_finding(df.drop(columns=["true_finding_x", "true_finding_y"]))


SCORES = np.array([0.1, 0.2, 0.3, 0.4, 0.35, 0.55, 0.6, 0.7, 0.8, 0.9])
SICK = np.array([True, True, True, True, True, True, False, False, False, False])


@pytest.mark.parametrize("target", [0.0, 1 / 6, 0.2, 1 / 3, 0.5, 0.99, 1.0])
def test_threshold_at_fpr_meets_target_and_is_lowest(target):
    y = ~SICK
    t = F.threshold_at_fpr(y, SCORES, target)
    assert F.underdiagnosis_rate(y, SCORES >= t) <= target + 1e-12
    lower = np.nextafter(t, -np.inf)
    if lower >= SCORES.min():
        assert F.underdiagnosis_rate(y, SCORES >= lower) > target


def test_threshold_at_fpr_holds_for_float32_scores():
    # NumPy 2 compares a float32 array with a Python float in float32: the threshold must
    # still exclude the sick patient whose score sits just below it.
    rng = np.random.default_rng(4)
    scores = rng.random(500).astype(np.float32)
    y = rng.random(500) < 0.5
    for target in (0.05, 0.2, 0.37):
        t = F.threshold_at_fpr(y, scores, target)
        assert F.underdiagnosis_rate(y, scores >= t) <= target
        assert F.underdiagnosis_rate(y, scores.astype(float) >= t) <= target
    groups = np.where(rng.random(500) < 0.5, "A", "B")
    for name, t in F.per_group_thresholds(y, scores, groups, 0.2).items():
        m = groups == name
        assert F.underdiagnosis_rate(y[m], scores[m] >= t) <= 0.2


def test_threshold_at_fpr_by_hand():
    y = ~SICK                       # sick scores: 0.1 0.2 0.3 0.35 0.4 0.55
    t = F.threshold_at_fpr(y, SCORES, 1 / 3)   # may call 2 of 6 sick healthy: 0.4 and 0.55
    assert 0.35 < t <= 0.4
    with pytest.raises(ValueError, match="no patient with a finding"):
        F.threshold_at_fpr(np.ones(3, bool), [0.1, 0.2, 0.3], 0.1)
    with pytest.raises(ValueError, match="target_fpr"):
        F.threshold_at_fpr(y, SCORES, 1.5)


def _cohort(n=800, seed=0):
    rng = np.random.default_rng(seed)
    g = rng.choice(list("ABC"), n)
    healthy = rng.random(n) < 0.45
    shift = np.where(g == "B", 0.8, 0.0)            # B's sick patients look healthier
    score = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + np.where(healthy, 1.5, -1.0 + shift))))
    return healthy, score, g


def test_global_vs_per_group_operating_points():
    y, s, g = _cohort()
    glob = F.operating_point(y, s, g, 0.2, "global")
    per = F.operating_point(y, s, g, 0.2, "per_group")
    assert len(set(glob.thresholds.values())) == 1
    assert glob.underdiagnosis <= 0.2 + 1e-12
    assert glob.per_group.loc["B", "underdiagnosis"] > 0.2       # B pays for the global choice
    assert (per.per_group["underdiagnosis"] <= 0.2 + 1e-12).all()
    assert per.thresholds["B"] > per.thresholds["A"]
    assert "accuracy" in glob.summary()
    with pytest.raises(ValueError, match="mode"):
        F.operating_point(y, s, g, 0.2, "best")


def test_apply_thresholds_per_group_and_missing_group():
    assert F.apply_thresholds([0.5, 0.5], ["A", "B"], {"A": 0.4, "B": 0.6}).tolist() == [True, False]
    with pytest.raises(KeyError, match="no threshold"):
        F.apply_thresholds([0.5], ["C"], {"A": 0.4})


def test_tradeoff_table_shape_and_monotone():
    y, s, g = _cohort(400, 1)
    t = F.tradeoff_table(y, s, g, targets=[0.1, 0.3])
    assert len(t) == 2 * 2 * 3
    glob = t[(t["mode"] == "global")].pivot(index="target_fpr", columns="group", values="underdiagnosis")
    assert (glob.loc[0.3] >= glob.loc[0.1]).all()


def test_check_underdiagnosis_by_group_accepts_right_answer(capsys):
    answer = {"A": 1 / 3, "B": 0.5}
    F.check_underdiagnosis_by_group(answer, Y, P, G)
    assert "Correct" in capsys.readouterr().out
    F.check_underdiagnosis_by_group(F.group_metric_frame(Y, P, G), Y, P, G)


@pytest.mark.parametrize("answer, message", [
    ({"A": 0.5, "B": 0.0}, "overdiagnosis"),
    ({"A": 2 / 3, "B": 0.5}, "specificity"),
    ({"A": 0.2, "B": 0.4}, "ALL patients"),
    ({"A": 1 / 3}, "No rate for group"),
    ([0.3, 0.5], "dict or pandas Series"),
])
def test_check_underdiagnosis_by_group_explains_slips(answer, message):
    with pytest.raises(AssertionError, match=message):
        F.check_underdiagnosis_by_group(answer, Y, P, G)


def test_check_threshold_constraint():
    y, s, g = _cohort(300, 2)
    best = max(F.per_group_thresholds(y, s, g, 0.15).values())
    F.check_threshold_constraint(best, y, s, g, 0.15)
    with pytest.raises(AssertionError, match="Raise the threshold"):
        F.check_threshold_constraint(F.threshold_at_fpr(y, s, 0.15) - 0.05, y, s, g, 0.15)
    with pytest.raises(AssertionError, match="lower threshold"):
        F.check_threshold_constraint(0.99, y, s, g, 0.15)
    with pytest.raises(AssertionError, match="one number"):
        F.check_threshold_constraint([0.5], y, s, g, 0.15)
