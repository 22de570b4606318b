"""The package's three wings, and the old module names that still work (issue 20)."""
from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

from cxrlab._moved import ALIASES, MOVED


@pytest.mark.parametrize("old,new", sorted(MOVED.items()))
def test_old_name_is_the_same_module_as_the_new_one(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)
    assert importlib.import_module(new).__spec__.name == new


def test_setup_shows_its_real_signature():
    import cxrlab

    params = inspect.signature(cxrlab.setup).parameters
    assert list(params)[:4] == ["source", "preset", "seed", "device"]


@pytest.mark.parametrize("command", ["cxrlab.prebuild", "cxrlab.authoring", "cxrlab.replicate", "cxrlab.published"])
def test_short_commands_run_as_scripts(command):
    """``python -m`` through an alias runs the real file (``__file__`` set, ``--help`` works)."""
    assert command in ALIASES
    done = subprocess.run([sys.executable, "-m", command, "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_data_fetch_imports_nothing_from_cxrlab():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "data_fetch"
    offenders = [str(p) for p in root.rglob("*.py")
                 if "import cxrlab" in p.read_text() or "from cxrlab" in p.read_text()]
    assert offenders == []
