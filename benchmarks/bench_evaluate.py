"""Dataset evaluation throughput: batched ``explain_batch`` vs one image at a time, measured in one run.

    python benchmarks/bench_evaluate.py [--arch demo] [--images 64] [--batch-size 32] [--repeats 3] [--device cpu]

On the demo shard (bundled), with the demo pair or a study architecture (random weights). Each figure is the
best of ``--repeats`` interleaved rounds, so other jobs on a shared machine inflate it less and drift hits every
path alike; images/s count (image, model) evaluations of both models.
  per-image loop, our code      explain_batch with one sample per call
  per-image loop, study's code  what the study's evaluation code does per image: pytorch-grad-cam (one
                                forward and backward per map, parameter gradients on) and scipy's spearmanr
                                per map; its inputs are preprocessed beforehand and it computes no Dice/IoU,
                                so it is timed doing less than the others
  batched                       explain_batch with --batch-size samples per call (what `evaluate` does)
  evaluate()       the command's path: reading records, both models, per_image.csv with fsync (the
                   models already loaded)
Then where the time goes, stage by stage, batched and one image at a time, through the same core functions
explain_batch calls: how far batching can go on this device is the CAM stage's ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import grad_cam_package, interleaved, random_pair

from dclsviz import clickme, demo, evaluate, geometry, models, zoo
from dclsviz.cam import CamEngine
from dclsviz.compare import Sample, explain_batch, score_batch


def load_pair(arch: str, device) -> dict:
    """The demo pair's bundled weights, or random weights for a study architecture."""
    if arch == demo.ARCH:
        return {v: models.load(zoo.get(arch, v), device=device) for v in zoo.VARIANTS}
    return random_pair(arch, device)[1]


def reference_loop(pair, samples, device):
    """The study's per-image evaluation: one pytorch-grad-cam call per map, scipy's spearmanr per map."""
    from scipy.stats import spearmanr

    GradCAM, ThresholdGradCAM, ClassifierOutputTarget = grad_cam_package()
    nets = load_pair(pair["dcls"].entry.arch, device)  # copies: the package needs parameter gradients on
    for m in nets.values():
        m.model.requires_grad_(True)  # the package backpropagates into the parameters
    xs = [geometry.preprocess(s.image, pair["dcls"].entry.transform)[0][None].to(device) for s in samples]

    def run():
        for m in nets.values():
            for x, s in zip(xs, samples):
                for cls in (GradCAM, ThresholdGradCAM):
                    with cls(model=m.model, target_layers=[m.cam_module]) as cam:
                        g = cam(input_tensor=x, targets=[ClassifierOutputTarget(s.label)])[0]
                    frame = torch.nn.functional.interpolate(torch.from_numpy(g)[None, None], size=(224, 224),
                                                            mode="bilinear")[0, 0].numpy()
                    spearmanr(frame.astype(np.float32).ravel(), s.human.astype(np.float32).ravel())

    return run, len(samples)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--arch", default=demo.ARCH, help="demo (bundled weights) or a study architecture (random "
                                                     "weights); the images are the demo shard's either way")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    shard_path = zoo.ASSETS / demo.SHARD
    pair = load_pair(a.arch, device)
    engines = {v: CamEngine(m) for v, m in pair.items()}
    shard = clickme.ClickMeShard(shard_path)
    n = min(a.images, len(shard))
    samples = [Sample.from_clickme(shard[i]) for i in range(n)]
    evals = n * len(pair)

    def per_image():
        for v, m in pair.items():
            for s in samples:
                explain_batch(m, [s], "label", engine=engines[v])

    def batched():
        for v, m in pair.items():
            for i in range(0, n, a.batch_size):
                explain_batch(m, samples[i:i + a.batch_size], "label", engine=engines[v])

    shards = evaluate.open_shards([shard_path])
    items = evaluate.select_items(shards, n)

    def whole():
        with tempfile.TemporaryDirectory() as d:
            evaluate.evaluate([a.arch], list(zoo.VARIANTS), shards, items, Path(d), batch_size=a.batch_size,
                              device=device, progress=False, loader=lambda arch, v: pair[v])

    ref_loop, n_ref = reference_loop(pair, samples[:min(n, 16)], device)

    t = interleaved({"single": per_image, "batch": batched, "whole": whole, "ref": ref_loop},
                    a.repeats)
    t_single, t_batch, t_whole = t["single"], t["batch"], t["whole"]
    t_ref = t["ref"] * n / n_ref  # it runs on fewer images: scaled to the same count

    # stages of the batched path, per (image, model), again in interleaved rounds
    m = pair["dcls"]
    x = torch.stack([geometry.preprocess(s.image, m.entry.transform)[0] for s in samples])
    labels = [s.label for s in samples]
    r = engines["dcls"].explain(x, labels)
    maps = [{"gradcam": r.gradcam[i], "threshold_gradcam": r.threshold_gradcam[i]} for i in range(n)]
    humans = [s.human for s in samples]
    stages = interleaved({
        "read": lambda: [Sample.from_clickme(shard[i]) for i in range(n)],
        "pre": lambda: [geometry.preprocess(s.image, m.entry.transform) for s in samples],
        "cam_b": lambda: [engines["dcls"].explain(x[i:i + a.batch_size], labels[i:i + a.batch_size])
                          for i in range(0, n, a.batch_size)],
        "cam_1": lambda: [engines["dcls"].explain(x[i:i + 1], labels[i:i + 1]) for i in range(n)],
        "score_b": lambda: [score_batch(maps[i:i + a.batch_size], humans[i:i + a.batch_size], device)
                            for i in range(0, n, a.batch_size)],
        "score_1": lambda: [score_batch(maps[i:i + 1], humans[i:i + 1], device) for i in range(n)],
    }, a.repeats)
    t_read, t_pre, t_cam_b, t_cam_1, t_score_b, t_score_1 = (
        stages[k] / n for k in ("read", "pre", "cam_b", "cam_1", "score_b", "score_1"))

    load_avg = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"{a.arch} pair, {n} images of {shard_path.name}, device {device}, torch threads {torch.get_num_threads()}, "
          f"best of {a.repeats} interleaved rounds, load average {load_avg} on {os.cpu_count()} CPUs")
    print(f"  per-image loop, our code (explain_batch, 1 sample/call)   {evals / t_single:8.1f} images/s")
    print(f"  per-image loop, the study's code (pytorch-grad-cam, scipy) {evals / t_ref:8.1f} images/s "
          f"({n_ref} images, scaled)")
    print(f"  batched (explain_batch, {a.batch_size} samples/call)                {evals / t_batch:8.1f} images/s")
    print(f"  ratio batched / study's per-image loop                    {t_ref / t_batch:8.2f}x  (target >= 3)")
    print(f"  ratio batched / our per-image loop                        {t_single / t_batch:8.2f}x")
    print(f"  evaluate(): records, CSV + fsync, batch {a.batch_size:<3}                 {evals / t_whole:8.1f} images/s")
    print(f"  per (image, model), DCLS model          batch {a.batch_size:<3}  batch 1   ratio")
    for name, b, one in (("read + decode record, human map (once/image)", t_read, t_read),
                         ("preprocess (PIL resize, crop, normalise)", t_pre, t_pre),
                         ("forward + backward + CAMs", t_cam_b, t_cam_1),
                         ("scores (Spearman, Dice, IoU of 2 maps)", t_score_b, t_score_1)):
        print(f"    {name:<46} {b * 1e3:6.2f} ms {one * 1e3:6.2f} ms {one / b:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
