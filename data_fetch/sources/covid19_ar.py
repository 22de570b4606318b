"""TCIA COVID-19-AR (open, CC BY 4.0): chest radiographs with self-reported race.

Desai et al. 2020, "Chest imaging representing a COVID-19 positive rural U.S. population",
Scientific Data 7:414 (doi 10.1038/s41597-020-00741-6); data doi 10.7937/tcia.2020.py71-5978.
About 262 CR/DX radiographs of 104 patients, hosted in public object storage by NCI Imaging
Data Commons (IDC). Too small to train on: the chapters use it to *evaluate* models and probes
on real self-reported race labels.

Where the file list comes from (``--listing`` or ``$COVID19_AR_LISTING``), any one of:

* a CSV with one row per DICOM file and a column ``gcs_url``, ``aws_url`` or ``url``
  (optionally ``PatientID``, ``Modality``, ``instance_size``), e.g. from IDC's BigQuery table::

      SELECT PatientID, SeriesInstanceUID, SOPInstanceUID, Modality, gcs_url, instance_size
      FROM `bigquery-public-data.idc_current.dicom_all`
      WHERE collection_id = 'covid_19_ar' AND Modality IN ('CR', 'DX')

* the s5cmd manifest that the IDC portal (portal.imaging.datacommons.cancer.gov) exports for a
  cohort: lines like ``cp s3://idc-open-data/<series uuid>/* .``; each series folder is listed
  through the bucket's public S3 listing.

``gs://`` and ``s3://`` addresses are fetched over HTTPS (storage.googleapis.com,
s3.amazonaws.com); ``--mirror`` replaces that host. The clinical spreadsheet (``--clinical`` or ``$COVID19_AR_CLINICAL``,
xlsx or csv with ``RACE``, ``SEX``, ``AGE`` and a patient id column) is on the collection's
TCIA page (https://www.cancerimagingarchive.net/collection/covid-19-ar/). Without it, sex and
age come from the DICOM header and race stays missing.

DICOM to PNG: modality LUT, then the VOI LUT or window (``apply_voi_lut``), then MONOCHROME1
is inverted so bone is always bright.
"""
from __future__ import annotations

import argparse
import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from data_fetch import download as dl
from data_fetch.sources import _common as C

NAME = "covid19_ar"
TITLE = "TCIA COVID-19-AR"
ACCESS = "open (CC BY 4.0), no login"
GCS_BASE = "https://storage.googleapis.com"
S3_BASE = "https://s3.amazonaws.com"
URL_COLUMNS = ("url", "gcs_url", "aws_url", "s3_url")
TYPICAL_DICOM_BYTES = 8_000_000
SITE = "University of Arkansas for Medical Sciences"
LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL")


# ----------------------------------------------------------------------------- listing
def resolve_url(address: str, mirror: str | None = None) -> str:
    """HTTPS URL of a listing entry: ``gs://b/k``, ``s3://b/k``, an http(s) URL or a relative path.

    >>> resolve_url("gs://idc-open-data/a/b.dcm")
    'https://storage.googleapis.com/idc-open-data/a/b.dcm'
    >>> resolve_url("s3://idc-open-data/a/b.dcm", mirror="http://127.0.0.1:9")
    'http://127.0.0.1:9/idc-open-data/a/b.dcm'
    """
    address = address.strip()
    match = re.match(r"(gs|s3)://(.+)", address)
    if match:
        base = mirror or (GCS_BASE if match.group(1) == "gs" else S3_BASE)
        return dl.join_url(base, match.group(2))
    if dl.is_url(address):
        if not mirror:
            return address
        path = re.sub(r"^https?://[^/]+", "", address)
        return dl.join_url(mirror, path)
    if not mirror:
        raise ValueError(f"relative address {address!r} in the listing needs --mirror")
    return dl.join_url(mirror, address)


def _list_prefix(folder_url: str, **net: Any) -> list[str]:
    """Object URLs under an S3 "folder" (``https://host/bucket/prefix/``), via ListObjectsV2."""
    match = re.match(r"(https?://[^/]+/[^/]+)/(.*)", folder_url.rstrip("*"))
    if not match:
        raise ValueError(f"cannot list {folder_url}")
    bucket_url, prefix = match.groups()
    xml = dl.read_location(f"{bucket_url}?list-type=2&prefix={prefix}", **net)
    root = ET.fromstring(xml)
    keys = [el.text for el in root.iter() if el.tag.endswith("Key") and el.text]
    return [dl.join_url(bucket_url, k) for k in keys if k.endswith(".dcm")]


def read_listing(location: str | Path, mirror: str | None = None, **net: Any) -> pd.DataFrame:
    """The DICOM files to fetch, as a table with a resolved ``url`` column (one row per file)."""
    text = dl.read_location(location, **net).decode("utf-8-sig")
    first = text.lstrip().split("\n", 1)[0]
    if any(col in [c.strip().strip('"') for c in first.split(",")] for col in URL_COLUMNS):
        table = pd.read_csv(io.StringIO(text))
        column = next(c for c in URL_COLUMNS if c in table.columns)
        if "Modality" in table.columns:
            table = table[table["Modality"].isin(["CR", "DX"])]
        table = table.assign(url=[resolve_url(str(a), mirror) for a in table[column]])
        return table.reset_index(drop=True)
    urls: list[str] = []
    for line in text.splitlines():
        token = next((t for t in line.split() if re.match(r"(gs|s3|https?)://", t)), None)
        if token is None:
            continue
        url = resolve_url(token, mirror)
        urls.extend(_list_prefix(url, **net) if url.endswith("*") or url.endswith("/") else [url])
    return pd.DataFrame({"url": urls})


# ----------------------------------------------------------------------------- DICOM
def dicom_to_image(data: bytes, name: str) -> tuple[Image.Image, dict[str, Any]]:
    """Decode a DICOM radiograph to an 8-bit image (VOI LUT applied, MONOCHROME1 inverted)."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        arr = ds.pixel_array
    except Exception as err:  # pydicom raises many types for broken or compressed files
        hint = " (compressed pixel data may need: pip install pylibjpeg pylibjpeg-libjpeg)" \
            if "decode" in str(err).lower() or "handler" in str(err).lower() else ""
        raise C.CorruptImageError(f"{name}: cannot decode DICOM ({type(err).__name__}){hint}") from None
    if arr.ndim != 2:
        raise C.CorruptImageError(f"{name}: expected one greyscale frame, got shape {arr.shape}")
    arr = apply_modality_lut(arr, ds)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        arr = apply_voi_lut(arr, ds, index=0)
    pixels = C.scale_to_uint8(arr)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        pixels = 255 - pixels
    return Image.fromarray(pixels), _dicom_meta(ds)


def _dicom_meta(ds: Any) -> dict[str, Any]:
    age = re.match(r"(\d+)([YMWD]?)", str(ds.get("PatientAge", "")))
    years = None
    if age:
        factor = {"Y": 1, "M": 1 / 12, "W": 1 / 52, "D": 1 / 365}.get(age.group(2) or "Y", 1)
        years = round(int(age.group(1)) * factor, 2)
    view = str(ds.get("ViewPosition", "") or "").upper()
    if not view:
        desc = str(ds.get("SeriesDescription", "")).upper()
        view = next((v for v in ("PA", "AP", "LAT") if re.search(rf"\b{v}\b", desc)), "")
    return {"patient_id": str(ds.get("PatientID", "")), "sop": str(ds.get("SOPInstanceUID", "")),
            "study_id": str(ds.get("StudyInstanceUID", "")), "view": view,
            "dicom_sex": str(ds.get("PatientSex", "")), "dicom_age": years,
            "modality": str(ds.get("Modality", "")),
            "photometric": str(ds.get("PhotometricInterpretation", ""))}


# ----------------------------------------------------------------------------- clinical
def read_clinical(location: str | Path, **net: Any) -> pd.DataFrame:
    """The clinical table (xlsx or csv) reduced to ``patient_id, race_original, sex, age, ethnicity``."""
    data = dl.read_location(location, **net)
    if data[:2] == b"PK":
        table = pd.read_excel(io.BytesIO(data), engine="openpyxl")
    else:
        table = pd.read_csv(io.BytesIO(data))
    cols = {re.sub(r"[^a-z]", "", str(c).lower()): c for c in table.columns}
    pid = next((cols[k] for k in ("patientid", "pid", "patient", "subjectid") if k in cols),
               next((c for k, c in cols.items() if "patient" in k), None))
    if pid is None or "race" not in cols:
        raise ValueError(f"clinical table needs a patient id and a RACE column; has {list(table.columns)}")
    out = pd.DataFrame({"patient_id": table[pid].astype(str).str.strip(),
                        "race_original": table[cols["race"]]})
    out["sex_clinical"] = table[cols["sex"]] if "sex" in cols else pd.NA
    out["age_clinical"] = pd.to_numeric(table[cols["age"]], errors="coerce") if "age" in cols else np.nan
    out["ethnicity"] = table[cols["ethnicity"]] if "ethnicity" in cols else pd.NA
    return out.drop_duplicates("patient_id")


# ----------------------------------------------------------------------------- driver
def _fetch_one(url: str, dest: Path, size: int, keep_dicom: bool, net: dict) -> dict[str, Any]:
    """Download one DICOM, convert it to PNG, and return its metadata (cached as JSON)."""
    key = Path(url.split("?")[0]).stem
    meta_path = dest / "_meta" / f"{key}.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if (dest / meta["path"]).exists():
            return meta
    dcm = dl.download(url, dest / "_dicom" / f"{key}.dcm", progress=False, **net)
    try:
        img, meta = dicom_to_image(dcm.read_bytes(), key)
    finally:
        if not keep_dicom:
            dcm.unlink(missing_ok=True)
    meta["path"] = f"images/{key}.png"
    meta["key"] = key
    C.save_png(C.square_resize(img, size), dest / meta["path"])
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(meta))
    return meta


def build_manifest(metas: list[dict[str, Any]], clinical: pd.DataFrame | None,
                   seed: int) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Manifest rows from DICOM metadata joined to the clinical table, with a patient split."""
    excluded = [(m["key"], f"lateral view {m['view']}") for m in metas if m["view"] in LATERAL_VIEWS]
    metas = [m for m in metas if m["view"] not in LATERAL_VIEWS]
    df = pd.DataFrame(metas)
    if df.empty:
        return df, excluded
    if clinical is not None:
        df = df.merge(clinical, on="patient_id", how="left")
    else:
        df = df.assign(race_original=pd.NA, sex_clinical=pd.NA, age_clinical=np.nan, ethnicity=pd.NA)
    sex = [C.map_sex(s) for s in df["sex_clinical"]]
    sex = [s if s is not pd.NA else C.map_sex(d) for s, d in zip(sex, df["dicom_sex"])]
    split = C.split_patients(df["patient_id"], seed)
    out = pd.DataFrame({
        "image_id": [m or k for m, k in zip(df["sop"], df["key"])], "path": df["path"],
        "patient_id": df["patient_id"], "study_id": df["study_id"].replace("", pd.NA).fillna(df["key"]),
        "split": [split[p] for p in df["patient_id"]],
        "view": df["view"].where(df["view"].isin(["PA", "AP"])),
        "sex": sex, "age": pd.to_numeric(df["age_clinical"], errors="coerce").fillna(
            pd.to_numeric(df["dicom_age"], errors="coerce")),
        "race": [C.race_class(r) for r in df["race_original"]],
        "ethnicity": df["ethnicity"], "bmi": np.nan, "site": SITE, "source": NAME,
        "race_original": df["race_original"], "modality": df["modality"],
        "photometric": df["photometric"], "no_finding": pd.NA,
    })
    return out, excluded


def fetch_covid19_ar(dest: str | Path | None = None, *, listing: str | Path | None = None, clinical:
                     str | Path | None = None, size: int = C.DEFAULT_SIZE,
                     limit: int | None = None, mirror: str | None = None, seed: int = 0,
                     keep_dicom: bool = False, name: str = C.DEFAULT_NAME,
                     dry_run: bool = False, progress: bool = True, retries: int = 5,
                     backoff: float = 1.0) -> Path | None:
    """Fetch the COVID-19-AR radiographs named in ``listing``, convert them to PNG, join the
    clinical table's race/sex/age and write the manifest; returns its path.

    >>> # fetch_covid19_ar(listing="covid19_ar_idc.csv", clinical="COVID-19-AR-clinical.xlsx")
    """
    dest = C.resolve_dest(NAME, dest, name)
    net = {"retries": retries, "backoff": backoff}
    listing = listing or C.env_default("COVID19_AR_LISTING")
    if not listing:
        raise ValueError(
            "COVID-19-AR needs a file listing (--listing or $COVID19_AR_LISTING): export the "
            "collection 'covid_19_ar' (CR/DX) from the IDC portal "
            "(portal.imaging.datacommons.cancer.gov, s5cmd manifest) or query "
            "bigquery-public-data.idc_current.dicom_all for gcs_url; see "
            "python -m data_fetch covid19_ar --help")
    table = read_listing(listing, mirror, **net)
    if limit is not None:
        table = table.head(limit)
    sizes = pd.to_numeric(table.get("instance_size", pd.Series(dtype=float)), errors="coerce")
    download_bytes = int(sizes.sum()) if sizes.notna().all() and len(sizes) else len(table) * TYPICAL_DICOM_BYTES
    if dry_run:
        print(f"{TITLE} -> {dest}\n  {len(table)} DICOM files from "
              f"{sorted({dl.redact_url(u).split('/')[2] for u in table['url']})}; download about "
              f"{dl.human_bytes(download_bytes)}, disk needed about "
              f"{dl.human_bytes(C.estimate_disk(len(table), size))}")
        return None
    dl.check_free_space(dest, C.estimate_disk(len(table), size, TYPICAL_DICOM_BYTES))
    clinical = clinical or C.env_default("COVID19_AR_CLINICAL")
    clin = read_clinical(clinical, **net) if clinical else None
    if clin is None:
        C.log.warning("no clinical table given (--clinical): race will be missing")
    metas, corrupt = [], []
    for url in tqdm(table["url"], desc=NAME, unit=" img", disable=not progress):
        try:
            metas.append(_fetch_one(url, dest, size, keep_dicom, net))
        except C.CorruptImageError as err:
            corrupt.append((Path(url).stem, str(err).split(": ", 1)[-1]))
    df, lateral = build_manifest(metas, clin, seed)
    card = {"source": NAME, "title": TITLE, "size": size, "license": "CC BY 4.0",
            "targets": ["race", "sex", "age"], "role": "evaluation only (104 patients)",
            "citation": "Desai et al. 2020, Sci Data 7:414; TCIA doi 10.7937/tcia.2020.py71-5978",
            "clinical": dl.redact_url(str(clinical)) if clinical else None,
            "split_method": "random patient-level 60/10/30"}
    return C.finalize(df, dest, card, corrupt + lateral)


# ----------------------------------------------------------------------------- CLI
def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``python -m data_fetch covid19_ar``."""
    p = subparsers.add_parser(NAME, help=f"{TITLE}: {ACCESS}", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p, "host that replaces storage.googleapis.com / s3.amazonaws.com "
                         "(or resolves relative addresses in the listing)")
    p.add_argument("--listing", default=None,
                   help="CSV (gcs_url/aws_url/url column) or IDC s5cmd manifest, path or URL")
    p.add_argument("--clinical", default=None, help="clinical spreadsheet (xlsx/csv), path or URL")
    p.add_argument("--keep-dicom", action="store_true", help="keep the original DICOM files")
    return p


def run(args: argparse.Namespace) -> int:
    """Run the ``covid19_ar`` subcommand."""
    out = fetch_covid19_ar(args.dest, listing=args.listing, clinical=args.clinical,
                           size=args.size, limit=args.limit, mirror=args.mirror, seed=args.seed,
                           keep_dicom=args.keep_dicom, name=args.name, dry_run=args.dry_run,
                           progress=not args.no_progress)
    if out is not None:
        C.say(f"{TITLE} ready: {out}")
    return 0
