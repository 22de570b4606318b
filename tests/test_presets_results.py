"""Presets (with the CXRLAB_PRESET override) and the results recorder behind build/results.json."""
from __future__ import annotations

import json

import pytest

from cxrlab.core import results
from cxrlab.core.presets import PRESETS, get_preset


def test_env_overrides_notebook_preset(monkeypatch):
    monkeypatch.setenv("CXRLAB_PRESET", "demo")
    assert get_preset("full").name == "demo"
    monkeypatch.delenv("CXRLAB_PRESET")
    assert get_preset("workshop").image_size == 128


def test_unknown_preset_lists_choices(monkeypatch):
    monkeypatch.delenv("CXRLAB_PRESET", raising=False)
    with pytest.raises(ValueError, match="demo, workshop, full"):
        get_preset("huge")


def test_presets_grow_in_size():
    sizes = [PRESETS[n].image_size for n in ("demo", "workshop", "full")]
    assert sizes == sorted(sizes) and sizes[0] == 64


def test_record_writes_json_when_asked(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    monkeypatch.setenv("CXRLAB_RESULTS", str(target))
    results.record("ch2", "auc", {"A": 0.9, "ci": (0.8, 1.0)})
    results.record("ch2", "nan", float("nan"))
    results.record("ch3", "verdict", "site")
    data = json.loads(target.read_text())
    assert data == {"ch2": {"auc": {"A": 0.9, "ci": [0.8, 1.0]}, "nan": None},
                    "ch3": {"verdict": "site"}}


def test_record_without_env_stays_in_memory(tmp_path, monkeypatch):
    monkeypatch.delenv("CXRLAB_RESULTS", raising=False)
    monkeypatch.chdir(tmp_path)
    results.record("chX", "n", 3)
    assert results.recorded()["chX"]["n"] == 3
    assert list(tmp_path.iterdir()) == []
