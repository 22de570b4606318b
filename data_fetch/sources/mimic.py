"""MIMIC-CXR-JPG 2.1.0 with self-reported race from MIMIC-IV (PhysioNet, credentialed).

Johnson et al. 2019, "MIMIC-CXR-JPG, a large publicly available database of labeled chest
radiographs" (arXiv:1901.07042); MIMIC-IV: Johnson et al. 2023, Sci Data 10:1. You need a
PhysioNet *credentialed* account (CITI training) and to sign the data use agreements of both
projects: https://physionet.org/content/mimic-cxr-jpg/ and https://physionet.org/content/mimiciv/ .
Credentials come from ``$PHYSIONET_USERNAME`` / ``$PHYSIONET_PASSWORD`` (sent to
``physionet.org`` only), ``~/.netrc`` (``machine HOST login USER password PASS``, per host) or a
prompt; they are never printed or stored, and each base (``--mirror``, ``--mimic-iv``) gets only
its own host's credentials, over HTTPS only. Files are fetched one at a time (PhysioNet
throttles parallel downloads) and decoded meanwhile by ``--workers N`` processes, with
retries that honour ``Retry-After`` on 429/5xx; an image that still fails is skipped and
listed in the data card (the run stops only when more than 10% fail), and a re-run tries it
again. Or read a local copy (``--local``, ``$MIMIC_CXR_DIR``).

A subset is chosen by ``--count N`` (whole patients in a seeded order) or ``--list FILE`` (lines
like those of ``IMAGE_FILENAMES``: ``files/p10/p10000032/s50414267/<dicom_id>.jpg``). Frontal
(PA/AP) images only. Race per admission comes from ``hosp/admissions`` (``race``; MIMIC-IV 1.0
called it ``ethnicity``): as in Gichoya et al. 2022, patients whose race differs between
admissions are dropped. Age at the study = ``anchor_age + (study year - anchor_year)`` from
``hosp/patients``. The split is MIMIC-CXR's official one (``validate`` -> ``val``).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from data_fetch.credentials import Credentials, HostBoundAuth, check_transport, get_credentials
from data_fetch.download import (AccessError, DownloadError, check_free_space, check_url,
                                 human_bytes, is_url, join_url, make_session, read_location,
                                 redact_url)
from data_fetch.ingest import ImagePool, IngestItem, Stored, StoreQueue, fetch_pool
from data_fetch.sources.cli import (add_common_args, add_http_loopback_arg, add_workers_arg,
                                    count_arg, env_default, resolve_dest, run_fetch)
from data_fetch.sources.dataset import (DEFAULT_NAME, DEFAULT_SIZE, FailureBudget, check_common,
                                        check_count, check_workers, claim_folder, finalize,
                                        read_table, whole_patient_subset)
from data_fetch.sources.images import MAX_MEMBER_BYTES, CorruptImageError, estimate_disk
from data_fetch.sources.labels import (CHEXPERT_LABELS, chexpert_label, finding_column,
                                       is_hispanic, map_sex, race_class)

NAME = "mimic"
TITLE = "MIMIC-CXR-JPG 2.1.0 + MIMIC-IV"
ACCESS = "PhysioNet credentialed account + data use agreements"
CXR_BASE = "https://physionet.org/files/mimic-cxr-jpg/2.1.0"
#: The one host ``$PHYSIONET_USERNAME`` / ``$PHYSIONET_PASSWORD`` are sent to.
CREDENTIAL_HOST = "physionet.org"
IV_BASE = "https://physionet.org/files/mimiciv/3.1"
TABLES = {"metadata": "mimic-cxr-2.0.0-metadata.csv.gz", "chexpert": "mimic-cxr-2.0.0-chexpert.csv.gz",
          "split": "mimic-cxr-2.0.0-split.csv.gz"}
ACCESS_HINT = ("MIMIC needs a PhysioNet credentialed account and signed data use agreements for "
               "MIMIC-CXR-JPG and MIMIC-IV: https://physionet.org/settings/credentialing/ . "
               "Check PHYSIONET_USERNAME / PHYSIONET_PASSWORD or ~/.netrc.")
LABELS = CHEXPERT_LABELS
UNINFORMATIVE = ("UNKNOWN", "UNABLE TO OBTAIN", "PATIENT DECLINED TO ANSWER", "DECLINED TO ANSWER")
TYPICAL_JPEG_BYTES = 600_000


# ----------------------------------------------------------------------------- race, age
def _coarse(value: str) -> str:
    cls = race_class(value)
    if cls is not pd.NA:
        return cls
    return "Hispanic" if is_hispanic(value) else f"other:{value.strip().upper()}"


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
        rows.append({"subject_id": subject, "race": race_class(originals[0]),
                     "race_original": " | ".join(originals)})
    return pd.DataFrame(rows, columns=["subject_id", "race", "race_original"]), dropped


def age_at_study(patients: pd.DataFrame, subject: pd.Series, study_date: pd.Series) -> np.ndarray:
    """``anchor_age + (study year - anchor_year)`` for each image (NaN when unknown)."""
    p = patients.set_index("subject_id").reindex(subject.to_numpy())
    year = pd.to_numeric(study_date, errors="coerce").to_numpy() // 10000
    return p["anchor_age"].to_numpy(dtype=float) + (year - p["anchor_year"].to_numpy(dtype=float))


# ----------------------------------------------------------------------------- access
class Remote:
    """Files of one PhysioNet project over HTTPS (one connection, host-bound auth) or on disk."""

    def __init__(self, base: str, auth: HostBoundAuth | None = None, session: Any = None,
                 net: dict | None = None):
        self.base, self.auth = str(base), auth
        self.session = session or make_session()
        self.net = net or {}

    def read(self, rel: str, max_bytes: int | None = None) -> bytes:
        """Bytes of ``rel`` under the project's root (at most ``max_bytes``)."""
        if is_url(self.base):
            return read_location(join_url(self.base, rel), session=self.session,
                                 auth=self.auth, access_hint=ACCESS_HINT, max_bytes=max_bytes,
                                 **self.net)
        return read_location(Path(self.base).expanduser() / rel, max_bytes=max_bytes)

    def table(self, *candidates: str) -> pd.DataFrame:
        """The first of ``candidates`` (csv or csv.gz) that exists."""
        last: Exception | None = None
        for rel in candidates:
            try:
                data = self.read(rel)
            except (FileNotFoundError, DownloadError) as err:
                if isinstance(err, AccessError):
                    raise
                last = err
                continue
            return read_table(data, f"{rel} under {redact_url(self.base)}")
        raise FileNotFoundError(f"none of {', '.join(candidates)} found under "
                                f"{redact_url(self.base)} ({last})")


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
        "view": df["ViewPosition"].to_numpy(), "sex": [map_sex(v) for v in sex],
        "age": age_at_study(patients, df["subject_id"], df.get("StudyDate")),
        "race": df["race"].to_numpy(), "ethnicity": pd.NA, "bmi": np.nan,
        "site": "Beth Israel Deaconess Medical Center", "source": NAME,
        "race_original": df["race_original"].to_numpy(),
        "insurance": insurance.reindex(df["subject_id"].to_numpy()).to_numpy()
        if insurance is not None else pd.NA,
        "rel": [image_rel(s, t, d) for s, t, d in zip(df["subject_id"], df["study_id"], df["dicom_id"])],
    })
    for label in LABELS:
        out[finding_column(label)] = [chexpert_label(v) for v in df.get(label, [np.nan] * len(df))]
    out["no_finding"] = [chexpert_label(v) for v in df.get("No Finding", [np.nan] * len(df))]
    out["age"] = out["age"].where((out["age"] >= 0) & (out["age"] <= 120))
    return out, dropped


def select(table: pd.DataFrame, count: int | None, wanted: list[str] | None, seed: int) -> pd.DataFrame:
    """The subset to fetch: images named in ``wanted``, or ``count`` images of whole patients."""
    if wanted is not None:
        names = {Path(w.strip()).stem for w in wanted if w.strip()}
        return table[table["image_id"].isin(names)]
    return whole_patient_subset(table, count, seed)


# ----------------------------------------------------------------------------- driver
def credentials_for(base: str, *, interactive: bool | None = None,
                    allow_http_loopback: bool = False) -> Credentials:
    """Credentials for ``base``'s own host, checked to travel safely there.

    ``$PHYSIONET_*`` are used only when that host is :data:`CREDENTIAL_HOST`; any other host
    (a mirror) needs its own ``~/.netrc`` entry or a prompt. Plain HTTP is refused (except to
    loopback with ``allow_http_loopback``) before anything is looked up or sent.
    """
    check_url(base)
    check_transport(base, "PhysioNet credentials", allow_http_loopback)
    return get_credentials(urlsplit(base).hostname or CREDENTIAL_HOST,
                           user_env="PHYSIONET_USERNAME", password_env="PHYSIONET_PASSWORD",
                           account_hint=ACCESS_HINT, env_host=CREDENTIAL_HOST,
                           interactive=interactive)


def _remotes(cxr_base: str, iv_base: str, net: dict, interactive: bool | None,
             allow_http_loopback: bool) -> tuple[Remote, Remote]:
    """The two projects, each with an auth bound to its own origin (one lookup per host)."""
    session = make_session()
    found: dict[str, Credentials] = {}
    remotes = []
    for base in (cxr_base, iv_base):
        auth = None
        if is_url(base):
            host = urlsplit(base).hostname or ""
            if host not in found:
                found[host] = credentials_for(base, interactive=interactive,
                                              allow_http_loopback=allow_http_loopback)
            auth = found[host].bound_to(base, allow_http_loopback)
        remotes.append(Remote(base, auth, session, net))
    return remotes[0], remotes[1]


def fetch_mimic(dest: str | Path | None = None, *, count: int | None = None,
                image_list: str | Path | None = None, local: str | Path | None = None,
                mirror: str | None = None, mimic_iv: str | None = None,
                size: int = DEFAULT_SIZE, seed: int = 0, strict_race: bool = False,
                name: str = DEFAULT_NAME, dry_run: bool = False, progress: bool = True,
                retries: int = 5, backoff: float = 1.0, interactive: bool | None = None,
                allow_http_loopback: bool = False, workers: int | None = None) -> Path | None:
    """Fetch a MIMIC-CXR-JPG subset with MIMIC-IV race, sex and age; returns the manifest path.

    Images are downloaded one at a time; ``workers`` processes decode and resize them
    meanwhile (None: every core; 1: this process only), with the same result whatever the
    number.

    >>> # fetch_mimic(count=5000, size=256)   # needs PhysioNet credentials
    """
    check_common(size, None, seed)
    check_count(count, "--count")
    check_workers(workers)
    dest = resolve_dest(NAME, dest, name)
    cxr_base = str(local or env_default("MIMIC_CXR_DIR") or mirror or CXR_BASE)
    iv_base = str(mimic_iv or IV_BASE)
    if dry_run:
        n = count or "all frontal (about 243,000)"
        print(f"{TITLE} -> {dest}\n  images from {redact_url(cxr_base)}, tables from "
              f"{redact_url(iv_base)}; {n} images, about "
              f"{human_bytes((count or 243_000) * TYPICAL_JPEG_BYTES)} to download, disk about "
              f"{human_bytes(estimate_disk(count or 243_000, size))}")
        return None
    net = {"retries": retries, "backoff": backoff}
    cxr, iv = _remotes(cxr_base, iv_base, net, interactive, allow_http_loopback)
    claim_folder(dest, NAME, size)
    table, dropped = build_table(
        cxr.table(TABLES["metadata"]), cxr.table(TABLES["split"]), cxr.table(TABLES["chexpert"]),
        iv.table("hosp/admissions.csv.gz", "core/admissions.csv.gz", "hosp/admissions.csv"),
        iv.table("hosp/patients.csv.gz", "core/patients.csv.gz", "hosp/patients.csv"), strict_race)
    wanted = Path(image_list).read_text().splitlines() if image_list else None
    chosen = select(table, count, wanted, seed)
    check_free_space(dest, estimate_disk(len(chosen), size))
    with fetch_pool(workers) as pool:
        keep, corrupt, failed = _fetch_images(chosen, cxr, dest, size, progress, pool)
    df = chosen[keep].drop(columns="rel")
    card = {"source": NAME, "title": TITLE, "size": size, "restricted": True,
            "targets": ["race", "sex", "age", "insurance"],
            "citation": "Johnson et al. 2019 (MIMIC-CXR-JPG); Johnson et al. 2023, Sci Data (MIMIC-IV)",
            "race_rule": ("patients whose admissions disagree on race are dropped "
                          f"({'any difference' if strict_race else 'different groups'}); "
                          f"{len(dropped)} dropped"),
            "split_method": "official mimic-cxr-2.0.0-split.csv.gz"}
    return finalize(df, dest, card, corrupt, failed)


def image_item(cxr: Remote, rel: str, image_id: str, out: Path, size: int) -> IngestItem:
    """Download one JPEG (here, one at a time) as the item a pool process stores as a PNG.

    A missing or unreadable file is an item left out with the reason; a refused login
    (:class:`AccessError`) or a failed download (:class:`DownloadError`) raises.
    """
    try:
        return IngestItem(cxr.read(rel, max_bytes=MAX_MEMBER_BYTES), image_id, out, size)
    except (CorruptImageError, FileNotFoundError) as err:
        return IngestItem(None, image_id, out, size, str(err).split(": ", 1)[-1])


def _fetch_images(chosen: pd.DataFrame, cxr: Remote, dest: Path, size: int, progress: bool,
                  pool: ImagePool
                  ) -> tuple[np.ndarray, list[tuple[str, str]], list[tuple[str, str]]]:
    """Download (one at a time, here) and convert each image (in ``pool``).

    Returns the kept mask, the corrupt images and the images whose download failed (404, or
    still 429/5xx after the retries); a refused login (401/403) or too many failures stop.
    """
    keep = np.zeros(len(chosen), dtype=bool)
    corrupt: list[tuple[str, str]] = []
    budget = FailureBudget(len(chosen))
    bar = tqdm(total=len(chosen), desc=NAME, unit=" img", disable=not progress)
    fetched = 0

    def record(i: int, stored: Stored) -> None:
        if stored.ok:
            keep[i] = True
        else:
            corrupt.append((stored.name, stored.error))

    with bar, StoreQueue(pool, record) as queue:
        for i, (rel, path, image_id) in enumerate(zip(chosen["rel"], chosen["path"], chosen["image_id"])):
            bar.update()
            out = dest / path
            queue.settle(out)                    # the same file twice: the first one first
            if out.exists():
                queue.put(IngestItem(None, image_id, out, size), tag=i)
                continue
            try:
                item = image_item(cxr, rel, image_id, out, size)
            except AccessError:
                raise
            except DownloadError as err:
                budget.record(image_id, str(err))
                continue
            fetched += len(item.data or b"")
            queue.put(item, tag=i)
            bar.set_postfix(downloaded=human_bytes(fetched), refresh=False)
    return keep, corrupt, budget.failed


# ----------------------------------------------------------------------------- CLI
def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``python -m data_fetch mimic``."""
    p = subparsers.add_parser(NAME, help=f"{TITLE}: {ACCESS}", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, f"base URL of MIMIC-CXR-JPG (default {CXR_BASE})")
    p.add_argument("--count", type=count_arg, default=None,
                   help="fetch N frontal images (whole patients; N >= 1)")
    p.add_argument("--list", dest="image_list", default=None,
                   help="file of image paths as in IMAGE_FILENAMES")
    p.add_argument("--local", "--source-dir", dest="local", default=None, help="local MIMIC-CXR-JPG copy ($MIMIC_CXR_DIR)")
    p.add_argument("--mimic-iv", default=None, help=f"MIMIC-IV base URL or folder (default {IV_BASE})")
    p.add_argument("--strict-race", action="store_true",
                   help="drop patients whose race strings differ at all between admissions")
    add_workers_arg(p)
    add_http_loopback_arg(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the ``mimic`` subcommand."""
    return run_fetch(fetch_mimic, TITLE, args, count=args.count or args.limit,
                     image_list=args.image_list, local=args.local, mirror=args.mirror,
                     mimic_iv=args.mimic_iv, strict_race=args.strict_race,
                     allow_http_loopback=args.allow_http_loopback, workers=args.workers)
