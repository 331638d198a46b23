"""Attribution methods in the Dataset and Review tabs, through the real server (gradio_client): a Dataset run with
two methods beyond the paper's against the CLI's summary.json, a run folder holding other methods refused with a
message while the server keeps serving, and a review session on LayerCAM showing LayerCAM maps."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app_fixtures import REPO
from dclsviz import clickme, models, render, review, zoo
from dclsviz.compare import MAP_TITLES, Sample, compare
from dclsviz.ui import dataset_tab

pytest_plugins = ["app_fixtures"]

METHODS = ("gradcam", "threshold_gradcam", "gradcampp", "layercam")  # the paper's two and two more
N = 8


def _cli_evaluate(tmp: Path) -> dict:
    env = {**os.environ, "DCLSVIZ_CACHE": str(tmp / "cache")}
    env.pop("DCLSVIZ_CHECKPOINT_DIR", None)
    r = subprocess.run([sys.executable, "-m", "dclsviz", "evaluate", "--arch", "demo", "--demo", "--limit", str(N),
                        "--methods", ",".join(METHODS), "--device", "cpu", "--no-progress", "--out",
                        str(tmp / "run")], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads((tmp / "run" / "summary.json").read_text())


def test_dataset_methods_equal_the_cli_and_the_tab_shows_them(client, tmp_path):
    summary, bundle = client.predict("demo", "", N, "paper", 0.3, ",".join(reversed(METHODS)), False,
                                     api_name="/evaluate")
    ref = _cli_evaluate(tmp_path)
    assert summary["methods"] == ref["methods"] == list(METHODS) and summary["faithfulness"] is False
    for m in METHODS:
        for v in zoo.VARIANTS:
            got, want = summary["models"]["demo"][v][m], ref["models"]["demo"][v][m]
            assert got["n_defined"] == want["n_defined"] == N
            assert got["mean_spearman"] == pytest.approx(want["mean_spearman"], abs=1e-6)
        got, want = summary["paired"]["demo"][m], ref["paired"]["demo"][m]
        assert got["n_pairs"] == want["n_pairs"] and got["wilcoxon"]["p"] == pytest.approx(want["wilcoxon"]["p"])
        assert got["mean_delta"] == pytest.approx(want["mean_delta"], abs=1e-6)
        assert got["ci"] == pytest.approx(want["ci"], abs=1e-6)
    with zipfile.ZipFile(bundle) as z:
        files = {n: z.read(n) for n in z.namelist()}
    assert files["robustness.png"].startswith(b"\x89PNG") and "plausibility_faithfulness.png" not in files
    assert "LayerCAM" in files["table1.txt"].decode() and "Grad-CAM++" in files["table1.txt"].decode()
    header = files["demo/per_image.csv"].split(b"\n", 1)[0].decode().split(",")
    assert {f"spearman_{m}" for m in METHODS} <= set(header)

    # the tab's per-method table shows summary.json's numbers, one row per method
    run = dataset_tab.DatasetRun(ref, {"demo": tmp_path}, [], tmp_path, {})
    table = dataset_tab.method_rows(run)
    assert table["headers"] == dataset_tab.METHOD_HEADERS
    assert [r[1] for r in table["data"]] == [MAP_TITLES[m] for m in METHODS]
    for row, m in zip(table["data"], METHODS):
        p = ref["paired"]["demo"][m]
        assert [float(x) for x in row[2:5]] == pytest.approx(
            [ref["models"]["demo"]["baseline"][m]["mean_spearman"], ref["models"]["demo"]["dcls"][m]["mean_spearman"],
             p["mean_delta"]], abs=1e-3)
        assert float(row[6]) == pytest.approx(p["wilcoxon"]["p"], rel=1e-2) and row[7] == str(N)


def test_a_run_folder_holding_other_methods_is_refused_and_the_server_keeps_serving(client, app_server):
    from gradio_client.exceptions import AppError

    client.predict("demo", "", 2, "paper", 0.3, "layercam", False, api_name="/evaluate")
    records = [p for p in (app_server.home / "cache" / "evaluations").glob("*/run.json")
               if json.loads(p.read_text())["methods"] == ["layercam"]]
    assert len(records) == 1
    kept = records[0].read_text()
    records[0].write_text(json.dumps({**json.loads(kept), "methods": ["hirescam"]}))  # as if made with others
    try:
        with pytest.raises(AppError, match=r"demo not evaluated: .* holds rows of methods hirescam"):
            client.predict("demo", "", 2, "paper", 0.3, "layercam", False, api_name="/evaluate")
        app_server.assert_alive()
        assert str(app_server.home) not in str(client.predict("demo", "", 2, "paper", 0.3, api_name="/evaluate"))
    finally:
        records[0].write_text(kept)
    summary, _ = client.predict("demo", "", 2, "paper", 0.3, "layercam", False, api_name="/evaluate")
    assert summary["methods"] == ["layercam"]


def test_a_review_session_on_layercam_shows_layercam_maps(client, app_server, tmp_path):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="at most 2 methods"):
        client.predict("too-many", "", 0, 2, "demo", "", "", "gradcam,layercam,hirescam", api_name="/review_create")
    made = client.predict("lc", "", 5, 2, "demo", "7", "", "layercam", api_name="/review_create")
    assert made["methods"] == ["layercam"]
    token = client.predict(made["invite_code"], "carol", api_name="/review_join")["reviewer_token"]
    shown, image, human, a_1, a_2, b_1, b_2 = client.predict(token, api_name="/review_next")
    assert shown["methods"] == ["layercam"] and a_2 is None and b_2 is None

    db = app_server.home / "cache" / "review.sqlite"
    item = review.item(made["session"], shown["position"], db)
    pair = {v: models.load(zoo.get("demo", v), device="cpu") for v in zoo.VARIANTS}
    mine = compare(pair, Sample.from_clickme(clickme.read_record(item.source.ref)), methods=("layercam",))
    assert tuple(mine.methods) == ("layercam",)
    frame = mine.frame_image()
    for side, path in (("A", a_1), ("B", b_1)):
        variant = item.variant_for(side)
        got = np.asarray(Image.open(path).convert("RGB")).astype(int)
        want = render.overlay(frame, mine.outputs[variant].maps["layercam"], 0.5, "jet").astype(int)
        # the server's threads may sum in another order: the overlays agree to a grey level or so
        assert np.abs(got - want).mean() < 0.5, side
        assert item.scores[variant]["layercam"]["spearman"] == pytest.approx(
            mine.outputs[variant].scores["layercam"].spearman, abs=1e-5)
    assert set(item.scores[item.a_variant]) == {"layercam"}

    client.predict(token, shown["position"], "A", "", api_name="/review_verdict")
    revealed, csv_path = client.predict(made["organiser_token"], api_name="/review_reveal")
    assert revealed["methods"] == ["layercam"] and list(revealed["agreement"]) == ["layercam"]
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        rows, columns = list(reader), reader.fieldnames
    assert {"spearman_A_layercam", "spearman_B_layercam", "spearman_baseline_layercam", "spearman_dcls_layercam"} \
        <= set(columns) and not [c for c in columns if "gradcam" in c]
    assert float(rows[0]["spearman_A_layercam"]) == item.spearman(item.a_variant, "layercam")
    listed = client.predict(made["organiser_token"], api_name="/review_sessions")
    assert listed[0]["methods"] == ["layercam"]
