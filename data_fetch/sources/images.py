"""Image conversion shared by the real sources: decode (capped), square-crop, resize, save PNG.

Images are stored as 8-bit greyscale PNGs, centre-cropped to a square and resized to
``--size`` pixels (``--size 0`` keeps the original size), so every source looks the same to
:mod:`cxrlab`. Two caps protect a small machine (a 2 GB Binder kernel) from a decompression
bomb: an archive member or download larger than :data:`MAX_MEMBER_BYTES` is never read whole,
and an image of more than :data:`MAX_PIXELS` pixels is never decoded.
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image

from data_fetch.paths import atomic_write_bytes

#: Largest archive member / image file read into memory (the largest CheXpert/MIMIC JPEGs and
#: NIH PNGs are a few MB; full-resolution DICOMs about 30 MB).
MAX_MEMBER_BYTES = 64 * 1024 * 1024
#: Largest image decoded (a 4,000 x 5,000 radiograph is 20 Mpx).
MAX_PIXELS = 40_000_000
#: Rough size of one stored PNG at ``size`` pixels (chest X-rays compress to about 0.6 B/px).
PNG_BYTES_PER_PIXEL = 0.6
#: zlib level of the stored PNGs. Level 1 encodes a noisy 256-px radiograph 3-5x faster than
#: Pillow's default 6 (3-5 ms instead of 14 ms on one core, measured for data_fetch.ingest)
#: for a file about 17% larger; the pixels are the same (PNG is lossless).
PNG_COMPRESS_LEVEL = 1


class CorruptImageError(ValueError):
    """An image could not be decoded (or is too large to decode safely)."""


def to_uint8(img: Image.Image) -> Image.Image:
    """Greyscale 8-bit version of ``img`` (16-bit and RGB(A) inputs included)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(scale_to_uint8(arr))
    if img.mode != "L":
        img = img.convert("L")
    return img


def scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Linearly map an array's min..max to 0..255 (a constant image becomes 0)."""
    arr = np.asarray(arr, dtype=np.float64)
    low, high = float(np.min(arr)), float(np.max(arr))
    if high <= low:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.round((arr - low) / (high - low) * 255.0).astype(np.uint8)


def square_resize(img: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square and resize to ``size`` (``size <= 0`` only converts)."""
    img = to_uint8(img)
    if size <= 0:
        return img
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    img = img.crop((left, top, left + side, top + side))
    if side != size:
        img = img.resize((size, size), Image.Resampling.LANCZOS if side > size
                         else Image.Resampling.BILINEAR)
    return img


def check_member_size(n_bytes: int, name: str, cap: int | None = None) -> None:
    """Raise :class:`CorruptImageError` when a file of ``n_bytes`` is over ``cap``.

    ``cap`` defaults to :data:`MAX_MEMBER_BYTES`, the cap for one image.
    """
    cap = MAX_MEMBER_BYTES if cap is None else cap
    if n_bytes > cap:
        raise CorruptImageError(f"{name}: {n_bytes:,} bytes, over the {cap:,}-byte cap "
                                "for this file (not read)")


def open_image(data: bytes, name: str) -> Image.Image:
    """Open image bytes without decoding the pixels, refusing what is over the caps.

    Raises :class:`CorruptImageError` when ``data`` is over :data:`MAX_MEMBER_BYTES`, is not
    an image, or has more than :data:`MAX_PIXELS` pixels (checked from the header).
    """
    check_member_size(len(data), name)
    try:
        img = Image.open(io.BytesIO(data))
    except Exception as err:  # PIL raises many types for broken files
        raise corrupt(name, err) from None
    if img.width * img.height > MAX_PIXELS:
        raise CorruptImageError(f"{name}: {img.width} x {img.height} pixels, over the "
                                f"{MAX_PIXELS / 1e6:.0f} Mpx cap (not decoded)")
    return img


def corrupt(name: str, err: BaseException) -> CorruptImageError:
    """The :class:`CorruptImageError` for a decoder's ``err`` (no memory addresses in it)."""
    detail = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(err))
    return CorruptImageError(f"{name}: cannot decode image ({type(err).__name__}: {detail})")


def decode_image(data: bytes, name: str) -> Image.Image:
    """Decode image bytes fully (PNG, JPEG...), raising :class:`CorruptImageError` if broken."""
    img = open_image(data, name)
    try:
        img.load()
    except Exception as err:  # truncated files fail at load time
        raise corrupt(name, err) from None
    return img


def save_png(img: Image.Image, path: Path) -> None:
    """Write ``img`` as PNG atomically (temporary name, then rename), at zlib level
    :data:`PNG_COMPRESS_LEVEL`; a failure leaves neither half a PNG nor a temporary file."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    atomic_write_bytes(path, buf.getvalue(), fsync=False)


def store_image(data: bytes, name: str, path: Path, size: int) -> None:
    """Decode ``data``, square-resize it to ``size`` and save it as PNG at ``path``.

    The full decode (no JPEG draft). The fetchers store through
    :func:`data_fetch.ingest.store_item` (same caps, same pixels for PNG sources, JPEGs
    draft-decoded within :data:`data_fetch.ingest.DRAFT_MAX_ABS_DIFF`).
    """
    save_png(square_resize(decode_image(data, name), size), path)


def png_size(path: Path) -> tuple[int, int] | None:
    """Width and height of a stored PNG from its header, or None when it cannot be read."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # a broken file: the caller treats it as missing
        return None


def estimate_disk(n_images: int, size: int, original_bytes: int = 0) -> int:
    """Bytes needed to store ``n_images`` PNGs at ``size`` px plus any kept originals."""
    px = (size if size > 0 else 2048) ** 2
    return int(n_images * px * PNG_BYTES_PER_PIXEL) + original_bytes
