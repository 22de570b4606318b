"""Chapter 5's threshold widget: move the operating point, watch each group's error rates.

The slider sets the *target underdiagnosis rate* (false-positive rate of "No Finding"), the
toggle chooses how thresholds are set:

* **one global threshold**: the same cut-off for everyone, chosen so that the overall
  underdiagnosis rate meets the target (what Glocker et al. 2023, eBioMedicine 89:104467, do
  with a global threshold at FPR 0.2); groups then end up with different rates;
* **per-group thresholds**: each group gets its own cut-off so that *its* rate meets the
  target; rates equalise, but patients with the same image score are now treated differently
  according to their group, which is why the practice is contested.

The figure shows per-group underdiagnosis and overdiagnosis bars with the target as a line,
and the summary gives thresholds and overall accuracy. All logic lives in plain functions
(:func:`summary_html`, :func:`draw_operating_point`) and in :meth:`ThresholdExplorer.update`,
so tests drive the widget by setting ``.value`` without a browser. The figure is a PNG in an
``ipywidgets.Image`` (no ``Output`` capture, which strict nbval cannot compare).
:func:`threshold_widget` builds and displays it (the widgets' protocol: see
:mod:`cxrlab.toolbox.widgets`).

>>> import numpy as np
>>> w = threshold_widget(np.array([True, False, True, False]), np.array([0.9, 0.3, 0.8, 0.6]),
...                      np.array(["A", "A", "B", "B"]), target_fpr=0.0, draw=False)
>>> w.toggle.value = "per_group"; w.result.mode
'per_group'
"""
from __future__ import annotations

import html
from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from cxrlab.core.plots import SYNTHETIC_GROUP_LABEL, colours
from cxrlab.toolbox.fairness import OperatingPoint, operating_point
from cxrlab.toolbox.widgets import CourseWidget, shown

MODES = (("one global threshold", "global"), ("per-group thresholds", "per_group"))


def draw_operating_point(point: OperatingPoint, ax: Any = None,
                         group_label: str = SYNTHETIC_GROUP_LABEL) -> Any:
    """Grouped bars of underdiagnosis and overdiagnosis per group, target as a dashed line.

    Returns the axes (a new figure's when ``ax`` is None).
    """
    under_colour, over_colour = colours(2)
    if ax is None:
        ax = Figure(figsize=(6.4, 3.0)).subplots()
    table = point.per_group
    x = np.arange(len(table))
    width = 0.38
    ax.bar(x - width / 2, table["underdiagnosis"], width, label="underdiagnosis (FPR of No Finding)",
           color=under_colour)
    ax.bar(x + width / 2, table["overdiagnosis"], width, label="overdiagnosis (FNR of No Finding)",
           color=over_colour)
    ax.axhline(point.target_fpr, color="0.3", linestyle="--", linewidth=1, label="target")
    ax.set_xticks(x)
    ax.set_xticklabels([str(k) for k in table.index])
    ax.set_ylim(0, 1)
    ax.set_xlabel(group_label)
    ax.set_ylabel("rate")
    mode = dict((v, k) for k, v in MODES)[point.mode]
    ax.set_title(f"{mode}: accuracy {point.accuracy:.3f}")
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    return ax


def summary_html(point: OperatingPoint) -> str:
    """A small HTML table: threshold, underdiagnosis, overdiagnosis and n per group, plus accuracy."""
    rows = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{r['threshold']:.3f}</td>"
        f"<td>{r['underdiagnosis']:.3f}</td><td>{r['overdiagnosis']:.3f}</td>"
        f"<td>{int(r['n'])}</td></tr>"
        for k, r in point.per_group.iterrows())
    spread = point.per_group["underdiagnosis"].max() - point.per_group["underdiagnosis"].min()
    return (f"<p><b>{html.escape(point.summary())}</b><br>largest gap in underdiagnosis "
            f"between groups: {spread:.3f}</p>"
            "<table><tr><th>group</th><th>threshold</th><th>underdiagnosis</th>"
            f"<th>overdiagnosis</th><th>n</th></tr>{rows}</table>")


class ThresholdExplorer(CourseWidget):
    """Slider (target underdiagnosis rate) + toggle (global / per-group) + figure + summary.

    ``no_finding_true`` is the label to audit against, ``proba`` the model's "No Finding"
    score, ``groups`` one group label per row; ``fit`` (labels, scores, groups) are the rows
    the thresholds are chosen on (default: the audited rows themselves). :func:`threshold_widget`
    builds and displays it. ``explorer.point`` (also ``result``) is the current
    :class:`OperatingPoint`.
    """

    def __init__(self, no_finding_true: Any, proba: Any, groups: Any, target_fpr: float = 0.2,
                 mode: str = "global", draw: bool = True, fit: tuple[Any, Any, Any] | None = None,
                 group_label: str = SYNTHETIC_GROUP_LABEL) -> None:
        self._data = (np.asarray(no_finding_true, dtype=bool), np.asarray(proba, dtype=float),
                      np.asarray(groups, dtype=object))
        self._fit, self._group_label = fit, group_label
        self.draw = draw
        self.slider = widgets.FloatSlider(
            value=target_fpr, min=0.01, max=0.6, step=0.01, continuous_update=False,
            description="target underdiagnosis", style={"description_width": "initial"},
            layout=widgets.Layout(width="420px"))
        self.toggle = widgets.ToggleButtons(options=MODES, value=mode, description="thresholds")
        self.summary = widgets.HTML()
        self.figure = widgets.Image(format="png")
        self.point: OperatingPoint | None = None
        self.slider.observe(self._on_change, names="value")
        self.toggle.observe(self._on_change, names="value")
        self.widget = widgets.VBox([widgets.HBox([self.slider, self.toggle]), self.figure,
                                    self.summary])
        self.update()

    @property
    def result(self) -> OperatingPoint | None:
        """The operating point for the current slider and toggle."""
        return self.point

    def _on_change(self, _change: Any = None) -> None:
        self.update()

    def update(self, change: object = None) -> OperatingPoint:
        """Recompute the operating point from the controls and refresh summary and figure."""
        y, s, g = self._data
        self.point = operating_point(y, s, g, float(self.slider.value), self.toggle.value, self._fit)
        self.summary.value = summary_html(self.point)
        if self.draw:
            ax = draw_operating_point(self.point, group_label=self._group_label)
            ax.figure.tight_layout()
            self.show_figure(ax.figure)
        return self.point


def threshold_widget(no_finding_true: Any, proba: Any, groups: Any, target_fpr: float = 0.2,
                     mode: str = "global", fit: tuple[Any, Any, Any] | None = None,
                     group_label: str = SYNTHETIC_GROUP_LABEL, draw: bool = True) -> ThresholdExplorer:
    """Build chapter 5's threshold explorer and display it (``draw=False``: neither displayed
    nor drawn, for tests); see :class:`ThresholdExplorer`. ``fit`` = ``(labels, scores,
    groups)`` of the rows the thresholds are chosen on (the validation split with recorded
    labels), measured on the rows given first."""
    return shown(ThresholdExplorer(no_finding_true, proba, groups, target_fpr, mode, draw, fit,
                                   group_label))
