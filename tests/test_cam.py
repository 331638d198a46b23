"""The CAM engine's own guarantees: frozen DCLS equals live DCLS, threads do not mix, nothing leaks."""

from __future__ import annotations

import concurrent.futures
import threading

import numpy as np
import pytest
import torch

from dclsviz import dcls, models, zoo
from dclsviz.cam import CamEngine
from dclsviz.methods import combine
from conftest import TEST_DEVICE


@pytest.fixture(scope="module")
def live_and_frozen():
    torch.manual_seed(0)
    entry = zoo.get("convnext_tiny", "dcls")
    live = models.build(entry)
    frozen = models.load(entry, state_dict=live.state_dict(), device=TEST_DEVICE)
    return entry, live, frozen


def test_frozen_dcls_gives_the_live_logits(live_and_frozen):
    entry, live, frozen = live_and_frozen
    assert len(dcls.dcls_layers(live)) == 18 and not dcls.dcls_layers(frozen.model)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = live(x)
        b = frozen.model(x.to(frozen.device).contiguous(memory_format=torch.channels_last)).cpu()
    assert torch.allclose(a, b, rtol=0, atol=2e-5), (a - b).abs().max()
    assert torch.equal(a.argmax(1), b.argmax(1))


def test_freeze_is_exact_for_one_layer():
    """The frozen conv is DCLS's own F.conv2d call with the kernel built by scatter, bit for bit; that kernel
    equals DCLS's within float32 rounding, so the output equals the live layer's within it too
    (ResNet's strided 3x3 DCLS included)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False))
    dcls.apply_recipe(net, zoo.DclsRecipe(rule=zoo.CONV_3X3, dilated_kernel_size=7, kernel_count=5, version="v0"))
    x = torch.randn(1, 16, 20, 20)
    with torch.no_grad():
        a = net(x)
        kernel = dcls.dense_kernel(net[0])
        dcls.freeze(net)
        b = net(x)
    assert isinstance(net[0], torch.nn.Conv2d)
    assert torch.equal(b, torch.nn.functional.conv2d(x, kernel, None, 2, 3))
    assert float((a - b).abs().max()) <= 1e-6 * float(a.abs().max())


def test_positions_are_shared_per_stage(live_and_frozen):
    entry, live, _ = live_and_frozen
    ps = [m.P for _, m in dcls.dcls_layers(live)]
    groups = [len({id(p) for p in ps[a:b]}) for a, b in ((0, 3), (3, 6), (6, 15), (15, 18))]
    assert groups == [1, 1, 1, 1] and len({id(p) for p in ps}) == 4


def test_combine_is_the_study_formula():
    g = torch.Generator().manual_seed(3)
    a, grad = torch.rand(2, 5, 4, 4, generator=g), torch.randn(2, 5, 4, 4, generator=g)
    gradcam, thr = combine(a, grad, 0.3)
    w = grad.mean((2, 3))
    for i in range(2):
        ref = sum(w[i, c] * a[i, c] for c in range(5)) / 5
        assert torch.allclose(gradcam[i], ref.clamp_min(0), atol=1e-6)
        t = sum((w[i, c] * a[i, c]).clamp_min(0) for c in range(5)) / 5
        t = (t - t.min()) / (t.max() - t.min())
        assert torch.allclose(thr[i], t.clamp_min(0.3), atol=1e-6)
    # a constant weighted map has no min-max: the floor everywhere, never NaN
    _, flat = combine(torch.ones(1, 2, 3, 3), -torch.ones(1, 2, 3, 3), 0.3)
    assert torch.equal(flat, torch.full((1, 3, 3), 0.3))


def test_batch_equals_single_and_targets(live_and_frozen):
    _, _, frozen = live_and_frozen
    engine = CamEngine(frozen)
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    batch = engine.explain(x, [5, None, 7])
    assert batch.targets[0] == 5 and batch.targets[2] == 7 and batch.targets[1] == batch.logits[1].argmax()
    for i, t in enumerate([5, None, 7]):
        one = engine.explain(x[i:i + 1], t)
        np.testing.assert_allclose(one.gradcam[0], batch.gradcam[i], rtol=0, atol=1e-5 * one.gradcam.max() + 1e-12)
        np.testing.assert_allclose(one.threshold_gradcam[0], batch.threshold_gradcam[i], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="outside"):
        engine.explain(x[:1], 1000)


def test_nothing_leaks_across_calls(live_and_frozen):
    _, _, frozen = live_and_frozen
    engine = CamEngine(frozen)
    x = torch.randn(1, 3, 224, 224)
    r = engine.explain(x, 1)
    cam_module = frozen.cam_module
    assert not cam_module._forward_hooks
    assert all(p.grad is None and not p.requires_grad for p in frozen.model.parameters())
    assert isinstance(r.gradcam, np.ndarray)
    with torch.no_grad():  # an ordinary forward afterwards is untouched by CAM machinery
        y = frozen.model(x.to(frozen.device).contiguous(memory_format=torch.channels_last)).cpu()
    assert not y.requires_grad and torch.allclose(y[0], torch.from_numpy(r.logits[0]), atol=1e-5)


def test_two_threads_on_one_model(live_and_frozen):
    _, _, frozen = live_and_frozen
    engine = CamEngine(frozen)
    g = torch.Generator().manual_seed(4)
    inputs = [torch.rand(1, 3, 224, 224, generator=g) * 2 - 1 for _ in range(2)]
    targets = [3, 900]
    single = [engine.explain(x, t) for x, t in zip(inputs, targets)]
    rounds = 3
    barrier = threading.Barrier(len(inputs), timeout=120)

    def work(i):
        barrier.wait()  # both threads inside explain() at once
        return [engine.explain(inputs[i], targets[i]) for _ in range(rounds)]

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(inputs)) as pool:
        futures = [pool.submit(work, i) for i in range(len(inputs))]
        # result() re-raises a worker's exception here, so a failing worker fails the test
        results = [f.result(timeout=600) for f in futures]
    assert [len(r) for r in results] == [rounds] * len(inputs)
    for i, runs in enumerate(results):
        for r in runs:
            assert int(r.targets[0]) == targets[i]
            np.testing.assert_allclose(r.logits, single[i].logits, rtol=0, atol=1e-5)
            np.testing.assert_allclose(r.gradcam, single[i].gradcam, rtol=0,
                                       atol=1e-5 * float(single[i].gradcam.max()) + 1e-12)
            np.testing.assert_allclose(r.threshold_gradcam, single[i].threshold_gradcam, rtol=0, atol=1e-5)
    assert not frozen.cam_module._forward_hooks
