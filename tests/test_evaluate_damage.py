"""Damaged data stays contained in `evaluate`: a damaged record is skipped and listed, a malformed line of
per_image.csv is moved aside and recomputed. Real CLI runs on a copy of the demo shard, damaged byte-wise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import dclsviz.demo
from dclsviz import evaluate, zoo
from dclsviz.clickme import ClickMeShard
from test_evaluate import MAPS, by_key, cli, num, read_rows

DEMO_SHARD = zoo.ASSETS / dclsviz.demo.SHARD
N = 16
ARGS = ["--arch", "demo", "--limit", N, "--batch-size", 4, "--device", "cpu", "--no-progress"]


def _shard_copy(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    # the same file name as the intact shard: rows are keyed by it, so the two runs' rows compare key by key
    return Path(shutil.copyfile(DEMO_SHARD, folder / DEMO_SHARD.name))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("intact")
    out = tmp / "run"
    cli(tmp, "evaluate", *ARGS, "--clickme", _shard_copy(tmp / "data"), "--out", out)
    return out


def _assert_rows_equal(rows: dict, ref: dict) -> None:
    for k, row in rows.items():
        for col, v in row.items():
            if col.split("_")[0] in ("spearman", "ceiling", "dice", "iou") and v != "":
                assert float(v) == pytest.approx(float(ref[k][col]), abs=1e-6), (k, col)
            else:
                assert v == ref[k][col], (k, col)


def test_bad_data_crc_skips_that_record_and_the_run_finishes(reference, tmp_path):
    shard = _shard_copy(tmp_path / "data")
    k = 5
    data = bytearray(shard.read_bytes())
    data[ClickMeShard(DEMO_SHARD).offsets[k] + 12 + 200] ^= 0x10
    shard.write_bytes(bytes(data))
    out = tmp_path / "run"
    r = cli(tmp_path, "evaluate", *ARGS, "--clickme", shard, "--out", out)
    assert f"skipping {shard.name} record {k}" in r.stderr and "data CRC" in r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [(s["shard"], s["index"]) for s in summary["skipped_records"]] == [(shard.name, k)]
    assert "data CRC" in summary["skipped_records"][0]["reason"] and "skipped" in summary["skipped_note"]
    assert str(tmp_path) not in (out / "summary.json").read_text()  # file names, no server path
    assert summary["models"]["demo"]["dcls"]["gradcam"]["n"] == N - 1
    rows, ref = by_key(read_rows(out)), by_key(read_rows(reference))
    assert set(rows) == {key for key in ref if key[3] != k}
    _assert_rows_equal(rows, ref)

    # a rerun computes nothing, but says again that the record was skipped
    before = (out / "per_image.csv").read_bytes()
    r = cli(tmp_path, "evaluate", *ARGS, "--clickme", shard, "--out", out)
    assert f"skipping {shard.name} record {k}" in r.stderr
    assert (out / "per_image.csv").read_bytes() == before
    assert json.loads((out / "summary.json").read_text())["skipped_records"] == summary["skipped_records"]


def test_damaged_span_is_in_the_summary(tmp_path):
    shard = _shard_copy(tmp_path / "data")
    offsets = ClickMeShard(DEMO_SHARD).offsets
    data = bytearray(shard.read_bytes())
    data[offsets[3] + 9] ^= 0x01  # the length CRC of record 3
    shard.write_bytes(bytes(data))
    shards = evaluate.open_shards([shard])
    report = evaluate.data_report(shards)
    assert report["shards"] == [shard.name]
    assert [(d["shard"], d["offset"]) for d in report["damaged_spans"]] == [(shard.name, offsets[3])]
    assert "length CRC" in report["damaged_spans"][0]["reason"] and "skipped_note" in report


def _corrupt(lines: list[bytes], kind: str) -> tuple[list[bytes], list[bytes]]:
    """Damage some data lines of per_image.csv; returns (new lines, the bad lines as written)."""
    bad = []
    if kind == "fields":
        lines[3] = lines[3].rsplit(b",", 2)[0]  # two fields short
        lines[7] = lines[7].replace(b",", b",x", 1)[:-3] + b"abc"  # an unparsable number
        bad = [lines[3], lines[7]]
    else:
        lines[5] = b"\xff\xfe" + lines[5][2:]  # invalid UTF-8
        bad = [lines[5]]
    return lines, bad


@pytest.mark.parametrize("kind", ["fields", "utf8"])
def test_malformed_csv_lines_are_moved_aside_and_recomputed(reference, tmp_path, kind):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copyfile(reference / "run.json", out / "run.json")
    lines = (reference / "per_image.csv").read_bytes().split(b"\n")[:-1]
    lines, bad = _corrupt(lines, kind)
    (out / "per_image.csv").write_bytes(b"\n".join(lines) + b"\n")
    r = cli(tmp_path, "evaluate", *ARGS, "--clickme", _shard_copy(tmp_path / "data"), "--out", out)
    sides = sorted(out.glob("per_image.malformed-*.csv"))
    assert len(sides) == 1 and str(sides[0]) in r.stderr and "malformed line" in r.stderr
    assert sides[0].read_bytes() == b"".join(b + b"\n" for b in bad)
    rows = read_rows(out)
    keys = [(x["arch"], x["variant"], x["shard"], int(x["index"])) for x in rows]
    assert len(keys) == len(set(keys)) == 2 * N
    _assert_rows_equal(by_key(rows), by_key(read_rows(reference)))


def test_read_only_store_never_writes_and_a_wrong_header_refuses(reference, tmp_path):
    path = tmp_path / "per_image.csv"
    data = (reference / "per_image.csv").read_bytes()
    lines = data.split(b"\n")
    lines[4] = b"\xff" + lines[4]
    torn = b"\n".join(lines) + b"demo,dcls,demo_val.tfr"
    path.write_bytes(torn)
    store = evaluate.ResultStore(path, read_only=True)
    assert path.read_bytes() == torn and list(path.parent.iterdir()) == [path]
    assert len(store.rows) == 2 * N - 1 and store.dropped_torn_line and store.malformed[0].startswith("line 5:")

    path.write_bytes(b"arch,variant\n" + data.split(b"\n", 1)[1])
    with pytest.raises(evaluate.EvaluationError, match=rf"{path}.*another --out"):
        evaluate.ResultStore(path)
    path.write_bytes(b"\xffarch" + data[4:])
    with pytest.raises(evaluate.EvaluationError, match=rf"{path}: the header line is unreadable.*another --out"):
        evaluate.ResultStore(path)
    path.unlink()
    path.mkdir()  # unreadable as a file
    with pytest.raises(evaluate.EvaluationError, match=rf"cannot read {path}"):
        evaluate.ResultStore(path, read_only=True)


def test_rows_written_by_a_run_read_back_with_none_malformed(reference):
    store = evaluate.ResultStore(reference / "per_image.csv", read_only=True)
    assert store.malformed == [] and store.duplicates == 0 and len(store.rows) == 2 * N
    for row in store.rows.values():
        assert all(num(row[f"spearman_{m}"]) is None or -1 <= num(row[f"spearman_{m}"]) <= 1 for m in MAPS)
