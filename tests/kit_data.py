"""The conformance kit's facts as the tests use them, read from tests/data (see tests/data/README.md).

Most files are the kit's own, copied. Five kinds of array are not stored, because they follow bit for bit from
other stored data: the 224x224 maps of the checkpoint goldens (torch's antialiased bilinear upsampling of the
stored low-res maps), the JPEG bytes of the ClickMe golden (they are slices of the sample shard), the TF-decoded
images (an IFAST decode of those bytes), the TF-resized `image_224` / `heatmap_224` (the TF bilinear formulas
applied in float32 to the decoded image and to the stored blurred heatmap), and the metric cases' human maps
(records of `heatmap_224`). Each is rebuilt here and checked against the sha256 of the kit's own array, stored
in tests/data: a rebuilt array is the kit's array or the load fails; nothing is approximated.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
CLICKME = DATA / "clickme"


def sha256_array(a: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and C-order bytes."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def kit_input(name: str) -> np.ndarray:
    """A shared input by the kit's file name (`input_224.npy`, `input_256.npy`), from tests/data/inputs.npz."""
    with np.load(DATA / "inputs.npz") as f:
        return f[Path(name).stem]


def tf_resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """TF2 `tf.image.resize(x, size, 'bilinear')` on an (H, W, C) array, in float32, as the kit spells it out.

    Half-pixel centres, no antialiasing: s = (i + 0.5) * in/out - 0.5, neighbours floor(s) and ceil(s) clamped
    to the image, weight s - floor(s); rows are blended after columns.
    """
    x = np.asarray(x, np.float32)

    def axis(n_in: int, n_out: int):
        s = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * np.float32(n_in / n_out) - np.float32(0.5)
        lo = np.floor(s)
        w = (s - lo).astype(np.float32)
        return np.maximum(lo, 0).astype(np.int64), np.minimum(np.ceil(s), n_in - 1).astype(np.int64), w

    y0, y1, wy = axis(x.shape[0], size[0])
    x0, x1, wx = axis(x.shape[1], size[1])
    wx = wx[None, :, None]
    top = x[y0][:, x0] + (x[y0][:, x1] - x[y0][:, x0]) * wx
    bottom = x[y1][:, x0] + (x[y1][:, x1] - x[y1][:, x0]) * wx
    return top + (bottom - top) * wy[:, None, None]


UPSAMPLED_MAPS = ("gradcam", "threshold", "top1_gradcam", "top1_threshold")


def _antialias_weights(n_in: int, n_out: int) -> list[tuple[int, list]]:
    # torch's antialiased bilinear weights for an upscale, in its float32 steps: centre scale*(i+0.5), support 1,
    # triangle filter, normalised by the float32 sum of the taps
    scale = np.float32(n_in / n_out)
    rows = []
    for i in range(n_out):
        center = np.float32(float(scale) * (i + 0.5))
        lo, hi = max(int(float(center) - 0.5), 0), min(int(float(center) + 1.5), n_in)
        taps = [abs(np.float32(float(np.float32(j - center)) + 0.5)) for j in range(lo, hi)]
        taps = [np.float32(1) - x if x < 1 else np.float32(0) for x in taps]
        total = np.float32(0)
        for w in taps:
            total = np.float32(total + w)
        rows.append((lo, [np.float32(w / total) for w in taps]))
    return rows


def _antialias_pass(a: np.ndarray, rows) -> np.ndarray:
    out = np.empty(a.shape[:-1] + (len(rows),), np.float32)
    for i, (lo, taps) in enumerate(rows):
        t = (a[..., lo] * taps[0]).astype(np.float32)
        for j, w in enumerate(taps[1:], lo + 1):
            # a fused multiply-add, as torch's compiled kernel does: exact product, one rounding to float32
            t = (t.astype(np.float64) + a[..., j].astype(np.float64) * np.float64(w)).astype(np.float32)
        out[..., i] = t
    return out


def upsample_224(m: np.ndarray) -> np.ndarray:
    """torch's `F.interpolate(m, (224, 224), mode='bilinear', antialias=True)` of a (h, w) float32 map, upscaling,
    in numpy: columns first, then rows (the kit's goldens are torchvision's Resize, which is that call)."""
    m = np.asarray(m, np.float32)
    cols = _antialias_pass(m, _antialias_weights(m.shape[1], 224))
    return _antialias_pass(cols.T, _antialias_weights(m.shape[0], 224)).T.copy()


def golden(id_: str) -> dict:
    """Every array of the kit's golden/<id>.npz."""
    with np.load(DATA / "golden" / f"{id_}.npz") as f:
        out = {k: f[k] for k in f.files}
    for k in UPSAMPLED_MAPS:
        digest = str(out.pop(f"{k}_224_sha256"))
        out[f"{k}_224"] = _checked(f"{id_} {k}_224", upsample_224(out[f"{k}_lowres"]), digest)
    return out


def _checked(name: str, a: np.ndarray, digest: str) -> np.ndarray:
    if sha256_array(a) != digest:
        raise AssertionError(f"tests/data: the rebuilt {name} is not the conformance kit's array (sha256 differs); "
                             "refresh tests/data from the kit (tests/data/refresh.py)")
    return a


def _ifast_decode(jpeg: bytes, gray: bool) -> np.ndarray:
    import simplejpeg

    # TF's decode_jpeg default is libjpeg's IFAST DCT with fancy upsampling; simplejpeg matches it bit for bit
    return simplejpeg.decode_jpeg(jpeg, colorspace="GRAY" if gray else "RGB", fastdct=True, fastupsample=False)


@lru_cache(maxsize=1)
def clickme_golden() -> dict:
    """Every array of the kit's clickme/golden_clickme.npz, by its kit name (N = 12 records)."""
    shard = (CLICKME / "sample_val.tfrecords").read_bytes()
    with np.load(CLICKME / "golden_clickme.npz") as f:
        stored = {k: f[k] for k in f.files}
    out = {k: v for k, v in stored.items() if not k.endswith(("_sha256", "_span"))}
    for kind in ("image", "heatmap"):
        u8 = []
        for i, (start, length) in enumerate(stored[f"{kind}_jpeg_span"]):
            raw = np.frombuffer(shard[start:start + length], np.uint8)
            out[f"{kind}_jpeg_{i:02d}"] = _checked(f"{kind}_jpeg_{i:02d}", raw, str(stored[f"{kind}_jpeg_sha256"][i]))
            u8.append(_ifast_decode(raw.tobytes(), gray=kind == "heatmap"))
        out[f"{kind}_u8"] = _checked(f"{kind}_u8", np.stack(u8), str(stored[f"{kind}_u8_sha256"]))
    image_224 = np.stack([tf_resize_bilinear(im, (224, 224)) for im in out["image_u8"]])
    out["image_224"] = _checked("image_224", image_224, str(stored["image_224_sha256"]))
    heatmap_224 = np.stack([tf_resize_bilinear(h, (224, 224)) for h in stored["heatmap_64_blur"]])
    out["heatmap_224"] = _checked("heatmap_224", heatmap_224, str(stored["heatmap_224_sha256"]))
    return out


@lru_cache(maxsize=1)
def metric_golden() -> dict:
    """Every array of the kit's clickme/golden_metric.npz; each case's human map is `heatmap_224` of its record."""
    with np.load(CLICKME / "golden_metric.npz") as f:
        stored = {k: f[k] for k in f.files}
    out = {k: v for k, v in stored.items() if k not in ("human_map_record", "human_maps_sha256")}
    human = clickme_golden()["heatmap_224"][stored["human_map_record"], ..., 0]
    out["human_maps"] = _checked("human_maps", human, str(stored["human_maps_sha256"]))
    return out


def metric_cases() -> dict:
    """The kit's clickme/golden_metric_cases.json."""
    return json.loads((CLICKME / "golden_metric_cases.json").read_text())
