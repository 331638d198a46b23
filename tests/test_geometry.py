"""Preprocessing equals each manifest's eval transform; the crop window and the aligned frame are right."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from dclsviz import geometry, zoo
from dclsviz.compare import Sample, explain_batch


def _reference_transform(t: dict) -> T.Compose:
    assert t["resize_mode"] == "shorter_side"
    return T.Compose([T.Resize(t["resize"], interpolation=T.InterpolationMode(t["interpolation"]), antialias=True),
                      T.CenterCrop(t["crop"]), T.ToTensor(), T.Normalize(t["mean"], t["std"])])


@pytest.mark.parametrize("id_", ["convnext_tiny.dcls", "caformer_s18.baseline", "fastvit_sa36.dcls",
                                 "resnet50.baseline"])
def test_preprocess_is_the_manifest_transform(id_, kit):
    man = json.loads((kit / "manifests" / f"{id_}.json").read_text())
    rng = np.random.default_rng(1)
    image = (rng.random((300, 410, 3)) * 255).astype(np.uint8)
    ours, _ = geometry.preprocess(image, zoo.get(man["arch"], man["variant"]).transform)
    ref = _reference_transform(man["eval_transform"])(Image.fromarray(image))
    assert ours.shape == tuple(man["eval_transform"]["input_size"])
    assert torch.equal(ours, ref)


def test_crop_window_locates_the_crop():
    """Resize 256 + crop 224 of a 300×400 image: the window is where the crop's pixels came from."""
    t = zoo.Transform(resize=256, crop=224)
    w = geometry.crop_window(300, 400, t)
    # resized to 256×341: crop rows 16..240, columns 58..282
    assert w.top == pytest.approx(16 / 256) and w.height == pytest.approx(224 / 256)
    assert w.left == pytest.approx(58 / 341) and w.width == pytest.approx(224 / 341)
    # a bright square at the centre of the crop maps to the centre of the aligned frame
    m = np.zeros((300, 400), np.float32)
    cy, cx = (w.top + w.height / 2) * 300, (w.left + w.width / 2) * 400
    m[int(cy) - 10:int(cy) + 10, int(cx) - 10:int(cx) + 10] = 1
    framed = geometry.to_frame(m, w, "aligned")
    assert framed.shape == (224, 224)
    ys, xs = np.nonzero(framed > 0.5)
    assert abs(ys.mean() - 111.5) < 3 and abs(xs.mean() - 111.5) < 3


def test_paper_geometry_keeps_the_human_map():
    m = np.random.default_rng(0).random((224, 224)).astype(np.float32)
    assert geometry.to_frame(m, geometry.Window(0.1, 0.1, 0.8, 0.8), "paper") is m
    with pytest.raises(ValueError, match="geometry"):
        geometry.to_frame(m, geometry.Window(0, 0, 1, 1), "tilted")


def test_aligned_scores_use_the_cropped_human_map():
    """With a human map only outside ResNet's crop window, `aligned` sees none of it, `paper` does."""
    torch.manual_seed(0)
    from dclsviz import models

    entry = zoo.get("resnet50", "baseline")
    lm = models.load(entry, state_dict=models.build(entry).state_dict(), device="cpu")
    image = np.full((224, 224, 3), 128, np.uint8)
    hm = np.zeros((224, 224), np.float32)
    hm[:, :4] = 1.0  # a strip at the left edge: resize 235 + crop 224 cuts ~5 px per side
    sample = Sample(image, hm)
    paper = explain_batch(lm, [sample], "pred", geometry_name="paper")[0]
    aligned = explain_batch(lm, [sample], "pred", geometry_name="aligned")[0]
    assert paper.human is hm
    assert aligned.human.shape == (224, 224) and float(aligned.human.max()) < 0.05
    assert np.array_equal(paper.maps["gradcam"], aligned.maps["gradcam"])
