"""Chapter 6, part 1: acquisition parameters at test time (Lotter, Nature Communications 2024).

Lotter (*Nature Communications* 2024;15, doi 10.1038/s41467-024-52003-3, "Acquisition
parameters influence AI recognition of race in chest x-rays and mitigating these factors
reduces underdiagnosis bias") re-ran a race model on the same test images with a different
**window width** (contrast) and **field of view** (zoom) and found that the average score of
each race class moved with them. This module makes both changes as batch transforms for
:func:`cxrlab.train.predict` and measures the grid of their effects.

Images are float batches ``(B, 1, H, W)`` in [0, 1] (what ``predict``'s ``transform`` gets).

>>> x = torch.linspace(0, 1, 16).reshape(1, 1, 4, 4)
>>> torch.allclose(window(x, 1.0), x) and torch.allclose(field_of_view(x, 1.0), x, atol=1e-6)
True
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

WIDTHS: tuple[float, ...] = (0.6, 0.8, 1.0, 1.25, 1.5)
ZOOMS: tuple[float, ...] = (0.8, 0.9, 1.0, 1.1, 1.25)

__all__ = ["WIDTHS", "ZOOMS", "window", "field_of_view", "acquisition_transform",
           "balanced_mean", "acquisition_grid", "plot_acquisition_grid", "view_mix"]


def window(x: torch.Tensor, width: float, level: float = 0.5) -> torch.Tensor:
    """Change the display window: ``width`` < 1 narrows it (more contrast, the extremes clip),
    ``width`` > 1 widens it (flatter, greyer image); ``width`` = 1 leaves ``x`` as it is.

    >>> window(torch.tensor([0.0, 0.25, 0.5, 1.0]), 0.5).tolist()
    [0.0, 0.0, 0.5, 1.0]
    """
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    return ((x - level) / float(width) + level).clamp(0.0, 1.0)


def field_of_view(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """Change the field of view around the image centre: ``zoom`` > 1 crops the centre and
    enlarges it (a tighter collimation), ``zoom`` < 1 shrinks the image inside a black border
    (a wider field of view); ``zoom`` = 1 leaves ``x`` as it is. Bilinear resampling.

    >>> y = field_of_view(torch.ones(1, 1, 8, 8), 0.5)
    >>> float(y[0, 0, 0, 0]), float(y[0, 0, 4, 4])
    (0.0, 1.0)
    """
    if zoom <= 0:
        raise ValueError(f"zoom must be positive, got {zoom}")
    x4 = x if x.ndim == 4 else x.reshape(-1, 1, *x.shape[-2:])
    theta = torch.zeros(len(x4), 2, 3, dtype=x4.dtype, device=x4.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / float(zoom)
    grid = F.affine_grid(theta, list(x4.shape), align_corners=False)
    out = F.grid_sample(x4, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(x.shape)


def acquisition_transform(width: float = 1.0,
                          zoom: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """One test-time transform: field of view first, then the window.

    >>> t = acquisition_transform(width=2.0, zoom=1.0)
    >>> t(torch.tensor([[[[0.0, 0.5, 1.0, 0.5]]]])).flatten().tolist()
    [0.25, 0.5, 0.75, 0.5]
    """
    def transform(batch: torch.Tensor) -> torch.Tensor:
        return window(field_of_view(batch, zoom), width)
    return transform


def balanced_mean(values: np.ndarray, groups: Any) -> np.ndarray:
    """Mean over rows in which every group counts equally (Lotter 2024 weighted each race
    equally): the mean of the per-group means, column by column.

    >>> balanced_mean(np.array([[1.0], [1.0], [1.0], [4.0]]), ["A", "A", "A", "B"]).tolist()
    [2.5]
    """
    v = np.asarray(values, dtype=float)
    g = pd.Series(np.asarray(groups, dtype=object)).astype(str)
    return np.mean([v[(g == k).to_numpy()].mean(axis=0) for k in sorted(g.unique())], axis=0)


def acquisition_grid(predict: Callable[..., np.ndarray], images: np.ndarray, groups: Any,
                     classes: Sequence[str], widths: Sequence[float] = WIDTHS,
                     zooms: Sequence[float] = ZOOMS, progress: bool = True) -> pd.DataFrame:
    """Score every image at every (window width, zoom) and compare with the default (1, 1).

    ``predict(images, transform=...)`` returns class probabilities ``(N, C)`` (for example
    :meth:`cxrlab.store.TrainedModel.predict`). For each grid cell and class ``k`` the table
    has the group-balanced mean score of class ``k`` over all images (``mean_score``), its
    change from the default (``change``) and the relative change in percent
    (``pct_change``), the quantity of Lotter 2024's Fig. 2.
    """
    base = balanced_mean(predict(images), groups)
    rows = []
    cells = [(w, z) for w in widths for z in zooms]
    for w, z in tqdm(cells, desc="window x field of view", disable=not progress, leave=False):
        proba = base if (w, z) == (1.0, 1.0) else \
            balanced_mean(predict(images, transform=acquisition_transform(w, z)), groups)
        for k, name in enumerate(classes):
            rows.append({"width": float(w), "zoom": float(z), "class": str(name),
                         "mean_score": float(proba[k]), "change": float(proba[k] - base[k]),
                         "pct_change": float(100 * (proba[k] - base[k]) / base[k])})
    return pd.DataFrame(rows)


def plot_acquisition_grid(grid: pd.DataFrame, value: str = "pct_change", axes: Any = None,
                          limit: float | None = None) -> Any:
    """One heatmap per class: window width (rows) x zoom (columns), red = the class's average
    score rose, blue = it fell, on one symmetric colour scale. Returns the figure."""
    import matplotlib.pyplot as plt

    classes = list(dict.fromkeys(grid["class"]))
    if axes is None:
        _, axes = plt.subplots(1, len(classes), figsize=(3.6 * len(classes), 3.3),
                               layout="constrained", squeeze=False)
        axes = axes[0]
    limit = limit or float(np.nanmax(np.abs(grid[value]))) or 1.0
    image = None
    for ax, name in zip(axes, classes):
        table = grid[grid["class"] == name].pivot(index="width", columns="zoom", values=value)
        image = ax.imshow(table.to_numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, origin="lower")
        ax.set_xticks(range(table.shape[1]), [f"{z:g}" for z in table.columns])
        ax.set_yticks(range(table.shape[0]), [f"{w:g}" for w in table.index])
        for (i, j), v in np.ndenumerate(table.to_numpy()):
            ax.text(j, i, f"{v:+.0f}" if abs(v) >= 1 else f"{v:+.1f}", ha="center", va="center",
                    fontsize=7)
        ax.set(title=f"score of class {name}", xlabel="zoom (>1: narrower field of view)",
               ylabel="window width (<1: more contrast)")
    fig = axes[0].figure
    fig.colorbar(image, ax=list(axes), shrink=0.8,
                 label="% change of mean score" if value == "pct_change" else value)
    return fig


def view_mix(manifest: pd.DataFrame, group: str = "race", view: str = "view") -> pd.DataFrame:
    """Share of each view (AP, PA, ...) within each group; rows sum to 1.

    >>> view_mix(pd.DataFrame({"race": ["A", "A", "B"], "view": ["AP", "PA", "PA"]}))
    view   AP   PA
    race          
    A     0.5  0.5
    B     0.0  1.0
    """
    frame = manifest[[group, view]].dropna()
    return pd.crosstab(frame[group].astype(str), frame[view].astype(str), normalize="index")
