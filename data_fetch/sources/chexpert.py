"""CheXpert (Stanford AIMI; free registration and a research use agreement).

Irvin et al. 2019, "CheXpert: a large chest radiograph dataset with uncertainty labels and
expert comparison", AAAI. Register at https://stanfordaimi.azurewebsites.net/datasets (CheXpert),
accept the agreement, and either download the zip yourself (``--local`` folder or zip;
``$CHEXPERT_DIR``) or paste the signed download URL of the zip (``$CHEXPERT_URL``, or ``--url``).
A signed URL is a secret: its query string is never printed, logged or stored, it is sent only
over HTTPS, and it is best given through ``$CHEXPERT_URL`` (a ``--url`` argument is visible to
other users of the machine in the process list).

The zip is downloaded to ``chexpert.zip.part`` (resumable) and renamed only once its declared
length matched and its central directory reads; a damaged zip found later is downloaded again.
Each image is read with its CRC-32 checked and a size cap
(:data:`~data_fetch.sources.images.MAX_MEMBER_BYTES`), in order, and decoded by
``--workers N`` processes (the result is the same whatever N).

Self-reported race comes from ``CHEXPERT DEMO.xlsx`` (columns ``PATIENT, GENDER, AGE_AT_CXR,
PRIMARY_RACE, ETHNICITY``), joined on the patient id in ``Path``. As in Gichoya et al. 2022,
``race`` is Asian, Black or White for non-Hispanic patients whose PRIMARY_RACE names exactly one
of these; everything else is missing. The original strings stay in ``race_original`` and
``ethnicity``. Labels: 1 -> True, 0 or blank -> False, -1 (uncertain) -> missing.
"""
from __future__ import annotations

import argparse
import io
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from data_fetch.credentials import check_transport
from data_fetch.download import (DownloadError, check_free_space, check_url, human_bytes,
                                 make_session, read_location, redact_url)
from data_fetch.download import download as download_file
from data_fetch.ingest import ImagePool, IngestItem, Stored, StoreQueue, fetch_pool
from data_fetch.sources.cli import (add_common_args, add_http_loopback_arg, add_workers_arg,
                                    env_default, resolve_dest, run_fetch)
from data_fetch.sources.dataset import (DEFAULT_NAME, DEFAULT_SIZE, check_common, check_workers,
                                        claim_folder, finalize, log, read_table, split_patients,
                                        whole_patient_subset)
from data_fetch.sources.images import (MAX_MEMBER_BYTES, CorruptImageError, check_member_size,
                                       estimate_disk)
from data_fetch.sources.labels import (CHEXPERT_LABELS, chexpert_label, finding_column,
                                       is_hispanic, map_sex, race_class)

NAME = "chexpert"
TITLE = "CheXpert"
ACCESS = "free registration + research use agreement (Stanford AIMI)"
DEMO_FILE = "CHEXPERT DEMO.xlsx"
ACCESS_HINT = ("CheXpert needs a (free) Stanford AIMI registration and its research use "
               "agreement: https://stanfordaimi.azurewebsites.net/datasets . Signed URLs expire: "
               "paste a fresh one.")
LABELS = CHEXPERT_LABELS
IMAGE_KEY = re.compile(r"(train|valid|test)/(patient\d+)/(study\d+)/(view\d+_\w+)\.jpg$")
TYPICAL_JPEG_BYTES = 60_000
#: Largest label table or demographics file read (train.csv of the full set is about 25 MB).
MAX_TABLE_BYTES = 500_000_000


class Container:
    """Read files from a CheXpert folder or zip by their path inside the dataset."""

    def __init__(self, location: Path):
        self.location = location
        self.zip = open_zip(location) if location.is_file() else None
        names = self.zip.namelist() if self.zip else [
            str(p.relative_to(location)) for p in location.rglob("*") if p.is_file()]
        self.names = [n.replace("\\", "/") for n in names]

    def find(self, suffix: str) -> str | None:
        """The first member whose path ends with ``suffix`` (case-insensitive)."""
        low = suffix.lower()
        return next((n for n in self.names if n.lower().endswith(low)), None)

    def read(self, name: str, cap: int = MAX_TABLE_BYTES) -> bytes:
        """Bytes of member ``name``: CRC-32 checked in a zip, never more than ``cap`` read."""
        if self.zip:
            check_member_size(self.zip.getinfo(name).file_size, name, cap)
            try:
                with self.zip.open(name) as member:
                    data = member.read(cap + 1)   # the declared size may lie: read at most this
            except (zipfile.BadZipFile, zlib.error, EOFError) as err:
                raise CorruptImageError(f"{name}: damaged in the zip ({err})") from None
            check_member_size(len(data), name, cap)
            return data
        path = self.location / name
        check_member_size(path.stat().st_size, name, cap)
        return path.read_bytes()

    def images(self) -> dict[str, str]:
        """``'train/patient00001/study1/view1_frontal'`` -> member name, for every JPEG."""
        found = {}
        for n in self.names:
            m = IMAGE_KEY.search(n)
            if m:
                found["/".join(m.groups())] = n
        return found


def open_zip(path: Path) -> zipfile.ZipFile:
    """Open a CheXpert zip; :class:`DownloadError` saying what to do when it is damaged."""
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise DownloadError(f"{path} is not a complete zip ({err}); download it again") from None


def verify_zip(path: Path) -> None:
    """Raise :class:`DownloadError` unless ``path`` is a zip whose central directory reads."""
    with open_zip(path) as z:
        if not z.namelist():
            raise DownloadError(f"{path} is an empty zip")


# ----------------------------------------------------------------------------- labels
def chexpert_race(primary: Any, ethnicity: Any) -> Any:
    """The paper's class for a CheXpert PRIMARY_RACE/ETHNICITY pair (Hispanic -> missing).

    >>> chexpert_race("White, non-Hispanic", "Non-Hispanic/Non-Latino")
    'White'
    >>> chexpert_race("Black or African American", "Hispanic/Latino") is pd.NA
    True
    """
    if is_hispanic(primary) or is_hispanic(ethnicity):
        return pd.NA
    return race_class(primary)


def read_demo(data: bytes) -> pd.DataFrame:
    """``CHEXPERT DEMO.xlsx`` (or a csv copy) indexed by ``PATIENT``."""
    if data[:2] == b"PK":
        try:
            table = pd.read_excel(io.BytesIO(data), engine="openpyxl")
        except (zipfile.BadZipFile, OSError, ValueError, KeyError) as err:
            raise ValueError(f"{DEMO_FILE} cannot be read ({type(err).__name__}); download it "
                             "again from the CheXpert page") from None
    else:
        table = read_table(data, DEMO_FILE)
    need = {"PATIENT", "PRIMARY_RACE"} - set(table.columns)
    if need:
        raise ValueError(f"{DEMO_FILE} lacks column(s) {sorted(need)}; has {list(table.columns)}")
    return table.drop_duplicates("PATIENT").set_index("PATIENT")


def read_labels(box: Container) -> pd.DataFrame:
    """train.csv and valid.csv (frontal images only), with a ``key`` to the image file."""
    frames = []
    for name in ("train.csv", "valid.csv"):
        member = box.find("/" + name) or box.find(name)
        data = box.read(member) if member else b""
        if data.strip():
            frames.append(pd.read_csv(io.BytesIO(data)))
    if not frames:
        raise FileNotFoundError(f"no train.csv/valid.csv in {box.location}: is this a CheXpert copy?")
    table = pd.concat(frames, ignore_index=True)
    if "Frontal/Lateral" in table:
        table = table[table["Frontal/Lateral"].astype(str).str.lower() == "frontal"]
    keys = table["Path"].astype(str).str.extract(IMAGE_KEY)
    table = table.assign(key=keys.apply(lambda r: "/".join(r) if r.notna().all() else None, axis=1),
                         patient_id=keys[1], study=keys[2])
    return table[table["key"].notna()].reset_index(drop=True)


def build_rows(table: pd.DataFrame, demo: pd.DataFrame | None, seed: int) -> pd.DataFrame:
    """Manifest rows (without checking images) from the label table and the demographics."""
    d = demo.reindex(table["patient_id"]) if demo is not None else None
    primary = d["PRIMARY_RACE"].to_numpy() if d is not None else [pd.NA] * len(table)
    ethnic = d["ETHNICITY"].to_numpy() if d is not None and "ETHNICITY" in d else [pd.NA] * len(table)
    age = pd.to_numeric(table.get("Age"), errors="coerce").to_numpy(dtype=float)
    if d is not None and "AGE_AT_CXR" in d:
        demo_age = pd.to_numeric(d["AGE_AT_CXR"], errors="coerce").to_numpy(dtype=float)
        age = np.where(np.isnan(demo_age), age, demo_age)
    sex = [map_sex(v) for v in table.get("Sex", pd.Series([pd.NA] * len(table)))]
    split = split_patients(table["patient_id"], seed)
    df = pd.DataFrame({
        "image_id": table["key"].str.replace("/", "_"), "path": "images/" + table["key"] + ".png",
        "patient_id": table["patient_id"], "study_id": table["patient_id"] + "/" + table["study"],
        "split": [split[p] for p in table["patient_id"]],
        "view": table.get("AP/PA", pd.Series([pd.NA] * len(table))).where(
            table.get("AP/PA", pd.Series([pd.NA] * len(table))).isin(["AP", "PA"])),
        "sex": sex, "age": np.where((age >= 0) & (age <= 120), age, np.nan),
        "race": [chexpert_race(p, e) for p, e in zip(primary, ethnic)],
        "ethnicity": ethnic, "bmi": np.nan, "site": "Stanford Hospital", "source": NAME,
        "race_original": primary, "member_key": table["key"],
    })
    for label in LABELS:
        df[finding_column(label)] = [chexpert_label(v) for v in table.get(label, [np.nan] * len(table))]
    df["no_finding"] = [chexpert_label(v) for v in table.get("No Finding", [np.nan] * len(table))]
    return df.reset_index(drop=True)


# ----------------------------------------------------------------------------- driver
def check_signed_url(url: str, allow_http_loopback: bool = False) -> str:
    """A well-formed signed URL that may be sent (HTTPS; HTTP only to loopback when allowed)."""
    check_url(url)
    if urlsplit(url).query:
        check_transport(url, "the signed URL", allow_http_loopback)
    return url


def _locate(local: str | Path | None, url: str | None, dest: Path, keep_archive: bool,
            progress: bool, net: dict) -> tuple[Path, bool]:
    """A local folder/zip holding CheXpert: given, or downloaded from the signed URL."""
    if local:
        path = Path(local).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"no CheXpert copy at {path}")
        return path, False
    zip_path = download_file(url, dest / "_download" / "chexpert.zip", progress=progress,
                             access_hint=ACCESS_HINT, desc="chexpert.zip", verify=verify_zip,
                             **net)
    return zip_path, not keep_archive


def fetch_chexpert(dest: str | Path | None = None, *, local: str | Path | None = None,
                   url: str | None = None, demo: str | Path | None = None,
                   size: int = DEFAULT_SIZE, limit: int | None = None, seed: int = 0,
                   keep_archive: bool = False, name: str = DEFAULT_NAME,
                   dry_run: bool = False, progress: bool = True, retries: int = 5,
                   backoff: float = 1.0, allow_http_loopback: bool = False,
                   workers: int | None = None) -> Path | None:
    """Prepare CheXpert from a local copy or a signed URL, joined to ``CHEXPERT DEMO.xlsx``.

    ``workers`` processes decode and resize the JPEGs (None: every core; 1: this process
    only); the zip is read here, so the result is the same whatever the number.

    >>> # fetch_chexpert(local="~/data/CheXpert-v1.0-small.zip", demo="~/data/CHEXPERT DEMO.xlsx")
    """
    check_common(size, limit, seed)
    check_workers(workers)
    dest = resolve_dest(NAME, dest, name)
    local = local or env_default("CHEXPERT_DIR")
    url = url or env_default("CHEXPERT_URL")
    if not local and not url:
        raise ValueError("give --local (a CheXpert folder or zip) or set CHEXPERT_URL to the "
                         f"signed URL of the zip. {ACCESS_HINT}")
    if url and not local:
        check_signed_url(url, allow_http_loopback)
    if dry_run:
        what = f"read {local}" if local else f"download the zip from {redact_url(url)}"
        print(f"{TITLE} -> {dest}\n  {what}; disk needed about "
              f"{human_bytes(estimate_disk(limit or 224_316, size))} for "
              f"{limit or 'all (224,316)'} images (plus the zip if downloaded: 11 GB small, 439 GB full)")
        return None
    claim_folder(dest, NAME, size)
    net = {"retries": retries, "backoff": backoff, "session": make_session()}
    location, remove_after = _locate(local, url, dest, keep_archive, progress, net)
    box = Container(location)
    demo_table, demo_origin = _load_demo(demo, box, location, net)
    rows = whole_patient_subset(build_rows(read_labels(box), demo_table, seed), limit, seed)
    check_free_space(dest, estimate_disk(len(rows), size))
    with fetch_pool(workers) as pool:
        keep, corrupt = _convert(rows, box.images(), box, dest, size, progress, pool)
    df = rows[keep].drop(columns="member_key")
    df["split"] = df["patient_id"].map(split_patients(df["patient_id"], seed))
    card = {"source": NAME, "title": TITLE, "size": size, "targets": ["race", "sex", "age"],
            "citation": "Irvin et al. 2019, AAAI (CheXpert)", "demographics": demo_origin,
            "race_rule": "PRIMARY_RACE names Asian, Black or White and the patient is not Hispanic",
            "split_method": "random patient-level 60/10/30 (as Gichoya et al. 2022)",
            "restricted": True}
    out = finalize(df, dest, card, corrupt)
    if remove_after:
        location.unlink(missing_ok=True)
    return out


def _load_demo(demo: str | Path | None, box: Container, location: Path,
               net: dict) -> tuple[pd.DataFrame | None, str]:
    if demo:
        return read_demo(read_location(demo, **net)), redact_url(str(demo))
    inside = box.find(DEMO_FILE)
    if inside:
        return read_demo(box.read(inside)), f"{DEMO_FILE} inside the copy"
    beside = location.parent / DEMO_FILE
    if beside.exists():
        return read_demo(beside.read_bytes()), str(beside)
    log.warning("%s not found (--demo): race will be missing", DEMO_FILE)
    return None, "none"


def image_item(box: Container, member: str | None, key: str, out: Path, size: int) -> IngestItem:
    """What to store for one image: its JPEG's bytes (CRC-32 checked, capped), nothing when
    it is already stored, or why it is left out (missing, damaged in the zip, over the cap)."""
    if out.exists():
        return IngestItem(None, key, out, size)
    if member is None:
        return IngestItem(None, key, out, size, "image file missing from the copy")
    try:
        return IngestItem(box.read(member, cap=MAX_MEMBER_BYTES), key, out, size)
    except CorruptImageError as err:
        return IngestItem(None, key, out, size, str(err).split(": ", 1)[-1])


def _convert(rows: pd.DataFrame, members: dict[str, str], box: Container, dest: Path,
             size: int, progress: bool, pool: ImagePool
             ) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Store every row's image (read here in row order, decoded by ``pool``): the kept mask
    and the images left out with their reasons, in row order."""
    keep = np.zeros(len(rows), dtype=bool)
    corrupt: list[tuple[str, str]] = []

    def record(i: int, stored: Stored) -> None:
        if stored.ok:
            keep[i] = True
        else:
            corrupt.append((stored.name, stored.error))

    with StoreQueue(pool, record) as queue:
        for i, (key, rel) in enumerate(tqdm(list(zip(rows["member_key"], rows["path"])),
                                            desc=NAME, unit=" img", disable=not progress)):
            queue.settle(dest / rel)             # the same file twice: the first one first
            queue.put(image_item(box, members.get(key), key, dest / rel, size), tag=i)
    return keep, corrupt


# ----------------------------------------------------------------------------- CLI
def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``python -m data_fetch chexpert``."""
    p = subparsers.add_parser(NAME, help=f"{TITLE}: {ACCESS}", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, "(unused for CheXpert: give --url or --local)")
    p.add_argument("--local", "--source-dir", dest="local", default=None, help="CheXpert folder or zip ($CHEXPERT_DIR)")
    p.add_argument("--url", default=None,
                   help="signed URL of the CheXpert zip; prefer setting $CHEXPERT_URL, since "
                        "arguments show in the process list (never logged or stored)")
    p.add_argument("--demo", default=None, help=f"path or URL of {DEMO_FILE}")
    p.add_argument("--keep-archive", action="store_true", help="keep the downloaded zip")
    add_workers_arg(p)
    add_http_loopback_arg(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the ``chexpert`` subcommand."""
    if args.url and urlsplit(str(args.url)).query:
        log.warning("the signed URL given with --url is visible to other users in the process "
                    "list; prefer: export CHEXPERT_URL='...'")
    return run_fetch(fetch_chexpert, TITLE, args, local=args.local, url=args.url,
                     demo=args.demo, limit=args.limit, keep_archive=args.keep_archive,
                     allow_http_loopback=args.allow_http_loopback, workers=args.workers)
