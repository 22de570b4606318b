"""The restricted-data guard depends on what a kernel loaded, not on how the notebook names its source."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from cxrlab.coursetools import runner as course
from cxrlab.core import restricted
from tests.test_session import write_fake_dataset


@pytest.fixture
def restricted_dataset(isolated_data_folder) -> Path:
    """A tiny prepared dataset whose data card says ``restricted``, as CheXpert's and MIMIC's do."""
    folder = write_fake_dataset(isolated_data_folder / "chexpert" / "fake", source="chexpert")
    card = folder / "manifest.json"
    card.write_text(json.dumps({**json.loads(card.read_text()), "restricted": True}))
    return folder


def test_setup_marks_the_kernel_that_loaded_restricted_data(restricted_dataset, tmp_path, monkeypatch):
    from cxrlab.core.session import setup

    marker = tmp_path / "marker"
    monkeypatch.setenv(restricted.MARKER_ENV, str(marker))
    setup("chexpert", "demo", device="cpu", data_dir=restricted_dataset, progress=False)
    assert restricted.loaded(marker) == [str(restricted_dataset)]
    monkeypatch.delenv(restricted.MARKER_ENV)
    assert restricted.note_restricted_data("x") is None            # nobody asked: nothing written


@pytest.mark.slow
def test_course_runner_withholds_outputs_of_a_disguised_restricted_chapter(restricted_dataset, tmp_path):
    cells = [new_code_cell('SOURCE = "CheXpert".lower()   # not a literal: the old guard missed it\nPRESET = "demo"',
                           metadata={"tags": ["parameters"]}),
             new_code_cell(f"import cxrlab\nfrom cxrlab import results\n"
                           f"S = cxrlab.setup(SOURCE, PRESET, device='cpu', data_dir={str(restricted_dataset)!r}, "
                           "progress=False)\nresults.record('ch9', 'images', len(S.manifest))\n"
                           "print('ROW', S.manifest.iloc[0]['patient_id'])")]
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    path = tmp_path / "nbs" / "ch09_disguised.ipynb"
    path.parent.mkdir()
    nbformat.write(nb, path)
    out = tmp_path / "build"
    runs = course.run_course([path], out, preset="demo", timeout=300)
    assert runs[0].status == "refused" and "loaded restricted data" in runs[0].error, runs[0].error
    assert not (out / "notebooks").exists() and not (out / "html").exists()
    results = json.loads((out / "results.json").read_text())
    assert results["ch9"]["images"] == 48                          # the numbers are kept
    assert not list(out.glob(".restricted-*"))
    runs = course.run_course([path], out, preset="demo", timeout=300, allow_restricted=True)
    assert runs[0].status == "ok" and "ROW p0" in (out / "html" / "ch09_disguised.html").read_text()
