"""The degradation explorer, driven without a browser: setting .value fires the callbacks; and
the protocol every course widget follows (factory that displays, ``draw=False``, one shape)."""
from __future__ import annotations

import ipywidgets as widgets
import numpy as np
import pandas as pd
import pytest

from cxrlab.toolbox import widgets as course_widgets
from cxrlab.toolbox.widgets import degradation as W
from cxrlab.toolbox.widgets import test_mix, threshold

PNG = b"\x89PNG\r\n\x1a\n"


def brightness_model(images: np.ndarray) -> np.ndarray:
    """A stand-in model whose output depends on detail: P(B) rises with the image's high-frequency energy."""
    images = np.asarray(images, dtype=float)
    detail = np.abs(np.diff(images, axis=-1)).mean(axis=(-2, -1))
    p = 1 / (1 + np.exp(-(detail - 0.05) * 40))
    return np.stack([1 - p, p], axis=1)


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).random((32, 32)).astype(np.float32)


def test_slider_moves_change_the_prediction_text(image):
    ex = W.DegradationExplorer(image, brightness_model, ["A", "B"], "high_pass", level=1, draw=False)
    assert "cxr-prediction" in ex.prediction._dom_classes
    before = ex.prediction.value
    ex.slider.value = 150
    assert ex.prediction.value != before
    assert "high_pass d=150" in ex.prediction.value
    assert ex.proba[1] < 0.5 < brightness_model(image[None])[0, 1]


def test_dropdown_swaps_the_slider_kind_and_range(image):
    ex = W.DegradationExplorer(image, brightness_model, ["A", "B"], draw=False)
    ex.dropdown.value = "downsample"
    assert isinstance(ex.slider, widgets.IntSlider)
    assert ex.slider_box.children == (ex.slider,)
    assert (ex.slider.min, ex.slider.max) == (4, 64)
    ex.slider.value = 4
    assert "downsample k=4" in ex.prediction.value
    ex.dropdown.value = "noise"
    assert isinstance(ex.slider, widgets.FloatSlider) and ex.slider.max == pytest.approx(0.4)
    assert "cxr-strength" in ex.slider._dom_classes


def test_old_slider_is_disconnected(image):
    calls = []
    ex = W.DegradationExplorer(image, lambda x: (calls.append(1), brightness_model(x))[1], ["A", "B"], draw=False)
    old = ex.slider
    ex.dropdown.value = "blur"
    n = len(calls)
    old.value = old.min
    assert len(calls) == n


def test_tiles_and_figure(image):
    ex = W.DegradationExplorer(image, brightness_model, ["A", "B"], "keep_tile", level=4)
    assert ex.figure.value[:8] == b"\x89PNG\r\n\x1a\n"
    kept = ex.degraded()[0].numpy()
    assert (kept[:10] == 0).all() and (kept[11:21, 11:21] == image[11:21, 11:21]).all()


def test_prediction_html_and_predictor():
    text = W.prediction_html(["A", "B", "C"], np.array([0.1, 0.7, 0.2]), "clean")
    assert "<b>B 0.700</b>" in text and text.startswith("<span>clean:")

    class Binary:
        def predict(self, images):
            return np.full(len(images), 0.25)

    np.testing.assert_allclose(W.predictor(Binary())(np.zeros((2, 4, 4))), [[0.75, 0.25]] * 2)
    with pytest.raises(KeyError, match="unknown degradation"):
        W.DegradationExplorer(np.zeros((8, 8)), brightness_model, ["A", "B"], "sepia")


def test_explorer_shows_the_true_class_and_whether_the_prediction_is_right(image):
    ex = W.DegradationExplorer(image, brightness_model, ["A", "B"], "high_pass", level=1,
                               draw=False, true_class="B")
    assert "true: B; prediction right" in ex.prediction.value
    ex.slider.value = 150                         # detail gone: the stand-in model says A
    assert "true: B; prediction wrong" in ex.prediction.value
    assert "true:" not in W.prediction_html(["A", "B"], np.array([0.4, 0.6]))


def test_first_image_right_at_skips_images_misclassified_when_degraded():
    rng = np.random.default_rng(1)
    flat = np.full((32, 32), 0.5, np.float32)      # no detail: the stand-in model says A
    busy = rng.random((32, 32)).astype(np.float32)  # detail: B, and still B after a mild high-pass
    images = np.stack([flat, busy, busy])
    assert W.first_image_right_at(brightness_model, images, [1, 1, 1], "high_pass", [1, 25]) == 1
    assert W.first_image_right_at(brightness_model, images, [0, 0, 0], "high_pass", [1]) == 0


# --- the protocol of all three widgets ---------------------------------------------------------

def _degradation(draw: bool) -> tuple[course_widgets.CourseWidget, callable]:
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    w = W.degradation_explorer(image, brightness_model, ["A", "B"], "high_pass", level=1, draw=draw)
    return w, lambda: setattr(w.slider, "value", 150)


def _test_mix(draw: bool) -> tuple[course_widgets.CourseWidget, callable]:
    rng = np.random.default_rng(0)
    test = pd.DataFrame({"race": rng.choice(list("ABC"), 120), "site": rng.choice(["s1", "s2"], 120),
                         "no_finding": rng.random(120) < 0.5,
                         "patient_id": [f"p{i}" for i in range(120)]})
    proba = rng.dirichlet([1, 1, 1], 120)
    w = test_mix.mix_widget(test, proba, list("ABC"), draw=draw, n_boot=10)
    return w, lambda: setattr(w.sliders["s1"], "value", 0.9)


def _threshold(draw: bool) -> tuple[course_widgets.CourseWidget, callable]:
    rng = np.random.default_rng(0)
    healthy = rng.random(200) < 0.5
    score = np.clip(healthy * 0.3 + rng.random(200) * 0.7, 0, 1)
    w = threshold.threshold_widget(healthy, score, rng.choice(list("AB"), 200), 0.2, draw=draw)
    return w, lambda: setattr(w.slider, "value", 0.4)


FACTORIES = {"degradation": _degradation, "test_mix": _test_mix, "threshold": _threshold}


@pytest.fixture
def displayed(monkeypatch) -> list:
    """What the factories hand to IPython's ``display`` (recorded instead of shown)."""
    import IPython.display

    shown: list = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs: shown.extend(objs))
    return shown


@pytest.mark.parametrize("name", FACTORIES)
def test_factory_displays_the_widget_once_and_draws_a_png(name, displayed):
    w, move = FACTORIES[name](draw=True)
    assert isinstance(w, course_widgets.CourseWidget)
    assert displayed == [w.widget] and isinstance(w.widget, widgets.Box)
    assert isinstance(w.figure, widgets.Image) and bytes(w.figure.value).startswith(PNG)
    before = w.figure.value
    move()                                     # a control moves, as a learner's drag would
    assert bytes(w.figure.value).startswith(PNG) and w.figure.value != before
    assert w.update() is w.result              # update() returns what the setting computed
    assert "application/vnd.jupyter.widget-view+json" in w._repr_mimebundle_()


@pytest.mark.parametrize("name", FACTORIES)
def test_draw_false_computes_everything_but_shows_and_renders_nothing(name, displayed):
    w, move = FACTORIES[name](draw=False)
    drawn, _ = FACTORIES[name](draw=True)
    assert len(displayed) == 1                 # only the drawn one
    assert bytes(w.figure.value) == b""
    first = w.result
    move()
    assert bytes(w.figure.value) == b"" and w.result is not first
    same = drawn.result
    if isinstance(same, np.ndarray):
        np.testing.assert_allclose(FACTORIES[name](draw=False)[0].result, same)
    elif isinstance(same, pd.DataFrame):
        pd.testing.assert_frame_equal(FACTORIES[name](draw=False)[0].result, same)
    else:
        assert FACTORIES[name](draw=False)[0].result.thresholds == same.thresholds
