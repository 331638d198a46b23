"""Grad-CAM and Threshold-Grad-CAM from one forward and one backward pass.

The study's definitions (A: CAM-layer activation, G = d logit_target / dA):
  w_c = mean_hw G_c
  Grad-CAM            = relu(mean_c(w_c * A_c))
  Threshold-Grad-CAM  = max(minmax(mean_c(relu(w_c * A_c))), threshold)
Both share A and w and differ only in where the ReLU sits, so both come from the same pass.

The forward runs with grad mode off up to the CAM layer (as fast as plain inference); a forward
hook there turns grad mode on and the layer's output into a fresh leaf that requires grad, so the
backward pass runs through the head alone, with no parameter gradients.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .geometry import FRAME
from .models import LoadedModel

DEFAULT_THRESHOLD = 0.3

# The capture of the call in progress in this thread/context. Hooks of concurrent calls on the same
# module all fire on every forward; each acts only for its own call.
_active: contextvars.ContextVar[Optional["CamLayerCapture"]] = contextvars.ContextVar("dclsviz_cam_capture",
                                                                                       default=None)


class CamLayerCapture:
    """Hooks a module for one call: enter, run the forward, read ``activation``, exit (hook removed)."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.activation: Optional[torch.Tensor] = None
        self._handle = None
        self._token = None

    def _hook(self, module, inputs, output):
        if _active.get() is not self:
            return None
        # Everything up to here ran without autograd (grad mode off is also what selects the fast
        # inference kernels); from the CAM layer on, the head is recorded for the backward pass.
        torch.set_grad_enabled(True)
        leaf = output.detach().requires_grad_(True)
        self.activation = leaf
        return leaf

    def __enter__(self) -> "CamLayerCapture":
        self._handle = self.module.register_forward_hook(self._hook)
        self._token = _active.set(self)
        return self

    def __exit__(self, *exc) -> None:
        _active.reset(self._token)
        self._handle.remove()


@dataclass
class CamResult:
    """Per-image results of one batch, as numpy arrays (B first)."""

    logits: np.ndarray  # (B, classes) float32
    targets: np.ndarray  # (B,) int64, the class each CAM explains
    gradcam_lowres: np.ndarray  # (B, h, w)
    threshold_lowres: np.ndarray  # (B, h, w), in [threshold, 1]
    gradcam: np.ndarray  # (B, 224, 224)
    threshold_gradcam: np.ndarray  # (B, 224, 224)
    threshold: float
    activation: Optional[np.ndarray] = None  # (B, C, h, w), when asked for
    gradient: Optional[np.ndarray] = None

    def top5(self, i: int = 0) -> list[tuple[int, float]]:
        """The ``(class, probability)`` of image ``i``'s five most probable classes, softmax in float64."""
        logits = torch.from_numpy(self.logits[i]).double()
        p = torch.softmax(logits, 0)
        v, idx = p.topk(min(5, p.numel()))
        return [(int(c), float(q)) for c, q in zip(idx, v)]


def resize_to_frame(maps: torch.Tensor, size: int = FRAME) -> torch.Tensor:
    """(B,h,w) -> (B,size,size), as torchvision's Resize does it in the study (bilinear, antialiased)."""
    return F.interpolate(maps[:, None], (size, size), mode="bilinear", align_corners=False, antialias=True)[:, 0]


def combine(activation: torch.Tensor, gradient: torch.Tensor, threshold: float):
    """Both CAMs at the layer's resolution from A and G (B,C,h,w)."""
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


Targets = Union[None, str, int, Sequence[Optional[int]]]


class CamEngine:
    """Explains a batch on one loaded model: logits, Grad-CAM and Threshold-Grad-CAM."""

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded

    def _resolve_targets(self, targets: Targets, logits: torch.Tensor) -> torch.Tensor:
        pred = logits.argmax(1)
        if targets is None or targets == "pred":
            return pred
        if isinstance(targets, int):
            targets = [targets] * logits.shape[0]
        if len(targets) != logits.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {logits.shape[0]}")
        n = logits.shape[1]
        out = pred.clone()
        for i, t in enumerate(targets):
            if t is not None and t != "pred":
                if not 0 <= int(t) < n:
                    raise ValueError(f"target class {t} is outside 0..{n - 1}")
                out[i] = int(t)
        return out

    def explain(self, x: torch.Tensor, targets: Targets = None, threshold: float = DEFAULT_THRESHOLD,
                keep_activations: bool = False, frame: int = FRAME) -> CamResult:
        """``x``: normalised (B,3,H,W). ``targets``: None/"pred" for top-1, a class, or one per image."""
        lm = self.loaded
        x = x.to(lm.device, torch.float32, non_blocking=True)  # pinned batches copy while the host goes on
        if lm.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), CamLayerCapture(lm.cam_module) as capture:
            logits = lm.model(x)  # the hook turns grad mode on at the CAM layer
        a = capture.activation
        if a is None:
            raise RuntimeError(f"{lm.entry.id}: the CAM layer {lm.entry.cam_layer!r} did not run")
        with torch.enable_grad():
            target = self._resolve_targets(targets, logits.detach())
            score = logits.gather(1, target[:, None]).sum()
            (g,) = torch.autograd.grad(score, a)
        a = a.detach()
        with torch.no_grad():
            gradcam, thr = combine(a, g, threshold)
            gradcam_f, thr_f = resize_to_frame(gradcam, frame), resize_to_frame(thr, frame)

        def cpu(t):
            return t.float().cpu().contiguous().numpy()

        return CamResult(cpu(logits.detach()), target.cpu().numpy(), cpu(gradcam), cpu(thr), cpu(gradcam_f),
                         cpu(thr_f), float(threshold),
                         cpu(a) if keep_activations else None, cpu(g) if keep_activations else None)
