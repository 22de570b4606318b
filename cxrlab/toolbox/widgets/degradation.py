"""Chapter 4's degradation explorer: pick a degradation and its strength, watch the model.

A dropdown chooses the degradation (low-pass, high-pass, downsampling, noise, blur, bright-pixel
clipping, one tile kept or blacked out), a slider its strength. The widget shows the degraded
image, its log Fourier spectrum and the model's class probabilities as a bar chart (one PNG in
an ``ipywidgets.Image``: no ``Output`` capture, which strict nbval cannot compare), and writes
the probabilities as text into an ``HTML`` element with the CSS class ``cxr-prediction`` (the
browser test reads it). All logic is in plain methods, so tests drive it by setting ``.value``.
:func:`degradation_explorer` builds and displays it (the widgets' protocol: see
:mod:`cxrlab.toolbox.widgets`).

>>> import numpy as np
>>> ex = degradation_explorer(np.full((32, 32), 0.5), lambda x: np.array([[0.2, 0.8]]), ["A", "B"],
...                           draw=False)
>>> ex.dropdown.value = "noise"; ex.slider.value = 0.1; ex.spec.name, ex.result.tolist()
('noise', [0.2, 0.8])
"""
from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.figure import Figure

from cxrlab.core.plots import colours
from cxrlab.toolbox.degrade import BlackOutTile, KeepTile, as_float_tensor, log_spectrum
from cxrlab.toolbox.sweeps import SEVERITY_SWEEPS, SweepSpec
from cxrlab.toolbox.widgets import CourseWidget, shown

PREDICTION_CLASS = "cxr-prediction"
SLIDER_CLASS = "cxr-strength"
DROPDOWN_CLASS = "cxr-degradation"

#: What the explorer offers: every sweep plus the two tile experiments (tile index 0-8, row-major).
EXPLORER_OPTIONS: dict[str, SweepSpec] = dict(SEVERITY_SWEEPS) | {
    "keep_tile": SweepSpec("keep_tile", "keep one tile of 3x3", "tile", "index 0-8, row-major",
                           tuple(range(9)), lambda t: KeepTile(int(t)), integer=True),
    "black_out_tile": SweepSpec("black_out_tile", "black out one tile of 3x3", "tile",
                                "index 0-8, row-major", tuple(range(9)),
                                lambda t: BlackOutTile(int(t)), integer=True),
}

Predictor = Callable[[np.ndarray], np.ndarray]


def predictor(trained_model: Any) -> Predictor:
    """A ``predict_fn`` for the explorer from a :class:`cxrlab.core.store.TrainedModel`:
    float images ``(N, H, W)`` -> class probabilities ``(N, C)`` (binary models give ``[1-p, p]``)."""
    def predict_fn(images: np.ndarray) -> np.ndarray:
        proba = np.asarray(trained_model.predict(np.asarray(images, dtype=np.float32)))
        return np.stack([1 - proba, proba], axis=1) if proba.ndim == 1 else proba
    return predict_fn


def prediction_html(classes: Sequence[str], proba: np.ndarray, caption: str = "",
                    true_class: str | None = None) -> str:
    """The probabilities as HTML text, e.g. ``A 0.712 · B 0.201 · C 0.087`` (most likely in bold),
    and with ``true_class`` the truth and whether the most likely class is right."""
    best = int(np.argmax(proba))
    parts = []
    for i, (name, p) in enumerate(zip(classes, proba)):
        text = f"{html.escape(str(name))} {float(p):.3f}"
        parts.append(f"<b>{text}</b>" if i == best else text)
    lead = f"{html.escape(caption)}: " if caption else ""
    truth = ""
    if true_class is not None:
        verdict = "right" if str(classes[best]) == str(true_class) else "wrong"
        truth = f" (true: {html.escape(str(true_class))}; prediction {verdict})"
    return f"<span>{lead}predicted probabilities: {' · '.join(parts)}{truth}</span>"


def first_image_right_at(predict_fn: Predictor, images: np.ndarray, y_true: Sequence[int],
                         degradation: str, levels: Sequence[float], limit: int = 64) -> int:
    """Index of the first of ``images[:limit]`` that the model classifies right at every one of
    ``levels`` of ``degradation`` (an explorer starting image whose prediction can then be
    watched breaking); 0 if none is."""
    spec = EXPLORER_OPTIONS[degradation]
    x = as_float_tensor(np.asarray(images[:limit])).detach().cpu().float()
    right = np.ones(len(x), bool)
    for level in levels:
        proba = np.asarray(predict_fn(spec.make(level)(x.clone()).numpy()))
        right &= proba.argmax(axis=1) == np.asarray(y_true[:limit])
    return int(np.flatnonzero(right)[0]) if right.any() else 0


def _slider_step(spec: SweepSpec) -> float:
    low, high = spec.bounds
    return 1 if spec.integer else float(np.round((high - low) / 200, 4)) or 0.001


def make_slider(spec: SweepSpec, value: float | None = None) -> widgets.Widget:
    """An ``IntSlider`` (integer parameters) or ``FloatSlider`` spanning the sweep's levels."""
    low, high = spec.bounds
    value = spec.levels[len(spec.levels) // 2] if value is None else value
    common = dict(description=f"{spec.param}", continuous_update=False,
                  style={"description_width": "initial"}, layout=widgets.Layout(width="420px"))
    if spec.integer:
        slider = widgets.IntSlider(value=int(value), min=int(low), max=int(high), step=1, **common)
    else:
        slider = widgets.FloatSlider(value=float(value), min=float(low), max=float(high),
                                     step=_slider_step(spec), readout_format=".3g", **common)
    slider.add_class(SLIDER_CLASS)
    return slider


def render_panels(original: np.ndarray, degraded: np.ndarray, classes: Sequence[str], proba: np.ndarray,
                  title: str = "", true_class: str | None = None) -> Figure:
    """Figure with the degraded image, its log spectrum and a bar chart of the probabilities."""
    fig = Figure(figsize=(9.6, 3.0), dpi=80)
    ax_img, ax_spec, ax_bar = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.1]})
    lo, hi = np.percentile(degraded, [0.5, 99.5])
    ax_img.imshow(degraded, cmap="gray", vmin=min(lo, 0.0) if lo < 0 else 0.0, vmax=max(hi, 1e-6) if lo < 0 else 1.0)
    ax_img.set_title(title or "image", fontsize=9)
    ax_spec.imshow(log_spectrum(degraded), cmap="magma",
                   vmin=0, vmax=float(log_spectrum(original).max()))
    ax_spec.set_title("log |FFT| (zero frequency centred)", fontsize=9)
    for ax in (ax_img, ax_spec):
        ax.set_xticks([]); ax.set_yticks([])
    ax_bar.bar(range(len(classes)), proba, color=colours(len(classes)))
    ax_bar.set_xticks(range(len(classes)))
    ax_bar.set_xticklabels([str(c) for c in classes])
    ax_bar.set_ylim(0, 1)
    ax_bar.set_xlabel("class" if true_class is None else f"class (true: {true_class})")
    ax_bar.set_ylabel("predicted probability")
    ax_bar.set_title("model output", fontsize=9)
    fig.tight_layout()
    return fig


class DegradationExplorer(CourseWidget):
    """Dropdown (degradation) + slider (strength) -> image, spectrum and class probabilities.

    ``result`` (also ``proba``) is the model's probabilities for the current setting.

    Args:
        image: one image, uint8 or float in [0, 1], ``(H, W)`` or ``(1, H, W)``.
        predict_fn: float images ``(N, H, W)`` -> probabilities ``(N, C)``; see :func:`predictor`.
        classes: class names, in the order of ``predict_fn``'s columns.
        degradation: the initially selected key of :data:`EXPLORER_OPTIONS`.
        level: initial slider value (default: the middle of the sweep).
        draw: render the figure (switch off in tests that only need the numbers).
        true_class: the image's true class, shown beside the prediction (right or wrong).
    """

    def __init__(self, image: np.ndarray | torch.Tensor, predict_fn: Predictor, classes: Sequence[str],
                 degradation: str = "high_pass", level: float | None = None, draw: bool = True,
                 true_class: str | None = None) -> None:
        if degradation not in EXPLORER_OPTIONS:
            raise KeyError(f"unknown degradation {degradation!r}; choose one of {', '.join(EXPLORER_OPTIONS)}")
        t = as_float_tensor(image).detach().cpu().float()
        self.image = t.reshape(-1, *t.shape[-2:])[:1]          # (1, H, W)
        self.predict_fn, self.classes, self.draw = predict_fn, list(classes), draw
        self.true_class = true_class
        self.proba = np.zeros(len(self.classes))
        self.dropdown = widgets.Dropdown(options=[(s.label, k) for k, s in EXPLORER_OPTIONS.items()],
                                         value=degradation, description="degradation")
        self.dropdown.add_class(DROPDOWN_CLASS)
        self.slider = make_slider(self.spec, level)
        self.slider_box = widgets.HBox([self.slider])
        self.unit = widgets.HTML()
        self.prediction = widgets.HTML()
        self.prediction.add_class(PREDICTION_CLASS)
        self.figure = widgets.Image(format="png", layout=widgets.Layout(width="768px"))
        self.dropdown.observe(self.on_degradation, names="value")
        self.slider.observe(self.on_level, names="value")
        self.widget = widgets.VBox([widgets.HBox([self.dropdown, self.slider_box, self.unit]),
                                    self.figure, self.prediction])
        self.update()

    @property
    def result(self) -> np.ndarray:
        """The model's class probabilities for the current degradation and strength."""
        return self.proba

    @property
    def spec(self) -> SweepSpec:
        """The selected degradation's description."""
        return EXPLORER_OPTIONS[self.dropdown.value]

    def on_degradation(self, change: dict | None = None) -> None:
        """Dropdown callback: a new slider for the new degradation's parameter, then redraw."""
        self.slider.unobserve(self.on_level, names="value")
        self.slider = make_slider(self.spec)
        self.slider.observe(self.on_level, names="value")
        self.slider_box.children = (self.slider,)
        self.update()

    def on_level(self, change: dict | None = None) -> None:
        """Slider callback: redraw at the new strength."""
        self.update()

    def degraded(self) -> torch.Tensor:
        """The image under the current degradation and strength, ``(1, H, W)``."""
        return self.spec.make(self.slider.value)(self.image.clone())

    def update(self, change: object = None) -> np.ndarray:
        """Degrade, predict, and refresh the text and (if ``draw``) the figure; the probabilities."""
        spec, level = self.spec, self.slider.value
        degraded = self.degraded()
        self.proba = np.asarray(self.predict_fn(degraded.numpy()), dtype=float).reshape(-1)
        caption = f"{spec.name} {spec.param}={level:g}"
        self.unit.value = f"<small>{html.escape(spec.unit)}</small>"
        self.prediction.value = prediction_html(self.classes, self.proba, caption, self.true_class)
        if self.draw:
            self.show_figure(render_panels(self.image[0].numpy(), degraded[0].numpy(), self.classes,
                                           self.proba, title=caption, true_class=self.true_class))
        return self.proba


def degradation_explorer(image: np.ndarray | torch.Tensor, predict_fn: Predictor,
                         classes: Sequence[str], degradation: str = "high_pass",
                         level: float | None = None, true_class: str | None = None,
                         draw: bool = True) -> DegradationExplorer:
    """Build chapter 4's degradation explorer and display it (``draw=False``: neither displayed
    nor drawn, for tests); see :class:`DegradationExplorer`."""
    return shown(DegradationExplorer(image, predict_fn, classes, degradation, level, draw,
                                     true_class))
