"""Honesty benchmark: with every route to the group off, no model may find the group.

Generates a synthetic cohort with ``group_signal=0``, ``site_confounding=0`` and
``covariate_shift=0`` (default: 2,400 patients at 64 px, about 6,000 images, split by patient
45/5/50 so that about 3,000 images are in the test split), then trains and tests on the group
(A/B/C):

* the course's small CNN (demo settings: 6 epochs, early stopping on the validation AUC);
* a ResNet-18 (random initialisation, same loop);
* gradient boosting on intensity histograms (32 bins) plus Fourier-band energies (octaves x
  six orientation sectors, the bands of :mod:`data_fetch.synthetic.visibility`);
* logistic regression on the manifest's covariates (age, sex, BMI, view, recorded findings).

Each is reported as a macro one-vs-rest AUC with a 95% patient-bootstrap interval
(``cxrlab.core.metrics.macro_auc_ci``). An honest cohort keeps every interval around 0.5.

Run: ``nice -n 10 .venv/bin/python bench/bench_honesty.py [--patients N] [--size PX]
[--anatomy ct|drawn] [--skip resnet18]``. Not a test: it takes tens of minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from data_fetch.manifest import read_manifest
from data_fetch.synthetic import SyntheticConfig, generate_cohort
from data_fetch.synthetic.visibility import band_index

OFF = dict(group_signal=0.0, site_confounding=0.0, covariate_shift=0.0)
CLASSES = ["A", "B", "C"]


def load_cohort(folder: Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The manifest, the images (uint8, N x n x n) and the group index of each image."""
    df = read_manifest(folder)
    images = np.stack([np.asarray(Image.open(p)) for p in df["abspath"]])
    return df, images, df["race"].map({g: i for i, g in enumerate(CLASSES)}).to_numpy()


def histogram_fourier_features(images: np.ndarray) -> np.ndarray:
    """32-bin intensity histogram plus log energy per Fourier band, per image."""
    n = images.shape[-1]
    hist = np.stack([np.bincount(im.ravel() // 8, minlength=32) for im in images]) / n**2
    index, names = band_index(n)
    keep = index >= 0
    power = np.abs(np.fft.fft2(images.astype(np.float32) / 255.0)) ** 2
    bands = np.stack([np.bincount(index[keep], weights=p[keep], minlength=len(names))
                      for p in power])
    return np.hstack([hist, np.log(bands + 1e-9)])


def covariate_features(df: pd.DataFrame) -> np.ndarray:
    """Age, sex, BMI, view and the recorded findings as numbers."""
    cols = [c for c in df.columns if c.startswith("finding_")] + ["no_finding"]
    return np.column_stack([df["age"], df["sex"] == "F", df["bmi"], df["view"] == "AP",
                            df[cols].to_numpy(float)]).astype(float)


def fit_cnn(arch: str, images, y, split, seed: int = 0) -> np.ndarray:
    """Train ``arch`` with the demo preset's loop; returns test probabilities."""
    from cxrlab.core.datasets import CXRDataset
    from cxrlab.core.models import build_model
    from cxrlab.core.presets import PRESETS
    from cxrlab.core.train import fit, predict, seed_everything

    p = PRESETS["demo"]
    seed_everything(seed)
    model = build_model(arch, len(CLASSES), pretrained=False)
    tr, va = np.nonzero(split == "train")[0], np.nonzero(split == "val")[0]
    fit(model, CXRDataset(images, y[tr], augment=True, indices=tr),
        CXRDataset(images, y[va], indices=va), epochs=p.epochs, lr=p.lr,
        batch_size=p.batch_size, patience=p.patience, device="cpu", task="multiclass",
        seed=seed, monitor="val_auc", progress=True)
    return predict(model, images[split == "test"], device="cpu", task="multiclass")


def fit_tabular(kind: str, x, y, split) -> np.ndarray:
    """Gradient boosting or logistic regression on features; returns test probabilities."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = (HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=0)
             if kind == "boosting" else
             make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)))
    train = split != "test"
    return model.fit(x[train], y[train]).predict_proba(x[~train])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=2400)
    parser.add_argument("--split", type=float, nargs=3, default=(0.45, 0.05, 0.5),
                        help="patient-level train/val/test fractions")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--anatomy", default=SyntheticConfig().anatomy)
    parser.add_argument("--skip", nargs="*", default=[], help="models to leave out")
    args = parser.parse_args()
    from cxrlab.core.metrics import macro_auc_ci

    cfg = SyntheticConfig(n_patients=args.patients, image_size=args.size, anatomy=args.anatomy,
                          split_fractions=tuple(args.split), seed=7, **OFF)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        generate_cohort(Path(tmp) / "off", cfg, progress=True)
        df, images, y = load_cohort(Path(tmp) / "off")
        print(f"cohort: {len(df)} images in {time.perf_counter() - t0:.0f} s")
    split = df["split"].to_numpy()
    test = split == "test"
    patients = df["patient_id"].to_numpy()[test]
    models = {
        "small CNN": lambda: fit_cnn("smallcnn", images, y, split),
        "ResNet-18": lambda: fit_cnn("resnet18", images, y, split),
        "histogram + Fourier bands, gradient boosting":
            lambda: fit_tabular("boosting", histogram_fourier_features(images), y, split),
        "covariates, logistic regression":
            lambda: fit_tabular("logistic", covariate_features(df), y, split),
    }
    skip = {s.lower() for s in args.skip}
    for name, run in models.items():
        if any(s in name.lower() for s in skip):
            continue
        t0 = time.perf_counter()
        ci = macro_auc_ci(y[test], run(), CLASSES, groups=patients, n_boot=500)
        rows.append((name, ci, time.perf_counter() - t0))
        print(f"{name}: {ci.estimate:.3f} ({ci.low:.3f}-{ci.high:.3f})", flush=True)
    print(f"\n{int(test.sum())} test images of {len(set(patients))} patients, "
          f"{args.size} px, anatomy={args.anatomy}, every route off\n")
    print("| model | macro AUC (95% CI) | seconds |\n|---|---|---:|")
    for name, ci, seconds in rows:
        print(f"| {name} | {ci.estimate:.3f} ({ci.low:.3f}-{ci.high:.3f}) | {seconds:.0f} |")


if __name__ == "__main__":
    main()
