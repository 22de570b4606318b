"""Image degradations for chapter 4: what survives when the picture is spoiled?

Gichoya et al. 2022 (Lancet Digital Health 4:e406) filtered, shrank, blurred, clipped and cut
up chest X-rays and found that race recognition survives long after a radiologist sees nothing.
This module provides those degradations as small functions and as typed, torchvision-style
callable transforms (``HighPass(d)``, ``GaussianBlur(sigma)``, ..., chained with ``Compose``;
plug them into ``CXRDataset(..., transform=...)`` or ``train.predict(..., transform=...)``).
The experiments built on them (severity sweeps, models trained on degraded images, tile grids)
live in :mod:`cxrlab.toolbox.sweeps`.

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
>>> HighPass(dd=3)
Traceback (most recent call last):
...
TypeError: HighPass.__init__() got an unexpected keyword argument 'dd'
"""
from __future__ import annotations

import math
import warnings
from functools import lru_cache
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from cxrlab.toolbox.checks import call_answer, forbid_library, passed, require

REFERENCE_SIZE = 224
GRID = 3

Array = TypeVar("Array", np.ndarray, torch.Tensor)


# --------------------------------------------------------------------------- input handling
def as_float_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
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
    t = as_float_tensor(x)
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
    t = as_float_tensor(x).detach().cpu().to(torch.float64)
    t = t.reshape(-1, *t.shape[-2:])[0]
    return torch.log1p(torch.fft.fftshift(torch.fft.fft2(t)).abs()).numpy()


def spectral_energy(x: np.ndarray | torch.Tensor) -> float:
    """Energy of an image computed in the Fourier domain, ``sum |FFT|^2 / (H W)``.

    By Parseval's theorem this equals ``sum x**2`` (a check the tests make).
    """
    t = as_float_tensor(x).to(torch.float64)
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
    t = as_float_tensor(x)
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
    t = as_float_tensor(x)
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
    t = as_float_tensor(x)
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
    t = as_float_tensor(x)
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
        t = as_float_tensor(t)                   # checks the shape and the dtype
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

    t = as_float_tensor(image if not isinstance(image, torch.Tensor) else image.detach().cpu())
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
        t = as_float_tensor(x)
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



def lung_masks_for(session: Any, index: Sequence[int] | np.ndarray) -> tuple[np.ndarray, str]:
    """Lung masks for the manifest rows ``index`` (positions, e.g. ``tm.test_index``) of a
    session, and a phrase saying where they come from.

    The synthetic cohort ships its true lung masks (the manifest's ``mask_path``, relative to
    ``session.data_dir``): when every row has one, those are read at the preset's image size.
    Otherwise (real sources have no masks) each image gets an Otsu-threshold estimate
    (:func:`lung_mask_otsu`). Returns boolean masks ``(len(index), H, W)``.

    >>> masks, source = lung_masks_for(S, tm.test_index)   # doctest: +SKIP
    >>> source                                             # doctest: +SKIP
    "the synthetic cohort's true lung masks"
    """
    index = np.asarray(index, dtype=np.int64)
    rows = session.manifest.iloc[index]
    if "mask_path" in rows.columns and rows["mask_path"].notna().all():
        masks = load_masks([Path(session.data_dir) / p for p in rows["mask_path"]],
                           session.preset.image_size)
        return masks, "the synthetic cohort's true lung masks"
    images = session.images
    masks = np.stack([lung_mask_otsu(images[i]) for i in index]) if len(index) else \
        np.zeros((0, *images.shape[-2:]), dtype=bool)
    return masks, "Otsu-threshold estimates (degrade.lung_mask_otsu)"


# --------------------------------------------------------------------------- transforms
def _real(name: str, value: Any, minimum: float | None = 0.0, maximum: float | None = None) -> int | float:
    """``value`` as a plain int (when whole) or float, checked against the bounds; a stable
    ``repr`` whatever numeric type came in (``np.float64(50.0)`` -> ``50``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {value}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be <= {maximum:g}, got {value}")
    return int(number) if number.is_integer() else number


def _reference(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"reference_size must be a positive number of pixels or None, got {value!r}")
    return int(value)


def _tile(value: Any, grid: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"tile must be an int (0..{grid * grid - 1}, row-major), not {value!r}")
    if not 0 <= int(value) < grid * grid:
        raise ValueError(f"tile {value} is outside a {grid}x{grid} grid (0..{grid * grid - 1})")
    return int(value)


@dataclass(frozen=True)
class Degradation:
    """Base class of the typed transforms: frozen dataclasses, checked when made, callable on an
    image like their functional twin (``HighPass(25)(x) == high_pass(x, 25)``).

    Their ``repr`` lists the arguments that differ from the defaults, in a stable form
    (``HighPass(d=25)``); the model store puts it in a trained model's key, so two different
    training transforms never share a stored model.
    """

    def __call__(self, x: Array) -> Array:
        raise NotImplementedError(f"{type(self).__name__} does not define __call__")

    def __repr__(self) -> str:
        args = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                if f.repr and (f.default is MISSING or getattr(self, f.name) != f.default)]
        return f"{type(self).__name__}({', '.join(args)})"


@dataclass(frozen=True, repr=False)
class Identity(Degradation):
    """No degradation (severity 0 of every sweep)."""

    def __call__(self, x: Array) -> Array:
        return x


@dataclass(frozen=True, repr=False)
class _RadiusFilter(Degradation):
    """A Fourier filter with one cut-off radius ``d`` (224-px grid): the fields and their checks
    that :class:`LowPass` and :class:`HighPass` share."""

    d: float
    reference_size: int | None = REFERENCE_SIZE

    def __post_init__(self) -> None:
        object.__setattr__(self, "d", _real("d", self.d))
        object.__setattr__(self, "reference_size", _reference(self.reference_size))


@dataclass(frozen=True, repr=False)
class LowPass(_RadiusFilter):
    """Transform form of :func:`low_pass`: keep Fourier radius <= ``d`` (224-px grid)."""

    def __call__(self, x: Array) -> Array:
        return low_pass(x, self.d, self.reference_size)


@dataclass(frozen=True, repr=False)
class HighPass(_RadiusFilter):
    """Transform form of :func:`high_pass`: remove Fourier radius <= ``d`` (224-px grid)."""

    def __call__(self, x: Array) -> Array:
        return high_pass(x, self.d, self.reference_size)


@dataclass(frozen=True, repr=False)
class BandPass(Degradation):
    """Transform form of :func:`band_pass`: keep ``d_low < radius <= d_high``."""

    d_low: float
    d_high: float
    reference_size: int | None = REFERENCE_SIZE

    def __post_init__(self) -> None:
        low = _real("d_low", self.d_low)
        object.__setattr__(self, "d_low", low)
        object.__setattr__(self, "d_high", _real("d_high", self.d_high, minimum=low))
        object.__setattr__(self, "reference_size", _reference(self.reference_size))

    def __call__(self, x: Array) -> Array:
        return band_pass(x, self.d_low, self.d_high, self.reference_size)


@dataclass(frozen=True, repr=False)
class Notch(Degradation):
    """Transform form of :func:`notch`: remove ``d_low < radius <= d_high``, keep the rest."""

    d_low: float
    d_high: float
    reference_size: int | None = REFERENCE_SIZE

    def __post_init__(self) -> None:
        low = _real("d_low", self.d_low)
        object.__setattr__(self, "d_low", low)
        object.__setattr__(self, "d_high", _real("d_high", self.d_high, minimum=low))
        object.__setattr__(self, "reference_size", _reference(self.reference_size))

    def __call__(self, x: Array) -> Array:
        return notch(x, self.d_low, self.d_high, self.reference_size)


@dataclass(frozen=True, repr=False)
class Downsample(Degradation):
    """Transform form of :func:`downsample`: shrink to ``k`` x ``k`` pixels and back."""

    k: int

    def __post_init__(self) -> None:
        k = _real("k", self.k, minimum=1)
        if not isinstance(k, int):
            raise ValueError(f"k must be a whole number of pixels, got {self.k}")
        object.__setattr__(self, "k", k)

    def __call__(self, x: Array) -> Array:
        return downsample(x, self.k)


@dataclass(frozen=True, repr=False)
class GaussianBlur(Degradation):
    """Transform form of :func:`gaussian_blur`: ``sigma`` pixels on the 224-px grid."""

    sigma: float
    reference_size: int | None = REFERENCE_SIZE

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", _real("sigma", self.sigma))
        object.__setattr__(self, "reference_size", _reference(self.reference_size))

    def __call__(self, x: Array) -> Array:
        return gaussian_blur(x, self.sigma, self.reference_size)


@dataclass(frozen=True, repr=False)
class GaussianNoise(Degradation):
    """Transform form of :func:`gaussian_noise`. With a ``seed``, the sequence of noise draws is
    reproducible (each call draws fresh noise from one generator, made with the transform)."""

    sigma: float
    seed: int | None = None
    clip: bool = True
    _generator: torch.Generator | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", _real("sigma", self.sigma))
        if self.seed is not None:
            if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
                raise TypeError(f"seed must be an int or None, not {self.seed!r}")
            object.__setattr__(self, "seed", int(self.seed))
            object.__setattr__(self, "_generator", torch.Generator().manual_seed(self.seed))
        if not isinstance(self.clip, (bool, np.bool_)):
            raise TypeError(f"clip must be True or False, not {self.clip!r}")
        object.__setattr__(self, "clip", bool(self.clip))

    def __call__(self, x: Array) -> Array:
        return gaussian_noise(x, self.sigma, clip=self.clip, generator=self._generator)


@dataclass(frozen=True, repr=False)
class ClipBright(Degradation):
    """Transform form of :func:`clip_bright`: a per-image ``quantile`` or an absolute
    ``threshold`` (exactly one)."""

    quantile: float | None = None
    threshold: float | None = None

    def __post_init__(self) -> None:
        if (self.quantile is None) == (self.threshold is None):
            raise ValueError("give exactly one of quantile= or threshold=")
        if self.quantile is not None:
            object.__setattr__(self, "quantile", _real("quantile", self.quantile, 0.0, 1.0))
        else:
            object.__setattr__(self, "threshold", _real("threshold", self.threshold, 0.0, 1.0))

    def __call__(self, x: Array) -> Array:
        return clip_bright(x, self.quantile, self.threshold)


@dataclass(frozen=True, repr=False)
class _TileTransform(Degradation):
    """Shared fields of the tile transforms: a tile (row-major index) of a grid, a fill value."""

    tile: int
    grid: int = GRID
    fill: float = 0.0

    def __post_init__(self) -> None:
        grid = _real("grid", self.grid, minimum=1)
        if not isinstance(grid, int):
            raise ValueError(f"grid must be a whole number of tiles per side, got {self.grid}")
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "tile", _tile(self.tile, grid))
        object.__setattr__(self, "fill", _real("fill", self.fill, 0.0, 1.0))


@dataclass(frozen=True, repr=False)
class BlackOutTile(_TileTransform):
    """Transform form of :func:`black_out_tile`: one tile set to ``fill``, the others kept."""

    def __call__(self, x: Array) -> Array:
        return black_out_tile(x, self.tile, self.grid, self.fill)


@dataclass(frozen=True, repr=False)
class KeepTile(_TileTransform):
    """Transform form of :func:`keep_tile`: one tile kept, the others set to ``fill``."""

    def __call__(self, x: Array) -> Array:
        return keep_tile(x, self.tile, self.grid, self.fill)


@dataclass(frozen=True, repr=False)
class KeepLungs(Degradation):
    """Transform form of :func:`keep_lungs` with Otsu masks estimated per image."""

    fill: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "fill", _real("fill", self.fill, 0.0, 1.0))

    def __call__(self, x: Array) -> Array:
        return keep_lungs(x, None, self.fill)


@dataclass(frozen=True, repr=False)
class Compose(Degradation):
    """Several transforms applied in order (first to last).

    >>> Compose([HighPass(50), GaussianNoise(0.1, seed=0)])
    Compose([HighPass(d=50), GaussianNoise(sigma=0.1, seed=0)])
    """

    transforms: tuple[Degradation, ...]

    def __post_init__(self) -> None:
        if isinstance(self.transforms, Degradation) or not isinstance(self.transforms, (list, tuple)):
            raise TypeError("Compose takes a list of transforms, e.g. Compose([HighPass(50), "
                            "GaussianBlur(2)])")
        bad = [t for t in self.transforms if not isinstance(t, Degradation)]
        if bad:
            raise TypeError(f"Compose takes the typed transforms of cxrlab.toolbox.degrade (their "
                            f"repr goes into the model store's key), not {bad[0]!r}")
        object.__setattr__(self, "transforms", tuple(self.transforms))

    def __call__(self, x: Array) -> Array:
        for transform in self.transforms:
            x = transform(x)
        return x

    def __repr__(self) -> str:
        return f"Compose([{', '.join(map(repr, self.transforms))}])"


# --------------------------------------------------------------------------- learner self-checks
#: The library code a learner's high-pass filter must not call (the check compares against it).
HIGH_PASS_LIBRARY = (high_pass, low_pass, band_pass, notch, fft_mask, apply_fft_mask, _fft_filter,
                     _cached_mask, frequency_radius, HighPass, LowPass)


def _filtered(fn: Callable[[np.ndarray, float], np.ndarray], img: np.ndarray, d: float) -> np.ndarray:
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
    forbid_library(fn, HIGH_PASS_LIBRARY, "the high-pass filter")
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


# --------------------------------------------------------------------------- moved to sweeps
#: Names that moved to :mod:`cxrlab.toolbox.sweeps` (issue 20): degrade keeps the filters and
#: the typed transforms, sweeps the experiments built on them. ``degrade.<name>`` still works,
#: with a ``DeprecationWarning``; new code imports them from ``sweeps``.
MOVED_TO_SWEEPS = frozenset({
    "SweepSpec", "PAPER_RADII", "SEVERITY_SWEEPS", "make_degradation", "degrade_images",
    "auc_rows", "_macro_row", "sweep_at_test_time", "DEGRADED_TRAIN_FRACTION", "degraded_model",
    "train_on_degraded", "tile_auc_grid", "first_level_below", "plot_sweep", "plot_tile_grid",
    "spec_param", "FIRST_LEVEL_LIBRARY", "FIRST_LEVEL_CASES", "sweep_table", "_sweep_table",
    "check_first_level_function", "check_first_level_below"})


def __getattr__(name: str) -> Any:
    if name == "_as_float_tensor":
        warnings.warn("degrade._as_float_tensor is now degrade.as_float_tensor", DeprecationWarning,
                      stacklevel=2)
        return as_float_tensor
    if name in MOVED_TO_SWEEPS:
        from cxrlab.toolbox import sweeps

        new = "sweep_table" if name == "_sweep_table" else name
        warnings.warn(f"degrade.{name} moved to cxrlab.toolbox.sweeps.{new}", DeprecationWarning,
                      stacklevel=2)
        return getattr(sweeps, new)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
