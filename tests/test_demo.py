"""The shipped demo pair: its files load, it meets the quality bar, and its data can be remade."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

import dclsviz.demo as demo
from dclsviz import checkpoints, dcls, metrics, models, zoo
from dclsviz.cam import CamEngine
from dclsviz.clickme import ClickMeShard
from dclsviz.demo import data

ASSETS = zoo.ASSETS
SHARD = ASSETS / demo.SHARD
META = ASSETS / demo.META
MAX_BYTES = 20 * 1024 * 1024
MIN_ACCURACY = 0.90
MIN_SPEARMAN = 0.30


@pytest.fixture(scope="module", autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads(META.read_text())


@pytest.fixture(scope="module")
def shard() -> ClickMeShard:
    return ClickMeShard(SHARD)


def _study_transform(t: zoo.Transform):
    # The torchvision pipeline the study uses on PIL images, written independently of geometry.preprocess.
    return T.Compose([T.Resize(t.resize, interpolation=T.InterpolationMode(t.interpolation)),
                      T.CenterCrop(t.crop), T.ToTensor(), T.Normalize(t.mean, t.std)])


def test_entries_are_registered_and_cheap_to_import():
    for variant in zoo.VARIANTS:
        e = zoo.get("demo", variant)
        assert e.checkpoint.bundled == f"demo/demo_{variant}.safetensors"
        assert e.class_names == demo.CLASS_NAMES and e.num_classes == len(demo.CLASS_NAMES)
    assert zoo.get("demo", "dcls").dcls is not None and zoo.get("demo", "baseline").dcls is None


def test_assets_fit_the_size_budget():
    files = [p for p in (ASSETS / "demo").iterdir() if p.is_file()]
    names = {p.name for p in files}
    assert {"demo_baseline.safetensors", "demo_dcls.safetensors", SHARD.name, META.name} <= names
    assert sum(p.stat().st_size for p in files) <= MAX_BYTES


@pytest.mark.parametrize("variant", zoo.VARIANTS)
def test_shipped_weights_resolve_as_bundled_and_load_strictly(variant):
    entry = zoo.get("demo", variant)
    resolved = checkpoints.resolve(entry, download=False)
    assert resolved.origin == "bundled"
    sd = checkpoints.read_file(resolved.path)
    model = models.build(entry)
    # strict: every key of the live model (DCLS weight/P included) is in the file and nothing else
    assert set(sd) == set(model.state_dict())
    n_dcls = len(dcls.dcls_layers(model))
    assert (n_dcls > 0) == (variant == "dcls")
    loaded = models.load(entry, device=torch.device("cpu"), download=False)
    assert loaded.checkpoint.origin == "bundled"
    assert not dcls.dcls_layers(loaded.model)  # frozen into plain convolutions


def test_shard_reads_back_in_clickme_format(shard, meta):
    assert len(shard) == meta["shard"]["records"] >= 96
    for rec in (shard[0], shard[len(shard) - 1]):
        assert rec.image_u8().shape == (data.SIZE, data.SIZE, 3)
        assert rec.heatmap_u8().shape == (data.SIZE, data.SIZE)
        assert rec.human_map().shape == (224, 224)
    labels = [shard[i].label for i in range(len(shard))]
    counts = np.bincount(labels, minlength=len(demo.CLASS_NAMES))
    assert len(counts) == len(demo.CLASS_NAMES) and counts.min() > 0


def test_shipped_shard_is_what_the_generator_makes(shard, meta):
    seed = meta["seed"]
    for i in (0, 1, len(shard) - 1):
        image, heat, label = data.make_sample(seed, data.HELD_OUT_START + i)
        rec = shard[i]
        assert rec.label == label
        # JPEG loses a little; a different sample would differ by tens of grey levels
        assert np.abs(rec.image_u8().astype(int) - image).mean() < 2.0
        assert np.abs(rec.heatmap_u8().astype(int) - heat).mean() < 2.0


def test_generator_is_deterministic(tmp_path):
    a = data.make_sample(3, 17)
    b = data.make_sample(3, 17)
    assert all(np.array_equal(x, y) for x, y in zip(a[:2], b[:2])) and a[2] == b[2]
    assert data.encode(*a[:2]) == data.encode(*b[:2])
    assert not np.array_equal(data.make_sample(4, 17)[0], a[0])
    assert not np.array_equal(data.make_sample(3, 18)[0], a[0])
    # a Generator drives the same drawing as the seed it was made from
    c = data.make_sample(data.sample_rng(3, 17), 17)
    assert np.array_equal(c[0], a[0]) and np.array_equal(c[1], a[1])
    p1, p2 = tmp_path / "a.tfrecords", tmp_path / "b.tfrecords"
    assert data.write_demo_shard(p1, 3, seed=5) == 3
    data.write_demo_shard(p2, 3, seed=5)
    assert p1.read_bytes() == p2.read_bytes()
    heat = ClickMeShard(p1)[0].heatmap_u8()
    assert heat.max() > 200 and heat.min() < 10  # the object is marked, the background is not


@pytest.mark.parametrize("arch", ["demo", "convnext_tiny", "fastvit_sa24"])
def test_preprocessing_is_the_study_transform_to_the_bit(shard, arch):
    """geometry's resize-crop and normalise (which the demo's training also uses) are the study's torchvision
    Compose on PIL images, exactly, for the demo's and the study's transforms."""
    from dclsviz import geometry

    t = zoo.get(arch, "baseline").transform
    images = [shard[i].image_u8() for i in range(4)]
    ours = torch.stack([geometry.preprocess(im, t)[0] for im in images])
    study = torch.stack([_study_transform(t)(Image.fromarray(im)) for im in images])
    assert ours.shape == study.shape == (4, 3, t.crop, t.crop) and torch.equal(ours, study)
    batch = torch.stack([geometry.resize_crop(im, t)[0] for im in images])
    assert batch.dtype == torch.uint8 and torch.equal(geometry.normalise(batch, t), study)


@pytest.mark.parametrize("variant", zoo.VARIANTS)
def test_shipped_model_meets_the_quality_bar(variant, shard, meta):
    entry = zoo.get("demo", variant)
    engine = CamEngine(models.load(entry, device=torch.device("cpu"), download=False))
    tf = _study_transform(entry.transform)
    correct, rhos = 0, []
    for lo in range(0, len(shard), 32):
        recs = [shard[i] for i in range(lo, min(len(shard), lo + 32))]
        x = torch.stack([tf(Image.fromarray(r.image_u8())) for r in recs])
        labels = [r.label for r in recs]
        cam = engine.explain(x, targets=labels)
        assert cam.gradcam.shape == (len(recs), 224, 224)
        correct += int((cam.logits.argmax(1) == np.array(labels)).sum())
        rhos += [metrics.spearman(cam.gradcam[i], r.human_map()) for i, r in enumerate(recs)]
    accuracy = correct / len(shard)
    rho = metrics.summarise(rhos)["mean"]
    assert accuracy >= MIN_ACCURACY, f"{entry.id}: accuracy {accuracy:.3f}"
    assert rho is not None and rho >= MIN_SPEARMAN, f"{entry.id}: mean Spearman {rho}"
    # the metadata describes these very files (preprocessing differs by at most a grey level)
    recorded = meta["models"][variant]
    assert abs(recorded["accuracy"] - accuracy) <= 2 / len(shard)
    assert abs(recorded["spearman_mean"] - rho) < 0.01


def test_train_command_smoke_writes_files_that_load_strictly(tmp_path, capsys):
    from dclsviz.__main__ import main

    out = tmp_path / "demo"
    assert main(["demo", "train", "--out", str(out), "--seed", "1", "--steps", "2", "--n-train", "16",
                 "--n-val", "4"]) == 0
    assert "done in" in capsys.readouterr().out
    meta = json.loads((out / META.name).read_text())
    assert meta["seed"] == 1 and meta["training"]["steps"] == 2 and meta["training"]["n_train"] == 16
    assert len(ClickMeShard(out / SHARD.name)) == 4
    for variant in zoo.VARIANTS:
        entry = zoo.get("demo", variant)
        path = out / entry.checkpoint.file_name
        loaded = models.load(entry, path, device=torch.device("cpu"), download=False)
        assert loaded.checkpoint.origin == "explicit"
        assert meta["models"][variant]["sha256"] == loaded.checkpoint.sha256
        assert 0.0 <= meta["models"][variant]["accuracy"] <= 1.0
