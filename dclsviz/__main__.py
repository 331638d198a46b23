"""Command line: ``python -m dclsviz {explain,models,evaluate,review,demo,pair}``. Argument parsing only; the work is in
the core."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import numpy as np

from .files import write_json

DESCRIPTION = ("Grad-CAM and Threshold-Grad-CAM of baseline and DCLS models against ClickMe human attention: explain "
               "one image, list the models, evaluate on ClickMe shards, administer review sessions, check a pair "
               "file of your own, train the demo pair.")


def _progress_bar(desc: str):
    from tqdm import tqdm

    bar = {}

    def update(done: int, total: Optional[int]) -> None:
        if "b" not in bar:
            bar["b"] = tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=sys.stderr)
        bar["b"].update(done - bar["b"].n)

    return update


def _clickme_sample(spec: str):
    """The record SHARD:INDEX names, or a one-line error (empty shard, index out of range, bad index)."""
    from . import clickme, limits
    from .compare import Sample

    if ":" not in spec:
        raise ValueError(f"--clickme expects SHARD:INDEX, e.g. val-0.tfrecords:12, not {spec!r}")
    path, index = spec.rsplit(":", 1)
    i = limits.whole_number(index, "the --clickme record index", 0, limits.MAX_SEED)
    try:
        shard = clickme.ClickMeShard(Path(path))  # an empty or unreadable shard is refused here
    except clickme.ClickMeFormatError as e:
        raise ValueError(f"--clickme: {e}") from None
    if i >= len(shard):
        raise ValueError(f"--clickme: the shard {path} has {len(shard)} records: choose an index from 0 to "
                         f"{len(shard) - 1}, not {i}")
    return Sample.from_clickme(shard[i])


def _sample(args):
    import torch

    from . import images
    from .compare import Sample

    sources = [bool(args.image), bool(args.clickme), args.input_tensor is not None]
    if sum(sources) != 1:
        raise ValueError("give exactly one input: IMAGE, --clickme SHARD:INDEX or --input-tensor X.npy")
    if args.clickme:
        return _clickme_sample(args.clickme)
    if args.input_tensor is not None:
        x = images.load_input_tensor(args.input_tensor)
        return Sample(np.zeros((x.shape[1], x.shape[2], 3), np.uint8), name=str(args.input_tensor),
                      input_tensor=torch.from_numpy(x))
    return Sample.from_image(images.load_image(args.image), name=str(args.image))


def _load_model(args, entry):
    from . import checkpoints
    from .models import load

    try:
        return load(entry, args.checkpoint, checkpoint_dir=args.checkpoint_dir, device=args.device,
                    progress=_progress_bar(entry.checkpoint.file_name))
    except checkpoints.CheckpointError as e:
        offline = isinstance(e, checkpoints.CheckpointUnavailable) and entry.arch != "demo"
        offer = " Offline? The bundled demo pair works anywhere: --arch demo." if offline else ""
        raise ValueError(f"{e}{offer}") from None


def _explained_entry(args):
    """The entry ``explain`` runs: ``--arch``'s from the registry, or one of the pair file ``--pair``."""
    from . import pairs, zoo

    if args.pair is None:
        if not args.arch:
            raise ValueError("give --arch NAME (see `python -m dclsviz models`) or --pair FILE")
        return zoo.get(args.arch, args.variant)
    baseline, twin = pairs.load_file(args.pair)
    if args.arch and args.arch != baseline.arch:
        raise ValueError(f"--arch {args.arch} is not the pair of {args.pair} ({baseline.arch}); give one of them")
    return {"baseline": baseline, "dcls": twin}[args.variant]


def cmd_explain(args) -> int:
    """One model on one input: the maps as .npy, result.json (the app's manifest for that one model) and
    panel.png (the app's exported figure, this model's row)."""
    from . import human, images, methods, render, runtime
    from .compare import Comparison, explain_batch
    from .labels import class_index

    chosen = methods.parse(args.methods)
    runtime.start(args.device)
    entry = _explained_entry(args)
    human_raw = images.load_map(args.human) if args.human else None
    sample = _sample(args)
    if human_raw is not None:  # a user's map replaces the record's own
        sample.human = human.user_map(human_raw)
    target = args.target
    if target not in ("pred", "label"):
        target = class_index(target, entry.class_names)
    loaded = _load_model(args, entry)
    out = explain_batch(loaded, [sample], target, args.threshold, args.geometry, methods=chosen,
                        faithfulness=args.faithfulness, layer=args.layer, steps=args.steps)[0]
    args.out.mkdir(parents=True, exist_ok=True)
    np.save(args.out / "logits.npy", out.logits.astype(np.float32))
    for m in chosen:
        np.save(args.out / f"{m}.npy", out.maps[m].astype(np.float32))
        np.save(args.out / f"{m}_lowres.npy", out.lowres[m].astype(np.float32))
    if out.human is not None:
        np.save(args.out / "human.npy", out.human.astype(np.float32))
    comparison = Comparison(sample, args.geometry, args.threshold, target, {entry.variant: out}, out.seconds)
    write_json(args.out / "result.json", comparison.manifest(public=False))
    # the figure the app exports, drawn by the same function, with this one model's row
    (args.out / "panel.png").write_bytes(render.panel_png(comparison, out.class_names))
    rho = ", ".join(f"{m} {s.spearman:+.4f}" if s.spearman is not None else f"{m} undefined"
                    for m, s in out.scores.items())
    print(f"{entry.id}: target {out.target} ({out.class_name(out.target)}); top-1 "
          f"{out.class_name(out.top5[0][0])} {out.top5[0][1]:.3f}; Spearman: "
          f"{rho if out.human is not None else 'no human map'}; wrote {args.out}")
    for m, f in out.faithfulness.items():
        print(f"  {m}: deletion AUC {f.deletion:.4f} (lower: more faithful), insertion AUC {f.insertion:.4f}, "
              f"ROAD {f.road:+.4f} (higher: more faithful)")
    return 0


def cmd_models(args) -> int:
    """Print every registry entry and where its checkpoint is (or how to get it)."""
    from . import checkpoints, zoo

    for e in zoo.entries():
        if e.checkpoint.bundled:
            where = f"bundled assets/{e.checkpoint.bundled}"
        else:
            local = checkpoints.find_local(e, args.checkpoint_dir)
            where = f"cached ({local[0]}: {local[1]})" if local else "not cached"
        src = e.checkpoint.urls[0] if e.checkpoint.urls else "-"
        print(f"{e.id:26s} {e.timm_name:15s} {where}\n{'':26s} source: {src}")
    return 0


def cmd_pair_check(args) -> int:
    """``pair check FILE``: validate a pair file, load both checkpoints strictly, run one comparison, report."""
    from . import pairs, runtime

    runtime.start(args.device)
    result = pairs.check(args.file, checkpoint_dir=args.checkpoint_dir, download=not args.no_download,
                         device=args.device, image=args.image)
    print("\n".join(result.lines()))
    return 0


def cmd_pair_export(args) -> int:
    """``pair export ARCH``: a registered pair written as a pair file (stdout, or --out FILE)."""
    from . import pairs

    if args.out is None:
        print(pairs.export(args.arch), end="")
        return 0
    text = pairs.export(args.arch, base=args.out.resolve().parent)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


def _add_pair(sub) -> None:
    """The ``pair`` sub-command: ``check FILE`` and ``export ARCH``."""
    p = sub.add_parser("pair", help="pair files: check one of your own, or export a built-in pair as one")
    jobs = p.add_subparsers(dest="pair_command", required=True)
    c = jobs.add_parser("check", help="validate a pair file, load both checkpoints strictly and compare once",
                        description="Validate a pair file (every wrong field is named), build both models, load "
                                    "both checkpoints strictly, run one comparison and print what was found.")
    c.add_argument("file", type=Path, help="the pair file (TOML)")
    c.add_argument("--checkpoint-dir", type=Path, help="a folder holding the checkpoint files by their file_name")
    c.add_argument("--no-download", action="store_true", help="fail instead of downloading a checkpoint")
    c.add_argument("--image", type=Path, help="the image to compare on (default: an example photo)")
    c.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    c.set_defaults(func=cmd_pair_check)
    x = jobs.add_parser("export", help="write a registered pair (e.g. a study pair) as a pair file")
    x.add_argument("arch", help="the pair's architecture name (see `python -m dclsviz models`)")
    x.add_argument("--out", type=Path, help="the file to write (default: print it)")
    x.set_defaults(func=cmd_pair_export)


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser, one sub-command per job (explain, models, evaluate, review, demo, pair)."""
    from .cam import DEFAULT_THRESHOLD
    from . import limits
    from .faithfulness import DEFAULT_STEPS
    from .geometry import GEOMETRIES
    from .zoo import VARIANTS

    p = argparse.ArgumentParser(prog="python -m dclsviz", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("explain", help="Grad-CAM and Threshold-Grad-CAM of one model for one image")
    e.add_argument("image", nargs="?", type=Path, help="an image file (or use --clickme / --input-tensor)")
    e.add_argument("--clickme", metavar="SHARD:INDEX", help="a record of a ClickMe-format shard")
    e.add_argument("--input-tensor", type=Path,
                   help="an already-normalised (1,3,H,W) or (3,H,W) .npy, H, W >= 16 (no preprocessing)")
    e.add_argument("--arch", help="a registered architecture (see `python -m dclsviz models`)")
    e.add_argument("--pair", type=Path, help="a pair file (TOML) of your own, instead of --arch")
    e.add_argument("--variant", choices=VARIANTS, default="dcls")
    e.add_argument("--checkpoint", type=Path, help="a checkpoint file to use instead of the zoo's")
    e.add_argument("--checkpoint-dir", type=Path, help="a folder holding the published checkpoint files")
    e.add_argument("--target", type=limits.cli_type(limits.text, "--target", limits.MAX_TARGET_CHARS, required=True),
                   default="label",
                   help="class to explain: an index, a class name, 'pred' (top-1) or 'label' (default: the "
                        "record's label when known, else the prediction)")
    e.add_argument("--threshold", type=limits.cli_type(limits.unit_interval, "--threshold"),
                   default=DEFAULT_THRESHOLD,
                   help="floor of Threshold-Grad-CAM, in [0, 1] (default %(default)s)")
    e.add_argument("--geometry", choices=GEOMETRIES, default="paper")
    e.add_argument("--human", type=Path, help="a human attention map (image file or .npy) over the image")
    from .evaluate_cli import add_method_arguments

    add_method_arguments(e)
    e.add_argument("--layer", help="the CAM layer: any named module with a (B, C, h, w) output (default: the "
                                   "study's layer of the model)")
    e.add_argument("--steps", type=limits.cli_type(limits.whole_number, "--steps", 2, 256),
                   default=DEFAULT_STEPS, help="deletion/insertion steps (default %(default)s)")
    e.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    e.add_argument("--out", type=Path, required=True)
    e.set_defaults(func=cmd_explain)

    m = sub.add_parser("models", help="list the zoo: the 16 study checkpoints and the demo pair")
    m.add_argument("--checkpoint-dir", type=Path)
    m.set_defaults(func=cmd_models)

    from .evaluate_cli import add_parser as add_evaluate

    add_evaluate(sub)

    from .review import add_parser as add_review

    add_review(sub)

    from .demo import train as demo_train

    d = sub.add_parser("demo", help="the offline demo pair: `demo train` regenerates it")
    t = d.add_subparsers(dest="demo_command", required=True).add_parser(
        "train", help=demo_train.DESCRIPTION, description=demo_train.DESCRIPTION)
    demo_train.add_arguments(t).set_defaults(func=demo_train.run)
    _add_pair(sub)
    return p


def main(argv=None) -> int:
    """Run the CLI; an input error prints one ``error:`` line and returns 2, never a traceback."""
    args = build_parser().parse_args(argv)
    from .images import ImageError

    try:
        return args.func(args)
    except (ImageError, KeyError, ValueError, OSError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
