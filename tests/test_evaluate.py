"""`python -m dclsviz evaluate` on the demo pair and shard, as real subprocesses writing real files.

One uninterrupted run (module fixture) is the reference: its rows must equal `explain`'s result.json for
the same records, a run killed with SIGKILL and resumed must reproduce it, and its summary must equal
scipy's statistics recomputed here from its CSV.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats as sps

import dclsviz.demo
from dclsviz import metrics, zoo

REPO = Path(__file__).resolve().parent.parent
DEMO_SHARD = zoo.ASSETS / dclsviz.demo.SHARD
DEMO_FILES = tuple(zoo.ASSETS / zoo.get("demo", v).checkpoint.bundled for v in zoo.VARIANTS) + (DEMO_SHARD,)
MAPS = ("gradcam", "threshold_gradcam")
N = 32
BATCH = 4
EVAL_ARGS = ["--arch", "demo", "--demo", "--limit", N, "--batch-size", BATCH, "--device", "cpu", "--no-progress"]


def _env(tmp: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DCLSVIZ_CACHE": str(tmp / "cache"),
           "TORCH_HOME": str(tmp / "torch")}
    env.pop("DCLSVIZ_CHECKPOINT_DIR", None)
    return env


def cli(tmp: Path, *args, check: bool = True, popen: bool = False):
    cmd = [sys.executable, "-m", "dclsviz", *map(str, args)]
    if popen:
        return subprocess.Popen(cmd, cwd=REPO, env=_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    r = subprocess.run(cmd, cwd=REPO, env=_env(tmp), capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr[-3000:]}")
    return r


def read_rows(out: Path) -> list[dict]:
    with open(out / "per_image.csv", newline="") as f:
        return list(csv.DictReader(f))


def by_key(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["arch"], r["variant"], r["shard"], int(r["index"])): r for r in rows}


def num(s: str):
    return None if s == "" else float(s)


@pytest.fixture(scope="module", autouse=True)
def demo_assets():
    missing = [str(p) for p in DEMO_FILES if not p.is_file()]
    if missing:
        pytest.fail(f"the demo pair is missing ({', '.join(missing)}); `python -m dclsviz demo train` makes it",
                    pytrace=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("reference")
    out = tmp / "run"
    r = cli(tmp, "evaluate", *EVAL_ARGS, "--out", out)
    return out, r.stdout


def test_rows_cover_the_selection_once(reference):
    out, _ = reference
    rows = read_rows(out)
    keys = [(r["arch"], r["variant"], r["shard"], int(r["index"])) for r in rows]
    assert len(keys) == len(set(keys)) == N * 2
    assert set(keys) == {("demo", v, DEMO_SHARD.name, i) for v in zoo.VARIANTS for i in range(N)}
    for r in rows:
        for m in MAPS:
            rho = num(r[f"spearman_{m}"])
            assert rho is None or -1.0 <= rho <= 1.0
            assert num(r[f"ceiling_{m}"]) == (None if rho is None else rho / metrics.HUMAN_CEILING)
        assert r["target"] == r["label"]  # the study explains the record's label


def test_rows_equal_explain_cli(reference, tmp_path):
    out, _ = reference
    rows = by_key(read_rows(out))
    for index in (1, N - 3):  # in different batches
        for variant in zoo.VARIANTS:
            d = tmp_path / f"{variant}-{index}"
            cli(tmp_path, "explain", "--clickme", f"{DEMO_SHARD}:{index}", "--arch", "demo", "--variant", variant,
                "--device", "cpu", "--out", d)
            res = json.loads((d / "result.json").read_text())
            row = rows["demo", variant, DEMO_SHARD.name, index]
            mod = res["models"][variant]
            assert int(row["label"]) == res["label"] and int(row["target"]) == mod["target"]
            assert int(row["predicted"]) == mod["top5"][0][0]
            for m in MAPS:
                want, got = mod["scores"][m]["spearman"], num(row[f"spearman_{m}"])
                assert (want is None) == (got is None)
                if want is not None:
                    assert got == pytest.approx(want, abs=1e-6), (variant, index, m)


def test_statistics_equal_scipy(reference):
    out, stdout = reference
    rows = by_key(read_rows(out))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["geometry"] == "paper" and summary["threshold"] == 0.3 and summary["n_items"] == N
    assert summary["versions"]["torch"] and summary["skipped"] == {}
    for variant in zoo.VARIANTS:
        for m in MAPS:
            vals = [num(rows["demo", variant, DEMO_SHARD.name, i][f"spearman_{m}"]) for i in range(N)]
            defined = [v for v in vals if v is not None]
            got = summary["models"]["demo"][variant][m]
            assert got["n"] == N and got["n_undefined"] == N - len(defined)
            assert got["mean_spearman"] == pytest.approx(np.mean(defined), abs=1e-12)
            assert got["ceiling_normalised"] == pytest.approx(np.mean(defined) / 0.65753, abs=1e-12)
    for m in MAPS:
        b, d = [], []
        for i in range(N):
            x = num(rows["demo", "baseline", DEMO_SHARD.name, i][f"spearman_{m}"])
            y = num(rows["demo", "dcls", DEMO_SHARD.name, i][f"spearman_{m}"])
            if x is not None and y is not None:
                b.append(x)
                d.append(y)
        b, d = np.array(b), np.array(d)
        got = summary["paired"]["demo"][m]
        assert got["n_pairs"] == len(b) > 10
        assert got["mean_delta"] == pytest.approx(float(np.mean(d - b)), abs=1e-12)
        w = sps.wilcoxon(d, b)
        assert got["wilcoxon"]["statistic"] == w.statistic
        assert got["wilcoxon"]["p"] == pytest.approx(float(w.pvalue), rel=1e-12)
        boot = got["bootstrap"]
        assert boot["n_resamples"] == 10_000 and boot["method"] == "percentile"
        ci = sps.bootstrap((d - b,), np.mean, n_resamples=boot["n_resamples"], confidence_level=0.95,
                           method="percentile", batch=1000, rng=np.random.default_rng(boot["seed"]))
        assert got["ci"] == pytest.approx([ci.confidence_interval.low, ci.confidence_interval.high], abs=1e-12)
        assert got["ci"][0] <= got["mean_delta"] <= got["ci"][1]


def test_table_and_figure(reference):
    out, stdout = reference
    summary = json.loads((out / "summary.json").read_text())
    line = next(ln for ln in stdout.splitlines() if ln.startswith("demo "))
    want = [summary["models"]["demo"][v][m]["ceiling_normalised"] for m in MAPS for v in zoo.VARIANTS]
    assert [float(x) for x in line.split()[1:]] == pytest.approx(want, abs=5e-5)
    assert (out / "table1.txt").read_text().strip() in stdout
    with Image.open(out / "scatter.png") as im:
        assert im.format == "PNG" and min(im.size) >= 400


def test_killed_run_resumes_without_duplicates_or_gaps(reference, tmp_path):
    ref_out, _ = reference
    out = tmp_path / "run"
    csv_path = out / "per_image.csv"
    proc = cli(tmp_path, "evaluate", *EVAL_ARGS, "--out", out, popen=True)
    deadline = time.monotonic() + 300
    written = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if csv_path.exists():
                written = csv_path.read_bytes().count(b"\n") - 1
                if written >= 2 * BATCH:  # the first batch of both models is on disk
                    break
            time.sleep(0.01)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()[1][-2000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    partial = read_rows(out)
    assert 2 * BATCH <= len(partial) < 2 * N, "killed mid-run"

    r = cli(tmp_path, "evaluate", *EVAL_ARGS, "--out", out)
    rows = read_rows(out)
    keys = [(r_["arch"], r_["variant"], r_["shard"], int(r_["index"])) for r_ in rows]
    assert len(keys) == len(set(keys)) == 2 * N
    assert rows[:len(partial)] == partial  # kept, not recomputed
    ref = by_key(read_rows(ref_out))
    for k, row in by_key(rows).items():
        for col, v in row.items():
            if col.split("_")[0] in ("spearman", "ceiling", "dice", "iou") and v != "":
                assert float(v) == pytest.approx(float(ref[k][col]), abs=1e-6), (k, col)
            else:
                assert v == ref[k][col], (k, col)
    assert "Δρ" in r.stdout

    # a rerun of a finished folder computes nothing and changes nothing
    before = csv_path.read_bytes()
    cli(tmp_path, "evaluate", *EVAL_ARGS, "--out", out)
    assert csv_path.read_bytes() == before


def test_torn_last_line_is_dropped_and_recomputed(reference, tmp_path):
    ref_out, _ = reference
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_bytes((ref_out / "run.json").read_bytes())
    data = (ref_out / "per_image.csv").read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    (out / "per_image.csv").write_bytes(data[:last + 25])  # a kill in the middle of the last row
    r = cli(tmp_path, "evaluate", *EVAL_ARGS, "--out", out)
    assert "torn last line" in r.stderr
    rows, ref = by_key(read_rows(out)), by_key(read_rows(ref_out))
    assert len(read_rows(out)) == len(ref) == 2 * N
    for k in ref:
        for m in MAPS:
            a, b = num(rows[k][f"spearman_{m}"]), num(ref[k][f"spearman_{m}"])
            assert (a is None) == (b is None) and (a is None or math.isclose(a, b, abs_tol=1e-6))


def test_other_settings_are_refused_in_the_same_folder(reference, tmp_path):
    out, _ = reference
    r = cli(tmp_path, "evaluate", *EVAL_ARGS, "--threshold", "0.5", "--out", out, check=False)
    assert r.returncode == 2 and "threshold" in r.stderr and "another --out" in r.stderr


def test_unavailable_checkpoint_skips_that_arch_only(tmp_path, kit, fake):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for v in zoo.VARIANTS:  # resnet50's files are here (the kit's stand-ins), convnext_tiny's are nowhere
        man = fake.load_manifest(str(kit / "manifests" / f"resnet50.{v}.json"))
        fake.write_checkpoint(man, str(folder / man["file_name"]), seed=0)
    out = tmp_path / "run"
    r = cli(tmp_path, "evaluate", "--arch", "convnext_tiny,resnet50", "--clickme",
            kit / "clickme" / "sample_val.tfrecords", "--limit", 4, "--device", "cpu", "--no-progress", "--no-download", "--checkpoint-dir", folder, "--out", out,
            check=False)
    assert r.returncode == 1, r.stderr
    assert "skipping convnext_tiny" in r.stderr and "convnext_tiny_1k_224_ema.pth" in r.stderr
    rows = read_rows(out)
    assert {(x["arch"], x["variant"]) for x in rows} == {("resnet50", "baseline"), ("resnet50", "dcls")}
    assert len(rows) == 8 and all(x["target"] == x["label"] for x in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["skipped"]) == ["convnext_tiny"] and "resnet50" in summary["paired"]


def test_labels_that_are_not_the_models_classes_are_refused(tmp_path, kit):
    r = cli(tmp_path, "evaluate", "--arch", "convnext_tiny", "--demo", "--out", tmp_path / "a", check=False)
    assert r.returncode == 2 and "not classes of convnext_tiny" in r.stderr
    r = cli(tmp_path, "evaluate", "--arch", "demo", "--clickme", kit / "clickme" / "sample_val.tfrecords",
            "--out", tmp_path / "b", check=False)
    assert r.returncode == 2 and "not classes of demo" in r.stderr
    assert not (tmp_path / "a" / "per_image.csv").exists()
