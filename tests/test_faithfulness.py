"""Faithfulness numbers (deletion, insertion, ROAD) and their place in explain's and evaluate's outputs.

ROAD is checked against pytorch-grad-cam 1.5.7's ``ROADCombined`` on the same model, input, map and target;
deletion and insertion against a step-by-step run that builds each perturbed image on its own.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from dclsviz import clickme, demo, evaluate, faithfulness, models, zoo
from dclsviz.cam import CamEngine
from conftest import TEST_DEVICE
from kit_data import kit_input
from test_cli import run_cli


@pytest.fixture(scope="module")
def demo_case():
    """The trained demo DCLS model, one record of its shard, its target and its LayerCAM at input size."""
    lm = models.load(zoo.get("demo", "dcls"), device=TEST_DEVICE)
    from dclsviz import geometry

    record = clickme.ClickMeShard(zoo.ASSETS / demo.SHARD)[0]
    x = geometry.preprocess(record.image_u8(), lm.entry.transform)[0][None]
    r = CamEngine(lm).explain(x, int(record.label), methods=("layercam",))
    sal = faithfulness.at_input(torch.from_numpy(r.lowres["layercam"]), tuple(x.shape[-2:]))[0]
    p = float(torch.softmax(torch.from_numpy(r.logits[0]).double(), 0)[int(r.targets[0])])
    return lm, x, int(r.targets[0]), sal, p


def test_road_equals_pytorch_grad_cam(demo_case, monkeypatch):
    from pytorch_grad_cam.metrics import road as peer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    lm, x, target, sal, _ = demo_case
    # ROAD's rule "below the p-th percentile" and our ranks agree on a map without ties, also after ROAD's
    # 1 − map in float32: give both the map's ranks / n (exact in float32, n a power of 2), the ReLU's ties
    # broken by a fixed permutation
    n = sal.numel()
    assert n & (n - 1) == 0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0)).numpy()
    order = np.lexsort((perm, sal.numpy().reshape(-1)))
    cam = np.empty(n, np.float32)
    cam[order] = np.arange(n, dtype=np.float32) / n
    cam = cam.reshape(sal.shape)
    assert len(np.unique(cam)) == n and len(np.unique(1 - torch.from_numpy(cam).numpy())) == n
    # the imputation noise is random in the package: compare without it
    monkeypatch.setattr(peer.NoisyLinearImputer.__init__, "__defaults__", (0.0, peer.neighbors_weights))
    want = float(peer.ROADCombined()(x.to(lm.device), cam[None],
                                     [ClassifierOutputSoftmaxTarget(target)], lm.model)[0])
    got = faithfulness.road(lm, x, cam, target, noise=0.0)
    assert got == pytest.approx(want, abs=1e-5)
    # with its noise, ours is seeded: the same number again, near the noiseless one
    noisy = faithfulness.road(lm, x, cam, target)
    assert noisy == faithfulness.road(lm, x, cam, target) and noisy != got
    assert abs(noisy - got) < 0.05


def test_deletion_insertion_is_one_batch_equal_to_step_by_step(demo_case):
    lm, x, target, sal, p0 = demo_case
    steps = 8
    calls = []
    handle = lm.model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        d, ins, curves = faithfulness.deletion_insertion(lm, x, sal, target, p0, steps)
    finally:
        handle.remove()
    assert calls == [2 * steps]
    # each perturbed image built on its own, from a numpy ranking, through the model one at a time
    image = x[0].numpy()
    blurred = faithfulness.blur(x)[0].numpy()
    order = np.argsort(-sal.numpy().reshape(-1), kind="stable")
    n = order.size

    def prob(img):
        return float(faithfulness.probabilities(lm, torch.from_numpy(img)[None], target)[0])

    dele, inse = [p0], []
    for i in range(steps + 1):
        top = np.zeros(n, bool)
        top[order[:round(i * n / steps)]] = True
        top = top.reshape(image.shape[1:])
        if i:
            dele.append(prob(np.where(top, blurred, image)))
        if i < steps:
            inse.append(prob(np.where(top, image, blurred)))
    inse.append(p0)
    np.testing.assert_allclose(curves, [dele, inse], rtol=0, atol=1e-5)
    assert d == pytest.approx(np.trapezoid(dele, dx=1 / steps), abs=1e-5)
    assert ins == pytest.approx(np.trapezoid(inse, dx=1 / steps), abs=1e-5)
    # fully removed, both curves meet at the blurred image
    assert curves[0, -1] == pytest.approx(curves[1, 0], abs=1e-6)


def test_blur_is_a_gaussian_with_reflected_borders():
    from scipy.ndimage import gaussian_filter

    x = torch.rand(2, 3, 40, 33, generator=torch.Generator().manual_seed(1))
    want = gaussian_filter(x.double().numpy(), sigma=(0, 0, 5, 5), mode="mirror", truncate=1.0)
    np.testing.assert_allclose(faithfulness.blur(x).numpy(), want, rtol=0, atol=1e-5)


def test_impute_solves_the_neighbour_equation():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(3, 20, 17)).astype(np.float64)
    keep = rng.random((20, 17)) < 0.4
    out = faithfulness.impute(image, keep, noise=0.0)
    assert np.array_equal(out[:, keep], image[:, keep])
    weights = dict(faithfulness._NEIGHBOURS)
    for y, x in zip(*np.nonzero(~keep)):
        near = [((y + dy, x + dx), w) for (dy, dx), w in weights.items()
                if 0 <= y + dy < 20 and 0 <= x + dx < 17]
        mean = sum(w * out[:, a, b] for (a, b), w in near) / sum(w for _, w in near)
        np.testing.assert_allclose(out[:, y, x], mean, rtol=0, atol=1e-9)
    noisy = faithfulness.impute(image, keep, 0.01, np.random.default_rng(3))
    assert np.array_equal(noisy, faithfulness.impute(image, keep, 0.01, np.random.default_rng(3)))
    assert 0.005 < np.std(noisy[:, ~keep] - out[:, ~keep]) < 0.015


def test_explain_writes_each_method_and_its_faithfulness(tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, kit_input("input_224.npy")[..., :128, :128])
    yy, xx = np.mgrid[0:128, 0:128]
    np.save(tmp_path / "h.npy", np.exp(-((yy - 60) ** 2 + (xx - 70) ** 2) / 800.0).astype(np.float32))
    out = tmp_path / "out"
    run_cli("explain", "--input-tensor", x, "--arch", "demo", "--methods", "hirescam,gradcampp", "--faithfulness",
            "--steps", "8", "--human", tmp_path / "h.npy", "--device", "cpu", "--out", out)
    res = json.loads((out / "result.json").read_text())
    mod = res["models"]["dcls"]
    assert list(mod["scores"]) == ["hirescam", "gradcampp"] and list(mod["faithfulness"]) == list(mod["scores"])
    assert mod["cam_layer"] == "layer4" and set(res["delta_spearman"] or {}) <= set(mod["scores"])
    for m in ("hirescam", "gradcampp"):
        full, low = np.load(out / f"{m}.npy"), np.load(out / f"{m}_lowres.npy")
        assert full.shape == (224, 224) and full.dtype == np.float32 and low.shape == (8, 8)
        f = mod["faithfulness"][m]
        assert 0 <= f["deletion"] <= 1 and 0 <= f["insertion"] <= 1 and -0.5 <= f["road"] <= 0.5
        assert -1 <= mod["scores"][m]["spearman"] <= 1
    assert not (out / "gradcam.npy").exists()
    r = run_cli("explain", "--input-tensor", x, "--arch", "demo", "--layer", "layer9", "--out", out, check=False)
    assert r.returncode == 2 and "no layer 'layer9'" in r.stderr and "layer4" in r.stderr
    r = run_cli("explain", "--input-tensor", x, "--arch", "demo", "--methods", "gradcam,gradcam_plus", "--out", out,
                check=False)
    assert r.returncode == 2 and "unknown method(s) gradcam_plus" in r.stderr


def _rows(folder):
    with open(folder / "per_image.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_methods_and_faithfulness(tmp_path):
    out = tmp_path / "run"
    run_cli("evaluate", "--arch", "demo", "--demo", "--limit", "3", "--methods", "all", "--faithfulness",
            "--no-progress", "--device", "cpu", "--out", out)
    rows = _rows(out)
    assert len(rows) == 6 and {"spearman_eigengradcam", "deletion_layercam", "road_gradcampp"} <= set(rows[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"] == list(__import__("dclsviz.methods").methods.ONE_PASS) and summary["faithfulness"]
    ent = summary["models"]["demo"]["dcls"]["xgradcam"]
    assert ent["mean_spearman"] == pytest.approx(np.mean([float(r["spearman_xgradcam"]) for r in rows
                                                          if r["variant"] == "dcls"]), abs=1e-12)
    assert ent["mean_deletion"] == pytest.approx(np.mean([float(r["deletion_xgradcam"]) for r in rows
                                                          if r["variant"] == "dcls"]), abs=1e-12)
    assert summary["paired"]["demo"]["layercam"]["n_pairs"] == 3
    table = (out / "table1.txt").read_text()
    assert "Per method" in table and "Eigen-Grad-CAM" in table and "deletion b/d" in table
    for name in ("robustness.png", "plausibility_faithfulness.png", "scatter.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the folder holds all methods with faithfulness: asking for the paper's two there is refused, with the flags
    r = run_cli("evaluate", "--arch", "demo", "--demo", "--limit", "3", "--no-progress", "--out", out, check=False)
    assert r.returncode == 2 and "--methods gradcam,threshold_gradcam,hirescam" in r.stderr
    assert "--faithfulness" in r.stderr and "Traceback" not in r.stderr


def test_folder_from_before_methods_resumes(tmp_path):
    """A folder with the old header and a run.json without methods resumes with the paper's two; asking for
    more there says how to resume it."""
    out = tmp_path / "old"
    args = ("evaluate", "--arch", "demo", "--demo", "--no-progress", "--device", "cpu", "--out", out)
    run_cli(*args, "--limit", "2")
    header = (out / "per_image.csv").read_text().splitlines()[0]
    assert tuple(header.split(",")) == evaluate.COLUMNS
    run = json.loads((out / "run.json").read_text())
    assert run.pop("methods") == ["gradcam", "threshold_gradcam"] and run.pop("faithfulness") is False
    (out / "run.json").write_text(json.dumps(run))
    before = _rows(out)
    r = run_cli(*args, "--limit", "2", "--methods", "gradcam,layercam", check=False)
    assert r.returncode == 2 and "resume it with --methods gradcam,threshold_gradcam" in r.stderr
    run_cli(*args, "--limit", "3")
    after = _rows(out)
    assert after[:4] == before and len(after) == 6
    assert not (out / "plausibility_faithfulness.png").exists() and (out / "robustness.png").exists()
    assert "Per method" not in (out / "table1.txt").read_text()
