"""Calibration of a renderer's group signal: how visible it is, and whether the demo CNN learns it.

For one design (default: ``anatomy="ct"`` with :data:`data_fetch.synthetic.config.CT_SIGNAL`):

1. the visibility criterion (:func:`data_fetch.synthetic.visibility.visibility_report`): the worst
   tile-and-band ratio of the signal to natural between-patient variation, at 64 and 256 px;
2. the demo small CNN trained on the demo cohort (800 patients, 64 px, cohort seed 0) with the
   model store's recipe (chapter 2's ``store.get_model(S, "race")``: augmentation on, 6 epochs,
   early stopping on the validation AUC, the session seed as the training seed), macro AUC on
   the test split, for training seeds 0-3; on the default cohort (every route on) and, with
   ``--texture-only``, with the site and covariate routes off.

The images are rendered in memory (the same pixels ``prepare()`` writes as PNG), so no cohort
is written to disk. Run: ``OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python
bench/bench_calibration.py [--anatomy drawn] [--set KNOB=VALUE ...] [--seeds 0 1 2 3]
[--texture-only] [--skip-visibility]``. About 3 minutes of CPU on one core; not a test.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

from data_fetch.synthetic import CT_SIGNAL, SyntheticConfig, build_table, make_renderer
from data_fetch.synthetic.visibility import visibility_report

CLASSES = ["A", "B", "C"]
ROUTES_OFF = dict(site_confounding=0.0, covariate_shift=0.0)


def render_cohort(cfg: SyntheticConfig) -> tuple[pd.DataFrame, np.ndarray]:
    """Every study of ``cfg`` (the table) and its image (uint8, N x n x n)."""
    table = build_table(cfg)
    renderer = make_renderer(cfg)
    images = np.stack([renderer.render(row, i)[0]
                       for i, row in enumerate(table.to_dict("records"))])
    return table, images


def demo_cnn_auc(table: pd.DataFrame, images: np.ndarray, seed: int) -> float:
    """Macro AUC on the test split of the demo small CNN trained with the model store's recipe."""
    from cxrlab.core.datasets import CXRDataset
    from cxrlab.core.metrics import macro_auc
    from cxrlab.core.models import build_model
    from cxrlab.core.presets import PRESETS
    from cxrlab.core.train import fit, predict, seed_everything

    p = PRESETS["demo"]
    y = table["group"].map({g: i for i, g in enumerate(CLASSES)}).to_numpy()
    split = table["split"].to_numpy()
    train, val = np.nonzero(split == "train")[0], np.nonzero(split == "val")[0]
    seed_everything(seed)
    model = build_model(p.model, len(CLASSES), pretrained=p.pretrained)
    fit(model, CXRDataset(images, y[train], augment=True, indices=train),
        CXRDataset(images, y[val], indices=val), epochs=p.epochs, lr=p.lr,
        batch_size=p.batch_size, patience=p.patience, device="cpu", task="multiclass",
        seed=seed, monitor="val_auc", progress=False)
    test = split == "test"
    return float(macro_auc(y[test], predict(model, images[test], device="cpu",
                                            task="multiclass")))


def parse_settings(pairs: list[str]) -> dict:
    """``KNOB=VALUE`` pairs (VALUE as JSON: numbers, lists) as config overrides."""
    out = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        parsed = json.loads(value)
        out[key] = tuple(parsed) if isinstance(parsed, list) else parsed
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anatomy", default="ct", choices=("ct", "drawn"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KNOB=VALUE")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3])
    parser.add_argument("--texture-only", action="store_true",
                        help="site and covariate routes off: only the group signal is left")
    parser.add_argument("--skip-visibility", action="store_true")
    parser.add_argument("--pairs", type=int, default=30, help="pairs for the criterion")
    args = parser.parse_args()
    knobs = {**(CT_SIGNAL if args.anatomy == "ct" else {}), **parse_settings(args.set)}
    cfg = SyntheticConfig(anatomy=args.anatomy, image_size=64, n_patients=800, **knobs)
    print(f"anatomy={args.anatomy} knobs={knobs}", flush=True)
    if not args.skip_visibility:
        for size in (64, 256):
            report = visibility_report(cfg.replace(image_size=size), n_pairs=args.pairs)
            print(f"visibility at {size} px ({args.pairs} pairs): worst ratio "
                  f"{report['worst_ratio']:.2f} ({report['worst_band']})", flush=True)
    cohort = cfg.replace(**ROUTES_OFF) if args.texture_only else cfg
    t0 = time.process_time()
    table, images = render_cohort(cohort)
    print(f"cohort: {len(table)} images, {time.process_time() - t0:.0f} s CPU", flush=True)
    label = "texture only" if args.texture_only else "every route on"
    for seed in args.seeds:
        t0 = time.process_time()
        auc = demo_cnn_auc(table, images, seed)
        print(f"{label}, training seed {seed}: demo CNN macro AUC {auc:.3f} "
              f"({time.process_time() - t0:.0f} s CPU)", flush=True)


if __name__ == "__main__":
    main()
