"""The process's shared machinery, built once at startup by the app or the CLI.

A ``Runtime`` owns what requests share: the device and its numeric policy, the intra-op thread budget
and the scoring pool's size, and the LRU of loaded pairs. ``start`` builds it and sets the process-wide
torch state once; nothing else in the package changes that state. ``current`` hands it out (a library
caller that never called ``start`` gets the defaults on first use).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Optional

import torch

from . import metrics, models, zoo

# progress(variant, done_bytes, total_bytes) while a pair's checkpoints download
PairProgress = Callable[[str, int, Optional[int]], None]


def set_float32_policy() -> None:
    """Full float32 matmuls and convolutions on CUDA: TF32 keeps ~10 mantissa bits, and the CAM maps would drift
    ~1e-2 from the study's float32 numbers. Process-wide torch state, so it is set here once, at start."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


class Runtime:
    """Shared state of one process: device, thread budget, the LRU of loaded pairs.

    Args:
        device: where models run (default: CUDA when there is one, else the CPU).
        threads: torch's intra-op threads and the scoring pool's size (None: leave torch's default).
        pair_capacity: loaded pairs kept in memory.
    """

    def __init__(self, device=None, *, threads: Optional[int] = None, pair_capacity: int = 2):
        self.device = torch.device(device) if device is not None else models.default_device()
        self.threads = threads
        self.pairs = models.PairCache(capacity=pair_capacity)

    def apply(self) -> "Runtime":
        """Set the process-wide torch state this runtime stands for."""
        set_float32_policy()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
            metrics.set_pool_threads(self.threads)
        return self

    def load_pair(self, arch: str, *, checkpoint_dir: Optional[Path] = None, download: bool = True,
                  progress: Optional[PairProgress] = None, device=None) -> dict[str, models.LoadedModel]:
        """The baseline and DCLS models of ``arch``, from the LRU when already loaded.

        ``device``: another device than the runtime's, for this pair (e.g. a CLI's ``--device``).
        """
        device = torch.device(device) if device is not None else self.device

        def loader():
            return tuple(models.load(zoo.get(arch, v), checkpoint_dir=checkpoint_dir, device=device,
                                     download=download,
                                     progress=(lambda d, t, v=v: progress(v, d, t)) if progress else None)
                         for v in zoo.VARIANTS)

        key = (arch, str(device), str(checkpoint_dir) if checkpoint_dir else None)
        return dict(zip(zoo.VARIANTS, self.pairs.get(key, loader)))


_lock = threading.Lock()
_current: Optional[Runtime] = None


def start(device=None, *, threads: Optional[int] = None, pair_capacity: int = 2) -> Runtime:
    """Build the process's runtime and set torch's process-wide state from it; the app and the CLI call this
    once, at startup (a later call replaces it: an embedding process, or a test, starting anew)."""
    global _current
    runtime = Runtime(device, threads=threads, pair_capacity=pair_capacity).apply()
    with _lock:
        _current = runtime
    return runtime


def current() -> Runtime:
    """The started runtime; a library caller that never started one gets the defaults, started on first use."""
    global _current
    with _lock:
        if _current is None:
            _current = Runtime().apply()
        return _current
