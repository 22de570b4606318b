"""A gallery of example synthetic radiographs with their ground truth (README and chapter 1).

>>> import tempfile, pathlib
>>> path = save_gallery(pathlib.Path(tempfile.mkdtemp()) / "g.png", n=4, size=64)
>>> path.exists()
True
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from data_fetch.synthetic.cohort import build_table
from data_fetch.synthetic.config import FINDINGS, SyntheticConfig
from data_fetch.synthetic.render import Renderer


def pick_examples(table: pd.DataFrame, n: int) -> pd.DataFrame:
    """A varied selection: every group, both sexes and views, each finding, several sites."""
    first = table[table["study_index"] == 0]
    chosen: list[int] = []
    wanted = [("true_no_finding", True)] + [(f"true_{f}", True) for f in FINDINGS]
    wanted += [("view", "AP"), ("female", True), ("female", False)]
    for g in ("A", "B", "C"):
        for col, val in wanted:
            hits = first[(first["group"] == g) & (first[col] == val) & ~first.index.isin(chosen)]
            if len(hits):
                chosen.append(int(hits.index[0]))
    order = sorted(chosen, key=lambda i: (chosen.index(i) % 8, table.at[i, "group"]))
    return table.loc[order[:n]]


def _caption(row: pd.Series) -> str:
    found = [f for f in FINDINGS if row[f"true_{f}"]] or ["no finding"]
    sex = "F" if row["female"] else "M"
    return (f"group {row['group']} | {sex} {row['age']:.0f}y | BMI {row['bmi']:.0f}\n"
            f"{row['view']} | {row['site']} | {', '.join(found)}")


def save_gallery(path: str | Path, config: SyntheticConfig | None = None, n: int = 12,
                 size: int = 224, columns: int = 4) -> Path:
    """Render ``n`` example studies at ``size`` px with captions into a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    base = config or SyntheticConfig()
    cfg = base.replace(image_size=size, n_patients=max(80, n * 6))
    table = build_table(cfg)
    picks = pick_examples(table, n)
    renderer = Renderer(cfg)
    rows = int(np.ceil(len(picks) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 2.6, rows * 2.95), dpi=100)
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, (idx, row) in zip(np.ravel(axes), picks.iterrows()):
        img, _ = renderer.render(row.to_dict(), image_index=int(idx))
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        ax.set_title(_caption(row), fontsize=7)
    fig.suptitle("Synthetic chest radiographs (groups A/B/C are abstract; the group texture is "
                 "subtle by design)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
