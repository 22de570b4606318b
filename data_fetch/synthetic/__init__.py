"""The synthetic chest X-ray cohort: the course's offline default, with known ground truth.

>>> from data_fetch.synthetic import SyntheticConfig, prepare
>>> cfg = SyntheticConfig(n_patients=800, image_size=64, group_signal=0.0)   # texture off
>>> cfg.image_size, cfg.n_patients
(64, 800)

See ``docs/synthetic_data_card.md`` for every knob, its default, its range and its effect.
"""
from data_fetch.synthetic.card import data_card_markdown, knobs_markdown
from data_fetch.synthetic.cohort import (
    build_table,
    cohort_name,
    generate_cohort,
    make_renderer,
    prepare,
)
from data_fetch.synthetic.config import CT_SIGNAL, FINDINGS, GROUPS, SyntheticConfig
from data_fetch.synthetic.render import Renderer, site_looks
from data_fetch.synthetic.version import GENERATOR_VERSION

__all__ = [
    "CT_SIGNAL",
    "FINDINGS",
    "GENERATOR_VERSION",
    "GROUPS",
    "Renderer",
    "SyntheticConfig",
    "build_table",
    "cohort_name",
    "data_card_markdown",
    "generate_cohort",
    "knobs_markdown",
    "make_renderer",
    "prepare",
    "site_looks",
]
