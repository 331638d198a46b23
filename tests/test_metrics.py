"""Spearman, Dice/IoU and the dataset score against the reference values of the ClickMe conformance kit."""

import re
import warnings

import numpy as np
import pytest
import scipy.stats
import torch

import kit_data
from dclsviz import metrics
from dclsviz.clickme import ClickMeShard
from conftest import TEST_DEVICE


@pytest.fixture(scope="module")
def gm():
    return kit_data.metric_golden()


@pytest.fixture(scope="module")
def cases():
    return kit_data.metric_cases()


def _model_map(gm, i):
    # Case 15 is stored in float64 too: feeding it uncast checks that the metric does the float32 cast.
    return gm["model_map_f64_case15"] if str(gm["names"][i]).startswith("float64") else gm["model_maps_f32"][i]


@pytest.fixture(autouse=True)
def _no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_spearman_matches_reference(gm):
    worst = 0.0
    for i, ref in enumerate(gm["spearman"]):
        rho = metrics.spearman(_model_map(gm, i), gm["human_maps"][i])
        if np.isnan(ref):
            assert rho is None, gm["names"][i]
        else:
            assert isinstance(rho, float)
            worst = max(worst, abs(rho - ref))
    assert worst <= 1e-12


def test_float32_cast_matters_for_near_ties(gm):
    i = next(k for k, n in enumerate(gm["names"]) if str(n).startswith("float64"))
    uncast, _ = scipy.stats.spearmanr(gm["model_map_f64_case15"].ravel(), gm["human_maps"][i].ravel())
    assert abs(uncast - gm["spearman"][i]) > 1e-5
    assert abs(metrics.spearman(gm["model_map_f64_case15"], gm["human_maps"][i]) - gm["spearman"][i]) <= 1e-12


def test_dice_iou_match_reference(gm):
    for i in range(len(gm["names"])):
        d, u = metrics.dice_iou(_model_map(gm, i), gm["human_maps"][i])
        assert abs(d - gm["dice"][i]) <= 1e-12, gm["names"][i]
        assert abs(u - gm["iou"][i]) <= 1e-12, gm["names"][i]


def test_batched_versions_equal_single(gm):
    human = gm["human_maps"][0]
    many = metrics.spearman_many(gm["model_maps_f32"], human)
    for m, rho in zip(gm["model_maps_f32"], many):
        single = metrics.spearman(m, human)
        assert (rho is None and single is None) or abs(rho - single) <= 1e-15
    for m, di in zip(gm["model_maps_f32"], metrics.dice_iou_many(gm["model_maps_f32"], human)):
        assert di == metrics.dice_iou(m, human)
    assert metrics.spearman_many(gm["model_maps_f32"][:4], np.zeros((224, 224))) == [None] * 4
    assert metrics.spearman_many(np.zeros((0, 224, 224)), human) == []


def test_spearman_with_our_human_map_from_the_shard(kit, gm, tmp_path, monkeypatch):
    monkeypatch.setenv("DCLSVIZ_CACHE", str(tmp_path))
    shard = ClickMeShard(kit / "clickme" / "sample_val.tfrecords")
    ours = {}
    worst = 0.0
    for i, name in enumerate(gm["names"]):
        k = int(re.search(r"_rec(\d+)$", str(name)).group(1))
        if k not in ours:
            ours[k] = shard[k].human_map()
        rho = metrics.spearman(_model_map(gm, i), ours[k])
        if np.isnan(gm["spearman"][i]):
            assert rho is None, name
        else:
            worst = max(worst, abs(rho - gm["spearman"][i]))
    assert worst <= 1e-6


def test_dataset_score_over_finite_cases(gm, cases):
    rhos = [metrics.spearman(_model_map(gm, i), gm["human_maps"][i]) for i in range(len(gm["names"]))]
    s = metrics.summarise(rhos)
    assert s["n"] == 16 and s["n_undefined"] == 5 and s["n_defined"] == len(cases["summary"]["finite_case_names"])
    expected = cases["summary"]["alignment_score_finite_cases"]
    assert expected == pytest.approx(0.0015485297710129244, abs=0)
    assert abs(s["ceiling_normalised"] - expected) <= 1e-12
    assert abs(s["mean"] / metrics.HUMAN_CEILING - expected) <= 1e-12


def test_summarise_edge_cases():
    assert metrics.summarise([]) == {
        "n": 0, "n_defined": 0, "n_undefined": 0, "mean": None, "ceiling_normalised": None
    }
    s = metrics.summarise([None, float("nan"), 0.5, 0.25])
    assert (s["n"], s["n_defined"], s["n_undefined"]) == (4, 2, 2)
    assert s["mean"] == 0.375 and s["ceiling_normalised"] == 0.375 / 0.65753


def test_ceiling_normalised():
    assert metrics.HUMAN_CEILING == 0.65753
    assert metrics.ceiling_normalised(None) is None
    assert metrics.ceiling_normalised(0.65753) == 1.0


def test_spearman_agrees_with_scipy_on_random_maps_with_ties():
    rng = np.random.default_rng(11)
    for _ in range(5):
        a = np.round(rng.normal(size=(50, 40)), 1).astype(np.float32)  # many ties
        b = np.maximum(rng.normal(size=(50, 40)), 0).astype(np.float32)  # a large tie group at 0
        ref, _ = scipy.stats.spearmanr(a.ravel(), b.ravel())
        assert abs(metrics.spearman(a, b) - ref) <= 1e-12


def test_undefined_cases_return_none():
    h = np.random.default_rng(0).random((16, 16))
    assert metrics.spearman(np.full((16, 16), 0.3), h) is None
    assert metrics.spearman(h, np.zeros((16, 16))) is None
    inf = h.copy()
    inf[0, 0] = np.inf
    assert metrics.spearman(inf, h) is None
    nan = h.copy()
    nan[3, 3] = np.nan
    assert metrics.spearman(nan, h) is None
    assert metrics.dice_iou(nan, h) == (0.0, 0.0)
    assert metrics.dice_iou(np.full((16, 16), 0.3), h) == (0.0, 0.0)


def test_accepts_torch_tensors_and_rejects_mismatched_shapes():
    import torch

    h = np.random.default_rng(5).random((8, 8)).astype(np.float32)
    t = torch.from_numpy(h.copy()).requires_grad_(True)
    assert metrics.spearman(t, h) == 1.0
    with pytest.raises(ValueError, match="differ in size"):
        metrics.spearman(np.zeros((8, 9)), h)
    with pytest.raises(ValueError, match="top"):
        metrics.dice_iou(h, h, top=1.5)


@pytest.mark.parametrize("device", sorted({"cpu", TEST_DEVICE}))
def test_ranking_paths_agree_with_scipy_exactly(device):
    """The NumPy ranking (CPU) and the torch one (used on the models' GPU) give scipy's average ranks."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(3)
    low = rng.random((6, 1, 8, 8)).astype(np.float32) - 0.4
    rows = torch.nn.functional.interpolate(torch.from_numpy(low), size=(224, 224), mode="bilinear",
                                           align_corners=False).relu().reshape(6, -1).numpy()  # many ties at 0
    rows[5] = np.round(rows[5], 2)
    rows[4] -= 0.2  # negative values too
    want = np.stack([rankdata(r) - rankdata(r).mean() for r in rows])
    order, keys = metrics._sort_rows(rows)
    cpu = np.empty_like(want)
    np.put_along_axis(cpu, order.astype(np.intp), metrics._centred_at_sorted(keys), 1)
    np.testing.assert_array_equal(cpu, want)
    np.testing.assert_array_equal(metrics._key_values(keys), np.sort(rows, axis=1))
    np.testing.assert_array_equal(metrics._centred_ranks_torch(torch.from_numpy(rows).to(device)).cpu().numpy(),
                                  want)
    human = rows[0].reshape(224, 224)
    np.testing.assert_allclose(metrics.spearman_pairs(rows[None, 1:].reshape(1, 5, 224, 224), human[None],
                                                      device)[0],
                               metrics.spearman_many(rows[1:].reshape(5, 224, 224), human), rtol=0, atol=1e-12)


def _awkward_maps(rng, kind: int, n: int, k: int):
    """Model maps (n, k, ...) of one kind that ranking and thresholding must get right."""
    if kind == 0:  # CAM-like: upsampled, a plateau of ties at 0
        low = rng.random((n * k, 1, 7, 7)).astype(np.float32) - 0.4
        up = torch.nn.functional.interpolate(torch.from_numpy(low), size=(56, 56), mode="bilinear").relu()
        return up.numpy().reshape(n, k, 56, 56)
    if kind == 1:  # many tie groups, negative values
        return np.round(rng.normal(size=(n, k, 50, 40)), 1).astype(np.float32)
    if kind == 2:  # -0.0 beside 0.0: equal values that differ in their bits
        ms = np.where(rng.random((n, k, 50, 40)) < 0.5, np.float32(-0.0), np.float32(0.0)).astype(np.float32)
        ms[..., :10, :] = rng.normal(size=(n, k, 10, 40))
        return ms
    ms = rng.normal(size=(n, k, 50, 40)).astype(np.float32)  # degenerate maps beside ordinary ones
    ms[0, 0] = 0.3
    ms[-1, -1, 0, 0] = np.nan
    ms[n // 2, k // 2, 1, 1] = -np.inf
    return ms


@pytest.mark.parametrize("kind", range(4))
def test_score_pairs_equals_the_definitions(kind):
    """One sort per map gives scipy's rho and the reference's masks' Dice and IoU, bit for bit."""
    rng = np.random.default_rng(kind)
    for n, k in ((1, 1), (2, 3), (5, 2)):
        ms = _awkward_maps(rng, kind, n, k)
        hs = np.maximum(rng.normal(size=(n,) + ms.shape[2:]), 0).astype(np.float32)
        if kind == 3:
            hs[-1] = 1.0  # a constant human map
        got = metrics.score_pairs(ms, hs)
        assert metrics.spearman_pairs(ms, hs) == [[r for r, _, _ in row] for row in got]
        # the ranking used on the models' GPU: the same rho, run here on the test device
        rho_t, defined_t = metrics._spearman_torch(ms.reshape(n, k, -1), hs.reshape(n, -1), TEST_DEVICE)
        assert defined_t.tolist() == [[r is not None for r, _, _ in row] for row in got]
        np.testing.assert_allclose(rho_t[defined_t], [r for row in got for r, _, _ in row if r is not None],
                                   rtol=0, atol=1e-12)
        # ... and the top-pixel masks counted there: the reference's counts wherever the image's maps all rank
        _, _, counts = metrics._spearman_torch(ms.reshape(n, k, -1), hs.reshape(n, -1), TEST_DEVICE, 0.10)
        want = metrics._mask_counts(ms.reshape(n, k, -1), hs.reshape(n, -1), 0.10)
        for i in range(n):
            assert (counts[i] == want[i]).all() if defined_t[i].all() else (counts[i] == -1).all(), i
        overlaps = metrics.dice_iou_pairs(ms, hs)
        for i in range(n):
            for j in range(k):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # scipy warns about the constant maps
                    ref = scipy.stats.spearmanr(ms[i, j].ravel(), hs[i].ravel())[0] if np.isfinite(ms[i, j]).all() \
                        else np.nan  # what scipy makes of an infinite pixel is not the reference's "undefined"
                rho, dice, iou = got[i][j]
                assert rho is None if np.isnan(ref) else abs(rho - ref) <= 1e-12, (n, k, i, j)
                assert (dice, iou) == overlaps[i][j]


def test_device_masks_equal_the_reference_on_tied_and_tiny_maps():
    """The threshold computed on the device is numpy's percentile to the bit, so the masks are the reference's:
    random maps, maps of few distinct values (ties at the threshold), and maps of 1e-5 scale like raw CAMs."""
    rng = np.random.default_rng(7)
    for kind in range(3):
        for _ in range(20):
            shape = (3, 2, 224, 224)
            if kind == 0:
                ms = rng.random(shape)
            elif kind == 1:
                ms = np.round(rng.random(shape) * rng.integers(2, 40)) / 7
            else:
                ms = rng.standard_normal(shape) * 1e-5
            ms = ms.astype(np.float32)
            hs = np.round(rng.random((3, 224, 224)) * 30).astype(np.float32)
            n, k = shape[:2]
            _, defined, counts = metrics._spearman_torch(ms.reshape(n, k, -1), hs.reshape(n, -1), TEST_DEVICE, 0.10)
            assert defined.all()
            np.testing.assert_array_equal(counts, metrics._mask_counts(ms.reshape(n, k, -1), hs.reshape(n, -1),
                                                                       0.10))
