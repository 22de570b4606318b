"""Fake datasets for tests: tiny prepared folders in the manifest format."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from data_fetch.manifest import write_manifest

GROUPS = ("A", "B", "C")


def write_fake_dataset(folder: Path, n_patients: int = 24, per_patient: int = 2,
                       size: int = 20, seed: int = 0, source: str = "synthetic") -> Path:
    """A tiny prepared dataset: PNGs whose brightness depends on the group, and a manifest."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    splits = ["train", "train", "train", "val", "test", "test"]
    rows = []
    for p in range(n_patients):
        group = GROUPS[p % 3]
        for k in range(per_patient):
            image_id = f"p{p:03d}_{k}"
            level = 60 + 60 * GROUPS.index(group)
            pixels = np.clip(rng.normal(level, 20, (size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / "images" / f"{image_id}.png")
            rows.append({"image_id": image_id, "path": f"images/{image_id}.png",
                         "patient_id": f"p{p:03d}", "study_id": f"s{p:03d}_{k}",
                         "split": splits[p % len(splits)], "view": "PA",
                         "sex": "MF"[p % 2], "age": 30.0 + p, "race": group,
                         "ethnicity": pd.NA, "bmi": 25.0, "site": f"site{p % 2}",
                         "source": source, "finding_effusion": bool(p % 4 == 0),
                         "no_finding": bool(p % 4 != 0)})
    write_manifest(pd.DataFrame(rows), folder, card={"source": source, "name": folder.name})
    return folder
