"""Chapter 3 widget: choose the test-set mix and watch AUC and per-group error rates move.

The same trained model, the same test images, only the mix changes: how common each group is
at each site and how common findings are. Sliders set the share of one group (the "focus"
group) at every site and the finding prevalence; the test set is redrawn (with replacement,
fixed seed) from the real test rows that match each (site, group, finding) cell.

The callback is a plain function, :func:`mix_metrics` on :func:`mix_test_set`, and the widget's
``update`` is what the sliders' observers call, so tests set ``slider.value`` and read
``widget.table`` without a browser.

>>> w = MixWidget(test, proba, S.classes)   # doctest: +SKIP
>>> w.widget                                     # doctest: +SKIP
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cxrlab.probes import binary_auc, encode_target, macro_ovr_auc


def _any_finding(test: pd.DataFrame, finding_col: str) -> np.ndarray:
    """True where an image has a finding (``no_finding`` False); missing counts as no finding."""
    values = test[finding_col].astype("boolean").fillna(True).to_numpy(dtype=bool)
    return ~values if finding_col == "no_finding" else values


def mix_test_set(test: pd.DataFrame, site_shares: Mapping[str, float], focus_group: str,
                 prevalence: float | None = None, n: int = 600, group_col: str = "race",
                 site_col: str = "site", finding_col: str = "no_finding", seed: int = 0
                 ) -> np.ndarray:
    """Positions (into ``test``) of a redrawn test set with the requested mix.

    Each site in ``site_shares`` gets ``n / len(site_shares)`` images; ``site_shares[site]`` of
    them from ``focus_group`` and the rest split equally between the other groups. Within each
    (site, group) cell a ``prevalence`` share has a finding (``None`` keeps the cell's own
    prevalence). Images are drawn with replacement from the matching test rows; a cell with no
    matching rows is left out.

    >>> t = pd.DataFrame({"race": list("AABB"), "site": ["s1"] * 4, "no_finding": [True, False] * 2})
    >>> pos = mix_test_set(t, {"s1": 0.5}, "A", prevalence=0.5, n=8)
    >>> sorted(t["race"].to_numpy()[pos].tolist())
    ['A', 'A', 'A', 'A', 'B', 'B', 'B', 'B']
    """
    rng = np.random.default_rng(seed)
    groups = sorted(test[group_col].dropna().astype(str).unique())
    if focus_group not in groups:
        raise ValueError(f"focus group {focus_group!r} is not in the test set (groups: {groups})")
    others = [g for g in groups if g != focus_group]
    group = test[group_col].astype(str).to_numpy()
    site = test[site_col].astype(str).to_numpy()
    finding = _any_finding(test, finding_col)
    per_site = n // max(len(site_shares), 1)
    picks: list[np.ndarray] = []
    for s, share in site_shares.items():
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share for site {s!r} must lie in [0, 1], got {share}")
        n_focus = int(round(share * per_site))
        counts = {focus_group: n_focus}
        rest = per_site - n_focus
        for i, g in enumerate(others):
            counts[g] = rest // len(others) + (1 if i < rest % len(others) else 0)
        for g, k in counts.items():
            picks.append(_draw_cell((site == str(s)) & (group == g), finding, k, prevalence, rng))
    return np.concatenate(picks) if picks else np.zeros(0, int)


def _draw_cell(cell: np.ndarray, finding: np.ndarray, k: int, prevalence: float | None,
               rng: np.random.Generator) -> np.ndarray:
    """Draw ``k`` positions from ``cell`` with the requested finding prevalence (with replacement)."""
    pool = np.flatnonzero(cell)
    if k <= 0 or len(pool) == 0:
        return np.zeros(0, int)
    if prevalence is None:
        return rng.choice(pool, size=k, replace=True)
    n_pos = int(round(prevalence * k))
    pos_pool, neg_pool = pool[finding[pool]], pool[~finding[pool]]
    parts = []
    for sub, m in ((pos_pool, n_pos), (neg_pool, k - n_pos)):
        source = sub if len(sub) else pool
        parts.append(rng.choice(source, size=m, replace=True))
    return np.concatenate(parts)


def mix_metrics(test: pd.DataFrame, proba: np.ndarray, classes: Sequence[str],
                positions: np.ndarray, target: str = "race",
                finding_col: str = "no_finding") -> pd.DataFrame:
    """Per-group metrics of a model on the rows at ``positions``.

    Columns: ``n``, ``share`` of the redrawn set, ``finding_prevalence``, one-vs-rest ``auc``,
    ``error_rate`` (images of the group given another group: 1 - recall at the arg-max) and
    ``wrongly_assigned`` (images of other groups given this one: the false-positive rate).
    The last row, ``all``, holds the macro AUC and the overall error rate.
    """
    y = encode_target(test[target].to_numpy()[positions], classes)
    p = np.asarray(proba, dtype=float)[positions]
    finding = _any_finding(test, finding_col)[positions]
    pred = p.argmax(1) if len(p) else np.zeros(0, int)
    rows = []
    for k, c in enumerate(classes):
        mine, others = y == k, (y >= 0) & (y != k)
        rows.append({
            "group": str(c), "n": int(mine.sum()),
            "share": float(mine.mean()) if len(y) else float("nan"),
            "finding_prevalence": float(finding[mine].mean()) if mine.any() else float("nan"),
            "auc": binary_auc(mine, p[:, k]) if len(y) else float("nan"),
            "error_rate": float((pred[mine] != k).mean()) if mine.any() else float("nan"),
            "wrongly_assigned": float((pred[others] == k).mean()) if others.any() else float("nan"),
        })
    valid = y >= 0
    rows.append({"group": "all", "n": int(valid.sum()), "share": 1.0,
                 "finding_prevalence": float(finding[valid].mean()) if valid.any() else float("nan"),
                 "auc": macro_ovr_auc(y[valid], p[valid]) if valid.any() else float("nan"),
                 "error_rate": float((pred[valid] != y[valid]).mean()) if valid.any() else float("nan"),
                 "wrongly_assigned": float("nan")})
    return pd.DataFrame(rows).set_index("group")


class MixWidget:
    """Sliders for the test-set mix; ``table`` holds the metrics for the current setting.

    ``sliders`` maps each site to its focus-group share slider; ``prevalence`` is the finding
    prevalence slider. Every change calls :meth:`update`, which redraws the test set, recomputes
    :func:`mix_metrics` and redraws the figure (``figure``, an ``ipywidgets.Image``, so
    nothing is captured in an ``Output``) and the table (``summary``).
    """

    def __init__(self, test: pd.DataFrame, proba: np.ndarray, classes: Sequence[str],
                 focus_group: str | None = None, n: int = 600, target: str = "race",
                 site_col: str = "site", finding_col: str = "no_finding", seed: int = 0,
                 draw: bool = True) -> None:
        import ipywidgets as W

        if len(test) != len(proba):
            raise ValueError(f"{len(test)} test rows but {len(proba)} predictions")
        self.test = test.reset_index(drop=True)
        self.proba, self.classes = np.asarray(proba), [str(c) for c in classes]
        self.focus = focus_group or self.classes[0]
        self.n, self.target, self.site_col, self.finding_col = n, target, site_col, finding_col
        self.seed, self.draw = seed, draw
        sites = sorted(self.test[site_col].dropna().astype(str).unique())
        natural = self.test.groupby(site_col)[target].apply(
            lambda s: float((s.astype(str) == self.focus).mean()))
        self.sliders = {s: W.FloatSlider(value=round(natural.get(s, 0.5), 2), min=0.0, max=1.0,
                                         step=0.05, description=f"{s}: {self.focus}",
                                         continuous_update=False) for s in sites}
        base_prev = float(_any_finding(self.test, finding_col).mean())
        self.prevalence = W.FloatSlider(value=round(base_prev, 2), min=0.0, max=1.0, step=0.05,
                                        description="findings", continuous_update=False)
        self.figure = W.Image(format="png")
        self.summary = W.HTML()
        for w in [*self.sliders.values(), self.prevalence]:
            w.observe(self.update, names="value")
        controls = W.VBox([W.HTML(f"<b>Share of group {self.focus} at each site</b>"),
                           *self.sliders.values(), W.HTML("<b>Finding prevalence</b>"),
                           self.prevalence])
        self.widget = W.HBox([controls, W.VBox([self.figure, self.summary])])
        self.table = pd.DataFrame()
        self.update()

    def settings(self) -> dict[str, float]:
        """Current slider values: ``{site: share, ..., "prevalence": p}``."""
        return {**{s: float(w.value) for s, w in self.sliders.items()},
                "prevalence": float(self.prevalence.value)}

    def update(self, change: object = None) -> pd.DataFrame:
        """Redraw the test set for the current sliders and recompute the metrics."""
        shares = {s: float(w.value) for s, w in self.sliders.items()}
        positions = mix_test_set(self.test, shares, self.focus, float(self.prevalence.value),
                                 self.n, self.target, self.site_col, self.finding_col, self.seed)
        self.table = mix_metrics(self.test, self.proba, self.classes, positions, self.target,
                                 self.finding_col)
        if self.draw:
            self._render()
        return self.table

    def _render(self) -> None:
        self.figure.value = render_png(self.table)
        self.summary.value = self.table.round(3).to_html(na_rep="n/a")


def render_png(table: pd.DataFrame, dpi: int = 80) -> bytes:
    """Bar charts of AUC and error rate per group as PNG bytes (for an ``ipywidgets.Image``)."""
    import io

    import matplotlib.pyplot as plt

    from cxrlab.plots import PALETTE

    colours = list(PALETTE.values()) if isinstance(PALETTE, Mapping) else list(PALETTE)
    t = table.drop(index="all", errors="ignore")
    fig, axes = plt.subplots(1, 2, figsize=(7, 2.8))
    try:
        bar_colours = [colours[i % len(colours)] for i in range(len(t))]
        axes[0].bar(t.index, t["auc"].fillna(0), color=bar_colours)
        axes[0].axhline(0.5, color="grey", lw=0.8, ls="--")
        axes[0].set(ylim=(0.0, 1.0), ylabel="one-vs-rest AUC", title="AUC per group")
        axes[1].bar(t.index, t["error_rate"].fillna(0), color=bar_colours)
        axes[1].set(ylim=(0, 1), ylabel="error rate", title="misclassified, per group")
        for ax in axes:
            ax.set_xlabel("group")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return buf.getvalue()


def mix_widget(test: pd.DataFrame, proba: np.ndarray, classes: Sequence[str],
                    focus_group: str | None = None, **kwargs: object) -> MixWidget:
    """Build the chapter's test-set-mix widget (show it with ``display(w.widget)``)."""
    return MixWidget(test, proba, classes, focus_group, **kwargs)

