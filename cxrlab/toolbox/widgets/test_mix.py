"""Chapter 3 widget: choose the test-set mix and watch AUC and per-group error rates move.

The same trained model, the same test images, only the mix changes: how common each group is
at each site and how common findings are. It starts on the **real test set** (every test image,
its own mix). Moving a slider redraws a subset of the real test rows, **without replacement**,
with the requested share of one group (the "focus" group) at every site and the requested
finding prevalence: the subset is as large as the scarcest (site, group, finding) cell allows,
and the widget says which cell that was and how many images it drew. Every AUC and error rate
comes with a 95% patient-bootstrap interval.

The callback is a plain function, :func:`mix_metrics` on :func:`mix_test_set`, and the widget's
``update`` is what the sliders' observers call, so tests set ``slider.value`` and read
``widget.table`` without a browser. :func:`mix_widget` builds and displays it (the widgets'
protocol: see :mod:`cxrlab.toolbox.widgets`).

>>> w = mix_widget(test, proba, S.classes)   # doctest: +SKIP
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxrlab.core import metrics
from cxrlab.core.plots import GREY, SYNTHETIC_GROUP_LABEL, colours
from cxrlab.toolbox.probes import encode_target
from cxrlab.toolbox.widgets import CourseWidget, shown


def _any_finding(test: pd.DataFrame, finding_col: str) -> np.ndarray:
    """True where an image has a finding (``no_finding`` False); missing counts as no finding."""
    values = test[finding_col].astype("boolean").fillna(True).to_numpy(dtype=bool)
    return ~values if finding_col == "no_finding" else values


@dataclass
class MixDraw:
    """A redrawn test set: ``positions`` into the test table and how it was limited."""

    positions: np.ndarray
    natural: bool = False
    limiting_cell: str | None = None
    empty_cells: list[str] = field(default_factory=list)
    n_test: int = 0

    def note(self) -> str:
        """One sentence for the widget: what was drawn and what limited it."""
        n = len(self.positions)
        if self.natural:
            return f"the real test set: all {n} test images, each once"
        text = (f"{n} of the {self.n_test} test images, drawn without replacement (no image twice)"
                + (f"; the scarcest cell, {self.limiting_cell}, limits the size" if self.limiting_cell else ""))
        if self.empty_cells:
            text += f"; no test image for {', '.join(self.empty_cells)}: left out"
        return text


def _cell_fractions(site_shares: Mapping[str, float], focus_group: str, others: Sequence[str],
                    prevalence: float | None) -> dict[tuple[str, str, bool | None], float]:
    """Requested share of the redrawn set per (site, group, finding) cell (finding None: any)."""
    out: dict[tuple[str, str, bool | None], float] = {}
    for s, share in site_shares.items():
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share for site {s!r} must lie in [0, 1], got {share}")
        per_group = {focus_group: share, **{g: (1 - share) / len(others) for g in others}}
        for g, frac in per_group.items():
            base = frac / len(site_shares)
            if prevalence is None:
                out[(str(s), g, None)] = base
            else:
                out[(str(s), g, True)] = base * prevalence
                out[(str(s), g, False)] = base * (1 - prevalence)
    return {k: v for k, v in out.items() if v > 0}


def _cell_name(key: tuple[str, str, bool | None]) -> str:
    s, g, f = key
    return f"{s} x {g}" + ("" if f is None else (" with a finding" if f else " without"))


def _largest_remainder(ideal: Mapping, caps: Mapping, total: int) -> dict:
    """Whole counts close to ``ideal`` summing to ``total`` (at most ``caps`` each)."""
    counts = {k: min(int(np.floor(v + 1e-9)), caps[k]) for k, v in ideal.items()}
    for k in sorted(ideal, key=lambda k: counts[k] - ideal[k]):
        if sum(counts.values()) >= total:
            break
        if counts[k] < caps[k]:
            counts[k] += 1
    return counts


def mix_test_set(test: pd.DataFrame, site_shares: Mapping[str, float] | None, focus_group: str,
                 prevalence: float | None = None, n: int | None = None, group_col: str = "race",
                 site_col: str = "site", finding_col: str = "no_finding", seed: int = 0) -> MixDraw:
    """A subset of the real test rows with the requested mix, drawn without replacement.

    ``site_shares=None`` is the real test set (every row once). Otherwise each site in
    ``site_shares`` contributes equally; ``site_shares[site]`` of its rows come from
    ``focus_group`` and the rest equally from the other groups; within each (site, group) cell a
    ``prevalence`` share has a finding (``None`` keeps the cell's own mix). The subset is the
    largest (at most ``n``, default all) that the scarcest cell allows; a cell with no test row
    at all is left out and named in the result.

    >>> t = pd.DataFrame({"race": list("AABBAABB"), "site": ["s1"] * 8, "no_finding": [True, False] * 4})
    >>> d = mix_test_set(t, {"s1": 0.5}, "A", prevalence=0.5)
    >>> sorted(t["race"].to_numpy()[d.positions].tolist()), len(set(d.positions))
    (['A', 'A', 'A', 'A', 'B', 'B', 'B', 'B'], 8)
    """
    groups = sorted(test[group_col].dropna().astype(str).unique())
    if focus_group not in groups:
        raise ValueError(f"focus group {focus_group!r} is not in the test set (groups: {groups})")
    if site_shares is None:
        return MixDraw(np.arange(len(test)), natural=True, n_test=len(test))
    others = [g for g in groups if g != focus_group]
    group = test[group_col].astype(str).to_numpy()
    site = test[site_col].astype(str).to_numpy()
    finding = _any_finding(test, finding_col)
    fractions = _cell_fractions(site_shares, focus_group, others, prevalence)
    pools = {k: np.flatnonzero((site == k[0]) & (group == k[1])
                               & (True if k[2] is None else finding == k[2])) for k in fractions}
    empty = [_cell_name(k) for k, pool in pools.items() if len(pool) == 0]
    usable = {k: f for k, f in fractions.items() if len(pools[k])}
    if not usable:
        return MixDraw(np.zeros(0, int), empty_cells=empty, n_test=len(test))
    total = sum(usable.values())
    capacity = {k: len(pools[k]) / (f / total) for k, f in usable.items()}
    limit = min(capacity, key=capacity.get)
    size = min(capacity[limit], float(n) if n is not None else float(len(test)))
    rng = np.random.default_rng(seed)
    counts = _largest_remainder({k: f / total * size for k, f in usable.items()},
                                {k: len(pools[k]) for k in usable}, int(np.floor(size + 1e-9)))
    picks = [rng.choice(pools[k], size=counts[k], replace=False) for k in usable]
    return MixDraw(np.sort(np.concatenate(picks)).astype(int),
                   limiting_cell=_cell_name(limit) if capacity[limit] <= size + 1e-9 else None,
                   empty_cells=empty, n_test=len(test))


def _rate_ci(wrong: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """95% bootstrap interval of a mean of 0/1 ``wrong`` under ``(B, n)`` resample weights."""
    if not len(wrong) or not len(weights):
        return float("nan"), float("nan")
    totals = weights.sum(axis=1)
    usable = totals > 0
    rates = (weights[usable] * wrong).sum(axis=1) / totals[usable]
    if not len(rates):
        return float("nan"), float("nan")
    low, high = np.percentile(rates, [2.5, 97.5])
    return float(low), float(high)


def mix_metrics(test: pd.DataFrame, proba: np.ndarray, classes: Sequence[str],
                positions: np.ndarray, target: str = "race",
                finding_col: str = "no_finding", n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """Per-group metrics of a model on the rows at ``positions``, with 95% intervals.

    Columns: ``n``, ``share`` of the redrawn set, ``finding_prevalence``, one-vs-rest ``auc``
    (``auc_low``, ``auc_high``), ``error_rate`` (images of the group given another group:
    1 - recall at the arg-max; ``error_low``, ``error_high``) and ``wrongly_assigned`` (images
    of other groups given this one). The last row, ``all``, holds the macro AUC and the overall
    error rate. Intervals resample patients (``patient_id``; images if the column is absent).
    The AUCs are :func:`cxrlab.core.metrics.auc_table`'s and :func:`~cxrlab.core.metrics.macro_auc_ci`'s:
    a group without images, or alone in the set, has no AUC (NaN here; :func:`undefined_note`
    says why in a sentence).
    """
    positions = np.asarray(positions, dtype=int)
    y = encode_target(test[target].to_numpy()[positions], classes)
    p = np.asarray(proba, dtype=float)[positions]
    finding = _any_finding(test, finding_col)[positions]
    patients = (test["patient_id"].astype(str).to_numpy()[positions]
                if "patient_id" in test else None)
    weights = metrics.bootstrap_weights(patients, len(y), n_boot, seed)
    pred = p.argmax(1) if len(p) else np.zeros(0, int)
    valid = y >= 0
    valid_patients = None if patients is None else patients[valid]
    aucs = metrics.auc_table(y[valid], p[valid], classes, valid_patients, n_boot, seed,
                             report_skipped=False)
    rows = []
    for k, c in enumerate(classes):
        mine, others = y == k, valid & (y != k)
        auc, auc_low, auc_high = aucs.loc[k, ["auc", "ci_low", "ci_high"]].astype(float)
        wrong = (pred[mine] != k).astype(float)
        err_low, err_high = _rate_ci(wrong, weights[:, mine])
        rows.append({
            "group": str(c), "n": int(mine.sum()),
            "share": float(mine.mean()) if len(y) else float("nan"),
            "finding_prevalence": float(finding[mine].mean()) if mine.any() else float("nan"),
            "auc": auc, "auc_low": auc_low, "auc_high": auc_high,
            "error_rate": float(wrong.mean()) if mine.any() else float("nan"),
            "error_low": err_low, "error_high": err_high,
            "wrongly_assigned": float((pred[others] == k).mean()) if others.any() else float("nan"),
        })
    two_groups = len(np.unique(y[valid])) >= 2
    macro = (metrics.macro_auc_ci(y[valid], p[valid], groups=valid_patients, n_boot=n_boot,
                                  seed=seed) if two_groups else None)
    wrong_all = (pred[valid] != y[valid]).astype(float)
    err_low, err_high = _rate_ci(wrong_all, weights[:, valid])
    rows.append({"group": "all", "n": int(valid.sum()), "share": 1.0,
                 "finding_prevalence": float(finding[valid].mean()) if valid.any() else float("nan"),
                 "auc": macro.estimate if macro else float("nan"),
                 "auc_low": macro.low if macro else float("nan"),
                 "auc_high": macro.high if macro else float("nan"),
                 "error_rate": float(wrong_all.mean()) if valid.any() else float("nan"),
                 "error_low": err_low, "error_high": err_high, "wrongly_assigned": float("nan")})
    return pd.DataFrame(rows).set_index("group")


def undefined_note(table: pd.DataFrame) -> str:
    """The sentence naming the groups whose AUC is undefined in a :func:`mix_metrics` table
    ("" if none): :func:`cxrlab.core.metrics.undefined_auc_note`, the course's one rule."""
    groups = table.drop(index="all", errors="ignore")
    total = int(groups["n"].sum())
    as_auc_table = pd.DataFrame({"class": groups.index, "auc": groups["auc"].to_numpy(),
                                 "n_pos": groups["n"].to_numpy(), "n_neg": total - groups["n"].to_numpy()})
    return metrics.undefined_auc_note(as_auc_table, what="the set")


class MixWidget(CourseWidget):
    """Sliders for the test-set mix; ``table`` (also ``result``) holds the metrics for the
    current setting.

    ``sliders`` maps each site to its focus-group share slider; ``prevalence`` is the finding
    prevalence slider; ``reset`` returns to the real test set. It starts on the real test set
    (``draw_info.natural``). Every slider change calls :meth:`update`, which redraws a subset
    without replacement (:func:`mix_test_set`), recomputes :func:`mix_metrics` with intervals
    and refreshes the figure (``figure``, an ``ipywidgets.Image``) and the table and note
    (``summary``).
    """

    def __init__(self, test: pd.DataFrame, proba: np.ndarray, classes: Sequence[str],
                 focus_group: str | None = None, n: int | None = None, target: str = "race",
                 site_col: str = "site", finding_col: str = "no_finding", seed: int = 0,
                 draw: bool = True, n_boot: int = 200, group_label: str = SYNTHETIC_GROUP_LABEL) -> None:
        from ipywidgets import Button, FloatSlider, HBox, HTML, Image, VBox

        if len(test) != len(proba):
            raise ValueError(f"{len(test)} test rows but {len(proba)} predictions")
        self.test = test.reset_index(drop=True)
        self.proba, self.classes = np.asarray(proba), [str(c) for c in classes]
        self.focus = focus_group or self.classes[0]
        self.n, self.target, self.site_col, self.finding_col = n, target, site_col, finding_col
        self.seed, self.draw, self.n_boot, self.group_label = seed, draw, n_boot, group_label
        sites = sorted(self.test[site_col].dropna().astype(str).unique())
        natural = self.test.groupby(site_col)[target].apply(
            lambda s: float((s.astype(str) == self.focus).mean()))
        self.natural_values = {s: round(float(natural.get(s, 0.5)), 2) for s in sites}
        self.sliders = {s: FloatSlider(value=self.natural_values[s], min=0.0, max=1.0,
                                       step=0.05, description=f"{s}: {self.focus}",
                                       continuous_update=False) for s in sites}
        self.natural_prevalence = round(float(_any_finding(self.test, finding_col).mean()), 2)
        self.prevalence = FloatSlider(value=self.natural_prevalence, min=0.0, max=1.0, step=0.05,
                                      description="findings", continuous_update=False)
        self.reset = Button(description="real test mix")
        self.figure = Image(format="png")
        self.summary = HTML()
        self.natural = True
        for w in [*self.sliders.values(), self.prevalence]:
            w.observe(self.update, names="value")
        self.reset.on_click(self.show_natural)
        controls = VBox([HTML(f"<b>Share of group {self.focus} at each site</b>"),
                         *self.sliders.values(), HTML("<b>Finding prevalence</b>"),
                         self.prevalence, self.reset])
        self.widget = HBox([controls, VBox([self.figure, self.summary])])
        self.table = pd.DataFrame()
        self.draw_info = MixDraw(np.zeros(0, int))
        self._recompute()

    @property
    def result(self) -> pd.DataFrame:
        """The metrics table for the current setting (:func:`mix_metrics`)."""
        return self.table

    def settings(self) -> dict[str, float]:
        """Current slider values: ``{site: share, ..., "prevalence": p}``."""
        return {**{s: float(w.value) for s, w in self.sliders.items()},
                "prevalence": float(self.prevalence.value)}

    def show_natural(self, _button: object = None) -> pd.DataFrame:
        """Back to the real test set; the sliders show its own shares."""
        for s, w in self.sliders.items():
            w.unobserve(self.update, names="value")
            w.value = self.natural_values[s]
            w.observe(self.update, names="value")
        self.prevalence.unobserve(self.update, names="value")
        self.prevalence.value = self.natural_prevalence
        self.prevalence.observe(self.update, names="value")
        self.natural = True
        return self._recompute()

    def update(self, change: object = None) -> pd.DataFrame:
        """A slider moved: redraw the test set for the current sliders, recompute the metrics."""
        self.natural = False
        return self._recompute()

    def _recompute(self) -> pd.DataFrame:
        shares = None if self.natural else {s: float(w.value) for s, w in self.sliders.items()}
        self.draw_info = mix_test_set(self.test, shares, self.focus, float(self.prevalence.value),
                                      self.n, self.target, self.site_col, self.finding_col, self.seed)
        self.table = mix_metrics(self.test, self.proba, self.classes, self.draw_info.positions,
                                 self.target, self.finding_col, self.n_boot, self.seed)
        self.summary.value = f"<p>{self.note()}</p>" + self.table.round(3).to_html(na_rep="n/a")
        if self.draw:
            self.show_figure(draw_mix(self.table, group_label=self.group_label))
        return self.table

    def note(self) -> str:
        """What the current table was computed on, and any undefined AUC."""
        drawn = self.draw_info.note()
        return " ".join(t for t in (drawn[:1].upper() + drawn[1:] + ".",
                                    undefined_note(self.table)) if t)



def draw_mix(table: pd.DataFrame, group_label: str = SYNTHETIC_GROUP_LABEL) -> Figure:
    """Bar charts of AUC and error rate per group with 95% intervals ("n/a" where undefined)."""
    t = table.drop(index="all", errors="ignore")
    fig = Figure(figsize=(7, 2.8))
    axes = fig.subplots(1, 2)
    for ax, col, low, high, ylabel, title in (
            (axes[0], "auc", "auc_low", "auc_high", "one-vs-rest AUC (95% CI)", "AUC per group"),
            (axes[1], "error_rate", "error_low", "error_high", "error rate (95% CI)",
             "misclassified, per group")):
        values = t[col].to_numpy(float)
        err = np.nan_to_num(np.vstack([values - t[low].to_numpy(float),
                                       t[high].to_numpy(float) - values]))
        ax.bar(t.index, np.nan_to_num(values), yerr=np.clip(err, 0, None), capsize=3,
               color=colours(len(t)))
        for i, v in enumerate(values):
            if not np.isfinite(v):
                ax.text(i, 0.05, "n/a", ha="center")
        ax.set(ylim=(0.0, 1.0), ylabel=ylabel, title=title, xlabel=group_label)
    axes[0].axhline(0.5, color=GREY, lw=0.8, ls="--")
    fig.tight_layout()
    return fig


def mix_widget(test: pd.DataFrame, proba: np.ndarray, classes: Sequence[str],
               focus_group: str | None = None, draw: bool = True, **kwargs: object) -> MixWidget:
    """Build chapter 3's test-set-mix widget and display it (``draw=False``: neither displayed
    nor drawn, for tests); keyword arguments go to :class:`MixWidget`."""
    return shown(MixWidget(test, proba, classes, focus_group, draw=draw, **kwargs))
