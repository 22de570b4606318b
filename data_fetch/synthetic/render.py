"""Drawing one frontal chest radiograph from a patient's anatomy and a study's settings.

The renderer works like a radiograph: it sums attenuation along the beam (soft tissue whose
thickness follows the body's cross-section, air in the lungs, bone in ribs, clavicles, spine
and humeri, the heart and the abdomen below the diaphragm), adds the group texture and the
findings, adds quantum noise whose size grows where few photons arrive, and maps the result
through the site's tone curve: dense tissue is bright, air is dark. Shapes are smooth
implicit functions of the pixel coordinates, so every image is drawn directly at its target
size without resampling. All work is vectorised numpy; a 64 px image takes a few ms.

>>> from data_fetch.synthetic.config import SyntheticConfig
>>> from data_fetch.synthetic.anatomy import sample_patients, sample_studies
>>> cfg = SyntheticConfig(n_patients=2, image_size=64)
>>> pats = sample_patients(cfg); studies = sample_studies(cfg, pats)
>>> r = Renderer(cfg)
>>> img, mask = r.render({**pats.iloc[0].to_dict(), **studies.iloc[0].to_dict()}, image_index=0)
>>> img.shape, img.dtype, mask.dtype
((64, 64), dtype('uint8'), dtype('uint8'))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from scipy.special import expit

from data_fetch.synthetic.config import SyntheticConfig

WORLD_SEED = 20220511   # fixes the group patterns and the site looks: the same in every cohort
SIGNAL_UNIT = 0.016     # attenuation std of the group texture at group_signal = 1

_FONT = {
    "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
}


@dataclass(frozen=True)
class SiteLook:
    """One acquisition site's scanner look (tone curve, noise, processing, marker, border)."""

    gamma: float          # tone-curve exponent
    window: float         # attenuation mapped to white
    offset: float         # attenuation mapped to black
    noise: float          # quantum-noise multiplier
    blur: float           # detector blur (pixels, sd) before sharpening
    sharpen: float        # unsharp-mask gain (edge enhancement)
    border: float         # grey level outside the collimated field (0 = black, 1 = white)
    collimation: tuple    # field margins left, right, top, bottom (fraction of the image)
    marker: str           # "L" or "R"
    marker_corner: int    # 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right
    marker_size: float    # letter height (fraction of the image)
    marker_box: bool      # a white box around the letter


def site_looks(n_sites: int, style: float = 1.0) -> list[SiteLook]:
    """The fixed scanner looks of sites 1..n; ``style`` scales how different they are."""
    rng = np.random.default_rng(WORLD_SEED + 1)
    looks = []
    for i in range(n_sites):
        u = rng.uniform(-1, 1, 8)
        marker = "L" if (i % 3 != 2 or style == 0) else "R"
        # images are shown with the patient's left on the viewer's right (PA and AP alike), so
        # an "L" sits in a right-hand corner and an "R" in a left-hand one
        row = [0, 0, 1, 1][i % 4] if style > 0 else 0
        corner = 2 * row + (1 if marker == "L" else 0)
        looks.append(SiteLook(
            gamma=1.0 + 0.18 * style * u[0], window=1.50 + 0.15 * style * u[1],
            offset=0.04 + 0.04 * style * u[2], noise=1.0 + 0.45 * style * u[3],
            blur=max(0.35, 0.6 + 0.3 * style * u[4]), sharpen=max(0.0, 0.5 * style * (u[5] + 0.3)),
            border=float(i % 2 == 1) if style > 0 else 0.0,
            collimation=tuple(np.clip(0.03 + 0.035 * style * rng.uniform(0, 1, 4), 0, 0.12)),
            marker=marker, marker_corner=corner,
            marker_size=0.075 + 0.03 * style * u[6], marker_box=bool(i % 4 == 2 and style > 0),
        ))
    return looks


def _soft(d: np.ndarray, edge: float) -> np.ndarray:
    """Smooth 0-1 step, 1 where ``d > 0``; ``edge`` is the transition width."""
    return np.clip(d * (0.25 / edge) + 0.5, 0.0, 1.0)


class Renderer:
    """Draws studies for one config; holds the pixel grids and the group filters."""

    def __init__(self, cfg: SyntheticConfig) -> None:
        self.cfg = cfg
        n = cfg.image_size
        c = (np.arange(n) + 0.5) / n * 2.0 - 1.0
        self.x, self.y = np.meshgrid(c, c)
        self.px = 2.0 / n                         # one pixel in normalised units
        self.edge = 0.6 * self.px
        self.looks = site_looks(cfg.n_sites, cfg.site_style)
        self._collimated: dict[SiteLook, np.ndarray] = {}
        self._filters = self._group_filters()
        world = np.random.default_rng(WORLD_SEED)
        self._shared = [np.fft.fft2(world.standard_normal((n, n))) for _ in range(3)]

    # -------------------------------------------------------------------- group signal
    def _group_filters(self) -> list[np.ndarray]:
        """Each group's amplitude spectrum: a radial band (flat above ``signal_knee``, rising as
        f^-slope below it) with a group-specific orientation."""
        n, cfg = self.cfg.image_size, self.cfg
        f = np.fft.fftfreq(n) * n
        fx, fy = np.meshgrid(f, f)
        r = np.hypot(fx, fy)
        nyq = n / 2.0
        lo, hi = cfg.signal_band[0] * nyq, cfg.signal_band[1] * nyq
        knee = cfg.signal_knee * nyq
        rise = (np.minimum(np.maximum(r, 0.5), knee) / knee) ** -cfg.signal_slope
        band = expit((r - lo) / 0.5) * expit((hi - r) / 0.5) * rise
        theta = np.arctan2(fy, fx)
        filters = []
        for g in range(3):
            orient = np.cos(theta - g * np.pi / 3.0) ** 2
            amp = band * (0.15 + orient**4)
            amp[0, 0] = 0.0
            filters.append(amp / np.sqrt(np.mean(amp**2) + 1e-12))
        return filters

    def group_texture(self, g: int, patient_rng: np.random.Generator,
                      shift: tuple[float, float]) -> np.ndarray:
        """The group texture for one patient, moved with the patient (unit std at strength 1)."""
        n, cfg = self.cfg.image_size, self.cfg
        own = np.fft.fft2(patient_rng.standard_normal((n, n)))
        spec = np.sqrt(cfg.signal_shared) * self._shared[g] + np.sqrt(1 - cfg.signal_shared) * own
        f = np.fft.fftfreq(n)
        ramp = np.exp(-2j * np.pi * (f[None, :] * shift[0] + f[:, None] * shift[1]) * n / 2.0)
        return np.fft.ifft2(spec * self._filters[g] * ramp).real

    # -------------------------------------------------------------------- drawing
    def render(self, row: Mapping[str, Any], image_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Draw one study; ``row`` merges a patient row and a study row. Returns (image, lung mask)."""
        cfg = self.cfg
        prng = np.random.default_rng([cfg.seed, 7, int(row["patient_index"])])
        srng = np.random.default_rng([cfg.seed, 8, int(image_index)])
        u, v = self._patient_frame(row)
        mu, lungs, body = self._anatomy(row, u, v, prng)
        mu = mu + self._findings(row, u, v, lungs, srng)
        if cfg.group_signal > 0:
            tex = self.group_texture(int(row["group_index"]), prng,
                                     (float(row["shift_x"]), float(row["shift_y"])))
            mu = mu + cfg.group_signal * SIGNAL_UNIT * float(row["signal_amp"]) * tex * body
        look = self.looks[int(row["site_index"])]
        img = self._detector(mu, look, row, srng)
        img = self._site_marks(img, look, row)
        mask = (lungs > 0.5).astype(np.uint8) * 255
        return img, mask

    def _patient_frame(self, row: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        ap = row["view"] == "AP"
        scale = float(row["scale"]) * (1.06 if ap else 1.0)
        c, s = np.cos(row["rot"]), np.sin(row["rot"])
        x, y = self.x - row["shift_x"], self.y - row["shift_y"] + (0.04 if ap else 0.0)
        return (c * x + s * y) / scale, (-s * x + c * y) / scale

    def _anatomy(self, row: Mapping[str, Any], u: np.ndarray, v: np.ndarray,
                 prng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        e = self.edge
        ap = row["view"] == "AP"
        soft_t, body = self._body(row, u, v)
        lungs, depth, diaphragm = self._lungs(row, u, v, ap)
        heart = self._heart(row, u, v, ap)
        lungs = lungs * (1 - heart)
        depth = depth * (1 - heart)
        heart = heart * _soft(diaphragm + 0.03 - v, 0.03)
        vessels = self._vessels(row, u, v, prng) * lungs
        bone = self._bones(row, u, v, ap, diaphragm) * row["bone"]
        texture = self._parenchyma(prng) * lungs
        gastric = 0.0
        if row["gastric"]:
            gastric = _soft(1 - np.hypot((u - 0.33) / 0.09, (v - diaphragm - 0.07) / 0.045), 0.1)
            gastric = gastric * (v > diaphragm)
        mediastinum = _soft(0.11 - np.abs(u - 0.01), 0.03) * _soft(v - row["apex_y"] + 0.1, 0.05)
        abdomen = _soft(v - diaphragm, 2 * e) * soft_t * _soft(row["thorax_w"] - np.abs(u), 0.06)
        mu = (1.0 * row["soft"] * soft_t + 0.28 * heart + 0.18 * mediastinum - 0.70 * depth
              + 0.28 * abdomen + 0.17 * vessels + 0.05 * texture + 0.30 * bone
              - 0.25 * gastric * body)
        mu = mu + self._breasts(row, u, v) * body
        return mu, lungs, body

    def _body(self, row, u, v):
        """Soft-tissue thickness of torso, neck, shoulders and arms; and the body mask."""
        e, bw = self.edge, row["body_w"]
        shoulder = bw + 0.10
        width = 0.17 + (shoulder - 0.17) * np.clip((v + 0.97) / 0.24, 0, 1) ** 0.6
        width = width + (bw - shoulder) * np.clip((v + 0.62) / 0.4, 0, 1)
        torso = np.sqrt(np.clip(1 - (u / width) ** 2, 0, 1))
        torso_mask = _soft(width - np.abs(u), e)
        arm_c = shoulder + row["arm_gap"] + 0.10
        arm = np.sqrt(np.clip(1 - ((np.abs(u) - arm_c) / 0.10) ** 2, 0, 1)) * _soft(v + 0.80, 0.04)
        thickness = np.maximum(torso, 0.6 * arm) * (0.75 + 0.25 * np.clip(v + 0.9, 0, 1))
        body = np.maximum(torso_mask, _soft(arm - 0.05, 0.05))
        return thickness, body

    def _lungs(self, row, u, v, ap):
        """Both lung fields (soft masks), their air depth and the diaphragm height."""
        e = self.edge
        breath = row["breath"] - (0.05 if ap else 0.0)
        masks, depths, diaph = [], [], np.zeros_like(u)
        for side in (-1.0, 1.0):                 # -1: patient's right (viewer's left)
            us = side * u
            apex = row["apex_y"]
            base = row["base_y"] + breath - (row["right_high"] if side < 0 else 0.0)
            wl = row["thorax_w"] - 0.035
            xa = 0.26
            t = np.clip((v - apex) / (base - apex), 0, 1.2)
            grow = np.clip(t / 0.55, 0, 1) ** 0.55
            lat = xa + (wl - xa) * grow * (0.93 + 0.09 * t)
            med = xa - (xa - 0.075) * np.clip(t / 0.22, 0, 1) ** 0.7
            d = np.clip((us - 0.075) / (wl - 0.075), 0, 1.3)
            dprime = 0.3 + 0.7 * d
            dome = base - row["dome"] * 4 * dprime * (1 - dprime) / 0.84 * 0.84
            dome = np.where(d > 1, base, dome)
            inside = (_soft(v - apex, 2 * e) * _soft(lat - us, e) * _soft(us - med, e)
                      * _soft(dome - v, e))
            if side > 0:
                knob = _soft(1 - np.hypot((u - 0.085) / row["knob_r"],
                                          (v - apex - 0.27) / row["knob_r"]), 0.15)
                inside = inside * (1 - knob)
            centre = 0.5 * (lat + med)
            half = np.maximum(0.5 * (lat - med), 1e-3)
            depth = inside * (0.55 + 0.45 * np.sqrt(np.clip(1 - ((us - centre) / half) ** 2, 0, 1)))
            depth = depth * (0.75 + 0.35 * np.clip(t, 0, 1))
            masks.append(inside)
            depths.append(depth)
            diaph = np.where(u * side > 0, dome, diaph)
        return np.maximum(*masks), masks[0] * 0 + depths[0] + depths[1], diaph

    def _heart(self, row, u, v, ap):
        """The cardiac silhouette (wider to the patient's left); AP and cardiomegaly enlarge it."""
        grow = (1.13 if ap else 1.0) * (1.0 + 0.38 * row["true_cardiomegaly"]
                                         * min(self.cfg.finding_visibility, 1.5))
        cy = row["base_y"] + row["breath"] - 0.27
        w = row["heart_w"] * grow
        wx = np.where(u < row["heart_x"], 0.62 * w, w)
        hy = np.where(v > cy, 1.7, 1.0) * row["heart_h"] * (1 + 0.3 * (grow - 1))
        r = np.hypot((u - row["heart_x"]) / wx, (v - cy) / hy)
        return _soft(1 - r, 0.02 / w + self.edge)

    def _ribs(self, row, us, v, diaphragm):
        """Posterior and anterior ribs as bands of a warped vertical coordinate."""
        e = self.px
        w = row["thorax_w"]
        d = np.clip((us - 0.04) / w, 0, 1.1)
        spacing, y0 = row["rib_spacing"], row["rib_y0"]
        post_c = y0 - 0.14 * d + 1.4 * row["rib_curve"] * d**2
        k = (v - post_c) / spacing
        k_warp = k - 0.04 * np.clip(k, 0, None) ** 1.5
        phase = k_warp - np.floor(k_warp)
        dist = np.abs(phase - 0.5) * spacing
        half = 0.18 * spacing
        keep = _soft(k_warp + 0.5, 0.3) * _soft(8.7 - k_warp, 0.4)
        band = _soft(half - dist, e) * keep
        cortex = np.exp(-((dist - half) / (0.5 * e + 0.004)) ** 2) * keep
        lateral = _soft(1.02 - d, 0.01) * _soft(us - 0.03, e)
        below = 0.25 + 0.75 * _soft(diaphragm + 0.05 - v, 0.06)
        post = (0.45 * band + 0.55 * cortex) * lateral * below
        ant_c = y0 + 0.15 + row["rib_curve"] + 0.30 * (1 - d)
        ka = (v - ant_c) / (1.05 * spacing)
        pa = ka - np.floor(ka)
        dista = np.abs(pa - 0.5) * spacing
        ant = _soft(0.16 * spacing - dista, e) * _soft(ka + 0.5, 0.2) * _soft(4.5 - ka, 0.2)
        ant = ant * _soft(d - 0.38, 0.05) * lateral
        return post + 0.45 * ant

    def _bones(self, row, u, v, ap, diaphragm):
        e = self.edge
        au = np.abs(u)
        ribs = self._ribs(row, au, v, diaphragm)
        # clavicles: from the sternal notch out and up to the shoulders
        dc = np.clip((au - 0.06) / 0.52, 0, 1.2)
        tilt = row["clav_tilt"] * (0.3 if ap else 0.6)
        cy = row["clav_y"] - (0.05 if ap else 0.0) - tilt * dc + 0.025 * np.sin(np.pi * dc * 1.5)
        clav = _soft(0.022 - np.abs(v - cy), e) * _soft(dc, 0.01) * _soft(1.02 - dc, 0.02)
        clav = clav * (1.0 + 0.5 * np.exp(-((np.abs(v - cy) - 0.022) / 0.006) ** 2))
        # spine: vertebral bodies with disc spaces, pedicles
        spacing = row["rib_spacing"] * 0.95
        kv = (v - row["rib_y0"]) / spacing
        disc = np.abs(kv - np.floor(kv) - 0.5)
        spine = _soft(0.06 - au, 2 * e) * (0.75 + 0.25 * _soft(0.40 - disc, 0.05))
        ped = _soft(1 - np.hypot((au - 0.045) / 0.014, (disc - 0.2) * spacing / 0.02), 0.2)
        spine = 0.45 * (spine + 0.4 * ped * (v > -0.85)) * (0.6 + 0.4 * _soft(v + 0.3, 0.2))
        # humeral heads and shafts; scapulae over the lungs on AP
        hx = row["body_w"] + 0.12 + row["arm_gap"]
        head = _soft(1 - np.hypot((au - hx + 0.04) / 0.10, (v + 0.74) / 0.10), 0.1)
        shaft = _soft(0.045 - np.abs(au - hx - 0.01), e) * _soft(v + 0.74, 0.02)
        scap_x = row["thorax_w"] - (0.12 if ap else 0.0)
        scap = _soft(1 - np.hypot((au - scap_x - 0.06) / 0.13, (v + 0.45) / 0.26), 0.1)
        return ribs + 0.9 * clav + spine + 0.9 * np.maximum(head, shaft) + 0.25 * scap

    def _vessels(self, row, u, v, prng):
        """Pulmonary vessels branching out from each hilum, fading towards the periphery."""
        hy = row["apex_y"] + 0.50
        ox, oy, ang, length, width, sides = [], [], [], [], [], []
        for side in (-1.0, 1.0):
            angles = np.sort(prng.uniform(-0.2 * np.pi, 1.05 * np.pi, 9))
            lengths = prng.uniform(0.25, 0.5, 9)
            hx = side * 0.15
            ox += [np.full(9, hx), hx + side * np.cos(angles) * lengths * 0.45]
            oy += [np.full(9, hy), hy + np.sin(angles) * lengths * 0.45]
            ang += [angles, angles + prng.normal(0, 0.35, 9)]
            length += [lengths, lengths * 0.7]
            width += [np.full(9, 0.013), np.full(9, 0.008)]
            sides += [np.full(18, side)]
        n, out = self.cfg.image_size, np.zeros_like(u)
        ox, oy, ang, length, width, side = (np.concatenate(a) for a in
                                            (ox, oy, ang, length, width, sides))
        for k in range(len(ox)):
            self._ray(out, u, v, n, ox[k], oy[k], side[k] * np.cos(ang[k]), np.sin(ang[k]),
                      length[k], width[k])
        hilum = sum(np.exp(-(((u - s * 0.16) / 0.06) ** 2 + ((v - hy) / 0.09) ** 2)) for s in (-1, 1))
        return np.minimum(out, 1.5) + 0.8 * hilum

    def _ray(self, out, u, v, n, ox, oy, dx, dy, length, width) -> None:
        """Add one tapering vessel segment to ``out``, computed inside its bounding box only."""
        x0, y0 = ox, oy
        x1, y1 = ox + dx * length, oy + dy * length
        pad = 2 * width + 0.12
        # patient frame ~ image frame up to the small pose change: pad the box generously
        c0, c1 = (min(x0, x1) - pad + 1) / 2 * n, (max(x0, x1) + pad + 1) / 2 * n
        r0, r1 = (min(y0, y1) - pad + 1) / 2 * n, (max(y0, y1) + pad + 1) / 2 * n
        cs = slice(max(0, int(c0)), min(n, int(c1) + 1))
        rs = slice(max(0, int(r0)), min(n, int(r1) + 1))
        pu, pv = u[rs, cs] - ox, v[rs, cs] - oy
        frac = (pu * dx + pv * dy) / length
        perp = (pu * dy - pv * dx) / (width * np.clip(1 - 0.7 * frac, 0.3, 1) + 0.5 * self.px)
        out[rs, cs] += np.clip(1 - perp * perp, 0, None) * np.clip(1 - frac, 0, 1) * (frac > 0)

    def _parenchyma(self, prng):
        """Fine lung texture (1/f noise), persistent for the patient."""
        n = self.cfg.image_size
        f = np.fft.fftfreq(n) * n
        r = np.hypot(f[None, :], f[:, None])
        spec = np.fft.fft2(prng.standard_normal((n, n))) / np.maximum(r, 1.0) ** 0.9
        tex = np.fft.ifft2(spec).real
        return tex / (tex.std() + 1e-9)

    def _breasts(self, row, u, v):
        """Breast shadows over the lower lung fields (female patients; size grows with BMI)."""
        size = row["breast"]
        if size <= 0:
            return 0.0
        out = 0.0
        for side in (-1.0, 1.0):
            cx, cy = side * 0.40, row["base_y"] - 0.12
            rx, ry = 0.24 * (0.7 + 0.3 * size), 0.20 * (0.7 + 0.3 * size)
            r2 = ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2
            lower = _soft(v - cy + 0.3 * ry, 0.08)
            out = out + _soft(1 - r2, 0.12) * lower * (0.6 + 0.4 * np.sqrt(np.clip(1 - r2, 0, 1)))
        return 0.14 * size * out

    def _findings(self, row, u, v, lungs, srng):
        """Effusion (blunted costophrenic angle, meniscus), opacity and nodule."""
        vis = self.cfg.finding_visibility
        mu = np.zeros_like(u)
        if vis <= 0:
            return mu
        if row["true_effusion"]:
            sides = (-1.0, 1.0) if row["effusion_side"] == 0 else (float(row["effusion_side"]),)
            for side in sides:
                us = side * u
                base = row["base_y"] + row["breath"]
                level = base - row["effusion_h"] - 0.25 * np.clip(us - 0.15, 0, 1) ** 1.5 * 0
                menis = base - row["effusion_h"] * (1.0 - 1.6 * np.clip(us - 0.2, 0, 1))
                fluid = _soft(v - menis, 0.035) * _soft(us, 0.01) * np.maximum(lungs, 0)
                mu = mu + 0.55 * vis * fluid * _soft(level + 0.5, 1)
        if row["true_opacity"]:
            r = np.hypot((u - row["opacity_x"]) / row["opacity_r"],
                         (v - row["opacity_y"]) / (0.8 * row["opacity_r"]))
            blob = np.exp(-1.5 * r**2) * (0.75 + 0.25 * srng.standard_normal(u.shape).clip(-2, 2))
            mu = mu + 0.35 * vis * blob * lungs
        if row["true_nodule"]:
            r = np.hypot(u - row["nodule_x"], v - row["nodule_y"]) / row["nodule_r"]
            mu = mu + 0.30 * vis * _soft(1 - r, 0.15)
        return mu

    # -------------------------------------------------------------------- acquisition
    def _detector(self, mu, look: SiteLook, row, srng) -> np.ndarray:
        """Quantum noise, detector blur, edge enhancement and the site's tone curve."""
        from scipy.ndimage import gaussian_filter

        sigma = 0.018 * self.cfg.noise * look.noise * np.exp(0.6 * (mu - 0.8))
        sigma = sigma * (64.0 / self.cfg.image_size) ** -0.0
        mu = mu + sigma * srng.standard_normal(mu.shape)
        blur = look.blur * self.cfg.image_size / 256.0 + 0.3
        smooth = gaussian_filter(mu, blur, mode="nearest")
        if look.sharpen > 0:
            coarse = gaussian_filter(smooth, 4 * blur, mode="nearest")
            smooth = smooth + look.sharpen * (smooth - coarse)
        level = (smooth + float(row["exposure"]) - look.offset) / look.window
        return np.clip(level, 0, 1) ** look.gamma

    def _site_marks(self, img: np.ndarray, look: SiteLook, row) -> np.ndarray:
        """Collimation border and the burnt-in laterality marker; returns uint8."""
        inside = self._collimated.get(look)
        if inside is None:          # the field of one site, the same for all its images
            left, right, top, bottom = look.collimation
            inside = (_soft(self.x + 1 - 2 * left, self.edge) * _soft(1 - 2 * right - self.x, self.edge)
                      * _soft(self.y + 1 - 2 * top, self.edge) * _soft(1 - 2 * bottom - self.y, self.edge))
            self._collimated[look] = inside
        img = img * inside + look.border * (1 - inside)
        img = self._draw_marker(img, look, float(row["marker_jitter"]))
        return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)

    def _draw_marker(self, img: np.ndarray, look: SiteLook, jitter: float) -> np.ndarray:
        n = self.cfg.image_size
        bitmap = np.array([[c == "1" for c in line] for line in _FONT[look.marker]], float)
        scale = max(1, int(round(look.marker_size * n / 7)))
        glyph = np.kron(bitmap, np.ones((scale, scale)))
        if look.marker_box:
            glyph = np.pad(1 - glyph, scale, constant_values=1.0) * 0.0 + np.pad(glyph, scale)
            glyph = np.pad(glyph, scale, constant_values=1.0)
        gh, gw = glyph.shape
        margin = int(round((0.09 + 0.015 * jitter) * n))
        r0 = margin if look.marker_corner < 2 else n - margin - gh
        c0 = margin if look.marker_corner % 2 == 0 else n - margin - gw
        r0, c0 = int(np.clip(r0, 0, n - gh)), int(np.clip(c0, 0, n - gw))
        patch = img[r0:r0 + gh, c0:c0 + gw]
        img[r0:r0 + gh, c0:c0 + gw] = np.maximum(patch, 0.97 * glyph)
        return img
