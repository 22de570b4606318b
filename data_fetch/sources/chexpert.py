"""CheXpert (Stanford AIMI; free registration and a research use agreement).

Irvin et al. 2019, "CheXpert: a large chest radiograph dataset with uncertainty labels and
expert comparison", AAAI. Register at https://stanfordaimi.azurewebsites.net/datasets (CheXpert),
accept the agreement, and either download the zip yourself (``--local`` folder or zip;
``$CHEXPERT_DIR``) or paste the signed download URL of the zip (``--url``; ``$CHEXPERT_URL``).
A signed URL is a secret: its query string is never printed, logged or stored.

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
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from data_fetch import download as dl
from data_fetch.sources import _common as C

NAME = "chexpert"
TITLE = "CheXpert"
ACCESS = "free registration + research use agreement (Stanford AIMI)"
DEMO_FILE = "CHEXPERT DEMO.xlsx"
ACCESS_HINT = ("CheXpert needs a (free) Stanford AIMI registration and its research use "
               "agreement: https://stanfordaimi.azurewebsites.net/datasets . Signed URLs expire: "
               "paste a fresh one.")
LABELS = C.CHEXPERT_LABELS
IMAGE_KEY = re.compile(r"(train|valid|test)/(patient\d+)/(study\d+)/(view\d+_\w+)\.jpg$")
TYPICAL_JPEG_BYTES = 60_000


class Container:
    """Read files from a CheXpert folder or zip by their path inside the dataset."""

    def __init__(self, location: Path):
        self.location = location
        self.zip = zipfile.ZipFile(location) if location.is_file() else None
        names = self.zip.namelist() if self.zip else [
            str(p.relative_to(location)) for p in location.rglob("*") if p.is_file()]
        self.names = [n.replace("\\", "/") for n in names]

    def find(self, suffix: str) -> str | None:
        """The first member whose path ends with ``suffix`` (case-insensitive)."""
        low = suffix.lower()
        return next((n for n in self.names if n.lower().endswith(low)), None)

    def read(self, name: str) -> bytes:
        """Bytes of member ``name``."""
        if self.zip:
            return self.zip.read(name)
        return (self.location / name).read_bytes()

    def images(self) -> dict[str, str]:
        """``'train/patient00001/study1/view1_frontal'`` -> member name, for every JPEG."""
        found = {}
        for n in self.names:
            m = IMAGE_KEY.search(n)
            if m:
                found["/".join(m.groups())] = n
        return found


# ----------------------------------------------------------------------------- labels
def chexpert_race(primary: Any, ethnicity: Any) -> Any:
    """The paper's class for a CheXpert PRIMARY_RACE/ETHNICITY pair (Hispanic -> missing).

    >>> chexpert_race("White, non-Hispanic", "Non-Hispanic/Non-Latino")
    'White'
    >>> chexpert_race("Black or African American", "Hispanic/Latino") is pd.NA
    True
    """
    if C.is_hispanic(primary) or C.is_hispanic(ethnicity):
        return pd.NA
    return C.race_class(primary)


def _label(value: Any) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return False  # blank: not mentioned in the report
    return {1.0: True, 0.0: False, -1.0: pd.NA}.get(float(value), pd.NA)


def read_demo(data: bytes) -> pd.DataFrame:
    """``CHEXPERT DEMO.xlsx`` (or a csv copy) indexed by ``PATIENT``."""
    table = pd.read_excel(io.BytesIO(data), engine="openpyxl") if data[:2] == b"PK" \
        else pd.read_csv(io.BytesIO(data))
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
    sex = [C.map_sex(v) for v in table.get("Sex", pd.Series([pd.NA] * len(table)))]
    split = C.split_patients(table["patient_id"], seed)
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
        df[C.finding_column(label)] = [_label(v) for v in table.get(label, [np.nan] * len(table))]
    df["no_finding"] = [_label(v) for v in table.get("No Finding", [np.nan] * len(table))]
    return df.reset_index(drop=True)


# ----------------------------------------------------------------------------- driver
def _locate(local: str | Path | None, url: str | None, dest: Path, keep_archive: bool,
            progress: bool, net: dict) -> tuple[Path, bool]:
    """A local folder/zip holding CheXpert: given, or downloaded from the signed URL."""
    if local:
        path = Path(local).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"no CheXpert copy at {path}")
        return path, False
    if not url:
        raise ValueError("give --local (a CheXpert folder or zip) or --url (the signed URL "
                         f"of the zip). {ACCESS_HINT}")
    zip_path = dl.download(url, dest / "_download" / "chexpert.zip", progress=progress,
                           access_hint=ACCESS_HINT, desc="chexpert.zip", **net)
    return zip_path, not keep_archive


def fetch_chexpert(dest: str | Path | None = None, *, local: str | Path | None = None,
                   url: str | None = None, demo: str | Path | None = None,
                   size: int = C.DEFAULT_SIZE, limit: int | None = None, seed: int = 0,
                   keep_archive: bool = False, name: str = C.DEFAULT_NAME,
                   dry_run: bool = False, progress: bool = True, retries: int = 5,
                   backoff: float = 1.0) -> Path | None:
    """Prepare CheXpert from a local copy or a signed URL, joined to ``CHEXPERT DEMO.xlsx``.

    >>> # fetch_chexpert(local="~/data/CheXpert-v1.0-small.zip", demo="~/data/CHEXPERT DEMO.xlsx")
    """
    dest = C.resolve_dest(NAME, dest, name)
    local = local or C.env_default("CHEXPERT_DIR")
    url = url or C.env_default("CHEXPERT_URL")
    if dry_run:
        what = f"read {local}" if local else f"download the zip from {dl.redact_url(url or '?')}"
        print(f"{TITLE} -> {dest}\n  {what}; disk needed about "
              f"{dl.human_bytes(C.estimate_disk(limit or 224_316, size))} for "
              f"{limit or 'all (224,316)'} images (plus the zip if downloaded: 11 GB small, 439 GB full)")
        return None
    net = {"retries": retries, "backoff": backoff}
    location, remove_after = _locate(local, url, dest, keep_archive, progress, net)
    box = Container(location)
    demo_table, demo_origin = _load_demo(demo, box, location, net)
    rows = C.whole_patient_subset(build_rows(read_labels(box), demo_table, seed), limit, seed)
    dl.check_free_space(dest, C.estimate_disk(len(rows), size))
    members = box.images()
    keep, corrupt = _convert(rows, members, box, dest, size, progress)
    if remove_after:
        location.unlink(missing_ok=True)
    df = rows[keep].drop(columns="member_key")
    df["split"] = df["patient_id"].map(C.split_patients(df["patient_id"], seed))
    card = {"source": NAME, "title": TITLE, "size": size, "targets": ["race", "sex", "age"],
            "citation": "Irvin et al. 2019, AAAI (CheXpert)", "demographics": demo_origin,
            "race_rule": "PRIMARY_RACE names Asian, Black or White and the patient is not Hispanic",
            "split_method": "random patient-level 60/10/30 (as Gichoya et al. 2022)",
            "restricted": True}
    return C.finalize(df, dest, card, corrupt)


def _load_demo(demo: str | Path | None, box: Container, location: Path,
               net: dict) -> tuple[pd.DataFrame | None, str]:
    if demo:
        return read_demo(dl.read_location(demo, **net)), dl.redact_url(str(demo))
    inside = box.find(DEMO_FILE)
    if inside:
        return read_demo(box.read(inside)), f"{DEMO_FILE} inside the copy"
    beside = location.parent / DEMO_FILE
    if beside.exists():
        return read_demo(beside.read_bytes()), str(beside)
    C.log.warning("%s not found (--demo): race will be missing", DEMO_FILE)
    return None, "none"


def _convert(rows: pd.DataFrame, members: dict[str, str], box: Container, dest: Path,
             size: int, progress: bool) -> tuple[np.ndarray, list[tuple[str, str]]]:
    keep = np.zeros(len(rows), dtype=bool)
    corrupt: list[tuple[str, str]] = []
    for i, (key, rel) in enumerate(tqdm(list(zip(rows["member_key"], rows["path"])),
                                        desc=NAME, unit=" img", disable=not progress)):
        out = dest / rel
        if out.exists():
            keep[i] = True
            continue
        member = members.get(key)
        if member is None:
            corrupt.append((key, "image file missing from the copy"))
            continue
        try:
            C.store_image(box.read(member), key, out, size)
            keep[i] = True
        except C.CorruptImageError as err:
            corrupt.append((key, str(err).split(": ", 1)[-1]))
    return keep, corrupt


# ----------------------------------------------------------------------------- CLI
def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``python -m data_fetch chexpert``."""
    p = subparsers.add_parser(NAME, help=f"{TITLE}: {ACCESS}", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p, "(unused for CheXpert: give --url or --local)")
    p.add_argument("--local", "--source-dir", dest="local", default=None, help="CheXpert folder or zip ($CHEXPERT_DIR)")
    p.add_argument("--url", default=None,
                   help="signed URL of the CheXpert zip ($CHEXPERT_URL); never logged")
    p.add_argument("--demo", default=None, help=f"path or URL of {DEMO_FILE}")
    p.add_argument("--keep-archive", action="store_true", help="keep the downloaded zip")
    return p


def run(args: argparse.Namespace) -> int:
    """Run the ``chexpert`` subcommand."""
    out = fetch_chexpert(args.dest, local=args.local, url=args.url, demo=args.demo,
                         size=args.size, limit=args.limit, seed=args.seed,
                         keep_archive=args.keep_archive, name=args.name, dry_run=args.dry_run,
                         progress=not args.no_progress)
    if out is not None:
        C.say(f"{TITLE} ready: {out}")
    return 0
