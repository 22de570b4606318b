"""NIH ChestX-ray14 (open, no login): stream archives, resize on the fly, verify, join labels.

Wang et al. 2017, "ChestX-ray8: Hospital-scale chest X-ray database", CVPR. 112,120 frontal
PNGs (1024 x 1024) of 30,805 patients in 12 archives ``images_001.tar.gz`` ...
``images_012.tar.gz`` on Box (about 45 GB; the first is 2.0 GB with 4,999 images). Each
archive is read as a stream (``tarfile`` mode ``r|gz`` over the HTTP response) and every image
is resized while streaming, so the archive need not be kept (``--keep-archive`` keeps it).
The MD5 is computed on the fly; the manifest is committed only if it matches (on a mismatch
the images that came from that archive are deleted). A dropped connection resumes with a
ranged GET; a re-run skips images already written.

Labels, age, sex and view come from ``Data_Entry_2017_v2020.csv`` (fetched, or read from the
gzipped copy inside the ``torchxrayvision`` package when it is installed). The official
patient-disjoint ``train_val_list.txt`` / ``test_list.txt`` fix the test split; validation
patients are carved out of train_val at patient level. No race: this dataset's targets are
sex and age (the open stand-in).
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from data_fetch import download as dl
from data_fetch.sources import _common as C

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


def archive_name(number: int) -> str:
    """``images_001.tar.gz`` for archive 1."""
    return f"images_{number:03d}.tar.gz"


def archive_url(number: int, mirror: str | None = None) -> str:
    """Where archive ``number`` (1-12) lives: Box, or ``<mirror>/images_NNN.tar.gz``."""
    if not 1 <= number <= len(BOX_IDS):
        raise ValueError(f"NIH archives are numbered 1 to {len(BOX_IDS)}, got {number}")
    if mirror:
        return dl.join_url(mirror, archive_name(number))
    return BOX.format(BOX_IDS[number - 1])


# ----------------------------------------------------------------------------- metadata
def _read_table(data: bytes) -> pd.DataFrame:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return pd.read_csv(io.BytesIO(data))


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
            return dl.read_location(dl.join_url(mirror, DATA_ENTRY), **net), "mirror"
        except dl.DownloadError as err:
            C.log.warning("no %s on the mirror (%s); trying other copies", DATA_ENTRY, err)
    bundled = _bundled_data_entry()
    if bundled is not None:
        return bundled, "torchxrayvision package"
    return dl.read_location(DATA_ENTRY_URL, **net), DATA_ENTRY_URL


def load_data_entry(location: str | None, mirror: str | None, cache: Path,
                    **net: Any) -> tuple[pd.DataFrame, str]:
    """The Data_Entry table and where it came from (explicit path/URL, mirror, package, web)."""
    cached = cache / f"{DATA_ENTRY}.gz"
    if location is None and cached.exists():
        return _read_table(cached.read_bytes()), "cache"
    if location is not None:
        data, origin = dl.read_location(location, **net), dl.redact_url(str(location))
    else:
        data, origin = _data_entry_fallbacks(mirror, net)
    table = _read_table(data)
    missing = {"Image Index", "Finding Labels", "Patient ID"} - set(table.columns)
    if missing:
        raise dl.DownloadError(f"{DATA_ENTRY} from {origin} lacks column(s) {sorted(missing)}")
    cache.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(gzip.compress(table.to_csv(index=False).encode()))
    return table, origin


def load_lists(location: str | None, **net: Any) -> tuple[set[str], set[str]] | None:
    """The official (train_val, test) image-name sets from a folder or base URL, or None."""
    if not location:
        return None
    sets = []
    for name in LIST_FILES:
        where = dl.join_url(location, name) if dl.is_url(location) else Path(location) / name
        text = dl.read_location(where, **net).decode()
        sets.append({line.strip() for line in text.splitlines() if line.strip()})
    return sets[0], sets[1]


def _official_lists(lists: str | None, mirror: str | None,
                    net: dict) -> tuple[set[str], set[str]] | None:
    """Lists given explicitly must load; lists looked for on a mirror are optional."""
    if lists:
        return load_lists(lists, **net)
    try:
        return load_lists(mirror, **net)
    except dl.DownloadError as err:
        C.log.warning("official split lists not found on the mirror (%s); "
                      "using a random patient-level split", err)
        return None


# ----------------------------------------------------------------------------- streaming
@dataclass
class ArchiveResult:
    """What one archive gave: image names written, whether its MD5 was checked."""

    number: int
    images: list[str] = field(default_factory=list)
    excluded: list[tuple[str, str]] = field(default_factory=list)
    verified: bool = False
    complete: bool = False
    md5: str | None = None


def _state_path(dest: Path, number: int) -> Path:
    return dest / "_state" / f"{archive_name(number)}.json"


def _load_state(dest: Path, number: int) -> ArchiveResult | None:
    path = _state_path(dest, number)
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    raw["excluded"] = [tuple(x) for x in raw.get("excluded", [])]
    return ArchiveResult(**raw)


def _save_state(dest: Path, result: ArchiveResult) -> None:
    path = _state_path(dest, result.number)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.__dict__))
    tmp.replace(path)


def _walk_tar(tar: tarfile.TarFile, dest: Path, size: int, budget: int | None,
              result: ArchiveResult, bar: tqdm) -> bool:
    """Resize every PNG of ``tar`` into ``dest/images``; False if stopped by ``budget``."""
    for member in tar:
        if not (member.isfile() and member.name.lower().endswith(".png")):
            continue
        if budget is not None and len(result.images) >= budget:
            return False
        name = Path(member.name).name
        out = dest / "images" / name
        if not out.exists():
            handle = tar.extractfile(member)
            try:
                C.store_image(handle.read() if handle else b"", name, out, size)
            except C.CorruptImageError as err:
                result.excluded.append((name, str(err).split(": ", 1)[-1]))
                continue
        result.images.append(name)
        bar.set_postfix(images=len(result.images), refresh=False)
    return True


def _delete_images(dest: Path, names: list[str]) -> None:
    for name in names:
        (dest / "images" / name).unlink(missing_ok=True)


def stream_archive(number: int, dest: Path, *, size: int, budget: int | None,
                   mirror: str | None, keep_archive: bool, progress: bool,
                   md5: str | None, **net: Any) -> ArchiveResult:
    """Stream archive ``number`` into resized PNGs under ``dest/images``; verify its MD5."""
    url = archive_url(number, mirror)
    result = ArchiveResult(number, md5=md5)
    if keep_archive:
        path = dl.download(url, dest / "archives" / archive_name(number), md5=md5,
                           progress=progress, **net)
        with tarfile.open(path, mode="r:gz") as tar, \
                tqdm(desc=archive_name(number), unit=" img", disable=not progress) as bar:
            result.complete = _walk_tar(tar, dest, size, budget, result, bar)
        result.verified = bool(md5)
        return result
    bar = tqdm(desc=archive_name(number), unit="B", unit_scale=True, unit_divisor=1024,
               disable=not progress)
    with bar, dl.RemoteStream(url, progress=bar, **net) as stream:
        with tarfile.open(fileobj=stream, mode="r|gz") as tar:
            result.complete = _walk_tar(tar, dest, size, budget, result, bar)
        if result.complete:
            stream.drain()
            got = stream.digests()["md5"]
            if md5 and got != md5.lower():
                _delete_images(dest, result.images)
                raise dl.ChecksumError(
                    f"MD5 mismatch for {archive_name(number)}: expected {md5}, got {got}. "
                    f"The {len(result.images)} image(s) made from it were deleted and no manifest "
                    "was written; run again to download afresh.")
            result.verified = bool(md5)
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
        "sex": [C.map_sex(v) for v in rows.get("Patient Gender", pd.Series([pd.NA] * len(rows)))],
        "age": _age(rows["Patient Age"]).to_numpy() if "Patient Age" in rows else np.nan,
        "race": pd.NA, "ethnicity": pd.NA, "bmi": np.nan, "site": SITE, "source": NAME,
        "labels_original": rows["Finding Labels"].to_numpy(),
    })
    for label in LABELS:
        df[LABEL_COLUMNS.get(label, C.finding_column(label))] = [label in ls for ls in labels]
    df["no_finding"] = ["No Finding" in ls for ls in labels]
    df["split"], method = _splits(df, lists, val_fraction, seed)
    return df, excluded, method


def _splits(df: pd.DataFrame, lists: tuple[set[str], set[str]] | None,
            val_fraction: float, seed: int) -> tuple[list[str], str]:
    if lists is None:
        split = C.split_patients(df["patient_id"], seed)
        return [split[p] for p in df["patient_id"]], "random patient-level 60/10/30 (official lists not given)"
    train_val, test = lists
    files = [Path(p).name for p in df["path"]]
    is_test = pd.Series([f in test for f in files])
    test_patients = set(df.loc[is_test.to_numpy(), "patient_id"])
    carve = C.carve_val(sorted(set(df["patient_id"]) - test_patients), val_fraction, seed)
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
    disk = C.estimate_disk(n_images, size, download_bytes if keep_archive else 0)
    return {"urls": [dl.redact_url(archive_url(a, mirror)) for a in archives],
            "download_bytes": download_bytes, "images": n_images, "disk_bytes": disk}


def fetch_nih(dest: str | Path | None = None, *, archives: list[int] | tuple[int, ...] = (1,),
              size: int = C.DEFAULT_SIZE, limit: int | None = None, mirror: str | None = None,
              data_entry: str | None = None, lists: str | None = None,
              keep_archive: bool = False, val_fraction: float = 0.1, seed: int = 0,
              name: str = C.DEFAULT_NAME, dry_run: bool = False, progress: bool = True,
              retries: int = 5, backoff: float = 1.0,
              md5: dict[int, str] | None = None) -> Path | None:
    """Prepare NIH ChestX-ray14 archives as resized PNGs plus a manifest; returns its path.

    ``mirror`` is a base URL holding ``images_NNN.tar.gz``, ``Data_Entry_2017_v2020.csv`` and
    the two list files (the Box folder's layout); ``lists`` a folder or URL with the list
    files. ``md5`` overrides the published sums by archive number.

    >>> # fetch_nih(archives=[1], size=256, limit=2000)   # about 2 GB streamed, 2,000 PNGs kept
    """
    archives = sorted(set(int(a) for a in archives))
    dest = C.resolve_dest(NAME, dest, name)
    sums = {**ARCHIVE_MD5, **(md5 or {})}
    work = plan(archives, size, limit, keep_archive, mirror)
    if dry_run:
        _print_plan(work, dest)
        return None
    dl.check_free_space(dest, work["disk_bytes"])
    net = {"retries": retries, "backoff": backoff}
    entry, entry_origin = load_data_entry(data_entry, mirror, dest / "_meta", **net)
    official = _official_lists(lists, mirror, net)
    results = _run_archives(archives, dest, size, limit, mirror, keep_archive, progress, sums, net)
    names = [n for r in results for n in r.images][:limit]
    df, missing, method = build_manifest(names, entry, official, val_fraction, seed)
    card = {"source": NAME, "title": TITLE, "size": size, "targets": ["sex", "age"],
            "citation": "Wang et al. 2017, CVPR (ChestX-ray8/14)", "data_entry": entry_origin,
            "split_method": method,
            "archives": {archive_name(r.number): {"md5_verified": r.verified,
                                                  "read_completely": r.complete}
                         for r in results}}
    excluded = [x for r in results for x in r.excluded] + missing
    return C.finalize(df, dest, card, excluded)


def _run_archives(archives: list[int], dest: Path, size: int, limit: int | None,
                  mirror: str | None, keep_archive: bool, progress: bool,
                  sums: dict[int, str], net: dict) -> list[ArchiveResult]:
    results: list[ArchiveResult] = []
    for number in archives:
        budget = None if limit is None else limit - sum(len(r.images) for r in results)
        if budget is not None and budget <= 0:
            break
        state = _load_state(dest, number)
        if state and state.complete and state.verified == bool(sums.get(number)):
            results.append(state)
            continue
        result = stream_archive(number, dest, size=size, budget=budget, mirror=mirror,
                                keep_archive=keep_archive, progress=progress,
                                md5=sums.get(number), **net)
        if result.complete:
            _save_state(dest, result)
        if result.complete and not result.verified:
            C.log.warning("%s: no published checksum, integrity checked by gzip only",
                          archive_name(number))
        if not result.complete:
            C.log.warning("%s read only in part (--limit): its MD5 could not be checked",
                          archive_name(number))
        results.append(result)
    return results


def _print_plan(work: dict[str, Any], dest: Path) -> None:
    print(f"NIH ChestX-ray14 -> {dest}")
    for url in work["urls"]:
        print(f"  stream {url}")
    print(f"  download about {dl.human_bytes(work['download_bytes'])}, keep about "
          f"{work['images']} images, disk needed about {dl.human_bytes(work['disk_bytes'])}")


# ----------------------------------------------------------------------------- CLI
def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``python -m data_fetch nih``."""
    p = subparsers.add_parser(NAME, help=f"{TITLE}: {ACCESS}", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p, "base URL holding images_NNN.tar.gz, the Data_Entry csv and list files")
    p.add_argument("--archives", default="1",
                   help="archive numbers 1-12, e.g. '1' or '1,2' or '1-3' (default: 1, 2 GB)")
    p.add_argument("--keep-archive", action="store_true", help="keep the .tar.gz files")
    p.add_argument("--data-entry", default=None, help=f"path or URL of {DATA_ENTRY}(.gz)")
    p.add_argument("--lists", default=None,
                   help="folder or URL with train_val_list.txt and test_list.txt")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of train_val patients used for validation (default: 0.1)")
    return p


def parse_archives(text: str) -> list[int]:
    """``'1,3-4'`` -> ``[1, 3, 4]``."""
    numbers: list[int] = []
    for part in str(text).split(","):
        if "-" in part:
            low, high = part.split("-", 1)
            numbers.extend(range(int(low), int(high) + 1))
        elif part.strip():
            numbers.append(int(part))
    return numbers


def run(args: argparse.Namespace) -> int:
    """Run the ``nih`` subcommand."""
    out = fetch_nih(args.dest, archives=parse_archives(args.archives), size=args.size,
                    limit=args.limit, mirror=args.mirror, data_entry=args.data_entry,
                    lists=args.lists, keep_archive=args.keep_archive,
                    val_fraction=args.val_fraction, seed=args.seed, name=args.name,
                    dry_run=args.dry_run, progress=not args.no_progress)
    if out is not None:
        C.say(f"NIH ChestX-ray14 ready: {out}")
    return 0
