"""Evaluation's data path in worker processes: shard records → label, human map and model inputs, batched.

Reading a ClickMe record, decoding it, building its human map and preprocessing it for each model's transform
is CPU work that needs nothing from the models. A torch ``DataLoader`` over the selected records does it in
``workers`` processes, so the main process only runs the models and appends rows, and the GPU is not left
waiting on one Python thread. The work per record is exactly ``Sample.from_clickme`` and ``prepare_inputs``,
the functions ``explain`` uses, so results do not depend on the number of workers.

A record that cannot be read or decoded is reported with its reason instead of ending the run.
"""

from __future__ import annotations

import functools
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from . import clickme, geometry
from .compare import Sample, prepare_inputs
from .zoo import Transform


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which a container or SLURM may narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass
class Prepared:
    """One batch ready for the models: the readable records with their inputs, and those that failed."""

    items: list  # evaluate.Item of each readable record, in request order
    labels: list[int]
    names: list[str]
    # one tensor, so that a worker hands the batch's human maps over through shared memory, not the pipe
    humans: Optional[torch.Tensor]  # (B, 224, 224) float32
    inputs: dict[Transform, tuple[torch.Tensor, list[geometry.Window]]]
    failed: list[tuple[object, str]] = field(default_factory=list)  # (item, reason)

    @property
    def samples(self) -> list[Sample]:
        """Label and human map of each readable record (the image itself stayed in the worker)."""
        humans = self.humans.numpy() if self.humans is not None else []
        return [Sample(_NO_IMAGE, h, label, name) for h, label, name in zip(humans, self.labels, self.names)]

    def pin_memory(self) -> "Prepared":
        """Page-lock the inputs (DataLoader calls this when the models are on CUDA)."""
        # DataLoader calls this in its pinning thread when the models are on CUDA: page-locked inputs are what
        # lets the copy to the device run asynchronously (non_blocking=True).
        self.inputs = {t: (x.pin_memory(), w) for t, (x, w) in self.inputs.items()}
        return self


_NO_IMAGE = np.zeros((0, 0, 3), np.uint8)


class RecordSet(Dataset):
    """Item k → (k, (label, human map, {transform: (input, window)})) or (k, reason it could not be read)."""

    def __init__(self, shards: dict[str, clickme.ClickMeShard], items: Sequence, transforms: Sequence[Transform]):
        self.shards = shards
        self.items = list(items)
        self.transforms = list(transforms)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        it = self.items[k]
        shard = self.shards[it.shard]
        try:
            sample = Sample.from_clickme(shard[it.index])
            inputs = {t: prepare_inputs([sample], t) for t in self.transforms}
        except (ValueError, OSError, IndexError) as e:  # ClickMeFormatError, or an image or map out of bounds
            return k, str(e).replace(str(shard.path), it.shard)  # the file name only, never a server path
        return k, (sample.label, torch.from_numpy(sample.human), sample.name,
                   {t: (x[0], w[0]) for t, (x, w) in inputs.items()})


def _collate(set_: RecordSet, batch: list) -> Prepared:
    ok = [(k, got) for k, got in batch if not isinstance(got, str)]
    failed = [(set_.items[k], got) for k, got in batch if isinstance(got, str)]
    inputs = {}
    for t in set_.transforms:
        if ok:
            inputs[t] = (torch.stack([got[3][t][0] for _, got in ok]), [got[3][t][1] for _, got in ok])
    return Prepared([set_.items[k] for k, _ in ok], [got[0] for _, got in ok], [got[2] for _, got in ok],
                    torch.stack([got[1] for _, got in ok]) if ok else None, inputs, failed)


class _Collate:
    # a picklable callable, so the collate function also works with the spawn start method
    def __init__(self, set_: RecordSet):
        self.set_ = set_

    def __call__(self, batch):
        return _collate(self.set_, batch)


def _worker_init(parent: int, _: int) -> None:
    # torch's worker loop already runs one intra-op thread. Nothing here may touch a thread pool the parent may
    # have started before the fork (OpenCV's hangs in cv2.setNumThreads in the child): the records need none.
    _die_with_parent(parent)


def _die_with_parent(parent: int) -> None:
    # A run killed with SIGKILL cannot stop its workers, and a worker blocked on a full result pipe never
    # notices: it would live on holding the run's pipes and files. The kernel kills it with its parent instead.
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def batches(shards: dict[str, clickme.ClickMeShard], items: Sequence, transforms: Sequence[Transform],
            batch_size: int, workers: int = 0, pin_memory: bool = False,
            prefetch: Optional[int] = None) -> Iterator[Prepared]:
    """``items`` in consecutive batches of ``batch_size``, prepared by ``workers`` processes, in order.

    ``workers`` 0: in a thread of this process, one batch ahead of the caller. ``pin_memory``: page-locked
    inputs, for models on CUDA.
    """
    set_ = RecordSet(shards, items, transforms)
    kwargs = dict(worker_init_fn=functools.partial(_worker_init, os.getpid()), prefetch_factor=prefetch or 2) if workers > 0 else {}
    loader = DataLoader(set_, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=_Collate(set_), pin_memory=pin_memory, **kwargs)
    yield from (loader if workers > 0 else _one_ahead(iter(loader)))


def _one_ahead(batches: Iterator[Prepared]) -> Iterator[Prepared]:
    with ThreadPoolExecutor(1, thread_name_prefix="dclsviz-read") as pool:
        upcoming = pool.submit(next, batches, None)
        while (batch := upcoming.result()) is not None:
            upcoming = pool.submit(next, batches, None)
            yield batch

