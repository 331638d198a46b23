"""Faithfulness of a map to its model: deletion, insertion (Petsiuk et al., RISE, BMVC 2018) and ROAD
(Rong et al., ICML 2022).

A map is faithful when the pixels it ranks first are the ones the model's score depends on:

* deletion: the target's softmax probability as the map's top-ranked pixels are removed, k steps of n/k pixels
  (default k = 16), area under the curve over the removed fraction 0…1. Lower is more faithful.
* insertion: the probability as the top-ranked pixels are put back into an image with all pixels removed.
  Higher is more faithful.
* Removed pixels take the values of a blurred copy of the input (Gaussian, σ = 5 px, 11×11 kernel, reflected
  borders: RISE's insertion substrate), so the baseline is "the same image out of focus", not black.
* ROAD combined: the mean over removed fractions 10…90 % of (probability with the least relevant pixels
  removed − with the most relevant removed) / 2, the removed pixels filled by ROAD's noisy linear imputation
  (each is the weighted mean of its 8 neighbours, 1/6 beside, 1/12 diagonal, solved as one sparse system,
  plus N(0, noise²) noise from a seeded generator). Higher is more faithful.

The map is ranked at the model's input resolution (its low-resolution form resized to the input), pixel ties
broken by position. All steps of one map go through the model as one batch on its device: deletion and
insertion are 2k forwards of the bare model, ROAD 18; the unperturbed probability comes from the CAM pass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .models import LoadedModel

DEFAULT_STEPS = 16
BLUR_SIZE, BLUR_SIGMA = 11, 5.0
ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
ROAD_NOISE = 0.01  # ROAD's default imputation noise, in the units of the normalised input
ROAD_SEED = 0
# ROAD's neighbour weights: (dy, dx) -> weight
_NEIGHBOURS = (((0, 1), 1 / 6), ((0, -1), 1 / 6), ((1, 0), 1 / 6), ((-1, 0), 1 / 6),
               ((1, 1), 1 / 12), ((1, -1), 1 / 12), ((-1, 1), 1 / 12), ((-1, -1), 1 / 12))


@dataclass(frozen=True)
class Faithfulness:
    """One map's faithfulness numbers; None where not computed.

    Args:
        deletion: deletion AUC of the target's probability (lower: more faithful).
        insertion: insertion AUC (higher: more faithful).
        road: ROAD combined, (LeRF − MoRF) / 2 (higher: more faithful).
    """

    deletion: Optional[float] = None
    insertion: Optional[float] = None
    road: Optional[float] = None

    FIELDS = ("deletion", "insertion", "road")

    def as_dict(self) -> dict:
        """The JSON form: ``{deletion, insertion, road}``, None as null."""
        return dataclasses.asdict(self)

    def csv_cells(self, map_name: str) -> dict:
        """The per-image CSV's cells of this map: ``{field}_{map_name}`` → float or None."""
        return {f"{k}_{map_name}": None if v is None else float(v) for k, v in self.as_dict().items()}

    @staticmethod
    def csv_columns(map_names) -> tuple[str, ...]:
        """The CSV column names ``csv_cells`` fills for ``map_names``, field by field."""
        return tuple(f"{k}_{m}" for k in Faithfulness.FIELDS for m in map_names)


def blur(x: torch.Tensor, size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """A Gaussian-blurred copy of a (B,C,H,W) batch (separable, reflected borders), on its device."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-r * r / (2 * sigma * sigma))
    k = (k / k.sum()).to(x.device, x.dtype)
    c = x.shape[1]
    pad = size // 2
    y = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="reflect"), k.view(1, 1, 1, size).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), k.view(1, 1, size, 1).repeat(c, 1, 1, 1), groups=c)


def at_input(lowres: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B,h,w) maps resized to the input's (H, W), as the maps reach the comparison frame (bilinear, antialiased)."""
    return F.interpolate(lowres[:, None].float(), size, mode="bilinear", align_corners=False, antialias=True)[:, 0]


def rank_descending(saliency: torch.Tensor) -> torch.Tensor:
    """Each pixel's rank in the map, 0 for the most salient; ties in reading order (a stable sort)."""
    flat = saliency.reshape(-1)
    order = torch.sort(flat, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank[order] = torch.arange(flat.numel(), device=flat.device)
    return rank.view(saliency.shape)


def probabilities(loaded: "LoadedModel", batch: torch.Tensor, target: int) -> np.ndarray:
    """The target's softmax probability for every image of ``batch``: one bare inference forward."""
    x = batch.to(loaded.device, torch.float32)
    if loaded.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        logits = loaded.model(x)
    return torch.softmax(logits.double(), 1)[:, target].cpu().numpy()


def _auc(curve: np.ndarray) -> float:
    """Trapezoidal area under ``curve`` sampled at equal steps over [0, 1]."""
    return float(((curve[1:] + curve[:-1]) / 2).sum() / (len(curve) - 1))


def deletion_insertion(loaded: "LoadedModel", x: torch.Tensor, saliency: torch.Tensor, target: int,
                       base_probability: float, steps: int = DEFAULT_STEPS) -> tuple[float, float, np.ndarray]:
    """Deletion and insertion AUC of one map, its 2·``steps`` perturbed images in one batch.

    Args:
        x: the normalised input (1,3,H,W) or (3,H,W).
        saliency: the map at the input's resolution (H,W).
        base_probability: the target's probability on ``x`` itself (both curves' unperturbed end).

    Returns:
        (deletion AUC, insertion AUC, the two curves as a (2, steps + 1) array).
    """
    x = x.reshape(1, *x.shape[-3:]).to(loaded.device, torch.float32)
    blurred = blur(x)
    rank = rank_descending(saliency.to(x.device))
    n = rank.numel()
    counts = torch.tensor([round(i * n / steps) for i in range(steps + 1)], device=x.device)
    removed = rank[None] < counts[:, None, None]  # (steps + 1, H, W): step i removes the top counts[i] pixels
    deleted = torch.where(removed[1:, None], blurred, x)  # fractions 1/k … 1
    inserted = torch.where(removed[:-1, None], x, blurred)  # fractions 0 … (k-1)/k of the pixels back
    p = probabilities(loaded, torch.cat([deleted, inserted]), target)
    d = np.concatenate([[base_probability], p[:steps]])
    i = np.concatenate([p[steps:], [base_probability]])
    return _auc(d), _auc(i), np.stack([d, i])


def impute(image: np.ndarray, keep: np.ndarray, noise: float = ROAD_NOISE,
           generator: Optional[np.random.Generator] = None) -> np.ndarray:
    """ROAD's noisy linear imputation of the pixels where ``keep`` is False.

    Args:
        image: (C,H,W) float.
        keep: (H,W) bool, the pixels that stay.
        noise: standard deviation of the noise added to the imputed values (0: none).

    Returns:
        The (C,H,W) image with the removed pixels filled in.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    c, h, w = image.shape
    flat = image.reshape(c, -1).astype(np.float64)
    missing = np.flatnonzero(~keep.reshape(-1))
    if missing.size == 0:
        return image.copy()
    var = np.full(h * w, -1)
    var[missing] = np.arange(missing.size)
    y, x = np.divmod(missing, w)
    diag = np.zeros(missing.size)
    rhs = np.zeros((missing.size, c))
    rows, cols, vals = [], [], []
    for (dy, dx), wt in _NEIGHBOURS:
        ny, nx = y + dy, x + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        eq, nb = np.flatnonzero(inside), (ny * w + nx)[inside]
        diag[eq] += wt  # only neighbours inside the image count towards the mean
        unknown = var[nb] >= 0
        rows.append(eq[unknown])
        cols.append(var[nb[unknown]])
        vals.append(np.full(int(unknown.sum()), wt))
        rhs[eq[~unknown]] -= wt * flat[:, nb[~unknown]].T
    rows.append(np.arange(missing.size))
    cols.append(np.arange(missing.size))
    vals.append(-diag)
    a = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(missing.size, missing.size)).tocsc()
    # the system is symmetric: minimum degree on A + Aᵀ orders a grid's unknowns ~30 % faster than COLAMD
    solved = np.asarray(spsolve(a, rhs, permc_spec="MMD_AT_PLUS_A")).reshape(missing.size, c)
    out = flat.copy()
    out[:, missing] = solved.T
    if noise:
        out[:, missing] += noise * (generator or np.random.default_rng(ROAD_SEED)).standard_normal((c, missing.size))
    return out.reshape(c, h, w).astype(image.dtype)


def road_keep_masks(saliency: np.ndarray, percentiles: Sequence[int] = ROAD_PERCENTILES) -> list[np.ndarray]:
    """The kept pixels of each ROAD step: MoRF at every percentile p keeps the p % least salient pixels, then
    LeRF keeps the p % most salient. A pixel is kept when its rank is below p/100·(n − 1), which is the
    "value below the p-th percentile" rule of ROAD for a map without ties, and stays defined with them."""
    s = torch.from_numpy(np.ascontiguousarray(saliency, dtype=np.float32))
    most_first = rank_descending(s).numpy()
    least_first = rank_descending(-s).numpy()
    n = s.numel()
    morf = [least_first < p / 100 * (n - 1) for p in percentiles]
    lerf = [most_first < p / 100 * (n - 1) for p in percentiles]
    return morf + lerf


def road(loaded: "LoadedModel", x: torch.Tensor, saliency: np.ndarray, target: int, *,
         percentiles: Sequence[int] = ROAD_PERCENTILES, noise: float = ROAD_NOISE, seed: int = ROAD_SEED) -> float:
    """ROAD combined of one map: (mean LeRF probability − mean MoRF probability) / 2, one batch of 2·|percentiles|.

    Args:
        x: the normalised input (1,3,H,W) or (3,H,W).
        saliency: the map at the input's resolution (H,W).
        noise, seed: the imputation noise and the seed of its generator (the same map gives the same number).
    """
    image = x.reshape(*x.shape[-3:]).detach().float().cpu().numpy()
    rng = np.random.default_rng(seed)
    filled = [impute(image, keep, noise, rng) for keep in road_keep_masks(saliency, percentiles)]
    p = probabilities(loaded, torch.from_numpy(np.stack(filled)), target)
    k = len(percentiles)
    return float((p[k:].mean() - p[:k].mean()) / 2)


def evaluate_maps(loaded: "LoadedModel", x: torch.Tensor, targets: Sequence[int], lowres: dict[str, np.ndarray],
                  base_probabilities: Sequence[float], *, steps: int = DEFAULT_STEPS,
                  with_road: bool = True) -> list[dict[str, Faithfulness]]:
    """Deletion, insertion and ROAD of every map of every image of a batch.

    Args:
        x: the batch's normalised inputs (B,3,H,W), as the model saw them.
        targets: the class each map explains, per image.
        lowres: method → (B,h,w) maps at the CAM layer's resolution.
        base_probabilities: each image's target probability on the unperturbed input.
    """
    size = tuple(x.shape[-2:])
    out: list[dict[str, Faithfulness]] = [{} for _ in targets]
    # every number depends on the map only through its pixel ranking, and methods often agree on it (for a
    # network with global pooling, HiResCAM and XGrad-CAM rank as Grad-CAM does): each ranking is done once
    done: dict[tuple[int, bytes, bytes], Faithfulness] = {}
    for name, maps in lowres.items():
        sal = at_input(torch.from_numpy(np.asarray(maps)).to(loaded.device), size)
        for i, t in enumerate(targets):
            key = (i, rank_descending(sal[i]).cpu().numpy().tobytes(),  # ties break both ways: key on both
                   rank_descending(-sal[i]).cpu().numpy().tobytes())
            if key not in done:
                d, ins, _ = deletion_insertion(loaded, x[i], sal[i], int(t), float(base_probabilities[i]), steps)
                r = road(loaded, x[i], sal[i].cpu().numpy(), int(t)) if with_road else None
                done[key] = Faithfulness(d, ins, r)
            out[i][name] = done[key]
    return out
