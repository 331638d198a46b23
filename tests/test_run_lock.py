"""One lock for the writer and the readers of a run folder: the Dataset tab's reading path (`read_run`) never
truncates per_image.csv and never loses an acknowledged row, whether the writer is a thread or a process."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from dclsviz import evaluate
from dclsviz.ui.dataset_tab import read_run
from lock_writer import BATCHES, PER_BATCH, SHARD, append_batch

WRITER = Path(__file__).resolve().parent / "lock_writer.py"
ITEMS = [evaluate.Item(SHARD, i) for i in range(BATCHES * PER_BATCH)]


def _new_run(tmp: Path) -> Path:
    out = tmp / "run"
    out.mkdir()
    evaluate.RunRecord(out, "paper", 0.3).save()
    return out


def _check_final(out: Path) -> None:
    store = evaluate.ResultStore(out / evaluate.CSV_NAME, read_only=True)
    assert store.malformed == [] and store.duplicates == 0 and not store.dropped_torn_line
    assert sorted(k[3] for k in store.rows) == list(range(BATCHES * PER_BATCH))


def _read_and_check(out: Path, n_acked: int, size: int) -> int:
    """One read through the Dataset tab's path; returns the file size, which must never go down."""
    rows, _ = read_run(out, "demo", ITEMS, "paper", 0.3)
    seen = sorted(k[3] for k in rows)
    assert set(range(n_acked * PER_BATCH)) <= set(seen), "an acknowledged row is missing"
    assert seen == list(range(len(seen))) and len(seen) % PER_BATCH == 0, "a batch was seen in part"
    path = out / evaluate.CSV_NAME
    now = path.stat().st_size if path.exists() else 0
    assert now >= size, "per_image.csv shrank"
    return now


def test_reader_thread_beside_a_writer_thread(tmp_path):
    out = _new_run(tmp_path)
    acked: list[int] = []
    done = threading.Event()

    def writer():
        try:
            for b in range(BATCHES):
                append_batch(out, b)
                acked.append(b)
        finally:
            done.set()

    t = threading.Thread(target=writer)
    t.start()
    reads, size = 0, 0
    while not done.is_set() or reads < 3:
        size, reads = _read_and_check(out, len(acked), size), reads + 1
        time.sleep(0.002)
    t.join()
    assert reads >= 3
    _check_final(out)


def test_reader_beside_a_writer_process(tmp_path):
    out = _new_run(tmp_path)
    proc = subprocess.Popen([sys.executable, str(WRITER), str(out), "batches"], stdout=subprocess.PIPE, text=True)
    acked: list[int] = []
    reader = threading.Thread(target=lambda: acked.extend(int(line) for line in proc.stdout))
    reader.start()
    reads, size = 0, 0
    try:
        while proc.poll() is None or reads < 3:
            size, reads = _read_and_check(out, len(acked), size), reads + 1
            time.sleep(0.002)
        time.sleep(0.002)
    finally:
        proc.wait(timeout=120)
        reader.join()
    assert proc.returncode == 0 and acked == list(range(BATCHES))
    _check_final(out)


def test_reader_waits_for_a_batch_in_flight_and_leaves_it_whole(tmp_path):
    out = _new_run(tmp_path)
    proc = subprocess.Popen([sys.executable, str(WRITER), str(out), "slow"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "holding"
        t0 = time.monotonic()
        rows, _ = read_run(out, "demo", ITEMS, "paper", 0.3)
        waited = time.monotonic() - t0
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == 0
    assert waited > 0.5, "the reader did not wait for the writer's lock"
    assert sorted(k[3] for k in rows) == [0, 1]
    store = evaluate.ResultStore(out / evaluate.CSV_NAME, read_only=True)
    assert sorted(k[3] for k in store.rows) == [0, 1] and store.malformed == [] and not store.dropped_torn_line
