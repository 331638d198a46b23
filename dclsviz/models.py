"""Ready-to-explain models: built from a zoo entry, loaded strictly, DCLS frozen, on their device.

Also a small LRU of loaded baseline/DCLS pairs, so the app keeps the last few pairs in memory
instead of re-reading hundreds of megabytes per request.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch
from torch import nn

from . import checkpoints, dcls
from .download import Progress
from .zoo import ModelEntry


@dataclass
class LoadedModel:
    entry: ModelEntry
    model: nn.Module
    device: torch.device
    checkpoint: Optional[checkpoints.ResolvedCheckpoint]
    channels_last: bool
    load_seconds: float = 0.0

    @property
    def cam_module(self) -> nn.Module:
        return self.model.get_submodule(self.entry.cam_layer)

    def provenance(self) -> dict:
        c = self.checkpoint
        return {"id": self.entry.id, "timm_name": self.entry.timm_name,
                "checkpoint_path": str(c.path) if c else None, "checkpoint_origin": c.origin if c else None,
                "checkpoint_sha256": c.sha256 if c else None, "device": str(self.device)}


def default_device() -> torch.device:
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


def prepare(model: nn.Module, device: torch.device, channels_last: bool, freeze: bool = True) -> nn.Module:
    """Inference form: DCLS kernels precomputed, no parameter needs a gradient, on ``device``."""
    model.requires_grad_(False).eval()
    if device.type == "cuda":
        # TF32 keeps ~10 mantissa bits: CAM maps would drift ~1e-2 from the study's float32 numbers
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    # before freezing, so the kernels are built on the target device and only the compact weights
    # and positions (not the dense kernels) cross to it
    model.to(device)
    if freeze:
        dcls.freeze(model, channels_last)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


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
    model = build(entry, init=False)  # load_into is strict: every parameter is overwritten
    checkpoints.load_into(model, state_dict, entry)
    if channels_last is None:
        channels_last = entry.channels_last
    prepare(model, device, channels_last, freeze)
    return LoadedModel(entry, model, device, resolved, channels_last, time.perf_counter() - start)


class PairCache:
    """A bounded LRU of loaded (baseline, dcls) pairs, safe to use from several threads.

    One lock per key: two requests for the same pair load it once, while other pairs stay usable.
    """

    def __init__(self, capacity: int = 2):
        self.capacity = capacity
        self._pairs: OrderedDict[tuple, tuple[LoadedModel, LoadedModel]] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[tuple, threading.Lock] = {}

    def get(self, key: tuple, loader: Callable[[], tuple[LoadedModel, LoadedModel]]):
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
        with self._lock:
            return list(self._pairs)


_PAIRS = PairCache(capacity=2)


def load_pair(arch: str, *, checkpoint_dir: Optional[Path] = None, device: Optional[torch.device] = None,
              download: bool = True, progress: Optional[Callable[[str, int, Optional[int]], None]] = None,
              cache: Optional[PairCache] = None) -> dict[str, LoadedModel]:
    """The baseline and DCLS models of ``arch``, from the LRU when already loaded.

    ``progress(variant, done_bytes, total_bytes)`` reports downloads.
    """
    from .zoo import VARIANTS, get

    device = torch.device(device) if device is not None else default_device()

    def loader():
        return tuple(load(get(arch, v), checkpoint_dir=checkpoint_dir, device=device, download=download,
                          progress=(lambda d, t, v=v: progress(v, d, t)) if progress else None)
                     for v in VARIANTS)

    key = (arch, str(device), str(checkpoint_dir) if checkpoint_dir else None)
    return dict(zip(VARIANTS, (cache or _PAIRS).get(key, loader)))
