"""The chapter-5 threshold widget, driven without a browser by setting ``.value``."""
from __future__ import annotations

import numpy as np
import pytest

from cxrlab.core.plots import figure_png
from cxrlab.toolbox import fairness as F
from cxrlab.toolbox.widgets import threshold as W


@pytest.fixture()
def cohort():
    rng = np.random.default_rng(0)
    n = 600
    g = rng.choice(list("ABC"), n)
    healthy = rng.random(n) < 0.45
    shift = np.where(g == "B", 0.8, 0.0)             # B's sick patients look healthier
    score = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + np.where(healthy, 1.5, -1.0 + shift))))
    return healthy, score, g


def test_initial_state_matches_library(cohort):
    y, s, g = cohort
    w = W.ThresholdExplorer(y, s, g, target_fpr=0.2)
    ref = F.operating_point(y, s, g, 0.2, "global")
    assert w.point.thresholds == ref.thresholds
    assert w.point.accuracy == pytest.approx(ref.accuracy)
    assert w.figure.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert "accuracy" in w.summary.value and "<table>" in w.summary.value


def test_slider_moves_operating_point(cohort):
    y, s, g = cohort
    w = W.ThresholdExplorer(y, s, g, target_fpr=0.1)
    low_t, low_png = w.point.thresholds["A"], w.figure.value
    w.slider.value = 0.4
    assert w.point.target_fpr == pytest.approx(0.4)
    assert w.point.thresholds["A"] < low_t               # higher target -> lower cut-off
    assert w.point.underdiagnosis <= 0.4 + 1e-12
    assert w.figure.value != low_png
    assert "0.40" in w.summary.value


def test_toggle_switches_to_per_group_thresholds(cohort):
    y, s, g = cohort
    w = W.ThresholdExplorer(y, s, g, target_fpr=0.2)
    assert w.point.per_group.loc["B", "underdiagnosis"] > 0.2
    w.toggle.value = "per_group"
    assert w.point.mode == "per_group"
    assert len(set(w.point.thresholds.values())) == 3
    assert (w.point.per_group["underdiagnosis"] <= 0.2 + 1e-12).all()
    assert "per_group" in w.summary.value


def test_summary_and_figure_are_plain_functions(cohort):
    y, s, g = cohort
    point = F.operating_point(y, s, g, 0.3, "per_group")
    html = W.summary_html(point)
    assert html.count("<tr>") == 4                        # header + three groups
    ax = W.draw_operating_point(point)
    assert ax.get_title().startswith("per-group thresholds")
    assert ax.get_ylabel() == "rate" and len(ax.patches) == 6
    assert figure_png(ax.figure).startswith(b"\x89PNG")


def test_widget_container_and_factory(cohort):
    y, s, g = cohort
    w = W.threshold_widget(y, s, g, 0.15, mode="per_group", draw=False)
    assert w.widget.children[1] is w.figure
    assert w.toggle.value == "per_group"


def test_thresholds_chosen_on_fit_rows_and_measured_on_audit_rows(cohort):
    y, s, g = cohort
    fit = (y[:300], s[:300], g[:300])
    w = W.threshold_widget(y[300:], s[300:], g[300:], 0.2, fit=fit, group_label="self-reported race",
                           draw=False)
    ref = F.operating_point(y[300:], s[300:], g[300:], 0.2, "global", fit=fit)
    assert w.point.thresholds == ref.thresholds == {k: F.threshold_at_fpr(*fit[:2], 0.2) for k in "ABC"}
    w.toggle.value = "per_group"
    assert w.point.thresholds == F.per_group_thresholds(*fit, 0.2)
    assert W.draw_operating_point(w.point, group_label="self-reported race").get_xlabel() == "self-reported race"
