"""tests/data and tests/fake_checkpoints.py hold the conformance kit's facts, unchanged.

Without the kit: our stand-in state dicts have the fingerprints the kit's index lists. With the kit
($DCLSVIZ_CONFORMANCE or ../shared/conformance): our generator writes the very files the kit's own
fake_checkpoint.py writes, and every array tests/data stores or rebuilds equals the kit's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys

import numpy as np
import pytest

import fake_checkpoints
import kit_data

IDS = sorted(p.stem for p in (kit_data.DATA / "manifests").glob("*.json"))


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@pytest.fixture(scope="module")
def kit_fake(reference_kit):
    """The kit's fake_checkpoint.py, loaded once: it registers a torch serialization tagger when first used."""
    name = "conformance_kit_fake_checkpoint"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, reference_kit / "fake_checkpoint.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_the_data_covers_the_sixteen_checkpoints():
    assert len(IDS) == 16 and {i.split(".")[1] for i in IDS} == {"baseline", "dcls"}
    assert sorted(json.loads((kit_data.DATA / "kit_index.json").read_text())["ids"]) == IDS
    assert sorted(p.stem for p in (kit_data.DATA / "golden").glob("*.npz")) == IDS


@pytest.mark.parametrize("id_", IDS)
def test_our_stand_in_has_the_fingerprint_the_kit_lists(id_):
    man = fake_checkpoints.load_manifest(kit_data.DATA / "manifests" / f"{id_}.json")
    sd = fake_checkpoints.make_state_dict(man, 0)
    index = json.loads((kit_data.DATA / "kit_index.json").read_text())["ids"][id_]
    assert [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()] == \
           [(k, list(s), d) for k, s, d in man["keys"]]
    assert fake_checkpoints.state_dict_sha256(sd) == index["fake_state_dict_sha256_seed0"]
    assert str(kit_data.golden(id_)["fake_state_dict_sha256"]) == index["fake_state_dict_sha256_seed0"]


@pytest.mark.parametrize("id_", IDS)
def test_our_generator_writes_the_kits_file(id_, reference_kit, kit_fake, tmp_path):
    """Byte-equal files: same tensors, same container, same pickled types and storage location tags."""
    man = kit_fake.load_manifest(str(reference_kit / "manifests" / f"{id_}.json"))
    assert fake_checkpoints.load_manifest(kit_data.DATA / "manifests" / f"{id_}.json") == man
    (tmp_path / "kit").mkdir()
    (tmp_path / "ours").mkdir()
    # torch.save names the archive after the file, so both files get the same name
    theirs, ours = tmp_path / "kit" / man["file_name"], tmp_path / "ours" / man["file_name"]
    assert kit_fake.write_checkpoint(man, str(theirs), seed=0) == fake_checkpoints.write_checkpoint(man, ours, seed=0)
    assert _sha256(theirs) == _sha256(ours)
    theirs.unlink()
    ours.unlink()
    if man["container"]["layout"] == "bare":
        kit_fake.write_checkpoint(man, str(theirs), seed=3, fmt="safetensors")
        fake_checkpoints.write_checkpoint(man, ours, seed=3, fmt="safetensors")
        assert _sha256(theirs) == _sha256(ours)


def test_the_data_files_are_the_kits(reference_kit):
    copied = [p.relative_to(kit_data.DATA) for p in kit_data.DATA.rglob("*")
              if p.suffix in (".json", ".tfrecords")]
    assert len(copied) >= 16 + 1 + 3
    for rel in copied:
        assert (kit_data.DATA / rel).read_bytes() == (reference_kit / rel).read_bytes(), rel


def test_rebuilt_arrays_equal_the_kits(reference_kit):
    pairs = [(reference_kit / "clickme" / "golden_clickme.npz", kit_data.clickme_golden()),
             (reference_kit / "clickme" / "golden_metric.npz", kit_data.metric_golden())]
    pairs += [(reference_kit / "golden" / f"{id_}.npz", kit_data.golden(id_)) for id_ in IDS]
    for name, ours in pairs:
        with np.load(name) as kit:
            assert sorted(kit.files) == sorted(ours), name
            for k in kit.files:
                assert ours[k].dtype == kit[k].dtype and ours[k].shape == kit[k].shape, (name, k)
                assert np.array_equal(ours[k], kit[k], equal_nan=kit[k].dtype.kind == "f"), (name, k)
    for n in ("input_224", "input_256"):
        assert np.array_equal(kit_data.kit_input(f"{n}.npy"), np.load(reference_kit / f"{n}.npy")), n
