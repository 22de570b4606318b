"""Label and demographic mapping shared by the real sources: findings, sex, self-reported race.

Self-reported race is mapped to the classes of Gichoya et al. 2022 (Asian, Black, White);
anything else becomes missing, and the caller keeps the original string in ``race_original``.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

#: The 13 finding labels of the CheXpert labeller (CheXpert and MIMIC-CXR-JPG's chexpert table).
CHEXPERT_LABELS = ("Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                   "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
                   "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices")
RACE_CLASSES = ("Asian", "Black", "White")


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def finding_column(label: str) -> str:
    """``finding_<snake_case>`` for a finding name (``'Pleural Effusion'`` -> ``finding_pleural_effusion``)."""
    snake = re.sub(r"[^a-z0-9]+", "_", label.strip().lower()).strip("_")
    return "no_finding" if snake == "no_finding" else f"finding_{snake}"


def map_sex(value: Any) -> Any:
    """``'M'``/``'F'`` from Male/Female/M/F strings, else missing."""
    if _missing(value):
        return pd.NA
    text = str(value).strip().lower()
    if text in ("m", "male"):
        return "M"
    if text in ("f", "female"):
        return "F"
    return pd.NA


def race_class(text: Any) -> Any:
    """Asian/Black/White when ``text`` names exactly one of them, else missing.

    Works on the value lists of MIMIC-IV (``'BLACK/AFRICAN AMERICAN'``, ``'ASIAN - CHINESE'``),
    CheXpert (``'White, non-Hispanic'``) and TCIA (``'Black or African American'``). Hispanic
    or Latino values (as race or inside the string) are not mapped, following the paper.

    >>> [race_class(v) for v in ["WHITE - RUSSIAN", "Black or African American", "OTHER"]]
    ['White', 'Black', <NA>]
    """
    if _missing(text):
        return pd.NA
    low = str(text).lower()
    if is_hispanic(low):
        return pd.NA
    hits = [c for c in RACE_CLASSES if re.search(rf"\b{c.lower()}\b", low)]
    if "african" in low and "Black" not in hits:
        hits.append("Black")
    return hits[0] if len(set(hits)) == 1 else pd.NA


def is_hispanic(text: Any) -> bool:
    """True when a race/ethnicity string says Hispanic or Latino (and not *non*-Hispanic)."""
    if _missing(text):
        return False
    low = str(text).lower()
    low = re.sub(r"\b(non|not)[\s-]*(hispanic|latino|latina|latinx)\S*", "", low)
    return bool(re.search(r"hispanic|latin[oax]", low))


def chexpert_label(value: Any) -> Any:
    """A CheXpert-labeller value as a nullable boolean: 1 -> True, 0 or blank -> False, -1 -> missing."""
    if _missing(value):
        return False  # blank: not mentioned in the report
    return {1.0: True, 0.0: False, -1.0: pd.NA}.get(float(value), pd.NA)
