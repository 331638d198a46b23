"""A synthetic, seeded data set in the ClickMe format, for the demo pair that ships in assets/demo.

Each sample is one object of a shape class, drawn at a random colour, size, position and rotation on
a cluttered background: smooth colour noise, soft blobs and curved strokes. Neither the colours nor
the clutter say anything about the class, so the object's shape is the only evidence and a model that
classifies well has to look at it. The "human" map marks the object, blurred, the way ClickMe clicks
mark what people found informative.

Everything comes from numpy's seeded generator and OpenCV's deterministic drawing, so a seed and an
index always give the same pixels, and the same JPEG bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Union

import cv2
import numpy as np
import simplejpeg

from . import CLASS_NAMES

SIZE = 256  # ClickMe images and heatmaps are 256x256
IMAGE_QUALITY = 90
HEATMAP_QUALITY = 95
# Indices of held-out samples start here, so no training index (far fewer than this) can produce one.
HELD_OUT_START = 1_000_000

RADIUS = (40.0, 64.0)  # object radius range in pixels of the 256 frame
MIN_CONTRAST = 120.0  # least RGB distance between the object and the background under it
# Clutter strength. The background spans this fraction of the grey range around mid-grey; blobs and
# strokes come in these numbers and widths. Enough to hide the object from a colour or edge
# detector, little enough that a small network trained for minutes on CPU learns the shapes.
BACKGROUND_SPAN = 0.35
BLOBS = (1, 4)
BLOB_OPACITY = (0.25, 0.5)
STROKES_UNDER, STROKES_OVER = (1, 3), (0, 2)
STROKE_WIDTH = (1, 3)

RngOrSeed = Union[int, np.random.Generator]


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` under ``seed``: each sample can be remade on its own."""
    return np.random.default_rng([int(seed), int(index)])


# --- shapes, as unit-radius outlines or masks -------------------------------------------------------


def _star(points: int, inner: float) -> np.ndarray:
    a = np.arange(2 * points) * np.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.sin(a), -r * np.cos(a)], 1)


def _regular(n: int) -> np.ndarray:
    a = np.arange(n) * 2 * np.pi / n
    return np.stack([np.sin(a), -np.cos(a)], 1)


_ARM = 0.3
_OUTLINES = {
    "square": _regular(4) * 1.0,
    "triangle": _regular(3) * 1.1,
    "cross": np.array([(-_ARM, -1), (_ARM, -1), (_ARM, -_ARM), (1, -_ARM), (1, _ARM), (_ARM, _ARM), (_ARM, 1),
                       (-_ARM, 1), (-_ARM, _ARM), (-1, _ARM), (-1, -_ARM), (-_ARM, -_ARM)], float),
    "star": _star(5, 0.45) * 1.1,
    "arrow": np.array([(0, -1), (0.75, -0.15), (0.28, -0.15), (0.28, 1), (-0.28, 1), (-0.28, -0.15),
                       (-0.75, -0.15)], float),
}

# Coordinates go to OpenCV as fixed point with this many fractional bits, and edges are drawn
# anti-aliased, so shapes sit at sub-pixel positions without drawing at a larger size.
_SHIFT = 4
_ONE = 1 << _SHIFT


def _fixed(xy) -> np.ndarray:
    return np.round(np.asarray(xy, dtype=np.float64) * _ONE).astype(np.int32)


def _circle(layer: np.ndarray, cx: float, cy: float, r: float, value: int) -> None:
    cv2.circle(layer, tuple(int(v) for v in _fixed((cx, cy))), int(_fixed(r)), value, -1, cv2.LINE_AA, _SHIFT)


def _object_mask(shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Coverage of the object, float32 (256, 256) in 0..1."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    if shape in ("disc", "ring", "crescent"):
        _circle(mask, cx, cy, r, 255)
        if shape == "ring":
            _circle(mask, cx, cy, 0.6 * r, 0)
        elif shape == "crescent":
            d = 0.5 * r
            _circle(mask, cx + d * np.cos(angle), cy + d * np.sin(angle), 0.85 * r, 0)
    else:
        c, sn = np.cos(angle), np.sin(angle)
        xy = _OUTLINES[shape] @ np.array([[c, sn], [-sn, c]]) * r + (cx, cy)
        cv2.fillPoly(mask, [_fixed(xy)], 255, cv2.LINE_AA, _SHIFT)
    return mask.astype(np.float32) / 255.0


# --- clutter ----------------------------------------------------------------------------------------


_COARSE = 32  # the background and the blobs are smooth, so they are made at this size and enlarged


def _enlarge(x: np.ndarray) -> np.ndarray:
    return cv2.resize(x, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)


def _background(rng: np.random.Generator, clutter: float) -> np.ndarray:
    # random colours on a coarse grid, blurred by about a cell: smooth and isotropic, so the grid's
    # squares never show (they would look like the "square" class)
    cells = int(rng.integers(3, 8))
    grid = rng.uniform(0, 255, (cells, cells, 3)).astype(np.float32)
    bg = cv2.resize(grid, (_COARSE, _COARSE), interpolation=cv2.INTER_LINEAR)
    bg = cv2.GaussianBlur(bg, (0, 0), 0.5 * _COARSE / cells, borderType=cv2.BORDER_REFLECT)
    # the blur flattens contrast; stretch it back to a known span
    lo, hi = bg.min((0, 1)), bg.max((0, 1))
    bg = ((bg - lo) / np.maximum(hi - lo, 1.0) - 0.5) * (255.0 * BACKGROUND_SPAN * clutter) + 127.5
    return _enlarge(bg)


def _box(alpha: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
    if rows.size == 0:
        return slice(0, 0), slice(0, 0)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _blend(img: np.ndarray, alpha: np.ndarray, colour) -> None:
    """img = img * (1 - alpha) + colour * alpha, in place; ``colour`` is RGB or an image like img."""
    box = _box(alpha)
    a = alpha[box][..., None]
    c = colour[box] if np.ndim(colour) == 3 else colour
    img[box] += a * (c - img[box])


def _soft_blob(rng: np.random.Generator, img: np.ndarray) -> None:
    # A heavily blurred irregular patch: it has no sharp edge, so no shape a class could be mistaken for.
    k = _COARSE / SIZE
    layer = np.zeros((_COARSE, _COARSE), np.float32)
    cx, cy = rng.uniform(0, SIZE, 2)
    n = int(rng.integers(5, 10))
    a = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = rng.uniform(12, 45) * rng.uniform(0.5, 1.0, n)
    pts = np.stack([cx + rad * np.cos(a), cy + rad * np.sin(a)], 1) * k
    cv2.fillPoly(layer, [_fixed(pts)], 1.0, cv2.LINE_AA, _SHIFT)
    alpha = cv2.GaussianBlur(layer, (0, 0), rng.uniform(6, 12) * k)
    alpha = np.clip(_enlarge(alpha), 0, 1)
    # the tails of the blur are far below one grey level: cut them so the blend touches less
    alpha[alpha < 1e-3] = 0
    _blend(img, alpha * rng.uniform(*BLOB_OPACITY), rng.uniform(0, 255, 3))


def _stroke(rng: np.random.Generator, img: np.ndarray) -> None:
    # A thin curve (a quadratic Bezier): edges like the objects have, but open and thin.
    layer = np.zeros((SIZE, SIZE), np.uint8)
    p = rng.uniform(-20, SIZE + 20, (3, 2))
    t = np.linspace(0, 1, 24)[:, None]
    curve = (1 - t) ** 2 * p[0] + 2 * (1 - t) * t * p[1] + t**2 * p[2]
    cv2.polylines(layer, [_fixed(curve)], False, 255, int(rng.integers(*STROKE_WIDTH)), cv2.LINE_AA, _SHIFT)
    _blend(img, layer.astype(np.float32) / 255.0, rng.uniform(0, 255, 3))


# --- samples ----------------------------------------------------------------------------------------


def _object_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    for _ in range(50):
        colour = rng.uniform(0, 255, 3)
        if np.linalg.norm(colour - under) >= MIN_CONTRAST:
            return colour
    # nothing random was far enough: the complement of what lies under the object always is
    return 255.0 - under


_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


def _count(rng: np.random.Generator, bounds: tuple[int, int], clutter: float) -> int:
    return int(round(int(rng.integers(*bounds)) * clutter))


def make_sample(rng_or_seed: RngOrSeed, index: int, clutter: float = 1.0) -> tuple[np.ndarray, np.ndarray, int]:
    """Sample ``index``: (image uint8 (256,256,3), heatmap uint8 (256,256), label).

    The label is ``index % len(CLASS_NAMES)`` so any run of indices is balanced. With an int seed the
    pixels come from ``sample_rng(seed, index)``; with a Generator they are drawn from it.
    ``clutter`` in [0, 1] scales the background contrast and the number of blobs and strokes: 1 is the
    demo data, lower values are easier images that training mixes in so the shapes are found sooner.
    """
    rng = sample_rng(rng_or_seed, index) if isinstance(rng_or_seed, (int, np.integer)) else rng_or_seed
    label = int(index) % len(CLASS_NAMES)
    img = _background(rng, clutter)
    for _ in range(_count(rng, BLOBS, clutter)):
        _soft_blob(rng, img)
    # some strokes lie under the object and some over it, so partly hidden outlines are normal
    n_before, n_after = _count(rng, STROKES_UNDER, clutter), _count(rng, STROKES_OVER, clutter)
    for _ in range(n_before):
        _stroke(rng, img)

    r = rng.uniform(*RADIUS)
    cx, cy = rng.uniform(r + 4, SIZE - r - 4, 2)
    angle = rng.uniform(0, 2 * np.pi)
    mask = _object_mask(CLASS_NAMES[label], cx, cy, r, angle)
    box = _box(mask)
    m = mask[box][..., None]
    under = (img[box] * m).sum((0, 1)) / max(float(m.sum()), 1e-6)
    colour = _object_colour(rng, under)
    # a gentle shading across the object, so it is not a flat colour a single pixel could identify
    d = rng.uniform(-1, 1, 2)
    d /= max(float(np.linalg.norm(d)), 1e-6)
    shade = 1.0 + 0.25 * ((_XX[box] - cx) * d[0] + (_YY[box] - cy) * d[1]) / r
    img[box] += m * (np.clip(colour * shade[..., None], 0, 255) - img[box])

    for _ in range(n_after):
        _stroke(rng, img)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)

    heat = cv2.GaussianBlur(mask, (0, 0), 0.2 * r)
    heat = np.clip(np.round(heat / max(float(heat.max()), 1e-6) * 255), 0, 255).astype(np.uint8)
    return image, heat, label


def encode(image: np.ndarray, heatmap: np.ndarray) -> tuple[bytes, bytes]:
    """JPEG bytes as ClickMe stores them: the image RGB, the heatmap one-channel grey."""
    img = simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality=IMAGE_QUALITY, colorspace="RGB")
    heat = simplejpeg.encode_jpeg(np.ascontiguousarray(heatmap[..., None]), quality=HEATMAP_QUALITY,
                                  colorspace="GRAY")
    return img, heat


def records(seed: int, indices) -> Iterator[tuple[bytes, bytes, int]]:
    """(image_jpeg, heatmap_jpeg, label) for each index, as ``clickme.write_shard`` takes them."""
    for i in indices:
        image, heat, label = make_sample(seed, i)
        yield (*encode(image, heat), label)


def held_out_indices(n: int) -> range:
    """The generator indices of ``n`` held-out images, disjoint from the training ones."""
    return range(HELD_OUT_START, HELD_OUT_START + n)


def write_demo_shard(path: Path, n: int, seed: int = 0) -> int:
    """Write ``n`` held-out samples as a ClickMe shard at ``path``; returns the record count."""
    from .. import clickme

    return clickme.write_shard(path, records(seed, held_out_indices(n)))
