"""The attribution methods against pytorch-grad-cam 1.5.7, one model of every family, and the CAM layer option.

For each method, our map at the layer's resolution equals, up to a positive factor, the package's
``get_cam_image`` followed by ``max(·, 0)`` (what its ``compute_cam_per_layer`` does before resizing), for the
same model, layer, input and target class. Both maps are divided by their maximum and compared within 1e-4.
The reference runs on a contiguous copy of the model with parameter gradients on (the package needs them;
on CPU a full backward through the frozen channels_last FastViT DCLS corrupts torch's heap).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dclsviz import methods, models, zoo
from dclsviz.cam import CamEngine
from conftest import TEST_DEVICE
import kit_data
from kit_data import kit_input

# the smallest model of each family, and the demo
FAMILIES = ["convnext_tiny.dcls", "caformer_s18.baseline", "fastvit_sa24.dcls", "resnet50.baseline", "demo.dcls"]
NEW = tuple(n for n in methods.ONE_PASS if n not in methods.PAPER)


def _peer_classes():
    from pytorch_grad_cam import (EigenGradCAM, GradCAM, GradCAMElementWise, GradCAMPlusPlus, HiResCAM, LayerCAM,
                                  XGradCAM)

    return {"gradcam": GradCAM, "hirescam": HiResCAM, "gradcam_elementwise": GradCAMElementWise,
            "xgradcam": XGradCAM, "gradcampp": GradCAMPlusPlus, "layercam": LayerCAM, "eigengradcam": EigenGradCAM}


def _model_and_input(id_, fake, kit, channels_last=None):
    arch, variant = id_.rsplit(".", 1)
    entry = zoo.get(arch, variant)
    if arch == "demo":
        lm = models.load(entry, device=TEST_DEVICE, channels_last=channels_last)
        x = torch.from_numpy(kit_input("input_224.npy"))[..., 48:176, 48:176].contiguous()
        return lm, x, int(CamEngine(lm).explain(x).targets[0])
    man = fake.load_manifest(str(kit / "manifests" / f"{id_}.json"))
    lm = models.load(entry, state_dict=fake.make_state_dict(man, 0), device=TEST_DEVICE,
                     channels_last=channels_last)
    g = kit_data.golden(id_)
    return lm, torch.from_numpy(kit_input(str(g["input_file"]))), int(g["target_class"])


def peer_lowres(ref: models.LoadedModel, layer: str, x: torch.Tensor, target: int) -> dict[str, np.ndarray]:
    """Every method's map by pytorch-grad-cam: one forward and backward of the package, then each class's
    ``get_cam_image`` on that pass's activations and gradients, then ``max(·, 0)``."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    classes = _peer_classes()
    module = ref.model.get_submodule(layer)
    targets = [ClassifierOutputTarget(target)]
    x = x.to(ref.device)
    with classes["gradcam"](model=ref.model, target_layers=[module]) as cam:
        cam(input_tensor=x, targets=targets)
        a = cam.activations_and_grads.activations[0].numpy()
        g = cam.activations_and_grads.gradients[0].numpy()
    out = {}
    for name, cls in classes.items():
        with cls(model=ref.model, target_layers=[module]) as cam:
            out[name] = np.maximum(cam.get_cam_image(x, module, targets, a, g, False), 0)[0]
    return out


def _assert_equal_up_to_scale(ours: np.ndarray, peer: np.ndarray, what: str) -> None:
    assert ours.shape == peer.shape, what
    top = float(peer.max())
    if top == 0:  # the package's map is zero everywhere: ours must be too
        assert float(np.abs(ours).max()) == 0, what
        return
    assert float(ours.max()) > 0, what
    diff = np.abs(ours / ours.max() - peer / top).max()
    assert diff <= 1e-4, f"{what}: max difference {diff:.3g} of the maximum"


@pytest.mark.parametrize("id_", FAMILIES)
def test_every_method_equals_pytorch_grad_cam(id_, fake, kit):
    lm, x, target = _model_and_input(id_, fake, kit)
    ours = CamEngine(lm).explain(x, target, methods=methods.ONE_PASS)
    assert set(ours.lowres) == set(methods.ONE_PASS) and set(ours.maps) == set(methods.ONE_PASS)
    ref = _model_and_input(id_, fake, kit, channels_last=False)[0]
    ref.model.requires_grad_(True)
    peer = peer_lowres(ref, lm.entry.cam_layer, x, target)
    for name in ("gradcam", *NEW):
        _assert_equal_up_to_scale(ours.lowres[name][0], peer[name], f"{id_} {name}")
    # the extra methods leave the paper's two as they were
    alone = CamEngine(lm).explain(x, target)
    assert np.array_equal(alone.gradcam, ours.gradcam) and np.array_equal(alone.threshold_gradcam,
                                                                          ours.threshold_gradcam)
    assert set(alone.lowres) == set(methods.PAPER)


def test_methods_differ_where_their_definitions_do():
    """On random A and G each formula gives its own map: no method silently falls back to another. A takes
    both signs (after a GELU or in a MetaFormer it does): for A >= 0 element-wise Grad-CAM equals LayerCAM."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 6, 5, 5, generator=g) + 0.5
    grad = torch.randn(2, 6, 5, 5, generator=g)
    maps = methods.compute(methods.ONE_PASS, a, grad, 0.3)
    assert all(m.shape == (2, 5, 5) and float(m.min()) >= 0 for m in maps.values())
    flat = {n: (m / m.amax((1, 2), keepdim=True)).flatten() for n, m in maps.items()}
    for i, p in enumerate(methods.ONE_PASS):
        for q in methods.ONE_PASS[i + 1:]:
            assert not torch.allclose(flat[p], flat[q], atol=1e-3), (p, q)
    # HiResCAM by hand: the element-wise product summed over channels, then the ReLU
    assert torch.allclose(maps["hirescam"], (grad * a).mean(1).relu(), atol=1e-7)


def test_parse():
    assert methods.parse(None) == methods.PAPER
    assert methods.parse("layercam,gradcam") == ("gradcam", "layercam")
    assert methods.parse("all") == methods.ONE_PASS and len(methods.ONE_PASS) == 8
    assert methods.parse("scorecam,all") == methods.NAMES and methods.NAMES[-1] == "scorecam"
    assert methods.REGISTRY["scorecam"].costly and not any(methods.REGISTRY[n].costly for n in methods.ONE_PASS)
    with pytest.raises(ValueError, match="unknown method.*nope.*choose from gradcam"):
        methods.parse("gradcam,nope")


def test_layer_option_and_its_errors():
    lm = models.load(zoo.get("demo", "baseline"), device=TEST_DEVICE)
    x = torch.from_numpy(kit_input("input_224.npy"))[..., :128, :128].contiguous()
    study = CamEngine(lm).explain(x, 1)
    assert study.gradcam_lowres.shape[1:] == (8, 8)
    earlier = CamEngine(lm, layer="layer3").explain(x, 1, methods=("gradcam", "layercam"))
    assert earlier.lowres["layercam"].shape[1:] == (8, 8) and not np.array_equal(earlier.gradcam, study.gradcam)
    assert CamEngine(lm, layer="layer2").explain(x, 1).gradcam_lowres.shape[1:] == (16, 16)
    with pytest.raises(ValueError, match=r"no layer 'layer5'.*layer4.*the study's: layer4"):
        CamEngine(lm, layer="layer5")
    # a module whose output is not (B, C, h, w): the message lists the valid layers near the name
    with pytest.raises(ValueError, match=r"'fc' outputs \(1, 8\), not \(B, C, h, w\); valid CAM layers"):
        CamEngine(lm, layer="fc").explain(x, 1)


# Score-CAM runs one forward per channel: the demo at its CAM layer (512 channels at 128 px), and a study model
# at an early layer (caformer_s18's stages.0: 64 channels; its CAM layer's 512 take minutes on 2 cores)
@pytest.mark.parametrize("id_, layer", [("demo.dcls", None), ("caformer_s18.baseline", "stages.0")])
def test_scorecam_equals_pytorch_grad_cam(id_, layer, fake, kit):
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    lm, x, target = _model_and_input(id_, fake, kit)
    ours = CamEngine(lm, layer).explain(x, target, methods=("scorecam",))
    assert set(ours.lowres) == {*methods.PAPER, "scorecam"}
    ref = _model_and_input(id_, fake, kit, channels_last=False)[0]
    module = ref.model.get_submodule(layer or lm.entry.cam_layer)
    targets = [ClassifierOutputTarget(target)]
    xr = x.to(ref.device)
    captured = {}
    handle = module.register_forward_hook(lambda _m, _i, out: captured.setdefault("a", out.detach()))
    with torch.no_grad():
        ref.model(xr)
    handle.remove()
    with ScoreCAM(model=ref.model, target_layers=[module]) as cam:
        peer = np.maximum(cam.get_cam_image(xr, module, targets, captured["a"].cpu().numpy(), None, False), 0)[0]
    _assert_equal_up_to_scale(ours.lowres["scorecam"][0], peer, f"{id_} scorecam")
