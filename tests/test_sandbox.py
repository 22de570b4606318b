"""The kernel sandbox's command line, environment and limits (the attacks are in test_grading.py)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cxrlab.coursetools import sandbox


def _job(tmp_path: Path, **kw) -> sandbox.Job:
    scratch = sandbox.prepare_scratch(tmp_path / "scratch", None, drop_to_nobody=False)
    return sandbox.Job(mode="bwrap", scratch=str(scratch), read_only=[sys.prefix, str(tmp_path / "data")],
                       hidden=[str(tmp_path / "data" / "chexpert" / "x")], pythonpath=["/course"],
                       env={"CXRLAB_PRESET": "demo"}, **kw)


def test_kernel_environment_is_an_allow_list(tmp_path, monkeypatch):
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_secret")
    monkeypatch.setenv("PHYSIONET_PASSWORD", "hunter2")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    env = sandbox.kernel_env(_job(tmp_path))
    assert "GITHUB_TOKEN" not in env and "PHYSIONET_PASSWORD" not in env
    assert env["OMP_NUM_THREADS"] == "1" and env["CXRLAB_PRESET"] == "demo" and env["PYTHONPATH"] == "/course"
    assert env["HOME"].startswith(str(tmp_path / "scratch")) and env["TMPDIR"] == "/tmp"
    assert set(env) <= set(sandbox.ENV_ALLOW) | {"HOME", "PATH", "TMPDIR", "IPYTHONDIR", "MPLCONFIGDIR", "MPLBACKEND",
                                                 "PYTHONDONTWRITEBYTECODE", "PYDEVD_DISABLE_FILE_VALIDATION",
                                                 "PYTHONPATH", "CXRLAB_RESTRICTED_MARKER"}


def test_bwrap_command_binds_only_what_the_kernel_needs(tmp_path):
    job = _job(tmp_path, drop_to_nobody=True)
    argv = sandbox.bwrap_argv(job, ["python", "-m", "ipykernel_launcher"])
    joined = " ".join(argv)
    for flag in ("--unshare-pid", "--unshare-net", "--die-with-parent", "--clearenv"):
        assert flag in argv
    assert f"--ro-bind {sys.prefix} {sys.prefix}" in joined
    assert f"--bind {job.scratch} {job.scratch}" in joined                 # the only writable bind
    assert [a for i, a in enumerate(argv) if argv[i - 1] == "--bind"] == [job.scratch]
    assert f"--tmpfs {tmp_path / 'data' / 'chexpert' / 'x'}" in joined     # a restricted dataset, hidden
    assert "--reuid=65534" in joined and argv[-3:] == ["python", "-m", "ipykernel_launcher"]
    assert " / / " not in joined                                           # never the whole filesystem


def test_limits_are_set_before_the_kernel_starts(tmp_path):
    code = ("import resource, sys; sys.path[:0] = [%r]\n"
            "from cxrlab.coursetools import sandbox\n"
            "sandbox.apply_limits({'cpu_seconds': 30, 'memory_mb': 4096, 'file_mb': 1, 'processes': 10}, 12345)\n"
            "print(resource.getrlimit(resource.RLIMIT_CPU)[0], resource.getrlimit(resource.RLIMIT_AS)[0] >> 20,\n"
            "      resource.getrlimit(resource.RLIMIT_FSIZE)[0] >> 20, resource.getrlimit(resource.RLIMIT_NPROC)[0])\n"
            % str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["30", "4096", "1", "10"]                 # uid 12345 runs nothing yet


def test_modes_and_the_loud_warning(monkeypatch):
    mode, warning = sandbox.choose_mode("none")
    assert mode == "none" and warning.startswith("NOT SANDBOXED") and "every file" in warning
    with pytest.raises(ValueError):
        sandbox.choose_mode("docker")
    sandbox.bwrap_problem.cache_clear()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    try:
        assert "not installed" in sandbox.bwrap_problem()
        with pytest.raises(RuntimeError, match="not installed"):
            sandbox.choose_mode("bwrap")
        assert sandbox.choose_mode("auto")[0] == "none"
    finally:
        sandbox.bwrap_problem.cache_clear()


@pytest.mark.skipif(sandbox.bwrap_problem() != "", reason="bubblewrap is not usable here")
def test_check_command_reports_a_working_bubblewrap():
    out = subprocess.run([sys.executable, "-m", "cxrlab.coursetools.sandbox", "check"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.returncode == 0 and "bubblewrap works" in out.stdout


def test_the_data_view_is_writable_but_the_data_folder_is_not_changed(tmp_path):
    data = tmp_path / "data"
    models = data / "synthetic" / "demo" / "models"
    models.mkdir(parents=True)
    (models / "race.pt").write_bytes(b"instructor's model")
    (data / "synthetic" / "demo" / "manifest.csv").write_text("image_id\n")
    (data / "chexpert" / "real").mkdir(parents=True)
    view = sandbox.mirror_data(data, tmp_path / "view", skip=[(data / "chexpert" / "real").resolve()])
    assert (view / "synthetic" / "demo" / "manifest.csv").read_text() == "image_id\n"
    planted = view / "synthetic" / "demo" / "models" / "race.pt.tmp"
    planted.write_bytes(b"learner's model")
    os.replace(planted, view / "synthetic" / "demo" / "models" / "race.pt")   # how the store saves
    (view / "synthetic" / "demo" / "cache").mkdir()
    assert (models / "race.pt").read_bytes() == b"instructor's model"
    assert not (data / "synthetic" / "demo" / "cache").exists()
    assert not (view / "chexpert" / "real").exists()
