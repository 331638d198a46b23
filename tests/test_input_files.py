"""Files and values a user hands over, judged before they cost anything: .npy maps and input tensors by their
header, non-finite weights at load time, non-finite inputs and logits at run time, indices and targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.lib import format as npy_format

from dclsviz import checkpoints, images, limits, models, zoo
from dclsviz.compare import Sample, explain_batch, prepare_inputs
from dclsviz.ui import service


def forged_npy(path, shape, descr="<f4", body=b"\0" * 64, version=(1, 0)):
    """A real .npy header claiming ``shape``, followed by a tiny body: what a hostile upload looks like."""
    with open(path, "wb") as f:
        header = {"descr": descr, "fortran_order": False, "shape": shape}
        if version == (1, 0):
            npy_format.write_array_header_1_0(f, header)
        else:
            npy_format.write_array_header_2_0(f, header)
        f.write(body)
    return path


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_npy_claiming_ten_billion_values_is_refused_without_allocating(tmp_path, version):
    path = forged_npy(tmp_path / "huge.npy", (100_000, 100_000), version=version)
    with pytest.raises(images.ImageError, match=r"100000×100000 pixels \(10000 MP\); the limit is 40 MP"):
        images.load_map(path)


def test_npy_over_the_pixel_limit_gets_the_images_message(tmp_path):
    # a real, sparse 7000×7000 float32 file: the header and the length are those of a genuine array
    path = tmp_path / "big.npy"
    m = npy_format.open_memmap(path, mode="w+", dtype=np.float32, shape=(7000, 7000))
    m[0, 0] = 1.0
    del m
    with pytest.raises(images.ImageError) as e:
        images.load_map(path)
    assert str(e.value) == "the human map is 7000×7000 pixels (49 MP); the limit is 40 MP. Please downscale it."
    with pytest.raises(service.UserError, match=r"^human map: the human map is 7000×7000 pixels"):
        service.load_human_file(str(path))


@pytest.mark.parametrize("shape, descr, message", [
    ((10**10,), "<f4", "must be a 2-D array"),
    ((64, 64, 5), "<f4", "at most 4 channels"),
    ((2, 3, 4, 5), "<f4", "must be a 2-D array"),
    ((64, 1), "<f4", "must be a 2-D image"),
    ((64, 64), "|O", r"a numeric \(integer or float\) array is needed"),
    ((64, 64), "<c8", r"a numeric \(integer or float\) array is needed"),
    ((64, 64), [("a", "<f4")], r"a numeric \(integer or float\) array is needed"),
])
def test_npy_of_the_wrong_kind_is_refused_by_its_header(tmp_path, shape, descr, message):
    path = forged_npy(tmp_path / "m.npy", shape, descr)
    with pytest.raises(images.ImageError, match=message):
        images.load_map(path)


def test_npy_shorter_than_its_header_claims(tmp_path):
    path = forged_npy(tmp_path / "short.npy", (100, 100), body=b"\0" * 400)
    with pytest.raises(images.ImageError, match=r"short.npy: the file is truncated: its header describes a "
                                                r"100×100 float32 array of 40,000 bytes, but only 400 bytes follow"):
        images.load_map(path)


def test_npy_that_is_not_npy(tmp_path):
    path = tmp_path / "junk.npy"
    path.write_bytes(b"PK\x03\x04 a zip, not an array")
    with pytest.raises(images.ImageError, match="junk.npy: not a readable .npy array"):
        images.load_map(path)


def test_a_good_npy_map_still_loads(tmp_path):
    a = np.arange(48 * 64, dtype=np.uint16).reshape(48, 64)
    np.save(tmp_path / "ok.npy", a)
    np.save(tmp_path / "rgb.npy", np.stack([a, a, a], axis=2).astype(np.float64))
    assert np.array_equal(images.load_map(tmp_path / "ok.npy"), a.astype(np.float32))
    assert images.load_map(tmp_path / "rgb.npy").shape == (48, 64)


@pytest.mark.parametrize("shape", [(3, 1, 1), (1, 3, 8, 224), (4, 224, 224), (2, 3, 32, 32), (224, 224)])
def test_input_tensor_shape_rule(tmp_path, shape):
    np.save(tmp_path / "x.npy", np.zeros(shape, np.float32))
    with pytest.raises(images.ImageError, match=r"\(1,3,H,W\) or \(3,H,W\) array with H, W ≥ 16, not shape"):
        images.load_input_tensor(tmp_path / "x.npy")


def test_input_tensor_values(tmp_path):
    np.save(tmp_path / "nan.npy", np.full((1, 3, 32, 32), np.nan, np.float32))
    with pytest.raises(images.ImageError, match="nan.npy: the input tensor holds NaN/inf"):
        images.load_input_tensor(tmp_path / "nan.npy")
    np.save(tmp_path / "big.npy", np.full((3, 32, 32), 1e300))  # finite float64, inf as float32
    with pytest.raises(images.ImageError, match="NaN/inf"):
        images.load_input_tensor(tmp_path / "big.npy")
    np.save(tmp_path / "ints.npy", np.ones((1, 3, 20, 30), np.int16))
    x = images.load_input_tensor(tmp_path / "ints.npy")
    assert x.shape == (3, 20, 30) and x.dtype == np.float32 and x.flags.c_contiguous
    with pytest.raises(images.ImageError, match="pixels"):
        images.load_input_tensor(forged_npy(tmp_path / "wide.npy", (1, 3, 7000, 7000)))


@pytest.fixture(scope="module")
def demo_dcls():
    return models.load(zoo.get("demo", "dcls"), device="cpu")


def test_checkpoint_with_one_nan_weight_is_refused_naming_the_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    entry = zoo.get("demo", "dcls")
    sd = load_file(str(zoo.ASSETS / entry.checkpoint.bundled))
    key = sorted(k for k, v in sd.items() if v.is_floating_point())[3]
    sd[key].view(-1)[sd[key].numel() // 2] = float("nan")
    save_file(sd, str(tmp_path / "broken.safetensors"))
    with pytest.raises(checkpoints.CheckpointNotFinite) as e:
        models.load(entry, tmp_path / "broken.safetensors", device="cpu")
    assert f"tensor {key!r}" in str(e.value) and "broken.safetensors" in str(e.value)
    assert "1 NaN/inf value" in str(e.value) and isinstance(e.value, checkpoints.CheckpointError)


def test_finiteness_check_catches_inf_and_names_the_first(tmp_path):
    ts = [("a", torch.zeros(3)), ("steps", torch.tensor(7)), ("b", torch.tensor([1.0, float("inf")])),
          ("c", torch.tensor([float("nan")], dtype=torch.float64))]
    with pytest.raises(checkpoints.CheckpointNotFinite, match=r"here: tensor 'b' \(2,\) holds 1 NaN/inf"):
        models.check_finite(ts, "here")
    models.check_finite([("big", torch.tensor([1e300], dtype=torch.float64))], "finite float64 beyond float32")


def test_nan_input_tensor_and_non_finite_logits_are_named(demo_dcls):
    nan = Sample(np.zeros((128, 128, 3), np.uint8), name="x.npy",
                 input_tensor=torch.full((3, 128, 128), float("nan")))
    with pytest.raises(ValueError, match="the input tensor of sample x.npy holds NaN/inf"):
        prepare_inputs([nan], demo_dcls.entry.transform)
    huge = Sample(np.zeros((128, 128, 3), np.uint8), name="huge.npy",
                  input_tensor=torch.full((3, 128, 128), 3e38))
    with pytest.raises(ValueError, match=r"model demo.dcls produced non-finite logits for sample huge.npy"):
        explain_batch(demo_dcls, [huge], "pred")


@pytest.mark.parametrize("index", ["inf", "1e400", "3.9", "-1", "٣", "0x10", "3 4", "1" * 40, float("inf"), 3.5])
def test_record_index_takes_plain_ascii_integers_only(index):
    with pytest.raises(service.UserError, match=r"record index \(a whole number or 'random'\)"):
        service.parse_index(index, 10)


def test_record_index_range_and_good_values():
    assert service.parse_index("3", 10) == 3 and service.parse_index(" 9 ", 10) == 9
    assert service.parse_index(3.0, 10) == 3 and 0 <= service.parse_index("random", 10) < 10
    with pytest.raises(service.UserError, match="choose an index from 0 to 9"):
        service.parse_index("10", 10)
    with pytest.raises(service.UserError, match="choose an index from 0 to 9"):
        service.parse_index(-1, 10)
    with pytest.raises(service.UserError, match="the shard holds no records"):
        service.parse_index("random", 0)


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), -0.1, 1.01, "x", None])
def test_threshold_outside_the_unit_interval(threshold):
    with pytest.raises(service.UserError, match=r"threshold must lie in \[0, 1\]"):
        service.check_settings(threshold, "paper")
    assert service.check_settings("0.5", "paper") == 0.5


def test_target_digits_are_ascii_and_names_are_bounded():
    assert service.target_spec("3", "convnext_tiny") == 3
    for bad in ("٣", "３"):  # Arabic-Indic and fullwidth three
        with pytest.raises(service.UserError, match="not a class name"):
            service.target_spec(bad, "convnext_tiny")
    with pytest.raises(service.UserError, match=f"the limit is {limits.MAX_TARGET_CHARS}"):
        service.target_spec("x" * 5000, "convnext_tiny")
    with pytest.raises(service.UserError, match="outside 0..999"):
        service.target_spec("9" * 100, "convnext_tiny")
