"""The Dataset and Review tabs through the real server's endpoints (gradio_client), against the CLI and the
review database file itself."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from app_fixtures import DEMO_SHARD, REPO, make_client, start_server, stop_server
from dclsviz import review, zoo

pytest_plugins = ["app_fixtures"]

MAPS = ("gradcam", "threshold_gradcam")


def _zip_files(path: str) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def _csv_rows(data: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def _cli_evaluate(tmp: Path, n: int) -> dict:
    env = {**os.environ, "DCLSVIZ_CACHE": str(tmp / "cache")}
    env.pop("DCLSVIZ_CHECKPOINT_DIR", None)
    r = subprocess.run([sys.executable, "-m", "dclsviz", "evaluate", "--arch", "demo", "--demo", "--limit", str(n),
                        "--device", "cpu", "--no-progress", "--out", str(tmp / "run")], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads((tmp / "run" / "summary.json").read_text())


def test_dataset_endpoint_equals_the_cli_and_reuses_rows(client, tmp_path):
    summary, bundle = client.predict("demo", "", 12, "paper", 0.3, api_name="/evaluate")
    ref = _cli_evaluate(tmp_path, 12)
    assert summary["n_items"] == ref["n_items"] == 12
    for v in zoo.VARIANTS:
        got, want = summary["models"]["demo"][v], ref["models"]["demo"][v]
        assert got["top1_accuracy"] == want["top1_accuracy"]
        for m in MAPS:
            assert got[m]["n_defined"] == want[m]["n_defined"]
            assert got[m]["mean_spearman"] == pytest.approx(want[m]["mean_spearman"], abs=1e-6)
    for m in MAPS:
        assert summary["paired"]["demo"][m]["n_pairs"] == ref["paired"]["demo"][m]["n_pairs"]
        assert summary["paired"]["demo"][m]["mean_delta"] == pytest.approx(ref["paired"]["demo"][m]["mean_delta"],
                                                                           abs=1e-6)
    files = _zip_files(bundle)
    assert {"summary.json", "table1.txt", "scatter.png", "demo/per_image.csv", "demo/run.json"} <= files.keys()
    assert files["scatter.png"].startswith(b"\x89PNG") and b"demo" in files["table1.txt"]
    assert len(_csv_rows(files["demo/per_image.csv"])) == 24

    # more records with the same settings: the 24 rows are reused, only the new records are scored
    summary, bundle = client.predict("demo", DEMO_SHARD.name, 16, "paper", 0.3, api_name="/evaluate")
    rows = _csv_rows(_zip_files(bundle)["demo/per_image.csv"])
    keys = [(r["variant"], int(r["index"])) for r in rows]
    assert len(keys) == len(set(keys)) == 32
    assert summary["n_items"] == 16 and summary["models"]["demo"]["dcls"]["gradcam"]["n"] == 16


def test_dataset_zip_holds_exactly_the_requested_rows_and_no_server_path(client, app_server):
    client.predict("demo", "", 64, "paper", 0.3, api_name="/evaluate")  # the run folder now holds 64 records
    summary, bundle = client.predict("demo", "", 16, "paper", 0.3, api_name="/evaluate")
    files = _zip_files(bundle)
    rows = _csv_rows(files["demo/per_image.csv"])
    assert len(rows) == 16 * 2
    assert sorted((r["variant"], int(r["index"])) for r in rows) == sorted((v, i) for v in zoo.VARIANTS
                                                                          for i in range(16))
    assert files["demo/per_image.csv"].split(b"\n", 1)[0].decode().split(",")[:4] == ["arch", "variant", "shard",
                                                                                       "index"]
    assert summary["n_items"] == 16 and summary["shards"] == [DEMO_SHARD.name] and "runs" not in summary
    assert json.loads(files["summary.json"]) == summary
    texts = [json.dumps(summary), *files, *(v.decode("utf-8") for n, v in files.items() if not n.endswith(".png"))]
    for server_path in (str(app_server.home), str(REPO), str(DEMO_SHARD.parent)):
        assert not [t for t in texts if server_path in t], server_path


def test_dataset_endpoint_refuses_bad_requests_and_keeps_serving(client, app_server, kit):
    from gradio_client.exceptions import AppError

    # a ClickMe-format shard (ImageNet labels) appears in the app's ClickMe folder
    (app_server.home / "clickme").mkdir(exist_ok=True)
    shutil.copyfile(kit / "clickme" / "sample_val.tfrecords", app_server.home / "clickme" / "val-0.tfrecords")
    for args, words in [(("demo", "", 500, "paper", 0.3), "200"), (("demo", "", 3.9, "paper", 0.3), "whole number"),
                        (("demo," * 400_000, "", 4, "paper", 0.3), "characters long; the limit"),
                        (("demo", "", 4, "paper", 2.0), r"threshold must lie in \[0, 1\]"),
                        (("demo", "nope.tfrecords", 4, "paper", 0.3),
                                                                   "unknown shard"),
                        (("resnet50", "", 4, "paper", 0.3), "not classes of resnet50"),
                        (("demo", "val-0.tfrecords", 4, "paper", 0.3), "not classes of demo"),
                        (("resnet50", "val-0.tfrecords", 4, "paper", 0.3), "checkpoints are not available.*demo")]:
        with pytest.raises(AppError, match=words):
            client.predict(*args, api_name="/evaluate")
    summary, _ = client.predict("demo", "", 2, "aligned", 0.3, api_name="/evaluate")
    assert summary["n_items"] == 2 and summary["geometry"] == "aligned"


def test_review_verdicts_survive_kill_9_and_restart(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    db = home / "cache" / "review.sqlite"
    server = start_server(home)
    try:
        c = make_client(server, tmp_path / "dl1")
        made = c.predict("alice-1", "", 3, 5, "demo", "11", api_name="/review_create")
        assert made["n_items"] == 5 and made["organiser_token"] and made["invite_code"]
        me = c.predict(made["invite_code"], "alice", api_name="/review_join")
        assert me["n_done"] == 0
        token = me["reviewer_token"]
        given = []
        for verdict, note in [("A", "sharper"), ("tie", "")]:
            shown, *pictures = c.predict(token, api_name="/review_next")
            assert not shown["finished"] and "variant" not in json.dumps(shown)  # still blind
            assert all(Path(p).is_file() for p in pictures[:1] + pictures[2:])  # image and the four maps
            c.predict(token, shown["position"], verdict, note, api_name="/review_verdict")
            given.append((shown["position"], verdict, note))
        third = c.predict(token, api_name="/review_next")[0]  # shown, not yet judged
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=30)
    finally:
        if server.proc.poll() is None:
            stop_server(server)

    server = start_server(home)
    try:
        c = make_client(server, tmp_path / "dl2")
        listed = {s["session"]: s for s in c.predict(token, api_name="/review_sessions")}
        assert listed[made["session"]]["n_done"] == 2 and listed[made["session"]]["n_items"] == 5
        shown = c.predict(token, api_name="/review_next")[0]
        assert shown["position"] == third["position"] == 2  # resumes exactly where it stopped
        c.predict(token, 2, "B", "after the crash", api_name="/review_verdict")
        given.append((2, "B", "after the crash"))
        revealed, csv_path = c.predict(made["organiser_token"], api_name="/review_reveal")
    finally:
        stop_server(server)

    # the database file itself, read without the app
    judged = review.verdicts(made["session"], me["reviewer"], db=db)
    assert [(v.item.position, v.verdict, v.note or "") for v in judged] == given
    assert revealed == json.loads(json.dumps(review.reveal(made["session"], db=db)))
    dcls_preferred = sum(v.preferred == "dcls" for v in judged)
    assert revealed["dcls_preferred"] == dcls_preferred and revealed["n_verdicts"] == 3
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["position"]), r["verdict"], r["note"]) for r in rows] == given
    for r, v in zip(rows, judged):
        assert r["a_variant"] == v.item.a_variant and r["preferred"] == v.preferred
        assert r["ref"] == f"{DEMO_SHARD.name}:{3 + v.item.position}"  # the shard's file name, not its folder
        assert r["reviewer"] == me["reviewer"] and r["reviewer_name"] == "alice"
        for m in MAPS:
            assert float(r[f"spearman_dcls_{m}"]) == v.item.spearman("dcls", m)


def test_review_endpoint_errors_keep_serving(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="does not open a review session"):
        client.predict("rvr_nobody", api_name="/review_next")
    made = client.predict("bob", "examples", 0, 0, "demo", "", api_name="/review_create")
    again = client.predict("bob", "", 0, 3, "demo", "", api_name="/review_create")  # names may repeat
    assert again["session"] != made["session"]
    token = client.predict(made["invite_code"], "bob", api_name="/review_join")["reviewer_token"]
    with pytest.raises(AppError, match="not been shown"):
        client.predict(token, 1, "A", "", api_name="/review_verdict")
    with pytest.raises(AppError, match="verdict is one of"):
        client.predict(token, 0, "C", "", api_name="/review_verdict")
    with pytest.raises(AppError, match="needs a reviewer token"):
        client.predict(made["organiser_token"], api_name="/review_next")
    shown = client.predict(token, api_name="/review_next")[0]
    assert shown["kind"] == "photo" and shown["position"] == 0 and shown["sample"] == "astronaut.jpg"
    assert client.predict(token, 0, "neither", "", api_name="/review_verdict")["n_done"] == 1
