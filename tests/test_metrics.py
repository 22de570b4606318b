"""Metrics against hand-computed cases and scikit-learn; bootstrap keeps patients whole."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxrlab.core import metrics


def test_perfect_ranking_gives_one_with_degenerate_ci():
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])
    table = metrics.auc_table(y, np.eye(3)[y], ["A", "B", "C"], n_boot=50, seed=1)
    assert table["class"].tolist() == ["A", "B", "C"]
    assert table[["auc", "ci_low", "ci_high"]].to_numpy().tolist() == [[1.0, 1.0, 1.0]] * 3
    assert table["n_pos"].tolist() == [3, 3, 3] and table["n_neg"].tolist() == [6, 6, 6]


def test_known_small_example():
    # pairs (pos, neg): (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4): 3 of 4 -> 0.75
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    table = metrics.auc_table(y, p, ["neg", "pos"], n_boot=0)
    assert table.loc[0, "class"] == "pos" and table.loc[0, "auc"] == pytest.approx(0.75)
    assert metrics.macro_auc(y, p) == pytest.approx(0.75)


def test_matches_sklearn_one_vs_rest():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    proba = rng.dirichlet([1, 1, 1], 200) + 0.5 * np.eye(3)[y]
    proba /= proba.sum(1, keepdims=True)
    table = metrics.auc_table(y, proba, ["A", "B", "C"], n_boot=0)
    for k in range(3):
        assert table.loc[k, "auc"] == pytest.approx(roc_auc_score(y == k, proba[:, k]))
    assert metrics.macro_auc(y, proba) == pytest.approx(
        roc_auc_score(y, proba, multi_class="ovr", average="macro"))


def test_unknown_labels_are_ignored():
    y = np.array([0, 1, -1, 0, 1])
    proba = np.eye(2)[[0, 1, 0, 0, 1]].astype(float)
    proba[2] = [0.0, 1.0]                        # wrong, but its label is unknown
    assert metrics.macro_auc(y, proba) == 1.0


def test_weighted_aucs_match_sklearn_with_ties():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 50)
    score = rng.integers(0, 6, 50) / 5.0                      # many ties
    weights = metrics.bootstrap_weights(None, 50, n_boot=20, seed=1)
    fast = metrics.weighted_aucs(y, score, weights)
    slow = [roc_auc_score(y, score, sample_weight=w) for w in weights]
    np.testing.assert_allclose(fast, slow, atol=1e-12)


def test_patient_bootstrap_keeps_patients_whole():
    groups = np.array(["a", "a", "a", "b", "c", "c"])
    weights = metrics.bootstrap_weights(groups, 6, n_boot=100, seed=0)
    assert weights.shape == (100, 6)
    assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 1] == weights[:, 2]).all()
    assert (weights[:, 4] == weights[:, 5]).all()
    assert (weights[:, [0, 3, 4]].sum(1) == 3).all()          # three patients drawn each time


def test_patient_bootstrap_is_wider_with_correlated_images():
    # 40 patients x 10 near-identical images: the image-level CI is far too narrow
    rng = np.random.default_rng(1)
    patient_y = rng.integers(0, 2, 40)
    patient_score = patient_y + rng.normal(0, 1.0, 40)
    y, score = np.repeat(patient_y, 10), np.repeat(patient_score, 10)
    groups = np.repeat(np.arange(40), 10)
    by_patient = metrics.auc_table(y, score, groups=groups, n_boot=300, seed=0)
    by_image = metrics.auc_table(y, score, groups=None, n_boot=300, seed=0)
    width = lambda t: float(t.ci_high[0] - t.ci_low[0])  # noqa: E731
    assert width(by_patient) > 2 * width(by_image)


def test_ci_coverage_on_simulated_data():
    # true AUC of N(0,1) vs N(1.5,1) scores is Phi(1.5 / sqrt 2) = 0.8556
    from scipy.stats import norm

    truth = norm.cdf(1.5 / np.sqrt(2))
    rng = np.random.default_rng(2)
    covered = 0
    for trial in range(40):
        y = rng.integers(0, 2, 120)
        score = rng.normal(1.5 * y, 1.0)
        ci = metrics.auc_table(y, score, n_boot=150, seed=trial)
        covered += ci.ci_low[0] <= truth <= ci.ci_high[0]
    assert covered >= 33                          # about 95% of 40, with slack


def test_single_class_resamples_are_skipped(capsys):
    y = np.array([1, 0, 0, 0, 0, 0])
    table = metrics.auc_table(y, np.linspace(1, 0, 6), groups=None, n_boot=100, seed=0)
    skipped = table.attrs["n_skipped"]["positive"]
    assert 0 < skipped < 100 and "skipped" in capsys.readouterr().out


def test_bootstrap_ci_generic_and_age_mae():
    ci = metrics.bootstrap_ci(lambda a: float(np.mean(a)), np.array([1.0, 2.0, 3.0]),
                              n_boot=200, seed=0)
    assert ci.estimate == 2.0 and 1.0 <= ci.low <= 2.0 <= ci.high <= 3.0 and ci.n_boot == 200
    mae = metrics.age_mae([50, 60, np.nan], [55, 50, 40], groups=["a", "b", "c"], n_boot=50)
    assert mae.estimate == pytest.approx(7.5) and 5 <= mae.low <= mae.high <= 10


def test_binary_auc_ci_drops_unknown():
    ci = metrics.binary_auc_ci([0, 1, -1, 1, 0], [0.1, 0.9, 0.99, 0.8, 0.3], n_boot=30)
    assert ci.estimate == 1.0


def test_roc_confusion_calibration():
    y = np.array([0, 1, 2, 2])
    proba = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.5, 0.1, 0.4]])
    curves = metrics.roc_curves(y, proba, ["A", "B", "C"])
    assert set(curves) == {"A", "B", "C"} and curves["A"]["auc"] == 1.0
    cm = metrics.confusion(y, proba, ["A", "B", "C"])
    assert cm.loc["C", "A"] == 1 and cm.loc["C", "C"] == 1 and cm.to_numpy().sum() == 4
    cal = metrics.calibration(y, proba, ["A", "B", "C"], n_bins=2)
    assert set(cal["class"]) == {"A", "B", "C"}
    assert cal["fraction_positive"].between(0, 1).all()


def test_vectorised_macro_ci_equals_bootstrapping_macro_auc():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 90)
    y[:5] = -1                                               # unknown labels are ignored
    proba = rng.dirichlet([1, 1, 1], 90) + 0.4 * np.eye(3)[np.clip(y, 0, 2)]
    groups = np.repeat(np.arange(30), 3)
    fast = metrics.macro_auc_ci(y, proba, ["A", "B", "C"], groups=groups, n_boot=60, seed=2)
    slow = metrics.bootstrap_ci(lambda a, b: metrics.macro_auc(a, b), y, proba, groups=groups,
                                n_boot=60, seed=2)
    assert fast.estimate == pytest.approx(slow.estimate)
    assert (fast.low, fast.high) == pytest.approx((slow.low, slow.high), abs=1e-12)
    assert (fast.n_boot, fast.n_skipped) == (slow.n_boot, slow.n_skipped)


def test_vectorised_macro_ci_skips_resamples_with_one_class():
    y, proba = np.array([0, 1]), np.eye(2)                   # two patients, one per class
    ci = metrics.macro_auc_ci(y, proba, n_boot=50, seed=0)
    drawn_both = (metrics.bootstrap_weights(None, 2, 50, seed=0) > 0).all(axis=1).sum()
    assert ci.estimate == 1.0 and ci.n_boot == drawn_both and ci.n_skipped == 50 - drawn_both
    assert 0 < drawn_both < 50 and (ci.low, ci.high) == (1.0, 1.0)
