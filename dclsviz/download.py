"""Fetching large files over HTTP: a cache, resumable partial files, timeouts and a progress callback.

Checkpoints (hundreds of MB) and ClickMe shards both come through here, so an interrupted download
continues from the `.part` file instead of starting over, and an unreachable host fails within the
connect timeout instead of hanging the app.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Optional

import requests

CHUNK = 1 << 16  # small enough that a dropped connection loses little of the .part file
DEFAULT_TIMEOUT = (10.0, 60.0)  # (connect, read) seconds

# progress(done_bytes, total_bytes or None)
Progress = Callable[[int, Optional[int]], None]


class DownloadError(RuntimeError):
    """The file could not be fetched; the message says from where and why."""


def cache_root() -> Path:
    """The folder dclsviz caches downloads in (``DCLSVIZ_CACHE``, else ``~/.cache/dclsviz``)."""
    env = os.environ.get("DCLSVIZ_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dclsviz"


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def fetch(
    url: str,
    dest: Path,
    *,
    progress: Optional[Progress] = None,
    timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    expected_sha256: Optional[str] = None,
    session: Optional[requests.Session] = None,
) -> Path:
    """Download ``url`` to ``dest`` unless it is already there; resume a previous partial download.

    The bytes go to ``dest + '.part'`` and are renamed only when complete (and, if given, when the
    sha256 matches), so a half-written file is never mistaken for a finished one.
    """
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    http = session or requests.Session()
    done = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={done}-"} if done else {}
    try:
        with http.get(url, stream=True, timeout=timeout, headers=headers, allow_redirects=True) as r:
            if r.status_code == 416:  # the partial file already holds everything
                r.close()
            else:
                if r.status_code not in (200, 206):
                    raise DownloadError(f"{url}: HTTP {r.status_code}")
                if r.status_code == 200 and done:
                    done = 0  # the server ignored the range: start over
                length = r.headers.get("Content-Length")
                total = done + int(length) if length is not None else None
                with open(part, "ab" if done else "wb") as f:
                    for block in r.iter_content(CHUNK):
                        f.write(block)
                        done += len(block)
                        if progress:
                            progress(done, total)
                if total is not None and done < total:
                    raise DownloadError(f"{url}: connection closed at {done} of {total} bytes; run again to resume")
    except requests.RequestException as e:
        kept = part.stat().st_size if part.exists() else 0
        hint = f"; {kept} bytes kept, run again to resume" if kept else ""
        raise DownloadError(f"{url}: {type(e).__name__}: {e}{hint}") from e
    if expected_sha256 and sha256_file(part) != expected_sha256:
        part.unlink()
        raise DownloadError(f"{url}: sha256 mismatch, the partial file was discarded")
    part.replace(dest)
    return dest
