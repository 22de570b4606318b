"""cxrlab.toolbox.widgets.test_mix: the test-set-mix sampler, its metrics and the widget's callbacks (no browser)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from cxrlab.toolbox.widgets.test_mix import MixWidget, mix_metrics, mix_test_set, mix_widget

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


def test_mix_test_set_hits_requested_shares_without_replacement():
    df, _ = _test_set()
    d = mix_test_set(df, {"site1": 0.5, "site2": 0.8}, "A", prevalence=0.25, seed=1)
    assert len(set(d.positions)) == len(d.positions)            # no image twice
    drawn = df.iloc[d.positions]
    counts = drawn.groupby(["site", "race"]).size()
    per_site = counts.groupby(level="site").sum()
    assert counts["site1", "A"] / per_site["site1"] == pytest.approx(0.5, abs=0.02)
    assert counts["site2", "A"] / per_site["site2"] == pytest.approx(0.8, abs=0.02)
    assert counts["site2", "B"] == pytest.approx(counts["site2", "C"], abs=1)
    assert (~drawn["no_finding"]).mean() == pytest.approx(0.25, abs=0.02)
    # the scarcest cell is used up (or nearly): the subset is as large as the data allow
    assert d.limiting_cell is not None and "without replacement" in d.note()
    site, rest = d.limiting_cell.split(" x ")
    group, finding = rest.split(" ", 1)
    pool = df[(df.site == site) & (df.race == group) & (df.no_finding == (finding == "without"))]
    assert len(drawn.index.intersection(pool.index)) >= len(pool) - 1
    again = mix_test_set(df, {"site1": 0.5, "site2": 0.8}, "A", prevalence=0.25, seed=1)
    assert (again.positions == d.positions).all()


def test_natural_mix_is_the_real_test_set():
    df, _ = _test_set(100)
    d = mix_test_set(df, None, "A")
    assert d.natural and (d.positions == np.arange(100)).all() and "all 100" in d.note()


def test_empty_cell_is_named_not_silently_filled():
    df = pd.DataFrame({"race": list("AABB"), "site": ["s1", "s2", "s1", "s1"], "no_finding": [True] * 4})
    d = mix_test_set(df, {"s1": 0.5, "s2": 0.5}, "A")
    assert d.empty_cells == ["s2 x B"] and "s2 x B" in d.note()


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


def test_mix_metrics_has_intervals_around_the_estimates():
    df, proba = _test_set(300)
    t = mix_metrics(df, proba, CLASSES, np.arange(300), n_boot=100)
    for lo, est, hi in (("auc_low", "auc", "auc_high"), ("error_low", "error_rate", "error_high")):
        assert (t[lo] <= t[est] + 1e-9).all() and (t[est] <= t[hi] + 1e-9).all()
    assert t.loc["C", "error_high"] - t.loc["C", "error_low"] > 0.05    # C is guessed: wide


def test_sliders_fire_the_callback_and_start_on_the_real_mix():
    df, proba = _test_set()
    w = MixWidget(df, proba, CLASSES, focus_group="C", draw=False, n_boot=50)
    assert set(w.sliders) == {"site1", "site2"}
    assert w.draw_info.natural and w.table.loc["all", "n"] == len(df)
    assert w.table.loc["C", "n"] == (df.race == "C").sum()
    before = w.table.copy()
    for s in w.sliders.values():
        s.value = 0.9                      # fires the observer, as a learner's drag would
    assert not w.draw_info.natural
    assert w.table.loc["C", "share"] == pytest.approx(0.9, abs=0.01)
    # group C is guessed at random, so more C means a higher overall error rate
    assert w.table.loc["all", "error_rate"] > before.loc["all", "error_rate"]
    w.prevalence.value = 0.0
    assert w.table.loc["all", "finding_prevalence"] == 0.0
    assert w.settings() == {"site1": 0.9, "site2": 0.9, "prevalence": 0.0}
    w.reset.click()
    assert w.draw_info.natural and w.table.equals(before)


def test_all_sliders_at_one_says_why_the_auc_is_missing():
    df, proba = _test_set(200)
    w = MixWidget(df, proba, CLASSES, draw=False, n_boot=20)
    for s in w.sliders.values():
        s.value = 1.0
    assert w.table.loc[["B", "C"], "n"].eq(0).all() and w.table["auc"].isna().all()
    assert "No AUC for A, B, C: the set holds images of A only and no image of B, C" in w.note()
    assert "site1 x A" in w.note() or "site2 x A" in w.note()        # group names keep their case


def test_widget_draws_figure_and_table():
    df, proba = _test_set(200)
    w = MixWidget(df, proba, CLASSES, n_boot=20)
    first = w.figure.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n" and "error_rate" in w.summary.value
    assert "real test set" in w.summary.value
    w.sliders["site1"].value = 0.05
    assert w.figure.value != first and "without replacement" in w.summary.value
    with pytest.raises(ValueError, match="predictions"):
        MixWidget(df, proba[:10], CLASSES)
