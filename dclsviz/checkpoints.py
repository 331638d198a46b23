"""Finding, fetching and safely reading checkpoint files, and mapping their keys onto timm models.

Resolution order for a zoo entry: an explicit path; a pair file's own ``path`` (then nothing else);
``DCLSVIZ_CHECKPOINT_DIR`` (or the CLI's
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
    # "explicit", "bundled", "pair-file", "checkpoint-dir", "cache", "torch-hub", "huggingface-cache", "downloaded"
    origin: str
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


def hf_spec(url: str) -> tuple[str, str]:
    """``(repo, file)`` of an ``hf-hub:`` source: ``hf-hub:org/name`` is its ``model.safetensors``,
    ``hf-hub:org/name/sub/file.pth`` that file of the repository."""
    parts = url[len(HF_PREFIX):].split("/", 2)
    return "/".join(parts[:2]), (parts[2] if len(parts) > 2 else HF_FILE)


def _hf_files(entry: ModelEntry) -> list[tuple[str, str]]:
    return [hf_spec(u) for u in entry.checkpoint.urls if u.startswith(HF_PREFIX)]


def _hf_cache_path(repo: str, file: str = HF_FILE) -> Path:
    # beside our other checkpoints, under the repo's name: the hub file is not the published file_name
    return cache_dir() / "hf" / repo.replace("/", "--") / file


def _hf_hub_cached(repo: str, file: str = HF_FILE) -> Optional[Path]:
    """The file in huggingface_hub's own cache, where timm leaves it, without any network access."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    hit = try_to_load_from_cache(repo, file)
    return Path(hit) if isinstance(hit, str) else None


def hf_resolve_url(repo: str, file: str = HF_FILE) -> str:
    """The download URL of a file of a Hugging Face repository, its weights by default (honours $HF_ENDPOINT)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    return f"{endpoint}/{repo}/resolve/main/{file}"


def pair_field(entry: ModelEntry, name: str) -> str:
    """`` (field F in FILE)`` for an entry read from a pair file, naming what to fix there; else empty."""
    if not entry.pair_file:
        return ""
    return f" (check {name} in {Path(entry.pair_file).name})"


def local_candidates(entry: ModelEntry, checkpoint_dir: Optional[Path] = None) -> list[tuple[str, Path]]:
    """Every ``(origin, path)`` where a local copy of ``entry``'s checkpoint may lie, in the order searched.

    A pair file that names its checkpoint's ``path`` has that one place only.
    """
    if entry.checkpoint.path:
        return [("pair-file", Path(entry.checkpoint.path))]
    name = entry.checkpoint.file_name
    found = []
    for origin, folder in (("checkpoint-dir", checkpoint_dir or checkpoint_dir_from_env()),
                           ("cache", cache_dir())):
        if folder is not None:
            found.append((origin, Path(folder) / name))
    found.append(("torch-hub", _torch_hub_path(entry)))
    for repo, file in _hf_files(entry):
        found.append(("cache", _hf_cache_path(repo, file)))
        hub = _hf_hub_cached(repo, file)
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
    if entry.checkpoint.path:
        return (f"{entry.id} reads its checkpoint from {entry.checkpoint.path}"
                f"{pair_field(entry, f'{entry.variant}.checkpoint.path')}.")
    urls = ", ".join(u for u in entry.checkpoint.urls if not u.startswith(HF_PREFIX))
    hub = "".join(f" (the same weights: {hf_resolve_url(r, f)}, use it with --checkpoint PATH)"
                  for r, f in _hf_files(entry))
    if not urls:
        urls, hub = ", ".join(hf_resolve_url(r, f) for r, f in _hf_files(entry)), ""
    # names the cache by its setting, not its path: this text is also shown to the app's clients
    return (f"{entry.id} needs {entry.checkpoint.file_name}: download it from {urls}{hub} and put it in "
            f"$DCLSVIZ_CACHE/checkpoints (default ~/.cache/dclsviz/checkpoints) or in a folder named by "
            f"--checkpoint-dir / DCLSVIZ_CHECKPOINT_DIR, or pass --checkpoint PATH.")


def _fetch_from(url: str, dest: Path, progress: Optional[Progress], timeout, expected_sha256=None) -> Path:
    if url.startswith(HF_PREFIX):
        # Our own fetch rather than hf_hub_download: the same timeouts, resume and progress as every other
        # file, and no retry loop that keeps an offline user waiting for half a minute.
        repo, file = hf_spec(url)
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            raise DownloadError(f"{url}: HF_HUB_OFFLINE is set")
        url, dest = hf_resolve_url(repo, file), _hf_cache_path(repo, file)
    return fetch(url, dest, progress=progress, timeout=timeout, expected_sha256=expected_sha256)


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
    """Find (or fetch) the checkpoint file for ``entry``.

    Raises:
        CheckpointUnavailable: no copy here and none can be downloaded.
        CheckpointMismatch: the entry gives a sha256 and the file found has another.
    """
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
        return _verified(entry, ResolvedCheckpoint(p, origin, checkpoint_sha256(p)))
    if entry.checkpoint.path:
        raise CheckpointUnavailable(f"checkpoint file not found: {entry.checkpoint.path}"
                                    f"{pair_field(entry, f'{entry.variant}.checkpoint.path')}")
    if not download:
        raise CheckpointUnavailable(f"not cached. {how_to_get(entry)}")
    errors = []
    for url in entry.checkpoint.urls:
        try:
            p = _fetch_from(url, cache_dir() / entry.checkpoint.file_name, progress, timeout,
                            entry.checkpoint.sha256)
            return _verified(entry, ResolvedCheckpoint(p, "downloaded", sha256_file(p)))
        except DownloadError as e:
            errors.append(str(e))
    raise CheckpointUnavailable(f"download failed ({'; '.join(errors)}). {how_to_get(entry)}")


def _verified(entry: ModelEntry, found: ResolvedCheckpoint) -> ResolvedCheckpoint:
    """``found``, when its sha256 is the one the entry expects (or the entry expects none)."""
    want = entry.checkpoint.sha256
    if want and found.sha256 != want.lower():
        raise CheckpointMismatch(
            f"{entry.id}: {found.path.name} ({found.origin}) has sha256 {found.sha256}, not the expected {want}"
            f"{pair_field(entry, f'{entry.variant}.checkpoint.sha256')}; is it the right file?")
    return found


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
                                     f"is it the right checkpoint?"
                                     f"{pair_field(entry, f'{entry.variant}.checkpoint.container_key')}")
        obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointMismatch(f"{entry.id}: the file does not hold a state dict where expected"
                                 f"{pair_field(entry, f'{entry.variant}.checkpoint.container_key')}")
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
    "timm": lambda sd, model: sd,  # a pair file's checkpoint already in timm's names
}
TIMM_FILTER_PREFIX = "timm:"  # a family "timm:MODULE" is timm.models.MODULE's checkpoint_filter_fn


def key_filter(family: str) -> Callable[[Mapping[str, torch.Tensor], nn.Module], Mapping[str, torch.Tensor]]:
    """The key filter a family names: one of ``KEY_FILTERS``, or ``timm:MODULE`` for that timm module's own.

    Raises:
        ValueError: neither, or a timm module without a ``checkpoint_filter_fn``.
    """
    if family in KEY_FILTERS:
        return KEY_FILTERS[family]
    if family.startswith(TIMM_FILTER_PREFIX):
        import importlib

        module = family[len(TIMM_FILTER_PREFIX):]
        try:
            found = callable(getattr(importlib.import_module(f"timm.models.{module}"), "checkpoint_filter_fn", None))
        except ImportError:
            found = False
        if found:
            return _timm_filter(module)
        raise ValueError(f"timm has no module timm.models.{module} with a checkpoint_filter_fn")
    raise ValueError(f"unknown key filter {family!r}; choose one of {', '.join(KEY_FILTERS)} or "
                     f"{TIMM_FILTER_PREFIX}MODULE (a timm.models module's checkpoint_filter_fn)")


def _renamed(sd: Mapping[str, torch.Tensor], entry: ModelEntry) -> Mapping[str, torch.Tensor]:
    """``sd`` without the checkpoint's ``drop`` prefixes, its ``renames`` applied (the first fitting one)."""
    c = entry.checkpoint
    if not c.drop and not c.renames:
        return sd
    out = {}
    for k, v in sd.items():
        if any(k.startswith(d) for d in c.drop):
            continue
        old, new = next(((o, n) for o, n in c.renames if k.startswith(o)), ("", ""))
        out[new + k[len(old):]] = v
    return out


def map_keys(sd: Mapping[str, torch.Tensor], entry: ModelEntry, model: nn.Module) -> Mapping[str, torch.Tensor]:
    """``sd`` renamed into timm's key names: the entry's own drop and renames, then the family's filter function
    (timm's ``checkpoint_filter_fn`` habit)."""
    try:
        return key_filter(entry.family)(_renamed(sd, entry), model)
    except KeyError as e:
        raise CheckpointMismatch(f"{entry.id}: unexpected key {e} in the checkpoint; is it the right file?"
                                 f"{pair_field(entry, 'family and ' + entry.variant + '.checkpoint.rename')}") from e


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
            f"wrong shape {show(misshapen)}. Is it the {entry.variant} checkpoint of {entry.arch}?"
            f"{_fit_hint(entry)}")
    model.load_state_dict(mapped, strict=True)


def _fit_hint(entry: ModelEntry) -> str:
    """What in a pair file decides which keys and shapes the model expects."""
    recipe = f", {entry.variant}.recipe" if entry.dcls is not None else ""
    return pair_field(entry, f"timm_name, timm_kwargs, num_classes{recipe}, family and "
                             f"{entry.variant}.checkpoint (container_key, rename, drop)")
