"""Shared fixtures: every test gets its own data folder; a tiny prepared dataset on request."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes import write_fake_dataset


@pytest.fixture(autouse=True)
def isolated_data_folder(tmp_path_factory, monkeypatch) -> Path:
    """``$CXRLAB_DATA`` points at a fresh folder, so no test reads or writes a learner's data.

    Tests that need a particular layout still set it themselves (``monkeypatch.setenv``).
    """
    folder = tmp_path_factory.mktemp("cxrlab-data")
    monkeypatch.setenv("CXRLAB_DATA", str(folder))
    monkeypatch.delenv("CXRLAB_PRESET", raising=False)
    monkeypatch.delenv("CXRLAB_SOURCE", raising=False)
    return folder


@pytest.fixture
def fake_dataset(isolated_data_folder: Path) -> Path:
    """A tiny prepared synthetic-style dataset (48 PNGs of 24 patients) under the data folder."""
    return write_fake_dataset(isolated_data_folder / "synthetic" / "fake")
