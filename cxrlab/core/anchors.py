"""The papers' published numbers, as data, each with its citation.

"paper" means the number is printed in the article; "code" means it was read from the authors'
public repository or its saved notebook outputs (Gichoya et al. 2022 published both). Quote the
citation string with the number.

>>> TABLE3["MIMIC-CXR"]["Black"]
0.982
>>> CITATIONS["TABLE3"].startswith("Gichoya")
True
"""
from __future__ import annotations

import numpy as np
import pandas as pd

GICHOYA2022 = ("Gichoya JW et al. AI recognition of patient race in medical imaging: a modelling "
               "study. Lancet Digit Health 2022;4(6):e406-e414. doi:10.1016/S2589-7500(22)00063-2")
GICHOYA2022_CODE = GICHOYA2022 + " (authors' public code and notebook outputs)"
SEYYED_KALANTARI2021 = ("Seyyed-Kalantari L et al. Underdiagnosis bias of artificial "
                        "intelligence algorithms applied to chest radiographs in under-served "
                        "patient populations. Nat Med 2021;27:2176-2182")
GLOCKER2023_CITATION = ("Glocker B et al. Algorithmic encoding of protected characteristics in "
                        "chest X-ray disease detection models. eBioMedicine 2023;89:104467")
BURNS2023_CITATION = ("Burns JL et al. Ability of artificial intelligence to identify self-reported "
                      "race in chest x-ray using pixel intensity counts. J Med Imaging "
                      "2023;10(6):061106")
LOTTER2024_CITATION = ("Lotter W. Acquisition parameters influence AI recognition of race in chest "
                       "x-rays and mitigating these factors reduces underdiagnosis bias. Nat Commun "
                       "2024;15. doi:10.1038/s41467-024-52003-3")
DEGRAVE2021_CITATION = ("DeGrave AJ, Janizek JD, Lee S-I. AI for radiographic COVID-19 detection "
                        "selects shortcuts over signal. Nat Mach Intell 2021;3:610-619")
SEX_AGE_OPEN_CITATION = ("approximate ranges reported in published work, not one study's figures; "
                         "single-study examples: sex AUC 1.0 on NIH ChestX-ray14 and 0.98 "
                         "external (Yi PH et al. Emerg Radiol 2021;28:949-954); sex AUC > 0.99 "
                         "and age MAE 2.1 years in healthy adults (Yang CY et al. J Clin Med "
                         "2021;10:4431). Quote a single study's figure with its own citation")

TABLE3_CLASSES = ("Asian", "Black", "White")

#: One-vs-rest AUC of the ResNet-34 race model, per train/test dataset (paper, Table 3).
TABLE3: dict[str, dict[str, float]] = {
    "MIMIC-CXR": {"Asian": 0.986, "Black": 0.982, "White": 0.981},
    "CheXpert": {"Asian": 0.981, "Black": 0.980, "White": 0.980},
    "Emory CXR": {"Asian": 0.969, "Black": 0.992, "White": 0.988},
}
#: Ranges over the six external train -> test pairs (paper, Table 3).
TABLE3_EXTERNAL: dict[str, tuple[float, float]] = {
    "Asian": (0.914, 0.974), "Black": (0.955, 0.983), "White": (0.947, 0.975)}

#: Race from confounders alone, without the image.
CONFOUNDERS = {
    "bmi_auc": 0.55, "disease_distribution_auc": 0.61, "breast_density_auc": 0.61,
    "findings_labels_auc_range": (0.54, 0.61),       # 14 finding labels, XGBoost, MIMIC (code)
    "intensity_histogram_auc_range": (0.52, 0.60),   # 256-bin histogram, MIMIC (code)
    "source": "paper (BMI, disease, breast density); code (labels, histogram)",
    "citation": GICHOYA2022,
}

#: Macro AUC on stratified test sets (code, MIMIC, DenseNet-121 at 224 px).
STRATIFIED = {
    "overall": 0.94, "bmi_strata": (0.91, 0.97), "age_strata": (0.90, 0.95),
    "male": 0.93, "female": 0.95, "trained_on_no_finding_only": 0.93,
    "frozen_disease_features_linear_head": (0.80, 0.84),
    "source": "code", "citation": GICHOYA2022_CODE,
}

#: Trained AND tested on FFT-filtered images (circular mask of radius d pixels), White AUC,
#: read from the authors' plot (+-0.01); MIMIC, DenseNet-121, 224 px.
DEGRADATION_CURVES = {
    "d": [1, 5, 10, 25, 50, 100, 125, 150, 200],
    "low_pass": [0.54, 0.75, 0.82, 0.89, 0.91, 0.91, 0.91, 0.91, 0.91],
    "high_pass": [0.91, 0.91, 0.91, 0.90, 0.89, 0.85, 0.74, 0.58, 0.50],
    "class": "White", "image_size": 224, "tolerance": 0.01,
    "sex_note": "sex prediction stays at 0.99-1.0 under high-pass and reaches 0.95 by "
                "low-pass d=5",
    "source": "code", "citation": GICHOYA2022_CODE,
}

#: Test-time corruption of a model trained on clean images (code), and bone-density removal
#: by clipping bright pixels (paper).
CORRUPTION = {
    "clean_macro_auc": 0.94,
    "gaussian_noise": {"sigma": 0.1, "macro_auc": 0.69},
    "gaussian_blur": {"sigma_px": 2, "macro_auc": 0.62},
    "bone_density_clipped_black_auc": {"MIMIC-CXR": 0.960, "CheXpert": 0.945},
    "source": "code (corruption); paper (bone density)", "citation": GICHOYA2022,
}

#: 3x3 tiles (code): occluding one tile, or training on one tile alone.
TILES = {
    "one_tile_blacked_out_auc": (0.90, 0.91),
    "one_tile_only_auc": (0.60, 0.88),
    "one_tile_only_worst": "bottom centre", "one_tile_only_best": "top row",
    "source": "code", "citation": GICHOYA2022_CODE,
}

#: Underdiagnosis = false-positive rate of "No Finding" (MIMIC-CXR).
UNDERDIAGNOSIS = {
    "metric": "false-positive rate of 'No Finding' (a sick patient called healthy)",
    "dataset": "MIMIC-CXR",
    "race": {"White": 0.170, "Black": 0.276, "Hispanic": 0.275, "Asian": 0.217},
    "sex": {"female": 0.250, "male": 0.219},
    "age": {"0-20": 0.486, "80+": 0.114},
    "insurance": {"Medicaid": 0.274, "Medicare": 0.162},
    "intersection": {"Hispanic female": 0.356},
    "citation": SEYYED_KALANTARI2021,
}

#: "No Finding" at one global threshold set for FPR 0.2, per self-reported race.
GLOCKER2023 = {
    "threshold_fpr": 0.2,
    "White": {"tpr": 0.79, "fpr": 0.20}, "Black": {"tpr": 0.84, "fpr": 0.23},
    "resampling": "equalise race, then disease prevalence within race, then age within "
                  "race x disease",
    "citation": GLOCKER2023_CITATION,
}

BURNS2023 = {"grey_level_count_auroc": (0.69, 0.77), "citation": BURNS2023_CITATION}

#: The open-data stand-in targets: sex AUC and age MAE in years. Approximate ranges from
#: published work (the age ranges are not traced to one study); quote the examples in the
#: citation string, with their own citations, when a single number is needed.
SEX_AGE_OPEN = {
    "sex_auc": (0.96, 1.0), "age_mae_within_dataset": (3.5, 5.0),
    "age_mae_across_datasets": (6.0, 9.0), "citation": SEX_AGE_OPEN_CITATION,
}

#: The RIKEN age model's error as torchxrayvision documents it (``baseline_models.riken.AgeModel``:
#: "The publication reports a mean absolute error (MAE) between the estimated age and
#: chronological age of 3.67 years").
RIKEN_AGE_MAE = {
    "mae_years": 3.67,
    "citation": ("Ieki H et al. Deep learning-based age estimation from chest X-rays indicates "
                 "cardiovascular prognosis. Commun Med 2022;2:159, as quoted in torchxrayvision's "
                 "AgeModel documentation"),
}

CITATIONS = {
    "TABLE3": GICHOYA2022, "TABLE3_EXTERNAL": GICHOYA2022,
    "CONFOUNDERS": CONFOUNDERS["citation"], "STRATIFIED": STRATIFIED["citation"],
    "DEGRADATION_CURVES": DEGRADATION_CURVES["citation"], "CORRUPTION": CORRUPTION["citation"],
    "TILES": TILES["citation"], "UNDERDIAGNOSIS": SEYYED_KALANTARI2021,
    "GLOCKER2023": GLOCKER2023_CITATION, "BURNS2023": BURNS2023_CITATION,
    "LOTTER2024": LOTTER2024_CITATION, "DEGRAVE2021": DEGRAVE2021_CITATION,
    "SEX_AGE_OPEN": SEX_AGE_OPEN_CITATION, "RIKEN_AGE_MAE": RIKEN_AGE_MAE["citation"],
}


def _is_synthetic(classes: list[str], source: str | None) -> bool:
    if source is not None:
        return source == "synthetic"
    return not set(classes) <= set(TABLE3_CLASSES)


def compare_to_table3(our_auc_table: pd.DataFrame, dataset: str = "MIMIC-CXR",
                      source: str | None = None) -> pd.DataFrame:
    """Our per-class AUCs (from :func:`cxrlab.core.metrics.auc_table`) beside the paper's Table 3.

    Real sources: rows are matched by class name (Asian, Black, White); a class the paper did
    not report gets NaN. Synthetic source (or classes that are not the paper's): groups A, B, C
    are abstract, NOT races, so no group row gets a paper class or value (never pair a
    synthetic group with a race) and every row is labelled "for scale only"; only the last row,
    the mean of ours beside the mean of the paper's ("macro (mean)"), compares the two.

    Columns: ``class, ours, ci_low, ci_high, paper_class, paper_auc, comparison, citation``.

    >>> ours = pd.DataFrame({"class": ["A", "B", "C"], "auc": [0.9, 0.95, 0.97],
    ...                      "ci_low": [0.85, 0.9, 0.95], "ci_high": [0.95, 0.98, 0.99]})
    >>> table = compare_to_table3(ours, source="synthetic")
    >>> table.comparison.iloc[0], table.paper_class.iloc[0], round(float(table.paper_auc.iloc[-1]), 3)
    ('for scale only', '', 0.983)
    """
    if dataset not in TABLE3:
        raise ValueError(f"Table 3 has no row {dataset!r}; choose one of {', '.join(TABLE3)}")
    paper = TABLE3[dataset]
    classes = [str(c) for c in our_auc_table["class"]]
    scale_only = _is_synthetic(classes, source)
    rows = []
    for i, row in enumerate(our_auc_table.to_dict("records")):
        paper_class = "" if scale_only else classes[i]
        rows.append({"class": classes[i], "ours": float(row["auc"]),
                     "ci_low": float(row.get("ci_low", np.nan)),
                     "ci_high": float(row.get("ci_high", np.nan)),
                     "paper_class": paper_class, "paper_auc": paper.get(paper_class, np.nan),
                     "comparison": "for scale only" if scale_only else "same class"})
    table = pd.DataFrame(rows)
    macro = {"class": "macro (mean)", "ours": table.ours.mean(), "ci_low": np.nan,
             "ci_high": np.nan, "paper_class": "mean of Asian, Black, White",
             "paper_auc": float(np.mean(list(paper.values()))),
             "comparison": "for scale only" if scale_only else "same classes"}
    table = pd.concat([table, pd.DataFrame([macro])], ignore_index=True)
    table["citation"] = f"{GICHOYA2022}, Table 3 ({dataset})"
    return table
