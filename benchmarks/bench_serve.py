"""Serving throughput: the real app under N concurrent gradio_client clients vs the same requests one at a time.

    python benchmarks/bench_serve.py [--requests 24] [--levels 1,4,8,16] [--concurrency 2] [--torch-threads N]
                                     [--rounds 3]

Starts ``python app.py`` in a subprocess (free port, offline, demo pair, its own cache and temp folders) and sends
a fixed list of mixed ``/compare`` requests: demo-shard records by index and the example photos as uploads, with
and without a human map, targets label / pred / a class index, both geometries, several thresholds. First the
list one request at a time from one client (the sequential baseline), then with N clients at once (one Client
per worker thread), all against the same server and its settings. Per N it prints throughput (requests/s) and
its ratio to the sequential run, p50 / p95 latency, the server's RSS before and after (VmRSS), and how many
results differ from the sequential run (scores, top-5 and targets of both models; must be 0), and the CPU
seconds per request of the server (/proc/<pid>/stat) and of the clients. Each figure is the best of ``--rounds``
interleaved rounds (mismatches: all rounds): other jobs' load drifts, and interleaving hits every level alike.

Clients do not download the returned PNGs and zip (the server still writes them): the clients share the
machine with the server, and what is measured is the server.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "assets" / "examples").glob("*.jpg"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(home: Path, concurrency: int, torch_threads: int | None) -> tuple[subprocess.Popen, str]:
    """``python app.py`` offline on the demo pair, everything it writes under ``home``."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DCLSVIZ_", "GRADIO_SERVER"))}
    env.update(DCLSVIZ_HOST="127.0.0.1", DCLSVIZ_PORT=str(port), DCLSVIZ_OFFLINE="1", DCLSVIZ_DEFAULT_ARCH="demo",
               DCLSVIZ_CACHE=str(home / "cache"), DCLSVIZ_CLICKME_DIR=str(home / "clickme"),
               DCLSVIZ_REVIEW_DB=str(home / "review.sqlite"), TORCH_HOME=str(home / "torch"),
               GRADIO_TEMP_DIR=str(home / "gradio"), TMPDIR=str(home / "tmp"), GRADIO_ANALYTICS_ENABLED="False",
               HF_HUB_OFFLINE="1", DCLSVIZ_CONCURRENCY=str(concurrency), PYTHONUNBUFFERED="1")
    if torch_threads:
        env["DCLSVIZ_TORCH_THREADS"] = str(torch_threads)
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    log = open(home / "server.log", "w")
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py")], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the app exited:\n{(home / 'server.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the app did not start within 240 s")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def human_maps(folder: Path) -> list[Path]:
    """Two grey human maps (soft blobs) of different sizes, written once."""
    out = []
    for i, (w, h, cx, cy) in enumerate([(320, 240, 0.45, 0.4), (200, 200, 0.6, 0.55)]):
        y, x = np.mgrid[0:h, 0:w]
        blob = 255 * np.exp(-(((x / w - cx) ** 2 + (y / h - cy) ** 2) / 0.18 ** 2))
        out.append(folder / f"map{i}.png")
        Image.fromarray(blob.round().astype(np.uint8)).save(out[-1])
    return out


def request_list(n: int, maps: list[Path]) -> list[dict]:
    """``n`` mixed /compare requests, the same list every run."""
    targets, geometries, thresholds = ["label", "pred", "3"], ["paper", "aligned"], [0.3, 0.5, 0.2]
    out = []
    for i in range(n):
        base = dict(target=targets[i % 3], geometry=geometries[(i // 2) % 2], threshold=thresholds[i % 3])
        if i % 2 == 0:
            out.append(dict(base, source="clickme", index=str((7 * i) % 128), image=None, human=None))
        else:
            human = maps[(i // 2) % 2] if i % 4 == 1 else None
            out.append(dict(base, source="upload", index="0", image=EXAMPLES[(i // 2) % len(EXAMPLES)],
                            human=human))
    return out


def call(client, r: dict):
    from gradio_client import handle_file

    out = client.predict("demo", r["source"], "", r["index"], handle_file(str(r["image"])) if r["image"] else None,
                         handle_file(str(r["human"])) if r["human"] else None, r["target"], r["threshold"],
                         r["geometry"], api_name="/compare")
    m = out[0]
    return {v: {"scores": o["scores"], "top5": o["top5"], "target": o["target"]} for v, o in m["models"].items()}


@dataclass
class Run:
    wall: float
    latencies: list[float]
    results: list[dict]
    server_cpu: float  # CPU seconds the server used
    client_cpu: float  # CPU seconds this process (the clients) used
    rss_before: float
    rss_after: float


def run_level(url: str, requests: list[dict], n: int, pid: int) -> Run:
    """``requests`` sent by ``n`` clients at once, each from its own thread with its own Client."""
    from gradio_client import Client

    clients = [Client(url, verbose=False, download_files=False) for _ in range(n)]
    local = threading.local()
    ids = iter(range(n))
    id_lock = threading.Lock()

    def one(r):
        if not hasattr(local, "client"):
            with id_lock:
                local.client = clients[next(ids)]
        t0 = time.perf_counter()
        res = call(local.client, r)
        return time.perf_counter() - t0, res

    rss0, s0, c0, t0 = rss_mb(pid), cpu_seconds(pid), time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        done = list(pool.map(one, requests))
    wall = time.perf_counter() - t0
    return Run(wall, [d[0] for d in done], [d[1] for d in done], cpu_seconds(pid) - s0, time.process_time() - c0,
               rss0, rss_mb(pid))


def mismatches(results: list[dict], reference: list[dict]) -> int:
    return sum(json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True) for a, b in zip(results, reference))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=24, help="requests per run (default 24)")
    p.add_argument("--levels", default="1,4,8,16", help="concurrent clients, comma-separated (default 1,4,8,16)")
    p.add_argument("--concurrency", type=int, default=2, help="the server's DCLSVIZ_CONCURRENCY (default 2)")
    p.add_argument("--torch-threads", type=int, help="the server's DCLSVIZ_TORCH_THREADS (default: its own)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best is shown (default 3)")
    args = p.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        home = Path(tmp)
        requests = request_list(args.requests, human_maps(home))
        proc, url = start_app(home, args.concurrency, args.torch_threads)
        try:
            run_level(url, requests[: min(4, len(requests))], 1, proc.pid)  # warm-up: first-use costs off the clock
            runs: dict[int, list[Run]] = {0: []} | {n: [] for n in levels}
            for _ in range(args.rounds):  # interleaved, so that load from other jobs hits every level alike
                for n in runs:
                    runs[n].append(run_level(url, requests, max(1, n), proc.pid))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    reference = runs[0][0].results
    print(f"server: DCLSVIZ_CONCURRENCY={args.concurrency}, {os.cpu_count()} CPUs; {len(requests)} /compare requests "
          f"per run; best of {args.rounds} interleaved rounds (mismatches: over all rounds)")
    print(f"{'N':>3} {'req/s':>7} {'vs seq':>7} {'p50 s':>7} {'p95 s':>7} {'RSS MB before':>14} {'after':>7} "
          f"{'mismatch':>8} {'server CPU s/req':>16} {'client CPU s/req':>16}")
    seq = min(runs[0], key=lambda r: r.wall)
    for n, rs in runs.items():
        bad = sum(mismatches(r.results, reference) for r in rs)
        row(n, min(rs, key=lambda r: r.wall), len(requests), seq.wall, bad)


def row(n: int, r: Run, count: int, seq_wall: float, bad: int) -> None:
    q = statistics.quantiles(r.latencies, n=20) if len(r.latencies) > 1 else [r.latencies[0]] * 19
    label = "seq" if n == 0 else str(n)
    print(f"{label:>3} {count / r.wall:7.2f} {seq_wall / r.wall:6.2f}x {statistics.median(r.latencies):7.2f} "
          f"{q[18]:7.2f} {r.rss_before:14.0f} {r.rss_after:7.0f} {bad:8d} {r.server_cpu / count:16.3f} "
          f"{r.client_cpu / count:16.3f}", flush=True)


if __name__ == "__main__":
    main()
