"""/compare with other attribution methods, faithfulness and another CAM layer: the real app against the CLI."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

pytest.register_assert_rewrite("app_fixtures")
from app_fixtures import DEMO_SHARD, MAPS, VARIANTS, cli_pair, compare

from dclsviz import methods

pytest_plugins = ["app_fixtures"]

EXTRA = ("hirescam", "layercam")


def test_extra_methods_and_faithfulness_equal_the_cli(client, tmp_path):
    manifest, images, bundle = compare(client, index=2, methods=",".join(("gradcam", *EXTRA)), faithfulness=True)
    reference = cli_pair(["--clickme", f"{DEMO_SHARD}:2", "--methods", ",".join(("gradcam", *EXTRA)),
                          "--faithfulness"], tmp_path)
    for v in VARIANTS:
        got, want = manifest["models"][v], reference[v]["models"][v]
        assert list(got["scores"]) == ["gradcam", *EXTRA]
        for m in ("gradcam", *EXTRA):
            assert got["scores"][m]["spearman"] == pytest.approx(want["scores"][m]["spearman"], abs=1e-6)
            assert set(got["faithfulness"][m]) == {"deletion", "insertion", "road"}
            for k, value in got["faithfulness"][m].items():
                assert value == pytest.approx(want["faithfulness"][m][k], abs=1e-5), (v, m, k)
    # Δρ for every method asked; the paper's Threshold-Grad-CAM was not asked: no picture of it
    assert set(manifest["delta_spearman"]) == {"gradcam", *EXTRA}
    assert images["baseline_gradcam"] and images["dcls_gradcam"]
    assert images["baseline_threshold_gradcam"] is None and images["dcls_threshold_gradcam"] is None
    # the bundle holds every method's maps, equal to the CLI's
    with zipfile.ZipFile(bundle) as z:
        for v in VARIANTS:
            for m in EXTRA:
                ours = np.load(io.BytesIO(z.read(f"{v}_{m}.npy")))
                np.testing.assert_allclose(ours, np.load(tmp_path / v / f"{m}.npy"), atol=1e-6)
        assert json.loads(z.read("manifest.json"))["models"]["dcls"]["faithfulness"].keys() == {"gradcam", *EXTRA}


def test_all_methods_and_the_default(client):
    every, _, _ = compare(client, index=1, methods="all")
    assert list(every["models"]["dcls"]["scores"]) == list(methods.ONE_PASS)
    default, _, _ = compare(client, index=1)
    assert list(default["models"]["dcls"]["scores"]) == list(MAPS)
    assert "faithfulness" not in default["models"]["dcls"]
    # the paper's two are the same whatever else is computed with them
    for m in MAPS:
        assert every["models"]["dcls"]["scores"][m] == default["models"]["dcls"]["scores"][m]


def test_another_cam_layer(client):
    manifest, _, _ = compare(client, index=1, layer="layer3")
    assert {manifest["models"][v]["cam_layer"] for v in VARIANTS} == {"layer3"}
    study, _, _ = compare(client, index=1)
    assert manifest["models"]["dcls"]["scores"] != study["models"]["dcls"]["scores"]


@pytest.mark.parametrize("options, says", [
    (dict(methods="gradcam,nope"), "unknown method(s) nope"),
    (dict(methods=",, ,"), "no method given"),
    (dict(methods="x" * 5000), "methods"),
    (dict(layer="layer9"), "valid CAM layers"),
    (dict(layer="fc"), "not (B, C, h, w)"),
    (dict(layer="s" * 500), "layer"),
])
def test_bad_methods_and_layers_are_said_and_the_server_keeps_running(app_server, client, options, says):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as e:
        compare(client, index=0, **options)
    assert says in str(e.value)
    assert "internal error" not in str(e.value)
    app_server.assert_alive()
    manifest, _, _ = compare(client, index=0)
    assert manifest["models"]["dcls"]["scores"]["gradcam"]["spearman"] is not None
