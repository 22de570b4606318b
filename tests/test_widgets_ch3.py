"""cxrlab.widgets_ch3: the test-set-mix sampler, its metrics and the widget's callbacks (no browser)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from cxrlab.widgets_ch3 import MixWidget, mix_metrics, mix_test_set, mix_widget

CLASSES = ["A", "B", "C"]


def _test_set(n: int = 600, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Fabricated test rows and a model that is right for groups A and B, guesses for C."""
    rng = np.random.default_rng(seed)
    race = rng.choice(CLASSES, n)
    site = rng.choice(["site1", "site2"], n)
    no_finding = rng.random(n) < 0.6
    proba = np.full((n, 3), 1 / 3)
    for k, c in enumerate("AB"):
        proba[race == c] = 0.1
        proba[race == c, k] = 0.8
    proba[race == "C"] = rng.dirichlet([1, 1, 1], (race == "C").sum())
    df = pd.DataFrame({"race": race, "site": site, "no_finding": no_finding,
                       "patient_id": [f"p{i}" for i in range(n)]})
    return df, proba


def test_mix_test_set_hits_requested_counts():
    df, _ = _test_set()
    pos = mix_test_set(df, {"site1": 0.5, "site2": 0.8}, "A", prevalence=0.25, n=400, seed=1)
    drawn = df.iloc[pos]
    counts = drawn.groupby(["site", "race"]).size()
    assert counts["site1", "A"] == 100 and counts["site1", "B"] == 50 and counts["site1", "C"] == 50
    assert counts["site2", "A"] == 160 and counts["site2", "B"] == 20 and counts["site2", "C"] == 20
    # 25% of every (site, group) cell has a finding (no_finding False)
    assert (~drawn["no_finding"]).sum() == round(0.25 * 100) + 2 * round(0.25 * 50) + \
        round(0.25 * 160) + 2 * round(0.25 * 20)
    again = mix_test_set(df, {"site1": 0.5, "site2": 0.8}, "A", prevalence=0.25, n=400, seed=1)
    assert (again == pos).all()


def test_mix_test_set_rejects_bad_input():
    df, _ = _test_set(30)
    with pytest.raises(ValueError, match="focus group"):
        mix_test_set(df, {"site1": 0.5}, "Z")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mix_test_set(df, {"site1": 1.5}, "A")


def test_mix_metrics_hand_case():
    df = pd.DataFrame({"race": list("AABC"), "no_finding": [True, False, True, True]})
    proba = np.array([[.7, .2, .1], [.2, .7, .1], [.1, .8, .1], [.1, .1, .8]])
    t = mix_metrics(df, proba, CLASSES, np.arange(4))
    # A: one of two A images is called B -> error 0.5; B: right; no other group called A
    assert t.loc["A", "error_rate"] == 0.5 and t.loc["B", "error_rate"] == 0.0
    assert t.loc["B", "wrongly_assigned"] == pytest.approx(1 / 3)
    assert t.loc["A", "finding_prevalence"] == 0.5 and t.loc["all", "error_rate"] == 0.25
    assert t.loc["C", "auc"] == 1.0 and t.loc["all", "n"] == 4


def test_sliders_fire_the_callback():
    df, proba = _test_set()
    w = MixWidget(df, proba, CLASSES, focus_group="C", n=300, draw=False)
    assert set(w.sliders) == {"site1", "site2"}
    before = w.table.copy()
    for s in w.sliders.values():
        s.value = 0.9                      # fires the observer, as a learner's drag would
    assert w.table.loc["C", "share"] == pytest.approx(0.9, abs=0.01)
    # group C is guessed at random, so more C means a higher overall error rate
    assert w.table.loc["all", "error_rate"] > before.loc["all", "error_rate"]
    w.prevalence.value = 0.0
    assert w.table.loc["all", "finding_prevalence"] == 0.0
    assert w.settings() == {"site1": 0.9, "site2": 0.9, "prevalence": 0.0}


def test_widget_draws_figure_and_table():
    df, proba = _test_set(200)
    w = mix_widget(df, proba, CLASSES, n=120)
    first = w.figure.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n" and "error_rate" in w.summary.value
    w.sliders["site1"].value = 0.05
    assert w.figure.value != first
    with pytest.raises(ValueError, match="predictions"):
        MixWidget(df, proba[:10], CLASSES)
