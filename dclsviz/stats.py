"""Paired statistics of DCLS against its baseline on the same images, and of reviewers' preferences.

Thin on purpose: scipy does the arithmetic (``wilcoxon``, ``bootstrap``, ``binomtest``), so the
numbers a reader recomputes with scipy from ``per_image.csv`` are the same numbers, bit for bit. Fleiss' κ,
which scipy lacks, is written out from its definition (Fleiss 1971).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from scipy import stats as sps

from .metrics import HUMAN_CEILING

N_RESAMPLES = 10_000
SEED = 0
CONFIDENCE = 0.95
# Resamples drawn per step: bounds memory at ~BATCH × n floats, i.e. ~140 MB for the 17k ClickMe images.
BOOTSTRAP_BATCH = 1_000


def _none_if_nan(x) -> Optional[float]:
    x = float(x)
    return None if math.isnan(x) else x


def paired(baseline: Sequence[float], dcls: Sequence[float], *, n_resamples: int = N_RESAMPLES, seed: int = SEED,
           confidence: float = CONFIDENCE) -> dict:
    """DCLS minus baseline over images where both values are defined (the caller pairs them).

    ``wilcoxon``: scipy's two-sided signed-rank test with its defaults (zero differences dropped,
    exact distribution for small samples). ``ci``: percentile bootstrap of the mean difference,
    ``n_resamples`` resamples from ``np.random.default_rng(seed)``. Fields that a sample too small or
    all-zero differences leave undefined are None.
    """
    b = np.asarray(baseline, dtype=np.float64)
    d = np.asarray(dcls, dtype=np.float64)
    if b.shape != d.shape or b.ndim != 1:
        raise ValueError(f"paired samples must be two 1-D arrays of one length, got {b.shape} and {d.shape}")
    if not (np.isfinite(b).all() and np.isfinite(d).all()):
        raise ValueError("paired samples must be finite: leave undefined values out before pairing")
    delta = d - b
    n = int(delta.size)
    out = {"n_pairs": n, "mean_delta": None, "mean_delta_ceiling": None, "median_delta": None,
           "n_dcls_higher": int((delta > 0).sum()), "n_baseline_higher": int((delta < 0).sum()),
           "n_equal": int((delta == 0).sum()),
           "wilcoxon": {"statistic": None, "p": None, "alternative": "two-sided", "zero_method": "wilcox"},
           "ci": None, "bootstrap": {"method": "percentile", "n_resamples": n_resamples, "seed": seed,
                                     "confidence": confidence}}
    if n == 0:
        return out
    mean = float(delta.mean())
    out.update(mean_delta=mean, mean_delta_ceiling=mean / HUMAN_CEILING, median_delta=float(np.median(delta)))
    if np.any(delta != 0):
        w = sps.wilcoxon(d, b)
        out["wilcoxon"].update(statistic=_none_if_nan(w.statistic), p=_none_if_nan(w.pvalue))
    if n >= 2:
        ci = bootstrap_mean_ci(delta, n_resamples=n_resamples, seed=seed, confidence=confidence)
        out["ci"] = ci
    return out


def bootstrap_mean_ci(values: Sequence[float], *, n_resamples: int = N_RESAMPLES, seed: int = SEED,
                      confidence: float = CONFIDENCE) -> Optional[list[float]]:
    """[low, high] percentile-bootstrap confidence interval of the mean; None when it is degenerate."""
    v = np.asarray(values, dtype=np.float64)
    res = sps.bootstrap((v,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
                        batch=BOOTSTRAP_BATCH, rng=np.random.default_rng(seed))
    lo, hi = _none_if_nan(res.confidence_interval.low), _none_if_nan(res.confidence_interval.high)
    return None if lo is None or hi is None else [lo, hi]


def preference(k: int, n: int, confidence: float = CONFIDENCE) -> dict:
    """k of n decided verdicts chose DCLS: the rate, scipy's two-sided exact binomial test against 1/2, and
    the ``confidence`` Wilson score interval of the rate (``binomtest(k, n).proportion_ci(method="wilson")``;
    Wilson rather than Clopper-Pearson because the exact interval is conservative at the small n of a session).
    """
    if n == 0:
        return {"n": 0, "k": 0, "rate": None, "p": None, "ci": None, "ci_method": "wilson"}
    test = sps.binomtest(int(k), int(n), 0.5)
    ci = test.proportion_ci(confidence_level=confidence, method="wilson")
    return {"n": int(n), "k": int(k), "rate": k / n, "p": float(test.pvalue), "ci": [float(ci.low), float(ci.high)],
            "ci_method": "wilson"}


def fleiss_kappa(counts) -> dict:
    """Fleiss' κ of ``counts[subject, category]``: how many raters put each subject in each category, every
    subject rated by the same number (at least 2) of raters.

    Returns {kappa, p_bar, p_e, n_subjects, n_raters}: P̄ the mean agreement per subject, P̄e the agreement
    expected by chance from the category totals, κ = (P̄ − P̄e) / (1 − P̄e); κ is None when P̄e = 1 (every
    rating in one category, where chance explains all agreement and κ is undefined).
    """
    x = np.asarray(counts, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] < 2:
        raise ValueError(f"Fleiss' kappa needs a (subjects, categories) table with both > 0, not {x.shape}")
    if (x < 0).any() or not np.array_equal(x, np.round(x)):
        raise ValueError("Fleiss' kappa counts raters: whole numbers >= 0")
    n = x.sum(axis=1)
    if not (n == n[0]).all() or n[0] < 2:
        raise ValueError("Fleiss' kappa needs every subject rated by the same number (>= 2) of raters")
    raters = float(n[0])
    p_j = x.sum(axis=0) / x.sum()
    p_i = ((x * x).sum(axis=1) - raters) / (raters * (raters - 1))
    p_bar, p_e = float(p_i.mean()), float((p_j * p_j).sum())
    kappa = None if math.isclose(p_e, 1.0) else (p_bar - p_e) / (1 - p_e)
    return {"kappa": kappa, "p_bar": p_bar, "p_e": p_e, "n_subjects": int(x.shape[0]), "n_raters": int(raters)}
