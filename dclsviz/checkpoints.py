"""Finding, fetching and safely reading checkpoint files, and mapping their keys onto timm models.

Resolution order for a zoo entry: an explicit path; ``DCLSVIZ_CHECKPOINT_DIR`` (or the CLI's
``--checkpoint-dir``) holding the published file name; our cache; torch.hub's cache, where the
paper's own code leaves the files; huggingface_hub's cache for hub-hosted weights; and only then a download
from the paper's URLs.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch
from torch import nn

from .download import DownloadError, Progress, cache_root, fetch, sha256_file
from .zoo import ASSETS, ModelEntry

# What the timm train.py containers pickle besides tensors. Nothing else is ever unpickled.
SAFE_GLOBALS = [argparse.Namespace, pathlib.PosixPath]
FETCH_TIMEOUT = (5.0, 60.0)


class CheckpointError(RuntimeError):
    """A checkpoint is unavailable or does not fit its model; the message says what to do."""


class CheckpointUnavailable(CheckpointError):
    """No copy of the checkpoint here, and it cannot be downloaded (offline, or downloads off)."""
    pass


class CheckpointMismatch(CheckpointError):
    """A file that is not the entry's checkpoint: wrong keys or shapes, or a sha256 other than the expected one."""
    pass


class CheckpointNotFinite(CheckpointError):
    """A weight or buffer of the checkpoint holds NaN or infinity: every output of the model would be undefined."""


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A checkpoint file found for an entry: where, how it was found (``origin``) and its sha256."""
    path: Path
    origin: str  # "explicit", "bundled", "checkpoint-dir", "cache", "torch-hub", "huggingface-cache", "downloaded"
    sha256: str


def checkpoint_dir_from_env() -> Optional[Path]:
    """The folder of user-supplied checkpoint files, $DCLSVIZ_CHECKPOINT_DIR, if set."""
    value = os.environ.get("DCLSVIZ_CHECKPOINT_DIR")
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """Where downloaded checkpoints are kept (under the dclsviz cache root)."""
    return cache_root() / "checkpoints"


def _torch_hub_path(entry: ModelEntry) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / entry.checkpoint.file_name


HF_PREFIX = "hf-hub:"
HF_FILE = "model.safetensors"


def _hf_repos(entry: ModelEntry) -> list[str]:
    return [u[len(HF_PREFIX):] for u in entry.checkpoint.urls if u.startswith(HF_PREFIX)]


def _hf_cache_path(repo: str) -> Path:
    # beside our other checkpoints, under the repo's name: the hub file is not the published file_name
    return cache_dir() / "hf" / repo.replace("/", "--") / HF_FILE


def _hf_hub_cached(repo: str) -> Optional[Path]:
    """The file in huggingface_hub's own cache, where timm leaves it, without any network access."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    hit = try_to_load_from_cache(repo, HF_FILE)
    return Path(hit) if isinstance(hit, str) else None


def hf_resolve_url(repo: str) -> str:
    """The download URL of a Hugging Face repository's weights file (honours $HF_ENDPOINT)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    return f"{endpoint}/{repo}/resolve/main/{HF_FILE}"


def local_candidates(entry: ModelEntry, checkpoint_dir: Optional[Path] = None) -> list[tuple[str, Path]]:
    """Every ``(origin, path)`` where a local copy of ``entry``'s checkpoint may lie, in the order searched."""
    name = entry.checkpoint.file_name
    found = []
    for origin, folder in (("checkpoint-dir", checkpoint_dir or checkpoint_dir_from_env()),
                           ("cache", cache_dir())):
        if folder is not None:
            found.append((origin, Path(folder) / name))
    found.append(("torch-hub", _torch_hub_path(entry)))
    for repo in _hf_repos(entry):
        found.append(("cache", _hf_cache_path(repo)))
        hub = _hf_hub_cached(repo)
        if hub is not None:
            found.append(("huggingface-cache", hub))
    return found


def find_local(entry: ModelEntry, checkpoint_dir: Optional[Path] = None) -> Optional[tuple[str, Path]]:
    """The first local copy of ``entry``'s checkpoint that exists, as ``(origin, path)``, else None."""
    for origin, path in local_candidates(entry, checkpoint_dir):
        if path.is_file():
            return origin, path
    return None


def how_to_get(entry: ModelEntry) -> str:
    """A sentence telling a user where to download ``entry``'s checkpoint and where to put it."""
    urls = ", ".join(u for u in entry.checkpoint.urls if not u.startswith(HF_PREFIX))
    hub = "".join(f" (the same weights as safetensors: {hf_resolve_url(r)}, use it with --checkpoint PATH)"
                  for r in _hf_repos(entry))
    # names the cache by its setting, not its path: this text is also shown to the app's clients
    return (f"{entry.id} needs {entry.checkpoint.file_name}: download it from {urls}{hub} and put it in "
            f"$DCLSVIZ_CACHE/checkpoints (default ~/.cache/dclsviz/checkpoints) or in a folder named by "
            f"--checkpoint-dir / DCLSVIZ_CHECKPOINT_DIR, or pass --checkpoint PATH.")


def _fetch_from(url: str, dest: Path, progress: Optional[Progress], timeout) -> Path:
    if url.startswith(HF_PREFIX):
        # Our own fetch rather than hf_hub_download: the same timeouts, resume and progress as every other
        # file, and no retry loop that keeps an offline user waiting for half a minute.
        repo = url[len(HF_PREFIX):]
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            raise DownloadError(f"{url}: HF_HUB_OFFLINE is set")
        url, dest = hf_resolve_url(repo), _hf_cache_path(repo)
    return fetch(url, dest, progress=progress, timeout=timeout)


HASHES_NAME = "sha256.json"
_HASHES_KEPT = 256


def _file_key(path: Path) -> str:
    st = path.stat()
    # ctime changes with every write and cannot be set back, so a file rewritten in place gets a new key
    return f"{path.resolve()}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"


def checkpoint_sha256(path: Path) -> str:
    """The file's sha256, hashed once and remembered by its identity (path, inode, size, mtime, ctime).

    A study checkpoint is 100-350 MB: hashing it at every load cost more than building and freezing the model.
    The record is a cache (``$DCLSVIZ_CACHE/sha256.json``): lost or unreadable, the file is hashed again."""
    import json

    from .files import write_json

    record = cache_root() / HASHES_NAME
    key = _file_key(path)
    try:
        known = json.loads(record.read_text())
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), str):
        return known[key]
    digest = sha256_file(path)
    known[key] = digest
    try:
        write_json(record, dict(list(known.items())[-_HASHES_KEPT:]), indent=None)
    except OSError:  # a read-only cache only costs the hashing next time
        pass
    return digest


def resolve(entry: ModelEntry, path: Optional[Path] = None, *, checkpoint_dir: Optional[Path] = None,
            download: bool = True, progress: Optional[Progress] = None,
            timeout=FETCH_TIMEOUT) -> ResolvedCheckpoint:
    """Find (or fetch) the checkpoint file for ``entry``."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise CheckpointUnavailable(f"checkpoint file not found: {path}")
        return ResolvedCheckpoint(path, "explicit", checkpoint_sha256(path))
    if entry.checkpoint.bundled:
        p = ASSETS / entry.checkpoint.bundled
        if not p.is_file():
            raise CheckpointUnavailable(f"{entry.id}: the bundled file assets/{entry.checkpoint.bundled} is missing; "
                                        f"`python -m dclsviz demo train` recreates it")
        return ResolvedCheckpoint(p, "bundled", checkpoint_sha256(p))
    local = find_local(entry, checkpoint_dir)
    if local is not None:
        origin, p = local
        return ResolvedCheckpoint(p, origin, checkpoint_sha256(p))
    if not download:
        raise CheckpointUnavailable(f"not cached. {how_to_get(entry)}")
    errors = []
    for url in entry.checkpoint.urls:
        try:
            p = _fetch_from(url, cache_dir() / entry.checkpoint.file_name, progress, timeout)
            return ResolvedCheckpoint(p, "downloaded", sha256_file(p))
        except DownloadError as e:
            errors.append(str(e))
    raise CheckpointUnavailable(f"download failed ({'; '.join(errors)}). {how_to_get(entry)}")


def read_file(path: Path) -> object:
    """Read a checkpoint without executing pickled code: safetensors, or torch's weights_only loader."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte header length, then the JSON header
    if path.suffix == ".safetensors" or head[8:9] == b"{":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:
            if path.suffix == ".safetensors":
                raise CheckpointMismatch(f"{path.name}: not a readable safetensors file ({e})") from e
    # zip-format files are memory-mapped: tensors are paged in as they are copied into the model
    # instead of read whole first; the legacy format cannot be mapped
    mmap = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        raise CheckpointMismatch(
            f"{path.name}: cannot be read as a checkpoint without running pickled code "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


def unwrap(obj: object, entry: ModelEntry) -> Mapping[str, torch.Tensor]:
    """Pick the state dict out of the file's container (e.g. ``state_dict_ema``, never its decoy)."""
    key = entry.checkpoint.container_key
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            have = ", ".join(map(str, obj.keys())) if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointMismatch(f"{entry.id}: the file has no {key!r} entry (it holds: {have[:300]}); "
                                     f"is it the right checkpoint?")
        obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatch(f"{entry.id}: the file does not hold a state dict where expected")
    return obj


def _timm_filter(module_name: str) -> Callable:
    def apply(sd, model):
        import importlib

        return importlib.import_module(f"timm.models.{module_name}").checkpoint_filter_fn(dict(sd), model)

    return apply


# family -> original key names to timm's (timm's own filters; the DCLS keys follow their layer's rename)
KEY_FILTERS: dict[str, Callable[[Mapping[str, torch.Tensor], nn.Module], Mapping[str, torch.Tensor]]] = {
    "convnext": _timm_filter("convnext"),
    "metaformer": _timm_filter("metaformer"),
    "fastvit": _timm_filter("fastvit"),
    "resnet": lambda sd, model: sd,
    "demo": lambda sd, model: sd,
}


def map_keys(sd: Mapping[str, torch.Tensor], entry: ModelEntry, model: nn.Module) -> Mapping[str, torch.Tensor]:
    """``sd`` renamed into timm's key names by the family's filter function (timm's ``checkpoint_filter_fn`` habit)."""
    try:
        return KEY_FILTERS[entry.family](sd, model)
    except KeyError as e:
        raise CheckpointMismatch(f"{entry.id}: unexpected key {e} in the checkpoint; is it the right file?") from e


def load_into(model: nn.Module, sd: Mapping[str, torch.Tensor], entry: ModelEntry) -> None:
    """Strict load, with an error that names what is missing, unexpected or misshapen."""
    mapped = map_keys(sd, entry, model)
    own = model.state_dict()
    missing = [k for k in own if k not in mapped]
    unexpected = [k for k in mapped if k not in own]
    misshapen = [f"{k} {tuple(mapped[k].shape)} vs {tuple(own[k].shape)}" for k in own
                 if k in mapped and tuple(mapped[k].shape) != tuple(own[k].shape)]
    # torch fills num_batches_tracked itself for files saved without _metadata
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected or misshapen:
        def show(xs):
            return f"{len(xs)} ({', '.join(xs[:5])}{', ...' if len(xs) > 5 else ''})"
        raise CheckpointMismatch(
            f"the checkpoint does not fit {entry.id}: missing {show(missing)}, unexpected {show(unexpected)}, "
            f"wrong shape {show(misshapen)}. Is it the {entry.variant} checkpoint of {entry.arch}?")
    model.load_state_dict(mapped, strict=True)
