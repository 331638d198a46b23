"""Frozen DCLS kernels equal DCLS's own construction, and the cold-start shortcuts change nothing.

``dcls.construct_kernel`` scatters each tap onto its 4 cells instead of running DCLS's
``ConstructKernel2d`` (a dense product over every cell and tap). Every tap's contribution is the
same float expression DCLS evaluates; only the order in which a cell sums its taps (and, in v1, the
4 terms of a tap's normaliser) may differ. A reordered float32 sum of the few terms a cell receives
differs by a few units in the last place of the largest partial sum, so the bound used here is
``max|a - b| <= 1e-6 * max|b|``: about 8 float32 ulps (2**-23 = 1.19e-7) at the kernel's largest
magnitude. The measured worst case over these tests is about 3e-7; a tap on the wrong cell, a
missed normalisation or a swapped axis gives errors of order 1.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from dclsviz import checkpoints, dcls, models, zoo
from conftest import TEST_DEVICE

REL = 1e-6
DCLS_IDS = [e.id for e in zoo.entries() if e.dcls is not None]


def _assert_same_kernel(got: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert got.shape == ref.shape and got.dtype == ref.dtype and got.device == ref.device, what
    assert torch.equal(got.isfinite(), ref.isfinite()), f"{what}: non-finite cells differ"
    fin = ref.isfinite()
    a, b = got[fin], ref[fin]
    scale = float(b.abs().max()) if b.numel() else 0.0
    err = float((a - b).abs().max()) if b.numel() else 0.0
    assert err <= REL * scale, f"{what}: max|a-b| = {err:.3g} vs {REL} * {scale:.3g}"


def _layer(cin, cout, groups, count, dks, version, device=TEST_DEVICE):
    from DCLS.construct.modules import Dcls2d

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        layer = Dcls2d(cin, cout, kernel_count=count, padding=tuple(d // 2 for d in dks), dilated_kernel_size=dks,
                       groups=groups, version=version, use_implicit_gemm=False)
    finally:
        logging.disable(previous)
    return layer.to(device)


@pytest.mark.parametrize("id_", DCLS_IDS)
def test_every_zoo_recipe_freezes_to_dcls_own_kernels(id_):
    """Every DCLS layer of every study model (and the demo), with DCLS's random init, as ConstructKernel2d."""
    torch.manual_seed(0)
    entry = zoo.REGISTRY[id_]
    model = models.build(entry).to(TEST_DEVICE)
    layers = dcls.dcls_layers(model)
    assert layers
    for name, layer in layers:
        assert layer.version == entry.dcls.version
        _assert_same_kernel(dcls.dense_kernel(layer), dcls.reference_kernel(layer), f"{id_} {name}")


# (in, out, groups, count, dks): dense, grouped, depthwise and depthwise-multiplier layers; odd, even and
# non-square windows (v0 and v1 read the two axes of P the other way round, only visible when dks differs)
SHAPES = [(16, 24, 1, 5, (7, 7)), (12, 18, 3, 4, (5, 5)), (32, 32, 32, 34, (17, 17)), (8, 16, 8, 3, (4, 4)),
          (6, 10, 2, 6, (5, 9)), (10, 10, 10, 9, (8, 3))]


def _positions(shape, dks, generator):
    """Random positions with integers, taps exactly on each border, half beyond it and far outside."""
    p = torch.rand(shape, generator=generator) * (max(dks) + 6) - (max(dks) + 6) / 2
    specials = []
    for axis in (0, 1):
        for d in dks:
            lo, hi = -(d // 2), d - 1 - d // 2  # the first and last cell of a window of d
            specials += [lo, hi, lo - 0.5, hi + 0.5, lo - 1, hi + 1, lo - 0.25, hi + 0.75]
    specials += [0.0, 1.0, -1.0, 2.0, 1e3, -1e3, 3e7, -3e7, 1e30, -1e30, 0.5, -0.5]
    flat = p.view(-1)
    pick = torch.randperm(flat.numel(), generator=generator)[: flat.numel() // 2]
    flat[pick] = torch.tensor(specials)[torch.randint(len(specials), (pick.numel(),), generator=generator)]
    ints = torch.randperm(flat.numel(), generator=generator)[: flat.numel() // 8]
    flat[ints] = flat[ints].round()
    return p


@pytest.mark.parametrize("version", ["v0", "v1"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}g{s[2]}c{s[3]}k{s[4][0]}x{s[4][1]}")
def test_random_positions_on_and_beyond_the_border(shape, version):
    cin, cout, groups, count, dks = shape
    layer = _layer(cin, cout, groups, count, dks, version)
    g = torch.Generator().manual_seed(2 * SHAPES.index(shape) + (version == "v1"))
    with torch.no_grad():
        layer.P.copy_(_positions(layer.P.shape, dks, g))
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g))
    got, ref = dcls.dense_kernel(layer), dcls.reference_kernel(layer)
    _assert_same_kernel(got, ref, f"{shape} {version}")
    assert ref.abs().max() > 0  # the comparison is not between two empty kernels
    nhwc = dcls.dense_kernel(layer, channels_last=True)  # what a channels-last model freezes into
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and torch.equal(nhwc, got)


@pytest.mark.parametrize("version", ["v0", "v1"])
def test_one_tap_lands_where_dcls_puts_it(version):
    """v0 reads P[0] as the row offset, v1 as the column offset: one tap shows which cell each fills."""
    layer = _layer(1, 1, 1, 1, (5, 7), version)
    with torch.no_grad():
        layer.weight.fill_(2.0)
        layer.P.copy_(torch.tensor([1.0, -2.0]).view(2, 1, 1, 1))
    got = dcls.dense_kernel(layer)[0, 0]
    assert torch.equal(got, dcls.reference_kernel(layer)[0, 0])
    # v0: row 1 + 5//2, column -2 + 7//2; v1: column 1 + 5//2, row -2 + 7//2 (its P[0] takes dks[0]'s centre)
    row, col = {"v0": (3, 1), "v1": (1, 3)}[version]
    assert got.nonzero().tolist() == [[row, col]] and float(got[row, col]) == pytest.approx(2.0, abs=1e-6)


@pytest.mark.parametrize("version", ["v0", "v1"])
def test_non_finite_parameters_spoil_the_same_cells(version):
    """A NaN or infinite weight or position makes exactly the cells non-finite that DCLS's own kernel has."""
    layer = _layer(4, 6, 1, 5, (7, 7), version)
    with torch.no_grad():
        layer.weight[0, 0, 1] = float("nan")
        layer.weight[1, 2, 0] = float("inf")
        layer.P[0, 2, 1, 3] = float("nan")
        layer.P[1, 3, 0, 2] = float("inf")
        layer.P[0, 4, 3, 4] = -float("inf")
    got, ref = dcls.dense_kernel(layer), dcls.reference_kernel(layer)
    assert not ref.isfinite().all()
    _assert_same_kernel(got, ref, version)


def test_freeze_builds_the_kernel_on_the_layer_device_and_keeps_the_conv_exact():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=True)).to(TEST_DEVICE)
    dcls.apply_recipe(net, zoo.DclsRecipe(rule=zoo.CONV_3X3, dilated_kernel_size=7, kernel_count=5, version="v0"))
    net.to(TEST_DEVICE)
    live = net[0]
    kernel, bias = dcls.reference_kernel(live), live.bias.detach().clone()
    x = torch.randn(2, 16, 21, 21, device=TEST_DEVICE)
    with torch.no_grad():
        a = net(x)
        assert [n for n, _, _ in dcls.freeze(net)] == ["0"]
        b = net(x)
    conv = net[0]
    assert type(conv) is nn.Conv2d and conv.weight.device == x.device and torch.equal(conv.bias, bias)
    _assert_same_kernel(conv.weight.detach(), kernel, "frozen weight")
    assert (conv.stride, conv.padding, conv.groups) == ((2, 2), (3, 3), 1)
    assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max())


def test_layers_sharing_positions_freeze_each_with_its_own_weights():
    """A stage's layers share one P and so one set of taps; each kernel still comes from its own weights."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1))
    dcls.apply_recipe(net, zoo.DclsRecipe(rule=zoo.CONV_3X3, dilated_kernel_size=5, kernel_count=3, version="v1"))
    net.to(TEST_DEVICE)
    assert net[0].P is net[1].P and net[2].P is not net[1].P
    with torch.no_grad():
        net[1].P.uniform_(-3, 3)
    refs = [dcls.reference_kernel(m) for m in net]
    assert [n for n, _, _ in dcls.freeze(net)] == ["0", "1", "2"]
    for i, (m, ref) in enumerate(zip(net, refs)):
        _assert_same_kernel(m.weight.detach(), ref, f"layer {i}")
    assert not torch.equal(net[0].weight, net[1].weight)


@pytest.mark.parametrize("id_", ["convnext_tiny.dcls", "caformer_s18.dcls", "demo.dcls"])
def test_building_without_init_is_structurally_identical(id_):
    """``build(init=False)`` (the loading path) has the same classes, keys, shapes, shared P and repr."""
    entry = zoo.REGISTRY[id_]
    a, b = models.build(entry), models.build(entry, init=False)
    assert repr(a) == repr(b)
    assert [type(m) for m in a.modules()] == [type(m) for m in b.modules()]
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype for k in sa)

    def sharing(m):
        ps = [layer.P for _, layer in dcls.dcls_layers(m)]
        return [next(i for i, q in enumerate(ps) if q is p) for p in ps]

    assert sharing(a) == sharing(b) and len(set(sharing(a))) > 1
    # the uninitialised build becomes the initialised one through a strict load, bit for bit
    checkpoints.load_into(b, sa, entry)
    assert all(torch.equal(sa[k], v) for k, v in b.state_dict().items())


def _mapped(path: Path) -> bool:
    return str(path.resolve()) in Path("/proc/self/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see memory maps")
def test_zip_checkpoints_are_memory_mapped_and_legacy_ones_still_read(tmp_path):
    sd = {"w": torch.randn(64, 64), "n": torch.tensor(3)}
    zipped, legacy = tmp_path / "zip.pth", tmp_path / "legacy.pth"
    torch.save({"state_dict_ema": sd}, zipped)
    torch.save({"state_dict_ema": sd}, legacy, _use_new_zipfile_serialization=False)
    got = checkpoints.read_file(zipped)
    assert _mapped(zipped) and all(torch.equal(got["state_dict_ema"][k], v) for k, v in sd.items())
    old = checkpoints.read_file(legacy)
    assert not _mapped(legacy) and all(torch.equal(old["state_dict_ema"][k], v) for k, v in sd.items())
    del got


def test_mapping_keeps_the_allowlist(tmp_path):
    """A memory-mapped file is still read with the weights-only unpickler: no other global loads."""
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(2), "x": pickle.PickleError("not allowed")}, path)
    with pytest.raises(checkpoints.CheckpointMismatch, match="without running pickled code"):
        checkpoints.read_file(path)


def test_building_in_threads_hides_only_the_dcls_notice(caplog):
    """DCLS's per-layer conv2d notice is filtered out; other warnings stay on, however builds interleave."""
    import logging
    import threading

    from dclsviz import models, zoo

    with caplog.at_level(logging.WARNING):
        threads = [threading.Thread(target=models.build, args=(zoo.get("demo", "dcls"),)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        logging.warning("a warning of our own")
    assert logging.root.manager.disable == 0
    messages = [r.getMessage() for r in caplog.records]
    assert "a warning of our own" in messages
    assert not [m for m in messages if "conv2d" in m or "ImplicitGEMM" in m], messages


def test_finite_weights_that_overflow_in_a_frozen_kernel_are_refused(tmp_path):
    """Finite weights and positions prove a kernel finite only under the bound count * max|w|: weights near
    float's maximum whose taps all land on one cell sum to infinity, and the load names that layer."""
    from safetensors.torch import load_file, save_file

    entry = zoo.get("demo", "dcls")
    sd = load_file(str(zoo.ASSETS / entry.checkpoint.bundled))
    sd["layer1.0.conv2.weight"].fill_(1e38)
    sd["layer1.0.conv2.P"].zero_()  # every tap of every pair on the centre cell: 5 * 1e38 = inf
    save_file(sd, str(tmp_path / "overflow.safetensors"))
    with pytest.raises(checkpoints.CheckpointNotFinite, match=r"after loading.*'layer1\.0\.conv2\.weight'"):
        models.load(entry, tmp_path / "overflow.safetensors", device="cpu")

    sd["layer1.0.conv2.weight"].fill_(1e37)  # 5e37: within the bound, so proven finite, and it is
    net = models.build(entry, init=False)
    checkpoints.load_into(net, sd, entry)
    frozen = {name: (k, proven) for name, k, proven in dcls.freeze(net)}
    kernel, proven = frozen["layer1.0.conv2"]
    assert proven and bool(torch.isfinite(kernel).all()) and float(kernel.max()) == pytest.approx(5e37, rel=1e-6)
