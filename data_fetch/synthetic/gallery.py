"""A gallery of example synthetic radiographs with their ground truth (README and chapter 1).

>>> import tempfile, pathlib
>>> path = save_gallery(pathlib.Path(tempfile.mkdtemp()) / "g.png", n=4, size=64)
>>> path.exists()
True
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from data_fetch.synthetic.cohort import build_table, make_renderer
from data_fetch.synthetic.config import CT_SIGNAL, FINDINGS, SyntheticConfig


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


def uses_calibrated_ct_signal(config: SyntheticConfig) -> bool:
    """Whether ``config``'s group-signal knobs are the CT renderer's calibrated ``CT_SIGNAL``
    (whose visibility the data card measures) or the signal is off.

    >>> uses_calibrated_ct_signal(SyntheticConfig(anatomy="ct", **CT_SIGNAL))
    True
    >>> uses_calibrated_ct_signal(SyntheticConfig(anatomy="ct"))
    False
    """
    if config.group_signal == 0:
        return True
    return all(getattr(config, knob) == value for knob, value in CT_SIGNAL.items())


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
    renderer = make_renderer(cfg)
    rows = int(np.ceil(len(picks) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 2.6, rows * 3.1), dpi=100)
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, (idx, row) in zip(np.ravel(axes), picks.iterrows()):
        img, _ = renderer.render(row.to_dict(), image_index=int(idx))
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        ax.set_title(_caption(row), fontsize=7)
    if cfg.anatomy == "ct" and uses_calibrated_ct_signal(cfg):
        source = ("composed from a real chest CT; the group signal is within between-patient "
                  "variation, yet visible beside the same study without it: see the data card")
    elif cfg.anatomy == "ct":
        source = ("composed from a real chest CT; these signal knobs are not the calibrated "
                  "CT_SIGNAL, so the group texture may show")
    else:
        source = "drawn shapes; the group texture shows on close inspection"
    title = f"Synthetic chest radiographs ({source}; groups A/B/C are abstract labels)"
    fig.suptitle(textwrap.fill(title, width=columns * 30), fontsize=9)   # fits a narrow figure
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def save_blind_pairs(folder: str | Path, key_path: str | Path, config: SyntheticConfig | None = None,
                     n: int = 20, size: int = 256, seed: int = 0) -> list[Path]:
    """Render ``n`` same-study pairs, group signal on and off, for a blinded viewer.

    Each pair is one PNG (``pair_01.png``...) with two images side by side; which side carries
    the signal is drawn at random and written only to ``key_path`` (JSON, keep it away from
    the viewer). The two images share the patient, the study and the noise. Chance is n / 2.
    """
    import json

    from PIL import Image

    base = (config or SyntheticConfig()).replace(image_size=size, n_patients=max(4 * n, 40))
    if base.group_signal <= 0:
        raise ValueError("the pairs need a config whose group_signal is above 0")
    table = build_table(base)
    first = table[table["study_index"] == 0].head(n)
    on, off = make_renderer(base), make_renderer(base.replace(group_signal=0.0))
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key, paths = {}, []
    for k, (idx, row) in enumerate(first.iterrows(), start=1):
        images = [on.render(row.to_dict(), int(idx))[0], off.render(row.to_dict(), int(idx))[0]]
        signal_side = "left" if rng.random() < 0.5 else "right"
        if signal_side == "right":
            images.reverse()
        gap = np.full((size, 8), 0, np.uint8)
        path = folder / f"pair_{k:02d}.png"
        Image.fromarray(np.hstack([images[0], gap, images[1]])).save(path)
        key[path.name] = signal_side
        paths.append(path)
    Path(key_path).parent.mkdir(parents=True, exist_ok=True)
    Path(key_path).write_text(json.dumps({"signal_side": key, "config": base.as_dict()}, indent=1))
    return paths
