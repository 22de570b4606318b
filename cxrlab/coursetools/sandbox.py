"""Run a learner's Jupyter kernel in a sandbox: ``bwrap`` when it works, limits and a clean env always.

The grader (:mod:`cxrlab.coursetools.grading`) runs nbgrader's autograde in its own process, which holds the
gradebook and the hidden tests; only the *kernel* that executes the learner's code is started
through this module. Its kernelspec's ``argv`` is::

    python -m cxrlab.coursetools.sandbox launch JOB.json {connection_file}

``launch`` runs outside the sandbox, in the grader's rights, and then replaces itself by the
kernel, either wrapped in bubblewrap (``mode="bwrap"``) or directly (``mode="none"``):

* **bwrap**: new mount, PID, network, IPC and UTS namespaces; the filesystem is an empty root
  with read-only binds of the system (``/usr``, ``/etc``), the Python installation, the course's
  own packages (``cxrlab``, ``data_fetch``; never ``solutions/``) and the data folder (restricted
  datasets hidden unless allowed), plus one writable folder: the job's scratch copy of the
  submission (HOME and working directory) and a writable view of the data folder
  (:func:`mirror_data`; ``CXRLAB_DATA`` points there). ``/tmp`` is a small private tmpfs. The kernel talks
  to the grader through Unix sockets in that folder (the network namespace has no route out).
  ``--die-with-parent`` and the PID namespace mean every process the notebook started, even one
  in a session of its own, dies with the kernel. When the grader runs as root the kernel drops
  to ``nobody`` (uid 65534) so that the process-count limit applies and root-only files stay
  unreadable.
* **none** (no working bubblewrap): the same cleaned environment and resource limits, a
  private HOME and working directory, but the kernel can read whatever the grader's user can.

In both modes the environment is an allow-list (:data:`ENV_ALLOW` plus the variables set here),
never the grader's own (tokens, credentials), and the limits (:class:`Limits`) are set with
``setrlimit`` before the kernel starts: CPU seconds, address space, file size, processes.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cxrlab.core import restricted

#: Variables copied from the grader's environment when set (locale, time zone, thread counts).
ENV_ALLOW = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
             "OPENBLAS_NUM_THREADS", "CXRLAB_PRESET")
NOBODY = 65534
TMPFS_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Limits:
    """Resource limits of one kernel (``setrlimit``); ``None`` leaves a limit as inherited."""

    cpu_seconds: int | None = None        # None: the grader uses timeout x cores + 60 s
    memory_mb: int | None = 16384         # address space (RLIMIT_AS)
    file_mb: int | None = 1024            # largest file the notebook may write
    processes: int | None = 256           # processes and threads of the sandbox's user


@dataclass
class Job:
    """What ``launch`` needs to start one sandboxed kernel (written as JSON by the grader)."""

    mode: str                                  # "bwrap" or "none"
    scratch: str                               # writable: HOME, cwd, sockets, connection file
    python: str = sys.executable
    read_only: list[str] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)     # folders replaced by an empty tmpfs
    pythonpath: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    limits: dict[str, int | None] = field(default_factory=lambda: asdict(Limits()))
    drop_to_nobody: bool = False

    def write(self, path: Path) -> Path:
        """Save as JSON (read by ``launch``)."""
        path.write_text(json.dumps(asdict(self), indent=1))
        return path


# ----------------------------------------------------------------------------- what is available
@functools.lru_cache(maxsize=1)
def bwrap_problem() -> str:
    """Empty when bubblewrap can start a sandbox here; otherwise why not (one line)."""
    exe = shutil.which("bwrap")
    if exe is None:
        return "bubblewrap (bwrap) is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    probe = [exe, *_namespace_args(), "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "true"]
    try:
        proc = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"bwrap could not start: {err}"
    if proc.returncode != 0:
        return f"bwrap cannot create namespaces here: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}"
    return ""


def choose_mode(requested: str = "auto") -> tuple[str, str]:
    """``(mode, warning)`` for ``requested`` (``auto``, ``bwrap`` or ``none``).

    ``auto`` takes bwrap when it works; the warning is non-empty whenever the kernel will not be
    sandboxed. Asking for ``bwrap`` where it does not work raises ``RuntimeError``.
    """
    if requested not in ("auto", "bwrap", "none"):
        raise ValueError(f"unknown sandbox mode {requested!r}; use auto, bwrap or none")
    problem = bwrap_problem() if requested != "none" else "sandbox turned off (--sandbox none)"
    if requested == "bwrap" and problem:
        raise RuntimeError(f"--sandbox bwrap asked for, but {problem}")
    if problem:
        return "none", (f"NOT SANDBOXED: {problem}. Learners' code runs with a cleaned environment "
                        "and resource limits only, and can read and write every file this user can "
                        "(other submissions, the solutions, your home). Grade untrusted submissions "
                        "only with bubblewrap installed.")
    return "bwrap", ""


def _namespace_args() -> list[str]:
    # Not --unshare-user: as root bwrap would map the kernel to root again; we drop privileges
    # ourselves (setpriv) so the process limit counts a real, unprivileged user.
    return ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent"]


def should_drop_privileges() -> bool:
    """True when the grader runs as root and ``setpriv`` can make the kernel ``nobody``."""
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


# ----------------------------------------------------------------------------- building the command
def _parents(path: Path) -> list[Path]:
    return [p for p in reversed(path.parents) if str(p) != "/"]


def bwrap_argv(job: Job, kernel_argv: list[str]) -> list[str]:
    """The full bubblewrap command line that runs ``kernel_argv`` as described in the module doc."""
    argv = [shutil.which("bwrap") or "bwrap", *_namespace_args(),
            "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc", "--proc", "/proc", "--dev", "/dev",
            "--perms", "1777", "--size", str(TMPFS_BYTES), "--tmpfs", "/dev/shm",
            "--perms", "1777", "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp"]
    for link in ("bin", "lib", "lib64", "sbin"):
        target = Path("/") / link
        if target.is_symlink():
            argv += ["--symlink", os.readlink(target), str(target)]
        elif target.is_dir():
            argv += ["--ro-bind", str(target), str(target)]
    read_only = [Path("/usr"), Path("/etc")]
    made: set[Path] = set()
    for path, flag in sorted([(Path(p), "--ro-bind") for p in job.read_only] + [(Path(job.scratch), "--bind")],
                             key=lambda item: len(item[0].parts)):
        for parent in _parents(path):
            if parent not in made and not any(parent == r or r in parent.parents for r in read_only):
                argv += ["--perms", "0755", "--dir", str(parent)]
                made.add(parent)
        argv += [flag, str(path), str(path)]
        made.add(path)
        if flag == "--ro-bind":
            read_only.append(path)
    for path in job.hidden:
        argv += ["--perms", "0700", "--size", "4096", "--tmpfs", path]
    argv += ["--chdir", str(Path(job.scratch) / "home"), "--clearenv"]
    for key, value in kernel_env(job).items():
        argv += ["--setenv", key, value]
    if job.drop_to_nobody:
        argv += ["--cap-add", "CAP_SETUID,CAP_SETGID", "--",
                 shutil.which("setpriv") or "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                 "--inh-caps=-all", "--bounding-set=-all", "--"]
    else:
        argv += ["--"]
    return argv + kernel_argv


def kernel_env(job: Job) -> dict[str, str]:
    """The kernel's whole environment: the allow-list, the job's own values and private folders."""
    home = str(Path(job.scratch) / "home")
    env = {k: os.environ[k] for k in ENV_ALLOW if k in os.environ}
    env.setdefault("LANG", "C.UTF-8")
    env.update({
        "HOME": home,
        "PATH": os.pathsep.join([str(Path(job.python).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
        "TMPDIR": "/tmp" if job.mode == "bwrap" else str(Path(job.scratch) / "tmp"),
        "IPYTHONDIR": str(Path(home) / ".ipython"),
        "MPLCONFIGDIR": str(Path(home) / ".matplotlib"),
        "MPLBACKEND": "Agg",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        restricted.MARKER_ENV: str(Path(job.scratch) / "restricted-data-loaded"),
    })
    if job.pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(job.pythonpath)
    env.update(job.env)
    return env


WRITABLE_DATA_DIRS = ("cache", "models")


def mirror_data(data: Path, target: Path, skip: list[Path]) -> Path:
    """A writable view of the data folder: real folders down to each dataset, links to the rest.

    Inside a dataset, ``cache/`` and ``models/`` are real folders of links, so a kernel can add an
    image cache or train a missing model (into its scratch, thrown away afterwards) while every
    existing file is read, read-only, from the data folder; no learner can replace a cached model
    that the next learner would load. ``skip``: datasets left out (restricted ones).
    """
    target.mkdir(parents=True, exist_ok=True)
    for source in sorted(p for p in data.iterdir() if p.is_dir()) if data.is_dir() else []:
        for dataset in sorted(p for p in source.iterdir()):
            if dataset.resolve() in skip:
                continue
            mirror = target / source.name / dataset.name
            if not dataset.is_dir():
                mirror.parent.mkdir(parents=True, exist_ok=True)
                mirror.symlink_to(dataset.resolve())
                continue
            mirror.mkdir(parents=True)
            for entry in sorted(dataset.iterdir()):
                if entry.name in WRITABLE_DATA_DIRS and entry.is_dir():
                    (mirror / entry.name).mkdir()
                    for item in entry.iterdir():
                        (mirror / entry.name / item.name).symlink_to(item.resolve())
                else:
                    (mirror / entry.name).symlink_to(entry.resolve())
    return target


def prepare_scratch(scratch: Path, notebook: Path | None, drop_to_nobody: bool,
                    data: Path | None = None, skip: list[Path] | None = None) -> Path:
    """Create the job's writable folder (``home/`` with a copy of the submission, ``tmp/``, and a
    writable view of the data folder in ``data/`` when ``data`` is given)."""
    home = scratch / "home"
    for sub in (home, scratch / "tmp", home / ".ipython", home / ".matplotlib"):
        sub.mkdir(parents=True, exist_ok=True)
    if notebook is not None:
        shutil.copyfile(notebook, home / notebook.name)
    if data is not None:
        mirror_data(data, scratch / "data", skip or [])
    if drop_to_nobody:
        for path in [scratch, *scratch.rglob("*")]:
            os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
    return scratch


# ----------------------------------------------------------------------------- the launcher
def _user_process_count(uid: int) -> int:
    import psutil

    count = 0
    for proc in psutil.process_iter(["uids", "num_threads"]):
        try:
            if proc.info["uids"] and proc.info["uids"].real == uid:
                count += proc.info["num_threads"] or 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return count


def apply_limits(limits: dict[str, int | None], uid: int) -> None:
    """``setrlimit`` on this process (inherited by the kernel it becomes).

    ``RLIMIT_NPROC`` counts every process of a user, so the limit is what that user already runs
    plus ``processes`` (the kernel's own allowance); root is exempt from it (hence ``nobody``).
    """
    def setlimit(kind: int, value: int | None) -> None:
        if value is None:
            return
        soft, hard = resource.getrlimit(kind)
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(kind, (value, value if kind != resource.RLIMIT_CPU else value + 5))

    setlimit(resource.RLIMIT_CPU, limits.get("cpu_seconds"))
    mem = limits.get("memory_mb")
    setlimit(resource.RLIMIT_AS, None if mem is None else mem * 2**20)
    size = limits.get("file_mb")
    setlimit(resource.RLIMIT_FSIZE, None if size is None else size * 2**20)
    procs = limits.get("processes")
    setlimit(resource.RLIMIT_NPROC, None if procs is None else _user_process_count(uid) + procs)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def launch(job_path: Path, connection_file: Path) -> None:
    """Start the kernel for ``job_path`` (never returns: the process becomes the kernel)."""
    job = Job(**json.loads(Path(job_path).read_text()))
    if not Path(job.python).exists():
        sys.exit(f"cxrlab sandbox: no Python interpreter at {job.python}; the kernel cannot start")
    scratch = Path(job.scratch)
    connection = scratch / "kernel-connection.json"          # a copy the sandbox's user can read
    shutil.copyfile(connection_file, connection)
    if job.drop_to_nobody:
        os.chown(connection, NOBODY, NOBODY)
    kernel = [job.python, "-m", "ipykernel_launcher", "-f", str(connection)]
    apply_limits(job.limits, NOBODY if job.drop_to_nobody else os.getuid())
    if job.mode == "bwrap":
        argv = bwrap_argv(job, kernel)
        os.execv(argv[0], argv)
    os.chdir(scratch / "home")
    os.execve(job.python, kernel, kernel_env(job))


def main(argv: list[str] | None = None) -> int:
    """``python -m cxrlab.coursetools.sandbox launch JOB.json CONNECTION_FILE`` (used by kernelspecs)."""
    parser = argparse.ArgumentParser(prog="python -m cxrlab.coursetools.sandbox",
                                     description="Start a sandboxed Jupyter kernel for the grader.")
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("launch", help="start the kernel of one grading job")
    start.add_argument("job", type=Path)
    start.add_argument("connection_file", type=Path)
    sub.add_parser("check", help="say whether bubblewrap sandboxes work on this machine")
    args = parser.parse_args(argv)
    if args.command == "check":
        mode, warning = choose_mode("auto")
        print(warning or "bubblewrap works: learners' kernels will be sandboxed.")
        return 0 if mode == "bwrap" else 1
    launch(args.job, args.connection_file)
    return 1   # pragma: no cover - launch replaces the process


if __name__ == "__main__":
    sys.exit(main())
