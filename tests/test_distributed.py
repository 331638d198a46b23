"""``torchrun -m dclsviz evaluate`` on the CPU over gloo: two ranks write exactly one process's rows, and a job
with a rank killed by SIGKILL resumes into the same rows, without duplicates or gaps."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TORCHRUN = Path(sys.executable).with_name("torchrun")
N, BATCH = 40, 4
ARGS = ["evaluate", "--arch", "demo", "--demo", "--limit", str(N), "--batch-size", str(BATCH), "--device", "cpu",
        "--no-progress"]


def _env(tmp: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "DCLSVIZ_CACHE": str(tmp / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("DCLSVIZ_CHECKPOINT_DIR", None)
    return env


def _torchrun(tmp: Path, out: Path, *, popen: bool = False):
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "dclsviz", *ARGS, "--workers", "0",
           "--out", str(out)]
    if popen:
        return subprocess.Popen(cmd, cwd=REPO, env=_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    r = subprocess.run(cmd, cwd=REPO, env=_env(tmp), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("single")
    r = subprocess.run([sys.executable, "-m", "dclsviz", *ARGS, "--workers", "0", "--out", str(tmp / "run")],
                       cwd=REPO, env=_env(tmp), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp / "run"


def _rows(out: Path) -> list[dict]:
    with open(out / "per_image.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_two_ranks_write_one_process_rows(single, tmp_path):
    out = tmp_path / "run"
    _torchrun(tmp_path, out)
    assert (out / "per_image.csv").read_bytes() == (single / "per_image.csv").read_bytes()
    got, want = (json.loads((d / "summary.json").read_text()) for d in (out, single))
    assert got["models"] == want["models"] and got["paired"] == want["paired"]
    assert (out / "table1.txt").read_text() == (single / "table1.txt").read_text()
    assert not (out / "parts").exists()  # merged, then removed


def _rank_pids(launcher: subprocess.Popen) -> dict[int, int]:
    """{RANK: pid} of the launcher's worker processes."""
    pids = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fields = dict(line.split(":\t", 1) for line in (proc / "status").read_text().splitlines() if ":\t" in line)
            if int(fields.get("PPid", "0").strip()) != launcher.pid:
                continue
            env = dict(v.split("=", 1) for v in (proc / "environ").read_text().split("\0") if "=" in v)
        except OSError:
            continue
        pids[int(env["RANK"])] = int(proc.name)
    return pids


def test_a_killed_rank_resumes_without_duplicates_or_gaps(single, tmp_path):
    out = tmp_path / "run"
    job = _torchrun(tmp_path, out, popen=True)
    part = out / "parts" / "rank-1" / "per_image.csv"
    deadline = time.monotonic() + 300
    while not (part.exists() and part.read_text().count("\n") >= 1 + 2 * BATCH):
        assert job.poll() is None, job.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "rank 1 wrote no rows"
        time.sleep(0.05)
    ranks = _rank_pids(job)
    assert sorted(ranks) == [0, 1]
    os.kill(ranks[1], signal.SIGKILL)
    assert job.wait(timeout=120) != 0
    assert not (out / "per_image.csv").exists()  # nothing merged from a failed job
    partial = part.read_text().count("\n") - 1
    assert 0 < partial < N  # rank 1 (20 records × 2 models) was killed mid-share

    _torchrun(tmp_path, out)
    rows = _rows(out)
    keys = [(r["variant"], int(r["index"])) for r in rows]
    assert len(keys) == len(set(keys)) == 2 * N
    # every value as a fresh single process computes it; the rank that resumed recomputed only its missing rows
    assert rows == _rows(single)
