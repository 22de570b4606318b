"""NIH ChestX-ray14 (open, no login): stream archives, resize on the fly, verify, join labels.

Wang et al. 2017, "ChestX-ray8: Hospital-scale chest X-ray database", CVPR. 112,120 frontal
PNGs (1024 x 1024) of 30,805 patients in 12 archives ``images_001.tar.gz`` ...
``images_012.tar.gz`` on Box (about 45 GB; the first is 2.0 GB with 4,999 images). Each
archive is read as a stream (``tarfile`` mode ``r|gz`` over the HTTP response) and every image
is resized while streaming, so the archive need not be kept (``--keep-archive`` keeps it).
The stream is read here, in order; ``--workers N`` processes decode and resize the PNG bytes
meanwhile, and the images, manifest and data card are the same whatever N.

What is verified before an archive counts as read: every gzip member's CRC-32 and length
(the gzip trailer), the tar end-of-archive marker, the declared ``Content-Length`` and, where
published, the MD5; the manifest is committed only if all pass (on an MD5 or CRC mismatch the
images that came from that archive are deleted). A dropped connection resumes with a ranged
GET. A re-run skips images already written and re-checks the saved per-archive state against
the disk (a deleted image makes the archive be read again). In stream mode nothing of the
archive is kept, so after a failed run the archive is streamed again from its start
(images already written are skipped); ``--keep-archive`` keeps a partial download that resumes.

Labels, age, sex and view come from ``Data_Entry_2017_v2020.csv`` (fetched, or read from the
gzipped copy inside the ``torchxrayvision`` package when it is installed). The official
patient-disjoint ``train_val_list.txt`` / ``test_list.txt`` fix the test split; validation
patients are carved out of train_val at patient level. No race: this dataset's targets are
sex and age (the open stand-in).
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from data_fetch.download import (ChecksumError, DownloadError, RemoteStream, check_free_space,
                                 human_bytes, is_url, join_url, make_session, read_location,
                                 redact_url)
from data_fetch.download import download as download_file
from data_fetch.ingest import ImagePool, IngestItem, Stored, StoreQueue, fetch_pool
from data_fetch.paths import atomic_write_bytes, atomic_write_text
from data_fetch.sources.archives import ArchiveError, ArchiveTruncatedError, TarWalk
from data_fetch.sources.cli import (add_common_args, add_workers_arg, checked_type,
                                    fraction_arg, resolve_dest, run_fetch)
from data_fetch.sources.dataset import (DEFAULT_NAME, DEFAULT_SIZE, carve_val, check_common,
                                        check_fraction, check_workers, claim_folder, finalize,
                                        log, read_table, split_patients)
from data_fetch.sources.images import MAX_MEMBER_BYTES, estimate_disk
from data_fetch.sources.labels import finding_column, map_sex

NAME = "nih"
TITLE = "NIH ChestX-ray14"
ACCESS = "open, no login (about 2 GB per archive)"
BOX = "https://nihcc.box.com/shared/static/{}.gz"
BOX_IDS = (
    "vfk49d74nhbxq3nqjg0900w5nvkorp5c", "i28rlmbvmfjbl8p2n3ril0pptcmcu9d1",
    "f1t00wrtdk94satdfb9olcolqx20z2jp", "0aowwzs5lhjrceb3qp67ahp0rd1l1etg",
    "v5e3goj22zr6h8tzualxfsqlqaygfbsn", "asi7ikud9jwnkrnkj99jnpfkjdes7l6l",
    "jn1b4mw4n6lnh74ovmcjb8y48h8xj07n", "tvpxmn7qyrgl0w8wfh9kqfjskv6nmm1j",
    "upyy3ml7qdumlgk2rfcvlb9k6gvqq2pj", "l6nilvfa9cg3s28tqv1qc1olm3gnz54p",
    "hhq8fkdgvcari67vfhs7ppg2w6ni4jze", "ioqwiy20ihqwyr8pf4c24eazhh281pbu",
)
#: Published MD5 sums by archive number (only those we could confirm).
ARCHIVE_MD5 = {1: "fe8ed0a6961412fddcbb3603c11b3698"}
#: Approximate archive sizes and image counts for the dry run (archive 1: 2.0 GB, 4,999).
ARCHIVE_BYTES = {1: 2_000_000_000}
ARCHIVE_IMAGES = {1: 4999}
TYPICAL_BYTES, TYPICAL_IMAGES = 3_900_000_000, 9739
DATA_ENTRY = "Data_Entry_2017_v2020.csv"
DATA_ENTRY_URL = ("https://raw.githubusercontent.com/mlmed/torchxrayvision/master/"
                  "torchxrayvision/data/Data_Entry_2017_v2020.csv.gz")
LIST_FILES = ("train_val_list.txt", "test_list.txt")
LABELS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
          "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis",
          "Pleural_Thickening", "Hernia")
#: NIH names that mean the same as CheXpert/MIMIC names get the same column.
LABEL_COLUMNS = {"Effusion": "finding_pleural_effusion"}
SITE = "NIH Clinical Center"
ACCESS_HINT = ("NIH ChestX-ray14 is open and needs no login: a refusal means the Box link moved "
               "or the mirror restricts access. Check the address, or use --mirror with another "
               "copy (https://nihcc.app.box.com/v/ChestXray-NIHCC lists the files).")
STREAM_RESUME_HINT = ("The images already written are kept; a re-run streams the archive again "
                      "from its start and skips them (--keep-archive keeps a partial download "
                      "that resumes instead).")
#: Largest Data_Entry table accepted (the real one is about 8 MB).
MAX_TABLE_BYTES = 200_000_000


def archive_name(number: int) -> str:
    """``images_001.tar.gz`` for archive 1."""
    return f"images_{number:03d}.tar.gz"


def archive_url(number: int, mirror: str | None = None) -> str:
    """Where archive ``number`` (1-12) lives: Box, or ``<mirror>/images_NNN.tar.gz``."""
    if not 1 <= number <= len(BOX_IDS):
        raise ValueError(f"NIH archives are numbered 1 to {len(BOX_IDS)}, got {number}")
    if mirror:
        return join_url(mirror, archive_name(number))
    return BOX.format(BOX_IDS[number - 1])


# ----------------------------------------------------------------------------- metadata
def _read_table(data: bytes, origin: str) -> pd.DataFrame:
    """The Data_Entry table from csv or csv.gz bytes; :class:`DownloadError` if unreadable."""
    return read_table(data, f"{DATA_ENTRY} from {origin}")


def _bundled_data_entry() -> bytes | None:
    """The gzipped Data_Entry table shipped inside torchxrayvision, if installed."""
    try:
        from importlib.resources import files
        resource = files("torchxrayvision") / "data" / f"{DATA_ENTRY}.gz"
        return resource.read_bytes() if resource.is_file() else None
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        return None


def _data_entry_fallbacks(mirror: str | None, net: dict) -> tuple[bytes, str]:
    """The table from the mirror if it has one, else torchxrayvision's copy, else the web."""
    if mirror:
        try:
            return read_location(join_url(mirror, DATA_ENTRY), **net), "mirror"
        except DownloadError as err:
            log.warning("no %s on the mirror (%s); trying other copies", DATA_ENTRY, err)
    bundled = _bundled_data_entry()
    if bundled is not None:
        return bundled, "torchxrayvision package"
    return read_location(DATA_ENTRY_URL, **net), DATA_ENTRY_URL


def _cached_data_entry(cached: Path) -> pd.DataFrame | None:
    """The cached table, or None (a damaged cache is deleted so it is fetched again)."""
    if not cached.exists():
        return None
    try:
        return _read_table(cached.read_bytes(), "cache")
    except DownloadError as err:
        log.warning("%s; deleting the cache and fetching it again", err)
        cached.unlink(missing_ok=True)
        return None


def load_data_entry(location: str | None, mirror: str | None, cache: Path,
                    **net: Any) -> tuple[pd.DataFrame, str]:
    """The Data_Entry table and where it came from (explicit path/URL, mirror, package, web).

    The cache is written under a temporary name and renamed once complete; a cache that does
    not read back (a full disk, an interrupted older version) is replaced.
    """
    cached = cache / f"{DATA_ENTRY}.gz"
    if location is None:
        table = _cached_data_entry(cached)
        if table is not None:
            return table, "cache"
    net = {**net, "max_bytes": MAX_TABLE_BYTES}
    if location is not None:
        data, origin = read_location(location, **net), redact_url(str(location))
    else:
        data, origin = _data_entry_fallbacks(mirror, net)
    table = _read_table(data, origin)
    missing = {"Image Index", "Finding Labels", "Patient ID"} - set(table.columns)
    if missing:
        raise DownloadError(f"{DATA_ENTRY} from {origin} lacks column(s) {sorted(missing)}")
    atomic_write_bytes(cached, gzip.compress(table.to_csv(index=False).encode()))
    return table, origin


def load_lists(location: str | None, **net: Any) -> tuple[set[str], set[str]] | None:
    """The official (train_val, test) image-name sets from a folder or base URL, or None."""
    if not location:
        return None
    sets = []
    for name in LIST_FILES:
        where = join_url(location, name) if is_url(location) else Path(location) / name
        text = read_location(where, **net).decode(errors="replace")
        sets.append({line.strip() for line in text.splitlines() if line.strip()})
    return sets[0], sets[1]


def _official_lists(lists: str | None, mirror: str | None,
                    net: dict) -> tuple[set[str], set[str]] | None:
    """Lists given explicitly must load; lists looked for on a mirror are optional."""
    if lists:
        return load_lists(lists, **net)
    try:
        return load_lists(mirror, **net)
    except DownloadError as err:
        log.warning("official split lists not found on the mirror (%s); "
                      "using a random patient-level split", err)
        return None


# ----------------------------------------------------------------------------- streaming
@dataclass
class ArchiveResult:
    """What one archive gave: image names written and what was verified.

    ``intact``: gzip CRC-32/length, tar end marker and Content-Length checked; ``verified``:
    the published MD5 matched; ``complete``: every member was read (no ``--limit`` cut).
    """

    number: int
    images: list[str] = field(default_factory=list)
    excluded: list[tuple[str, str]] = field(default_factory=list)
    verified: bool = False
    complete: bool = False
    intact: bool = False
    md5: str | None = None


def _state_path(dest: Path, number: int) -> Path:
    return dest / "_state" / f"{archive_name(number)}.json"


def _load_state(dest: Path, number: int) -> ArchiveResult | None:
    path = _state_path(dest, number)
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        raw["excluded"] = [tuple(x) for x in raw.get("excluded", [])]
        return ArchiveResult(**raw)
    except (ValueError, TypeError, OSError):
        log.warning("%s: saved state unreadable; the archive is read again", archive_name(number))
        return None


def _state_still_true(state: ArchiveResult, dest: Path, md5: str | None) -> bool:
    """Whether a saved state still describes the disk (else it is deleted)."""
    problem = None
    if not (state.complete and state.intact) or state.verified != bool(md5):
        problem = "was not verified in full"
    elif len(set(state.images)) != len(state.images):
        problem = "lists an image twice"
    else:
        gone = [n for n in state.images if not (dest / "images" / n).is_file()]
        if gone:
            problem = f"lists {len(gone)} image(s) no longer on disk (e.g. {gone[0]})"
    if problem is None:
        return True
    log.warning("%s: saved state %s; reading the archive again", archive_name(state.number), problem)
    _state_path(dest, state.number).unlink(missing_ok=True)
    return False


def _save_state(dest: Path, result: ArchiveResult) -> None:
    atomic_write_text(_state_path(dest, result.number), json.dumps(result.__dict__))


def member_item(walk: TarWalk, member: Any, dest: Path, size: int,
                taken: set[str]) -> IngestItem:
    """What to do with one PNG member: its bytes to store (the pool gets bytes, decodes them
    and writes the PNG), nothing when it is already stored, or the reason it is left out (a
    duplicate name, over the size cap: never read)."""
    name = Path(member.name).name
    out = dest / "images" / name
    if name in taken:
        return IngestItem(None, name, out, size, f"a second file named {name} ({member.name}); "
                                                 "left out")
    if member.size > MAX_MEMBER_BYTES:
        return IngestItem(None, name, out, size, f"{member.size / 1e6:.0f} MB, over the "
                                                 f"{MAX_MEMBER_BYTES / 1e6:.0f} MB cap; not read")
    return IngestItem(None if out.exists() else walk.extract(member), name, out, size)


def _walk_archive(walk: TarWalk, dest: Path, size: int, budget: int | None,
                  result: ArchiveResult, taken: set[str], bar: tqdm, pool: ImagePool) -> bool:
    """Resize every PNG of the archive into ``dest/images``; False if stopped by ``budget``.

    Members are read from the stream here, in order, and decoded by ``pool``; a member is
    decided only once the results it depends on are in (the budget, an earlier member of the
    same name), so the images, their order and what is left out are those of one process.
    """
    def record(_tag: Any, stored: Stored) -> None:
        if stored.ok:
            taken.add(stored.name)
            result.images.append(stored.name)
        else:
            result.excluded.append((stored.name, stored.error))
        bar.set_postfix(images=len(result.images), refresh=False)

    with StoreQueue(pool, record) as queue:
        for member in walk:
            if not (member.isfile() and member.name.lower().endswith(".png")):
                continue
            if budget is not None and len(result.images) + queue.in_flight >= budget:
                queue.settle()
                if len(result.images) >= budget:
                    return False
            queue.settle(dest / "images" / Path(member.name).name)
            queue.put(member_item(walk, member, dest, size, taken))
        queue.settle()
    walk.verify_end()
    return True


def _delete_images(dest: Path, names: list[str]) -> None:
    for name in names:
        (dest / "images" / name).unlink(missing_ok=True)


def _read_kept_archive(path: Path, number: int, dest: Path, size: int, budget: int | None,
                       result: ArchiveResult, taken: set[str], progress: bool,
                       pool: ImagePool) -> None:
    """Walk a downloaded archive; a damaged one is deleted so a re-run downloads it afresh."""
    try:
        with open(path, "rb") as raw, \
                tqdm(desc=archive_name(number), unit=" img", disable=not progress) as bar:
            result.complete = _walk_archive(TarWalk(raw, archive_name(number)), dest, size,
                                            budget, result, taken, bar, pool)
    except ArchiveError as err:
        path.unlink(missing_ok=True)
        raise ArchiveError(f"{err}. The kept archive was deleted; run again to download it "
                           "afresh.") from None
    result.intact = result.complete


def _stream(url: str, number: int, dest: Path, size: int, budget: int | None,
            result: ArchiveResult, taken: set[str], progress: bool, net: dict,
            pool: ImagePool) -> RemoteStream:
    """Stream the archive over HTTP into images; returns the (closed) stream for its digests."""
    bar = tqdm(desc=archive_name(number), unit="B", unit_scale=True, unit_divisor=1024,
               disable=not progress)
    with bar, RemoteStream(url, progress=bar, resume_hint=STREAM_RESUME_HINT, **net) as stream:
        try:
            result.complete = _walk_archive(TarWalk(stream, archive_name(number)), dest, size,
                                            budget, result, taken, bar, pool)
        except ArchiveTruncatedError as err:
            raise ArchiveTruncatedError(f"{err}. {STREAM_RESUME_HINT}") from None
        except ArchiveError as err:
            _delete_images(dest, result.images)  # damaged data: trust none of it
            raise ArchiveError(f"{err}. The {len(result.images)} image(s) made from it were "
                               "deleted and no manifest was written.") from None
        if result.complete:
            stream.drain()
            stream.check_complete()
            result.intact = True
    return stream


def stream_archive(number: int, dest: Path, *, size: int, budget: int | None,
                   mirror: str | None, keep_archive: bool, progress: bool,
                   md5: str | None, taken: set[str] | None = None,
                   pool: ImagePool | None = None, **net: Any) -> ArchiveResult:
    """Read archive ``number`` into resized PNGs under ``dest/images``, verifying it whole.

    ``taken`` holds image names already used by earlier archives (a duplicate is left out);
    ``pool`` decodes the images (default: this process).
    """
    url = archive_url(number, mirror)
    taken = set() if taken is None else taken
    pool = ImagePool(0) if pool is None else pool
    result = ArchiveResult(number, md5=md5)
    if keep_archive:
        path = download_file(url, dest / "archives" / archive_name(number), md5=md5,
                             progress=progress, **net)
        _read_kept_archive(path, number, dest, size, budget, result, taken, progress, pool)
        result.verified = bool(md5)
        return result
    stream = _stream(url, number, dest, size, budget, result, taken, progress, net, pool)
    if result.complete and md5:
        got = stream.digests()["md5"]
        if got != md5.lower():
            _delete_images(dest, result.images)
            raise ChecksumError(
                f"MD5 mismatch for {archive_name(number)}: expected {md5}, got {got}. "
                f"The {len(result.images)} image(s) made from it were deleted and no manifest "
                "was written; run again to download afresh.")
        result.verified = True
    return result


# ----------------------------------------------------------------------------- manifest
def _age(values: pd.Series) -> pd.Series:
    """Ages in years from ints or the 2017 strings like ``'058Y'``; impossible ones missing."""
    parsed = pd.to_numeric(values.astype(str).str.extract(r"(\d+)")[0], errors="coerce")
    return parsed.where((parsed >= 0) & (parsed <= 120))


def build_manifest(names: list[str], entry: pd.DataFrame,
                   lists: tuple[set[str], set[str]] | None,
                   val_fraction: float, seed: int) -> tuple[pd.DataFrame, list[tuple[str, str]], str]:
    """Manifest rows for image ``names``, joined to the Data_Entry table, with splits."""
    table = entry.set_index("Image Index")
    known = [n for n in names if n in table.index]
    excluded = [(n, f"not listed in {DATA_ENTRY}") for n in names if n not in table.index]
    rows = table.loc[known]
    labels = rows["Finding Labels"].fillna("").astype(str).str.split("|")
    df = pd.DataFrame({
        "image_id": [Path(n).stem for n in known],
        "path": [f"images/{n}" for n in known],
        "patient_id": [n.split("_")[0] for n in known],
        "study_id": [Path(n).stem for n in known],
        "view": rows["View Position"].where(rows["View Position"].isin(["PA", "AP"])).to_numpy()
        if "View Position" in rows else pd.NA,
        "sex": [map_sex(v) for v in rows.get("Patient Gender", pd.Series([pd.NA] * len(rows)))],
        "age": _age(rows["Patient Age"]).to_numpy() if "Patient Age" in rows else np.nan,
        "race": pd.NA, "ethnicity": pd.NA, "bmi": np.nan, "site": SITE, "source": NAME,
        "labels_original": rows["Finding Labels"].to_numpy(),
    })
    for label in LABELS:
        df[LABEL_COLUMNS.get(label, finding_column(label))] = [label in ls for ls in labels]
    df["no_finding"] = ["No Finding" in ls for ls in labels]
    df["split"], method = _splits(df, lists, val_fraction, seed)
    return df, excluded, method


def _splits(df: pd.DataFrame, lists: tuple[set[str], set[str]] | None,
            val_fraction: float, seed: int) -> tuple[list[str], str]:
    if lists is None:
        split = split_patients(df["patient_id"], seed)
        return [split[p] for p in df["patient_id"]], "random patient-level 60/10/30 (official lists not given)"
    train_val, test = lists
    files = [Path(p).name for p in df["path"]]
    is_test = pd.Series([f in test for f in files])
    test_patients = set(df.loc[is_test.to_numpy(), "patient_id"])
    carve = carve_val(sorted(set(df["patient_id"]) - test_patients), val_fraction, seed)
    splits = ["test" if p in test_patients else carve[p] for p in df["patient_id"]]
    return splits, f"official test_list.txt; val = {val_fraction:.0%} of train_val patients"


# ----------------------------------------------------------------------------- driver
def plan(archives: list[int], size: int, limit: int | None, keep_archive: bool,
         mirror: str | None) -> dict[str, Any]:
    """What a run would download and the disk it needs (for ``--dry-run``)."""
    download_bytes = sum(ARCHIVE_BYTES.get(a, TYPICAL_BYTES) for a in archives)
    n_images = sum(ARCHIVE_IMAGES.get(a, TYPICAL_IMAGES) for a in archives)
    if limit is not None:
        n_images = min(n_images, limit)
    disk = estimate_disk(n_images, size, download_bytes if keep_archive else 0)
    return {"urls": [redact_url(archive_url(a, mirror)) for a in archives],
            "download_bytes": download_bytes, "images": n_images, "disk_bytes": disk}


def _check_options(archives: list[int], size: int, limit: int | None, seed: int,
                   val_fraction: float, mirror: str | None, workers: int | None) -> None:
    """Every option checked before any network (archive numbers, sizes, fractions, mirror)."""
    check_common(size, limit, seed)
    check_workers(workers)
    check_fraction(val_fraction, "--val-fraction")
    if not archives:
        raise ValueError("--archives names no archive; give numbers 1 to 12, e.g. 1 or 1-3")
    for number in archives:
        archive_url(number, mirror)


def fetch_nih(dest: str | Path | None = None, *, archives: list[int] | tuple[int, ...] = (1,),
              size: int = DEFAULT_SIZE, limit: int | None = None, mirror: str | None = None,
              data_entry: str | None = None, lists: str | None = None,
              keep_archive: bool = False, val_fraction: float = 0.1, seed: int = 0,
              name: str = DEFAULT_NAME, dry_run: bool = False, progress: bool = True,
              retries: int = 5, backoff: float = 1.0,
              md5: dict[int, str] | None = None, workers: int | None = None) -> Path | None:
    """Prepare NIH ChestX-ray14 archives as resized PNGs plus a manifest; returns its path.

    ``mirror`` is a base URL holding ``images_NNN.tar.gz``, ``Data_Entry_2017_v2020.csv`` and
    the two list files (the Box folder's layout); ``lists`` a folder or URL with the list
    files. ``md5`` overrides the published sums by archive number. ``workers`` processes
    decode and resize the PNGs while this one reads the stream (None: every core; 1: this
    process only); the result is the same whatever the number.

    >>> # fetch_nih(archives=[1], size=256, limit=2000)   # about 2 GB streamed, 2,000 PNGs kept
    """
    archives = sorted(set(int(a) for a in archives))
    _check_options(archives, size, limit, seed, val_fraction, mirror, workers)
    dest = resolve_dest(NAME, dest, name)
    sums = {**ARCHIVE_MD5, **(md5 or {})}
    work = plan(archives, size, limit, keep_archive, mirror)
    if dry_run:
        _print_plan(work, dest)
        return None
    claim_folder(dest, NAME, size)
    check_free_space(dest, work["disk_bytes"])
    net = {"retries": retries, "backoff": backoff, "session": make_session(),
           "access_hint": ACCESS_HINT}
    entry, entry_origin = load_data_entry(data_entry, mirror, dest / "_meta", **net)
    official = _official_lists(lists, mirror, net)
    with fetch_pool(workers) as pool:
        results = _run_archives(archives, dest, size, limit, mirror, keep_archive, progress,
                                sums, net, pool)
    names = [n for r in results for n in r.images][:limit]
    df, missing, method = build_manifest(names, entry, official, val_fraction, seed)
    card = {"source": NAME, "title": TITLE, "size": size, "targets": ["sex", "age"],
            "citation": "Wang et al. 2017, CVPR (ChestX-ray8/14)", "data_entry": entry_origin,
            "split_method": method,
            "archives": {archive_name(r.number): {"md5_verified": r.verified,
                                                  "gzip_and_tar_verified": r.intact,
                                                  "read_completely": r.complete}
                         for r in results}}
    excluded = [x for r in results for x in r.excluded] + missing
    return finalize(df, dest, card, excluded)


def _archive_once(number: int, dest: Path, budget: int | None, taken: set[str],
                  options: dict) -> ArchiveResult:
    """The saved result of archive ``number`` if still true on disk, else a fresh read."""
    md5 = options["sums"].get(number)
    state = _load_state(dest, number)
    if state is not None and _state_still_true(state, dest, md5):
        taken.update(state.images)
        return state
    try:
        result = stream_archive(number, dest, size=options["size"], budget=budget,
                                mirror=options["mirror"], keep_archive=options["keep_archive"],
                                progress=options["progress"], md5=md5, taken=taken,
                                pool=options["pool"], **options["net"])
    except KeyboardInterrupt:
        if not options["keep_archive"]:
            print(f"note: {archive_name(number)} was being streamed; {STREAM_RESUME_HINT}",
                  file=sys.stderr)
        raise
    if result.complete:
        _save_state(dest, result)
        if not result.verified:
            log.warning("%s: no published MD5; integrity checked by the gzip CRC-32 and length, "
                        "the tar end-of-archive marker and the Content-Length", archive_name(number))
    else:
        log.warning("%s read only in part (--limit): its checksums could not be checked",
                    archive_name(number))
    return result


def _run_archives(archives: list[int], dest: Path, size: int, limit: int | None,
                  mirror: str | None, keep_archive: bool, progress: bool,
                  sums: dict[int, str], net: dict, pool: ImagePool) -> list[ArchiveResult]:
    options = {"size": size, "mirror": mirror, "keep_archive": keep_archive,
               "progress": progress, "sums": sums, "net": net, "pool": pool}
    results: list[ArchiveResult] = []
    taken: set[str] = set()
    for number in archives:
        budget = None if limit is None else limit - sum(len(r.images) for r in results)
        if budget is not None and budget <= 0:
            break
        results.append(_archive_once(number, dest, budget, taken, options))
    return results


def _print_plan(work: dict[str, Any], dest: Path) -> None:
    print(f"NIH ChestX-ray14 -> {dest}")
    for url in work["urls"]:
        print(f"  stream {url}")
    print(f"  download about {human_bytes(work['download_bytes'])}, keep about "
          f"{work['images']} images, disk needed about {human_bytes(work['disk_bytes'])}")


# ----------------------------------------------------------------------------- CLI
def parse_archives(text: str) -> list[int]:
    """``'1,3-4'`` -> ``[1, 3, 4]``; ValueError naming the problem for anything else."""
    numbers: list[int] = []
    try:
        for part in str(text).split(","):
            if "-" in part.strip()[1:]:
                low, high = part.split("-", 1)
                numbers.extend(range(int(low), int(high) + 1))
            elif part.strip():
                numbers.append(int(part))
    except ValueError:
        raise ValueError(f"--archives must list numbers 1 to {len(BOX_IDS)} like 1 or 1,3-4, "
                         f"got {text!r}") from None
    bad = [n for n in numbers if not 1 <= n <= len(BOX_IDS)]
    if bad or not numbers:
        raise ValueError(f"--archives must list numbers 1 to {len(BOX_IDS)} like 1 or 1,3-4, "
                         f"got {text!r}")
    return numbers


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``python -m data_fetch nih``."""
    p = subparsers.add_parser(NAME, help=f"{TITLE}: {ACCESS}", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, "base URL holding images_NNN.tar.gz, the Data_Entry csv and list files")
    p.add_argument("--archives", default=[1], type=checked_type(parse_archives, str),
                   help="archive numbers 1-12, e.g. '1' or '1,2' or '1-3' (default: 1, 2 GB)")
    p.add_argument("--keep-archive", action="store_true", help="keep the .tar.gz files")
    p.add_argument("--data-entry", default=None, help=f"path or URL of {DATA_ENTRY}(.gz)")
    p.add_argument("--lists", default=None,
                   help="folder or URL with train_val_list.txt and test_list.txt")
    p.add_argument("--val-fraction", type=fraction_arg, default=0.1,
                   help="share of train_val patients used for validation (default: 0.1)")
    add_workers_arg(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Run the ``nih`` subcommand."""
    return run_fetch(fetch_nih, TITLE, args, archives=args.archives, limit=args.limit,
                     mirror=args.mirror, data_entry=args.data_entry, lists=args.lists,
                     keep_archive=args.keep_archive, val_fraction=args.val_fraction,
                     workers=args.workers)
