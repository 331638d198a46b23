"""Ready-to-explain models: built from a zoo entry, loaded strictly, DCLS frozen, on their device.

Also ``PairCache``, a small LRU of loaded baseline/DCLS pairs (the runtime holds one), so the app keeps
the last few pairs in memory instead of re-reading hundreds of megabytes per request. The numeric
policy (float32, no TF32) is the runtime's, set once at start (``runtime.set_float32_policy``).
"""

from __future__ import annotations

import functools
import os
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch
from torch import nn

from . import checkpoints, dcls, frozen_cache
from .download import Progress
from .results import Provenance
from .zoo import ModelEntry


@dataclass
class LoadedModel:
    """A model ready for CAMs (eval, frozen DCLS, on ``device``) and where its weights came from."""

    entry: ModelEntry
    model: nn.Module
    device: torch.device
    checkpoint: Optional[checkpoints.ResolvedCheckpoint]
    channels_last: bool
    load_seconds: float = 0.0

    @property
    def cam_module(self) -> nn.Module:
        """The module whose output is the CAM activation (the entry's ``cam_layer``)."""
        return self.model.get_submodule(self.entry.cam_layer)

    def provenance(self) -> Provenance:
        """Which weights on which device: the checkpoint's path, origin and sha256 (None for given weights)."""
        c = self.checkpoint
        return Provenance(id=self.entry.id, timm_name=self.entry.timm_name,
                          checkpoint_path=str(c.path) if c else None, checkpoint_origin=c.origin if c else None,
                          checkpoint_sha256=c.sha256 if c else None, device=str(self.device))


def default_device() -> torch.device:
    """CUDA when there is a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build(entry: ModelEntry, init: bool = True) -> nn.Module:
    """The architecture of ``entry`` with random weights (DCLS layers live, not frozen).

    ``init=False`` leaves the DCLS layers' parameters uninitialised, for a strict load right after.
    """
    import timm

    model = timm.create_model(entry.timm_name, pretrained=False, num_classes=entry.num_classes,
                              **entry.timm_kwargs)
    if entry.dcls is not None:
        dcls.apply_recipe(model, entry.dcls, init=init)
    return model.eval()


def prepare(model: nn.Module, device: torch.device, channels_last: bool, freeze: bool = True,
            kernels: Optional[Mapping[str, torch.Tensor]] = None) -> list[tuple[str, torch.Tensor, bool]]:
    """Inference form, in place: DCLS kernels precomputed, no parameter needs a gradient, on ``device``.

    ``kernels``: the frozen kernels by layer name when they are known already (``dcls.freeze``'s argument).

    Returns:
        ``dcls.freeze``'s ``(name, kernel, proven finite)`` of each frozen layer (empty without DCLS).
    """
    model.requires_grad_(False).eval()
    # before freezing, so the kernels are built on the target device and only the compact weights
    # and positions (not the dense kernels) cross to it
    model.to(device)
    frozen = dcls.freeze(model, channels_last, kernels) if freeze else []
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return frozen


def check_finite(tensors, where: str) -> None:
    """Raise ``CheckpointNotFinite`` naming the first floating tensor of ``(key, tensor)`` pairs that holds
    NaN or infinity.

    One min/max reduction per tensor (NaN and ±inf reach the min or the max; no boolean copy is made, ~8× faster
    than ``isfinite(t).all()``) and a single synchronisation for all of them, however many there are.
    """
    named = [(k, t) for k, t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()]
    if not named:
        return
    device = named[0][1].device
    ok = torch.stack([torch.isfinite(torch.stack(torch.aminmax(t))).all().to(device) for _, t in named]).cpu()
    if bool(ok.all()):
        return
    key, t = named[int((~ok).nonzero()[0])]
    raise checkpoints.CheckpointNotFinite(
        f"{where}: tensor {key!r} {tuple(t.shape)} holds {int((~torch.isfinite(t)).sum()):,} NaN/inf value(s); "
        "the model's outputs would be undefined. Is the file damaged, or saved from a diverged run?")


def load(entry: ModelEntry, checkpoint: Optional[Path] = None, *, state_dict: Optional[Mapping] = None,
         checkpoint_dir: Optional[Path] = None, device: Optional[torch.device] = None, download: bool = True,
         progress: Optional[Progress] = None, freeze: bool = True,
         channels_last: Optional[bool] = None) -> LoadedModel:
    """Build ``entry``, load its checkpoint strictly and make it ready for CAMs."""
    start = time.perf_counter()
    device = torch.device(device) if device is not None else default_device()
    resolved = None
    if state_dict is None:
        resolved = checkpoints.resolve(entry, checkpoint, checkpoint_dir=checkpoint_dir, download=download,
                                       progress=progress)
        state_dict = checkpoints.unwrap(checkpoints.read_file(resolved.path), entry)
    source = resolved.path.name if resolved is not None else "the given state dict"
    check_finite(state_dict.items(), f"{entry.id}: the checkpoint {source}")
    model = build(entry, init=False)  # load_into is strict: every parameter is overwritten
    checkpoints.load_into(model, state_dict, entry)
    if channels_last is None:
        channels_last = entry.channels_last
    cache_name = _frozen_cache_name(model, entry, resolved, device, channels_last) if freeze else None
    cached = frozen_cache.read(cache_name, dcls.kernel_shapes(model), channels_last) if cache_name else None
    frozen = prepare(model, device, channels_last, freeze, cached)
    if cache_name and cached is None:
        frozen_cache.write_later(cache_name, {name: k for name, k, _ in frozen}, channels_last)
    # the strict load copied checked tensors; only a frozen DCLS kernel is new, and finite weights can still
    # overflow in one: read those the bound does not clear
    check_finite([(f"{name}.weight", k) for name, k, proven in frozen if not proven],
                 f"{entry.id}: the model built from {source} (after loading)")
    return LoadedModel(entry, model, device, resolved, channels_last, time.perf_counter() - start)


def _frozen_cache_name(model: nn.Module, entry: ModelEntry, resolved: Optional[checkpoints.ResolvedCheckpoint],
                       device: torch.device, channels_last: bool) -> Optional[str]:
    """The frozen-kernel cache's name for this load, or None where the cache does not pay or cannot know the
    weights: weights given as a state dict (no file hash), small kernels, or a GPU (it freezes in milliseconds)."""
    if resolved is None or device.type != "cpu" or not frozen_cache.enabled():
        return None
    size = sum(torch.Size(shape).numel() * dtype.itemsize for shape, dtype in dcls.kernel_shapes(model).values())
    return frozen_cache.key(entry, resolved.sha256, channels_last) if size >= frozen_cache.MIN_BYTES else None


class PairCache:
    """A bounded LRU of loaded (baseline, dcls) pairs, safe to use from several threads.

    One lock per key: two requests for the same pair load it once, while other pairs stay usable.
    """

    def __init__(self, capacity: int = 2):
        self.capacity = capacity
        self._pairs: OrderedDict[tuple, tuple[LoadedModel, LoadedModel]] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[tuple, threading.Lock] = {}
        # ZeroGPU forks its GPU worker from a process with request threads: a lock held by one of them at the
        # fork would stay held in the worker forever
        os.register_at_fork(after_in_child=functools.partial(_call_if_alive, weakref.WeakMethod(self._new_locks)))

    def _new_locks(self) -> None:
        self._lock = threading.Lock()
        self._key_locks = {}

    def get(self, key: tuple, loader: Callable[[], tuple[LoadedModel, LoadedModel]]):
        """The pair under ``key``, loaded by ``loader()`` once when missing (other keys stay usable meanwhile)."""
        with self._lock:
            if key in self._pairs:
                self._pairs.move_to_end(key)
                return self._pairs[key]
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._pairs:
                    return self._pairs[key]
            pair = loader()
            with self._lock:
                self._pairs[key] = pair
                while len(self._pairs) > self.capacity:
                    self._pairs.popitem(last=False)
                self._key_locks.pop(key, None)
            return pair

    def keys(self) -> list[tuple]:
        """The keys held, least recently used first."""
        with self._lock:
            return list(self._pairs)


def _call_if_alive(method: weakref.WeakMethod) -> None:
    if (bound := method()) is not None:
        bound()
