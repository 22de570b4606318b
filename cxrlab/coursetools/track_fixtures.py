"""Course fixtures: small ``nih`` and ``covid19_ar`` datasets that every chapter can run on, offline.

Each fixture is written in the source's real format with synthetic pixels, served on
127.0.0.1 (:func:`cxrlab.coursetools.loopback.serve_folder`) and fetched through the source's
real fetcher, which writes the manifest and data card exactly as for real data:

- ``nih``: an ``images_001.tar.gz`` holding ``images/<Image Index>.png`` with the real file
  names, the real ``Data_Entry_2017_v2020.csv`` rows of those images (the copy shipped with
  torchxrayvision: patient, follow-up, age, sex, view, findings) and patient-disjoint
  ``train_val_list.txt`` / ``test_list.txt``, fetched by :func:`data_fetch.sources.nih.fetch_nih`
  with the archive's MD5 checked;
- ``covid19_ar``: about 100 patients of DICOM radiographs written with pydicom (CR, MONOCHROME1
  and 2, plus an MR slice and a lateral film the fetcher must leave out) and a clinical table
  with self-reported race, fetched by :func:`data_fetch.sources.covid19_ar.fetch_covid19_ar`.

The data card gets ``"fixture"`` (a sentence), so :attr:`cxrlab.core.session.Session.is_fixture`
is true, chapter 7 does not take it for real patients, and the chapters' claims only warn: the
pixels are noise around a drawn chest, so no number computed on a fixture is a finding.

    python -m cxrlab.coursetools.track_fixtures nih covid19_ar    # into $CXRLAB_DATA

``make test-tracks`` builds both and runs every chapter on each (``CXRLAB_SOURCE``).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import pandas as pd
from PIL import Image

from cxrlab.coursetools import covid_fixture
from cxrlab.coursetools.loopback import serve_folder
from cxrlab.core.session import COURSE_FIXTURE
from data_fetch.paths import data_root

FIXTURE_NAME = COURSE_FIXTURE
#: the sentence the data card carries (and ``Session.is_fixture`` reads)
FIXTURE_NOTE = covid_fixture.FIXTURE_CARD_NOTE
TRACKS = ("nih", "covid19_ar")
#: NIH images in the fixture (whole patients, in the Data_Entry table's order)
NIH_IMAGES = 600
#: COVID-19-AR patients as (race as TCIA writes it, patients, images each): 100 patients,
#: mostly White and Black as in the real collection (Arkansas), a few Asian and "Other"
COVID_PATIENTS = (("White", 28, 3), ("White", 27, 2), ("Black or African American", 18, 3),
                  ("Black or African American", 20, 2), ("Asian", 2, 2), ("Other", 5, 1))
#: pixels stored by the fetchers (the demo preset reads 64 px, workshop 128)
FETCH_SIZE = 128


# ----------------------------------------------------------------------------- NIH
def nih_entries(n_images: int) -> pd.DataFrame:
    """The first Data_Entry rows, whole patients, up to ``n_images`` (torchxrayvision's copy).

    Raises RuntimeError when torchxrayvision (``pip install -e ".[real]"``) is not installed.
    """
    from data_fetch.sources import nih

    raw = nih._bundled_data_entry()
    if raw is None:
        raise RuntimeError("the NIH fixture uses the real Data_Entry rows shipped with "
                           "torchxrayvision: pip install -e \".[real]\"")
    table = pd.read_csv(io.BytesIO(gzip.decompress(raw)))
    table = table[table["View Position"].isin(["PA", "AP"])]
    counts = table.groupby("Patient ID", sort=False).size().cumsum()
    keep = set(counts.index[counts <= n_images])
    return table[table["Patient ID"].isin(keep)].reset_index(drop=True)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def write_nih_mirror(folder: Path, entries: pd.DataFrame, seed: int = 0,
                     size: int = FETCH_SIZE) -> str:
    """The Box folder's layout under ``folder``: archive, Data_Entry table and the two lists.

    Returns the archive's MD5 (checked by the fetcher as the published one would be).
    """
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in entries["Image Index"]:
            picture = covid_fixture.fake_radiograph(rng, size)      # 12-bit: to 8-bit like NIH
            data = _png((picture >> 4).astype(np.uint8))
            info = tarfile.TarInfo(f"images/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive = buf.getvalue()
    (folder / "images_001.tar.gz").write_bytes(archive)
    entries.to_csv(folder / "Data_Entry_2017_v2020.csv", index=False)
    patients = sorted(entries["Patient ID"].unique())
    test = set(patients[::3])                                       # a third, patient-disjoint
    is_test = entries["Patient ID"].isin(test)
    (folder / "test_list.txt").write_text("\n".join(entries.loc[is_test, "Image Index"]) + "\n")
    (folder / "train_val_list.txt").write_text(
        "\n".join(entries.loc[~is_test, "Image Index"]) + "\n")
    return hashlib.md5(archive).hexdigest()


def build_nih_fixture(dest: Path | None = None, n_images: int | None = None,
                      seed: int = 0) -> Path:
    """The NIH fixture (``n_images``, default :data:`NIH_IMAGES`) fetched by
    :func:`data_fetch.sources.nih.fetch_nih` from 127.0.0.1."""
    from data_fetch.sources import nih

    n_images = NIH_IMAGES if n_images is None else n_images
    dest = Path(dest) if dest else data_root() / nih.NAME / FIXTURE_NAME
    if _is_built(dest):
        return dest
    with TemporaryDirectory() as tmp:
        md5 = write_nih_mirror(Path(tmp), nih_entries(n_images), seed)
        with serve_folder(tmp) as base:
            nih.fetch_nih(dest, archives=[1], mirror=base, size=FETCH_SIZE, md5={1: md5},
                          progress=False, retries=0, backoff=0, workers=1, seed=seed)
    return _mark_fixture(dest)


# ----------------------------------------------------------------------------- COVID-19-AR
def build_covid19_ar_fixture(dest: Path | None = None, seed: int = 0) -> Path:
    """About 100 COVID-19-AR patients fetched by the real fetcher from 127.0.0.1."""
    dest = Path(dest) if dest else data_root() / "covid19_ar" / FIXTURE_NAME
    if _is_built(dest):
        return dest
    covid_fixture.build_fixture_dataset(dest, seed=seed, patients=COVID_PATIENTS,
                                        size=FETCH_SIZE)
    return _mark_fixture(dest)


# ----------------------------------------------------------------------------- shared
BUILDERS = {"nih": build_nih_fixture, "covid19_ar": build_covid19_ar_fixture}


def build_track_fixture(source: str, dest: Path | None = None, seed: int = 0) -> Path:
    """Build (or reuse) the course fixture of ``source`` (``nih`` or ``covid19_ar``)."""
    if source not in BUILDERS:
        raise ValueError(f"no course fixture for {source!r}; choose one of {', '.join(BUILDERS)}")
    return BUILDERS[source](dest, seed=seed)


def is_fixture_card(card: dict) -> bool:
    """Whether a data card belongs to a fixture (never real patients)."""
    return bool(card.get("fixture"))


def _is_built(dest: Path) -> bool:
    card = dest / "manifest.json"
    return (dest / "manifest.csv").exists() and card.exists() and \
        is_fixture_card(json.loads(card.read_text()))


_mark_fixture = covid_fixture.mark_fixture


def main(argv: list[str] | None = None) -> int:
    """``python -m cxrlab.coursetools.track_fixtures [SOURCE ...]``: build fixtures, print paths."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="*", metavar="SOURCE",
                        help=f"{' and/or '.join(TRACKS)} (default: both)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.sources) - set(TRACKS))
    if unknown:
        parser.error(f"no course fixture for {', '.join(unknown)}; choose from {', '.join(TRACKS)}")
    for source in args.sources or TRACKS:
        print(f"{source}: {build_track_fixture(source)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
