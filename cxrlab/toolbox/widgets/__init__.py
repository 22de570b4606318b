"""Interactive widgets, one module per concept: ``degradation`` (ch4 explorer), ``test_mix``
(ch3 test-set mix), ``threshold`` (ch5 decision threshold).

All three follow one protocol, so a chapter, a test and an instructor use them the same way:

* a **factory function** builds the widget and displays it: ``degradation_explorer(...)``,
  ``mix_widget(...)``, ``threshold_widget(...)``; each returns the widget object and takes
  ``draw=False`` (tests, hidden checks): nothing is displayed and no figure is rendered, but
  every number and text is computed;
* the object is a :class:`CourseWidget`: ``widget`` (the ipywidgets container), ``figure`` (an
  ``ipywidgets.Image`` holding a PNG from :func:`cxrlab.core.plots.figure_png`), ``update()``
  (what the controls' observers call; returns ``result``) and ``result`` (what the current
  setting computed: probabilities, a metrics table, an operating point);
* tests drive it without a browser by setting a control's ``.value`` or clicking a button.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, TypeVar

from matplotlib.figure import Figure

from cxrlab.core.plots import figure_png


class CourseWidget(ABC):
    """What every course widget has: ``widget``, ``figure``, ``draw``, ``update()``, ``result``.

    Subclasses build ``self.widget`` and ``self.figure`` (an ``ipywidgets.Image``) and set
    ``self.draw``; :meth:`update` recomputes from the controls and calls :meth:`show_figure`.
    """

    widget: Any
    figure: Any
    draw: bool

    @abstractmethod
    def update(self, change: object = None) -> Any:
        """Recompute from the controls, refresh text and (if ``draw``) the figure; return ``result``."""

    @property
    @abstractmethod
    def result(self) -> Any:
        """What the current setting computed."""

    def show_figure(self, fig: Figure) -> None:
        """Put ``fig`` into ``self.figure`` as PNG bytes."""
        self.figure.value = figure_png(fig)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


W = TypeVar("W", bound=CourseWidget)


def shown(course_widget: W) -> W:
    """Display ``course_widget.widget`` unless it was built with ``draw=False``; return it
    (the last step of every factory function)."""
    if course_widget.draw:
        from IPython.display import display

        display(course_widget.widget)
    return course_widget
