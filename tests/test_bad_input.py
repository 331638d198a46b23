"""Bad and unusual inputs: each gets a clear message (an error, or a note when it can be converted), and
the server answers the next request normally."""

from __future__ import annotations

import numpy as np
import pytest
from gradio_client.exceptions import AppError
from PIL import Image

pytest.register_assert_rewrite("app_fixtures")
from app_fixtures import EXAMPLES, MAPS, VARIANTS, bad_photo, blob_map, compare, write_map

pytest_plugins = ["app_fixtures"]


def still_serving(client) -> None:
    manifest, _, _ = compare(client, source="clickme", index=0)
    assert manifest["models"]["dcls"]["scores"]["gradcam"]["spearman"] is not None


def error_of(client, **kwargs) -> str:
    with pytest.raises(AppError) as e:
        compare(client, **kwargs)
    return str(e.value)


@pytest.mark.parametrize("kind, message", [
    ("text_as_jpg", "notes.jpg is not an image"),
    ("truncated_jpeg", "damaged or truncated"),
    ("one_pixel_png", "only 1×1 pixels"),
    ("enormous_png", "too large"),
])
def test_unusable_photo_is_refused_with_a_reason(client, tmp_path, kind, message):
    msg = error_of(client, source="upload", image=bad_photo(kind, tmp_path))
    assert message in msg and msg.startswith("photo:"), msg
    still_serving(client)


@pytest.mark.parametrize("kind, note", [
    ("png16", "16-bit image: scaled to 8 bits"),
    ("cmyk_jpeg", "CMYK image: converted to RGB"),
    ("rgba_png", "transparent image: composited on white"),
    ("animated_gif", "animated image: using the first of 3 frames"),
])
def test_convertible_photo_is_used_and_the_conversion_said(client, tmp_path, kind, note):
    manifest, images, _ = compare(client, source="upload", image=bad_photo(kind, tmp_path))
    assert any(note in n for n in manifest["notes"]), manifest["notes"]
    assert all(manifest["models"][v]["top5"] for v in VARIANTS) and images["dcls_gradcam"]
    still_serving(client)


@pytest.mark.parametrize("level", [0, 200])
def test_constant_human_map_gives_undefined_rho_and_says_why(client, tmp_path, level):
    w, h = Image.open(EXAMPLES[0]).size
    flat = write_map(tmp_path / "flat.png", np.full((h, w), level, np.uint8))
    manifest, _, _ = compare(client, source="upload", image=EXAMPLES[0], human=flat)
    assert manifest["has_human_map"]
    assert any("constant" in n and "Spearman" in n for n in manifest["notes"]), manifest["notes"]
    assert all(manifest["models"][v]["scores"][m]["spearman"] is None for v in VARIANTS for m in MAPS)
    assert manifest["delta_spearman"] == {m: None for m in MAPS}
    still_serving(client)


def test_human_map_of_another_size_is_resampled_and_said(client, tmp_path):
    w, h = Image.open(EXAMPLES[0]).size
    small = write_map(tmp_path / "small.png", blob_map(90, 40))
    manifest, _, _ = compare(client, source="upload", image=EXAMPLES[0], human=small)
    assert any(f"90×40 and the photo {w}×{h}" in n and "resampled" in n and "stretching" in n
               for n in manifest["notes"]), manifest["notes"]
    assert all(manifest["models"][v]["scores"][m]["spearman"] is not None for v in VARIANTS for m in MAPS)
    still_serving(client)


def test_human_map_that_is_not_an_image(client, tmp_path):
    junk = tmp_path / "map.png"
    junk.write_bytes(b"\x00\x01 definitely not a png")
    msg = error_of(client, source="upload", image=EXAMPLES[0], human=junk)
    assert msg.startswith("human map:") and "not an image" in msg, msg
    still_serving(client)


def test_missing_photo_and_bad_parameters(client):
    assert "upload a photo first" in error_of(client, source="upload")
    assert "choose an index from 0 to" in error_of(client, index=10**6)
    assert "whole number or 'random'" in error_of(client, index="seven")
    assert "unknown shard" in error_of(client, shard="../../etc/passwd")
    assert "not a class name of this model" in error_of(client, target="giraffe")
    assert "unknown architecture" in error_of(client, arch="vgg16")
    assert "threshold must lie in [0, 1]" in error_of(client, threshold=1.5)
    still_serving(client)


def test_random_index_picks_a_record(client):
    manifest, _, _ = compare(client, index="random")
    assert manifest["sample"].rsplit(":", 1)[1].isdigit()


def test_missing_paper_checkpoint_says_how_to_get_it_and_offers_the_demo(client):
    msg = error_of(client, arch="convnext_tiny")
    for part in ("convnext_tiny_1k_224_ema.pth", "https://dl.fbaipublicfiles.com/convnext/",
                 "DCLSVIZ_CHECKPOINT_DIR", "--checkpoint-dir", "demo"):
        assert part in msg, (part, msg)
    still_serving(client)


def forged_npy(path, shape, descr="<f4"):
    """A real .npy header claiming ``shape`` over a 64-byte body: nothing of that size should ever be allocated."""
    from numpy.lib import format as npy_format

    with open(path, "wb") as f:
        npy_format.write_array_header_1_0(f, {"descr": descr, "fortran_order": False, "shape": shape})
        f.write(b"\0" * 64)
    return path


@pytest.mark.parametrize("shape, message", [
    ((100_000, 100_000), "100000×100000 pixels (10000 MP); the limit is 40 MP"),
    ((7000, 7000), "7000×7000 pixels (49 MP); the limit is 40 MP"),
    ((10**10,), "must be a 2-D array"),
])
def test_npy_human_map_is_judged_by_its_header(client, app_server, tmp_path, shape, message):
    msg = error_of(client, source="upload", image=EXAMPLES[0], human=forged_npy(tmp_path / "map.npy", shape))
    assert msg.startswith("human map:") and message in msg, msg
    assert "MemoryError" not in app_server.log.read_text(errors="replace")
    still_serving(client)


@pytest.mark.parametrize("index", ["inf", "1e400", "3.9", "-1", "٣", "0x10"])
def test_record_index_must_be_plain_ascii_digits(client, index):
    msg = error_of(client, index=index)
    assert "the record index (a whole number or 'random') must be a whole number written with the digits 0-9" \
        in msg and repr(index) in msg, msg
    assert "internal error" not in msg
    manifest, _, _ = compare(client, index="3")
    assert manifest["sample"].endswith(":3")


def test_target_in_other_digits_is_not_class_three(client):
    msg = error_of(client, target="٣")
    assert msg.startswith("target:") and "not a class name of this model" in msg, msg
    manifest, _, _ = compare(client, target="3")
    assert manifest["models"]["dcls"]["target"] == 3 and manifest["target"] == 3


# NaN cannot travel in the client's JSON at all; check_settings refuses it (tests/test_input_files.py)
@pytest.mark.parametrize("threshold", [-0.5, 1e300])
def test_threshold_outside_the_unit_interval_through_the_api(client, threshold):
    assert "threshold must lie in [0, 1]" in error_of(client, threshold=threshold)


def test_expected_errors_log_one_line_without_a_traceback(client, app_server):
    start = len(app_server.log.read_text(errors="replace"))
    assert "whole number or 'random'" in error_of(client, index="seven")
    assert "upload a photo first" in error_of(client, source="upload")
    assert "checkpoints are not available" in error_of(client, arch="convnext_tiny")
    logged = app_server.log.read_text(errors="replace")[start:]
    assert "Traceback" not in logged, logged
    refused = [line for line in logged.splitlines() if "dclsviz.ui: refused: " in line]
    assert len(refused) == 3 and "urllib3" not in logged, logged
