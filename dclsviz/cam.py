"""Grad-CAM and Threshold-Grad-CAM from one forward and one backward pass.

The study's definitions (A: CAM-layer activation, G = d logit_target / dA):
  w_c = mean_hw G_c
  Grad-CAM            = relu(mean_c(w_c * A_c))
  Threshold-Grad-CAM  = max(minmax(mean_c(relu(w_c * A_c))), threshold)
Both share A and w and differ only in where the ReLU sits, so both come from the same pass. The other
methods of ``methods.REGISTRY`` need only A and G too, and come from the same pass when asked for.

The forward runs with grad mode off up to the CAM layer (as fast as plain inference); a forward
hook there turns grad mode on and the layer's output into a fresh leaf that requires grad, so the
backward pass runs through the head alone, with no parameter gradients.
"""

from __future__ import annotations

import contextvars
import difflib
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import methods as methods_mod
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
    lowres: dict[str, np.ndarray] = field(default_factory=dict)  # method -> (B, h, w), every method asked for
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # method -> (B, frame, frame)

    def top5(self, i: int = 0) -> list[tuple[int, float]]:
        """The ``(class, probability)`` of image ``i``'s five most probable classes, softmax in float64."""
        logits = torch.from_numpy(self.logits[i]).double()
        p = torch.softmax(logits, 0)
        v, idx = p.topk(min(5, p.numel()))
        return [(int(c), float(q)) for c, q in zip(idx, v)]


def resize_to_frame(maps: torch.Tensor, size: int = FRAME) -> torch.Tensor:
    """(B,h,w) -> (B,size,size), as torchvision's Resize does it in the study (bilinear, antialiased)."""
    return F.interpolate(maps[:, None], (size, size), mode="bilinear", align_corners=False, antialias=True)[:, 0]


Targets = Union[None, str, int, Sequence[Optional[int]]]


def _close_names(name: str, candidates: Sequence[str]) -> list[str]:
    near = difflib.get_close_matches(name, candidates, n=8, cutoff=0.5)
    # a prefix match is the likeliest intent ("stages" for "stages.3"): offer those after the fuzzy ones
    prefixed = [c for c in candidates if c.startswith(name) or name.startswith(c + ".")][:8]
    return list(dict.fromkeys(near + prefixed))[:8] or list(candidates)[-8:]


def map_layers(model: nn.Module, input_size: int) -> list[str]:
    """The named modules of ``model`` whose output is (B, C, h, w) for an input of ``input_size``²: the valid
    CAM layers. Found with one forward of a zero input (on the model's device, grad mode off)."""
    found: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_m, _i, out, name=name):
            if isinstance(out, torch.Tensor) and out.dim() == 4 and name not in found:
                found.append(name)

        handles.append(module.register_forward_hook(hook))
    try:
        p = next(model.parameters())
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
    return found


class LayerError(ValueError):
    """A CAM layer that does not exist or whose output is not (B, C, h, w); the message lists valid ones near it."""


def resolve_layer(loaded: LoadedModel, name: Optional[str]) -> tuple[str, nn.Module]:
    """The CAM layer ``name`` of ``loaded`` (None: the study's layer of its entry) and its module.

    Raises LayerError naming the valid layers nearest to ``name`` when there is no such module.
    """
    if name is None or name == loaded.entry.cam_layer:
        return loaded.entry.cam_layer, loaded.cam_module
    names = [n for n, _ in loaded.model.named_modules() if n]
    if name not in names:
        valid = map_layers(loaded.model, loaded.entry.transform.crop)
        raise LayerError(f"{loaded.entry.id} has no layer {name[:80]!r}; valid CAM layers (output B×C×h×w) near "
                         f"it: {', '.join(_close_names(name, valid))} (the study's: {loaded.entry.cam_layer})")
    return name, loaded.model.get_submodule(name)


class CamEngine:
    """Explains a batch on one loaded model: logits and the maps of the methods asked for (by default the
    paper's Grad-CAM and Threshold-Grad-CAM), all from one forward and one backward pass.

    Args:
        layer: the CAM layer's module name (default: the study's layer of the model's entry).
    """

    def __init__(self, loaded: LoadedModel, layer: Optional[str] = None):
        self.loaded = loaded
        self.layer, self.module = resolve_layer(loaded, layer)

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

    def _activation_error(self, a: Optional[torch.Tensor]) -> LayerError:
        lm = self.loaded
        if a is None:
            return LayerError(f"{lm.entry.id}: the CAM layer {self.layer!r} did not run in the forward pass")
        valid = map_layers(lm.model, lm.entry.transform.crop)
        return LayerError(f"{lm.entry.id}: the layer {self.layer!r} outputs {tuple(a.shape)}, not (B, C, h, w); "
                          f"valid CAM layers near it: {', '.join(_close_names(self.layer, valid))}")

    def _pass(self, x: torch.Tensor, targets: Targets):
        """One forward to the logits and one backward to the CAM layer: (logits, targets, A, G)."""
        with torch.no_grad(), CamLayerCapture(self.module) as capture:
            logits = self.loaded.model(x)  # the hook turns grad mode on at the CAM layer
        a = capture.activation
        if a is None or a.dim() != 4:
            raise self._activation_error(a)
        with torch.enable_grad():
            target = self._resolve_targets(targets, logits.detach())
            score = logits.gather(1, target[:, None]).sum()
            (g,) = torch.autograd.grad(score, a)
        return logits.detach(), target, a.detach(), g

    def explain(self, x: torch.Tensor, targets: Targets = None, threshold: float = DEFAULT_THRESHOLD,
                keep_activations: bool = False, frame: int = FRAME,
                methods: Sequence[str] = methods_mod.PAPER) -> CamResult:
        """Explain a batch.

        Args:
            x: normalised (B,3,H,W).
            targets: None/"pred" for top-1, a class, or one per image.
            methods: the maps to compute (``methods.parse``); the paper's two are always in the result.
        """
        lm = self.loaded
        x = x.to(lm.device, torch.float32, non_blocking=True)  # pinned batches copy while the host goes on
        if lm.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits, target, a, g = self._pass(x, targets)
        with torch.no_grad():
            names = tuple(dict.fromkeys((*methods_mod.PAPER, *methods)))
            probe = methods_mod.Probe(lm.model, x, target) if any(methods_mod.REGISTRY[n].costly for n in names) \
                else None
            low = methods_mod.compute(names, a, g, threshold, probe)
            # the paper's two one call each, as always; the others in one call, each map a channel
            framed = {n: resize_to_frame(low[n], frame) for n in methods_mod.PAPER}
            others = [n for n in names if n not in methods_mod.PAPER]
            if others:
                stacked = F.interpolate(torch.stack([low[n] for n in others], 1), (frame, frame), mode="bilinear",
                                        align_corners=False, antialias=True)
                framed.update({n: stacked[:, k] for k, n in enumerate(others)})

        def cpu(t):
            return t.float().cpu().contiguous().numpy()

        lowres = {n: cpu(m) for n, m in low.items()}
        maps = {n: cpu(m) for n, m in framed.items()}
        return CamResult(cpu(logits), target.cpu().numpy(), lowres["gradcam"], lowres["threshold_gradcam"],
                         maps["gradcam"], maps["threshold_gradcam"], float(threshold),
                         cpu(a) if keep_activations else None, cpu(g) if keep_activations else None,
                         lowres=lowres, maps=maps)
