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
import os
import sys
import threading
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


def _sort_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each float32 row sorted, NaNs beyond the infinities: (the pixel at each sorted position, uint32; the
    sorted values' keys).

    A float's bits, sign-flipped (all bits when negative), order as unsigned integers as the floats do; with
    the pixel index in the low half, one sort of 64-bit integers (SIMD in NumPy) replaces an argsort, which
    is about twice as slow. Adding +0.0 first turns -0.0 into 0.0, so equal floats get equal keys.
    """
    r, p = rows.shape
    bits = (rows + np.float32(0)).view(np.uint32)
    flip = (bits.view(np.int32) >> 31).view(np.uint32)  # all ones where negative
    flip |= np.uint32(0x80000000)
    packed = np.empty((r, p), np.uint64)
    halves = packed.view(np.uint32).reshape(r, p, 2)
    lo, hi = (0, 1) if sys.byteorder == "little" else (1, 0)
    np.bitwise_xor(bits, flip, out=halves[..., hi])
    halves[..., lo] = np.arange(p, dtype=np.uint32)
    packed.sort(axis=1)
    return halves[..., lo], halves[..., hi]


_KEY_NEG_INF, _KEY_POS_INF = 0x007FFFFF, 0xFF800000  # the keys of -inf and +inf


def _key_values(keys: np.ndarray) -> np.ndarray:
    """The float32 values of ``_sort_rows``'s keys."""
    flip = np.where(keys >= np.uint32(0x80000000), np.uint32(0x80000000), np.uint32(0xFFFFFFFF))
    return (keys ^ flip).view(np.float32)


def _centred_at_sorted(keys: np.ndarray) -> np.ndarray:
    """The centred average rank (float64) at each sorted position: a tie group at 0-based positions
    first..first+count-1 shares the 1-based rank first + 1 + (count-1)/2, and every ranking's mean is
    (p + 1) / 2 exactly, however ties fall. Row by row: one row's temporaries stay in cache."""
    r, p = keys.shape
    out = np.empty((r, p))
    starts = np.empty(p, bool)  # where a run of equal values (a tie group) begins
    starts[0] = True
    for i in range(r):
        np.not_equal(keys[i, 1:], keys[i, :-1], out=starts[1:])
        first = np.flatnonzero(starts)
        count = np.diff(first, append=p)
        out[i] = np.repeat(first + (count - 1) / 2.0 - (p - 1) / 2.0, count)
    return out


def _centred_ranks_torch(rows: "torch.Tensor", sorted_rows: Optional[list] = None) -> "torch.Tensor":
    """Centred average ranks (float64) in pixel order, on a torch device: one sort for all rows, the tie
    groups found by scans. The same values as ``_centred_at_sorted`` put back in pixel order.
    ``sorted_rows``: a list that receives the sorted rows, for the top-pixel thresholds."""
    import torch

    r, p = rows.shape
    s, order = torch.sort(rows, dim=1)
    if sorted_rows is not None:
        sorted_rows.append(s)
    starts = torch.ones_like(s, dtype=torch.bool)
    starts[:, 1:] = s[:, 1:] != s[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    pos = torch.arange(p, device=rows.device).expand(r, p)
    first = torch.cummax(torch.where(starts, pos, 0), 1).values
    last = torch.cummin(torch.where(ends, pos, p - 1).flip(1), 1).values.flip(1)
    centred = (first + last).to(torch.float64) / 2.0 - (p - 1) / 2.0
    return torch.empty_like(centred).scatter_(1, order, centred)


def _ranked_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which rows of a float32 (R, P) array have a ranking at all (not constant, no NaN or infinite value:
    scipy's spearmanr gives NaN for those), and the rows with the others zeroed."""
    ok = np.isfinite(rows).all(1)
    ok[ok] = rows[ok].min(1) != rows[ok].max(1)
    return np.where(ok[:, None], rows, np.float32(0)), ok


def _rho(cov: np.ndarray, var_m: np.ndarray, var_h: np.ndarray, ok: np.ndarray,
         p: int) -> tuple[np.ndarray, np.ndarray]:
    """rho (n, k), NaN where undefined, and defined (n, k), from the centred ranks' sums of products
    (n, k), (n, k), (n,) and each row's ``ok`` (the n*k model rows, then the n human rows)."""
    n, k = cov.shape
    ok_m, ok_h = ok[: n * k].reshape(n, k), ok[n * k:]
    defined = ok_m & ok_h[:, None]
    n1 = p - 1  # np.corrcoef's operations (what spearmanr uses)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.clip((cov / n1) / np.sqrt(var_m / n1) / np.sqrt(var_h[:, None] / n1), -1.0, 1.0)
    return np.where(defined, rho, np.nan), defined


def _sort_summary(rows: np.ndarray, top: Optional[float]):
    """Per row: the sort order, whether it has a ranking, the centred ranks at the sorted positions and,
    with ``top``, how many pixels lie above the reference's percentile threshold."""
    order, keys = _sort_rows(rows)
    # NaNs sort beyond the infinities, so the ends of a sorted row say whether it has a ranking at all
    ok = (keys[:, 0] > _KEY_NEG_INF) & (keys[:, -1] < _KEY_POS_INF) & (keys[:, 0] != keys[:, -1])
    above = None
    if top is not None:
        # The reference's mask is `map > percentile(map)`: on sorted values, a suffix of the order. The
        # percentile depends on the values alone, so it is taken on the sorted row (the same result, sooner).
        values = _key_values(keys)
        with np.errstate(invalid="ignore"):  # rows with NaN or infinite values: their counts go unused
            thr = np.percentile(values, 100.0 - 100.0 * top, axis=1)
            above = np.count_nonzero(values > thr[:, None], axis=1)
    return order, ok, _centred_at_sorted(keys), above


class _HalvesPool:
    """The threads that score the two halves of a batch; created on first use, under a lock (two requests
    scoring at once must not each make one), and forgotten in a forked child (ZeroGPU's worker), which has
    none of the parent's threads."""

    def __init__(self, threads: int = 2):
        self.threads = threads
        self._executor: Optional[ThreadPoolExecutor] = None
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._executor, self._lock = None, threading.Lock()

    def resize(self, n: int) -> None:
        with self._lock:
            old, self._executor, self.threads = self._executor, None, max(1, min(2, int(n)))
        if old is not None:
            old.shutdown(wait=False)

    def map(self, fn, items) -> list:
        if self.threads == 1:
            return [fn(x) for x in items]
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="dclsviz-rank")
            executor = self._executor
        return list(executor.map(fn, items))


_POOL = _HalvesPool()


def set_pool_threads(n: int) -> None:
    """Threads that score one batch (1: in the caller's thread). The runtime sets the app's per-request thread
    budget here, so that requests scoring at once never run more threads than there are cores."""
    _POOL.resize(n)


def _in_halves(fn, arrays: tuple, *args) -> tuple:
    """``fn(*arrays, *args)`` on the first and second halves of the arrays on two threads, the tuples it
    returns joined. NumPy's sorts release the GIL."""
    half = len(arrays[0]) // 2
    halves = (slice(0, half), slice(half, None))
    parts = _POOL.map(lambda s: fn(*(a[s] for a in arrays), *args), halves)
    return tuple(None if parts[0][i] is None else np.concatenate([q[i] for q in parts])
                 for i in range(len(parts[0])))


def _scores_sorted(ms: np.ndarray, hs: np.ndarray, top: Optional[float],
                   threads: bool = False) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Spearman (and, with ``top``, the top-pixel masks' counts) of (n, k, p) model maps against (n, p)
    human maps from one sort per map. Returns rho (n, k) (NaN where undefined), defined (n, k) and the counts
    (n, k, 3: intersection, model mask, human mask; -1 where the sorted path does not apply).
    ``threads``: sort the rows on two threads (for one image; a batch is better split by images)."""
    n, k, p = ms.shape
    rows = np.concatenate([ms.reshape(n * k, p), hs])
    order, ok, centred, above = _in_halves(_sort_summary, (rows,), top) if threads else _sort_summary(rows, top)
    cm, ch = centred[: n * k].reshape(n, k, p), centred[n * k:]
    om, oh = order[: n * k].reshape(n, k, p), order[n * k:]
    # one flat index per (image, pixel): flat gathers and scatters are far cheaper than *_along_axis
    offsets = (np.arange(n) * p)[:, None]
    rh = np.empty(n * p)
    rh[oh + offsets] = ch  # the human ranks in pixel order, then read in each model map's order
    aligned = rh[om + offsets[:, :, None]]
    rho, defined = _rho(np.einsum("nkp,nkp->nk", cm, aligned), np.einsum("nkp,nkp->nk", cm, cm),
                        np.einsum("np,np->n", ch, ch), ok, p)
    if top is None:
        return rho, defined, None
    am, ah = above[: n * k].reshape(n, k), above[n * k:]
    counts = np.full((n, k, 3), -1, np.int64)
    hmask = np.empty(p, bool)
    for i in range(n):
        if not defined[i].all():
            continue  # a degenerate map: the generic masks decide
        hmask[:] = False
        hmask[oh[i, p - ah[i]:]] = True
        for j in range(k):
            counts[i, j] = (np.count_nonzero(hmask[om[i, j, p - am[i, j]:]]), am[i, j], ah[i])
    return rho, defined, counts


def _percentile_at(p: int, top: float) -> tuple[int, int, np.float32]:
    """Where ``np.percentile(row, 100 - 100*top)`` (linear) reads a sorted row of ``p`` values: the two
    neighbours and the float32 weight between them. It depends on ``p`` alone, so numpy computes it here."""
    v = float(np.percentile(np.arange(p, dtype=np.float64), 100.0 - 100.0 * top))
    lo = int(math.floor(v))
    return lo, min(lo + 1, p - 1), np.float32(v - lo)


def _top_counts_torch(rows: "torch.Tensor", ranked: "torch.Tensor", n: int, k: int, top: float) -> np.ndarray:
    """(n, k, 3) counts of the top-pixel masks from the rows sorted on the device: the reference's threshold,
    numpy's linear percentile, computed with its own float32 arithmetic (two separate operations, so no fused
    multiply-add can round differently), then ``map > threshold``."""
    import torch

    lo, hi, t = _percentile_at(rows.shape[1], top)
    a, b = ranked[:, lo], ranked[:, hi]
    diff, w = b - a, torch.tensor(t, device=rows.device)
    threshold = b - diff * (1 - w) if t >= 0.5 else a + diff * w  # numpy's _lerp, its branch by the weight
    masks = rows > threshold[:, None]
    mm, mh = masks[: n * k].reshape(n, k, -1), masks[n * k:]
    counts = torch.stack([(mm & mh[:, None]).sum(2), mm.sum(2), mh.sum(1)[:, None].expand(n, k)], dim=2)
    return counts.cpu().numpy().astype(np.int64)


def _spearman_torch(ms: np.ndarray, hs: np.ndarray, device, top: Optional[float] = None):
    """rho (n, k) and defined (n, k) ranked on ``device``; with ``top`` also the top-pixel mask counts of the
    images whose maps all have a ranking (-1 for the others: the generic masks decide those)."""
    import torch

    n, k, p = ms.shape
    rows, ok = _ranked_rows(np.concatenate([ms.reshape(n * k, p), hs]))
    on_device, ranked = torch.from_numpy(rows).to(device), []
    ranks = _centred_ranks_torch(on_device, ranked)
    rm, rh = ranks[: n * k].reshape(n, k, p), ranks[n * k:]
    sums = (torch.einsum("nkp,np->nk", rm, rh), torch.einsum("nkp,nkp->nk", rm, rm), torch.einsum("np,np->n", rh, rh))
    rho, defined = _rho(*(t.cpu().numpy() for t in sums), ok, p)
    if top is None:
        return rho, defined
    counts = _top_counts_torch(on_device, ranked[0], n, k, top)
    counts[~defined.all(1)] = -1
    return rho, defined, counts


def _rank_scores(ms: np.ndarray, hs: np.ndarray, device, top: Optional[float]):
    """rho, defined and, with ``top``, the mask counts from the same sort; see ``_scores_sorted``."""
    import torch

    if device is not None and torch.device(device).type != "cpu":
        if top is None:
            return (*_spearman_torch(ms, hs, device), None)
        return _spearman_torch(ms, hs, device, top)
    if len(ms) == 1:
        return _scores_sorted(ms, hs, top, threads=True)
    return _in_halves(_scores_sorted, (ms, hs), top)


def score_pairs(model_maps, human_maps, top: float = 0.10, device=None) -> list[list[tuple]]:
    """Spearman's rho, Dice and IoU of each of K model maps against its image's human map, N images at once.

    ``model_maps`` (N, K, ...) and ``human_maps`` (N, ...) -> N lists of K ``(rho, dice, iou)``, rho None
    where undefined. Every map is sorted once, for its ranks and its top-``top`` mask alike: on the CPU on two
    threads, or on ``device`` (e.g. the models' CUDA device), which then does the masks' counting too.
    """
    _check_top(top)
    ms, hs = _pairs(model_maps, human_maps)
    n, k, _ = ms.shape
    if n * k == 0:
        return [[] for _ in range(n)]
    rho, defined, counts = _rank_scores(ms, hs, device, top)
    generic = [i for i in range(n) if counts is None or (counts[i] < 0).any()]
    if generic:
        counts = np.zeros((n, k, 3), np.int64) if counts is None else counts
        counts[generic] = _mask_counts(ms[generic], hs[generic], top)
    return [[(float(rho[i, j]) if defined[i, j] else None, *_overlap(counts[i, j])) for j in range(k)]
            for i in range(n)]


def spearman_pairs(model_maps, human_maps, device=None) -> list[list[Optional[float]]]:
    """Spearman's rho of each of K model maps against its image's human map, for N images at once.

    ``model_maps`` (N, K, ...) and ``human_maps`` (N, ...) -> N lists of K values, None where undefined.
    Every map is ranked once, each human map once for its K model maps; ``device`` as in ``score_pairs``.
    """
    ms, hs = _pairs(model_maps, human_maps)
    n, k, _ = ms.shape
    if n * k == 0:
        return [[] for _ in range(n)]
    rho, defined, _ = _rank_scores(ms, hs, device, None)
    return [[float(rho[i, j]) if defined[i, j] else None for j in range(k)] for i in range(n)]


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


def _overlap(counts: np.ndarray) -> tuple[float, float]:
    """Dice and IoU from (intersection, model mask, human mask) pixel counts.

    The reference sums float32 masks, so its Dice is float32 arithmetic (EPSILON vanishes unless the
    sum is 0), while its IoU sums booleans to int64 and is float64. Copying both keeps 1e-12 agreement.
    """
    inter, total = int(counts[0]), int(counts[1] + counts[2])
    union = total - inter
    dice = np.float32(2.0) * np.float32(inter) / (np.float32(total) + np.float32(EPSILON))
    iou = inter / (union + EPSILON)
    return float(dice), float(iou)


def _check_top(top: float) -> None:
    if not 0.0 < top < 1.0:
        raise ValueError(f"top must be a fraction in (0, 1), got {top}")


def _mask_counts(ms: np.ndarray, hs: np.ndarray, top: float) -> np.ndarray:
    """(n, k, 3) counts of the top-pixel masks, the reference's way, pixel by pixel: intersection, model
    mask, human mask. Any map, degenerate ones included."""
    n, k, p = ms.shape
    mm = _top_masks(ms.reshape(n * k, p), top).reshape(n, k, p) if n * k else np.zeros((n, k, p), bool)
    hm = _top_masks(hs, top)[:, None, :] if n else np.zeros((0, 1, p), bool)
    return np.stack([np.count_nonzero(mm & hm, axis=2), np.count_nonzero(mm, axis=2),
                     np.broadcast_to(np.count_nonzero(hm, axis=2), (n, k))], axis=2)


def dice_iou_pairs(model_maps, human_maps, top: float = 0.10) -> list[list[tuple[float, float]]]:
    """Dice and IoU of each of K model maps' top-`top` pixel mask with its image's human map's, N images.

    A mask is ``map > percentile(map, 100*(1-top))``; degenerate maps (constant, NaN) give empty masks
    and so 0.0, as in the reference. This is the definition; ``score_pairs`` gets the same from its sort.
    """
    _check_top(top)
    ms, hs = _pairs(model_maps, human_maps)
    return [[_overlap(c) for c in row] for row in _mask_counts(ms, hs, top)]


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
