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
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Optional, Sequence

import numpy as np

HUMAN_CEILING = 0.65753  # HUMAN_SPEARMAN_CEILING of the reference: inter-human Spearman on ClickMe
EPSILON = 1e-9


def _as_f32(x) -> np.ndarray:
    a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return a.astype(np.float32, copy=False)


def _pairs(model_maps, human_maps) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, P) model maps and (N, P) human maps, float32: K model maps per human map."""
    ms, hs = _as_f32(model_maps), _as_f32(human_maps)
    if ms.ndim < 3 or hs.ndim < 2 or ms.shape[0] != hs.shape[0]:
        raise ValueError(f"expected (N, K, ...) model maps and (N, ...) human maps, got {ms.shape} and {hs.shape}")
    p = int(np.prod(hs.shape[1:]))
    if p == 0:
        raise ValueError("the human map is empty")
    if int(np.prod(ms.shape[2:])) != p:
        raise ValueError(f"the maps differ in size: model {ms.shape[2:]} vs human {hs.shape[1:]}")
    return ms.reshape(ms.shape[0], ms.shape[1], p), hs.reshape(hs.shape[0], p)


def _centred_ranks_block(rows: np.ndarray) -> np.ndarray:
    r, p = rows.shape
    # one flat index per sorted pixel: gathers and scatters on it are far cheaper than *_along_axis
    flat = (np.argsort(rows, axis=1) + (np.arange(r) * p)[:, None]).ravel()
    s = rows.ravel()[flat]
    starts = np.empty(r * p, bool)  # where a run of equal values (a tie group) begins
    starts[0] = True
    np.not_equal(s[1:], s[:-1], out=starts[1:])
    starts[::p] = True
    first = np.flatnonzero(starts)
    count = np.diff(np.append(first, r * p))
    # a group at 0-based positions first..first+count-1 shares the 1-based rank first % p + 1 + (count-1)/2;
    # every ranking's mean is (p + 1) / 2 exactly (the ranks sum to p(p+1)/2 however ties fall)
    centred = (first % p) + (count - 1) / 2.0 - (p - 1) / 2.0
    out = np.empty(r * p)
    out[flat] = np.repeat(centred, count)
    return out.reshape(r, p)


def _centred_ranks_torch(rows: "torch.Tensor") -> "torch.Tensor":
    """``_centred_ranks_block`` on a torch device: one sort for all rows, the tie groups found by scans."""
    import torch

    r, p = rows.shape
    s, order = torch.sort(rows, dim=1)
    starts = torch.ones_like(s, dtype=torch.bool)
    starts[:, 1:] = s[:, 1:] != s[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    pos = torch.arange(p, device=rows.device).expand(r, p)
    first = torch.cummax(torch.where(starts, pos, 0), 1).values
    last = torch.cummin(torch.where(ends, pos, p - 1).flip(1), 1).values.flip(1)
    centred = (first + last).to(torch.float64) / 2.0 - (p - 1) / 2.0
    return torch.empty_like(centred).scatter_(1, order, centred)


_pool: Optional[ThreadPoolExecutor] = None


def _ranked_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which rows of a float32 (R, P) array have a ranking at all (not constant, no NaN or infinite value:
    scipy's spearmanr gives NaN for those), and the rows with the others zeroed."""
    ok = np.isfinite(rows).all(1)
    ok[ok] = rows[ok].min(1) != rows[ok].max(1)
    return np.where(ok[:, None], rows, np.float32(0)), ok


def _centred_ranks(rows: np.ndarray, device=None):
    """Average ranks minus their mean (float64) of each row, as a torch tensor on ``device`` (CPU: NumPy on
    two threads, its sort releases the GIL; CUDA: one torch sort). Ties get the mean of the ranks they span,
    as ``scipy.stats.rankdata(method="average")`` gives them, so both paths give the same ranks exactly."""
    global _pool
    import torch

    if device is not None and torch.device(device).type != "cpu":
        return _centred_ranks_torch(torch.from_numpy(rows).to(device))
    if len(rows) < 4:
        return torch.from_numpy(_centred_ranks_block(rows))
    if _pool is None:
        _pool = ThreadPoolExecutor(2, thread_name_prefix="dclsviz-rank")
    half = len(rows) // 2
    return torch.from_numpy(np.concatenate(list(_pool.map(_centred_ranks_block, (rows[:half], rows[half:])))))


def spearman_pairs(model_maps, human_maps, device=None) -> list[list[Optional[float]]]:
    """Spearman's rho of each of K model maps against its image's human map, for N images at once.

    ``model_maps`` (N, K, ...) and ``human_maps`` (N, ...) -> N lists of K values, None where undefined.
    Every map of the batch is ranked in one pass, each human map once; ``device`` (e.g. the models' CUDA
    device) is where the ranking runs, the CPU by default.
    """
    import torch

    ms, hs = _pairs(model_maps, human_maps)
    n, k, p = ms.shape
    if n * k == 0:
        return [[] for _ in range(n)]
    rows, ok = _ranked_rows(np.concatenate([ms.reshape(n * k, p), hs]))
    ranks = _centred_ranks(rows, device)
    rm, rh = ranks[: n * k].reshape(n, k, p), ranks[n * k:]
    # the same operations as np.corrcoef (what spearmanr uses) on the centred ranks
    n1 = p - 1
    cov = torch.einsum("nkp,np->nk", rm, rh) / n1
    var_m = torch.einsum("nkp,nkp->nk", rm, rm) / n1
    var_h = torch.einsum("np,np->n", rh, rh) / n1
    rho = (cov / var_m.sqrt() / var_h.sqrt()[:, None]).clamp(-1.0, 1.0).cpu().numpy()
    ok_m, ok_h = ok[: n * k].reshape(n, k), ok[n * k:]
    return [[float(rho[i, j]) if ok_m[i, j] and ok_h[i] else None for j in range(k)] for i in range(n)]


def spearman(model_map, human_map) -> Optional[float]:
    """Spearman's rho of the two maps' pixels, or None when undefined.

    Undefined means either map is constant (after the float32 cast) or holds NaN or infinite values.
    """
    return spearman_pairs(_as_f32(model_map)[None, None], _as_f32(human_map)[None])[0][0]


def spearman_many(model_maps, human_map) -> list[Optional[float]]:
    """`spearman` of each of N model maps (N, ...) against one human map, ranking the human map once."""
    return spearman_pairs(_as_f32(model_maps)[None], _as_f32(human_map)[None])[0]


def ceiling_normalised(rho: Optional[float]) -> Optional[float]:
    """rho divided by the human ceiling, the paper's alignment score; None stays None."""
    return None if rho is None else rho / HUMAN_CEILING


def _top_masks(rows: np.ndarray, top: float) -> np.ndarray:
    # The reference's strict `>` against the linear-interpolated percentile: a plateau wider than `top`
    # gives an empty mask, and a NaN percentile (any NaN pixel) gives an empty mask too.
    with np.errstate(invalid="ignore"):
        return rows > np.percentile(rows, 100.0 - 100.0 * top, axis=1)[:, None]


def _dice_iou(inter: int, total: int, union: int) -> tuple[float, float]:
    # The reference sums float32 masks, so its Dice is float32 arithmetic (EPSILON vanishes unless the
    # sum is 0), while its IoU sums booleans to int64 and is float64. Copying both keeps 1e-12 agreement.
    dice = np.float32(2.0) * np.float32(inter) / (np.float32(total) + np.float32(EPSILON))
    iou = inter / (union + EPSILON)
    return float(dice), float(iou)


def _check_top(top: float) -> None:
    if not 0.0 < top < 1.0:
        raise ValueError(f"top must be a fraction in (0, 1), got {top}")


def dice_iou_pairs(model_maps, human_maps, top: float = 0.10) -> list[list[tuple[float, float]]]:
    """Dice and IoU of each of K model maps' top-`top` pixel mask with its image's human map's, N images.

    A mask is ``map > percentile(map, 100*(1-top))``; degenerate maps (constant, NaN) give empty masks
    and so 0.0, as in the reference.
    """
    _check_top(top)
    ms, hs = _pairs(model_maps, human_maps)
    n, k, p = ms.shape
    mm = _top_masks(ms.reshape(n * k, p), top).reshape(n, k, p) if n * k else np.zeros((n, k, p), bool)
    hm = _top_masks(hs, top)[:, None, :] if n else np.zeros((0, 1, p), bool)
    inter = np.count_nonzero(mm & hm, axis=2)
    total = np.count_nonzero(mm, axis=2) + np.count_nonzero(hm, axis=2)
    union = np.count_nonzero(mm | hm, axis=2)
    return [[_dice_iou(int(inter[i, j]), int(total[i, j]), int(union[i, j])) for j in range(k)] for i in range(n)]


def dice_iou(model_map, human_map, top: float = 0.10) -> tuple[float, float]:
    """Dice and IoU of the two maps' top-`top` pixel masks (see ``dice_iou_pairs``)."""
    return dice_iou_pairs(_as_f32(model_map)[None, None], _as_f32(human_map)[None], top)[0][0]


def dice_iou_many(model_maps, human_map, top: float = 0.10) -> list[tuple[float, float]]:
    """`dice_iou` of each of N model maps against one human map, thresholding the human map once."""
    return dice_iou_pairs(_as_f32(model_maps)[None], _as_f32(human_map)[None], top)[0]


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
