"""Patients and their studies: covariates, persistent anatomy, findings and positioning.

Everything is sampled in vectorised form into two tables: one row per patient (covariates
and the anatomy that stays the same across that patient's follow-ups) and one row per study
(age at the study, view, findings, positioning, exposure). :mod:`.render` draws one study
from a merged row. Lengths are in normalised image units: the image spans [-1, 1].

>>> import numpy as np
>>> from data_fetch.synthetic.config import SyntheticConfig
>>> cfg = SyntheticConfig(n_patients=50)
>>> pats = sample_patients(cfg)
>>> studies = sample_studies(cfg, pats)
>>> len(pats), bool(len(studies) >= 50), sorted(pats["group"].unique())
(50, True, ['A', 'B', 'C'])
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit, logit

from data_fetch.synthetic.config import FINDINGS, GROUPS, SyntheticConfig

MAX_STUDIES = 8

# How group membership shifts the covariates at covariate_shift = 1 (groups A, B, C).
# Sized so that covariate-only classifiers reach AUC about 0.55-0.65, as in Gichoya et al.
# 2022 (BMI alone 0.55, disease distribution 0.61). Abstract: no real population is modelled.
GROUP_SHIFT = {
    "age": (0.0, -5.0, 4.0),                 # years
    "bmi": (0.0, 2.2, -1.8),                 # kg/m^2
    "female": (0.0, 0.06, -0.05),            # change in probability
    "ap": (0.0, 0.10, 0.02),                 # change in probability of an AP study
    "cardiomegaly": (0.0, 0.6, -0.2),        # change in log-odds
    "effusion": (0.0, 0.35, 0.0),
    "opacity": (0.0, 0.25, 0.2),
    "nodule": (0.0, -0.2, 0.45),
}
AGE_EFFECT = {"cardiomegaly": 0.035, "effusion": 0.03, "opacity": 0.01, "nodule": 0.03}


def _rng(cfg: SyntheticConfig, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([cfg.seed, stream]))


def _shift(name: str, groups: np.ndarray, cfg: SyntheticConfig) -> np.ndarray:
    return np.asarray(GROUP_SHIFT[name])[groups] * cfg.covariate_shift


def _site_probabilities(cfg: SyntheticConfig) -> np.ndarray:
    """P(site | group): a mix of uniform and each group's own site (weight = confounding)."""
    n = cfg.n_sites
    uniform = np.full((3, n), 1.0 / n)
    own = np.zeros((3, n))
    own[np.arange(3), np.arange(3) % n] = 1.0
    return (1 - cfg.site_confounding) * uniform + cfg.site_confounding * own


def sample_patients(cfg: SyntheticConfig) -> pd.DataFrame:
    """One row per patient: group, site, sex, age, BMI, chronic findings and anatomy."""
    rng = _rng(cfg, 1)
    n = cfg.n_patients
    g = rng.choice(3, size=n, p=np.asarray(cfg.group_proportions) / sum(cfg.group_proportions))
    probs = _site_probabilities(cfg)[g]
    site = (rng.random(n)[:, None] > np.cumsum(probs, axis=1)).sum(axis=1)
    female = rng.random(n) < np.clip(cfg.female_fraction + _shift("female", g, cfg), 0, 1)
    age = np.clip(rng.normal(cfg.age_mean + _shift("age", g, cfg), cfg.age_sd), 18, 90)
    bmi = _sample_bmi(cfg, g, rng)
    df = pd.DataFrame({
        "patient_index": np.arange(n),
        "patient_id": [f"syn{cfg.seed:x}-p{i:06d}" for i in range(n)],
        "group_index": g, "group": np.asarray(GROUPS)[g],
        "site_index": np.minimum(site, cfg.n_sites - 1),
        "female": female, "age0": age, "bmi": bmi,
        "n_studies": np.minimum(1 + rng.poisson(cfg.studies_mean - 1.0, n), MAX_STUDIES),
        "signal_amp": np.exp(rng.normal(0.0, cfg.signal_spread, n)),
    })
    df["site"] = [f"site{i + 1}" for i in df["site_index"]]
    for name in ("cardiomegaly", "nodule"):
        df[f"has_{name}"] = rng.random(n) < _prevalence(cfg, name, g, age)
    return pd.concat([df, _sample_anatomy(rng, female, age, bmi)], axis=1)


def _sample_bmi(cfg: SyntheticConfig, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    mean = cfg.bmi_mean + _shift("bmi", g, cfg)
    sigma = np.sqrt(np.log1p((cfg.bmi_sd / mean) ** 2))
    return np.clip(np.exp(rng.normal(np.log(mean) - sigma**2 / 2, sigma)), 15.0, 60.0)


def _prevalence(cfg: SyntheticConfig, name: str, g: np.ndarray, age: np.ndarray) -> np.ndarray:
    base = np.clip(getattr(cfg, f"prev_{name}"), 1e-6, 1 - 1e-6)
    shift = _shift(name, g, cfg) + AGE_EFFECT[name] * (age - cfg.age_mean)
    return np.where(base <= 1e-6, 0.0, expit(logit(base) + shift))


def _sample_anatomy(rng: np.random.Generator, female: np.ndarray, age: np.ndarray,
                    bmi: np.ndarray) -> pd.DataFrame:
    """Anatomy that persists across a patient's studies (normalised units)."""
    n = len(female)
    z = lambda sd: rng.normal(0.0, sd, n)  # noqa: E731 - local shorthand
    fat = (bmi - 25.0) / 10.0
    male = ~female
    old = np.clip((age - 40.0) / 40.0, 0.0, 1.5)
    return pd.DataFrame({
        "body_w": np.clip(0.80 + 0.10 * fat + 0.03 * male + z(0.03), 0.62, 1.05),
        "thorax_w": np.clip(0.60 + 0.035 * male + 0.015 * fat + z(0.025), 0.50, 0.74),
        "apex_y": -0.70 + z(0.025),
        "base_y": 0.40 + 0.03 * male - 0.03 * fat + 0.02 * old + z(0.04),
        "dome": 0.11 + z(0.015),
        "right_high": 0.045 + z(0.015),
        "heart_w": np.clip(0.31 - 0.02 * female + 0.015 * old + z(0.02), 0.22, 0.40),
        "heart_h": 0.24 + z(0.015),
        "heart_x": 0.055 + z(0.015),
        "knob_r": 0.035 + 0.012 * old + z(0.005),
        "rib_spacing": 0.105 + 0.006 * male + z(0.006),
        "rib_y0": -0.79 + z(0.015),
        "rib_curve": 0.30 + z(0.04),
        "clav_y": -0.60 + z(0.03),
        "clav_tilt": 0.12 + z(0.03),
        "bone": np.clip(1.0 + 0.08 * male - (0.10 + 0.12 * female) * old + z(0.06), 0.5, 1.3),
        "soft": np.clip(1.0 + 0.22 * fat + z(0.04), 0.75, 1.4),
        "breast": np.where(female, np.clip(0.85 + 0.45 * fat + z(0.2), 0.3, 1.8), 0.0),
        "arm_gap": 0.07 + z(0.02),
        "gastric": rng.random(n) < 0.6,
        "nodule_x": rng.uniform(0.25, 0.50, n) * rng.choice([-1, 1], n),
        "nodule_y": rng.uniform(-0.45, 0.15, n),
        "nodule_r": rng.uniform(0.022, 0.040, n),
        "axial_rot": z(2.5),             # habitual rotation about the body axis (degrees)
        "lung_density": np.exp(z(0.18)),  # lung tissue density relative to the CT's
    })


def sample_studies(cfg: SyntheticConfig, patients: pd.DataFrame) -> pd.DataFrame:
    """One row per study (image): age, view, true findings, positioning and exposure."""
    rng = _rng(cfg, 2)
    pi = np.repeat(patients["patient_index"].to_numpy(), patients["n_studies"].to_numpy())
    k = np.concatenate([np.arange(n) for n in patients["n_studies"]]) if len(pi) else pi
    n = len(pi)
    p = patients.iloc[pi].reset_index(drop=True)
    g = p["group_index"].to_numpy()
    gaps = rng.exponential(0.8, n)  # years between follow-ups
    gaps[k == 0] = 0.0
    age = p["age0"].to_numpy() + _cumsum_within(gaps, k)
    ap_p = cfg.ap_fraction + _shift("ap", g, cfg) + 0.004 * (age - cfg.age_mean)
    studies = pd.DataFrame({
        "patient_index": pi, "study_index": k, "age": np.clip(age, 18.0, 95.0),
        "view": np.where(rng.random(n) < np.clip(ap_p, 0, 1), "AP", "PA"),
    })
    studies["true_cardiomegaly"] = p["has_cardiomegaly"].to_numpy()
    studies["true_nodule"] = p["has_nodule"].to_numpy()
    for name in ("effusion", "opacity"):
        studies[f"true_{name}"] = rng.random(n) < _prevalence(cfg, name, g, age)
    studies["true_no_finding"] = ~studies[[f"true_{f}" for f in FINDINGS]].any(axis=1)
    j = cfg.positioning
    pose = {
        "shift_x": rng.normal(0, 0.025 * j, n), "shift_y": rng.normal(0, 0.025 * j, n),
        "rot": rng.normal(0, 0.025 * j, n), "breath": rng.normal(0, 0.03 * j, n),
        "scale": 1.0 + rng.normal(0, 0.02 * j, n),
        "effusion_side": rng.choice([-1, 1, 0], n, p=[0.4, 0.35, 0.25]),
        "effusion_h": rng.uniform(0.06, 0.16, n),
        "opacity_x": rng.uniform(0.22, 0.5, n) * rng.choice([-1, 1], n),
        "opacity_y": rng.uniform(-0.35, 0.3, n),
        "opacity_r": rng.uniform(0.09, 0.17, n),
        "exposure": rng.normal(0.0, 0.04, n),
        "marker_jitter": rng.uniform(-1, 1, (n,)),
        "axial_jitter": rng.normal(0, 2.0 * j, n),   # this study's extra rotation (degrees)
    }
    return pd.concat([studies, pd.DataFrame(pose)], axis=1)


def _cumsum_within(values: np.ndarray, index_in_group: np.ndarray) -> np.ndarray:
    """Cumulative sum restarting wherever ``index_in_group`` is 0."""
    total = np.cumsum(values)
    starts = np.maximum.accumulate(np.where(index_in_group == 0, np.arange(len(values)), 0))
    return total - total[starts] + values[starts]


def record_findings(cfg: SyntheticConfig, studies: pd.DataFrame,
                    groups: np.ndarray) -> pd.DataFrame:
    """What the hospital recorded: the truth, minus planted under-recording for one group.

    ``finding_<name>`` columns hold the record, ``no_finding`` is true when nothing was
    recorded, ``true_<name>`` columns keep the truth.
    """
    rng = _rng(cfg, 3)
    out = pd.DataFrame(index=studies.index)
    target = np.asarray(groups) == cfg.underrecord_group
    for name in FINDINGS:
        truth = studies[f"true_{name}"].to_numpy()
        missed = target & (rng.random(len(studies)) < cfg.underrecord_rate)
        out[f"finding_{name}"] = truth & ~missed
    out["no_finding"] = ~out.any(axis=1)
    return out
