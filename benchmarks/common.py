"""What the benchmarks share: interleaved timing, pairs with random weights, and the study's CAM package."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dclsviz import models, zoo  # noqa: E402
from dclsviz.methods import combine  # noqa: E402


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved(fns: dict, repeats: int, stat: Callable = min) -> dict:
    """``stat`` (min or median) of each function's times over rounds that run each once, so that load drifts
    on a shared machine hit all of them alike."""
    for fn in fns.values():
        fn()  # warm-up: allocator, oneDNN primitive caches
    ts = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            _sync()
            t = time.perf_counter()
            fn()
            _sync()  # CUDA work is asynchronous: time it to its end
            ts[k].append(time.perf_counter() - t)
    return {k: stat(v) for k, v in ts.items()}


median = statistics.median


def random_pair(arch: str, device, seed: int = 0) -> tuple[dict, dict]:
    """(live, loaded) models of ``arch`` with random weights: speed does not depend on the values, and no
    checkpoint is needed. ``live`` keeps its DCLS layers unfrozen, on the CPU."""
    torch.manual_seed(seed)
    live = {v: models.build(zoo.get(arch, v)) for v in zoo.VARIANTS}
    loaded = {v: models.load(zoo.get(arch, v), state_dict=live[v].state_dict(), device=device) for v in zoo.VARIANTS}
    return live, loaded


def grad_cam_package():
    """pytorch-grad-cam's GradCAM, a Threshold-Grad-CAM on its machinery, and its target class: the study's tools.

    The package sums weighted channels in ``get_cam_image``; the study's threshold variant differs only there.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class ThresholdGradCAM(GradCAM):
        def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth):
            return combine(torch.from_numpy(activations), torch.from_numpy(grads), 0.3)[1].numpy()

    return GradCAM, ThresholdGradCAM, ClassifierOutputTarget
