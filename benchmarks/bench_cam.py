"""CAM cost vs the inference floor, vs pytorch-grad-cam, and live vs frozen DCLS — measured in one run.

    python benchmarks/bench_cam.py [--arch convnext_tiny] [--repeats 5] [--device cpu]

Random weights (no download): speed does not depend on the values.
  floor        one inference forward of both models under torch.no_grad()
  ours         the full pair comparison: both models, both CAMs, Spearman against a human map
  grad-cam     the same four maps with the pytorch-grad-cam package (one call per map)
  live DCLS    one Grad-CAM pass through the DCLS model with its live Dcls2d layers (kernel rebuilt each forward)
  methods      the pair with all one-pass methods (methods.ONE_PASS) against the paper's two alone (target <= 1.3)
  faithfulness deletion + insertion of one map (k steps, one batch of 2k) against 2k bare forwards of the model
               (target: within 15 %)
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from common import grad_cam_package, interleaved, median, random_pair

from dclsviz import faithfulness, methods, models
from dclsviz.cam import CamEngine
from dclsviz.compare import Sample, compare


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="convnext_tiny")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=faithfulness.DEFAULT_STEPS)
    p.add_argument("--only-methods", action="store_true", help="only the methods and faithfulness ratios")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    live, pair = random_pair(a.arch, device)
    side = pair["baseline"].entry.transform.crop
    rng = np.random.default_rng(0)
    image = (rng.random((side, side, 3)) * 255).astype(np.uint8)
    human = rng.random((64, 64)).astype(np.float32)
    sample = Sample.from_image(image, human)
    from dclsviz import geometry

    x = geometry.preprocess(image, pair["baseline"].entry.transform)[0][None].to(device)

    def floor():
        with torch.no_grad():
            for m in pair.values():
                xi = x.contiguous(memory_format=torch.channels_last) if m.channels_last else x
                m.model(xi)

    def ours():
        compare(pair, sample, target="pred")

    if a.only_methods:
        return methods_and_faithfulness(a, pair, sample, x, side)


    GradCAM, ThresholdGradCAM, ClassifierOutputTarget = grad_cam_package()

    # the package needs trainable parameters to backpropagate through its forward
    _, gc_models = random_pair(a.arch, device)
    for m in gc_models.values():
        m.model.requires_grad_(True)

    def gradcam_package():
        for m in gc_models.values():
            layer = [m.cam_module]
            for cls in (GradCAM, ThresholdGradCAM):
                with cls(model=m.model, target_layers=layer) as cam:
                    cam(input_tensor=x, targets=[ClassifierOutputTarget(1)])


    live_dcls = live["dcls"].to(device).eval()
    live_dcls.requires_grad_(False)
    live_loaded = models.LoadedModel(pair["dcls"].entry, live_dcls, device, None, channels_last=False)
    frozen_engine, live_engine = CamEngine(pair["dcls"]), CamEngine(live_loaded)
    t = interleaved({"floor": floor, "ours": ours, "pkg": gradcam_package,
                     "frozen": lambda: frozen_engine.explain(x, None), "live": lambda: live_engine.explain(x, None)},
                    a.repeats, stat=median)
    t_floor, t_ours, t_pkg, t_frozen, t_live = (t[k] for k in ("floor", "ours", "pkg", "frozen", "live"))

    print(f"{a.arch} pair, {side}x{side}, device {device}, torch threads {torch.get_num_threads()}, "
          f"median of {a.repeats}")
    print(f"  floor: inference forward of both models (no_grad)  {t_floor * 1e3:8.1f} ms")
    print(f"  ours: full pair comparison (4 maps + Spearman)      {t_ours * 1e3:8.1f} ms")
    print(f"  ratio ours / floor                                  {t_ours / t_floor:8.2f}   (target <= 1.2)")
    print(f"  pytorch-grad-cam, the same 4 maps                   {t_pkg * 1e3:8.1f} ms")
    print(f"  speed-up over pytorch-grad-cam                      {t_pkg / t_ours:8.2f}x  (target >= 4)")
    print(f"  DCLS model, one CAM pass: frozen                    {t_frozen * 1e3:8.1f} ms")
    print(f"  DCLS model, one CAM pass: live Dcls2d               {t_live * 1e3:8.1f} ms")
    print(f"  live / frozen                                       {t_live / t_frozen:8.2f}x")
    return methods_and_faithfulness(a, pair, sample, x, side)


def methods_and_faithfulness(a, pair, sample, x, side) -> int:
    """All one-pass methods vs the paper's two for the pair; deletion + insertion vs its bare forwards."""
    lm = pair["dcls"]
    sal = torch.rand(side, side, generator=torch.Generator().manual_seed(0)).to(x.device)
    bare = torch.cat([x] * (2 * a.steps))
    t = interleaved({"two": lambda: compare(pair, sample, target="pred"),
                     "all": lambda: compare(pair, sample, target="pred", methods=methods.ONE_PASS),
                     "delins": lambda: faithfulness.deletion_insertion(lm, x, sal, 1, 0.5, a.steps),
                     "bare": lambda: faithfulness.probabilities(lm, bare, 1)}, a.repeats, stat=median)
    print(f"  pair, the paper's two maps                          {t['two'] * 1e3:8.1f} ms")
    print(f"  pair, all {len(methods.ONE_PASS)} one-pass methods                      {t['all'] * 1e3:8.1f} ms")
    print(f"  ratio all / paper's two                             {t['all'] / t['two']:8.2f}   (target <= 1.3)")
    print(f"  deletion + insertion, one map, k={a.steps}               {t['delins'] * 1e3:8.1f} ms")
    print(f"  {2 * a.steps} bare inference forwards (one batch)            {t['bare'] * 1e3:8.1f} ms")
    print(f"  ratio deletion+insertion / bare forwards            {t['delins'] / t['bare']:8.2f}   (target <= 1.15)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
