"""MIMIC-CXR-JPG 2.1.0 with self-reported race from MIMIC-IV (PhysioNet, credentialed).

Johnson et al. 2019, "MIMIC-CXR-JPG, a large publicly available database of labeled chest
radiographs" (arXiv:1901.07042); MIMIC-IV: Johnson et al. 2023, Sci Data 10:1. You need a
PhysioNet *credentialed* account (CITI training) and to sign the data use agreements of both
projects: https://physionet.org/content/mimic-cxr-jpg/ and https://physionet.org/content/mimiciv/ .
Credentials come from ``$PHYSIONET_USERNAME`` / ``$PHYSIONET_PASSWORD``, ``~/.netrc``
(``machine physionet.org login USER password PASS``) or a prompt; they are never printed or
stored. Files are fetched over HTTPS one at a time (PhysioNet throttles parallel downloads),
or read from a local copy (``--local``, ``$MIMIC_CXR_DIR``).

A subset is chosen by ``--count N`` (whole patients in a seeded order) or ``--list FILE`` (lines
like those of ``IMAGE_FILENAMES``: ``files/p10/p10000032/s50414267/<dicom_id>.jpg``). Frontal
(PA/AP) images only. Race per admission comes from ``hosp/admissions`` (``race``; MIMIC-IV 1.0
called it ``ethnicity``): as in Gichoya et al. 2022, patients whose race differs between
admissions are dropped. Age at the study = ``anchor_age + (study year - anchor_year)`` from
``hosp/patients``. The split is MIMIC-CXR's official one (``validate`` -> ``val``).
"""
from __future__ import annotations

import argparse
import gzip
import io
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from data_fetch import download as dl
from data_fetch.credentials import get_credentials
from data_fetch.sources import _common as C

NAME = "mimic"
TITLE = "MIMIC-CXR-JPG 2.1.0 + MIMIC-IV"
ACCESS = "PhysioNet credentialed account + data use agreements"
CXR_BASE = "https://physionet.org/files/mimic-cxr-jpg/2.1.0"
IV_BASE = "https://physionet.org/files/mimiciv/3.1"
TABLES = {"metadata": "mimic-cxr-2.0.0-metadata.csv.gz", "chexpert": "mimic-cxr-2.0.0-chexpert.csv.gz",
          "split": "mimic-cxr-2.0.0-split.csv.gz"}
ACCESS_HINT = ("MIMIC needs a PhysioNet credentialed account and signed data use agreements for "
               "MIMIC-CXR-JPG and MIMIC-IV: https://physionet.org/settings/credentialing/ . "
               "Check PHYSIONET_USERNAME / PHYSIONET_PASSWORD or ~/.netrc.")
LABELS = C.CHEXPERT_LABELS
UNINFORMATIVE = ("UNKNOWN", "UNABLE TO OBTAIN", "PATIENT DECLINED TO ANSWER", "DECLINED TO ANSWER")
TYPICAL_JPEG_BYTES = 600_000


# ----------------------------------------------------------------------------- race, age
def _coarse(value: str) -> str:
    cls = C.race_class(value)
    if cls is not pd.NA:
        return cls
    return "Hispanic" if C.is_hispanic(value) else f"other:{value.strip().upper()}"


def patient_race(admissions: pd.DataFrame, strict: bool = False) -> tuple[pd.DataFrame, list]:
    """One self-reported race per patient from admissions, dropping conflicting patients.

    Uses the ``race`` column (or ``ethnicity`` in MIMIC-IV 1.0). Values like UNKNOWN are
    ignored. A patient conflicts when the remaining values map to more than one group
    (``strict=True``: when the original strings differ at all, the paper's rule). Returns
    (table with ``subject_id, race, race_original``, list of dropped subject ids).
    """
    column = "race" if "race" in admissions else "ethnicity"
    if column not in admissions:
        raise ValueError("admissions table has neither a 'race' nor an 'ethnicity' column")
    values = admissions[["subject_id", column]].dropna()
    values = values[~values[column].str.upper().isin(UNINFORMATIVE)].drop_duplicates()
    rows, dropped = [], []
    for subject, group in values.groupby("subject_id")[column]:
        originals = sorted(set(group))
        keys = originals if strict else {_coarse(v) for v in originals}
        if len(keys) > 1:
            dropped.append(subject)
            continue
        rows.append({"subject_id": subject, "race": C.race_class(originals[0]),
                     "race_original": " | ".join(originals)})
    return pd.DataFrame(rows, columns=["subject_id", "race", "race_original"]), dropped


def age_at_study(patients: pd.DataFrame, subject: pd.Series, study_date: pd.Series) -> np.ndarray:
    """``anchor_age + (study year - anchor_year)`` for each image (NaN when unknown)."""
    p = patients.set_index("subject_id").reindex(subject.to_numpy())
    year = pd.to_numeric(study_date, errors="coerce").to_numpy() // 10000
    return p["anchor_age"].to_numpy(dtype=float) + (year - p["anchor_year"].to_numpy(dtype=float))


# ----------------------------------------------------------------------------- access
class Remote:
    """Files of one PhysioNet project over HTTPS (one connection, Basic auth) or on disk."""

    def __init__(self, base: str, auth: Any = None, session: Any = None, net: dict | None = None):
        self.base, self.auth = str(base), auth
        self.session = session or dl.make_session()
        self.net = net or {}

    def read(self, rel: str) -> bytes:
        """Bytes of ``rel`` under the project's root."""
        if dl.is_url(self.base):
            return dl.read_location(dl.join_url(self.base, rel), session=self.session,
                                    auth=self.auth, access_hint=ACCESS_HINT, **self.net)
        return (Path(self.base).expanduser() / rel).read_bytes()

    def table(self, *candidates: str) -> pd.DataFrame:
        """The first of ``candidates`` (csv or csv.gz) that exists."""
        last: Exception | None = None
        for rel in candidates:
            try:
                data = self.read(rel)
            except (FileNotFoundError, dl.DownloadError) as err:
                if isinstance(err, dl.AccessError):
                    raise
                last = err
                continue
            return pd.read_csv(io.BytesIO(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data))
        raise FileNotFoundError(f"none of {', '.join(candidates)} found under "
                                f"{dl.redact_url(self.base)} ({last})")


def image_rel(subject: int, study: int, dicom: str) -> str:
    """``files/p10/p10000032/s50414267/<dicom>.jpg``."""
    s = str(subject)
    return f"files/p{s[:2]}/p{s}/s{study}/{dicom}.jpg"


# ----------------------------------------------------------------------------- manifest
def build_table(meta: pd.DataFrame, split: pd.DataFrame, labels: pd.DataFrame,
                admissions: pd.DataFrame, patients: pd.DataFrame,
                strict: bool = False) -> tuple[pd.DataFrame, list]:
    """Every frontal image with split, race, sex, age and findings (conflicting patients dropped)."""
    df = meta[meta["ViewPosition"].isin(["PA", "AP"])].merge(
        split[["dicom_id", "split"]], on="dicom_id", how="inner")
    race, dropped = patient_race(admissions, strict)
    df = df[~df["subject_id"].isin(dropped)].merge(race, on="subject_id", how="left")
    df = df.merge(labels, on=["subject_id", "study_id"], how="left")
    sex = patients.set_index("subject_id")["gender"].reindex(df["subject_id"].to_numpy())
    insurance = (admissions.sort_values("admittime") if "admittime" in admissions else admissions) \
        .groupby("subject_id")["insurance"].last() if "insurance" in admissions else None
    out = pd.DataFrame({
        "image_id": df["dicom_id"].to_numpy(),
        "path": [f"images/p{s}/{d}.png" for s, d in zip(df["subject_id"], df["dicom_id"])],
        "patient_id": df["subject_id"].astype(str).to_numpy(),
        "study_id": df["study_id"].astype(str).to_numpy(),
        "split": df["split"].replace({"validate": "val"}).to_numpy(),
        "view": df["ViewPosition"].to_numpy(), "sex": [C.map_sex(v) for v in sex],
        "age": age_at_study(patients, df["subject_id"], df.get("StudyDate")),
        "race": df["race"].to_numpy(), "ethnicity": pd.NA, "bmi": np.nan,
        "site": "Beth Israel Deaconess Medical Center", "source": NAME,
        "race_original": df["race_original"].to_numpy(),
        "insurance": insurance.reindex(df["subject_id"].to_numpy()).to_numpy()
        if insurance is not None else pd.NA,
        "rel": [image_rel(s, t, d) for s, t, d in zip(df["subject_id"], df["study_id"], df["dicom_id"])],
    })
    for label in LABELS:
        out[C.finding_column(label)] = [_label(v) for v in df.get(label, [np.nan] * len(df))]
    out["no_finding"] = [_label(v) for v in df.get("No Finding", [np.nan] * len(df))]
    out["age"] = out["age"].where((out["age"] >= 0) & (out["age"] <= 120))
    return out, dropped


def _label(value: Any) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return False
    return {1.0: True, 0.0: False, -1.0: pd.NA}.get(float(value), pd.NA)


def select(table: pd.DataFrame, count: int | None, wanted: list[str] | None, seed: int) -> pd.DataFrame:
    """The subset to fetch: images named in ``wanted``, or ``count`` images of whole patients."""
    if wanted is not None:
        names = {Path(w.strip()).stem for w in wanted if w.strip()}
        return table[table["image_id"].isin(names)]
    return C.whole_patient_subset(table, count, seed)


# ----------------------------------------------------------------------------- driver
def _auth_for(*bases: str, interactive: bool | None = None) -> Any:
    """Credentials for the first remote base (``None`` when everything is local)."""
    remote = [b for b in bases if dl.is_url(b)]
    if not remote:
        return None
    host = urlsplit(remote[0]).hostname or "physionet.org"
    return get_credentials(host, user_env="PHYSIONET_USERNAME", password_env="PHYSIONET_PASSWORD",
                           account_hint=ACCESS_HINT, interactive=interactive).auth()


def fetch_mimic(dest: str | Path | None = None, *, count: int | None = None,
                image_list: str | Path | None = None, local: str | Path | None = None,
                mirror: str | None = None, mimic_iv: str | None = None,
                size: int = C.DEFAULT_SIZE, seed: int = 0, strict_race: bool = False,
                name: str = C.DEFAULT_NAME, dry_run: bool = False, progress: bool = True,
                retries: int = 5, backoff: float = 1.0,
                interactive: bool | None = None) -> Path | None:
    """Fetch a MIMIC-CXR-JPG subset with MIMIC-IV race, sex and age; returns the manifest path.

    >>> # fetch_mimic(count=5000, size=256)   # needs PhysioNet credentials
    """
    dest = C.resolve_dest(NAME, dest, name)
    cxr_base = local or C.env_default("MIMIC_CXR_DIR") or mirror or CXR_BASE
    iv_base = mimic_iv or IV_BASE
    if dry_run:
        n = count or "all frontal (about 243,000)"
        print(f"{TITLE} -> {dest}\n  images from {dl.redact_url(str(cxr_base))}, tables from "
              f"{dl.redact_url(str(iv_base))}; {n} images, about "
              f"{dl.human_bytes((count or 243_000) * TYPICAL_JPEG_BYTES)} to download, disk about "
              f"{dl.human_bytes(C.estimate_disk(count or 243_000, size))}")
        return None
    net = {"retries": retries, "backoff": backoff}
    session = dl.make_session()
    auth = _auth_for(str(cxr_base), str(iv_base), interactive=interactive)
    cxr, iv = Remote(cxr_base, auth, session, net), Remote(iv_base, auth, session, net)
    table, dropped = build_table(
        cxr.table(TABLES["metadata"]), cxr.table(TABLES["split"]), cxr.table(TABLES["chexpert"]),
        iv.table("hosp/admissions.csv.gz", "core/admissions.csv.gz", "hosp/admissions.csv"),
        iv.table("hosp/patients.csv.gz", "core/patients.csv.gz", "hosp/patients.csv"), strict_race)
    wanted = Path(image_list).read_text().splitlines() if image_list else None
    chosen = select(table, count, wanted, seed)
    dl.check_free_space(dest, C.estimate_disk(len(chosen), size))
    keep, corrupt = _fetch_images(chosen, cxr, dest, size, progress)
    df = chosen[keep].drop(columns="rel")
    card = {"source": NAME, "title": TITLE, "size": size, "restricted": True,
            "targets": ["race", "sex", "age", "insurance"],
            "citation": "Johnson et al. 2019 (MIMIC-CXR-JPG); Johnson et al. 2023, Sci Data (MIMIC-IV)",
            "race_rule": ("patients whose admissions disagree on race are dropped "
                          f"({'any difference' if strict_race else 'different groups'}); "
                          f"{len(dropped)} dropped"),
            "split_method": "official mimic-cxr-2.0.0-split.csv.gz"}
    return C.finalize(df, dest, card, corrupt)


def _fetch_images(chosen: pd.DataFrame, cxr: Remote, dest: Path, size: int,
                  progress: bool) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Download (one at a time) and convert each image; returns kept mask and failures."""
    keep = np.zeros(len(chosen), dtype=bool)
    corrupt: list[tuple[str, str]] = []
    bar = tqdm(total=len(chosen), desc=NAME, unit=" img", disable=not progress)
    fetched = 0
    with bar:
        for i, (rel, path, image_id) in enumerate(zip(chosen["rel"], chosen["path"], chosen["image_id"])):
            out = dest / path
            if not out.exists():
                try:
                    data = cxr.read(rel)
                    fetched += len(data)
                    C.store_image(data, image_id, out, size)
                except (C.CorruptImageError, FileNotFoundError) as err:
                    corrupt.append((image_id, str(err).split(": ", 1)[-1]))
                    bar.update()
                    continue
            keep[i] = True
            bar.update()
            bar.set_postfix(downloaded=dl.human_bytes(fetched), refresh=False)
    return keep, corrupt


# ----------------------------------------------------------------------------- CLI
def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``python -m data_fetch mimic``."""
    p = subparsers.add_parser(NAME, help=f"{TITLE}: {ACCESS}", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p, f"base URL of MIMIC-CXR-JPG (default {CXR_BASE})")
    p.add_argument("--count", type=int, default=None, help="fetch N frontal images (whole patients)")
    p.add_argument("--list", dest="image_list", default=None,
                   help="file of image paths as in IMAGE_FILENAMES")
    p.add_argument("--local", "--source-dir", dest="local", default=None, help="local MIMIC-CXR-JPG copy ($MIMIC_CXR_DIR)")
    p.add_argument("--mimic-iv", default=None, help=f"MIMIC-IV base URL or folder (default {IV_BASE})")
    p.add_argument("--strict-race", action="store_true",
                   help="drop patients whose race strings differ at all between admissions")
    return p


def run(args: argparse.Namespace) -> int:
    """Run the ``mimic`` subcommand."""
    out = fetch_mimic(args.dest, count=args.count or args.limit, image_list=args.image_list,
                      local=args.local, mirror=args.mirror, mimic_iv=args.mimic_iv,
                      size=args.size, seed=args.seed, strict_race=args.strict_race,
                      name=args.name, dry_run=args.dry_run, progress=not args.no_progress)
    if out is not None:
        C.say(f"{TITLE} ready: {out}")
    return 0
