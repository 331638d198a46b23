"""A disk cache of frozen DCLS kernels, so that a later process maps them instead of freezing again.

Freezing writes every dense kernel into fresh memory: ResNet50-DCLS's are 246 MB, more than the rest of its
load. The frozen kernels depend only on the checkpoint's bytes, how the model is built from them and the
freeze code, so they are kept as safetensors under ``$DCLSVIZ_CACHE/frozen``, named by a hash of exactly that
(the checkpoint's sha256, the entry's build and key-mapping fields, the memory layout, ``FREEZE_VERSION`` and
torch's version). A hit is memory-mapped (pages come from the page cache as they are used, copy-on-write).

A file is trusted only after its checks: safetensors (never pickle), its recorded key equal to the one asked
for, exactly the expected layers with their shapes and dtype, and a CRC-32C of every kernel's bytes equal to
the one recorded at writing. Anything else is a miss, and the caller freezes and rewrites it. Writes are
atomic (a reader sees a whole file or none); the folder is kept under ``MAX_BYTES``, least recently used
first. ``DCLSVIZ_FROZEN_CACHE=0`` turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Mapping, Optional

import torch

from .download import cache_root
from .files import write_atomically
from .zoo import ModelEntry

ENV = "DCLSVIZ_FROZEN_CACHE"
# bump whenever dcls.construct_kernels' output may change: older files then stop matching any key
FREEZE_VERSION = 1
# below this the freeze costs about what checking a cached file does (ConvNeXt's depthwise kernels: 5-21 MB)
MIN_BYTES = 64 << 20
MAX_BYTES = 2 << 30
_CRC = "crc32c"
_KEY = "key"
_LAYOUT = "channels_last"


def enabled() -> bool:
    """Whether the cache is on (``DCLSVIZ_FROZEN_CACHE`` unset, or anything but 0/false/no/off)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def folder() -> Path:
    return cache_root() / "frozen"


def key(entry: ModelEntry, sha256: str, channels_last: bool) -> str:
    """The name of the frozen kernels of ``entry`` built from the checkpoint with ``sha256``."""
    c = entry.checkpoint
    facts = dict(sha256=sha256, family=entry.family, timm_name=entry.timm_name, timm_kwargs=entry.timm_kwargs,
                 num_classes=entry.num_classes, recipe=repr(entry.dcls), container_key=c.container_key,
                 drop=list(c.drop), renames=[list(r) for r in c.renames], channels_last=channels_last,
                 freeze=FREEZE_VERSION, torch=torch.__version__)
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=repr).encode()).hexdigest()


def _path(name: str) -> Path:
    return folder() / f"{name}.safetensors"


def _crc(tensors: Mapping[str, torch.Tensor]) -> str:
    import crc32c

    value = 0
    for name in sorted(tensors):
        value = crc32c.crc32c(tensors[name].contiguous().view(-1).view(torch.uint8).numpy(), value)
    return f"{value:08x}"


def _stored(kernel: torch.Tensor, channels_last: bool) -> torch.Tensor:
    # a channels-last kernel is stored in its own memory order, so reading it back needs no conversion
    return kernel.permute(0, 2, 3, 1) if channels_last else kernel


def _restored(stored: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return stored.permute(0, 3, 1, 2) if channels_last else stored


def read(name: str, expected: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
         channels_last: bool) -> Optional[dict[str, torch.Tensor]]:
    """The kernels stored under ``name`` (layer name -> kernel), or None when absent or failing a check.

    ``expected``: layer name -> (shape, dtype) of its kernel, in ``(out, in/groups, *dks)`` order.
    """
    path = _path(name)
    if not path.is_file():
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        stored = load_file(str(path), device="cpu")
    except Exception:  # short, truncated or not safetensors at all: rebuilt by the caller
        return None
    if meta.get(_KEY) != name or meta.get(_LAYOUT) != str(channels_last) or set(stored) != set(expected):
        return None
    kernels = {k: _restored(t, channels_last) for k, t in stored.items()}
    if any(tuple(kernels[k].shape) != tuple(s) or kernels[k].dtype != d for k, (s, d) in expected.items()):
        return None
    if meta.get(_CRC) != _crc(stored):
        return None
    os.utime(path)  # the least recently used files go first
    return kernels


_writers: list[threading.Thread] = []
_writers_lock = threading.Lock()


def write_later(name: str, kernels: Mapping[str, torch.Tensor], channels_last: bool) -> None:
    """``write`` in a thread of its own, so that the load that froze ``kernels`` does not wait for the disk
    (the kernels are never written to again). Not a daemon: a process ending meanwhile finishes the file."""
    t = threading.Thread(target=write, args=(name, dict(kernels), channels_last), name="dclsviz-frozen-cache")
    with _writers_lock:
        _writers[:] = [w for w in _writers if w.is_alive()] + [t]
    t.start()


def wait() -> None:
    """Return once every write started so far has ended."""
    with _writers_lock:
        writers = list(_writers)
    for t in writers:
        t.join()


def write(name: str, kernels: Mapping[str, torch.Tensor], channels_last: bool) -> None:
    """Store ``kernels`` under ``name`` atomically, then trim the folder to ``MAX_BYTES``; an unwritable cache
    only costs the freeze next time."""
    from safetensors.torch import save

    stored = {k: _stored(t, channels_last).contiguous().cpu() for k, t in kernels.items()}
    try:
        data = save(stored, metadata={_KEY: name, _LAYOUT: str(channels_last), _CRC: _crc(stored)})
        write_atomically(_path(name), data)
        _trim(keep=_path(name))
    except OSError:
        pass


def _trim(keep: Path) -> None:
    files = []
    for p in folder().glob("*.safetensors"):
        try:
            st = p.stat()
        except OSError:  # removed by another process meanwhile
            continue
        files.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in files)
    for _, size, p in sorted(files):
        if total <= MAX_BYTES:
            break
        if p != keep:
            p.unlink(missing_ok=True)
            total -= size
