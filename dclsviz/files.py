"""Files that appear whole or not at all: written beside their place, synced, then renamed over it.

A run killed mid-write, or a reader arriving mid-write, sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically (a rewritten file keeps its permissions)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        if path.exists():  # mkstemp's files are private; a rewritten file keeps what it had
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def finite_or_null(obj):
    """``obj`` with every non-finite float (NaN, ±inf, numpy's too) turned into None: JSON (RFC 8259) has no
    NaN, and Python's json would write one as a token other readers refuse."""
    import numpy as np

    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_json(path: Path, payload, *, indent: int | None = 1) -> None:
    """``payload`` as strict JSON, non-finite numbers as null, atomically."""
    write_atomically(path, json.dumps(finite_or_null(payload), indent=indent, allow_nan=False).encode())
