"""Plots return titled, labelled figures; anchors and the Table 3 comparison."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from cxrlab import anchors, plots  # noqa: E402
from cxrlab.core.metrics import auc_table  # noqa: E402
from cxrlab.core.train import History  # noqa: E402

RNG = np.random.default_rng(0)
Y = np.arange(60) % 3
PROBA = RNG.dirichlet([1, 1, 1], 60) + np.eye(3)[Y]
PROBA /= PROBA.sum(1, keepdims=True)


def _assert_labelled(fig):
    assert isinstance(fig, matplotlib.figure.Figure)
    titled = [a for a in fig.axes if a.get_title()] or ([fig] if fig._suptitle else [])
    assert titled, "figure has no title"
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>" or not ax.axison:
            continue
        assert ax.get_xlabel() and ax.get_ylabel(), f"unlabelled axes in {ax.get_title()!r}"
    plt.close(fig)


def test_palette_is_okabe_ito():
    assert len(plots.PALETTE) == 8 and "#E69F00" in plots.PALETTE and "#0072B2" in plots.PALETTE


def test_figures_are_titled_and_labelled():
    history = History("multiclass", epochs=[
        {"epoch": 1, "train_loss": 1.0, "val_loss": 0.9, "val_auc": 0.7},
        {"epoch": 2, "train_loss": 0.8, "val_loss": 0.85, "val_auc": 0.75}], best_epoch=2)
    _assert_labelled(plots.plot_history(history))
    _assert_labelled(history.plot())
    _assert_labelled(plots.plot_roc(Y, PROBA, ["A", "B", "C"]))
    _assert_labelled(plots.plot_confusion(Y, PROBA, ["A", "B", "C"]))
    _assert_labelled(plots.plot_calibration(Y, PROBA, ["A", "B", "C"], n_bins=4))
    _assert_labelled(plots.plot_age_scatter([30, 40, np.nan, 60], [35, 38, 50, 70]))
    table = auc_table(Y, PROBA, ["A", "B", "C"], groups=np.arange(60) // 2, n_boot=20)
    fig = plots.plot_auc_vs_paper(table, source="synthetic")
    assert "for scale only" in fig.axes[0].get_title()
    _assert_labelled(fig)
    images = RNG.integers(0, 255, (10, 16, 16), dtype=np.uint8)
    fig = plots.gallery(images, [f"group {g}" for g in "ABCABCABCA"], n=8, ncols=4, seed=1)
    assert fig._suptitle.get_text() == "Example images"
    assert sum(1 for a in fig.axes if a.images) == 8
    plt.close(fig)


def test_anchors_have_citations():
    assert anchors.TABLE3["MIMIC-CXR"] == {"Asian": 0.986, "Black": 0.982, "White": 0.981}
    assert anchors.TABLE3["Emory CXR"]["Black"] == 0.992
    curves = anchors.DEGRADATION_CURVES
    assert len(curves["d"]) == len(curves["low_pass"]) == len(curves["high_pass"]) == 9
    assert curves["low_pass"][0] == 0.54 and curves["high_pass"][-1] == 0.50
    assert anchors.UNDERDIAGNOSIS["race"]["Black"] == 0.276
    for name in ("CONFOUNDERS", "STRATIFIED", "DEGRADATION_CURVES", "CORRUPTION", "TILES",
                 "UNDERDIAGNOSIS", "GLOCKER2023", "BURNS2023", "SEX_AGE_OPEN"):
        assert getattr(anchors, name)["citation"], name
        assert name in anchors.CITATIONS


def test_compare_to_table3_real_and_synthetic():
    real = pd.DataFrame({"class": ["Asian", "Black", "White"], "auc": [0.9, 0.8, 0.85],
                         "ci_low": [0.85, 0.75, 0.8], "ci_high": [0.95, 0.85, 0.9]})
    table = anchors.compare_to_table3(real, "CheXpert", source="mimic")
    assert table.loc[1, "paper_class"] == "Black" and table.loc[1, "paper_auc"] == 0.980
    assert (table.comparison.iloc[:3] == "same class").all()
    assert table.iloc[-1]["class"] == "macro (mean)"
    assert table.iloc[-1]["ours"] == pytest.approx(0.85)
    synthetic = anchors.compare_to_table3(real.assign(**{"class": ["A", "B", "C"]}))
    assert (synthetic.comparison == "for scale only").all()
    assert synthetic.paper_class.iloc[:3].tolist() == ["", "", ""]      # never paired with a race
    assert synthetic.paper_auc.iloc[:3].isna().all() and synthetic.paper_auc.iloc[-1] > 0.9
    with pytest.raises(ValueError, match="MIMIC-CXR"):
        anchors.compare_to_table3(real, "Nowhere")


def test_image_panels_draw_each_image_and_its_second_row_on_one_scale():
    x = RNG.random((16, 16))
    images = {"original": x, "high-pass": x - x.mean()}          # the second one is signed
    spectra = {k: np.abs(np.fft.fft2(v)) for k, v in images.items()}
    fig = plots.image_panels(images, "two images", below=spectra, below_max=5.0)
    top, bottom = fig.axes[:2], fig.axes[2:]
    assert [a.get_title() for a in top] == ["original", "high-pass"]
    assert fig._suptitle.get_text() == "two images"
    assert top[0].images[0].get_clim() == (0.0, 1.0)
    assert top[1].images[0].get_clim() == pytest.approx((images["high-pass"].min(), images["high-pass"].max()))
    assert all(a.images[0].get_clim() == (0, 5.0) for a in bottom)
    assert (top[0].get_ylabel(), bottom[0].get_ylabel()) == ("image", "log |FFT|")
    plt.close(fig)
    one_row = plots.image_panels({"u8": np.full((4, 4), 200, np.uint8)}, "one")
    assert len(one_row.axes) == 1 and one_row.axes[0].images[0].get_clim() == (0.0, 255.0)
    plt.close(one_row)


def test_paired_points_join_each_pair_and_refuse_unpaired_values():
    fig = plots.paired_points([0.6, 0.62, 0.61], [0.8, 0.85, 0.9], ("patient-level", "image-level"),
                              xlabel="split", ylabel="AUC", title="the split changes the score")
    ax = fig.axes[0]
    assert len(ax.lines) == 3 and [t.get_text() for t in ax.get_xticklabels()] == ["patient-level", "image-level"]
    assert ax.lines[1].get_ydata().tolist() == [0.62, 0.85]
    np.testing.assert_allclose(ax.collections[1].get_offsets()[:, 1], [0.8, 0.85, 0.9])
    _assert_labelled(fig)
    with pytest.raises(ValueError, match="pairs"):
        plots.paired_points([0.1], [0.2, 0.3], ("a", "b"), xlabel="x", ylabel="y", title="t")


def test_one_palette_and_one_png_helper():
    assert plots.colours(10) == plots.PALETTE + plots.PALETTE[:2]
    fig, _ = plt.subplots()
    n_open = len(plt.get_fignums())
    assert plots.figure_png(fig).startswith(b"\x89PNG\r\n\x1a\n")
    assert len(plt.get_fignums()) == n_open - 1                  # a pyplot figure is closed
