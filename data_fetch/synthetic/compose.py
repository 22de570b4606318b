"""Composing a radiograph in 2D from the CT's per-structure line integrals (``anatomy="ct"``).

Every study starts from the cached maps of :mod:`.ct` for its view (PA or AP) and the patient's
axial rotation, resampled to the image size once per cohort. Then, per image:

1. one smooth deformation (the patient's affine shape and elastic field, which persist across
   the patient's studies, composed with the study's positioning and inspiration) resamples every
   map at once; the heart is resampled a second time, scaled about its centre for the patient's
   heart size and for cardiomegaly, and displaces lung where it grows;
2. the maps are weighted by the patient's covariates (bone mineral for age and sex, fat for
   BMI), breast tissue is added for female patients, fluid with a meniscus fills the
   costophrenic angle for an effusion, and consolidation and nodules add attenuation inside
   the lungs;
3. the group signal, when on, modulates the attenuation of the lungs, bones and heart by a
   smooth group pattern anchored to the anatomy: drawn once on a fixed grid in the CT's frame
   (:data:`SIGNAL_GRID`) and warped with the maps, so it is the same anatomical pattern at every
   image size and in every follow-up, and the quiet abdomen and soft tissue carry none of it;
   plus a fine grain (a stand-in for the texture of bone and dense tissue) at the image's
   finest scale (:data:`FINE_BAND`), in proportion to the path through the tissues of
   :data:`GRAIN_MAPS`, whose orientation spectrum is the group's and whose phases are the
   patient's, so the group is still in the image after a strong high-pass filter;
4. Beer-Lambert transmission, scatter, quantum noise, detector blur, the log transform, the
   site's processing and tone curve, collimation and a laterality marker.

>>> from data_fetch.synthetic.config import SyntheticConfig
>>> from data_fetch.synthetic.cohort import build_table
>>> cfg = SyntheticConfig(n_patients=2, image_size=64, anatomy="ct")
>>> row = build_table(cfg).iloc[0].to_dict()
>>> img, mask = CTRenderer(cfg).render(row, image_index=0)
>>> img.shape, img.dtype, bool(mask.any())
((64, 64), dtype('uint8'), True)
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping

import numpy as np
from scipy import ndimage
from scipy.special import expit

from data_fetch.synthetic import ct
from data_fetch.synthetic.config import SyntheticConfig
from data_fetch.synthetic.render import Renderer, SiteLook

BONE_WEIGHT = 0.75        # bone's share after the site's processing (the spine is faint behind the heart)
LUNG_MASK_CM = 6.0        # lung field = where the ray crosses this much lung (excludes the
#                           lung behind the heart and the posterior recesses below the domes)
FLUID_CM = 8.0            # water thickness of a pleural effusion where it has filled the recess
MU_WATER = 0.2            # effective linear attenuation of water at chest-radiograph energies (1/cm)
LUNG_DENSITY = 0.2        # lung tissue relative to water: what fluid or a grown heart displaces
SIGNAL_TISSUE = 0.1       # group_signal = 1: modulation sd of 10% of the modulated attenuation
SIGNAL_GRID = 64          # the group pattern is drawn on this grid in the CT's frame, whatever
#                           the image size, so it is the same anatomical pattern at 64 and 256 px
SIGNAL_MAPS = ("lung", "bone", "heart")   # the structures whose attenuation it modulates
PATH_CAP_CM = 3.0         # the modulated path saturates at this (cm water-equivalent): cap *
#                           tanh(path / cap), so the heart and spine, the longest paths, carry
#                           no more of the pattern than a lung does (no bright mediastinal patch)
PATTERN_CAP = 2.0         # the unit-sd pattern saturates at this many sd (cap * tanh(x / cap)),
#                           so no single patch of it stands out
FINE_BAND = (0.88, 1.0)  # the fine grain's band (fractions of the image's Nyquist frequency):
#                           what survives the paper's high-pass d = 100 (above 0.89 Nyquist)
FINE_SHARE = 0.0182       # the fine grain's sd relative to the smooth pattern's unit (both unit
#                           sd textures, each times the attenuation of the structures it
#                           modulates); 0.035 x 2.6 / 5.0: the same grain as at group_signal 2.6
GRAIN_LOBE = 8            # sharpness of the grain's orientation lobe: cos^(2 x this)
GRAIN_MAPS = ("lean", "fat", "heart", "abdomen", "bone")   # the grain's tissues: all but the
#                           lungs, so it is strongest where quantum noise is too (dense paths)
ELASTIC_SD = 0.045        # patient-specific elastic displacement (image half-widths)
DRC = 0.5                 # dynamic-range compression of the log image (0 = none)
VIEW_ZOOM = 0.88          # the image shows the central 88% of the CT's field (margin for warps)


def _resize_maps(maps: np.ndarray, n: int) -> np.ndarray:
    """(A, G, m, m) maps resampled to (A, G, n, n): area averaging down, bilinear up."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(maps.reshape(-1, maps.shape[-2], maps.shape[-1]))[:, None]
    mode = {"mode": "area"} if n <= maps.shape[-1] else {"mode": "bilinear", "align_corners": False}
    out = F.interpolate(t, size=(n, n), **mode)[:, 0].numpy()
    return out.reshape(*maps.shape[:2], n, n).astype(np.float32)


@lru_cache(maxsize=64)
def _gaussian_weights(sigma: float) -> np.ndarray:
    """The 1-D kernel ``scipy.ndimage.gaussian_filter`` uses (truncated at 4 sd), reversed."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x**2)
    return (phi / phi.sum())[::-1].copy()


def _gaussian(img: np.ndarray, sigma: float, mode: str = "reflect") -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(img, sigma, mode=mode)`` for a 2-D image, with its kernel
    cached (the same result; computing the kernel cost more than filtering a 64 px image)."""
    weights = _gaussian_weights(float(sigma))
    out = ndimage.correlate1d(img, weights, axis=0, mode=mode, origin=0)
    return ndimage.correlate1d(out, weights, axis=1, mode=mode, origin=0)


def _broad(img: np.ndarray, sigma_frac: float) -> np.ndarray:
    """A wide Gaussian blur (sd = ``sigma_frac`` of the width), done cheaply on a 16 px copy."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    small = F.interpolate(t, size=(16, 16), mode="area")[0, 0].numpy()
    small = _gaussian(small, sigma_frac * 16, mode="nearest")
    big = F.interpolate(torch.from_numpy(small)[None, None], size=img.shape, mode="bilinear",
                        align_corners=False)
    return big[0, 0].numpy()


def grain_filters(n: int) -> list[np.ndarray]:
    """Each group's amplitude spectrum of the fine grain on an n x n image (unit-sd texture from
    white noise): flat over the radial band :data:`FINE_BAND`, oriented along a diagonal of the
    frequency plane (group A 45 degrees, B 135 degrees, C both at half power each).

    Diagonals, because the image's borders, collimation edges and markers put their fine
    structure along the axes; the grain there would be lost in them.

    >>> [round(float(np.sqrt(np.mean(f ** 2))), 6) for f in grain_filters(32)]
    [1.0, 1.0, 1.0]
    """
    f = np.fft.fftfreq(n) * n
    fx, fy = np.meshgrid(f, f)
    r = np.hypot(fx, fy)
    nyq = n / 2.0
    lo, hi = FINE_BAND[0] * nyq, FINE_BAND[1] * nyq
    band = expit((r - lo) / 0.5) * expit((hi - r) / 0.5)
    theta = np.arctan2(fy, fx)
    lobes = [np.cos(theta - np.pi / 4) ** 2, np.cos(theta - 3 * np.pi / 4) ** 2]
    lobes = [lobe ** GRAIN_LOBE for lobe in lobes]
    shapes = [lobes[0], lobes[1], np.sqrt(0.5 * (lobes[0] ** 2 + lobes[1] ** 2))]
    out = []
    for shape in shapes:
        amp = band * shape
        amp[0, 0] = 0.0
        out.append(amp / np.sqrt(np.mean(amp**2) + 1e-12))
    return out


class CTRenderer(Renderer):
    """Draws studies from the chest CT's projection maps (see the module docstring)."""

    def __init__(self, cfg: SyntheticConfig) -> None:
        super().__init__(cfg)
        proj = ct.load_projections(progress=True)
        self.proj = proj
        self.maps = {v: _resize_maps(m, cfg.image_size) for v, m in proj.maps.items()}
        self.gi = {g: i for i, g in enumerate(ct.GROUPS)}
        self._patient_cache: tuple[int, dict[str, np.ndarray]] | None = None
        # the group pattern's filters live on the fixed signal grid (see SIGNAL_GRID)
        self._pattern = Renderer(cfg.replace(image_size=SIGNAL_GRID, anatomy="drawn"))
        self._grain_filters = grain_filters(cfg.image_size)

    # ------------------------------------------------------------------ per patient
    def _patient(self, row: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The patient's elastic field and group texture (cached while their studies render)."""
        key = int(row["patient_index"])
        if self._patient_cache is not None and self._patient_cache[0] == key:
            return self._patient_cache[1]
        n, cfg = self.cfg.image_size, self.cfg
        rng = np.random.default_rng([cfg.seed, 17, key])
        coarse = rng.normal(0.0, ELASTIC_SD, (2, 3, 3))
        field = np.stack([ndimage.zoom(c, n / 3, order=3, mode="nearest")[:n, :n] for c in coarse])
        out = {"elastic": field}
        if cfg.group_signal > 0:
            prng = np.random.default_rng([cfg.seed, 7, key])
            out["texture"] = self._pattern.group_texture(int(row["group_index"]), prng, (0.0, 0.0))
            grng = np.random.default_rng([cfg.seed, 19, key])
            white = np.fft.fft2(grng.standard_normal((n, n)))
            out["grain"] = np.fft.ifft2(white * self._grain_filters[int(row["group_index"])]).real
        self._patient_cache = (key, out)
        return out

    def _source_coords(self, row: Mapping[str, Any], elastic: np.ndarray) -> np.ndarray:
        """For each output pixel, where to read the CT maps (normalised [-1, 1] units, (2, n, n))."""
        ap = row["view"] == "AP"
        scale = float(row["scale"])
        c, s = np.cos(row["rot"]), np.sin(row["rot"])
        x, y = self.x - row["shift_x"], self.y - row["shift_y"]
        u, v = (c * x + s * y) / scale, (-s * x + c * y) / scale
        # the patient's shape: chest width, lung height, and a little shear
        sx = float(np.clip(1.0 + 2.0 * (row["thorax_w"] / 0.60 - 1.0), 0.8, 1.25))
        sy = float(np.clip(1.0 + 1.5 * ((row["base_y"] - row["apex_y"]) / 1.10 - 1.0), 0.85, 1.2))
        u = u / sx + 0.08 * (row["clav_tilt"] - 0.12) * v
        top = -0.85
        breath = float(row["breath"]) - (0.05 if ap else 0.0)
        v = top + (v - top) / (sy * (1.0 + 0.9 * breath))
        ev, eu = self._sample(elastic, np.stack([v, u]) / VIEW_ZOOM)
        return np.stack([v + ev, u + eu])

    # ------------------------------------------------------------------ drawing
    def render(self, row: Mapping[str, Any], image_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw one study; ``row`` merges a patient row and a study row. Returns (image, lung mask)."""
        cfg = self.cfg
        srng = np.random.default_rng([cfg.seed, 8, int(image_index)])
        patient = self._patient(row)
        coords = self._source_coords(row, patient["elastic"])
        maps = self._view_maps(row)
        texture = patient.get("texture")
        if texture is not None and texture.shape == maps.shape[1:]:
            # one resampling for the maps and the group pattern (the same coordinates)
            both = self._sample(np.concatenate([maps, texture[None]]), coords)
            m, tex = both[:-1], both[-1]
        else:
            m = self._sample(maps, coords)
            tex = None if texture is None else self._sample(texture[None], coords)[0]
        heart = self._heart(row, maps, coords)
        atten = self._attenuation(row, m, heart, coords)
        atten = atten + self._findings(row, m, coords, srng)
        if tex is not None:
            atten = atten + self._group_signal(row, m, heart, tex, patient["grain"])
        look = self.looks[int(row["site_index"])]
        img = self._expose(atten, row, look, srng)
        img = self._site_marks(img, look, row)
        mask = (m[self.gi["lung_len"]] > LUNG_MASK_CM).astype(np.uint8) * 255
        return img, mask

    def _group_signal(self, row, m, heart, tex, grain) -> np.ndarray:
        """The group pattern ``tex`` (resampled to the anatomy), as a faint modulation of the
        attenuation of the structures in :data:`SIGNAL_MAPS`, plus the fine ``grain`` in those
        of :data:`GRAIN_MAPS` (cm water-equivalent, added to the image's)."""
        g = self.gi
        parts = {"lung": float(row["lung_density"]) * m[g["lung"]], "heart": heart,
                 "bone": BONE_WEIGHT * float(row["bone"]) * m[g["bone"]], "lean": m[g["lean"]],
                 "abdomen": m[g["abdomen"]], "fat": m[g["fat"]]}
        modulated = PATH_CAP_CM * np.tanh(sum(parts[name] for name in SIGNAL_MAPS) / PATH_CAP_CM)
        tex = PATTERN_CAP * np.tanh(tex / PATTERN_CAP)
        grained = sum(parts[name] for name in GRAIN_MAPS)
        strength = self.cfg.group_signal * SIGNAL_TISSUE
        # the pattern's strength varies by patient (signal_amp); the grain's does not: a
        # spread would raise its RMS (what the visibility criterion measures) more than it
        # helps a model find it
        return strength * (float(row["signal_amp"]) * tex * modulated
                           + FINE_SHARE * grain * grained)

    def _view_maps(self, row: Mapping[str, Any]) -> np.ndarray:
        """The maps of the study's view, interpolated to the patient's axial rotation."""
        stack = self.maps[str(row["view"])]
        angles = np.asarray(self.proj.angles)
        a = float(np.clip(row["axial_rot"] + row["axial_jitter"], angles[0], angles[-1]))
        k = int(np.clip(np.searchsorted(angles, a) - 1, 0, len(angles) - 2))
        w = (a - angles[k]) / (angles[k + 1] - angles[k])
        return (1 - w) * stack[k] + w * stack[k + 1]

    @staticmethod
    def _sample(maps: np.ndarray, coords: np.ndarray) -> np.ndarray:
        """Bilinear resampling of (G, n, n) maps at normalised ``coords`` (rows, cols), (2, h, w)."""
        import torch
        import torch.nn.functional as F

        grid = torch.from_numpy(np.ascontiguousarray(coords[::-1].transpose(1, 2, 0),
                                                     dtype=np.float32))[None] * VIEW_ZOOM
        src = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))[None]
        with torch.no_grad():
            out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border",
                                align_corners=False)
        return out[0].numpy()

    def _heart(self, row, maps, coords) -> np.ndarray:
        """The heart map widened about its centre line for heart size and cardiomegaly."""
        grow = (1.0 + 1.5 * (row["heart_w"] / 0.31 - 1.0)) * (1.0 + 0.30 * row["true_cardiomegaly"]
                                           * min(self.cfg.finding_visibility, 1.5))
        cx = (self.proj.heart_centre[1] * 2 - 1) / VIEW_ZOOM
        # wider, not taller: the heart rests on the diaphragm (and the cardiothoracic ratio is
        # a width); taller would lay heart over liver
        scaled = np.stack([coords[0], cx + (coords[1] - cx) / grow])
        return self._sample(maps[self.gi["heart"]][None], scaled)[0] * grow ** 0.5

    def _attenuation(self, row, m, heart, coords) -> np.ndarray:
        """Line integral of attenuation (cm water-equivalent) for the patient's covariates."""
        g = self.gi
        fat = float(np.clip((row["bmi"] / 26.0) ** 1.2, 0.5, 2.2))
        lean = float(np.clip(0.85 + 0.15 * row["soft"], 0.8, 1.1))
        # a grown heart displaces lung; below the diaphragm (no lung, no heart) it cannot grow
        room = np.clip((m[g["lung_len"]] + m[g["heart"]]) / 3.0, 0, 1)
        grown = (heart - m[g["heart"]]) * room
        in_lung = np.clip(m[g["lung_len"]] / 4.0, 0, 1)
        atten = (lean * m[g["lean"]] + fat * m[g["fat"]] + float(row["lung_density"]) * m[g["lung"]]
                 + m[g["heart"]] + grown * (1 - LUNG_DENSITY * in_lung)
                 + m[g["abdomen"]] + BONE_WEIGHT * float(row["bone"]) * m[g["bone"]]
                 + m[g["airway"]])
        return atten + self._breasts(row, coords)

    def _breasts(self, row, coords) -> np.ndarray | float:
        """Breast tissue over the lower chest (female patients; size grows with BMI)."""
        size = float(row["breast"])
        if size <= 0:
            return 0.0
        v, u = coords
        out = 0.0
        for side in (-1.0, 1.0):
            rx, ry = 0.30 * (0.75 + 0.25 * size), 0.24 * (0.75 + 0.25 * size)
            r2 = ((u - side * 0.42) / rx) ** 2 + ((v - 0.22) / ry) ** 2
            lower = np.clip((v - 0.22 + 0.6 * ry) / (0.5 * ry), 0, 1)
            out = out + np.sqrt(np.clip(1 - r2, 0, 1)) * lower
        return 2.0 * size * out

    def _findings(self, row, m, coords, srng) -> np.ndarray:
        """Effusion (fluid with a meniscus), consolidation and a nodule, inside the lungs."""
        vis = self.cfg.finding_visibility
        lung_len = m[self.gi["lung_len"]]
        out = np.zeros_like(lung_len)
        if vis <= 0:
            return out
        v, u = coords
        if row["true_effusion"]:
            out += vis * self._effusion(row, lung_len, u)
        if row["true_opacity"]:
            r = np.hypot((u - row["opacity_x"]) / row["opacity_r"],
                         (v - row["opacity_y"]) / (0.8 * row["opacity_r"]))
            patchy = ndimage.gaussian_filter(srng.standard_normal(u.shape), 1.0)
            blob = np.exp(-1.5 * r**2) * np.clip(0.8 + 0.6 * patchy, 0, 1.5)
            out += 0.45 * vis * blob * lung_len * (1 - LUNG_DENSITY)
        if row["true_nodule"]:
            radius = 1.8 * row["nodule_r"]
            d2 = (u - row["nodule_x"]) ** 2 + (v - row["nodule_y"]) ** 2
            chord_cm = 2 * np.sqrt(np.clip(radius**2 - d2, 0, None)) * ct.FIELD_MM / 20.0
            out += vis * chord_cm * (1 - LUNG_DENSITY) * (lung_len > 0.5)
        return out

    def _effusion(self, row, lung_len, u) -> np.ndarray:
        """Fluid filling each affected costophrenic recess, its surface rising laterally."""
        n = self.cfg.image_size
        lung = lung_len > 1.0
        rows = np.arange(n)[:, None]
        base = np.where(lung.any(axis=0), n - 1 - np.argmax(lung[::-1], axis=0), 0)[None, :]
        height = row["effusion_h"] * n / 2 * 1.8
        sides = (-1.0, 1.0) if row["effusion_side"] == 0 else (float(row["effusion_side"]),)
        out = np.zeros_like(lung_len)
        for side in sides:
            lateral = np.clip(side * u, 0, None)
            surface = base - height * (0.55 + 1.2 * np.clip(lateral - 0.15, 0, 1) ** 1.2)
            depth = np.clip((rows - surface) / (0.04 * n), 0, 1)
            inside = np.clip(lung_len / 2.0, 0, 1) * (side * u > 0.05)
            # fluid layers behind the lung up to the surface: a few cm of water that whites
            # out the costophrenic angle and the hemidiaphragm, curving up the lateral wall
            out += depth * inside * (FLUID_CM + 0.5 * lung_len) * (1 - LUNG_DENSITY)
        out = _gaussian(out, 0.01 * n + 0.5)
        return out

    # ------------------------------------------------------------------ acquisition
    def _expose(self, atten, row, look: SiteLook, srng) -> np.ndarray:
        """Transmission, scatter, quantum noise, detector blur, log and the site's tone curve."""
        n, cfg = self.cfg.image_size, self.cfg
        primary = np.exp(-MU_WATER * atten)
        spr = (0.45 if row["view"] == "AP" else 0.2) * (1.0 + 0.3 * max(row["bmi"] - 27.0, 0) / 10)
        scatter = spr * _broad(primary, 0.08)
        signal = (primary + scatter) * np.exp(float(row["exposure"]))
        sd = 0.02 * cfg.noise * look.noise * np.sqrt(signal.mean() / np.maximum(signal, 1e-4))
        signal = signal * (1.0 + np.minimum(sd, 0.5) * srng.standard_normal(signal.shape))
        log = -np.log(np.maximum(signal, 1e-4))
        blur = look.blur * n / 256.0 + 0.3
        smooth = _gaussian(log, blur, mode="nearest")
        # dynamic-range compression, as every radiograph's processing does: flatten the large
        # scale so lung detail and the mediastinum share the grey range
        broad = _broad(smooth, 0.1)
        smooth = smooth - DRC * (broad - broad.mean())
        if look.sharpen > 0:
            coarse = _gaussian(smooth, 4 * blur, mode="nearest")
            smooth = smooth + look.sharpen * (smooth - coarse)
        lo = 0.6 + 2.0 * look.offset
        hi = lo + 2.6 * look.window
        level = np.clip((smooth - lo) / (hi - lo), 0, 1)
        return level ** look.gamma
