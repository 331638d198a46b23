"""The app's private folders on disk, and keeping them bounded.

A public Space writes files for strangers (export bundles, Dataset-tab runs) into folders that must stay ours
and stay small. Every folder is checked with ``os.lstat`` (owned by this process, not a symlink, closed to
others) before it is used, and pruning works through directory file descriptors opened with ``O_NOFOLLOW``:
a symlink planted in the folder, or swapped in while pruning runs, is removed itself and never followed, so
nothing outside the folder can be deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Collection, Optional

from .. import limits

log = logging.getLogger("dclsviz.storage")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class UnsafeFolder(RuntimeError):
    """A folder the app was told to write into is not private to it (another owner, a symlink, open modes)."""


def check_private(folder: Path, closed: int = 0o077) -> Path:
    """``folder`` if it is a real directory owned by this process whose mode has none of the bits ``closed``
    (default: closed to group and others; ``0o022``: nobody else can write, i.e. plant anything, in it)."""
    st = os.lstat(folder)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafeFolder(f"{folder} is not a plain directory (a symlink or a file)")
    if st.st_uid != os.getuid():
        raise UnsafeFolder(f"{folder} belongs to uid {st.st_uid}, not to this process (uid {os.getuid()})")
    if st.st_mode & closed:
        raise UnsafeFolder(f"{folder} is open to other users (mode {stat.S_IMODE(st.st_mode):o})")
    return folder


def private_dir(prefix: str, parent: Optional[Path] = None) -> Path:
    """A fresh directory of our own (``tempfile.mkdtemp``: a new random name, mode 0700), verified."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(folder, 0o700, follow_symlinks=False)
    return check_private(folder)


def ensure_private(folder: Path) -> Path:
    """``folder`` made (0700) if missing, else checked to be ours: a folder planted by someone else is refused."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    return check_private(folder)


@dataclass
class PruneReport:
    """What one ``prune`` did: names removed, names left alone (not ours), and the bytes that remain."""

    removed: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    kept_bytes: int = 0


@dataclass
class _Entry:
    name: str
    newest: float  # the newest mtime in the entry's tree: a folder still being written to counts as new
    size: int


def prune(folder: Path, *, max_age_s: float, max_bytes: int, keep: Collection[str] = (),
          now: Optional[float] = None) -> PruneReport:
    """Remove the entries of ``folder`` older than ``max_age_s``, then the oldest until the total is at most
    ``max_bytes``. Entries named in ``keep`` and entries owned by another uid are never removed."""
    report = PruneReport()
    try:
        check_private(Path(folder), closed=0o022)
        fd = os.open(folder, _DIR_FLAGS)
    except (OSError, UnsafeFolder) as e:
        log.warning("not pruning %s: %s", folder, e)
        return report
    try:
        entries = _survey(fd, report)
        cutoff = (time.time() if now is None else now) - max_age_s
        entries.sort(key=lambda entry: entry.newest)
        total = sum(e.size for e in entries)
        for e in entries:
            if e.name in keep or (e.newest >= cutoff and total <= max_bytes):
                continue
            if _remove(fd, e.name):
                report.removed.append(e.name)
                total -= e.size
        report.kept_bytes = total
    finally:
        os.close(fd)
    return report


def _survey(fd: int, report: PruneReport) -> list[_Entry]:
    uid, out = os.getuid(), []
    with os.scandir(fd) as it:
        for d in it:
            try:
                st = d.stat(follow_symlinks=False)
                if st.st_uid != uid:
                    log.warning("leaving %s alone: it belongs to uid %d", d.name, st.st_uid)
                    report.foreign.append(d.name)
                    continue
                size, newest = _measure(fd, d.name, st)
            except OSError:
                continue  # gone meanwhile
            out.append(_Entry(d.name, newest, size))
    return out


def _measure(parent_fd: int, name: str, st: os.stat_result) -> tuple[int, float]:
    """Bytes on disk and the newest mtime of one entry, without following any symlink."""
    size, newest = st.st_blocks * 512, st.st_mtime
    if not stat.S_ISDIR(st.st_mode):
        return size, newest
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    try:
        with os.scandir(fd) as it:
            for d in it:
                try:
                    s, n = _measure(fd, d.name, d.stat(follow_symlinks=False))
                except OSError:
                    continue
                size, newest = size + s, max(newest, n)
    finally:
        os.close(fd)
    return size, newest


def _remove(parent_fd: int, name: str) -> bool:
    """Remove ``name`` (a tree) under ``parent_fd``; a symlink met anywhere is unlinked, never followed."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        if st.st_uid != os.getuid():
            log.warning("leaving %s alone: it belongs to uid %d", name, st.st_uid)
            return False
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=parent_fd)
            return True
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            # swapped for a symlink or a file since the stat: remove that link itself
            os.unlink(name, dir_fd=parent_fd)
            return True
        try:
            if not os.path.samestat(st, os.fstat(fd)):
                return False  # replaced by another directory since the stat: leave it to the next prune
            with os.scandir(fd) as it:
                names = [d.name for d in it]
            for n in names:
                _remove(fd, n)
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=parent_fd)
        return True
    except FileNotFoundError:
        return True
    except OSError as e:
        log.warning("could not remove %s: %s", name, e)
        return False


def prune_dataset_runs(folder: Path, keep: Collection[str] = ()) -> PruneReport:
    """Bound the Dataset tab's run folders (``AppConfig.evaluation_dir``): runs unused for
    ``limits.DATASET_RUNS_MAX_AGE_S`` go, then the least recently used until the total is under
    ``limits.DATASET_RUNS_MAX_BYTES``. ``keep``: the run folder names in use now (never removed)."""
    folder = Path(folder)
    if not folder.exists():
        return PruneReport()
    return prune(folder, max_age_s=limits.DATASET_RUNS_MAX_AGE_S, max_bytes=limits.DATASET_RUNS_MAX_BYTES,
                 keep=keep)


def sweep_empty(folder: Path, max_age_s: float) -> int:
    """Remove the empty subfolders and empty files of ``folder`` untouched for ``max_age_s``; returns how many.

    Gradio's cache keeps one folder per cached file and its own sweep deletes only the files, and each upload
    leaves an empty temporary file behind: without this both pile up (inodes, and 4 KiB per folder). Only
    what holds nothing is removed: ``rmdir`` refuses a folder that is not empty, and links are never followed."""
    try:
        check_private(Path(folder), closed=0o022)
        fd = os.open(folder, _DIR_FLAGS)
    except (OSError, UnsafeFolder) as e:
        log.warning("not sweeping %s: %s", folder, e)
        return 0
    cutoff, uid, n = time.time() - max_age_s, os.getuid(), 0
    try:
        with os.scandir(fd) as it:
            names = [d.name for d in it]
        for name in names:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if st.st_uid != uid or st.st_mtime >= cutoff:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    os.rmdir(name, dir_fd=fd)
                    n += 1
                elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
                    os.unlink(name, dir_fd=fd)
                    n += 1
            except OSError:
                continue  # not empty, or gone meanwhile
    finally:
        os.close(fd)
    return n


def sweeping(folder: Path, every_s: float, max_age_s: float):
    """A FastAPI lifespan that runs ``sweep_empty(folder, max_age_s)`` every ``every_s`` seconds."""
    @contextlib.asynccontextmanager
    async def lifespan(app):
        async def loop():
            while True:
                await asyncio.sleep(every_s)
                await asyncio.to_thread(sweep_empty, folder, max_age_s)

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            task.cancel()

    return lifespan
