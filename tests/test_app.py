"""The app served by `app.py`, driven through gradio_client: its scores are the CLI's, sessions stay apart."""

from __future__ import annotations

import json
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

pytest.register_assert_rewrite("app_fixtures")
from app_fixtures import (DEMO_SHARD, EXAMPLES, MAPS, REPO, VARIANTS, assert_matches_cli, blob_map, cli_pair, compare,
                          make_client, write_map)

pytest_plugins = ["app_fixtures"]


def _png_224(path) -> np.ndarray:
    im = Image.open(path)
    assert im.format == "PNG" and im.size == (224, 224)
    return np.asarray(im.convert("RGB"))


def test_clickme_record_scores_equal_the_cli(client, tmp_path):
    manifest, images, bundle = compare(client, source="clickme", shard="", index=2)
    assert manifest["sample"].endswith("demo_val.tfrecords:2") and manifest["has_human_map"]
    assert manifest["label"] is not None and manifest["notes"] == []
    # the ground truth is explained on both sides
    assert {manifest["models"][v]["target"] for v in VARIANTS} == {manifest["label"]}
    assert_matches_cli(manifest, cli_pair(["--clickme", f"{DEMO_SHARD}:2"], tmp_path))
    for m in MAPS:
        rho = {v: manifest["models"][v]["scores"][m]["spearman"] for v in VARIANTS}
        if None in rho.values():  # a constant (all-zero) CAM has no Spearman, so no difference either
            assert manifest["delta_spearman"][m] is None
        else:
            assert manifest["delta_spearman"][m] == pytest.approx(rho["dcls"] - rho["baseline"])

    # the human map and the four CAMs, each drawn over the image, and a bundle with the same manifest
    arrays = {k: _png_224(images[k]) for k in images}
    assert all(not np.array_equal(arrays["human"], a) for k, a in arrays.items() if k != "human")
    with zipfile.ZipFile(bundle) as z:
        names = set(z.namelist())
        assert {"panel.png", "manifest.json", "human.npy"} <= names
        assert {f"{v}_{m}.npy" for v in VARIANTS for m in MAPS} <= names
        packed = json.loads(z.read("manifest.json"))
        assert packed["models"]["dcls"]["scores"] == manifest["models"]["dcls"]["scores"]
        with z.open("dcls_gradcam.npy") as f:
            assert np.load(f).shape == (224, 224)


def test_upload_with_human_map_scores_equal_the_cli(client, tmp_path):
    photo = EXAMPLES[0]
    w, h = Image.open(photo).size
    human = write_map(tmp_path / "human.png", blob_map(w, h, cx=0.55, cy=0.4))
    manifest, images, _ = compare(client, source="upload", image=photo, human=human)
    assert manifest["has_human_map"] and manifest["label"] is None and manifest["notes"] == []
    assert_matches_cli(manifest, cli_pair([str(photo), "--human", str(human)], tmp_path))
    assert all(manifest["models"][v]["scores"][m]["spearman"] is not None for v in VARIANTS for m in MAPS)
    _png_224(images["human"])


def test_upload_without_human_map_has_no_rho(client):
    manifest, images, _ = compare(client, source="upload", image=EXAMPLES[1])
    assert not manifest["has_human_map"] and images["human"] is None
    assert all(manifest["models"][v]["scores"][m]["spearman"] is None for v in VARIANTS for m in MAPS)


def test_target_by_name_threshold_and_geometry_reach_the_core(client):
    classes = client.predict("demo", api_name="/classes")
    name = classes[5]
    manifest, _, _ = compare(client, index=1, target=name, threshold=0.5, geometry="aligned")
    assert manifest["threshold"] == 0.5 and manifest["geometry"] == "aligned"
    assert all(manifest["models"][v]["target"] == 5 and manifest["models"][v]["target_name"] == name
               for v in VARIANTS)
    pred, _, _ = compare(client, index=1, target="pred")
    assert all(pred["models"][v]["target"] == pred["models"][v]["top5"][0][0] for v in VARIANTS)


def test_four_concurrent_sessions_each_get_their_own_result(app_server, client, tmp_path):
    w, h = Image.open(EXAMPLES[2]).size
    human = write_map(tmp_path / "h.png", blob_map(w, h, cx=0.3, cy=0.6))
    jobs = [dict(source="clickme", index=0), dict(source="clickme", index=3, geometry="aligned"),
            dict(source="upload", image=EXAMPLES[2], human=human, threshold=0.4),
            dict(source="upload", image=EXAMPLES[3], target="pred")]
    sequential = [compare(client, **j)[0] for j in jobs]

    results, errors = [None] * len(jobs), []
    clients = [make_client(app_server, tmp_path / f"c{k}") for k in range(len(jobs))]
    barrier = threading.Barrier(len(jobs))

    def run(k):
        try:
            barrier.wait()
            results[k] = compare(clients[k], **jobs[k])[0]
        except Exception as e:  # collected, so that one failure does not hide the others
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not errors, errors
    for seq, conc in zip(sequential, results):
        assert conc["image_sha256"] == seq["image_sha256"] and conc["sample"] == seq["sample"]
        assert conc["geometry"] == seq["geometry"] and conc["threshold"] == seq["threshold"]
        for v in VARIANTS:
            assert conc["models"][v]["target"] == seq["models"][v]["target"]
            for m in MAPS:
                a, b = conc["models"][v]["scores"][m]["spearman"], seq["models"][v]["scores"][m]["spearman"]
                assert a == (pytest.approx(b, abs=1e-6) if b is not None else None)
    # the inputs differ, so identical results would mean sessions leaked into each other
    assert len({r["image_sha256"] + str(r["models"]["dcls"]["scores"]) for r in results}) == len(jobs)


def test_models_classes_and_shards_endpoints(client):
    info = client.predict(api_name="/models")
    assert info["default"] == "demo" and info["downloads"] is False
    assert info["archs"]["demo"]["available"] and "bundled" in info["archs"]["demo"]["checkpoints"]
    assert len([a for a, x in info["archs"].items() if x["paper"]]) == 8
    assert not info["archs"]["convnext_tiny"]["available"]
    assert info["device"].startswith(("CPU", "CUDA"))
    from dclsviz.demo import CLASS_NAMES

    assert client.predict("demo", api_name="/classes") == list(CLASS_NAMES)
    assert len(client.predict("convnext_tiny", api_name="/classes")) == 1000
    shards = client.predict(api_name="/shards")
    assert shards[0]["name"] == DEMO_SHARD.name and shards[0]["records"] > 0


def test_host_and_port_come_from_the_environment():
    import importlib.util

    spec = importlib.util.spec_from_file_location("app", REPO / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)

    assert (app.parse_args([], {}).host, app.parse_args([], {}).port) == ("127.0.0.1", 7860)
    spaces = {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": "7861"}
    assert (app.parse_args([], spaces).host, app.parse_args([], spaces).port) == ("0.0.0.0", 7861)
    ours = {**spaces, "DCLSVIZ_HOST": "127.0.0.2", "DCLSVIZ_PORT": "9000"}
    assert (app.parse_args([], ours).host, app.parse_args([], ours).port) == ("127.0.0.2", 9000)


def test_npy_human_map_scores_like_the_same_map_as_png(client, tmp_path):
    w, h = Image.open(EXAMPLES[3]).size
    m = blob_map(w, h, cx=0.6, cy=0.5)
    png = write_map(tmp_path / "m.png", m)
    npy = tmp_path / "m.npy"
    np.save(npy, m.astype(np.float32))
    a, _, _ = compare(client, source="upload", image=EXAMPLES[3], human=png)
    b, _, _ = compare(client, source="upload", image=EXAMPLES[3], human=npy)
    for v in VARIANTS:
        assert a["models"][v]["scores"] == b["models"][v]["scores"]
