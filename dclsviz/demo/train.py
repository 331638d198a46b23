"""Training the demo pair on CPU, checking it through the app's own path, and writing assets/demo.

Both models see the same generated images in the same order from the same initial seed; the DCLS
twin trains with live ``Dcls2d`` layers (positions learned, clamped to the window after each step as
the DCLS authors do) and is saved with those live keys, so ``models.load`` rebuilds and freezes it
exactly as it does the paper's checkpoints.

The quality check reads the written files back: the shard through ``clickme.ClickMeShard``, the
weights through ``models.load`` with the zoo entry, the maps through ``CamEngine`` and the scores
through ``metrics.spearman``, so what is reported is what a user of the app will see.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import geometry, zoo
from ..zoo import ModelEntry, Transform
from . import ARCH, CLASS_NAMES, META, SHARD, entry_for

DEFAULT_OUT = zoo.ASSETS / "demo"

N_TRAIN = 8192
N_VAL = 128
STEPS = 1200
BATCH = 32
LR = 2e-3
WEIGHT_DECAY = 0.05
WARMUP = 60
LABEL_SMOOTHING = 0.0
THREADS = 2
_GOLDEN = (5 ** 0.5 - 1) / 2

Log = Callable[[str], None]
DESCRIPTION = "Train the offline demo pair on CPU and write its assets (weights, shard, metadata)."


# --- training -----------------------------------------------------------------------------------


def training_clutter(index: int) -> float:
    """The clutter of training sample ``index``: spread evenly over [0, 1], weighted to the full level.

    A network trained only on full clutter stays near chance for hundreds of steps; easier images in
    the mix show it the shapes first. sqrt puts two thirds of the samples above clutter 0.44.
    """
    return math.sqrt((index * _GOLDEN) % 1.0)


def training_set(transform: Transform, seed: int, n: int, log: Log) -> tuple[torch.Tensor, torch.Tensor]:
    """n generated samples as the model will see them: JPEG round trip, then the eval geometry."""
    from ..human import decode_jpeg
    from . import data

    start = time.perf_counter()
    xs, ys = [], []
    chunk = 256
    for lo in range(0, n, chunk):
        images = []
        for i in range(lo, min(n, lo + chunk)):
            image, heat, label = data.make_sample(seed, i, clutter=training_clutter(i))
            # through the same JPEG codec the shard uses, so train and test pixels carry the same artefacts
            images.append(decode_jpeg(data.encode(image, heat)[0], gray=False))
            ys.append(label)
        xs.append(torch.stack([geometry.resize_crop(im, transform)[0] for im in images]))
    log(f"generated {n} training images in {time.perf_counter() - start:.1f}s")
    return torch.cat(xs), torch.tensor(ys, dtype=torch.long)


def _dihedral(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    # Every class is drawn at any rotation and its mirror image is the same class, so the 8 quarter
    # turns and mirrors of a batch are new samples of the same classes.
    k = int(torch.randint(0, 4, (1,), generator=g))
    x = torch.rot90(x, k, (2, 3))
    if int(torch.randint(0, 2, (1,), generator=g)):
        x = x.flip(3)
    return x


def _param_groups(model: nn.Module) -> list[dict]:
    # No decay on norms, biases and DCLS positions: decay would pull the positions to the kernel centre.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".P") else decay).append(p)
    return [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}]


def _clamp_positions(model: nn.Module) -> None:
    from .. import dcls

    for _, layer in dcls.dcls_layers(model):
        layer.clamp_parameters()


def fit(entry: ModelEntry, x_u8: torch.Tensor, y: torch.Tensor, *, seed: int, steps: int, log: Log) -> nn.Module:
    """Train ``entry``'s architecture (DCLS layers live) on the uint8 images; returns it in eval mode."""
    from .. import models

    torch.manual_seed(seed)
    model = models.build(entry).train()
    model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(_param_groups(model), lr=LR)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / WARMUP) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    pos = 0
    start = time.perf_counter()
    running = None
    for step in range(steps):
        if pos + BATCH > len(order):
            order, pos = torch.randperm(len(y), generator=g), 0
        idx = order[pos:pos + BATCH]
        pos += BATCH
        xb = _dihedral(geometry.normalise(x_u8[idx], entry.transform), g).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(xb), y[idx], label_smoothing=LABEL_SMOOTHING)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        _clamp_positions(model)
        value = float(loss.detach())
        running = value if running is None else 0.95 * running + 0.05 * value
        if (step + 1) % 25 == 0 or step + 1 == steps:
            log(f"{entry.id}: step {step + 1}/{steps} loss {running:.3f} ({time.perf_counter() - start:.0f}s)")
    return model.eval()


def save_weights(model: nn.Module, path: Path) -> None:
    """The live state dict as float32 safetensors; shared DCLS positions become one tensor per key."""
    from safetensors.torch import save_file

    # safetensors refuses tensors that share storage, and the layers of a stage share one P
    sd = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(sd, str(tmp))
    tmp.replace(path)


# --- the check, through the app's path ----------------------------------------------------------


def evaluate(entry: ModelEntry, shard_path: Path, checkpoint: Optional[Path] = None, batch: int = 32) -> dict:
    """Accuracy and Grad-CAM-vs-human Spearman of ``entry`` on a ClickMe shard.

    ``checkpoint`` None: the entry's own (bundled) file. Grad-CAM explains each record's label.
    """
    from .. import metrics, models
    from ..clickme import ClickMeShard
    from ..compare import Sample, explain_batch

    # the app's own data path, so the reported quality is what a user of the app sees
    loaded = models.load(entry, checkpoint, device=torch.device("cpu"), download=False)
    shard = ClickMeShard(shard_path)
    correct, rhos = 0, []
    for lo in range(0, len(shard), batch):
        samples = [Sample.from_clickme(shard[i]) for i in range(lo, min(len(shard), lo + batch))]
        for s, out in zip(samples, explain_batch(loaded, samples, target="label")):
            correct += int(int(out.logits.argmax()) == s.label)
            rhos.append(out.scores["gradcam"].spearman)
    summary = metrics.summarise(rhos)
    return {"n": len(shard), "accuracy": correct / max(len(shard), 1), "spearman_mean": summary["mean"],
            "spearman_undefined": summary["n_undefined"]}


# --- the whole job --------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _versions() -> dict:
    from importlib.metadata import version

    import cv2
    import timm

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "dcls": version("dcls"), "numpy": np.__version__, "opencv": cv2.__version__,
            "simplejpeg": version("simplejpeg")}


def train(out_dir: Path = DEFAULT_OUT, *, seed: int = 0, log: Log = print, steps: int = STEPS,
          n_train: int = N_TRAIN, n_val: int = N_VAL) -> dict:
    """Generate the data, train both demo models, write the weights, the shard and the metadata.

    Returns the metadata written to ``demo_meta.json``. Defaults are the shipped run's settings; the
    smaller ``steps``/``n_train``/``n_val`` are for smoke tests.
    """
    from . import data

    torch.set_num_threads(THREADS)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    shard_path = out_dir / Path(SHARD).name
    data.write_demo_shard(shard_path, n_val, seed)
    log(f"wrote {n_val} held-out records to {shard_path}")

    x_u8, y = training_set(entry_for("baseline").transform, seed, n_train, log)
    gen_seconds = time.perf_counter() - t0

    results = {}
    for variant in zoo.VARIANTS:
        entry = zoo.get(ARCH, variant)
        start = time.perf_counter()
        model = fit(entry, x_u8, y, seed=seed, steps=steps, log=log)
        seconds = time.perf_counter() - start
        path = out_dir / entry.checkpoint.file_name
        save_weights(model, path)
        scores = evaluate(entry, shard_path, checkpoint=path)
        log(f"{entry.id}: accuracy {scores['accuracy']:.3f}, mean Grad-CAM Spearman "
            f"{scores['spearman_mean']}, trained in {seconds:.0f}s")
        results[variant] = {**scores, "train_seconds": round(seconds, 1), "file": path.name,
                            "sha256": _sha256(path), "bytes": path.stat().st_size}

    base = zoo.get(ARCH, "baseline")
    meta = {
        "seed": seed,
        "classes": list(CLASS_NAMES),
        "timm_name": base.timm_name,
        "timm_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in base.timm_kwargs.items()},
        "dcls_recipe": vars(zoo.get(ARCH, "dcls").dcls),
        "transform": {"resize": base.transform.resize, "crop": base.transform.crop,
                      "interpolation": base.transform.interpolation},
        "cam_layer": base.cam_layer,
        "training": {"n_train": n_train, "steps": steps, "batch": BATCH, "lr": LR, "weight_decay": WEIGHT_DECAY,
                     "warmup": WARMUP, "label_smoothing": LABEL_SMOOTHING, "threads": torch.get_num_threads(),
                     "clutter": "sqrt of a golden-ratio sequence over [0, 1]; the shard has clutter 1",
                     "augmentation": "dihedral (quarter turns and mirror)"},
        "shard": {"file": shard_path.name, "records": n_val, "first_index": data.HELD_OUT_START,
                  "sha256": _sha256(shard_path), "bytes": shard_path.stat().st_size},
        "models": results,
        "data_seconds": round(gen_seconds, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "versions": _versions(),
    }
    (out_dir / Path(META).name).write_text(json.dumps(meta, indent=2) + "\n")
    log(f"done in {meta['total_seconds']:.0f}s; files in {out_dir}")
    return meta


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``demo train`` options on ``p``."""
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=STEPS, help="optimiser steps per model")
    p.add_argument("--n-train", type=int, default=N_TRAIN, help="generated training images")
    p.add_argument("--n-val", type=int, default=N_VAL, help="records of the held-out shard")
    return p


def run(args: argparse.Namespace) -> int:
    """``demo train`` with parsed options."""
    train(args.out, seed=args.seed, steps=args.steps, n_train=args.n_train, n_val=args.n_val)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m dclsviz.demo.train``: train the demo pair."""
    p = add_arguments(argparse.ArgumentParser(prog="python -m dclsviz demo train", description=DESCRIPTION))
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
