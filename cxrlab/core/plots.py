"""Figures in colour-blind-safe colours (Okabe-Ito). Every function returns the ``Figure``.

Each figure has a title and labelled axes, so a reader who sees only the picture knows what it
shows.

>>> fig = plot_roc(y_test, proba, S.classes)      # doctest: +SKIP
"""
from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cxrlab.core import metrics

# Okabe & Ito (2008), "Color Universal Design": distinguishable with any colour vision.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
           "#000000"]
GREY = "#999999"
SYNTHETIC_GROUP_LABEL = "group (synthetic stand-in)"


def colours(n: int) -> list[str]:
    """``n`` colours from :data:`PALETTE`, in its order, cycling when ``n`` exceeds it.

    >>> colours(2)
    ['#0072B2', '#E69F00']
    """
    return [PALETTE[i % len(PALETTE)] for i in range(n)]


def figure_png(fig: Figure, dpi: int = 80) -> bytes:
    """PNG bytes of a figure (what the widgets put into an ``ipywidgets.Image``), then the
    figure is closed if pyplot holds it, so a callback that redraws leaks no figures.

    >>> figure_png(Figure(figsize=(1, 1)))[:4]
    b'\\x89PNG'
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def group_label(source: str | None) -> str:
    """The axis label for the target classes: the synthetic cohort's groups A, B, C are a
    stand-in, never a race; real sources record self-reported race.

    >>> group_label("synthetic"), group_label("mimic")
    ('group (synthetic stand-in)', 'self-reported race')
    """
    return SYNTHETIC_GROUP_LABEL if source in (None, "synthetic") else "self-reported race"


def _axes(ax=None, figsize=(5.5, 4.0)):
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    return fig, ax


def plot_history(history, ax=None) -> Figure:
    """Training and validation loss per epoch, and the validation metric, best epoch marked.

    ``history``: a :class:`cxrlab.core.train.History` (or its ``to_dict()``).
    """
    data = history.to_dict() if hasattr(history, "to_dict") else dict(history)
    epochs = pd.DataFrame(data["epochs"])
    if ax is None:
        fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(9, 3.5), layout="constrained")
    else:
        fig, ax_loss = ax.figure, ax
        ax_metric = ax.twinx()
    ax_loss.plot(epochs.epoch, epochs.train_loss, "o-", color=PALETTE[0], label="train loss")
    ax_loss.plot(epochs.epoch, epochs.val_loss, "s-", color=PALETTE[1], label="validation loss")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss per epoch")
    metric = "val_auc" if "val_auc" in epochs else "val_mae"
    label = "validation macro AUC" if metric == "val_auc" else "validation MAE (years)"
    ax_metric.plot(epochs.epoch, epochs[metric], "^-", color=PALETTE[2], label=label)
    ax_metric.set(xlabel="epoch", ylabel=label, title=label.capitalize() + " per epoch")
    best = data.get("best_epoch")
    if best is not None:
        for a in (ax_loss, ax_metric):
            a.axvline(best, color=GREY, linestyle="--", label=f"best epoch ({best})")
    ax_loss.legend(fontsize=8)
    ax_metric.legend(fontsize=8)
    if ax is None:
        fig.suptitle("Training history")
    return fig


def plot_roc(y_true: Sequence | np.ndarray, proba: np.ndarray, classes: Sequence[str],
             ax=None, title: str = "ROC curves (one class vs the rest, test split)") -> Figure:
    """One-vs-rest ROC curve per class with its AUC in the legend, and the chance diagonal."""
    fig, ax = _axes(ax, (5, 5))
    curves = metrics.roc_curves(y_true, proba, classes)
    for i, (name, curve) in enumerate(curves.items()):
        ax.plot(curve["fpr"], curve["tpr"], color=PALETTE[i % len(PALETTE)], lw=2,
                label=f"{name} (AUC {curve['auc']:.3f})")
    ax.plot([0, 1], [0, 1], color=GREY, linestyle=":", label="chance (AUC 0.5)")
    ax.set(xlabel="false-positive rate (1 - specificity)",
           ylabel="true-positive rate (sensitivity)", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_confusion(y_true: Sequence | np.ndarray, proba_or_pred: np.ndarray,
                   classes: Sequence[str], normalize: str | None = "true", ax=None,
                   title: str = "Confusion matrix (test split)", class_label: str = "class") -> Figure:
    """Confusion matrix as a heat map with the values written in; rows are true classes
    (normalised per row by default, so each row reads as "of the true X, the share predicted Y").
    ``class_label`` names the classes on the axes (e.g. :func:`group_label`)."""
    fig, ax = _axes(ax, (4.8, 4.2))
    cm = metrics.confusion(y_true, proba_or_pred, classes, normalize=normalize)
    image = ax.imshow(cm.to_numpy(), cmap="Blues", vmin=0)
    fmt = "{:.2f}" if normalize else "{:d}"
    top = cm.to_numpy().max() or 1
    for (i, j), value in np.ndenumerate(cm.to_numpy()):
        shown = fmt.format(value if normalize else int(value))
        ax.text(j, i, shown, ha="center", va="center",
                color="white" if value > 0.6 * top else "black")
    ax.set_xticks(range(len(classes)), labels=list(classes))
    ax.set_yticks(range(len(classes)), labels=list(classes))
    ax.set(xlabel=f"predicted {class_label}", ylabel=f"true {class_label}", title=title)
    fig.colorbar(image, ax=ax, label="share of the true class" if normalize else "images")
    return fig


def plot_calibration(y_true: Sequence | np.ndarray, proba: np.ndarray,
                     classes: Sequence[str] | None = None, n_bins: int = 10, ax=None,
                     title: str = "Calibration (reliability) curves") -> Figure:
    """Predicted probability against the observed frequency, per class; the diagonal is
    perfect calibration."""
    fig, ax = _axes(ax, (5, 5))
    table = metrics.calibration(y_true, proba, classes, n_bins=n_bins)
    for i, (name, part) in enumerate(table.groupby("class", sort=False)):
        ax.plot(part.mean_predicted, part.fraction_positive, "o-",
                color=PALETTE[i % len(PALETTE)], label=str(name))
    ax.plot([0, 1], [0, 1], color=GREY, linestyle=":", label="perfectly calibrated")
    ax.set(xlabel="mean predicted probability", ylabel="observed fraction of positives",
           title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    return fig


def plot_auc_vs_paper(our_table: pd.DataFrame, dataset: str = "MIMIC-CXR",
                      source: str | None = None, ax=None) -> Figure:
    """Our per-class AUCs with 95% CI bars beside Gichoya et al. 2022 Table 3.

    For the synthetic source the groups A/B/C are not races: our bars and the paper's stand in
    two separate groups, for scale only, and the title says so.
    """
    from cxrlab.core.anchors import TABLE3, compare_to_table3

    table = compare_to_table3(our_table, dataset=dataset, source=source)
    table = table[table["class"] != "macro (mean)"]
    scale_only = bool((table.comparison == "for scale only").any())
    fig, ax = _axes(ax, (6.5, 4))
    n = len(table)
    err = np.nan_to_num(np.vstack([table.ours - table.ci_low, table.ci_high - table.ours]))
    paper_label = f"Gichoya et al. 2022, Table 3 ({dataset})"
    ours_label = "ours (95% CI, patient bootstrap)"
    if scale_only:   # two separate groups: synthetic groups are not paired with races
        paper = pd.Series(TABLE3[dataset])
        ax.bar(np.arange(n), table.ours, 0.7, yerr=err, capsize=4, color=PALETTE[0],
               label=ours_label)
        ax.bar(np.arange(len(paper)) + n + 1, paper.to_numpy(), 0.7, color=PALETTE[1],
               label=paper_label)
        ax.set_xticks(list(range(n)) + list(np.arange(len(paper)) + n + 1),
                      labels=[f"group {c}" for c in table["class"]] + list(paper.index))
        xlabel = f"{SYNTHETIC_GROUP_LABEL} (left) | self-reported race in the paper (right)"
    else:
        x = np.arange(n)
        ax.bar(x - 0.2, table.ours, 0.4, yerr=err, capsize=4, color=PALETTE[0], label=ours_label)
        ax.bar(x + 0.2, table.paper_auc, 0.4, color=PALETTE[1], label=paper_label)
        ax.set_xticks(x, labels=list(table["class"]))
        xlabel = "self-reported race"
    low = float(np.nanmin([table.ci_low.min(), table.ours.min(), table.paper_auc.min()]))
    ax.set_ylim(max(0.0, min(0.5, low - 0.05)), 1.0)
    ax.set(xlabel=xlabel, ylabel="one-vs-rest AUC",
           title="Our AUCs beside the paper's" + (" (for scale only)" if scale_only else ""))
    ax.axhline(0.5, color=GREY, linestyle=":", lw=1)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def gallery(images: np.ndarray, labels: Sequence[Any] | None = None, n: int = 12,
            ncols: int = 6, title: str = "Example images", seed: int | None = None) -> Figure:
    """A grid of ``n`` images (the first ``n``, or a random ``n`` when ``seed`` is given) with
    their labels as captions."""
    count = min(n, len(images))
    index = (np.sort(np.random.default_rng(seed).choice(len(images), count, replace=False))
             if seed is not None else np.arange(count))
    nrows = max(1, int(np.ceil(count / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.8 * ncols, 2.0 * nrows),
                             layout="constrained", squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, index):
        ax.imshow(np.asarray(images[i]), cmap="gray", vmin=0,
                  vmax=255 if np.asarray(images[i]).dtype == np.uint8 else 1)
        if labels is not None:
            ax.set_title(str(labels[i]), fontsize=8)
    fig.suptitle(title)
    return fig


def plot_age_scatter(age_true: Sequence | np.ndarray, age_pred: np.ndarray, ax=None,
                     title: str = "Predicted against recorded age (test split)") -> Figure:
    """Scatter of predicted against recorded age with the identity line and the MAE."""
    fig, ax = _axes(ax, (5, 5))
    y, p = np.asarray(age_true, float), np.asarray(age_pred, float)
    known = ~np.isnan(y)
    mae = float(np.mean(np.abs(y[known] - p[known]))) if known.any() else float("nan")
    ax.scatter(y[known], p[known], s=10, alpha=0.5, color=PALETTE[0], label="test image")
    low = float(np.nanmin([y[known].min(), p[known].min()])) if known.any() else 0.0
    high = float(np.nanmax([y[known].max(), p[known].max()])) if known.any() else 100.0
    ax.plot([low, high], [low, high], color=PALETTE[5], linestyle="--",
            label="perfect prediction")
    ax.set(xlabel="recorded age (years)", ylabel="predicted age (years)",
           title=f"{title}\nMAE {mae:.1f} years")
    ax.legend(fontsize=8)
    return fig


def grey_range(image: np.ndarray) -> tuple[float, float]:
    """Display range of an image in grey: 0-255 for uint8, 0-1 for an image in [0, 1], and the
    image's own range when a filter made it signed (a high-pass output is centred on 0).

    >>> grey_range(np.array([[0.2, 0.7]])), grey_range(np.array([[-0.3, 0.4]]))
    ((0.0, 1.0), (-0.3, 0.4))
    """
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return 0.0, 255.0
    low, high = float(image.min()), float(image.max())
    return (min(0.0, low), max(1.0, high)) if low >= 0 else (low, high)


def image_panels(images: Mapping[str, np.ndarray], title: str, *,
                 below: Mapping[str, np.ndarray] | None = None, below_max: float | None = None,
                 row_labels: tuple[str, str] = ("image", "log |FFT|"),
                 panel_size: tuple[float, float] = (1.6, 1.8)) -> Figure:
    """A row of images, each titled by its key (grey, on :func:`grey_range`), and optionally a
    second row ``below`` with the same keys (e.g. their log spectra, magma on ``0-below_max``,
    so every panel shares one scale); ``row_labels`` name the two rows.

    >>> fig = image_panels({"a": np.zeros((4, 4)), "b": np.ones((4, 4))}, "two images")
    >>> [ax.get_title() for ax in fig.axes]
    ['a', 'b']
    """
    nrows = 1 if below is None else 2
    width, height = panel_size
    fig, axes = plt.subplots(nrows, len(images), figsize=(width * len(images), height * nrows + 0.4),
                             layout="constrained", squeeze=False)
    for column, (name, image) in enumerate(images.items()):
        low, high = grey_range(image)
        axes[0, column].imshow(image, cmap="gray", vmin=low, vmax=high)
        axes[0, column].set_title(name, fontsize=8)
        if below is not None:
            axes[1, column].imshow(below[name], cmap="magma", vmin=0, vmax=below_max)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if below is not None:
        axes[0, 0].set_ylabel(row_labels[0])
        axes[1, 0].set_ylabel(row_labels[1])
    fig.suptitle(title)
    return fig


def paired_points(left: Sequence[float], right: Sequence[float], labels: tuple[str, str], *,
                  xlabel: str, ylabel: str, title: str, ax=None) -> Figure:
    """Each pair of values (e.g. one seed's score under two set-ups) as two points joined by a
    faint line: the left ones in blue, the right ones in orange-red, ``labels`` under them.

    >>> fig = paired_points([0.6, 0.62], [0.8, 0.85], ("before", "after"), xlabel="set-up",
    ...                     ylabel="AUC", title="paired")
    >>> len(fig.axes[0].lines), fig.axes[0].get_title()
    (2, 'paired')
    """
    fig, ax = _axes(ax)
    left, right = np.asarray(left, float), np.asarray(right, float)
    if len(left) != len(right):
        raise ValueError(f"{len(left)} left values but {len(right)} right ones: they come in pairs")
    for a, b in zip(left, right):
        ax.plot([0, 1], [a, b], "-", color=PALETTE[7], alpha=0.3)
    ax.scatter(np.zeros(len(left)), left, color=PALETTE[0], label=labels[0], zorder=3)
    ax.scatter(np.ones(len(right)), right, color=PALETTE[5], label=labels[1], zorder=3)
    ax.set_xticks([0, 1], labels=list(labels))
    ax.set_xlim(-0.5, 1.5)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    return fig
