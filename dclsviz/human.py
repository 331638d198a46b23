"""The ClickMe human-map pipeline, reproduced without TensorFlow.

The reference is `parse_clickme_prototype` of serre-lab Harmonization
(`harmonization/common/clickme_dataset.py`): decode the JPEGs, resize the image to 224, and turn
the heatmap into a human map by resize 256->64, a 10x10 Gaussian blur with TF 'SAME' padding, and
resize 64->224. Every step below copies TF's arithmetic (float32, half-pixel bilinear without
antialiasing, IFAST JPEG DCT) because the Spearman score ranks pixels: tiny differences that move the
exact-zero region of the map change rho by up to 1e-2 (see the conformance kit's README).

The same path turns a map that a user uploads, of any size, into a comparable 224x224 human map.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import simplejpeg

SIZE_IMAGE = 224
SIZE_BLUR = 64
BLUR_SIZE = 10
BLUR_SIGMA = 10.0

# ITU-R BT.601 luma, the weights JPEG and PIL's "L" mode use, so a grey map saved as colour comes back
# as the same grey values.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def decode_jpeg(data: bytes, gray: bool) -> np.ndarray:
    """Decode JPEG bytes exactly as ``tf.io.decode_jpeg`` with its default arguments does.

    TF's default DCT is libjpeg's IFAST with fancy upsampling; PIL and OpenCV always use ISLOW, which
    differs by up to 11 levels. Returns uint8 (H, W, 3), or (H, W) when ``gray``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode_jpeg expects bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError("cannot decode an empty byte string as JPEG")
    try:
        out = simplejpeg.decode_jpeg(
            bytes(data),
            colorspace="gray" if gray else "rgb",
            fastdct=True,
            fastupsample=False,
            strict=True,  # a truncated JPEG is an error, as in TF with try_recover_truncated=False
        )
    except Exception as e:  # simplejpeg raises ValueError or its own errors depending on the damage
        raise ValueError(f"not a decodable JPEG ({len(data)} bytes): {e}") from e
    return out[..., 0] if gray else out


def tf_resize_bilinear(x: np.ndarray, size: Union[int, Sequence[int]]) -> np.ndarray:
    """``tf.image.resize(x, size, 'bilinear')`` of TF2, in numpy: half-pixel centres, no antialias.

    Works on (H, W) and (H, W, C). Bit-exact against TF because every operation stays in float32
    in the order TF's kernel uses.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) array, got shape {x.shape}")
    out_h, out_w = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if out_h <= 0 or out_w <= 0 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"cannot resize shape {x.shape} to {(out_h, out_w)}")
    ylo, yhi, wy = _axis_weights(x.shape[0], out_h)
    xlo, xhi, wx = _axis_weights(x.shape[1], out_w)
    if x.ndim == 3:
        wx = wx[:, None]
    rows_lo, rows_hi = x[ylo], x[yhi]
    a, b = rows_lo[:, xlo], rows_lo[:, xhi]
    c, d = rows_hi[:, xlo], rows_hi[:, xhi]
    top = a + (b - a) * wx
    bottom = c + (d - c) * wx
    wy = wy.reshape((-1,) + (1,) * (x.ndim - 1))
    return top + (bottom - top) * wy


def _axis_weights(n_in: int, n_out: int):
    # TF computes the scale and the source coordinate in float32; doing it in float64 would move
    # some weights by an ulp and break bit-exactness.
    scale = np.float32(n_in) / np.float32(n_out)
    s = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    fl = np.floor(s)
    lo = np.maximum(fl, 0).astype(np.intp)
    hi = np.minimum(np.ceil(s), n_in - 1).astype(np.intp)
    return lo, hi, (s - fl).astype(np.float32)


def _blur_kernel() -> np.ndarray:
    # The reference's ranges for an even size give x = -5..4 and y = 4..-5, so the peak sits at
    # row 4, column 5: the kernel is deliberately off-centre, and must stay so to match.
    half = (BLUR_SIZE - 1) // 2
    xs = np.arange(-(BLUR_SIZE - 1) // 2, half + 1, dtype=np.float64)
    ys = np.arange(half, -(BLUR_SIZE - 1) // 2 - 1, -1, dtype=np.float64)
    xx, yy = np.meshgrid(xs, ys)
    k = np.exp(-(xx**2 + yy**2) / (2 * BLUR_SIGMA**2))
    return (k / k.sum()).astype(np.float32)


BLUR_KERNEL = _blur_kernel()
BLUR_KERNEL.setflags(write=False)

# TF 'SAME' for an even kernel pads the odd pixel after, not before.
_PAD_BEFORE = (BLUR_SIZE - 1) // 2
_PAD_AFTER = BLUR_SIZE - 1 - _PAD_BEFORE


def blur_same(x64: np.ndarray) -> np.ndarray:
    """The reference ``gaussian_blur``: cross-correlation with BLUR_KERNEL, zero 'SAME' padding.

    Accumulates in float64 (TF's own oneDNN and plain kernels differ by 5e-5 from each other, and
    float64 lands within 3e-5 of the golden values). Input (H, W) or (H, W, 1); output float32 of the same shape.
    """
    x = np.asarray(x64)
    squeeze = x.ndim == 3
    if squeeze:
        if x.shape[2] != 1:
            raise ValueError(f"blur_same takes one channel, got shape {x.shape}")
        x = x[..., 0]
    if x.ndim != 2:
        raise ValueError(f"expected an (H, W) map, got shape {x.shape}")
    h, w = x.shape
    padded = np.pad(x.astype(np.float64), ((_PAD_BEFORE, _PAD_AFTER), (_PAD_BEFORE, _PAD_AFTER)))
    k = BLUR_KERNEL.astype(np.float64)
    out = np.zeros((h, w), dtype=np.float64)
    for i in range(BLUR_SIZE):
        for j in range(BLUR_SIZE):
            out += k[i, j] * padded[i : i + h, j : j + w]
    out = out.astype(np.float32)
    return out[..., None] if squeeze else out


def clickme_image_224(image_u8: np.ndarray) -> np.ndarray:
    """The reference image path: float32, bilinear resize to 224x224x3, values still 0..255.

    Grey images are repeated to three channels and an alpha channel is dropped, so user photos of
    any kind work; ClickMe images are RGB already.
    """
    img = np.asarray(image_u8)
    if img.size == 0:
        raise ValueError("the image is empty")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) image, got shape {img.shape}")
    return tf_resize_bilinear(img[..., :3].astype(np.float32), (SIZE_IMAGE, SIZE_IMAGE))


def to_gray(heatmap: np.ndarray) -> np.ndarray:
    """A heatmap as one float32 channel: (H, W) and (H, W, 1) as they are, colour by BT.601 luma.

    RGB(A) maps are converted to luminance (0.299 R + 0.587 G + 0.114 B); alpha is ignored. A colour
    map whose channels are all equal (a grey image saved as RGB) keeps its values exactly.
    """
    h = np.asarray(heatmap)
    if h.ndim == 3 and h.shape[2] == 1:
        h = h[..., 0]
    elif h.ndim == 3 and h.shape[2] in (3, 4):
        rgb = h[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            h = rgb[..., 0]
        else:
            h = rgb.astype(np.float64) @ _LUMA
    if h.ndim != 2:
        raise ValueError(f"expected a heatmap of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {h.shape}")
    if h.dtype == np.bool_:
        h = h.astype(np.uint8)
    if not np.issubdtype(h.dtype, np.number):
        raise ValueError(f"the heatmap must be numeric, got dtype {h.dtype}")
    return h.astype(np.float32)


def human_map_stages(heatmap: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three intermediate maps of `human_map`: (64x64, 64x64 blurred, 224x224), float32 (H, W).

    Kept apart so that each stage can be checked against the reference on its own.
    """
    h = to_gray(heatmap)
    if h.size == 0:
        raise ValueError(f"the heatmap is empty (shape {h.shape})")
    if not np.all(np.isfinite(h)):
        raise ValueError("the heatmap contains NaN or infinite values")
    h64 = tf_resize_bilinear(h, (SIZE_BLUR, SIZE_BLUR))
    blurred = blur_same(h64)
    return h64, blurred, tf_resize_bilinear(blurred, (SIZE_IMAGE, SIZE_IMAGE))


def human_map(heatmap: np.ndarray) -> np.ndarray:
    """The reference human map: float32 -> resize 64 -> blur -> resize 224. Returns (224, 224) float32.

    No normalisation, as in the reference, so a ClickMe map stays in 0..255. Any size is accepted: the
    256->64 step is the reference's, other sizes go through the same unantialiased resize.
    """
    return human_map_stages(heatmap)[2]


def user_map(heatmap: np.ndarray) -> np.ndarray:
    """A user's map (any size) as ``human_map`` makes it, except that a constant map stays constant.

    The reference's zero-padded blur would darken a constant map's borders and so invent a centre-over-edge
    ranking the user never drew; kept constant, its Spearman's rho is undefined, as it should be.
    """
    h = to_gray(heatmap)
    if h.size and np.all(np.isfinite(h)) and float(h.min()) == float(h.max()):
        return np.full((SIZE_IMAGE, SIZE_IMAGE), float(h.flat[0]), np.float32)
    return human_map(heatmap)
