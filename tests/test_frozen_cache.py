"""The frozen-kernel cache: a later load maps the kernels a first one froze, bit for bit, and nothing else.

Real loads of the demo pair's DCLS checkpoint (its kernels are below the size the cache starts at, so the
tests lower ``MIN_BYTES``), real files in an isolated cache folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dclsviz import frozen_cache, models, zoo

ENTRY = zoo.get("demo", "dcls")


@pytest.fixture
def small(cache, monkeypatch):
    monkeypatch.setattr(frozen_cache, "MIN_BYTES", 0)
    monkeypatch.delenv(frozen_cache.ENV, raising=False)
    return cache


def _load(checkpoint: Path = None) -> models.LoadedModel:
    loaded = models.load(ENTRY, checkpoint, device="cpu")
    frozen_cache.wait()
    return loaded


def _files() -> list[Path]:
    return sorted(frozen_cache.folder().glob("*.safetensors"))


def _mapped(path: Path) -> bool:
    return str(path.resolve()) in Path("/proc/self/maps").read_text()


def _same(a: models.LoadedModel, b: models.LoadedModel) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and sa[k].stride() == sb[k].stride() and torch.equal(sa[k], sb[k]), k
    x = torch.randn(2, 3, ENTRY.input_size, ENTRY.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(a.model(x), b.model(x))


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see memory maps")
def test_a_second_load_maps_the_kernels_the_first_froze(small):
    first = _load()
    [path] = _files()
    assert not _mapped(path)  # the first load froze its own kernels
    second = _load()
    assert _mapped(path) and _files() == [path]
    _same(first, second)


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_a_damaged_cache_file_is_rebuilt(small, damage):
    first = _load()
    [path] = _files()
    data = bytearray(path.read_bytes())
    if damage == "flip":  # a kernel byte: the header still parses, the checksum does not match
        data[-5] ^= 0x40
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = bytearray(b"not safetensors" * 10)
    path.write_bytes(bytes(data))
    second = _load()
    _same(first, second)
    assert path.read_bytes() != bytes(data)  # rewritten whole
    third = _load()
    _same(first, third)


def test_another_checkpoint_does_not_hit(small, tmp_path):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(zoo.ASSETS / ENTRY.checkpoint.bundled))
    name = next(k for k in sd if k.endswith("conv2.weight"))
    sd[name] = sd[name] * 2
    other = tmp_path / "other.safetensors"
    save_file(sd, str(other))
    a = _load()
    b = _load(other)
    assert len(_files()) == 2
    assert not torch.equal(a.model.state_dict()[name], b.model.state_dict()[name])


def test_the_environment_turns_it_off(small, monkeypatch):
    monkeypatch.setenv(frozen_cache.ENV, "0")
    _load()
    assert not _files()
    monkeypatch.setenv(frozen_cache.ENV, "1")
    _load()
    assert len(_files()) == 1


def test_the_folder_stays_under_its_cap(small, monkeypatch, tmp_path):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(zoo.ASSETS / ENTRY.checkpoint.bundled))
    paths = []
    for i in range(3):
        sd = {k: v + (i if v.is_floating_point() else 0) for k, v in sd.items()}
        paths.append(tmp_path / f"c{i}.safetensors")
        save_file(sd, str(paths[-1]))
    _load(paths[0])
    size = _files()[0].stat().st_size
    monkeypatch.setattr(frozen_cache, "MAX_BYTES", 2 * size)
    _load(paths[1])
    _load(paths[2])
    assert len(_files()) == 2
