"""The manifest schema: validation errors name the column and the rows; splits are patient-level."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data_fetch.manifest import (
    ManifestError,
    finding_columns,
    patient_level_split,
    read_card,
    read_manifest,
    validate_manifest,
    write_manifest,
)


def make_manifest(n_patients: int = 4, per_patient: int = 2) -> pd.DataFrame:
    rows = []
    for p in range(n_patients):
        for s in range(per_patient):
            rows.append({
                "image_id": f"p{p}_s{s}", "path": f"images/p{p}_s{s}.png", "patient_id": f"p{p}",
                "study_id": f"p{p}_s{s}", "split": ["train", "val", "test", "train"][p % 4],
                "view": "PA", "sex": "F" if p % 2 else "M", "age": 40.0 + p, "race": "A",
                "ethnicity": None, "bmi": 25.0, "site": "site1", "source": "test",
                "finding_effusion": bool(s), "no_finding": not bool(s),
            })
    return pd.DataFrame(rows)


def write_images(folder, df) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for path in df["path"]:
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / path)


def test_valid_manifest_round_trips(tmp_path):
    df = make_manifest()
    write_images(tmp_path, df)
    write_manifest(df, tmp_path, card={"source": "test"})
    back = read_manifest(tmp_path, check_files=True)
    assert list(back["image_id"]) == list(df["image_id"])
    assert back["age"].dtype == "Float64" and back["no_finding"].dtype == "boolean"
    assert back["ethnicity"].isna().all()
    assert finding_columns(back) == ["finding_effusion"]
    assert read_card(tmp_path)["schema_version"] == 1
    assert read_card(tmp_path)["n_patients"] == 4


def test_missing_column_is_named():
    df = make_manifest().drop(columns=["site"])
    with pytest.raises(ManifestError, match="site"):
        validate_manifest(df)


def test_bad_values_name_column_and_rows():
    df = make_manifest()
    df.loc[3, "sex"] = "female"
    with pytest.raises(ManifestError) as err:
        validate_manifest(df)
    assert err.value.column == "sex" and err.value.rows == [3]
    assert "rows 3" in str(err.value)


def test_age_out_of_range_and_non_numeric():
    df = make_manifest()
    df["age"] = df["age"].astype(object)
    df.loc[1, "age"] = 150
    with pytest.raises(ManifestError, match="age.*rows 1"):
        validate_manifest(df)
    df.loc[1, "age"] = "old"
    with pytest.raises(ManifestError, match="numeric"):
        validate_manifest(df)


def test_patient_in_two_splits_is_rejected():
    df = make_manifest()
    df.loc[1, "split"] = "test"  # p0 has rows 0 (train) and 1 (now test)
    with pytest.raises(ManifestError, match="patient-level.*p0") as err:
        validate_manifest(df)
    assert err.value.rows == [0, 1]


def test_duplicate_image_ids_and_empty_required():
    df = make_manifest()
    df.loc[2, "image_id"] = df.loc[0, "image_id"]
    with pytest.raises(ManifestError, match="unique"):
        validate_manifest(df)
    df = make_manifest()
    df.loc[5, "patient_id"] = ""
    with pytest.raises(ManifestError, match="patient_id.*rows 5"):
        validate_manifest(df)


def test_write_refuses_missing_images(tmp_path):
    df = make_manifest()
    with pytest.raises(ManifestError, match="do not exist"):
        write_manifest(df, tmp_path)
    assert not (tmp_path / "manifest.csv").exists()


def test_read_explains_how_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m data_fetch"):
        read_manifest(tmp_path)


def test_patient_level_split_fractions_and_determinism():
    ids = [f"p{i}" for i in range(1000)]
    a = patient_level_split(ids, seed=3)
    b = patient_level_split(list(reversed(ids)), seed=3)
    assert a == b
    counts = pd.Series(a).value_counts()
    assert counts["train"] == 600 and counts["val"] == 100 and counts["test"] == 300
    assert patient_level_split(ids, seed=4) != a
    with pytest.raises(ValueError, match="sum to 1"):
        patient_level_split(ids, (0.5, 0.5, 0.5))
