"""The ``evaluate`` command: its arguments, one process or a ``torchrun`` job, and the printed report.

    python -m dclsviz evaluate --arch demo --demo --out runs/demo
    torchrun --nproc_per_node 8 -m dclsviz evaluate --all --clickme --out runs/table1

The work is ``evaluate`` (rows), ``distributed`` (ranks and the merge) and ``evaluate.write_report``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tqdm import tqdm

from . import clickme, datapath, distributed, labels, limits, methods, runtime, stats, zoo
from .cam import DEFAULT_THRESHOLD
from .compare import MAP_TITLES
from .evaluate import (DEFAULT_BATCH, SUMMARY_NAME, EvaluationError, evaluate, open_shards, resolve_shards,
                       select_items, write_report)
from .geometry import GEOMETRIES
from .report import methods_table, table1


def add_method_arguments(p: argparse.ArgumentParser) -> None:
    """``--methods`` and ``--faithfulness``, shared by ``explain`` and ``evaluate``."""
    p.add_argument("--methods", default="gradcam,threshold_gradcam",
                   help=f"attribution methods, comma-separated: {', '.join(methods.NAMES)}; 'all' is every "
                        "one-pass method (scorecam, a forward per channel, only by name; default: the paper's "
                        "two, %(default)s)")
    p.add_argument("--faithfulness", action="store_true",
                   help="also deletion and insertion AUC and ROAD of every map (costly: ~2×16 + 18 forwards and "
                        "18 sparse solves per map)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """The ``evaluate`` sub-command and its options."""
    p = subparsers.add_parser("evaluate", help="score models on ClickMe shards: per-image CSV, summary, "
                                               "paired statistics, Figure 2 and Table 1",
                              description="Score models against ClickMe human maps, resumably, and write the "
                                          "study's Table 1 and Figure 2.")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--arch", help="architecture(s), comma-separated (see `python -m dclsviz models`)")
    which.add_argument("--all", action="store_true", help="the study's 8 architectures")
    p.add_argument("--pair", type=Path, action="append", default=[], metavar="FILE",
                   help="a pair file (TOML) of your own, repeatable: its pair is evaluated, besides those of "
                        "--arch / --all")
    p.add_argument("--variants", default=",".join(zoo.VARIANTS), help="comma-separated (default: %(default)s)")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--clickme", nargs="*", type=Path, metavar="PATH",
                      help="ClickMe shard files or folders (none given: $DCLSVIZ_CLICKME_DIR or the cache)")
    data.add_argument("--demo", action="store_true", help="the bundled demo shard")
    p.add_argument("--fetch-clickme", action="store_true",
                   help="with --clickme and no PATH: download the 17 validation shards into the cache first")
    p.add_argument("--limit", type=int, help="only the first N records over the shards")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    p.add_argument("--workers", type=int, default=None,
                   help="processes reading, decoding and preprocessing records (default: the cores available, "
                        "shared among the ranks of a torchrun job; 0: a thread of this process)")
    p.add_argument("--geometry", choices=GEOMETRIES, default="paper")
    p.add_argument("--threshold", type=limits.cli_type(limits.unit_interval, "--threshold"),
                   default=DEFAULT_THRESHOLD,
                   help="Threshold-Grad-CAM floor, in [0, 1] (default: %(default)s)")
    add_method_arguments(p)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    p.add_argument("--checkpoint-dir", type=Path, help="a folder holding the published checkpoint files")
    p.add_argument("--no-download", action="store_true", help="skip architectures whose checkpoints are not local")
    p.add_argument("--resamples", type=int, default=stats.N_RESAMPLES, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=stats.SEED, help="bootstrap seed")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run)
    return p


def _shard_paths(args) -> list[Path]:
    if args.demo:
        from . import demo

        return [zoo.ASSETS / demo.SHARD]
    if args.clickme:
        return resolve_shards(args.clickme)
    if args.fetch_clickme:
        bars: dict[int, tqdm] = {}

        def report(k, n, done, total):
            if k not in bars:
                bars[k] = tqdm(total=total, unit="B", unit_scale=True, desc=f"shard {k + 1}/{n}", file=sys.stderr)
            bars[k].update(done - bars[k].n)

        return clickme.download_val_shards(progress=report)
    found = clickme.find_local_shards()
    if not found:
        raise EvaluationError(f"no ClickMe shards in ${clickme.CLICKME_DIR_ENV} or the cache; give shard paths, "
                              f"or add --fetch-clickme to download the validation shards (~1.5 GB)")
    return found


def paired_lines(paired: dict) -> list[str]:
    """One line per arch and map: Δρ (DCLS − baseline), its bootstrap CI, Wilcoxon p, number of pairs."""
    lines = []
    for a, per_map in paired.items():
        for m, s in per_map.items():
            ci = f"[{s['ci'][0]:+.4f}, {s['ci'][1]:+.4f}]" if s["ci"] else "-"
            p = f"{s['wilcoxon']['p']:.3g}" if s["wilcoxon"]["p"] is not None else "-"
            mean = f"{s['mean_delta']:+.4f}" if s["mean_delta"] is not None else "-"
            lines.append(f"{a} {MAP_TITLES.get(m, m)}: Δρ (DCLS − baseline) {mean}, 95% CI {ci}, Wilcoxon p {p}, "
                         f"{s['n_pairs']} pairs")
    return lines


def _plan(args):
    """The architectures, variants, shards and records asked for, checked before any model is loaded."""
    from . import pairs

    if not (args.arch or args.all or args.pair):
        raise EvaluationError("give --arch NAMES, --all or --pair FILE")
    # before anything reads the registry (every rank of a torchrun job installs the same files)
    own = list(dict.fromkeys(e.arch for e in pairs.install_files(args.pair))) if args.pair else []
    named = list(zoo.PAPER_ARCHS) if args.all else [a.strip() for a in (args.arch or "").split(",") if a.strip()]
    archs = list(dict.fromkeys(named + own))
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for a in archs:
        for v in variants:
            zoo.get(a, v)  # unknown names fail here, with the list of known ones, before any work
    if args.limit is not None and args.limit < 1:
        raise EvaluationError("--limit must be at least 1")
    if args.batch_size < 1 or (args.workers is not None and args.workers < 0):
        raise EvaluationError("--batch-size must be at least 1 and --workers at least 0")
    shards = open_shards(_shard_paths(args))
    for a in archs:
        unfit = [name for name in shards if not labels.shard_labels_fit(name, zoo.get(a, variants[0]))]
        if unfit:
            # the study explains each record's label, so the labels must be classes of the model
            raise EvaluationError(f"the labels of {', '.join(unfit)} are not classes of {a}: evaluate the demo pair "
                                  f"on the demo shard (--demo) and the study's architectures on ClickMe shards")
    return archs, variants, shards, select_items(shards, args.limit)


def _workers(args, ranks_here: int) -> int:
    if args.workers is not None:
        return args.workers
    return max(1, datapath.available_cores() // max(1, ranks_here))


def run(args) -> int:
    """``evaluate``: score, resume or join ranks, then write the report; 1 when a model was skipped."""
    chosen = methods.parse(args.methods)
    archs, variants, shards, items = _plan(args)
    rank = distributed.from_env()
    out: Path = args.out
    common = dict(geometry=args.geometry, threshold=args.threshold, batch_size=args.batch_size,
                  checkpoint_dir=args.checkpoint_dir, download=not args.no_download,
                  methods=chosen, faithfulness=args.faithfulness)
    if rank is None or rank.main:
        for name, sh in shards.items():
            for offset, why in sh.damaged:
                print(f"{name}: damaged at byte offset {offset}: {why}", file=sys.stderr)
    if rank is None:
        runtime.start(args.device)
        unreadable: list[dict] = []
        skipped = evaluate(archs, variants, shards, items, out, device=args.device, progress=not args.no_progress,
                           skipped_records=unreadable, workers=_workers(args, 1), **common)
    else:
        device = distributed.device_for(rank, args.device)
        runtime.start(device)
        with distributed.process_group(rank, device):
            skipped, unreadable = distributed.evaluate_ranked(
                rank, archs, variants, shards, items, out, device=device, workers=_workers(
                    args, int(os.environ.get("LOCAL_WORLD_SIZE", rank.world))),
                progress=rank.main and not args.no_progress, **common)
        if not rank.main:
            return 1 if skipped else 0
    summary = write_report(out, archs, variants, shards, items, geometry=args.geometry, threshold=args.threshold,
                           limit=args.limit, skipped=skipped, skipped_records=unreadable,
                           n_resamples=args.resamples, seed=args.seed)
    print(f"Alignment with human maps (ceiling-normalised Spearman, {len(items)} images)\n"
          f"{table1(summary['models'], archs)}")
    if tuple(summary["methods"]) != methods.PAPER or summary["faithfulness"]:
        print(methods_table(summary))
    for line in paired_lines(summary["paired"]):
        print(line)
    print(f"wrote {out}")
    if unreadable:
        print(f"skipped {len(unreadable)} damaged record(s), listed in {out / SUMMARY_NAME}", file=sys.stderr)
    if skipped:
        print(f"skipped, checkpoint unavailable or unreadable (see above): {', '.join(skipped)}", file=sys.stderr)
        return 1
    return 0
