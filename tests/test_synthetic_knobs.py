"""The knobs do what the data card says: a pixel classifier finds the group only when a route is on.

A logistic regression on 16x16 downsampled pixels stands in for a model. The cohorts are 32 px
so the module runs in well under a minute on one core.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from data_fetch.manifest import read_manifest
from data_fetch.synthetic import SyntheticConfig, generate_cohort

pytestmark = pytest.mark.slow
OFF = dict(group_signal=0.0, site_confounding=0.0, covariate_shift=0.0)
BASE = dict(n_patients=900, image_size=32, group_proportions=(1 / 3, 1 / 3, 1 / 3))


def _load(folder):
    df = read_manifest(folder)
    imgs = np.stack([np.asarray(Image.open(p), np.float32) for p in df["abspath"]]) / 255.0
    small = imgs.reshape(len(imgs), 16, 2, 16, 2).mean(axis=(2, 4)).reshape(len(imgs), -1)
    return df, small, df["race"].map({"A": 0, "B": 1, "C": 2}).to_numpy()


def _macro_auc(y, proba):
    return float(np.mean([roc_auc_score(y == k, proba[:, k]) for k in range(3)]))


def _fit(x, y):
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=0.01, max_iter=500).fit(scaler.transform(x), y)
    return lambda z: model.predict_proba(scaler.transform(z))


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    root = tmp_path_factory.mktemp("knobs")
    made = {}
    for name, knobs in {"off": dict(OFF, seed=11), "signal": dict(OFF, group_signal=SyntheticConfig().group_signal, seed=12),
                        "site": dict(OFF, site_confounding=1.0, seed=13)}.items():
        generate_cohort(root / name, SyntheticConfig(**BASE, **knobs), progress=False)
        made[name] = _load(root / name)
    return made


def _within(df, x, y):
    tr, te = (df["split"] == "train").to_numpy(), (df["split"] != "train").to_numpy()
    return _macro_auc(y[te], _fit(x[tr], y[tr])(x[te]))


def test_group_is_invisible_with_every_route_off(cohorts):
    auc = _within(*cohorts["off"])
    assert abs(auc - 0.5) < 0.05, f"AUC {auc:.3f}: the group leaks into the pixels with all knobs off"


def test_default_group_signal_is_found(cohorts):
    auc = _within(*cohorts["signal"])
    assert auc > 0.65, f"AUC {auc:.3f}: the default group signal should be well above chance"


def test_site_shortcut_works_only_while_site_and_group_are_linked(cohorts):
    df, x, y = cohorts["site"]
    assert _within(df, x, y) > 0.9, "with full site confounding the site look gives the group away"
    tr = (df["split"] == "train").to_numpy()
    predict = _fit(x[tr], y[tr])
    _, x_ind, y_ind = cohorts["off"]        # same sites, group independent of site
    auc = _macro_auc(y_ind, predict(x_ind))
    assert abs(auc - 0.5) < 0.05, f"AUC {auc:.3f} on a test set where site and group are independent"
