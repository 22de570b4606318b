"""Shared fixtures: every test gets its own data folder; a tiny prepared dataset on request.
And the order files run in: the longest first (see ``pytest_collection_modifyitems``)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes import write_fake_dataset


def _file_rank(items: list[pytest.Item]) -> int:
    """0 for a file that drives a browser, 1 for one with slow tests, 2 for the rest."""
    marks = {mark.name for item in items for mark in item.iter_markers()}
    return 0 if "browser" in marks else 1 if "slow" in marks else 2


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the files with the longest tests first, each file's tests in their own order.

    With ``pytest -n 2 --dist loadfile`` (``make test-unit``) each file goes to one worker in
    this order, so the long files start at once and the short ones fill the gaps, instead of
    one long file left running alone at the end. Tests do not depend on the order.
    """
    by_file: dict[str, list[pytest.Item]] = {}
    for item in items:
        by_file.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    ranked = sorted(by_file.values(), key=_file_rank)     # stable: ties keep collection order
    items[:] = [item for group in ranked for item in group]


@pytest.fixture(autouse=True)
def isolated_data_folder(tmp_path_factory, monkeypatch) -> Path:
    """``$CXRLAB_DATA`` points at a fresh folder, so no test reads or writes a learner's data.

    A test that needs the folder (to lay out a dataset, or to find what a fetcher wrote) asks
    for this fixture by name instead of setting ``$CXRLAB_DATA`` itself.
    """
    folder = tmp_path_factory.mktemp("cxrlab-data")
    monkeypatch.setenv("CXRLAB_DATA", str(folder))
    monkeypatch.delenv("CXRLAB_PRESET", raising=False)
    monkeypatch.delenv("CXRLAB_SOURCE", raising=False)
    return folder


@pytest.fixture(autouse=True)
def strict_claims(monkeypatch) -> None:
    """Each test starts with no real source or fixture loaded, so text claims are strict
    (``cxrlab.core.session.claims_advisory``; files share a process under xdist)."""
    from cxrlab.core import session

    monkeypatch.setattr(session, "_LOADED", {})
    monkeypatch.delenv("CXRLAB_CLAIMS", raising=False)


@pytest.fixture
def fake_dataset(isolated_data_folder: Path) -> Path:
    """A tiny prepared synthetic-style dataset (48 PNGs of 24 patients) under the data folder."""
    return write_fake_dataset(isolated_data_folder / "synthetic" / "fake")
