"""The 16 study checkpoints, proven offline with the conformance kit.

Each test writes the kit's deterministic stand-in in the published container (timm-train dicts
with a decoy ``state_dict``, cuda:0 storages, pickled argparse/pathlib objects...), puts it where
our resolver finds published files, loads it through the real loading path and compares logits
and both CAMs with the goldens the paper's own code produced, within the kit's tolerances.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dclsviz import checkpoints, models, zoo
from dclsviz.cam import CamEngine
from conftest import TEST_DEVICE
import kit_data
from kit_data import kit_input

IDS = [e.id for e in zoo.entries() if e.arch != "demo"]


def _assert_maps(got, gold, what):
    scale = float(np.abs(gold).max())
    assert got.shape == gold.shape, what
    assert np.abs(got - gold).max() <= 1e-4 * scale, f"{what}: {np.abs(got - gold).max()} vs scale {scale}"


def _assert_threshold(got, gold, what):
    assert got.shape == gold.shape, what
    assert np.abs(got - gold).max() <= 1e-4, f"{what}: {np.abs(got - gold).max()}"


def _nchw(a: np.ndarray, layout: str) -> np.ndarray:
    return a.transpose(2, 0, 1) if layout == "NHWC" else a


def test_zoo_matches_the_manifests(kit):
    """URLs, file names, containers, transforms, CAM layers and DCLS numbers equal the published facts."""
    for id_ in IDS:
        man = json.loads((kit / "manifests" / f"{id_}.json").read_text())
        e = zoo.get(man["arch"], man["variant"])
        assert list(e.checkpoint.urls) == man["source_urls"], id_
        assert e.checkpoint.file_name == man["file_name"], id_
        assert e.checkpoint.container_key == man["container"]["key"], id_
        assert e.checkpoint.naming == man["naming_scheme"], id_
        t = man["eval_transform"]
        assert (e.transform.resize, e.transform.crop, e.transform.interpolation) == \
               (t["resize"], t["crop"], t["interpolation"]), id_
        assert list(e.transform.mean) == t["mean"] and list(e.transform.std) == t["std"], id_
        if man["dcls"] is None:
            assert e.dcls is None
        else:
            d = man["dcls"]
            assert (e.dcls.dilated_kernel_size, e.dcls.kernel_count, e.dcls.version) == \
                   (d["dilated_kernel_size"], d["kernel_count"], d["version"]), id_


@pytest.mark.parametrize("id_", IDS)
def test_checkpoint_loads_and_matches_goldens(id_, kit, fake, cache):
    man = fake.load_manifest(str(kit / "manifests" / f"{id_}.json"))
    entry = zoo.get(man["arch"], man["variant"])
    # where a user's earlier download (or the paper's torch.hub cache) leaves the published file
    target = checkpoints.cache_dir() / man["file_name"]
    target.parent.mkdir(parents=True)
    fake.write_checkpoint(man, str(target), seed=0)

    # strict, through the project's key mapping, and with the values the stand-in holds
    raw = checkpoints.unwrap(checkpoints.read_file(target), entry)
    live = models.build(entry)
    checkpoints.load_into(live, raw, entry)
    expected = checkpoints.map_keys(fake.make_state_dict(man, 0), entry, live)
    got = live.state_dict()
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert torch.equal(got[k], v.to(got[k].dtype)), k
    if man["naming_scheme"] == "timm":
        index = json.loads((kit / "kit_index.json").read_text())["ids"][id_]
        assert fake.state_dict_sha256(got) == index["fake_state_dict_sha256_seed0"]
    if entry.dcls is not None:
        assert len(man["dcls"]["layers"]) == sum(1 for _ in __import__("dclsviz.dcls").dcls.dcls_layers(live))
    del live, raw

    loaded = models.load(entry, device=TEST_DEVICE, download=False)
    assert loaded.checkpoint.origin == "cache"
    assert not any(p.requires_grad for p in loaded.model.parameters())
    target.unlink()

    g = kit_data.golden(id_)
    x = torch.from_numpy(kit_input(str(g["input_file"])))
    engine = CamEngine(loaded)
    logits_gold = g["logits"]
    for prefix, cls in (("", int(g["target_class"])), ("top1_", int(g["top1_class"]))):
        r = engine.explain(x, cls, float(g["threshold"]), keep_activations=True)
        assert np.all(np.abs(r.logits[0] - logits_gold) <= 1e-4 + 1e-4 * np.abs(logits_gold))
        assert int(r.logits[0].argmax()) == int(g["top1_class"])
        assert int(r.targets[0]) == cls
        layout = str(g["cam_layout"])
        _assert_maps(r.gradient[0], _nchw(g[f"{prefix}cam_gradient"], layout), f"{id_} {prefix}gradient")
        if not prefix:
            _assert_maps(r.activation[0], _nchw(g["cam_activation"], layout), f"{id_} activation")
        if prefix == "" and bool(g["gradcam_degenerate"]):
            bound = 1e-4 * float(np.abs(g["top1_gradcam_lowres"]).max())
            assert np.abs(r.gradcam_lowres[0]).max() <= bound
            assert np.abs(r.gradcam[0]).max() <= bound
        else:
            _assert_maps(r.gradcam_lowres[0], g[f"{prefix}gradcam_lowres"], f"{id_} {prefix}gradcam_lowres")
            _assert_maps(r.gradcam[0], g[f"{prefix}gradcam_224"], f"{id_} {prefix}gradcam_224")
        _assert_threshold(r.threshold_lowres[0], g[f"{prefix}threshold_lowres"], f"{id_} {prefix}threshold_lowres")
        _assert_threshold(r.threshold_gradcam[0], g[f"{prefix}threshold_224"], f"{id_} {prefix}threshold_224")


def test_wrong_checkpoint_is_named(kit, fake, cache):
    """A DCLS file given for the baseline: the error names the keys that do not fit."""
    man = fake.load_manifest(str(kit / "manifests" / "convnext_tiny.dcls.json"))
    path = cache / man["file_name"]
    fake.write_checkpoint(man, str(path), seed=0)
    with pytest.raises(checkpoints.CheckpointMismatch, match=r"unexpected .*P.*baseline checkpoint of convnext_tiny"):
        models.load(zoo.get("convnext_tiny", "baseline"), path, device=TEST_DEVICE)


def test_timm_train_container_needs_the_ema_entry(kit, fake, cache):
    man = fake.load_manifest(str(kit / "manifests" / "resnet50.dcls.json"))
    path = cache / man["file_name"]
    fake.write_checkpoint(man, str(path), seed=0)
    obj = checkpoints.read_file(path)  # argparse.Namespace + PosixPath allow-listed, cuda:0 mapped to cpu
    assert set(obj) >= {"state_dict", "state_dict_ema", "args"}
    ema = checkpoints.unwrap(obj, zoo.get("resnet50", "dcls"))
    assert ema is obj["state_dict_ema"]
    with pytest.raises(checkpoints.CheckpointMismatch, match="no 'model' entry"):
        checkpoints.unwrap(obj, zoo.get("convnext_tiny", "dcls"))


def test_pickled_code_is_refused(cache):
    """A checkpoint that pickles an arbitrary callable is rejected before anything runs."""
    import os

    marker = cache / "payload-ran"

    class Evil:
        def __reduce__(self):
            return (os.makedirs, (str(marker),))

    path = cache / "evil.pth"
    torch.save({"model": Evil()}, path)
    assert not marker.exists()
    with pytest.raises(checkpoints.CheckpointMismatch, match="without running pickled code"):
        checkpoints.read_file(path)
    assert not marker.exists(), "the pickled payload ran"
    # the payload is real: what unpickling would call does make the marker (called here directly, not unpickled)
    call, args = Evil().__reduce__()
    call(*args)
    assert marker.is_dir()


def test_missing_checkpoint_says_how_to_get_it(cache):
    entry = zoo.get("convnext_tiny", "dcls")
    with pytest.raises(checkpoints.CheckpointUnavailable) as e:
        checkpoints.resolve(entry, download=False)
    msg = str(e.value)
    assert entry.checkpoint.urls[0] in msg and "--checkpoint-dir" in msg and "$DCLSVIZ_CACHE/checkpoints" in msg
    # the app shows this text to its clients: the cache is named by its setting, never by its path here
    assert str(checkpoints.cache_dir()) not in msg


def test_checkpoint_dir_and_safetensors(kit, fake, cache, monkeypatch):
    """An air-gapped user's folder is found by name; the HF safetensors copy of resnet50 loads too."""
    man = fake.load_manifest(str(kit / "manifests" / "resnet50.baseline.json"))
    folder = cache / "mine"
    folder.mkdir()
    fake.write_checkpoint(man, str(folder / man["file_name"]), seed=0)
    monkeypatch.setenv("DCLSVIZ_CHECKPOINT_DIR", str(folder))
    r = checkpoints.resolve(zoo.get("resnet50", "baseline"), download=False)
    assert r.origin == "checkpoint-dir" and r.path == folder / man["file_name"]
    st = cache / "model.safetensors"
    fake.write_checkpoint(man, str(st), seed=0, fmt="safetensors")
    a = models.load(zoo.get("resnet50", "baseline"), st, device=TEST_DEVICE)
    b = models.load(zoo.get("resnet50", "baseline"), r.path, device=TEST_DEVICE)
    x = torch.from_numpy(kit_input("input_224.npy")).to(a.device)
    with torch.no_grad():
        assert torch.equal(a.model(x), b.model(x))
