"""A fresh machine with no network: the CLI works on the bundled demo pair and the shipped files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dclsviz import clickme, demo, metrics, zoo
from test_cli import run_cli

SHARD = zoo.ASSETS / demo.SHARD
EXAMPLES = sorted((zoo.ASSETS / "examples").glob("*.jpg"))


def test_examples_are_licensed():
    licences = (zoo.ASSETS / "examples" / "LICENSES").read_text()
    assert len(EXAMPLES) >= 3
    for p in EXAMPLES:
        assert p.name in licences


def test_explain_a_photo_offline(tmp_path):
    out = tmp_path / "out"
    r = run_cli("explain", EXAMPLES[0], "--arch", "demo", "--variant", "dcls", "--out", out,
                env={"DCLSVIZ_CACHE": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"})
    res = json.loads((out / "result.json").read_text())
    mod = res["models"]["dcls"]
    assert mod["arch"] == "demo" and all(s["spearman"] is None for s in mod["scores"].values())
    assert mod["target"] == mod["top5"][0][0]  # no label: the prediction is explained
    assert mod["top5"][0][2] in demo.CLASS_NAMES and "no human map" in r.stdout
    assert np.load(out / "gradcam.npy").shape == (224, 224)


@pytest.mark.parametrize("index", [0, 5])
def test_explain_a_clickme_record(index, tmp_path):
    """The record's label is the default target, and ρ is against the record's own human map."""
    out = tmp_path / "out"
    run_cli("explain", "--clickme", f"{SHARD}:{index}", "--arch", "demo", "--variant", "baseline", "--out", out)
    res = json.loads((out / "result.json").read_text())
    record = clickme.ClickMeShard(SHARD)[index]
    mod = res["models"]["baseline"]
    assert res["label"] == record.label and mod["target"] == record.label
    human = record.human_map()
    np.testing.assert_allclose(np.load(out / "human.npy"), human, rtol=0, atol=0)
    for m in ("gradcam", "threshold_gradcam"):
        rho = mod["scores"][m]["spearman"]
        assert rho == pytest.approx(metrics.spearman(np.load(out / f"{m}.npy"), human), abs=1e-12)
    assert mod["scores"]["gradcam"]["spearman"] is not None


def test_unavailable_paper_checkpoint_offers_the_demo(tmp_path):
    photo = EXAMPLES[0]
    r = run_cli("explain", photo, "--arch", "convnext_tiny", "--variant", "dcls", "--out", tmp_path / "o",
                env={"DCLSVIZ_CACHE": str(tmp_path / "empty"), "TORCH_HOME": str(tmp_path / "t"),
                     # no proxy and an unresolvable name: the request fails at once, as offline
                     "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"},
                check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "convnext_dcls_tiny_1k_224_ema.pth" in r.stderr and "--checkpoint-dir" in r.stderr
    assert "--arch demo" in r.stderr


def test_unreachable_hub_and_release_urls_are_both_named(tmp_path):
    """resnet50's baseline is on the Hugging Face hub and on GitHub: both are tried through our own fetch
    (no hub retry loop) and both are named when neither answers."""
    r = run_cli("explain", EXAMPLES[0], "--arch", "resnet50", "--variant", "baseline", "--out", tmp_path / "o",
                env={"DCLSVIZ_CACHE": str(tmp_path / "empty"), "TORCH_HOME": str(tmp_path / "t"),
                     "HF_HUB_OFFLINE": "", "HF_HOME": str(tmp_path / "hf"),
                     "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"},
                check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "huggingface.co/timm/resnet50.a1_in1k/resolve/main/model.safetensors" in r.stderr
    assert "resnet50_a1_0-14fe96d1.pth" in r.stderr and "--arch demo" in r.stderr
