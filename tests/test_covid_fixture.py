"""Chapter 7's offline fixture: built through the real COVID-19-AR fetcher on 127.0.0.1."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cxrlab.coursetools import covid_fixture as fx
from data_fetch.manifest import read_manifest


def test_fixture_goes_through_the_real_fetcher():
    folder = fx.build_fixture_dataset()
    df = read_manifest(folder, check_files=True)
    assert folder.name == fx.FIXTURE_NAME and len(df) == 19 and df["patient_id"].nunique() == 18
    assert df["race"].value_counts().to_dict() == {"Black": 8, "White": 8, "Asian": 2}
    reasons = " ".join(e["reason"] for e in json.loads((folder / "manifest.json").read_text())["excluded"])
    assert "modality MR" in reasons and "lateral view LL" in reasons
    # a MONOCHROME1 file is shown like the others: lungs darker than the spine
    for path in df["abspath"]:
        image = np.asarray(Image.open(path), dtype=float)
        centre = image.shape[1] // 2
        assert image[:, centre - 2:centre + 2].mean() > image[:, int(centre * 0.65)].mean()
    assert fx.build_fixture_dataset() == folder                     # reused, not rebuilt


@pytest.mark.slow
def test_ci_uses_the_fixture_without_network(isolated_data_folder, monkeypatch):
    pytest.importorskip("torchxrayvision", reason="pip install -e '.[real]' runs this test")
    monkeypatch.setenv("CI", "true")
    track = fx.chapter_track()
    assert track.is_fixture and "CI" in track.why
    assert not (isolated_data_folder / "published" / "SHA256SUMS").exists()    # real pins untouched
    assert track.model.targets == ["Asian", "Black", "White"]


def test_readme_and_chapter7_give_the_same_commands():
    from pathlib import Path
    import re

    root = Path(__file__).resolve().parents[1]
    pattern = r"`((?:pip install|python -m) [^`]+)`"
    readme = set(re.findall(pattern, (root / "README.md").read_text()))
    chapter = set(re.findall(pattern, (root / "solutions" / "ch07_real_patients.ipynb").read_text()
                             .replace('\\"', '"')))
    assert {"python -m data_fetch covid19_ar", "python -m cxrlab.published fetch race",
            'pip install -e ".[real]"'} <= chapter <= readme
