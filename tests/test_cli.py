"""`python -m dclsviz explain` end to end, one model per family, against the kit's goldens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import kit_data
from kit_data import kit_input

REPO = Path(__file__).resolve().parent.parent

# one per family; (id, target key in the golden, how the file is handed over)
CASES = [
    ("convnext_tiny.baseline", "target_class", "checkpoint"),
    ("convformer_s18.dcls", "target_class", "checkpoint-dir"),
    ("fastvit_sa24.dcls", "target_class", "checkpoint"),
    ("resnet50.baseline", "top1_class", "checkpoint-dir"),
]



def rhos(res: dict) -> dict:
    """map → ρ of the one model in an ``explain`` result.json (the app's manifest for that model)."""
    (mod,) = res["models"].values()
    return {m: s["spearman"] for m, s in mod["scores"].items()}

def run_cli(*args, env=None, check=True):
    e = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    r = subprocess.run([sys.executable, "-m", "dclsviz", *map(str, args)], capture_output=True, text=True,
                       env=e, cwd=REPO, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr[-3000:]}")
    return r


@pytest.mark.parametrize("id_,target_key,handover", CASES)
def test_explain_matches_goldens(id_, target_key, handover, kit, fake, tmp_path):
    man = fake.load_manifest(str(kit / "manifests" / f"{id_}.json"))
    folder = tmp_path / "ckpt"
    folder.mkdir()
    path = folder / man["file_name"]
    fake.write_checkpoint(man, str(path), seed=0)
    g = kit_data.golden(id_)
    target = int(g[target_key])
    prefix = "top1_" if target_key == "top1_class" else ""
    out = tmp_path / "out"
    where = ["--checkpoint", path] if handover == "checkpoint" else ["--checkpoint-dir", folder]
    x = tmp_path / "x.npy"
    np.save(x, kit_input(str(g["input_file"])))
    run_cli("explain", "--input-tensor", x, "--arch", man["arch"], "--variant",
            man["variant"], *where, "--target", target, "--device", "cpu", "--out", out,
            env={"DCLSVIZ_CACHE": str(tmp_path / "cache"), "TORCH_HOME": str(tmp_path / "torch")})
    res = json.loads((out / "result.json").read_text())
    mod = res["models"][man["variant"]]
    assert mod["arch"] == man["arch"] and mod["variant"] == man["variant"] and mod["target"] == target
    from dclsviz.download import sha256_file

    assert mod["checkpoint_sha256"] == sha256_file(path) and mod["checkpoint"] == str(path)
    assert rhos(res) == {"gradcam": None, "threshold_gradcam": None} and res["has_human_map"] is False
    assert {"torch", "timm", "dcls"} <= set(res["versions"])
    logits = np.load(out / "logits.npy")
    assert logits.dtype == np.float32 and logits.shape == (1000,)
    assert np.all(np.abs(logits - g["logits"]) <= 1e-4 + 1e-4 * np.abs(g["logits"]))
    assert [c for c, _, _ in mod["top5"]][0] == int(g["top1_class"])
    probs = [p for _, p, _ in mod["top5"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-9
    for ours, gold in (("gradcam", "gradcam_224"), ("gradcam_lowres", "gradcam_lowres")):
        m = np.load(out / f"{ours}.npy")
        assert m.dtype == np.float32
        assert np.abs(m - g[prefix + gold]).max() <= 1e-4 * np.abs(g[prefix + gold]).max()
    for ours, gold in (("threshold_gradcam", "threshold_224"), ("threshold_gradcam_lowres", "threshold_lowres")):
        m = np.load(out / f"{ours}.npy")
        assert np.abs(m - g[prefix + gold]).max() <= 1e-4
    assert np.load(out / "gradcam.npy").shape == (224, 224)


def test_explain_reports_spearman_against_a_human_map(kit, fake, tmp_path):
    """--human: the map goes through the ClickMe pipeline and result.json carries both ρ values."""
    from dclsviz import human, metrics

    man = fake.load_manifest(str(kit / "manifests" / "convnext_tiny.baseline.json"))
    path = tmp_path / man["file_name"]
    fake.write_checkpoint(man, str(path), seed=0)
    yy, xx = np.mgrid[0:256, 0:256]
    hm = (255 * np.exp(-((yy - 100) ** 2 + (xx - 140) ** 2) / (2 * 40.0 ** 2))).astype(np.float32)
    np.save(tmp_path / "human.npy", hm)
    out = tmp_path / "out"
    np.save(tmp_path / "x.npy", kit_input("input_224.npy"))
    run_cli("explain", "--input-tensor", tmp_path / "x.npy", "--arch", "convnext_tiny", "--variant", "baseline",
            "--checkpoint", path, "--target", "pred", "--human", tmp_path / "human.npy", "--out", out)
    res = json.loads((out / "result.json").read_text())
    hmap = human.human_map(hm)
    for m in ("gradcam", "threshold_gradcam"):
        expect = metrics.spearman(np.load(out / f"{m}.npy"), hmap)
        assert rhos(res)[m] == pytest.approx(expect, abs=1e-12)
        assert -1 <= rhos(res)[m] <= 1


def test_bad_inputs_give_clear_errors(tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not an image")
    r = run_cli("explain", bad, "--arch", "convnext_tiny", "--out", tmp_path / "o", check=False)
    assert r.returncode == 2 and "not an image" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("explain", bad, "--arch", "no_such_arch", "--out", tmp_path / "o", check=False)
    assert r.returncode == 2 and "unknown architecture" in r.stderr
    wrong = tmp_path / "wrong.pth"
    import torch

    torch.save({"model": {"conv.weight": torch.zeros(1)}}, wrong)
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 224, 224), np.float32))
    r = run_cli("explain", "--input-tensor", tmp_path / "x.npy", "--arch", "convnext_tiny", "--checkpoint", wrong,
                "--out", tmp_path / "o", check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "does not fit convnext_tiny.dcls" in r.stderr
    r = run_cli("explain", "--input-tensor", tmp_path / "missing.npy", "--arch", "convnext_tiny",
                "--out", tmp_path / "o", check=False)
    assert r.returncode == 2 and "missing.npy" in r.stderr and "Traceback" not in r.stderr


def test_models_lists_the_zoo(tmp_path):
    r = run_cli("models", env={"DCLSVIZ_CACHE": str(tmp_path)})
    lines = [ln for ln in r.stdout.splitlines() if ln and not ln.startswith(" ")]
    ids = {ln.split()[0] for ln in lines}
    assert {f"{a}.{v}" for a in ("convnext_tiny", "resnet50", "fastvit_sa36") for v in ("baseline", "dcls")} <= ids
    assert "zenodo.org/records/8373830" in r.stdout and "not cached" in r.stdout


def demo_explain(tmp_path, *args, **kwargs):
    example = sorted((REPO / "assets" / "examples").glob("*.jpg"))[0]
    inputs = [] if any(a in ("--clickme", "--input-tensor") for a in map(str, args)) else [example]
    return run_cli("explain", *inputs, "--arch", "demo", "--variant", "dcls", "--device", "cpu",
                   "--out", tmp_path / "o", *args, **kwargs)


def assert_clean_error(r, *parts):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    for part in parts:
        assert part in r.stderr, (part, r.stderr[-2000:])


@pytest.mark.parametrize("value", ["nan", "-1", "2", "inf", "x"])
def test_threshold_outside_the_unit_interval_is_refused(tmp_path, value):
    r = demo_explain(tmp_path, "--threshold", value, check=False)
    assert_clean_error(r, "--threshold must be a number in [0, 1]", repr(value))
    assert not (tmp_path / "o").exists()


def test_result_json_is_strict_json_when_rho_is_undefined(tmp_path):
    from PIL import Image

    Image.new("L", (64, 48), 128).save(tmp_path / "flat.png")  # a constant map: ρ is undefined
    demo_explain(tmp_path, "--human", tmp_path / "flat.png", "--target", "3")

    def fail(constant):
        raise AssertionError(f"result.json holds {constant}, which is not JSON")

    res = json.loads((tmp_path / "o" / "result.json").read_text(), parse_constant=fail)
    assert rhos(res) == {"gradcam": None, "threshold_gradcam": None} and res["models"]["dcls"]["target"] == 3


def test_json_writer_turns_non_finite_numbers_into_null(tmp_path):
    from dclsviz.__main__ import write_json

    write_json(tmp_path / "r.json", {"a": float("nan"), "b": [np.float32("inf"), 1.5, np.int64(2)],
                                     "c": {"d": -float("inf"), "e": "nan"}})
    text = (tmp_path / "r.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == \
        {"a": None, "b": [None, 1.5, 2], "c": {"d": None, "e": "nan"}}


def test_target_in_other_digits_is_not_a_class_index(tmp_path):
    r = demo_explain(tmp_path, "--target", "٣", check=False)
    assert_clean_error(r, "is not a class name of this model")


def test_checkpoint_with_a_nan_weight_is_refused_naming_the_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(REPO / "assets" / "demo" / "demo_dcls.safetensors"))
    key = "layer2.0.bn1.running_var"  # a buffer: those are checked as well as parameters
    sd[key].view(-1)[0] = float("nan")
    save_file(sd, str(tmp_path / "nan_weight.safetensors"))
    r = demo_explain(tmp_path, "--checkpoint", tmp_path / "nan_weight.safetensors", check=False)
    assert_clean_error(r, f"tensor {key!r}", "nan_weight.safetensors", "NaN/inf")
    assert "Offline?" not in r.stderr


@pytest.mark.parametrize("array, parts", [
    (np.full((1, 3, 128, 128), np.nan, np.float32), ["x.npy: the input tensor holds NaN/inf"]),
    (np.zeros((3, 1, 1), np.float32), ["(1,3,H,W) or (3,H,W) array with H, W ≥ 16", "not shape (3, 1, 1)"]),
    (np.zeros((1, 3, 128, 128), np.complex64), ["a numeric (integer or float) array is needed"]),
])
def test_bad_input_tensor_is_refused_saying_why(tmp_path, array, parts):
    np.save(tmp_path / "x.npy", array)
    assert_clean_error(demo_explain(tmp_path, "--input-tensor", tmp_path / "x.npy", check=False), *parts)


def test_clickme_index_out_of_range_and_empty_shard(tmp_path):
    shard = REPO / "assets" / "demo" / "demo_val.tfrecords"
    r = demo_explain(tmp_path, "--clickme", f"{shard}:100000", check=False)
    assert_clean_error(r, "error: --clickme: the shard", "choose an index from 0 to 127")
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = demo_explain(tmp_path, "--clickme", f"{shard}:٣", check=False)
    assert_clean_error(r, "--clickme record index must be a whole number written with the digits 0-9")
    (tmp_path / "empty.tfrecords").write_bytes(b"")
    r = demo_explain(tmp_path, "--clickme", f"{tmp_path / 'empty.tfrecords'}:0", check=False)
    assert_clean_error(r, "error: --clickme: ", "empty.tfrecords is empty")
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_help_prints_the_whole_description():
    r = subprocess.run([sys.executable, "-m", "dclsviz", "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "explain one image, list the models, evaluate on ClickMe shards" in text and "demo pair." in text
    assert "``" not in text  # the module's reST docstring is not the description
