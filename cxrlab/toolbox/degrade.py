"""Image degradations for chapter 4: what survives when the picture is spoiled?

Gichoya et al. 2022 (Lancet Digital Health 4:e406) filtered, shrank, blurred, clipped and cut
up chest X-rays and found that race recognition survives long after a radiologist sees nothing.
This module provides those degradations as small functions and as torchvision-style callable
transforms (plug them into ``CXRDataset(..., transform=...)`` or ``train.predict(...,
transform=...)``).

Inputs. Every function takes a numpy array or a torch tensor whose last two axes are the image:
``(H, W)``, ``(1, H, W)`` or ``(N, 1, H, W)``. It returns the same type, shape, dtype and (for
tensors) device. Float images are taken to be in [0, 1]; uint8 images are scaled to [0, 1],
degraded, then rounded and clipped back to uint8 (so the negative half of a high-pass image is
lost: prefer float).

Size convention. The paper worked on 224-px images: a Fourier radius ``d`` or a blur ``sigma``
is given on that grid and rescaled to the image at hand by ``size / 224`` (``reference_size``).
For the Fourier filters this keeps the same *fraction of the spectrum* (d = 112 is the Nyquist
frequency along an axis whatever the size; d > 112 * sqrt(2) ~ 158 is beyond every frequency),
so the paper's whole d axis (1-200) maps onto a 64-px demo image. Pass ``reference_size=None``
to read ``d`` in the image's own frequency units instead (cycles per image along each axis,
which is what stays physically the same when an image is resampled). For the blur both readings
agree: sigma pixels at 224 px are ``sigma * size / 224`` pixels at ``size``.

>>> import numpy as np
>>> x = np.random.default_rng(0).random((64, 64)).astype(np.float32)
>>> low, high = low_pass(x, 25), high_pass(x, 25)
>>> bool(np.allclose(low + high, x, atol=1e-5))
True
>>> HighPass(100)
HighPass(d=100)
"""
from __future__ import annotations

import math
from functools import lru_cache
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from cxrlab.toolbox.checks import passed, require
from cxrlab.core.train import release_unused_memory

REFERENCE_SIZE = 224
GRID = 3

Array = TypeVar("Array", np.ndarray, torch.Tensor)


# --------------------------------------------------------------------------- input handling
def _as_float_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``x`` as a float tensor (float64 stays float64), uint8 scaled to [0, 1]."""
    if x.ndim < 2:
        raise ValueError(f"expected an image with at least 2 dimensions (H, W), got shape {tuple(x.shape)}")
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    if not t.is_floating_point():
        raise TypeError(f"expected a float or uint8 image, got dtype {t.dtype}")
    return t


def _restore(out: torch.Tensor, like: np.ndarray | torch.Tensor) -> Any:
    """Return ``out`` as the same kind of object (type, dtype, device) as ``like``."""
    uint8 = like.dtype == np.uint8 if isinstance(like, np.ndarray) else like.dtype == torch.uint8
    if uint8:
        out = (out.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    if isinstance(like, np.ndarray):
        result = out.detach().cpu().numpy()
        return result if uint8 else result.astype(like.dtype, copy=False)
    return out if uint8 else out.to(like.dtype)


def _as_4d(t: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
    """Reshape ``(..., H, W)`` to ``(B, 1, H, W)`` for conv/interpolate; return the old shape."""
    return t.reshape(-1, 1, *t.shape[-2:]), t.shape


# --------------------------------------------------------------------------- Fourier filters
def scaled_length(value: float, size: int, reference_size: int | None = REFERENCE_SIZE) -> float:
    """A length given on the ``reference_size`` grid, in pixels of a ``size``-px image.

    >>> scaled_length(2.0, 64)      # a 2-px blur at 224 px is 0.57 px at 64 px
    0.5714285714285714
    """
    return float(value) if reference_size is None else float(value) * size / reference_size


def frequency_radius(h: int, w: int, reference_size: int | None = REFERENCE_SIZE) -> torch.Tensor:
    """Distance of each FFT coefficient from zero frequency, in units of the reference grid.

    The result is laid out like ``torch.fft.fft2``'s output (no shift). With the default
    ``reference_size=224``, an axis frequency of ``k`` cycles per image on an ``h``-px image is
    reported as ``k * 224 / h``; with ``None`` it is reported as ``k`` (cycles per image).

    >>> frequency_radius(4, 4, None)[0].tolist()
    [0.0, 1.0, 2.0, 1.0]
    """
    fy = torch.fft.fftfreq(h, dtype=torch.float64) * (reference_size or h)
    fx = torch.fft.fftfreq(w, dtype=torch.float64) * (reference_size or w)
    # fftfreq puts the Nyquist bin at -n/2; its distance is the same as +n/2, so masks stay
    # Hermitian-symmetric and the filtered image is real.
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def fft_mask(h: int, w: int, kind: str, d: float, d_high: float | None = None,
             reference_size: int | None = REFERENCE_SIZE) -> torch.Tensor:
    """Boolean mask of the Fourier coefficients a filter keeps.

    ``kind``: ``"low"`` keeps radius <= d; ``"high"`` keeps radius > d (so low + high is the
    whole spectrum); ``"band"`` keeps d < radius <= d_high; ``"notch"`` removes that band.
    Masks are cached (a transform applied image by image reuses them); treat them as read-only.
    """
    return _cached_mask(int(h), int(w), kind, float(d), None if d_high is None else float(d_high),
                        reference_size)


@lru_cache(maxsize=256)
def _cached_mask(h: int, w: int, kind: str, d: float, d_high: float | None,
                 reference_size: int | None) -> torch.Tensor:
    r = frequency_radius(h, w, reference_size)
    if kind == "low":
        return r <= d
    if kind == "high":
        return r > d
    if d_high is None:
        raise ValueError(f"a {kind!r} filter needs d_high (the outer radius)")
    if d_high < d:
        raise ValueError(f"the outer radius d_high={d_high} must be >= the inner radius d={d}")
    band = (r > d) & (r <= d_high)
    if kind == "band":
        return band
    if kind == "notch":
        return ~band
    raise ValueError(f"unknown filter kind {kind!r}; choose low, high, band or notch")


def apply_fft_mask(x: Array, mask: torch.Tensor) -> Array:
    """Keep only the Fourier coefficients where ``mask`` is True (unshifted layout)."""
    t = _as_float_tensor(x)
    if tuple(mask.shape) != tuple(t.shape[-2:]):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match image shape {tuple(t.shape[-2:])}")
    spectrum = torch.fft.fft2(t)
    out = torch.fft.ifft2(spectrum * mask.to(t.device)).real
    return _restore(out, x)


def _fft_filter(x: Array, kind: str, d: float, d_high: float | None,
                reference_size: int | None) -> Array:
    h, w = x.shape[-2:]
    return apply_fft_mask(x, fft_mask(h, w, kind, d, d_high, reference_size))


def low_pass(x: Array, d: float, reference_size: int | None = REFERENCE_SIZE) -> Array:
    """Keep Fourier frequencies within radius ``d`` (on the 224-px grid): a blur with ringing.

    >>> img = np.full((8, 8), 0.5); float(low_pass(img, 0).mean())   # d=0 keeps only the mean
    0.5
    """
    return _fft_filter(x, "low", d, None, reference_size)


def high_pass(x: Array, d: float, reference_size: int | None = REFERENCE_SIZE) -> Array:
    """Remove Fourier frequencies within radius ``d`` (on the 224-px grid): edges and texture only.

    The output has zero mean (the DC term is always removed) and is not clipped to [0, 1].

    >>> img = np.full((8, 8), 0.5); float(abs(high_pass(img, 0)).max()) < 1e-12
    True
    """
    return _fft_filter(x, "high", d, None, reference_size)


def band_pass(x: Array, d_low: float, d_high: float, reference_size: int | None = REFERENCE_SIZE) -> Array:
    """Keep only frequencies with ``d_low < radius <= d_high`` (224-px grid)."""
    return _fft_filter(x, "band", d_low, d_high, reference_size)


def notch(x: Array, d_low: float, d_high: float, reference_size: int | None = REFERENCE_SIZE) -> Array:
    """Remove the ring of frequencies ``d_low < radius <= d_high`` (224-px grid), keep the rest."""
    return _fft_filter(x, "notch", d_low, d_high, reference_size)


def log_spectrum(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """``log(1 + |FFT|)`` of an image, centred (zero frequency in the middle), as numpy ``(H, W)``.

    For a batch, the first image is used. This is what the chapter's figures and widget show.
    """
    t = _as_float_tensor(x).detach().cpu().to(torch.float64)
    t = t.reshape(-1, *t.shape[-2:])[0]
    return torch.log1p(torch.fft.fftshift(torch.fft.fft2(t)).abs()).numpy()


def spectral_energy(x: np.ndarray | torch.Tensor) -> float:
    """Energy of an image computed in the Fourier domain, ``sum |FFT|^2 / (H W)``.

    By Parseval's theorem this equals ``sum x**2`` (a check the tests make).
    """
    t = _as_float_tensor(x).to(torch.float64)
    h, w = t.shape[-2:]
    return float((torch.fft.fft2(t).abs() ** 2).sum() / (h * w))


# --------------------------------------------------------------------------- resolution, noise, blur
def downsample(x: Array, k: int) -> Array:
    """Shrink to ``k`` x ``k`` pixels (area averaging) and enlarge back (bilinear) to the input size.

    Sizes at or above the image's size leave it unchanged.

    >>> downsample(np.zeros((1, 64, 64), np.float32), 8).shape
    (1, 64, 64)
    """
    if k < 1:
        raise ValueError(f"downsample size k must be a positive number of pixels, got {k}")
    t = _as_float_tensor(x)
    h, w = t.shape[-2:]
    if k >= max(h, w):
        return _restore(t.clone(), x)
    flat, shape = _as_4d(t)
    small = F.interpolate(flat, size=(k, k), mode="area")
    back = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return _restore(back.reshape(shape), x)


def gaussian_noise(x: Array, sigma: float, seed: int | None = None, clip: bool = True,
                   generator: torch.Generator | None = None) -> Array:
    """Add zero-mean Gaussian noise of standard deviation ``sigma`` (intensity units, image in [0, 1]).

    ``seed`` (or a ``generator``) makes the noise reproducible; ``clip`` keeps the result in [0, 1].
    The paper's test-time corruption used sigma 0.1 (Gichoya et al. 2022, public code).
    """
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma}")
    t = _as_float_tensor(x)
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device)
    out = t + sigma * noise
    return _restore(out.clamp(0.0, 1.0) if clip else out, x)


def gaussian_kernel1d(sigma_px: float) -> torch.Tensor:
    """A normalised 1-D Gaussian kernel of standard deviation ``sigma_px`` pixels (radius 3 sigma)."""
    radius = max(1, int(math.ceil(3.0 * sigma_px)))
    grid = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (grid / sigma_px) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(x: Array, sigma: float, reference_size: int | None = REFERENCE_SIZE) -> Array:
    """Blur with a Gaussian of ``sigma`` pixels on the 224-px grid (``sigma * size / 224`` here).

    Borders are reflected. ``sigma=0`` returns the image unchanged. The paper's test-time blur
    used sigma 2 px at 224 px (Gichoya et al. 2022, public code).
    """
    if sigma < 0:
        raise ValueError(f"blur sigma must be >= 0, got {sigma}")
    t = _as_float_tensor(x)
    h, w = t.shape[-2:]
    sigma_px = scaled_length(sigma, min(h, w), reference_size)
    if sigma_px < 1e-6:
        return _restore(t.clone(), x)
    kernel = gaussian_kernel1d(sigma_px).to(t.dtype).to(t.device)
    radius = len(kernel) // 2
    flat, shape = _as_4d(t)
    mode = "reflect" if radius < min(h, w) else "replicate"
    out = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode=mode), kernel.view(1, 1, 1, -1))
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode=mode), kernel.view(1, 1, -1, 1))
    return _restore(out.reshape(shape), x)


# --------------------------------------------------------------------------- intensity
def clip_bright(x: Array, quantile: float | None = None, threshold: float | None = None) -> Array:
    """Clip bright pixels (bone) to a ceiling: the paper's bone-density experiment.

    Give either ``quantile`` (per image: pixels above that image's quantile are set to it) or an
    absolute ``threshold`` in [0, 1]. Gichoya et al. 2022 clipped bright pixels to remove bone
    density and still found Black AUC 0.960 (MIMIC-CXR).

    >>> clip_bright(np.array([[0.1, 0.9]]), threshold=0.5).tolist()
    [[0.1, 0.5]]
    """
    if (quantile is None) == (threshold is None):
        raise ValueError("give exactly one of quantile= or threshold=")
    t = _as_float_tensor(x)
    if threshold is not None:
        return _restore(t.clamp(max=float(threshold)), x)
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    flat = t.reshape(-1, t.shape[-2] * t.shape[-1])
    work = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
    ceiling = torch.quantile(work, float(quantile), dim=1, keepdim=True).to(t.dtype)
    return _restore(torch.minimum(flat, ceiling).reshape(t.shape), x)


# --------------------------------------------------------------------------- regions
def tile_bounds(h: int, w: int, tile: int | tuple[int, int], grid: int = GRID) -> tuple[slice, slice]:
    """Row and column slices of one tile of a ``grid`` x ``grid`` partition (row-major index 0..8).

    Boundaries are ``round(i * h / grid)`` so the tiles cover the image exactly once.

    >>> tile_bounds(64, 64, 4)
    (slice(21, 43, None), slice(21, 43, None))
    """
    row, col = divmod(int(tile), grid) if isinstance(tile, (int, np.integer)) else tile
    if not (0 <= row < grid and 0 <= col < grid):
        raise ValueError(f"tile {tile} is outside a {grid}x{grid} grid")
    edges_h = [round(i * h / grid) for i in range(grid + 1)]
    edges_w = [round(i * w / grid) for i in range(grid + 1)]
    return slice(edges_h[row], edges_h[row + 1]), slice(edges_w[col], edges_w[col + 1])


def tile_mask(h: int, w: int, tile: int | tuple[int, int], grid: int = GRID) -> np.ndarray:
    """Boolean ``(H, W)`` mask that is True on one tile."""
    mask = np.zeros((h, w), dtype=bool)
    mask[tile_bounds(h, w, tile, grid)] = True
    return mask


def keep_region(x: Array, mask: np.ndarray | torch.Tensor, fill: float = 0.0) -> Array:
    """Keep pixels where ``mask`` is True and set the rest to ``fill``.

    ``mask`` is ``(H, W)`` (same for every image) or one mask per image, matching ``x``'s
    leading axes (e.g. ``(N, H, W)`` for ``x`` of shape ``(N, 1, H, W)``). The result has
    ``x``'s type and dtype (``fill`` is on the [0, 1] scale; for uint8 it becomes 0-255).

    >>> keep_region(np.array([[10, 200]], np.uint8), np.array([[True, False]]), fill=1.0).tolist()
    [[10, 255]]
    """
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if t.dtype != torch.uint8:
        t = _as_float_tensor(t)                   # checks the shape and the dtype
    m = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask).to(t.device).bool()
    if tuple(m.shape[-2:]) != tuple(t.shape[-2:]):
        raise ValueError(f"mask shape {tuple(m.shape)} does not match image shape {tuple(t.shape)}")
    if m.ndim > 2 and t.ndim == 4 and m.ndim == 3:
        m = m[:, None]
    # uint8 stays uint8 (fill scaled to 0-255): no float copy of a whole test set
    value = round(min(max(fill, 0.0), 1.0) * 255) if t.dtype == torch.uint8 else fill
    out = torch.where(m, t, torch.as_tensor(value, dtype=t.dtype, device=t.device))
    return out.numpy() if isinstance(x, np.ndarray) else out


def black_out_tile(x: Array, tile: int | tuple[int, int], grid: int = GRID, fill: float = 0.0) -> Array:
    """Set one tile of a 3x3 grid to ``fill`` (black), keep the other eight."""
    h, w = x.shape[-2:]
    return keep_region(x, ~tile_mask(h, w, tile, grid), fill)


def keep_tile(x: Array, tile: int | tuple[int, int], grid: int = GRID, fill: float = 0.0) -> Array:
    """Keep one tile of a 3x3 grid, set the other eight to ``fill`` (the image keeps its size)."""
    h, w = x.shape[-2:]
    return keep_region(x, tile_mask(h, w, tile, grid), fill)


def otsu_threshold(image: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a float image in [0, 1] (maximises the between-class variance)."""
    hist, edges = np.histogram(np.asarray(image, dtype=np.float64).ravel(), bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    mean0 = np.cumsum(hist * centres) / np.maximum(weight0, 1)
    mean1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between))])


def lung_mask_otsu(image: np.ndarray | torch.Tensor, n_components: int = 2, dilate: int = 1) -> np.ndarray:
    """Estimate the lung fields of a frontal radiograph without a segmentation model.

    A simple, documented heuristic for real data (the synthetic cohort ships true masks):
    1. smooth lightly and threshold at Otsu's level: lungs (air) are darker than the mediastinum,
       bone and soft tissue;
    2. drop dark regions that touch the image border (air outside the body, collimation);
    3. keep the ``n_components`` largest remaining regions (the two lungs), fill holes, dilate.
    It fails on very low-contrast or heavily opacified images; inspect the masks it gives.

    Returns a boolean ``(H, W)`` array.
    """
    from scipy import ndimage

    t = _as_float_tensor(image if not isinstance(image, torch.Tensor) else image.detach().cpu())
    img = t.reshape(-1, *t.shape[-2:])[0].double().numpy()
    img = ndimage.gaussian_filter(img, sigma=max(0.5, img.shape[0] / 128))
    dark = img < otsu_threshold(img)
    labels, count = ndimage.label(dark)
    if count == 0:
        return np.zeros(img.shape, dtype=bool)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    sizes = ndimage.sum(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    sizes[border[border > 0] - 1] = 0
    keep = [i + 1 for i in np.argsort(sizes)[::-1][:n_components] if sizes[i] > 0]
    mask = ndimage.binary_fill_holes(np.isin(labels, keep))
    return ndimage.binary_dilation(mask, iterations=dilate) if dilate else mask


def keep_lungs(x: Array, masks: np.ndarray | torch.Tensor | None = None, fill: float = 0.0) -> Array:
    """Keep only the lung fields. Uses ``masks`` if given (the synthetic cohort's true masks),
    otherwise estimates one mask per image with :func:`lung_mask_otsu`."""
    if masks is None:
        t = _as_float_tensor(x)
        flat = t.reshape(-1, *t.shape[-2:]).detach().cpu()
        masks = np.stack([lung_mask_otsu(img) for img in flat]).reshape(tuple(t.shape))
    return keep_region(x, masks, fill)


def load_masks(paths: Sequence[str], size: int) -> np.ndarray:
    """Read mask images (e.g. the synthetic manifest's ``mask_path``) as boolean ``(N, size, size)``."""
    from PIL import Image

    out = np.zeros((len(paths), size, size), dtype=bool)
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            out[i] = np.asarray(im.convert("L").resize((size, size), Image.NEAREST)) > 127
    return out


# --------------------------------------------------------------------------- transforms
class Degradation:
    """Base class: a callable transform with a readable ``repr`` (torchvision style)."""

    fn: Callable[..., Any]
    params: dict[str, Any]

    def __call__(self, x: Array) -> Array:
        return type(self).fn(x, **self.params)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


def _transform(name: str, fn: Callable[..., Any], arg_names: Sequence[str], doc: str) -> type:
    def __init__(self: Degradation, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(arg_names):
            raise TypeError(f"{name} takes at most {len(arg_names)} positional arguments")
        self.params = dict(zip(arg_names, args)) | kwargs

    return type(name, (Degradation,), {"__init__": __init__, "fn": staticmethod(fn), "__doc__": doc})


LowPass = _transform("LowPass", low_pass, ["d"], "Transform form of :func:`low_pass`.")
HighPass = _transform("HighPass", high_pass, ["d"], "Transform form of :func:`high_pass`.")
BandPass = _transform("BandPass", band_pass, ["d_low", "d_high"], "Transform form of :func:`band_pass`.")
Notch = _transform("Notch", notch, ["d_low", "d_high"], "Transform form of :func:`notch`.")
Downsample = _transform("Downsample", downsample, ["k"], "Transform form of :func:`downsample`.")
GaussianBlur = _transform("GaussianBlur", gaussian_blur, ["sigma"], "Transform form of :func:`gaussian_blur`.")
ClipBright = _transform("ClipBright", clip_bright, ["quantile"], "Transform form of :func:`clip_bright`.")
BlackOutTile = _transform("BlackOutTile", black_out_tile, ["tile"], "Transform form of :func:`black_out_tile`.")
KeepTile = _transform("KeepTile", keep_tile, ["tile"], "Transform form of :func:`keep_tile`.")
KeepLungs = _transform("KeepLungs", keep_lungs, [], "Transform form of :func:`keep_lungs` (Otsu masks).")


class GaussianNoise(Degradation):
    """Transform form of :func:`gaussian_noise`. With a ``seed``, the sequence of noise draws is
    reproducible (each call draws fresh noise from one generator)."""

    def __init__(self, sigma: float, seed: int | None = None, clip: bool = True) -> None:
        self.params = {"sigma": sigma, "seed": seed, "clip": clip}
        self._generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None

    def __call__(self, x: Array) -> Array:
        return gaussian_noise(x, self.params["sigma"], clip=self.params["clip"], generator=self._generator)


class Identity(Degradation):
    """No degradation (severity 0 of every sweep)."""

    params: dict[str, Any] = {}

    def __call__(self, x: Array) -> Array:
        return x


# --------------------------------------------------------------------------- sweeps
@dataclass(frozen=True)
class SweepSpec:
    """How one degradation is swept: its parameter, levels (mildest first) and factory."""

    name: str
    label: str
    param: str
    unit: str
    levels: tuple[float, ...]
    make: Callable[[float], Degradation] = field(repr=False)
    integer: bool = False
    anchor: str | None = None  # key in cxrlab.core.anchors.DEGRADATION_CURVES, if the paper has a curve

    @property
    def bounds(self) -> tuple[float, float]:
        """(min, max) of the levels, e.g. for a slider."""
        return min(self.levels), max(self.levels)


PAPER_RADII = (1, 5, 10, 25, 50, 100, 125, 150, 200)

SEVERITY_SWEEPS: dict[str, SweepSpec] = {
    s.name: s for s in [
        SweepSpec("low_pass", "low-pass filter (keep radius <= d)", "d", "px on the 224 grid",
                  tuple(reversed(PAPER_RADII)), LowPass, anchor="low_pass"),
        SweepSpec("high_pass", "high-pass filter (remove radius <= d)", "d", "px on the 224 grid",
                  PAPER_RADII, HighPass, anchor="high_pass"),
        SweepSpec("downsample", "downsample to k px and back", "k", "px", (64, 32, 16, 8, 4),
                  lambda k: Downsample(int(k)), integer=True),
        SweepSpec("noise", "Gaussian noise", "sigma", "intensity (image in [0, 1])",
                  (0.0, 0.05, 0.1, 0.2, 0.4), lambda s: GaussianNoise(s, seed=0)),
        SweepSpec("blur", "Gaussian blur", "sigma", "px on the 224 grid", (0.0, 1.0, 2.0, 4.0, 8.0),
                  GaussianBlur),
        SweepSpec("clip_bright", "clip bright pixels above a quantile", "quantile", "per-image quantile",
                  (1.0, 0.9, 0.75, 0.5, 0.25), ClipBright),
    ]
}
"""Each degradation's sweep, levels ordered from mildest to most severe. The radii are the ones
the paper plotted (Gichoya et al. 2022, public code); the noise sigma 0.1 and blur sigma 2 px
are its test-time corruptions."""


def make_degradation(name: str, level: float) -> Degradation:
    """The transform for ``SEVERITY_SWEEPS[name]`` at ``level``.

    >>> make_degradation("high_pass", 50)
    HighPass(d=50)
    """
    if name not in SEVERITY_SWEEPS:
        raise KeyError(f"unknown degradation {name!r}; choose one of {', '.join(SEVERITY_SWEEPS)}")
    spec = SEVERITY_SWEEPS[name]
    return spec.make(int(level) if spec.integer else level)


# --------------------------------------------------------------------------- experiments
def degrade_images(images: np.ndarray, degradation: Callable[[torch.Tensor], torch.Tensor],
                   batch_size: int = 256) -> np.ndarray:
    """Apply ``degradation`` to uint8 (or float) images ``(N, H, W)`` in batches; float32 out.

    The result is what :meth:`cxrlab.core.store.TrainedModel.predict` takes, and unlike per-image
    transforms it runs one FFT per batch.
    """
    out = np.empty(np.shape(images), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        batch = _as_float_tensor(np.asarray(images[start:start + batch_size])).float()
        out[start:start + batch_size] = degradation(batch[:, None])[:, 0].numpy()
    return out


def _macro_row(y: np.ndarray, proba: np.ndarray, classes: Sequence[str], groups: Any,
               n_boot: int, seed: int) -> dict[str, Any]:
    from cxrlab.core.metrics import macro_auc_ci

    ci = macro_auc_ci(y, proba, classes, groups=groups, n_boot=n_boot, seed=seed)
    return {"class": "macro", "auc": ci.estimate, "ci_low": ci.low, "ci_high": ci.high}


def auc_rows(y: np.ndarray, proba: np.ndarray, classes: Sequence[str], groups: Any = None,
             n_boot: int = 100, seed: int = 0, per_class: bool = True) -> list[dict[str, Any]]:
    """Per-class one-vs-rest AUCs (unless ``per_class=False``) and the macro AUC (last row,
    class ``"macro"``; for a binary target it repeats the one AUC), with patient-bootstrap 95% CIs."""
    from cxrlab.core.metrics import auc_table

    multiclass = np.ndim(proba) == 2
    rows: list[dict[str, Any]] = []
    if per_class or not multiclass:
        table = auc_table(y, proba, classes, groups=groups, n_boot=n_boot, seed=seed)
        rows = table[["class", "auc", "ci_low", "ci_high"]].to_dict("records")
    if multiclass:
        rows.append(_macro_row(y, proba, classes, groups, n_boot, seed))
    else:  # binary: the one AUC is also the "macro" AUC, so curves and checks work unchanged
        rows.append({**rows[-1], "class": "macro"})
    return rows


def sweep_at_test_time(trained_model: Any, images: np.ndarray, y_true: np.ndarray, classes: Sequence[str],
                       name: str, levels: Sequence[float] | None = None, groups: Any = None,
                       n_boot: int = 100, seed: int = 0, per_class: bool = True, progress: bool = True):
    """Degrade the test images at each level and score a model trained on *clean* images.

    ``trained_model`` has ``.predict(images, transform=...) -> proba`` (a ``TrainedModel``:
    the degradation runs batch by batch, so no degraded copy of the test set is held). Returns a
    DataFrame with ``degradation, level, class, auc, ci_low, ci_high``: one row per class
    (unless ``per_class=False``, which halves the bootstrap work) and a ``macro`` row.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    spec = SEVERITY_SWEEPS[name]
    rows = []
    for level in tqdm(levels or spec.levels, desc=f"sweeping {name}", disable=not progress, leave=False):
        proba = trained_model.predict(images, transform=make_degradation(name, level))
        for row in auc_rows(y_true, proba, classes, groups, n_boot, seed, per_class):
            rows.append({"degradation": name, "level": level, **row})
    release_unused_memory()                       # the batches' freed heap back to the system
    return pd.DataFrame(rows)


#: Share of the training patients a degraded model trains on (every validation and test image
#: is kept): half the training time. On demo (580 of 1,160 training images, 2026-12-02) the
#: macro AUCs were 0.97 / 0.95 / 0.72 at high-pass 50 / high-pass 100 / low-pass 10, against
#: 1.00 / 1.00 / 0.76 on every training image and 0.68 / 0.51 / 0.54 for the clean model.
DEGRADED_TRAIN_FRACTION = 0.5


def degraded_model(session: Any, name: str, level: float, target: str = "race",
                   progress: bool = True, train_fraction: float = DEGRADED_TRAIN_FRACTION) -> Any:
    """The store's ``target`` model trained, validated and tested on images degraded by
    ``make_degradation(name, level)`` (variant ``"<name>-<level>"``), on ``train_fraction``
    of the training patients (:func:`cxrlab.core.store.patient_subset_filter`): trained once,
    then loaded."""
    from cxrlab.core.store import get_model, patient_subset_filter

    return get_model(session, target, variant=f"{name}-{level:g}",
                     train_transform=make_degradation(name, level),
                     train_filter=patient_subset_filter(session, train_fraction), progress=progress)


def train_on_degraded(session: Any, name: str, levels: Sequence[float], target: str = "race",
                      n_boot: int = 100, seed: int = 0):
    """The paper's method: train *and* test on degraded images, one model per level.

    Models come from :func:`degraded_model` (trained once, then loaded from the store).
    Returns the same columns as :func:`sweep_at_test_time`.
    """
    import pandas as pd

    rows = []
    for level in levels:
        tm = degraded_model(session, name, level, target)
        groups = session.manifest["patient_id"].to_numpy()[tm.test_index]
        for row in auc_rows(tm.test_targets, tm.test_proba, tm.classes, groups, n_boot, seed):
            rows.append({"degradation": name, "level": level, **row})
    return pd.DataFrame(rows)


def tile_auc_grid(trained_model: Any, images: np.ndarray, y_true: np.ndarray, classes: Sequence[str],
                  mode: str = "black_out", groups: Any = None, n_boot: int = 50, seed: int = 0,
                  grid: int = GRID):
    """Macro AUC (with CI) of a clean-trained model when one tile is blacked out (``mode=
    "black_out"``) or is all that is left (``"keep"``), for each of the 3x3 tiles.

    Returns a DataFrame with ``tile, row, col, auc, ci_low, ci_high``; pivot with
    ``df.pivot(index="row", columns="col", values="auc")`` for a heat map.
    """
    import pandas as pd

    if mode not in ("black_out", "keep"):
        raise ValueError(f"mode must be 'black_out' or 'keep', not {mode!r}")
    fn = black_out_tile if mode == "black_out" else keep_tile
    rows = []
    for tile in range(grid * grid):
        proba = trained_model.predict(images, transform=lambda x, t=tile: fn(x, t, grid))
        row = _macro_row(y_true, proba, classes, groups, n_boot, seed)
        r, c = divmod(tile, grid)
        rows.append({"tile": tile, "row": r, "col": c, "auc": row["auc"], "ci_low": row["ci_low"],
                     "ci_high": row["ci_high"]})
    release_unused_memory()
    return pd.DataFrame(rows)


def first_level_below(table, threshold: float = 0.6, cls: str = "macro") -> float | None:
    """The mildest level (in sweep order) at which ``cls``'s AUC falls below ``threshold``;
    ``None`` if it never does."""
    rows = table[table["class"] == cls]
    below = rows[rows["auc"] < threshold]
    return None if below.empty else below["level"].iloc[0]


def plot_sweep(curves: dict[str, Any], name: str, paper: dict[str, Sequence[float]] | None = None,
               paper_label: str = "paper", cls: str = "macro", ax: Any = None):
    """AUC against severity for one degradation: one line with a CI band per entry of ``curves``
    (label -> table from :func:`sweep_at_test_time` / :func:`train_on_degraded`), the paper's curve
    (``{"level": [...], "auc": [...]}``) dashed. Radii use a log axis."""
    import matplotlib.pyplot as plt

    from cxrlab.core.plots import PALETTE

    spec = SEVERITY_SWEEPS[name]
    if ax is None:
        _, ax = plt.subplots(figsize=(5.2, 3.6))
    for i, (label, table) in enumerate(curves.items()):
        rows = table[table["class"] == cls].sort_values("level")
        color = PALETTE[i % len(PALETTE)]
        ax.plot(rows["level"], rows["auc"], "o-", color=color, label=label)
        ax.fill_between(rows["level"], rows["ci_low"], rows["ci_high"], color=color, alpha=0.2)
    if paper is not None:
        ax.plot(paper["level"], paper["auc"], "k--", marker="x", label=paper_label)
    ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
    if spec.param == "d" or name == "downsample":
        ax.set_xscale("log")
    ax.set_ylim(0.3, 1.02)
    ax.set_xlabel(f"{spec.param} ({spec.unit})")
    ax.set_ylabel(f"AUC ({cls})")
    ax.set_title(spec.label, fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    return ax


def plot_tile_grid(table, title: str, ax: Any = None, vmin: float = 0.5, vmax: float = 1.0):
    """3x3 heat map of the macro AUC per tile (from :func:`tile_auc_grid`), values written in."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(3.4, 3.2))
    grid = table.pivot(index="row", columns="col", values="auc").to_numpy()
    im = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax)
    for (r, c), value in np.ndenumerate(grid):
        ax.text(c, r, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.8 else "black")
    ax.set_xticks(range(grid.shape[1])); ax.set_yticks(range(grid.shape[0]))
    ax.set_xlabel("tile column"); ax.set_ylabel("tile row")
    ax.set_title(title, fontsize=10)
    plt.colorbar(im, ax=ax, fraction=0.046, label="macro AUC")
    return ax


# --------------------------------------------------------------------------- learner self-checks
HIGH_PASS_LIBRARY = ("high_pass", "low_pass", "band_pass", "notch", "fft_mask", "apply_fft_mask",
                     "_fft_filter", "_cached_mask", "frequency_radius", "HighPass", "LowPass")
FIRST_LEVEL_LIBRARY = ("first_level_below", "check_first_level_below")


def _module() -> Any:
    import sys

    return sys.modules[__name__]


def _filtered(fn: Callable[[np.ndarray, float], np.ndarray], img: np.ndarray, d: float) -> np.ndarray:
    from cxrlab.toolbox.checks import call_answer

    out = call_answer(fn, img.copy(), d)
    require(type(out) is np.ndarray, f"return a numpy array, not {type(out).__name__}")
    require(out.shape == img.shape, f"the output has shape {out.shape}; it should keep the image's {img.shape}")
    require(np.isrealobj(out), "return the real part of the inverse FFT (np.real or .real)")
    return out


def check_high_pass(fn: Callable[[np.ndarray, float], np.ndarray]) -> None:
    """Self-check for the exercise "implement the high-pass filter".

    ``fn(image, d)`` takes a float ``(H, W)`` numpy image and a radius on the 224-px grid. The
    usual slips, each named: keeping radius >= d (the boundary; d = 0 shows it), radii in pixels
    of this image instead of the 224-px grid, one axis's frequencies for both, a low-pass.
    """
    from cxrlab.toolbox.checks import forbid_library

    forbid_library(fn, _module(), HIGH_PASS_LIBRARY, "the high-pass filter")
    rng = np.random.default_rng(0)
    img = rng.random((64, 64))
    out = _filtered(fn, img, 25)
    require(abs(float(out.mean())) < 1e-6, (
        f"the mean of the output is {out.mean():.3f}, not 0: a high-pass filter removes the "
        "zero frequency (the centre of the shifted spectrum, or index [0, 0] unshifted)"))
    require(np.allclose(_filtered(fn, img, 0), img - img.mean(), atol=1e-6), (
        "with d = 0 a high-pass removes exactly one coefficient, the zero frequency (radius 0 is "
        "not greater than 0), so the output is the image minus its mean. Keep radius > d, not >= d"))
    wave = 0.5 + 0.25 * np.cos(2 * np.pi * 8 * np.arange(64) / 64)[None, :].repeat(64, 0)
    kept = _filtered(fn, wave, 20)   # 8 cycles per 64-px image = radius 28 on the 224 grid
    require(np.allclose(kept, wave - 0.5, atol=1e-6), (
        "a sinusoid at radius 28 (8 cycles per 64-px image) should pass a high-pass with d=20; "
        "did you scale the frequencies to the 224-px grid (np.fft.fftfreq(n) * 224) and keep "
        "radius > d (not a low-pass)?"))
    require(np.allclose(_filtered(fn, wave, 40), 0, atol=1e-6),
            "a sinusoid at radius 28 should be removed by a high-pass with d=40")
    require(np.allclose(_filtered(fn, wave, 28), 0, atol=1e-6), (
        "a sinusoid at radius exactly 28 should be removed with d=28: the filter keeps radius "
        "> d only, so the boundary circle goes"))
    wide = rng.random((48, 80))
    require(np.allclose(_filtered(fn, wide, 30), high_pass(wide, 30), atol=1e-6), (
        "right on a square image, wrong on a 48 x 80 one: use np.fft.fftfreq(H) for the rows "
        "and np.fft.fftfreq(W) for the columns"))
    passed("Correct: your high-pass filter removes the mean and keeps exactly the frequencies above d.")


def _sweep_table(levels: Sequence[float], macro: Sequence[float], other: Sequence[float]):
    """A small sweep table in :func:`sweep_at_test_time`'s layout: class ``A`` rows then ``macro``."""
    import pandas as pd

    rows = [{"degradation": "high_pass", "level": float(lv), "class": c, "auc": float(a)}
            for lv, a_macro, a_other in zip(levels, macro, other)
            for c, a in (("A", a_other), ("macro", a_macro))]
    return pd.DataFrame(rows)


FIRST_LEVEL_CASES = (
    # levels, macro AUCs, class A AUCs, threshold, expected first level
    ((1, 5, 10, 25, 50, 100), (0.90, 0.85, 0.58, 0.63, 0.40, 0.55), (0.9, 0.45, 0.7, 0.7, 0.7, 0.7),
     0.6, 10.0),
    ((1, 5, 10, 25), (0.90, 0.85, 0.81, 0.79), (0.5, 0.5, 0.5, 0.5), 0.6, None),
    ((2, 4, 8, 16), (0.95, 0.80, 0.75, 0.70), (0.9, 0.9, 0.9, 0.9), 0.8, 8.0),
)


def _first_level_hint(got: float, levels, macro, other, threshold: float) -> str:
    below = [lv for lv, a in zip(levels, macro) if a < threshold]
    other_below = [lv for lv, a in zip(levels, other) if a < threshold]
    if other_below and got == other_below[0]:
        return " That is where class A's row falls below: keep only the rows with class == 'macro'."
    if got == levels[int(np.argmin(macro))]:
        return " That is the level with the LOWEST AUC; the question asks for the first level below."
    if below and got == below[-1]:
        return " That is the LAST level below; take the first one (the mildest, in table order)."
    if got in [float(a) for a in macro]:
        return " That is an AUC; return the level (the 'level' column)."
    return " Filter class == 'macro', then auc < threshold, then take the first row's level."


def check_first_level_function(fn: Callable[[Any, float], float | None]) -> None:
    """Self-check for "find the first level at which the AUC falls below a threshold".

    ``fn(table, threshold)`` gets a sweep table (mildest level first; per-class rows and a
    ``macro`` row per level) and returns that level as a number, or ``None``.
    """
    from cxrlab.toolbox.checks import call_answer, forbid_library, require_number

    forbid_library(fn, _module(), FIRST_LEVEL_LIBRARY, "the search")
    for levels, macro, other, threshold, want in FIRST_LEVEL_CASES:
        table = _sweep_table(levels, macro, other)
        got = require_number(call_answer(fn, table.copy(), threshold), "the level", allow_none=True)
        if want is None:
            require(got is None, f"the macro AUC never falls below {threshold} in a test table "
                    f"(AUCs {list(macro)}), yet you returned {got}: return None then")
            continue
        require(got is not None, f"the macro AUC falls below {threshold} at level {want} of a test "
                f"table (AUCs {list(macro)}), yet you returned None")
        require(got == want, f"levels {list(levels)}, macro AUCs {list(macro)}, threshold "
                f"{threshold}: expected {want:g}, got {got:g}."
                + _first_level_hint(got, levels, macro, other, threshold))
    passed("Correct: your function returns the first (mildest) level where the macro AUC falls "
           "below the threshold, and None when it never does.")


def check_first_level_below(answer: float | None, table, threshold: float = 0.6) -> None:
    """Self-check for "find the radius where AUC falls below 0.6" on a sweep ``table``:
    ``answer`` must be a plain number (or ``None``), equal to the true first level."""
    from cxrlab.toolbox.checks import require_number

    value = require_number(answer, "radius_below_06", allow_none=True)
    truth = first_level_below(table, threshold)
    name = table["degradation"].iloc[0]
    if truth is None:
        require(value is None, (f"the macro AUC never falls below {threshold} in this {name} sweep; "
                                "the answer should be None"))
    else:
        require(value is not None, (f"the macro AUC does fall below {threshold}: look at the rows "
                                    "with class == 'macro'"))
        require(value == float(truth), (
            f"{answer} is not the first level (mildest first, in the table's order) where the "
            f"macro AUC < {threshold}; filter class == 'macro', then auc < {threshold}, then take "
            "the first row"))
    passed(f"Correct: in the {name} sweep the macro AUC first drops below {threshold} at "
           f"{spec_param(name)} = {truth}.")


def spec_param(name: str) -> str:
    """The swept parameter's name for a degradation (``d``, ``sigma``, ...)."""
    return SEVERITY_SWEEPS[name].param if name in SEVERITY_SWEEPS else "level"
