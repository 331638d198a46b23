"""The whole study at hardware speed, measured in one run: how close ``evaluate`` comes to the models' own speed.

    python benchmarks/bench_study.py [--arch convnext_tiny] [--records 2048] [--batch-size 64] [--device cuda]
                                     [--content demo|random] [--workers 0,1,2] [--no-torchrun] [--no-cold-start]

N synthetic records are written as a ClickMe-format shard at the real size (256-px JPEG images and one-channel
JPEG click maps: the demo generator's shapes, or random content). The pair of ``--arch`` gets random weights
(speed does not depend on their values). Then, on ``--device``:
  (a) bare inference: both models' forward at batch B, no gradients, inputs already on the device;
  (b) ``evaluate`` end to end on the records: reading, decoding, human maps, preprocessing (in ``--workers``
      processes), the CAM pass, scoring, per_image.csv with fsync;
  (c) b / a: the share of the models' own speed the whole path keeps;
  (d) the data path alone (datapath.batches) at each worker count, and its speed-up over one worker;
  (e) the projected time of the paper's Table 1 (16 models x 52,224 ClickMe images) at rate (b);
  (f) ``torchrun`` with 2 processes against 1, through the real command (the kit's stand-in checkpoints,
      written in the published containers; skipped without the kit);
  (g) the cold start of every study model, stage by stage (``bench_cold_start``).
Rates count (image, model) evaluations per second. Each is the best of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import interleaved, random_pair

from dclsviz import clickme, datapath, demo, evaluate, zoo
from dclsviz.demo import data as demo_data

TABLE1_IMAGES = 52_224
TABLE1_MODELS = 16
REPO = Path(__file__).resolve().parent.parent


def write_records(path: Path, n: int, content: str) -> Path:
    """N records at ClickMe's size: the demo generator's shapes, or random pixels and a random smooth click map."""
    if content == "demo":
        clickme.write_shard(path, demo_data.records(0, demo_data.held_out_indices(n)))
        return path
    rng = np.random.default_rng(0)

    def random_records():
        for i in range(n):
            image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
            coarse = rng.random((8, 8))
            heat = np.kron(coarse, np.ones((32, 32)))
            yield (*demo_data.encode(image, (heat * 255).astype(np.uint8)), int(rng.integers(0, 1000)))

    clickme.write_shard(path, random_records())
    return path


def shard_path(folder: Path, arch: str) -> Path:
    # the demo pair's classes are the demo shard's labels, known by its file name; the study's are ImageNet's
    return folder / (Path(demo.SHARD).name if arch == demo.ARCH else "val-0.tfrecords")


def bare_rate(loaded: dict, batch: int, device, repeats: int) -> float:
    """(a): forward passes of both models at ``batch``, (image, model) per second."""
    t = loaded["baseline"].entry.transform
    x = torch.randn(batch, 3, t.crop, t.crop, device=device)
    xs = {v: x.contiguous(memory_format=torch.channels_last) if lm.channels_last else x for v, lm in loaded.items()}

    def both():
        with torch.no_grad():
            for v, lm in loaded.items():
                lm.model(xs[v])

    return 2 * batch / interleaved({"a": both}, repeats)["a"]


def evaluate_rates(loaded: dict, arch: str, shards: dict, items: list, batch: int, device, workers: list[int],
                   repeats: int) -> dict[int, float]:
    """(b): ``evaluate`` over every record into a fresh folder at each worker count, (image, model) per second;
    the worker counts take turns in each round, so load drifts on a shared machine hit them alike."""
    best = dict.fromkeys(workers, float("inf"))
    for _ in range(repeats):
        for w in workers:
            with tempfile.TemporaryDirectory() as out:
                t = time.perf_counter()
                evaluate.evaluate([arch], list(zoo.VARIANTS), shards, items, Path(out), batch_size=batch,
                                  device=device, progress=False, loader=lambda a, v: loaded[v], workers=w)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                best[w] = min(best[w], time.perf_counter() - t)
    return {w: 2 * len(items) / t for w, t in best.items()}


def data_rate(shards: dict, items: list, transforms: list, batch: int, workers: int, repeats: int) -> float:
    """(d): records per second through the data path alone."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in datapath.batches(shards, items, transforms, batch, workers):
            pass
        best = min(best, time.perf_counter() - t)
    return len(items) / best


def torchrun_rates(shard: Path, arch: str, n: int, batch: int, device: str, repeats: int) -> dict[int, float]:
    """(f): the real command with 1 and 2 processes on the kit's stand-in checkpoints, (image, model) per second."""
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = Path(tmp) / "checkpoints"
        if arch != demo.ARCH:  # the demo pair's files are bundled
            sys.path.insert(0, str(REPO / "benchmarks"))
            from bench_cold_start import fake_module, kit_folder

            kit = kit_folder()
            fake = fake_module(kit)
            ckpts.mkdir(parents=True)
            for v in zoo.VARIANTS:
                man = fake.load_manifest(kit / "manifests" / f"{arch}.{v}.json")
                fake.write_checkpoint(man, ckpts / man["file_name"], seed=0)
        env = {**os.environ, "PYTHONPATH": str(REPO), "DCLSVIZ_CACHE": str(Path(tmp) / "cache")}
        for procs in (1, 2):
            best = float("inf")
            for k in range(repeats):
                out = Path(tmp) / f"run-{procs}-{k}"
                cmd = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", str(procs),
                       "-m", "dclsviz", "evaluate", "--arch", arch, "--clickme", str(shard), "--limit", str(n),
                       "--batch-size", str(batch), "--device", device, "--checkpoint-dir", str(ckpts),
                       "--no-download", "--no-progress", "--resamples", "100", "--out", str(out)]
                t = time.perf_counter()
                r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
                if r.returncode != 0:
                    raise RuntimeError(f"torchrun failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
                best = min(best, time.perf_counter() - t)
            rates[procs] = 2 * n / best
    return rates


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="convnext_tiny")
    p.add_argument("--records", type=int, default=2048)
    p.add_argument("--content", choices=("demo", "random"), default="demo")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", default=None, help="comma-separated worker counts for (d) (default 0,1,2,..cores)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-torchrun", action="store_true")
    p.add_argument("--torchrun-records", type=int, default=256, help="records for (f) (default 256)")
    p.add_argument("--no-cold-start", action="store_true")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    cores = datapath.available_cores()
    counts = [int(w) for w in a.workers.split(",")] if a.workers else sorted({0, 1, 2, cores})
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cores} cores, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        shard = write_records(shard_path(Path(tmp), a.arch), a.records, a.content)
        print(f"wrote {a.records} {a.content} records ({shard.stat().st_size / 1e6:.0f} MB) in "
              f"{time.perf_counter() - t:.1f} s")
        shards = evaluate.open_shards([shard])
        items = evaluate.select_items(shards)
        _, loaded = random_pair(a.arch, device)
        transforms = list(dict.fromkeys(lm.entry.transform for lm in loaded.values()))
        bare = bare_rate(loaded, a.batch_size, device, max(3, a.repeats))
        print(f"(a) bare inference, batch {a.batch_size}: {bare:,.0f} (image, model)/s")
        ends = evaluate_rates(loaded, a.arch, shards, items, a.batch_size, device, sorted({0, 1, cores}), a.repeats)
        best_w = max(ends, key=ends.get)
        for w, r in ends.items():
            print(f"(b) evaluate end to end, {w} workers: {r:,.0f} (image, model)/s")
        print(f"(c) b / a = {ends[best_w] / bare:.2f} (target on a GPU: >= 0.7)")
        rates = {w: data_rate(shards, items, transforms, a.batch_size, w, a.repeats) for w in counts}
        one = rates.get(1)
        for w, r in rates.items():
            print(f"(d) data path alone, {w} workers: {r:,.0f} records/s"
                  + (f" ({r / one:.2f}x one worker)" if one and w > 1 else ""))
        seconds = TABLE1_MODELS * TABLE1_IMAGES / ends[best_w]
        print(f"(e) Table 1 ({TABLE1_MODELS} models x {TABLE1_IMAGES:,} images) at (b): {seconds / 60:,.1f} min "
              f"(if every architecture ran at {a.arch}'s rate)")
        if not a.no_torchrun:
            try:
                tr = torchrun_rates(shard, a.arch, min(a.torchrun_records, a.records), a.batch_size, a.device,
                                    a.repeats)
                print(f"(f) torchrun, the whole command with its start: 1 process {tr[1]:,.1f}, 2 processes "
                      f"{tr[2]:,.1f} (image, model)/s: {tr[2] / tr[1]:.2f}x")
            except (RuntimeError, FileNotFoundError) as e:
                print(f"(f) torchrun skipped: {e}")
    if not a.no_cold_start:
        print("(g) cold start of every study model:", flush=True)
        sys.path.insert(0, str(REPO / "benchmarks"))
        import bench_cold_start

        bench_cold_start.main(["--repeats", str(a.repeats), "--no-kernels"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
