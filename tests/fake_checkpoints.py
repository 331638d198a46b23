"""Deterministic stand-ins for the 16 published checkpoints of the study, built from tests/data/manifests.

A stand-in holds the published file's exact key list (names, shapes, dtypes, order), in the published container
(`{'model': sd}` for FB ConvNeXt, timm's training-checkpoint dict, or the bare state dict), with the same pickled
types (argparse.Namespace with pathlib.PosixPath values) and storage location tags (`cuda:0` for files saved
from GPU training). The values are made up but fixed, so the goldens in tests/data/golden hold for them.

The values follow the conformance kit's published rules ("fake-ckpt-v1"), so that a state dict made here is
bit-equal to the kit's own stand-in (test_fake_checkpoints.py checks this when the kit is at hand):

* every key (or shared DCLS position group) draws from its own CPU torch.Generator, seeded with the first 8
  bytes (little-endian, top bit cleared) of sha256("fake-ckpt-v1|<seed>|<key>");
* only integer draws are used, turned into float64 exactly: a float32 normal sampler has vector and scalar CPU
  paths that disagree in the last bits, integers do not;
* U(lo, hi) = ((r + 0.5) * 2**-52) * (hi - lo) + lo with r uniform below 2**52;
* N(mean, std) ~ Irwin-Hall(4): four 15-bit fields of an integer below 2**60, summed and standardised;
* the rule is chosen by the key's last component (see `value_rule`); an unknown key raises.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import pathlib
import threading
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

import numpy as np
import torch

RULES = "fake-ckpt-v1"
DECOY_SEED_OFFSET = 7919  # timm-train files get non-EMA weights from seed + this, so a loader reading them fails
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
                 "float64": torch.float64, "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}
_FLOATS = ("float32", "float16", "bfloat16", "float64")
_FIELD = 0x7FFF
_IRWIN_HALL_MEAN = 4 * _FIELD / 2
_IRWIN_HALL_STD = math.sqrt(4.0 * ((_FIELD + 1) ** 2 - 1) / 12.0)
_NOT_PARAMETERS = ("running_mean", "running_var", "num_batches_tracked")


def load_manifest(path: Union[str, Path]) -> dict:
    """The manifest JSON of one published checkpoint (tests/data/manifests/<id>.json)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _rng(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{RULES}|{int(seed)}|{name}".encode()).digest()
    g = torch.Generator(device="cpu")
    g.manual_seed(int.from_bytes(digest[:8], "little") & (2 ** 63 - 1))
    return g


def _count(shape: tuple) -> int:
    return int(np.prod(shape)) if shape else 1


def _uniform(g: torch.Generator, shape: tuple, lo: float, hi: float) -> torch.Tensor:
    r = torch.randint(0, 2 ** 52, (_count(shape),), generator=g, dtype=torch.int64)
    unit = (r.to(torch.float64) + 0.5) * (2.0 ** -52)
    return (unit * (hi - lo) + lo).reshape(shape)


def _normal(g: torch.Generator, shape: tuple, mean: float, std: float) -> torch.Tensor:
    r = torch.randint(0, 2 ** 60, (_count(shape),), generator=g, dtype=torch.int64)
    total = sum((r >> shift) & _FIELD for shift in (0, 15, 30, 45))
    z = (total.to(torch.float64) - _IRWIN_HALL_MEAN) / _IRWIN_HALL_STD
    return (z * std + mean).reshape(shape)


def value_rule(name: str, shape: tuple, dtype: str, shared_positions: dict) -> tuple:
    """How the value of one key is drawn: ('zeros',), ('positions',), ('uniform', lo, hi) or ('normal', mean, std).

    Raises KeyError for a key no rule covers, so that a new manifest never gets values nobody planned.
    """
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return ("zeros",)
    if dtype not in _FLOATS:
        raise KeyError(f"no value rule for the {dtype} key {name!r}")
    if name in shared_positions:
        return ("positions",)
    by_leaf = {"running_var": ("uniform", 0.5, 1.5), "running_mean": ("normal", 0.0, 0.1),
               "bias": ("normal", 0.0, 0.02), "gamma": ("normal", 0.1, 0.005)}
    if leaf in by_leaf:
        return by_leaf[leaf]
    if leaf.startswith("layer_scale"):
        # residual-branch scales near 0.1: near 1 the BatchNorm-based FastViT blocks blow the logits up
        return ("normal", 0.1, 0.005)
    if "scale" in leaf:
        return ("normal", 1.0, 0.05)
    if leaf == "weight":
        if len(shape) == 1:
            return ("normal", 1.0, 0.05)
        return ("normal", 0.0, 1.0 / math.sqrt(_count(shape[1:])))
    raise KeyError(f"no value rule for key {name!r} of shape {shape}")


def _shared_positions(manifest: dict) -> dict:
    """DCLS position key -> the first key of its sharing group (one Parameter saved under every name)."""
    groups = (manifest.get("dcls") or {}).get("shared_P_groups") or []
    return {key: group[0] for group in groups for key in group}


def _positions(manifest: dict, seed: int, first_key: str, shape: tuple) -> torch.Tensor:
    dks = (manifest.get("dcls") or {}).get("dilated_kernel_size")
    if dks is None or shape[0] != 2:
        raise KeyError(f"DCLS position key {first_key!r} has the shape {shape}")
    g = _rng(seed, first_key)
    limits = [int(d) // 2 for d in (dks if isinstance(dks, (list, tuple)) else (dks, dks))]
    return torch.stack([_uniform(g, shape[1:], -lim, lim) for lim in limits], 0)


def make_state_dict(manifest: dict, seed: int = 0, with_metadata=None) -> "OrderedDict[str, torch.Tensor]":
    """The stand-in state dict: every key of manifest["keys"] in its order, shape and dtype.

    Args:
        manifest: a loaded manifest.
        seed: 0 for the values the goldens were computed with.
        with_metadata: attach `_metadata` (module versions, as `Module.state_dict()` does); None follows
            manifest["container"]["state_dict_metadata"].
    """
    shared = _shared_positions(manifest)
    position_tensors: dict = {}
    sd: OrderedDict = OrderedDict()
    for name, shape, dtype in manifest["keys"]:
        shape = tuple(int(s) for s in shape)
        rule = value_rule(name, shape, dtype, shared)
        kind = rule[0]
        if kind == "zeros":
            sd[name] = torch.zeros(shape, dtype=_TORCH_DTYPES[dtype])
            continue
        if kind == "positions":
            first = shared[name]
            if first not in position_tensors:
                position_tensors[first] = _positions(manifest, seed, first, shape).to(_TORCH_DTYPES[dtype])
            # the same tensor object under every name of the group: torch.save then stores one storage
            sd[name] = position_tensors[first]
            if tuple(sd[name].shape) != shape:
                raise KeyError(f"the DCLS position group of {name!r} mixes shapes")
            continue
        draw = _uniform if kind == "uniform" else _normal
        sd[name] = draw(_rng(seed, name), shape, rule[1], rule[2]).to(_TORCH_DTYPES[dtype])
    if with_metadata is None:
        with_metadata = bool(manifest["container"].get("state_dict_metadata", False))
    if with_metadata:
        sd._metadata = _module_versions(manifest)
    return sd


def _module_versions(manifest: dict) -> OrderedDict:
    # Module.state_dict() records every module prefix; BatchNorm is at version 2, every other module at 1.
    norms = {name.rsplit(".", 1)[0] for name, _, _ in manifest["keys"] if name.endswith(".running_var")}
    versions: OrderedDict = OrderedDict([("", {"version": 1})])
    for name, _, _ in manifest["keys"]:
        parts = name.split(".")[:-1]
        for depth in range(1, len(parts) + 1):
            module = ".".join(parts[:depth])
            versions.setdefault(module, {"version": 2 if module in norms else 1})
    return versions


def state_dict_sha256(sd) -> str:
    """Fingerprint over (name, dtype, shape, raw bytes) in key order, as the kit's index lists them."""
    h = hashlib.sha256()
    for name, value in sd.items():
        t = value.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _training_args(manifest: dict, seed: int) -> argparse.Namespace:
    c = manifest["container"]
    fields = dict(c.get("args_fields") or {})
    fields.setdefault("model", c.get("arch_name", manifest["arch"]))
    fields["seed"] = int(seed)
    args = argparse.Namespace(**fields)
    # The study's submitit launcher stored Path objects in args; they pickle as pathlib.PosixPath.
    try:
        job = pathlib.PosixPath("/checkpoint/fake/%j")
    except NotImplementedError:  # Windows cannot make a PosixPath
        job = "/checkpoint/fake/%j"
    args.job_dir = job
    args.output_dir = job
    return args


def _timm_train(manifest: dict, sd: OrderedDict, seed: int, decoy: bool) -> dict:
    # the entry order of timm's CheckpointSaver; the optimizer state is reduced to an empty stub
    c = manifest["container"]
    n_params = sum(1 for name, _, _ in manifest["keys"] if not name.endswith(_NOT_PARAMETERS))
    return {
        "epoch": int(c.get("epoch", 299)),
        "arch": c.get("arch_name", manifest["arch"]),
        "state_dict": make_state_dict(manifest, seed + DECOY_SEED_OFFSET) if decoy else copy.copy(sd),
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.0, "weight_decay": 0.05, "params": list(range(n_params))}]},
        "version": 2,
        "args": _training_args(manifest, seed),
        "amp_scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                       "_growth_tracker": 0},
        c["key"]: sd,
        "metric": 0.0,
    }


def build_container(manifest: dict, seed: int = 0, decoy: bool = True):
    """The object the published file holds, before torch.save.

    Args:
        decoy: in timm training checkpoints, fill the non-EMA `state_dict` with other values (seed + 7919),
            so that a loader taking the wrong entry fails the goldens.
    """
    c = manifest["container"]
    sd = make_state_dict(manifest, seed)
    if c["layout"] == "bare":
        return dict(sd) if c.get("state_dict_type") == "dict" else sd
    if c["layout"] == "fb-convnext":
        return {c["key"]: sd}
    if c["layout"] == "timm-train":
        return _timm_train(manifest, sd, seed, decoy)
    raise ValueError(f"unknown container layout {c['layout']!r}")


_tagging = threading.local()
_tagger_registered = threading.Lock()
_TAG_PRIORITY = 2  # before torch's own cpu tagger (10); not 1, so another tagger at 1 cannot collide in the sort


def _location_tagger(storage):
    return getattr(_tagging, "location", None)


def _no_deserializer(storage, location):
    return None


@contextmanager
def _storages_tagged(location: str) -> Iterator[None]:
    # torch.save asks its registered taggers where each storage lives; answering "cuda:0" here writes a file
    # that, like one saved during GPU training, needs map_location to load on a CPU-only machine.
    with _tagger_registered:
        if not getattr(_location_tagger, "registered", False):
            torch.serialization.register_package(_TAG_PRIORITY, _location_tagger, _no_deserializer)
            _location_tagger.registered = True
    _tagging.location = location
    try:
        yield
    finally:
        _tagging.location = None


def write_checkpoint(manifest: dict, path: Union[str, Path], seed: int = 0, decoy: bool = True,
                     storage_location=None, fmt: str = "torch") -> str:
    """Write the stand-in of the published file to `path`; returns the fingerprint of its state dict.

    Args:
        storage_location: "cpu" or "cuda:0"; None follows manifest["container"]["storage_location"].
        fmt: "torch" (a torch.save zip file, as published) or "safetensors" (bare layouts only: the HF copy of
            the resnet50 baseline is safetensors).
    """
    c = manifest["container"]
    obj = build_container(manifest, seed, decoy)
    sd = obj[c["key"]] if c.get("key") else obj
    if fmt == "safetensors":
        if c["layout"] != "bare":
            raise ValueError("safetensors stand-ins exist for bare state dicts only")
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
        return state_dict_sha256(sd)
    if fmt != "torch":
        raise ValueError(f"unknown format {fmt!r}")
    location = storage_location or c.get("storage_location", "cpu")
    if location == "cpu":
        torch.save(obj, str(path))
    elif location == "cuda:0":
        with _storages_tagged(location):
            torch.save(obj, str(path))
    else:
        raise ValueError(f"storage_location must be 'cpu' or 'cuda:0', got {location!r}")
    return state_dict_sha256(sd)
