"""TCIA COVID-19-AR (open, CC BY 4.0): chest radiographs with self-reported race.

Desai et al. 2020, "Chest imaging representing a COVID-19 positive rural U.S. population",
Scientific Data 7:414 (doi 10.1038/s41597-020-00741-6); data doi 10.7937/tcia.2020.py71-5978.
About 262 CR/DX radiographs of 104 patients, hosted in public object storage by NCI Imaging
Data Commons (IDC). Too small to train on: the chapters use it to *evaluate* models and probes
on real self-reported race labels.

Where the file list comes from:

* by default, the Imaging Data Commons index that ships offline in the ``idc-index-data``
  package (``pip install -e ".[real]"``): one DuckDB query over its parquet file selects the
  collection's CR/DX series with a frontal chest description (IDC v25: 262 CR/DX series of 104
  patients, 3.21 GB; 250 frontal chest series after 6 lateral and 6 abdominal/pelvic films are
  left out). ``--dry-run`` prints that selection without any network.
* ``--listing`` (or ``$COVID19_AR_LISTING``), for offline mirrors, any one of:

  - a CSV with one row per DICOM file and a column ``gcs_url``, ``aws_url`` or ``url``
    (optionally ``PatientID``, ``Modality``, ``instance_size``), e.g. from IDC's BigQuery table::

        SELECT PatientID, SeriesInstanceUID, SOPInstanceUID, Modality, gcs_url, instance_size
        FROM `bigquery-public-data.idc_current.dicom_all`
        WHERE collection_id = 'covid_19_ar' AND Modality IN ('CR', 'DX')

  - the s5cmd manifest that the IDC portal (portal.imaging.datacommons.cancer.gov) exports for
    a cohort: lines like ``cp s3://idc-open-data/<series uuid>/* .``.

Downloads use this package's own HTTP path (not s5cmd): each series folder
``s3://idc-open-data/<uuid>/*`` is listed through the bucket's public S3 listing and every
DICOM is fetched over HTTPS to ``<name>.part``, resumed with ranged requests after a drop,
checked against the size the listing declares and only then renamed; a re-run skips what is
converted. Downloads go one at a time; ``--workers N`` processes decode the DICOMs and write
the PNGs meanwhile, in the listing's order (the dataset is the same whatever N).
``gs://`` and ``s3://`` addresses go to storage.googleapis.com / s3.amazonaws.com;
``--mirror`` replaces that host.

Self-reported race, sex and age: by default from IDC's clinical table ``covid_19_ar_clinical``
(``s3://idc-open-metadata/bigquery_export/idc_<version>_clinical/``, the bucket idc-index itself
fetches its clinical tables from; joined on ``dicom_patient_id``); or from TCIA's clinical
spreadsheet given with ``--clinical`` (xlsx or csv with ``RACE``, ``SEX``, ``AGE`` and a patient
id column, from https://www.cancerimagingarchive.net/collection/covid-19-ar/), verified with
``--clinical-sha256`` when you pin it. The data card records which table was used and its
SHA-256. When neither is reachable the fetcher stops with one line saying so;
``--no-clinical`` goes on without race (sex and age then come from the DICOM header).

Only radiographs are kept: DICOM Modality CR or DX and a frontal ViewPosition (AP/PA; from the
series description when the tag is empty). A CT or MR file, a lateral view, or a DICOM without
pixel data is left out with its reason in the data card.

DICOM to PNG: modality LUT, then the VOI LUT or window (``apply_voi_lut``), then the image is
inverted once when it is MONOCHROME1 or its PresentationLUTShape is INVERSE (DX files pair the
two), so bone is always bright.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import xml.etree.ElementTree as ET
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from data_fetch.download import (DownloadError, check_digests, check_free_space, download,
                                 human_bytes, is_url, join_url, read_location, redact_url)
from data_fetch.ingest import PENDING_PER_WORKER, Done, ImagePool, fetch_pool
from data_fetch.sources.cli import add_common_args, add_workers_arg, env_default, resolve_dest, say
from data_fetch.sources.dataset import DEFAULT_NAME, check_workers, finalize, log, split_patients
from data_fetch.sources.images import (CorruptImageError, estimate_disk, save_png, scale_to_uint8,
                                       square_resize)
from data_fetch.sources.labels import map_sex, race_class

NAME = "covid19_ar"
TITLE = "TCIA COVID-19-AR"
ACCESS = "open (CC BY 4.0), no login"
GCS_BASE = "https://storage.googleapis.com"
S3_BASE = "https://s3.amazonaws.com"
URL_COLUMNS = ("url", "gcs_url", "aws_url", "s3_url")
TYPICAL_DICOM_BYTES = 8_000_000
SITE = "University of Arkansas for Medical Sciences"
LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL")
FRONTAL_VIEWS = ("PA", "AP")
RADIOGRAPH_MODALITIES = ("CR", "DX")
#: The published model this collection is scored with works at 320 px (torchxrayvision).
DEFAULT_SIZE = 320
IDC_COLLECTION = "covid_19_ar"
#: IDC release of the pinned ``idc-index-data`` (pyproject's ``[real]`` extra); used when the
#: package is not installed (``--listing`` runs) to name IDC's clinical table.
PINNED_IDC_VERSION = "v25"
IDC_CLINICAL_BUCKET = "idc-open-metadata"
IDC_CLINICAL_TABLE = "covid_19_ar_clinical"
TCIA_PAGE = "https://www.cancerimagingarchive.net/collection/covid-19-ar/"
REAL_EXTRA_HINT = 'pip install -e ".[real]"   (idc-index and idc-index-data, the offline IDC index)'

#: The one query over the bundled IDC index: every CR/DX series of the collection, with a flag
#: for frontal chest films (lateral descriptions and abdomen/pelvis films are not).
SELECTION_SQL = """
SELECT PatientID AS patient_id, SeriesInstanceUID AS series_uid, StudyInstanceUID AS study_uid,
       Modality AS modality, SeriesDescription AS series_description,
       BodyPartExamined AS body_part, series_aws_url, series_size_MB * 1e6 AS series_bytes,
       instanceCount AS instances, PhotometricInterpretation AS photometric,
       (coalesce(SeriesDescription, '') NOT ILIKE '%lat%'
        AND coalesce(BodyPartExamined, 'CHEST') = 'CHEST') AS frontal_chest
FROM read_parquet(?)
WHERE collection_id = ? AND Modality IN ('CR', 'DX')
ORDER BY PatientID, SeriesInstanceUID
"""


class ExcludedImage(ValueError):
    """A DICOM that is readable but is not a frontal radiograph (or holds no image)."""


# ----------------------------------------------------------------------------- IDC index
def idc_version() -> str:
    """``vNN``: the IDC release of the installed ``idc-index-data`` (else the pinned one)."""
    try:
        import idc_index_data
    except ImportError:
        return PINNED_IDC_VERSION
    return f"v{idc_index_data.__version__.split('.')[0]}"


def idc_selection() -> pd.DataFrame:
    """The collection's CR/DX series from the IDC index shipped by ``idc-index-data`` (offline).

    One row per series: ``patient_id, series_uid, study_uid, modality, series_description,
    body_part, series_aws_url, series_bytes, instances, photometric, frontal_chest``.
    Raises ``ValueError`` naming the install command when the ``[real]`` extra is missing.
    """
    try:
        import duckdb
        import idc_index_data
    except ImportError:
        raise ValueError("COVID-19-AR's file list comes from the Imaging Data Commons index, "
                         f"which is not installed: {REAL_EXTRA_HINT}; or pass --listing with a "
                         "CSV or s5cmd manifest exported from the IDC portal") from None
    with duckdb.connect() as con:
        table = con.execute(SELECTION_SQL, [str(idc_index_data.IDC_INDEX_PARQUET_FILEPATH),
                                            IDC_COLLECTION]).df()
    table["frontal_chest"] = table["frontal_chest"].astype(bool)
    return table


def summarise_selection(table: pd.DataFrame) -> str:
    """What the index holds and what is selected, e.g. for ``--dry-run``."""
    chosen = table[table["frontal_chest"]]

    def line(t: pd.DataFrame) -> str:
        return (f"{len(t)} series of {t['patient_id'].nunique()} patients, "
                f"{t['series_bytes'].sum() / 1e9:.2f} GB")
    left = table[~table["frontal_chest"]]
    why = left["series_description"].fillna("").str.contains("lat", case=False)
    return (f"IDC {idc_version()} index, collection {IDC_COLLECTION}: CR/DX {line(table)}\n"
            f"  selected (frontal chest): {line(chosen)}; left out: {int(why.sum())} lateral, "
            f"{int((~why).sum())} not chest ({', '.join(sorted(left.loc[~why, 'body_part'].dropna().unique()))})")


def selection_listing(table: pd.DataFrame, mirror: str | None) -> pd.DataFrame:
    """The frontal chest series as fetcher rows: a series-folder ``url`` plus what the index says."""
    chosen = table[table["frontal_chest"]].reset_index(drop=True)
    return chosen.assign(url=[resolve_url(u, mirror) for u in chosen["series_aws_url"]],
                         PatientID=chosen["patient_id"], instance_size=chosen["series_bytes"])


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
        return join_url(base, match.group(2))
    if is_url(address):
        if not mirror:
            return address
        path = re.sub(r"^https?://[^/]+", "", address)
        return join_url(mirror, path)
    if not mirror:
        raise ValueError(f"relative address {address!r} in the listing needs --mirror")
    return join_url(mirror, address)


def is_folder(url: str) -> bool:
    """Whether a listing entry names a series folder (``.../<uuid>/*`` or ``.../``)."""
    return url.endswith("*") or url.endswith("/")


def list_prefix(folder_url: str, suffix: str = ".dcm", **net: Any) -> list[tuple[str, int]]:
    """``(url, size)`` of the objects under an S3 "folder" (``https://host/bucket/prefix``),
    via the public ListObjectsV2 listing; only keys ending in ``suffix`` (``""``: all)."""
    match = re.match(r"(https?://[^/]+/[^/?]+)/(.*)", folder_url.rstrip("*"))
    if not match:
        raise ValueError(f"cannot list {folder_url}")
    bucket_url, prefix = match.groups()
    xml = read_location(f"{bucket_url}?list-type=2&prefix={prefix}", **net)
    found = []
    for item in ET.fromstring(xml).iter():
        if not item.tag.endswith("Contents"):
            continue
        fields = {child.tag.rsplit("}", 1)[-1]: child.text for child in item}
        key, size = fields.get("Key") or "", fields.get("Size")
        if key.startswith(prefix) and key.endswith(suffix) and not key.endswith("/"):
            found.append((join_url(bucket_url, key), int(size) if size else -1))
    return found


def read_listing(location: str | Path, mirror: str | None = None, **net: Any) -> pd.DataFrame:
    """The DICOM files (or series folders) to fetch, as a table with a resolved ``url`` column.

    A CSV's rows with a ``Modality`` other than CR/DX are dropped here already; every file is
    checked again from its DICOM header when it arrives.
    """
    text = read_location(location, **net).decode("utf-8-sig")
    first = text.lstrip().split("\n", 1)[0]
    if any(col in [c.strip().strip('"') for c in first.split(",")] for col in URL_COLUMNS):
        table = pd.read_csv(io.StringIO(text))
        column = next(c for c in URL_COLUMNS if c in table.columns)
        if "Modality" in table.columns:
            table = table[table["Modality"].isin(RADIOGRAPH_MODALITIES)]
        table = table.assign(url=[resolve_url(str(a), mirror) for a in table[column]])
        return table.reset_index(drop=True)
    urls = [resolve_url(token, mirror) for line in text.splitlines()
            if (token := next((t for t in line.split() if re.match(r"(gs|s3|https?)://", t)), None))]
    return pd.DataFrame({"url": urls})


def expand_folders(table: pd.DataFrame, dest: Path, **net: Any) -> list[tuple[str, int]]:
    """Every DICOM ``(url, size)`` behind the table's rows; folder listings are cached on disk."""
    files: list[tuple[str, int]] = []
    for url in table["url"]:
        if not is_folder(url):
            files.append((url, -1))
            continue
        cache = dest / "_meta" / "series" / f"{_series_key(url)}.json"
        if cache.exists():
            files.extend((u, s) for u, s in json.loads(cache.read_text()))
            continue
        listed = list_prefix(url, **net)
        _write_json(cache, listed)
        files.extend(listed)
    return files


def _series_key(folder_url: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", folder_url.rstrip("*/").rsplit("/", 1)[-1])


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


# ----------------------------------------------------------------------------- DICOM
def radiograph_problem(ds: Any) -> str | None:
    """Why a DICOM dataset is not a frontal chest radiograph with an image, or None if it is."""
    modality = str(ds.get("Modality", "") or "").upper()
    if modality not in RADIOGRAPH_MODALITIES:
        return f"modality {modality or 'missing'}, not a radiograph (CR/DX)"
    view = _view(ds)
    if view in LATERAL_VIEWS:
        return f"lateral view {view}"
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        return ("no pixel data: the file holds a DICOM header without an image "
                "(a header-only or truncated export); fetch the instance again")
    return None


def _view(ds: Any) -> str:
    view = str(ds.get("ViewPosition", "") or "").upper()
    if not view:
        desc = str(ds.get("SeriesDescription", "")).upper()
        view = next((v for v in ("PA", "AP", "LAT") if re.search(rf"\b{v}\b", desc)), "")
    return view


def _decode_failure(ds: Any, err: Exception, name: str) -> CorruptImageError:
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    compressed = bool(syntax is not None and getattr(syntax, "is_compressed", False))
    if compressed and ("handler" in str(err).lower() or "plugin" in str(err).lower()):
        detail = (f"compressed pixel data ({getattr(syntax, 'name', syntax)}) needs a decoder: "
                  "pip install pylibjpeg pylibjpeg-libjpeg")
    else:
        detail = f"pixel data cannot be read ({type(err).__name__}: {str(err)[:120]})"
    return CorruptImageError(f"{name}: {detail}")


def dicom_to_image(data: bytes, name: str) -> tuple[Image.Image, dict[str, Any]]:
    """Decode a DICOM radiograph to an 8-bit image (VOI LUT applied, bone bright).

    Raises :class:`ExcludedImage` for a readable file that is not a frontal CR/DX radiograph
    or has no pixel data, and ``CorruptImageError`` for a file that is not DICOM or whose
    pixels cannot be decoded.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as err:
        raise CorruptImageError(f"{name}: not a readable DICOM file ({type(err).__name__})") from None
    problem = radiograph_problem(ds)
    if problem:
        raise ExcludedImage(f"{name}: {problem}")
    try:
        arr = ds.pixel_array
    except Exception as err:  # pydicom raises many types for broken or compressed pixel data
        raise _decode_failure(ds, err, name) from None
    if arr.ndim != 2:
        raise CorruptImageError(f"{name}: expected one greyscale frame, got shape {arr.shape}")
    arr = apply_modality_lut(arr, ds)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        arr = apply_voi_lut(arr, ds, index=0)
    pixels = scale_to_uint8(arr)
    if shows_bone_dark(ds):
        pixels = 255 - pixels
    return Image.fromarray(pixels), _dicom_meta(ds)


def shows_bone_dark(ds: Any) -> bool:
    """True for MONOCHROME1 or PresentationLUTShape INVERSE: the image is inverted once.

    DX files pair the two (the standard asks for INVERSE with MONOCHROME1), so they are one
    inversion, not two.
    """
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    shape = str(ds.get("PresentationLUTShape", "") or "").upper()
    return photometric == "MONOCHROME1" or shape == "INVERSE"


def _dicom_meta(ds: Any) -> dict[str, Any]:
    age = re.match(r"(\d+)([YMWD]?)", str(ds.get("PatientAge", "")))
    years = None
    if age:
        factor = {"Y": 1, "M": 1 / 12, "W": 1 / 52, "D": 1 / 365}.get(age.group(2) or "Y", 1)
        years = round(int(age.group(1)) * factor, 2)
    return {"patient_id": str(ds.get("PatientID", "")), "sop": str(ds.get("SOPInstanceUID", "")),
            "study_id": str(ds.get("StudyInstanceUID", "")), "view": _view(ds),
            "dicom_sex": str(ds.get("PatientSex", "")), "dicom_age": years,
            "modality": str(ds.get("Modality", "")),
            "photometric": str(ds.get("PhotometricInterpretation", ""))}


# ----------------------------------------------------------------------------- clinical
def read_clinical_bytes(data: bytes) -> pd.DataFrame:
    """A clinical table (xlsx, csv or parquet bytes) reduced to
    ``patient_id, race_original, sex_clinical, age_clinical, ethnicity``."""
    if data[:2] == b"PK":
        table = pd.read_excel(io.BytesIO(data), engine="openpyxl")
    elif data[:4] == b"PAR1":
        table = pd.read_parquet(io.BytesIO(data))
    else:
        table = pd.read_csv(io.BytesIO(data))
    cols = {re.sub(r"[^a-z]", "", str(c).lower()): c for c in table.columns}
    pid = next((cols[k] for k in ("dicompatientid", "patientid", "pid", "patient", "subjectid")
                if k in cols), next((c for k, c in cols.items() if "patient" in k), None))
    if pid is None or "race" not in cols:
        raise ValueError(f"clinical table needs a patient id and a RACE column; has {list(table.columns)}")
    out = pd.DataFrame({"patient_id": table[pid].astype(str).str.strip(),
                        "race_original": table[cols["race"]]})
    out["sex_clinical"] = table[cols["sex"]] if "sex" in cols else pd.NA
    out["age_clinical"] = pd.to_numeric(table[cols["age"]], errors="coerce") if "age" in cols else np.nan
    out["ethnicity"] = table[cols["ethnicity"]] if "ethnicity" in cols else pd.NA
    return out.drop_duplicates("patient_id")


def read_clinical(location: str | Path, sha256: str | None = None,
                  **net: Any) -> tuple[pd.DataFrame, str]:
    """The clinical table at a path or URL and its SHA-256, verified against ``sha256`` if given."""
    data = read_location(location, **net)
    digest = _sha256(data)
    check_digests({"sha256": digest}, redact_url(str(location)), sha256=sha256)
    return read_clinical_bytes(data), digest


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def idc_clinical_folder(mirror: str | None = None) -> str:
    """HTTPS "folder" of IDC's clinical table for this collection (for :func:`list_prefix`)."""
    return resolve_url(f"s3://{IDC_CLINICAL_BUCKET}/bigquery_export/idc_{idc_version()}_clinical/"
                       f"{IDC_CLINICAL_TABLE}", mirror)


def read_idc_clinical(mirror: str | None = None, **net: Any) -> tuple[pd.DataFrame, dict[str, Any]]:
    """IDC's ``covid_19_ar_clinical`` table (parquet objects in the public metadata bucket)."""
    objects = list_prefix(idc_clinical_folder(mirror), suffix="", **net)
    if not objects:
        raise DownloadError(f"IDC's clinical table {IDC_CLINICAL_TABLE} was not found at "
                               f"{redact_url(idc_clinical_folder(mirror))}")
    blobs = [read_location(url, **net) for url, _ in objects]
    table = pd.concat([read_clinical_bytes(b) for b in blobs]).drop_duplicates("patient_id")
    origin = {"clinical": f"IDC {idc_version()} clinical table {IDC_CLINICAL_TABLE}",
              "clinical_sha256": [_sha256(b) for b in blobs]}
    return table, origin


def load_clinical(clinical: str | Path | None, sha256: str | None, no_clinical: bool,
                  mirror: str | None, net: dict) -> tuple[pd.DataFrame | None, dict[str, Any]]:
    """The race/sex/age table to join, and a note for the data card saying where it came from.

    Order: ``clinical`` (TCIA's spreadsheet or any table) if given, else IDC's clinical table;
    ``no_clinical`` skips both. Raises ``DownloadError`` with one line when none is reachable.
    """
    if no_clinical:
        log.warning("--no-clinical: race stays missing; sex and age come from the DICOM header")
        return None, {"clinical": None}
    if clinical:
        table, digest = read_clinical(clinical, sha256, **net)
        return table, {"clinical": redact_url(str(clinical)), "clinical_sha256": digest}
    try:
        return read_idc_clinical(mirror, **net)
    except (DownloadError, ET.ParseError, ValueError) as err:
        raise DownloadError(
            f"no clinical table reachable (IDC's {IDC_CLINICAL_TABLE}: {str(err).splitlines()[0]}); "
            f"download TCIA's clinical spreadsheet from {TCIA_PAGE} and pass --clinical FILE, "
            "or --no-clinical to go on without race") from None


# ----------------------------------------------------------------------------- driver
def _fetch_one(url: str, expected_size: int, dest: Path, size: int, keep_dicom: bool,
               net: dict) -> dict[str, Any]:
    """Download one DICOM, convert it to PNG, and return its metadata (cached as JSON).

    A file left out for good (not a frontal radiograph) is remembered as such, so a re-run
    does not download it again; a corrupt file is tried again on the next run.
    """
    key = dicom_key(url)
    meta = stored_meta(dest, key)
    if meta is not None:
        return meta
    dcm = download_dicom(url, expected_size, dest, key, net)
    return convert_dicom(dcm, dest, key, size, keep_dicom)


def dicom_key(url: str) -> str:
    """The name a DICOM's PNG and metadata are stored under (its file name without ``.dcm``)."""
    return Path(url.split("?")[0]).stem


def stored_meta(dest: Path, key: str) -> dict[str, Any] | None:
    """The metadata of an image a previous run converted, or None when it must be fetched.

    Raises :class:`ExcludedImage` for a file a previous run left out for good.
    """
    meta_path = dest / "_meta" / f"{key}.json"
    if not meta_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    if "excluded" in meta:
        raise ExcludedImage(meta["excluded"])
    return meta if (dest / meta["path"]).exists() else None


def download_dicom(url: str, expected_size: int, dest: Path, key: str, net: dict) -> Path:
    """Download one DICOM to ``dest/_dicom/<key>.dcm`` and check its size against the listing."""
    dcm = download(url, dest / "_dicom" / f"{key}.dcm", progress=False, **net)
    try:
        _check_size(dcm, expected_size, key)
    except CorruptImageError:
        dcm.unlink(missing_ok=True)          # never reused: the next run fetches it afresh
        raise
    return dcm


def convert_dicom(dcm: Path, dest: Path, key: str, size: int, keep_dicom: bool) -> dict[str, Any]:
    """Convert a downloaded DICOM to ``images/<key>.png`` and cache its metadata as JSON.

    The work a ``--workers`` process does. Raises :class:`ExcludedImage` (remembered, so a
    re-run does not download the file again) or ``CorruptImageError`` (the DICOM is deleted
    and fetched afresh next time).
    """
    meta_path = dest / "_meta" / f"{key}.json"
    try:
        img, meta = dicom_to_image(dcm.read_bytes(), key)
    except ExcludedImage as err:
        _write_json(meta_path, {"excluded": str(err), "key": key})
        dcm.unlink(missing_ok=True)
        raise
    except CorruptImageError:
        dcm.unlink(missing_ok=True)          # never reused: the next run fetches it afresh
        raise
    if not keep_dicom:
        dcm.unlink(missing_ok=True)
    meta["path"] = f"images/{key}.png"
    meta["key"] = key
    save_png(square_resize(img, size), dest / meta["path"])
    _write_json(meta_path, meta)
    return meta


def fetch_all(files: list[tuple[str, int]], dest: Path, size: int, keep_dicom: bool, net: dict,
              pool: ImagePool, progress: bool = False
              ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Fetch and convert every ``(url, size)``: the metadata of the images kept and the
    ``(key, reason)`` of those left out, both in the order of ``files``.

    Downloads happen here, one at a time; conversions run in ``pool`` meanwhile, at most
    ``PENDING_PER_WORKER`` per worker ahead of the result being collected. An error other
    than a bad image (disk full, Ctrl-C) stops the run; closing the pool then lets the
    conversions already started finish (each PNG and JSON is renamed into place whole).
    """
    metas: list[dict[str, Any]] = []
    excluded: list[tuple[str, str]] = []
    pending: deque[tuple[str, Future | Done]] = deque()
    limit = max(1, pool.workers * PENDING_PER_WORKER)
    bar = tqdm(total=len(files), desc=NAME, unit=" img", disable=not progress)

    def collect() -> None:
        key, job = pending.popleft()
        try:
            metas.append(job.result())
        except (CorruptImageError, ExcludedImage) as err:
            excluded.append((key, str(err).split(": ", 1)[-1]))
        bar.update()

    with bar:
        for url, expected in files:
            pending.append((dicom_key(url), _start(url, expected, dest, size, keep_dicom, net, pool)))
            while pending and (len(pending) > limit or pending[0][1].done()):
                collect()
        while pending:
            collect()
    return metas, excluded


def _start(url: str, expected: int, dest: Path, size: int, keep_dicom: bool, net: dict,
           pool: ImagePool) -> Future | Done:
    """The job of one file: found stored or downloaded here, then converted in ``pool``."""
    key = dicom_key(url)
    try:
        meta = stored_meta(dest, key)
        if meta is not None:
            return Done(meta)
        dcm = download_dicom(url, expected, dest, key, net)
    except (CorruptImageError, ExcludedImage) as err:
        return Done(None, err)
    return pool.call(convert_dicom, dcm, dest, key, size, keep_dicom)


def _check_size(path: Path, expected: int, key: str) -> None:
    got = path.stat().st_size
    if expected >= 0 and got != expected:
        raise CorruptImageError(f"{key}: {got} bytes arrived, the listing declares {expected}; "
                                  "run again to fetch it afresh")


def build_manifest(metas: list[dict[str, Any]], clinical: pd.DataFrame | None,
                   seed: int) -> pd.DataFrame:
    """Manifest rows from DICOM metadata joined to the clinical table, with a patient split."""
    df = pd.DataFrame(metas)
    if df.empty:
        return df
    if clinical is not None:
        df = df.merge(clinical, on="patient_id", how="left")
    else:
        df = df.assign(race_original=pd.NA, sex_clinical=pd.NA, age_clinical=np.nan, ethnicity=pd.NA)
    sex = [map_sex(s) for s in df["sex_clinical"]]
    sex = [s if s is not pd.NA else map_sex(d) for s, d in zip(sex, df["dicom_sex"])]
    split = split_patients(df["patient_id"], seed)
    return pd.DataFrame({
        "image_id": [m or k for m, k in zip(df["sop"], df["key"])], "path": df["path"],
        "patient_id": df["patient_id"], "study_id": df["study_id"].replace("", pd.NA).fillna(df["key"]),
        "split": [split[p] for p in df["patient_id"]],
        "view": df["view"].where(df["view"].isin(FRONTAL_VIEWS)),
        "sex": sex, "age": pd.to_numeric(df["age_clinical"], errors="coerce").fillna(
            pd.to_numeric(df["dicom_age"], errors="coerce")),
        "race": [race_class(r) for r in df["race_original"]],
        "ethnicity": df["ethnicity"], "bmi": np.nan, "site": SITE, "source": NAME,
        "race_original": df["race_original"], "modality": df["modality"],
        "photometric": df["photometric"], "no_finding": pd.NA,
    })


def _selection(listing: str | Path | None, mirror: str | None,
               net: dict) -> tuple[pd.DataFrame, str]:
    if listing:
        table = read_listing(listing, mirror, **net)
        return table, f"listing {redact_url(str(listing))}: {len(table)} entries"
    index = idc_selection()
    return selection_listing(index, mirror), summarise_selection(index)


def _download_bytes(table: pd.DataFrame) -> int:
    sizes = pd.to_numeric(table.get("instance_size", pd.Series(dtype=float)), errors="coerce")
    if len(sizes) and sizes.notna().all():
        return int(sizes.sum())
    return len(table) * TYPICAL_DICOM_BYTES


def fetch_covid19_ar(dest: str | Path | None = None, *, listing: str | Path | None = None,
                     clinical: str | Path | None = None, clinical_sha256: str | None = None,
                     no_clinical: bool = False, size: int = DEFAULT_SIZE,
                     limit: int | None = None, mirror: str | None = None, seed: int = 0,
                     keep_dicom: bool = False, name: str = DEFAULT_NAME,
                     dry_run: bool = False, progress: bool = True, retries: int = 5,
                     backoff: float = 1.0, workers: int | None = None) -> Path | None:
    """Fetch COVID-19-AR's frontal radiographs (from the bundled IDC index, or ``listing``),
    convert them to PNG, join self-reported race/sex/age and write the manifest; returns its path.

    DICOMs are downloaded one at a time; ``workers`` processes convert them meanwhile (None:
    every core; 1: this process only), with the same result whatever the number.

    >>> # fetch_covid19_ar(dry_run=True)     # offline: the IDC selection and its size
    """
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be a positive number, got {limit}")
    check_workers(workers)
    dest = resolve_dest(NAME, dest, name)
    net = {"retries": retries, "backoff": backoff}
    table, origin = _selection(listing or env_default("COVID19_AR_LISTING"), mirror, net)
    if limit is not None:
        table = table.head(limit)
    download_bytes = _download_bytes(table)
    if dry_run:
        hosts = sorted({redact_url(u).split('/')[2] for u in table['url']})
        print(f"{TITLE} -> {dest}\n  {origin}\n  to fetch: {len(table)} entries from {hosts}; "
              f"download about {human_bytes(download_bytes)}, disk needed about "
              f"{human_bytes(estimate_disk(len(table), size))}")
        return None
    check_free_space(dest, estimate_disk(len(table), size, TYPICAL_DICOM_BYTES))
    clin, clinical_note = load_clinical(clinical or env_default("COVID19_AR_CLINICAL"),
                                        clinical_sha256, no_clinical, mirror, net)
    files = expand_folders(table, dest, **net)
    with fetch_pool(workers) as pool:
        metas, excluded = fetch_all(files, dest, size, keep_dicom, net, pool, progress)
    df = build_manifest(metas, clin, seed)
    card = {"source": NAME, "title": TITLE, "size": size, "license": "CC BY 4.0",
            "targets": ["race", "sex", "age"], "role": "evaluation only (104 patients)",
            "citation": "Desai et al. 2020, Sci Data 7:414; TCIA doi 10.7937/tcia.2020.py71-5978",
            "selection": origin, **clinical_note,
            "split_method": "random patient-level 60/10/30"}
    return finalize(df, dest, card, excluded)


# ----------------------------------------------------------------------------- CLI
def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``python -m data_fetch covid19_ar``."""
    p = subparsers.add_parser(NAME, help=f"{TITLE}: {ACCESS}", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, "host that replaces storage.googleapis.com / s3.amazonaws.com "
                         "(or resolves relative addresses in the listing)")
    p.set_defaults(size=DEFAULT_SIZE)
    p.add_argument("--listing", default=None,
                   help="CSV (gcs_url/aws_url/url column) or IDC s5cmd manifest, path or URL "
                        "(default: the IDC index bundled with idc-index-data)")
    p.add_argument("--clinical", default=None,
                   help="TCIA's clinical spreadsheet (xlsx/csv), path or URL "
                        "(default: IDC's clinical table)")
    p.add_argument("--clinical-sha256", default=None, help="SHA-256 the clinical file must have")
    p.add_argument("--no-clinical", action="store_true",
                   help="go on without a clinical table (race stays missing)")
    p.add_argument("--keep-dicom", action="store_true", help="keep the original DICOM files")
    add_workers_arg(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the ``covid19_ar`` subcommand."""
    out = fetch_covid19_ar(args.dest, listing=args.listing, clinical=args.clinical,
                           clinical_sha256=args.clinical_sha256, no_clinical=args.no_clinical,
                           size=args.size, limit=args.limit, mirror=args.mirror, seed=args.seed,
                           keep_dicom=args.keep_dicom, name=args.name, dry_run=args.dry_run,
                           progress=not args.no_progress, workers=args.workers)
    if out is not None:
        say(f"{TITLE} ready: {out}")
    return 0
