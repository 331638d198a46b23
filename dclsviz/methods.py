"""The attribution methods: one function per method on the CAM layer's activation A and gradient G (B,C,h,w).

Every method here needs only A and G, so all of them come from the one forward and backward pass that
``cam.CamEngine`` already runs; asking for five methods costs five cheap reductions, not five passes. The
terms several methods share (G·A, the spatial sums of A) are computed once per call (``Terms``).

Each function returns the map before the ReLU, at the layer's resolution; ``compute`` applies ``max(·, 0)``,
as pytorch-grad-cam's ``compute_cam_per_layer`` does after its ``get_cam_image``. A method's ``<name>_lowres``
map equals pytorch-grad-cam 1.5.7's up to a positive factor: we average over channels where it sums, so
that every channel-reducing map has the scale of the study's Grad-CAM (a mean over channels).

The paper's two (``gradcam``, ``threshold_gradcam``) come from ``combine`` unchanged.

One method is not from the pass: Score-CAM (``costly``) weighs each channel by the model's score for the input
masked by that channel, one forward per channel (hundreds to thousands per image), batched on the model's device
through the ``Probe`` the engine gives. ``all`` means the one-pass methods; Score-CAM is asked for by name.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

PAPER = ("gradcam", "threshold_gradcam")


@dataclass(frozen=True)
class Probe:
    """What a perturbation method needs besides A and G: the model, its input batch and the target classes."""

    model: Callable[[torch.Tensor], torch.Tensor]
    x: torch.Tensor  # the normalised input batch (B,3,H,W), on the model's device
    targets: torch.Tensor  # (B,) class indices
    batch: int = 64  # masked inputs per forward


class Terms:
    """A and G of one batch, with the products several methods share, each computed on first use."""

    def __init__(self, activation: torch.Tensor, gradient: torch.Tensor, probe: Optional[Probe] = None):
        self.a = activation
        self.g = gradient
        self.probe = probe

    @functools.cached_property
    def ga(self) -> torch.Tensor:
        """G·A, element-wise."""
        return self.g * self.a

    @functools.cached_property
    def sum_a(self) -> torch.Tensor:
        """Σ_hw A per channel, (B,C,1,1)."""
        return self.a.sum((2, 3), keepdim=True)


def _channel_weighted(weights: torch.Tensor, t: Terms) -> torch.Tensor:
    """mean_c(w_c · A_c) for channel weights (B,C)."""
    return (weights[:, :, None, None] * t.a).mean(1)


def hirescam(t: Terms) -> torch.Tensor:
    """HiResCAM: mean_c(G·A), the gradient kept per position instead of averaged."""
    return t.ga.mean(1)


def gradcam_elementwise(t: Terms) -> torch.Tensor:
    """Element-wise Grad-CAM: mean_c(relu(G·A)), the ReLU before the channel sum."""
    return t.ga.relu().mean(1)


def xgradcam(t: Terms) -> torch.Tensor:
    """XGrad-CAM: channel weights Σ_hw G·A / Σ_hw A."""
    # eps added to the spatial sum of A, at 1e-7, where pytorch-grad-cam adds it
    weights = (t.ga / (t.sum_a + 1e-7)).sum((2, 3))
    return _channel_weighted(weights, t)


def gradcampp(t: Terms) -> torch.Tensor:
    """Grad-CAM++: channel weights Σ_hw relu(G)·α with α = G² / (2G² + Σ_hw A · G³).

    The higher-order derivatives of the paper's Eq. 19 are replaced by powers of the first one (exact for an
    exponential of the score), and α is zero where G is: both as pytorch-grad-cam does, eps 1e-6 included.
    """
    g2 = t.g * t.g
    alpha = g2 / (2 * g2 + t.sum_a * g2 * t.g + 1e-6)
    alpha = torch.where(t.g != 0, alpha, torch.zeros_like(alpha))
    return _channel_weighted((t.g.relu() * alpha).sum((2, 3)), t)


def layercam(t: Terms) -> torch.Tensor:
    """LayerCAM: mean_c(relu(G)·A), each position weighted by its own positive gradient."""
    return (t.g.relu() * t.a).mean(1)


def eigengradcam(t: Terms) -> torch.Tensor:
    """Eigen-Grad-CAM: the projection of each position's G·A on their first principal component.

    The component's sign is arbitrary (an SVD's is); we take the one pytorch-grad-cam gets, by the same
    computation: numpy's float32 SVD of the position × channel matrix, centred, with NaN set to 0. It runs on
    the CPU whatever the device: the matrix is small (h·w × C) and another SVD may pick the other sign.
    """
    ga = t.ga.detach().float().cpu().numpy()
    ga = np.where(np.isnan(ga), np.float32(0), ga)
    out = []
    # one BLAS thread: a threaded SVD of so small a matrix spends its time waking threads, 10-100x longer when
    # the cores are busy (the models' own threads, other requests)
    with _blas().limit(limits=1, user_api="blas"):
        for m in ga:
            x = m.reshape(m.shape[0], -1).T
            x = x - x.mean(axis=0)
            _, _, vt = np.linalg.svd(x, full_matrices=False)
            out.append((x @ vt[0]).reshape(m.shape[1:]))
    return torch.from_numpy(np.stack(out).astype(np.float32)).to(t.a.device)


def scorecam(t: Terms) -> torch.Tensor:
    """Score-CAM: channel weights softmax_c(logit_target(x · m_c)), m_c the channel's activation upsampled to the
    input and min-max normalised; one forward per channel, ``probe.batch`` at a time.

    As pytorch-grad-cam: bilinear upsampling with aligned corners (``UpsamplingBilinear2d``), 1e-8 in the
    min-max, the target's raw logit, the softmax over the channels.
    """
    if t.probe is None:
        raise ValueError("Score-CAM needs the model and its input (a Probe)")
    p = t.probe
    weights = torch.empty(t.a.shape[:2], device=t.a.device, dtype=torch.float32)
    with torch.no_grad():
        for i in range(t.a.shape[0]):
            m = F.interpolate(t.a[i:i + 1].float(), size=p.x.shape[-2:], mode="bilinear", align_corners=True)[0]
            lo, hi = m.amin((1, 2), keepdim=True), m.amax((1, 2), keepdim=True)
            m = (m - lo) / (hi - lo + 1e-8)
            for c in range(0, m.shape[0], p.batch):
                masked = p.x[i:i + 1] * m[c:c + p.batch, None]
                if p.x.is_contiguous(memory_format=torch.channels_last):
                    masked = masked.contiguous(memory_format=torch.channels_last)
                weights[i, c:c + p.batch] = p.model(masked)[:, int(p.targets[i])].float()
    return _channel_weighted(torch.softmax(weights, 1), t)


@functools.lru_cache(maxsize=1)
def _blas():
    """The process's BLAS thread pools (found once: looking them up walks the loaded libraries)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def combine(activation: torch.Tensor, gradient: torch.Tensor, threshold: float):
    """The paper's two maps, Grad-CAM and Threshold-Grad-CAM, at the layer's resolution from A and G (B,C,h,w):
    exactly as the study computes them (the conformance goldens hold them to the paper's code)."""
    weighted = gradient.mean((2, 3), keepdim=True) * activation
    gradcam = weighted.mean(1).relu()
    t = weighted.relu().mean(1)
    lo = t.amin((1, 2), keepdim=True)
    hi = t.amax((1, 2), keepdim=True)
    # a constant map has no min-max normalisation (the study's formula gives 0/0); it is the floor
    span = hi - lo
    t = torch.where(span > 0, (t - lo) / torch.where(span > 0, span, torch.ones_like(span)),
                    torch.zeros_like(t))
    return gradcam, t.clamp_min(threshold)


@dataclass(frozen=True)
class Method:
    """One attribution method: its name, its title, the paper it comes from and its map on (A, G)."""

    name: str
    title: str
    paper: str
    fn: Callable[[Terms], torch.Tensor]
    costly: bool = False  # not from the one pass: extra forwards per image


def _paper_map(t: Terms) -> torch.Tensor:
    raise AssertionError("the paper's two maps come from combine")  # compute() never calls this


REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("gradcam", "Grad-CAM", "Selvaraju et al., ICCV 2017", _paper_map),
    Method("threshold_gradcam", "Threshold-Grad-CAM", "the DCLS Grad-CAM study", _paper_map),
    Method("hirescam", "HiResCAM", "Draelos & Carin, 2020 (arXiv:2011.08891)", hirescam),
    Method("gradcam_elementwise", "Grad-CAM element-wise", "pytorch-grad-cam (Gildenblat et al.)",
           gradcam_elementwise),
    Method("xgradcam", "XGrad-CAM", "Fu et al., BMVC 2020", xgradcam),
    Method("gradcampp", "Grad-CAM++", "Chattopadhyay et al., WACV 2018", gradcampp),
    Method("layercam", "LayerCAM", "Jiang et al., IEEE TIP 2021", layercam),
    Method("eigengradcam", "Eigen-Grad-CAM", "after Eigen-CAM, Muhammad & Yeasin, IJCNN 2020", eigengradcam),
    Method("scorecam", "Score-CAM", "Wang et al., CVPR Workshops 2020", scorecam, costly=True),
)}
NAMES = tuple(REGISTRY)
ONE_PASS = tuple(n for n in NAMES if not REGISTRY[n].costly)  # what ``all`` means
TITLES = {m.name: m.title for m in REGISTRY.values()}


def choice_label(name: str) -> str:
    """A method's title as pickers list it: the paper's two and the costly ones marked."""
    mark = " (paper)" if name in PAPER else " (costly: a forward per channel)" if REGISTRY[name].costly else ""
    return f"{REGISTRY[name].title}{mark}"


def parse(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """Method names from a comma-separated list (or a sequence); ``all`` is every one-pass method (``ONE_PASS``;
    a costly one may be named beside it), None the paper's two.

    The paper's two come first when present, then the others in registry order, each once. Raises ValueError
    naming the known methods for an unknown one.
    """
    if spec is None:
        return PAPER
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s and s.strip()]
    if not items:
        raise ValueError(f"no method given; choose from {', '.join(NAMES)} or 'all'")
    unknown = [s for s in items if s not in REGISTRY and s != "all"]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(NAMES)} or 'all'")
    return tuple(n for n in NAMES if n in items or ("all" in items and n in ONE_PASS))


def compute(names: Sequence[str], activation: torch.Tensor, gradient: torch.Tensor,
            threshold: float, probe: Optional[Probe] = None) -> dict[str, torch.Tensor]:
    """The ``names`` maps (B,h,w) at the layer's resolution, after ``max(·, 0)``, from one A and G.

    Args:
        names: method names (``parse``); the paper's two are computed together by ``combine``.
        threshold: Threshold-Grad-CAM's floor.
        probe: the model and its input, for a costly method.
    """
    out: dict[str, torch.Tensor] = {}
    if any(n in PAPER for n in names):
        out["gradcam"], out["threshold_gradcam"] = combine(activation, gradient, threshold)
    terms = Terms(activation, gradient, probe)
    for n in names:
        if n not in PAPER:
            out[n] = REGISTRY[n].fn(terms).relu()
    return {n: out[n] for n in names}
