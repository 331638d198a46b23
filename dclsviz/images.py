"""Turning whatever a user hands us (a path, bytes, an array) into an RGB uint8 image, or a clear error.

Uploads are untrusted: decompression bombs, 16-bit PNGs, CMYK JPEGs, transparent or animated
images and files that are not images at all each get a message a person can act on.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Union

import numpy as np
from numpy.lib import format as npy_format
from PIL import Image, ImageOps, UnidentifiedImageError

from . import limits

MIN_SIDE = 16

Source = Union[str, Path, bytes, np.ndarray, Image.Image]


class ImageError(ValueError):
    """The input cannot be used as an image; the message says why."""


def _check_pixels(width: int, height: int, what: str) -> None:
    # images and maps share the limit; ImageError keeps every caller's "bad upload" handling in one except
    try:
        limits.pixels(width, height, what)
    except limits.LimitError as e:
        raise ImageError(str(e)) from None


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
        _check_pixels(*im.size, "the image")
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


def npy_header(path: Union[str, Path]) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """Shape, dtype, Fortran order and data offset of a .npy file, read from its header alone.

    Nothing is allocated from what the header claims, so a forged shape costs nothing. Object and other
    non-numeric dtypes are refused here.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = npy_format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = npy_format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = npy_format.read_array_header_2_0(f)
            else:
                raise ImageError(f"{path.name}: .npy format version {version[0]}.{version[1]} is not read "
                                 "(versions 1.0 and 2.0 are)")
            offset = f.tell()
    except FileNotFoundError:
        raise ImageError(f"no such file: {path}") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{path.name}: not a readable .npy array ({e})") from None
    if dtype.hasobject or dtype.kind not in "uif":
        raise ImageError(f"{path.name}: the array has dtype {dtype}; a numeric (integer or float) array is needed")
    return tuple(shape), dtype, fortran, offset


def _shape_text(shape) -> str:
    return "×".join(map(str, shape)) if shape else "scalar"


def load_npy(path: Union[str, Path], check_shape) -> np.ndarray:
    """A numeric .npy array, once ``check_shape(shape)`` has accepted the shape its header claims and the file
    is long enough to hold it."""
    shape, dtype, _, offset = npy_header(path)
    check_shape(shape)
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    have = Path(path).stat().st_size - offset
    if have < need:
        raise ImageError(f"{Path(path).name}: the file is truncated: its header describes a {_shape_text(shape)} "
                         f"{dtype} array of {need:,} bytes, but only {have:,} bytes follow")
    try:
        return np.load(Path(path), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ImageError(f"{Path(path).name}: not a readable .npy array ({e})") from None


def _check_map_shape(shape: tuple[int, ...]) -> None:
    if not (len(shape) == 2 or (len(shape) == 3 and 1 <= shape[2] <= 4)):
        raise ImageError(f"a human map must be a 2-D array (or H×W×C with at most 4 channels), got shape {shape}")
    _check_pixels(shape[1], shape[0], "the human map")
    if int(np.prod(shape, dtype=object)) > limits.MAX_PIXELS:
        raise ImageError(f"the human map holds {int(np.prod(shape, dtype=object)):,} values; the limit is "
                         f"{limits.MAX_PIXELS:,}")
    if min(shape[:2]) < 2:
        raise ImageError(f"a human map must be a 2-D image, got shape {shape}")


def load_map(src: Source) -> np.ndarray:
    """A user's human map as float32 (H, W): grey levels, or luminance of a colour image (or a .npy array).

    A .npy file is judged by its header (shape, dtype, length) before any of it is read.
    """
    if isinstance(src, (str, Path)) and Path(src).suffix.lower() == ".npy":
        src = load_npy(src, _check_map_shape)
    if isinstance(src, np.ndarray):
        if src.dtype.hasobject or src.dtype.kind not in "uifb":
            raise ImageError(f"the human map array has dtype {src.dtype}; a numeric map is needed")
        _check_map_shape(src.shape)
        a = src.astype(np.float32)
    else:
        a = _decode_map(src)
    if a.ndim == 3:
        a = a[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) if a.shape[2] >= 3 else a[..., 0]
    if a.ndim != 2 or min(a.shape) < 2:
        raise ImageError(f"a human map must be a 2-D image, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ImageError("the human map contains NaN or infinite values")
    return a


def _decode_map(src: Source) -> np.ndarray:
    im = _open(src)
    _check_pixels(*im.size, "the human map")
    try:
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return np.asarray(im, dtype=np.float32)
        return np.asarray(im.convert("L"), dtype=np.float32)
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"the human map file is damaged or truncated ({e})") from None


def _check_tensor_shape(shape: tuple[int, ...]) -> None:
    chw = shape[1:] if len(shape) == 4 and shape[0] == 1 else shape
    if len(chw) != 3 or chw[0] != 3 or min(chw[1:]) < MIN_SIDE:
        raise ImageError(f"an input tensor must be a normalised (1,3,H,W) or (3,H,W) array with H, W ≥ {MIN_SIDE}, "
                         f"not shape {shape}")
    _check_pixels(chw[2], chw[1], "the input tensor")


def load_input_tensor(path: Union[str, Path]) -> np.ndarray:
    """An already-normalised (3, H, W) float32 model input from a .npy file: numeric, within the pixel limit,
    every value finite (the header is judged before the array is read)."""
    x = load_npy(path, _check_tensor_shape)
    # checked after the cast: a float64 beyond float32's range becomes inf there
    with np.errstate(over="ignore"):
        x = np.ascontiguousarray(x.reshape(x.shape[-3:]), dtype=np.float32)
    if not np.isfinite(x).all():
        raise ImageError(f"{Path(path).name}: the input tensor holds NaN/inf values (or values beyond float32)")
    return x
