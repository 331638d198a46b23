"""Alignment metrics between a model map and a human map, as the ClickMe reference computes them.

Reference: serre-lab Harmonization `harmonization/evaluation/metrics.py` and `clickme.py`. Both maps
are cast to float32 before anything else (the cast restores ties that float64 noise would break, which
moves rho by 1e-4 on real maps). Spearman uses average ranks for ties.

Where the reference returns NaN (a constant map, a NaN pixel) these functions return None, meaning
"undefined": the caller shows it and leaves it out of means, instead of one NaN poisoning a dataset
score as `np.mean` does in the reference.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import numpy as np
from scipy.stats import rankdata

HUMAN_CEILING = 0.65753  # HUMAN_SPEARMAN_CEILING of the reference: inter-human Spearman on ClickMe
EPSILON = 1e-9


def _as_f32(x) -> np.ndarray:
    a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return a.astype(np.float32, copy=False)


def _stack_and_flatten(model_maps, human_map) -> tuple[np.ndarray, np.ndarray]:
    ms, h = _as_f32(model_maps), _as_f32(human_map)
    if ms.ndim < 2:
        raise ValueError(f"expected a stack of model maps (N, ...), got shape {ms.shape}")
    if h.size == 0:
        raise ValueError("the human map is empty")
    if int(np.prod(ms.shape[1:])) != h.size:
        raise ValueError(f"the maps differ in size: model {ms.shape[1:]} vs human {h.shape}")
    return ms.reshape(ms.shape[0], h.size), h.ravel()


def _centred_ranks(flat32: np.ndarray) -> Optional[np.ndarray]:
    # scipy's spearmanr would return NaN with a ConstantInputWarning for a constant map, and NaN for any
    # NaN pixel; testing first keeps the result a plain None and the log free of warnings.
    if flat32.size < 2 or not np.isfinite(flat32).all() or flat32.min() == flat32.max():
        return None
    r = rankdata(flat32, method="average")
    return r - r.mean()


def _pearson(rm: np.ndarray, rh: np.ndarray, ss_h: float) -> float:
    # The same operations as np.corrcoef (what spearmanr uses), so results agree to ~1e-17.
    n1 = rm.size - 1
    rho = (np.dot(rm, rh) / n1) / math.sqrt(np.dot(rm, rm) / n1) / math.sqrt(ss_h / n1)
    return float(min(1.0, max(-1.0, rho)))


def spearman(model_map, human_map) -> Optional[float]:
    """Spearman's rho of the two maps' pixels, or None when undefined.

    Undefined means either map is constant (after the float32 cast) or holds NaN or infinite values.
    """
    return spearman_many(_as_f32(model_map)[None], human_map)[0]


def spearman_many(model_maps, human_map) -> list[Optional[float]]:
    """`spearman` of each of N model maps (N, ...) against one human map, ranking the human map once."""
    ms, h = _stack_and_flatten(model_maps, human_map)
    rh = _centred_ranks(h)
    if rh is None:
        return [None] * len(ms)
    ss_h = float(np.dot(rh, rh))
    out: list[Optional[float]] = []
    for m in ms:
        rm = _centred_ranks(m)
        out.append(None if rm is None else _pearson(rm, rh, ss_h))
    return out


def ceiling_normalised(rho: Optional[float]) -> Optional[float]:
    """rho divided by the human ceiling, the paper's alignment score; None stays None."""
    return None if rho is None else rho / HUMAN_CEILING


def _top_mask(flat32: np.ndarray, top: float) -> np.ndarray:
    # The reference's strict `>` against the linear-interpolated percentile: a plateau wider than `top`
    # gives an empty mask, and a NaN percentile (any NaN pixel) gives an empty mask too.
    with np.errstate(invalid="ignore"):
        return flat32 > np.percentile(flat32, 100.0 - 100.0 * top)


def _dice_iou_masks(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    inter = int(np.count_nonzero(a & b))
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    union = int(np.count_nonzero(a | b))
    # The reference sums float32 masks, so its Dice is float32 arithmetic (EPSILON vanishes unless the
    # sum is 0), while its IoU sums booleans to int64 and is float64. Copying both keeps 1e-12 agreement.
    dice = np.float32(2.0) * np.float32(inter) / (np.float32(total) + np.float32(EPSILON))
    iou = inter / (union + EPSILON)
    return float(dice), float(iou)


def _check_top(top: float) -> None:
    if not 0.0 < top < 1.0:
        raise ValueError(f"top must be a fraction in (0, 1), got {top}")


def dice_iou(model_map, human_map, top: float = 0.10) -> tuple[float, float]:
    """Dice and IoU of the two maps' top-`top` pixel masks (each `map > percentile(map, 100*(1-top))`).

    Degenerate maps (constant, NaN) give empty masks and so 0.0, as in the reference.
    """
    return dice_iou_many(_as_f32(model_map)[None], human_map, top)[0]


def dice_iou_many(model_maps, human_map, top: float = 0.10) -> list[tuple[float, float]]:
    """`dice_iou` of each of N model maps against one human map, thresholding the human map once."""
    _check_top(top)
    ms, h = _stack_and_flatten(model_maps, human_map)
    hb = _top_mask(h, top)
    return [_dice_iou_masks(_top_mask(m, top), hb) for m in ms]


def _defined(v) -> bool:
    return v is not None and math.isfinite(v)


def summarise(values: Iterable[Optional[float]]) -> dict:
    """Dataset summary of per-image values (e.g. rho): the mean over defined values only.

    Returns ``{"n", "n_defined", "n_undefined", "mean", "ceiling_normalised"}`` where n counts every
    value given, undefined ones being None or NaN; the means are None when nothing is defined.
    """
    vals: Sequence = list(values)
    ok = np.array([float(v) for v in vals if _defined(v)], dtype=np.float64)
    mean = float(np.mean(ok)) if ok.size else None
    return {
        "n": len(vals),
        "n_defined": int(ok.size),
        "n_undefined": len(vals) - int(ok.size),
        "mean": mean,
        "ceiling_normalised": ceiling_normalised(mean),
    }
