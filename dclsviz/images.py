"""Turning whatever a user hands us (a path, bytes, an array) into an RGB uint8 image, or a clear error.

Uploads are untrusted: decompression bombs, 16-bit PNGs, CMYK JPEGs, transparent or animated
images and files that are not images at all each get a message a person can act on.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS = 40_000_000  # ~ 6300×6300; larger uploads are almost always mistakes and cost GBs to decode
MIN_SIDE = 16

Source = Union[str, Path, bytes, np.ndarray, Image.Image]


class ImageError(ValueError):
    """The input cannot be used as an image; the message says why."""


def _open(src: Source) -> Image.Image:
    if isinstance(src, Image.Image):
        return src
    try:
        if isinstance(src, (bytes, bytearray)):
            im = Image.open(io.BytesIO(src))
        else:
            im = Image.open(Path(src))
        im.size  # noqa: B018  (the header is parsed lazily)
        return im
    except FileNotFoundError:
        raise ImageError(f"no such file: {src}") from None
    except UnidentifiedImageError:
        name = Path(src).name if isinstance(src, (str, Path)) else "the upload"
        raise ImageError(f"{name} is not an image PIL can read (expected JPEG, PNG, WebP, BMP, TIFF, GIF)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"the image is too large to decode safely ({e})") from None


def _to_rgb_u8(im: Image.Image) -> tuple[np.ndarray, list[str]]:
    notes = []
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        notes.append("16-bit image: scaled to 8 bits")
        return np.repeat((a / hi * 255.0).round().clip(0, 255).astype(np.uint8)[..., None], 3, axis=2), notes
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        notes.append("transparent image: composited on white")
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    elif im.mode == "CMYK":
        notes.append("CMYK image: converted to RGB")
    return np.asarray(im.convert("RGB"), dtype=np.uint8), notes


def load_image(src: Source, *, with_notes: bool = False):
    """An RGB uint8 (H, W, 3) array; with ``with_notes``, also the list of conversions applied."""
    if isinstance(src, np.ndarray):
        a = src
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        if a.ndim != 3 or a.shape[2] not in (3, 4):
            raise ImageError(f"expected an H×W×3 image array, got shape {a.shape}")
        if a.dtype != np.uint8:
            if a.dtype == np.uint16:
                a = (a.astype(np.float64) / 65535.0 * 255.0).round()
            elif np.issubdtype(a.dtype, np.floating) and np.nanmax(a) <= 1.0:
                a = a * 255.0
            a = np.nan_to_num(a).clip(0, 255).astype(np.uint8)
        rgb, notes = a[..., :3].copy(), []
    else:
        im = _open(src)
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise ImageError(f"the image is {w}×{h} pixels ({w * h / 1e6:.0f} MP); the limit is "
                             f"{MAX_PIXELS / 1e6:.0f} MP. Please downscale it.")
        try:
            # exif_transpose hands back a copy of the current frame, which no longer knows it was animated
            animated = []
            if getattr(im, "is_animated", False):
                animated.append(f"animated image: using the first of {getattr(im, 'n_frames', '?')} frames")
                im.seek(0)
            rgb, notes = _to_rgb_u8(ImageOps.exif_transpose(im) or im)
            notes = animated + notes
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"the image file is damaged or truncated ({e})") from None
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageError(f"the image is only {w}×{h} pixels; at least {MIN_SIDE}×{MIN_SIDE} is needed")
    return (rgb, notes) if with_notes else rgb


def load_map(src: Source) -> np.ndarray:
    """A user's human map as float32 (H, W): grey levels, or luminance of a colour image (or a .npy array)."""
    if isinstance(src, (str, Path)) and Path(src).suffix.lower() == ".npy":
        try:
            src = np.load(Path(src), allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ImageError(f"{Path(src).name}: not a readable .npy array ({e})") from None
        if src.dtype.kind not in "uif":
            raise ImageError(f"the human map array has dtype {src.dtype}; a numeric map is needed")
    if isinstance(src, np.ndarray):
        a = src.astype(np.float32)
    else:
        im = _open(src)
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise ImageError(f"the human map is {w}×{h} pixels; the limit is {MAX_PIXELS / 1e6:.0f} MP")
        try:
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                a = np.asarray(im, dtype=np.float32)
            else:
                a = np.asarray(im.convert("L"), dtype=np.float32)
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"the human map file is damaged or truncated ({e})") from None
    if a.ndim == 3:
        a = a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) if a.shape[2] >= 3 else a[..., 0]
    if a.ndim != 2 or min(a.shape) < 2:
        raise ImageError(f"a human map must be a 2-D image, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ImageError("the human map contains NaN or infinite values")
    return a
