"""The human-map pipeline against the TF reference outputs of the ClickMe conformance kit."""

import numpy as np
import pytest
import simplejpeg
import torch
import torch.nn.functional as F

import kit_data
from dclsviz import human

N_RECORDS = 12


@pytest.fixture(scope="module")
def golden():
    return kit_data.clickme_golden()


def _jpeg(golden, kind: str, i: int) -> bytes:
    return golden[f"{kind}_jpeg_{i:02d}"].tobytes()


def test_blur_kernel_equals_reference(golden):
    assert human.BLUR_KERNEL.dtype == np.float32
    assert np.array_equal(human.BLUR_KERNEL, golden["blur_kernel"])
    # The even-size quirk of the reference puts the peak off-centre; a centred kernel would shift maps.
    assert np.unravel_index(np.argmax(human.BLUR_KERNEL), (10, 10)) == (4, 5)


@pytest.mark.parametrize("i", range(N_RECORDS))
def test_decode_is_bit_identical_to_tf(golden, i):
    image = human.decode_jpeg(_jpeg(golden, "image", i), gray=False)
    heat = human.decode_jpeg(_jpeg(golden, "heatmap", i), gray=True)
    assert image.dtype == np.uint8 and image.shape == (256, 256, 3)
    assert heat.dtype == np.uint8 and heat.shape == (256, 256)
    assert np.array_equal(image, golden["image_u8"][i])
    assert np.array_equal(heat, golden["heatmap_u8"][i, ..., 0])


@pytest.mark.parametrize("i", range(N_RECORDS))
def test_pipeline_stages_match_reference(golden, i):
    image224 = human.clickme_image_224(human.decode_jpeg(_jpeg(golden, "image", i), gray=False))
    assert image224.dtype == np.float32 and image224.shape == (224, 224, 3)
    np.testing.assert_allclose(image224, golden["image_224"][i], rtol=0, atol=1e-2)

    h64, blurred, h224 = human.human_map_stages(human.decode_jpeg(_jpeg(golden, "heatmap", i), gray=True))
    np.testing.assert_allclose(h64, golden["heatmap_64"][i, ..., 0], rtol=0, atol=1e-4)
    np.testing.assert_allclose(blurred, golden["heatmap_64_blur"][i, ..., 0], rtol=0, atol=5e-4)
    np.testing.assert_allclose(h224, golden["heatmap_224"][i, ..., 0], rtol=0, atol=1e-3)
    # The exact zeros form the largest tie group of the Spearman ranking, so they must not move.
    assert np.array_equal(h224 == 0, golden["heatmap_224"][i, ..., 0] == 0)

    end_to_end = human.human_map(golden["heatmap_u8"][i])
    assert end_to_end.dtype == np.float32 and end_to_end.shape == (224, 224)
    assert np.array_equal(end_to_end, h224)


def test_resizes_are_bit_exact_from_reference_inputs(golden):
    # All three resizes of the reference, each fed the golden input of its stage.
    for i in range(N_RECORDS):
        assert np.array_equal(
            human.tf_resize_bilinear(golden["image_u8"][i].astype(np.float32), (224, 224)), golden["image_224"][i]
        )
        assert np.array_equal(
            human.tf_resize_bilinear(golden["heatmap_u8"][i].astype(np.float32), (64, 64)), golden["heatmap_64"][i]
        )
        assert np.array_equal(human.tf_resize_bilinear(golden["heatmap_64_blur"][i], 224), golden["heatmap_224"][i])


def test_blur_from_reference_input(golden):
    worst = max(
        float(np.abs(human.blur_same(golden["heatmap_64"][i]) - golden["heatmap_64_blur"][i]).max())
        for i in range(N_RECORDS)
    )
    assert worst <= 5e-4


@pytest.mark.parametrize(
    "shape,size",
    [
        ((256, 256), (64, 64)),
        ((37, 91), (224, 224)),
        ((300, 200, 3), (224, 224)),
        ((5, 7, 2), (13, 3)),
        ((1, 1), (4, 4)),
    ],
)
def test_resize_agrees_with_torch_on_other_sizes(shape, size):
    # torch's bilinear without antialias uses the same half-pixel formulas, computed independently. Its
    # source coordinates round differently in float32 (an ulp of ~300 is 3e-5, times 255 levels), so a
    # formula error would show as whole levels while rounding stays below 1e-2.
    x = np.random.default_rng(sum(shape)).uniform(0, 255, size=shape).astype(np.float32)
    ours = human.tf_resize_bilinear(x, size)
    t = torch.from_numpy(x if x.ndim == 3 else x[..., None]).permute(2, 0, 1)[None]
    ref = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=False)[0].permute(1, 2, 0).numpy()
    ref = ref if x.ndim == 3 else ref[..., 0]
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-2)


def test_blur_agrees_with_torch_same_padding():
    x = np.random.default_rng(3).uniform(0, 255, size=(64, 64)).astype(np.float32)
    padded = F.pad(torch.from_numpy(x)[None, None], (4, 5, 4, 5))
    ref = F.conv2d(padded.double(), torch.from_numpy(human.BLUR_KERNEL.copy()).double()[None, None])[0, 0].numpy()
    np.testing.assert_allclose(human.blur_same(x), ref, rtol=0, atol=1e-4)
    assert human.blur_same(x[..., None]).shape == (64, 64, 1)


def test_user_maps_of_any_size_and_layout():
    rng = np.random.default_rng(7)
    gray = rng.integers(0, 256, size=(300, 180), dtype=np.uint8)
    base = human.human_map(gray)
    assert base.shape == (224, 224) and base.dtype == np.float32
    assert np.array_equal(human.human_map(gray[..., None]), base)
    # A grey map saved as RGB or RGBA keeps its values exactly.
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])
    assert np.array_equal(human.human_map(rgba[..., :3]), base)
    assert np.array_equal(human.human_map(rgba), base)
    # A colour map becomes BT.601 luminance.
    colour = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    luma = 0.299 * colour[..., 0].astype(np.float64) + 0.587 * colour[..., 1] + 0.114 * colour[..., 2]
    np.testing.assert_allclose(human.human_map(colour), human.human_map(luma.astype(np.float32)), atol=1e-4)
    # Float maps in 0..1, as a user might upload, go through the same path unchanged in scale.
    assert np.allclose(human.human_map(gray.astype(np.float32) / 255), base / 255, atol=1e-5)
    assert human.human_map(gray > 128).shape == (224, 224)


def test_image_224_accepts_gray_and_rgba():
    rgb = np.random.default_rng(1).integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    out = human.clickme_image_224(rgb)
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    assert np.array_equal(human.clickme_image_224(np.dstack([rgb, np.zeros_like(rgb[..., 0])])), out)
    g = human.clickme_image_224(rgb[..., 0])
    assert np.array_equal(g[..., 0], g[..., 2])


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros((0, 5)), "empty"),
        (np.array([[1.0, np.nan], [0.0, 2.0]]), "NaN"),
        (np.array([[1.0, np.inf], [0.0, 2.0]]), "infinite"),
        (np.zeros((4, 4, 2)), "heatmap of shape"),
        (np.zeros(16), "heatmap of shape"),
    ],
)
def test_human_map_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        human.human_map(bad)


def test_decode_rejects_corrupt_bytes(golden):
    data = _jpeg(golden, "image", 0)
    for bad in (b"", b"not a jpeg at all", data[: len(data) // 3]):
        with pytest.raises(ValueError, match="JPEG"):
            human.decode_jpeg(bad, gray=False)


def test_decode_gray_of_colour_jpeg_and_rgb_of_gray_jpeg():
    rgb = np.random.default_rng(2).integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    assert human.decode_jpeg(simplejpeg.encode_jpeg(rgb, quality=90), gray=True).shape == (32, 48)
    g = simplejpeg.encode_jpeg(rgb[..., :1].copy(), quality=90, colorspace="GRAY")
    assert human.decode_jpeg(g, gray=False).shape == (32, 48, 3)


@pytest.mark.parametrize("level", [0.0, 1.0, 255.0])
def test_a_constant_user_map_stays_constant_so_rho_is_undefined(level):
    from dclsviz import metrics

    raw = np.full((300, 200), level, np.float32)
    got = human.user_map(raw)
    assert got.shape == (224, 224) and got.dtype == np.float32 and np.all(got == level)
    # the reference pipeline would have made up a border-to-centre ranking out of nothing
    assert human.human_map(raw).min() < level or level == 0.0
    assert metrics.spearman(np.random.default_rng(0).random((224, 224)), got) is None


def test_a_user_map_with_content_goes_through_the_reference_pipeline():
    raw = np.zeros((120, 160), np.uint8)
    raw[30:70, 50:110] = 255
    np.testing.assert_array_equal(human.user_map(raw), human.human_map(raw))
