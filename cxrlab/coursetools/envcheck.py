"""Chapter 0's environment report: is this machine ready for the course?

It answers the questions an instructor asks before a workshop and a learner asks on Binder:
which versions are installed, how many CPU cores and which GPU there are, how much memory and
disk are free, where the data will live, and which data tracks can be used from here.

Nothing here touches the network unless asked: :func:`track_status` only tries to reach the
open sources' hosts with ``check_network=True``, never when the ``CI`` environment variable is
set, and then only with a short timeout. Credentials are reported as *present* or *absent*;
their values are never read into the report.

>>> rep = report()
>>> sorted(rep) == ["data", "hardware", "tracks", "versions"]
True
"""
from __future__ import annotations

from importlib import metadata
import netrc
import os
import platform
import shutil
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from data_fetch.sources import TRACKS

GIB = 1024 ** 3

#: Distributions whose versions the report lists (read from package metadata, no import).
KEY_LIBRARIES: tuple[str, ...] = (
    "torch", "torchvision", "numpy", "pandas", "scipy", "scikit-learn", "matplotlib",
    "pillow", "pydicom", "captum", "fairlearn", "ipywidgets",
)

#: Hosts the open tracks download from (checked only on request; port 443).
OPEN_TRACK_HOSTS: dict[str, str] = {
    "nih": "nihcc.box.com",
    "covid19_ar": "storage.googleapis.com",
}

#: Environment variables that point at a restricted source's credentials or local copy.
#: Only their presence is reported, never their values.
RESTRICTED_TRACK_ENV: dict[str, dict[str, tuple[str, ...]]] = {
    "chexpert": {
        "credentials": ("CHEXPERT_URL",),
        "local copy": ("CHEXPERT_DIR",),
    },
    "mimic": {
        "credentials": ("PHYSIONET_USERNAME", "PHYSIONET_PASSWORD"),
        "local copy": ("MIMIC_CXR_DIR",),
    },
}
NETRC_HOSTS: dict[str, str] = {"mimic": "physionet.org"}

ALL_TRACKS = TRACKS  # from the one registry of sources


@dataclass
class TrackStatus:
    """Whether one data track can be used from this machine."""

    source: str
    access: str        # "offline", "open (needs internet)", "registration", "credentialed"
    ready: bool | None  # usable now (or after an automatic download); None: not checked
    prepared: bool     # a manifest is already under data_root()/<source>/
    detail: str        # one human-readable sentence; never contains a secret


def library_versions(libraries: tuple[str, ...] = KEY_LIBRARIES) -> dict[str, str]:
    """Versions of Python and the course's key libraries (``"missing"`` when not installed).

    Read from the installed packages' metadata, so nothing heavy is imported.

    >>> library_versions(("numpy", "no-such-dist-xyz"))["no-such-dist-xyz"]
    'missing'
    """
    versions = {"python": platform.python_version()}
    for dist in libraries:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "missing"
    import cxrlab

    versions["cxrlab"] = cxrlab.__version__
    return versions


def _gpu_info() -> dict[str, Any]:
    try:
        import torch
    except Exception:  # noqa: BLE001
        return {"gpu": "torch not importable", "gpu_memory_gb": None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {"gpu": f"{torch.cuda.device_count()} x {props.name}",
                "gpu_memory_gb": round(props.total_memory / GIB, 1)}
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return {"gpu": "Apple MPS", "gpu_memory_gb": None}
    return {"gpu": "none (CPU only)", "gpu_memory_gb": None}


def hardware() -> dict[str, Any]:
    """CPU cores, GPU, total/available memory (GiB) and this process's memory use."""
    import psutil

    mem = psutil.virtual_memory()
    info: dict[str, Any] = {
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_total_gb": round(mem.total / GIB, 1),
        "memory_available_gb": round(mem.available / GIB, 1),
        "process_rss_gb": round(psutil.Process().memory_info().rss / GIB, 2),
    }
    info.update(_gpu_info())
    return info


def data_location() -> dict[str, Any]:
    """Where data will live (``data_root()``), how it was chosen, and the free disk there."""
    from data_fetch.paths import ENV_VAR, data_root

    root = data_root()
    usage = shutil.disk_usage(root)
    return {
        "data_root": str(root),
        "chosen_by": f"${ENV_VAR}" if os.environ.get(ENV_VAR) else "default (~/.cache/cxrlab)",
        "disk_free_gb": round(usage.free / GIB, 1),
        "disk_total_gb": round(usage.total / GIB, 1),
    }


def _prepared(source: str, root: Path) -> bool:
    folder = root / source
    return folder.is_dir() and any(folder.glob("*/manifest.csv"))


def can_connect(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """True when a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _netrc_has(host: str) -> bool:
    path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _restricted_detail(source: str, env: Mapping[str, str]) -> tuple[bool, str]:
    found = []
    for what, names in RESTRICTED_TRACK_ENV[source].items():
        if all(env.get(n) for n in names):
            found.append(f"{what} in ${' + $'.join(names)}")
    host = NETRC_HOSTS.get(source)
    if host and _netrc_has(host):
        found.append(f"credentials for {host} in ~/.netrc")
    if found:
        return True, "found " + "; ".join(found) + " (values not shown)"
    wanted = " or ".join("$" + " + $".join(n) for n in RESTRICTED_TRACK_ENV[source].values())
    return False, f"no credentials or local copy found (set {wanted})"


def _open_detail(source: str, check_network: bool, timeout: float,
                 connect: Callable[[str, int, float], bool],
                 env: Mapping[str, str]) -> tuple[bool | None, str]:
    host = OPEN_TRACK_HOSTS[source]
    if env.get("CI"):
        return None, "needs internet (not checked: CI is set)"
    if not check_network:
        return None, "needs internet (not checked; envcheck.report(check_network=True) tries it)"
    if connect(host, 443, timeout):
        return True, f"needs internet: {host} is reachable"
    return False, f"needs internet: {host} is NOT reachable from here"


def track_status(
    check_network: bool = False,
    timeout: float = 3.0,
    connect: Callable[[str, int, float], bool] = can_connect,
    env: Mapping[str, str] | None = None,
) -> list[TrackStatus]:
    """Which data tracks can be used from here.

    ``synthetic`` always can (it is generated offline). ``nih`` and ``covid19_ar`` need
    internet; their hosts are only contacted when ``check_network=True`` and ``CI`` is unset.
    ``chexpert`` and ``mimic`` need credentials or a local copy: the report says whether the
    environment variables (or ``~/.netrc`` for PhysioNet) are present, never their values.
    """
    from data_fetch.paths import data_root

    env = os.environ if env is None else env
    root = data_root()
    rows = [TrackStatus("synthetic", "offline", True, _prepared("synthetic", root),
                        "generated on this machine; no download")]
    for source in ("nih", "covid19_ar"):
        ready, detail = _open_detail(source, check_network, timeout, connect, env)
        rows.append(TrackStatus(source, "open (needs internet)", ready, _prepared(source, root), detail))
    for source, access in (("chexpert", "registration"), ("mimic", "credentialed")):
        ready, detail = _restricted_detail(source, env)
        prepared = _prepared(source, root)
        if prepared and not ready:
            ready, detail = True, "prepared copy found under the data folder"
        rows.append(TrackStatus(source, access, ready, prepared, detail))
    return rows


def training_speed(model: str = "smallcnn", image_size: int = 64, batch_size: int = 32,
                   n_batches: int = 6, device: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Measure training speed: images per second for Adam steps on random images.

    One warm-up step is not timed. The answer predicts how long chapter 2 takes here:
    an epoch of N images takes about ``N / images_per_s`` seconds.

    >>> training_speed(image_size=32, batch_size=4, n_batches=2)["images_per_s"] > 0
    True
    """
    import time

    import torch

    from cxrlab.core.models import build_model
    from cxrlab.core.train import pick_device

    dev = pick_device(device)
    torch.manual_seed(seed)
    net = build_model(model, n_outputs=3).to(dev).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(batch_size, 1, image_size, image_size, device=dev)
    y = torch.randint(0, 3, (batch_size,), device=dev)

    def step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()

    step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n_batches):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"model": model, "image_size": image_size, "batch_size": batch_size,
            "device": str(dev), "images_per_s": round(n_batches * batch_size / seconds, 1)}


def report(check_network: bool = False, timeout: float = 3.0) -> dict[str, Any]:
    """The whole environment report as a plain dict (versions, hardware, data, tracks)."""
    return {
        "versions": library_versions(),
        "hardware": hardware(),
        "data": data_location(),
        "tracks": [asdict(t) for t in track_status(check_network=check_network, timeout=timeout)],
    }


def warnings_for(rep: dict[str, Any], min_memory_gb: float = 1.5, min_disk_gb: float = 2.0) -> list[str]:
    """Plain-language problems in a :func:`report` (an empty list means ready to go).

    >>> warnings_for({"versions": {"torch": "missing"}, "hardware": {"memory_available_gb": 8},
    ...               "data": {"disk_free_gb": 50}})
    ['torch is not installed: run the set-up command from the README']
    """
    problems = [f"{name} is not installed: run the set-up command from the README"
                for name, version in rep["versions"].items() if version == "missing"]
    if rep["hardware"].get("memory_available_gb", 99) < min_memory_gb:
        problems.append(f"less than {min_memory_gb} GiB of memory is free: use the demo preset "
                        "and close other notebooks")
    if rep["data"].get("disk_free_gb", 99) < min_disk_gb:
        problems.append(f"less than {min_disk_gb} GiB of disk is free where data lives: "
                        "set CXRLAB_DATA to a roomier folder")
    return problems


def format_report(rep: dict[str, Any]) -> str:
    """A compact text rendering of :func:`report`, for terminals and notebook output."""
    lines = ["Versions"]
    lines += [f"  {k:<13} {v}" for k, v in rep["versions"].items()]
    lines.append("Hardware")
    lines += [f"  {k:<20} {v}" for k, v in rep["hardware"].items()]
    lines.append("Data")
    lines += [f"  {k:<13} {v}" for k, v in rep["data"].items()]
    lines.append("Tracks")
    for t in rep["tracks"]:
        mark = {True: "yes", False: "no ", None: "?  "}[t["ready"]]
        prep = " [prepared]" if t["prepared"] else ""
        lines.append(f"  {t['source']:<11} {mark} {t['access']:<22} {t['detail']}{prep}")
    problems = warnings_for(rep)
    lines.append("Ready for the course." if not problems else "Check these:")
    lines += [f"  - {p}" for p in problems]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m cxrlab.envcheck [--network]``: print the report; exit 1 if a problem is found."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--network", action="store_true",
                        help="also try to reach the open tracks' hosts (never when $CI is set)")
    args = parser.parse_args(argv)
    rep = report(check_network=args.network)
    print(format_report(rep))
    return 1 if warnings_for(rep) else 0


if __name__ == "__main__":
    sys.exit(main())
