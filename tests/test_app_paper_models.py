"""The app on a study architecture: the kit's stand-ins for the published ConvNeXt-T files (real containers,
real key names) in a checkpoint folder, and a ClickMe-format shard with ImageNet labels in the ClickMe folder.
What the app computes must equal what the CLI computes from the same files."""

from __future__ import annotations

import shutil

import pytest

from app_fixtures import (MAPS, VARIANTS, assert_matches_cli, cli_explain, compare, make_client, start_server,
                          stop_server)

ARCH = "convnext_tiny"


@pytest.fixture(scope="module")
def paper_app(tmp_path_factory, kit, fake):
    home = tmp_path_factory.mktemp("paper_home")
    ckpt = home / "checkpoints"
    ckpt.mkdir()
    for v in VARIANTS:
        man = fake.load_manifest(str(kit / "manifests" / f"{ARCH}.{v}.json"))
        fake.write_checkpoint(man, str(ckpt / man["file_name"]), seed=0)
    (home / "clickme").mkdir()
    shutil.copyfile(kit / "clickme" / "sample_val.tfrecords", home / "clickme" / "val-0.tfrecords")
    server = start_server(home, env={"DCLSVIZ_CHECKPOINT_DIR": str(ckpt)})
    try:
        yield server, ckpt, home / "clickme" / "val-0.tfrecords"
    finally:
        stop_server(server)


def test_paper_pair_is_found_and_offered_first(paper_app, tmp_path):
    server, _, _ = paper_app
    c = make_client(server, tmp_path / "dl")
    info = c.predict(api_name="/models")
    assert info["default"] == ARCH and info["archs"][ARCH]["available"]
    assert "checkpoint-dir" in info["archs"][ARCH]["checkpoints"]
    assert [s["name"] for s in c.predict(api_name="/shards")] == ["demo_val.tfrecords", "val-0.tfrecords"]


def test_clickme_record_on_the_paper_pair_equals_the_cli(paper_app, tmp_path):
    server, ckpt, shard = paper_app
    c = make_client(server, tmp_path / "dl")
    manifest, images, _ = compare(c, arch=ARCH, shard="val-0.tfrecords", index=3)
    cli = {v: cli_explain(["--clickme", f"{shard}:3", "--arch", ARCH, "--variant", v, "--checkpoint-dir", str(ckpt)],
                          tmp_path / v) for v in VARIANTS}
    assert_matches_cli(manifest, cli, tol=1e-5)
    assert manifest["label"] == cli["dcls"]["label"] and manifest["models"]["dcls"]["target"] == manifest["label"]
    assert all(images[f"{v}_{m}"] for v in VARIANTS for m in MAPS)
    assert all(manifest["models"][v]["checkpoint_origin"] == "checkpoint-dir" for v in VARIANTS)


def test_dataset_tab_on_the_paper_pair(paper_app, tmp_path):
    server, _, _ = paper_app
    c = make_client(server, tmp_path / "dl")
    summary, _ = c.predict(ARCH, "val-0.tfrecords", 6, "paper", 0.3, api_name="/evaluate")
    assert summary["n_items"] == 6 and set(summary["models"][ARCH]) == set(VARIANTS)
    assert all(summary["models"][ARCH][v]["gradcam"]["n"] == 6 for v in VARIANTS)
    assert summary["paired"][ARCH]["gradcam"]["n_pairs"] <= 6


def test_dataset_tab_with_several_pairs_skips_the_unavailable_one(paper_app, tmp_path):
    server, _, _ = paper_app
    c = make_client(server, tmp_path / "dl")
    summary, bundle = c.predict(f"{ARCH},resnet50", "val-0.tfrecords", 4, "paper", 0.3, api_name="/evaluate")
    assert list(summary["models"]) == [ARCH] and list(summary["skipped"]) == ["resnet50"]
    assert "resnet50" in summary["skipped"]["resnet50"] and summary["archs"] == [ARCH, "resnet50"]
    import zipfile

    with zipfile.ZipFile(bundle) as z:
        names = set(z.namelist())
    assert {"scatter.png", "table1.txt", f"{ARCH}/per_image.csv"} <= names
    assert not any(n.startswith("resnet50/") for n in names)
