"""The Dataset tab and its ``/evaluate`` endpoint: a bounded ``evaluate`` run over a listed shard, then the
study's summary table, the paired statistics, Figure 2 and the per-image rows.

The work is ``evaluate.evaluate`` and ``evaluate.write_report``, as for ``python -m dclsviz evaluate``; this
module picks the run folder, reports progress and lays out what those wrote. A run folder is keyed by the
pair, shard, geometry, threshold and checkpoint hashes, so asking again (or after a restart) reuses the rows
already computed and only scores the records that are missing.
"""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from pathlib import Path
from typing import Optional

import gradio as gr

from .. import evaluate, geometry, labels, metrics, zoo
from ..cam import DEFAULT_THRESHOLD
from ..compare import MAP_TITLES, MAPS
from .present import Exports
from .service import (AppConfig, CheckpointProblem, UserError, VARIANT_TITLES, arch_choices, check_settings,
                      class_names, default_arch, load_pair, on_gpu, open_shard, resolve_shard, shard_choices,
                      shard_label_space_matches)

MAX_IMAGES = 200
DEFAULT_IMAGES = 64
BATCH = 16

SUMMARY_HEADERS = ["model", "map", "mean ρ", "ρ / ceiling", "n", "ρ undefined", "Dice", "IoU", "top-1"]
PAIRED_HEADERS = ["map", "mean Δρ (DCLS − baseline)", "95% CI (bootstrap)", "Wilcoxon p", "pairs"]
ROW_HEADERS = ["record", "label", "Baseline top-1", "DCLS top-1",
               *(f"{VARIANT_TITLES[v]} ρ {MAP_TITLES[m]}" for m in MAPS for v in zoo.VARIANTS)]

_folder_locks: dict[Path, threading.Lock] = {}
_folder_locks_guard = threading.Lock()


def _folder_lock(path: Path) -> threading.Lock:
    with _folder_locks_guard:
        return _folder_locks.setdefault(path.resolve(), threading.Lock())


def run_folder(cfg: AppConfig, arch: str, shard: Path, geometry_name: str, threshold: float, pair) -> Path:
    """Where this evaluation's rows live; other checkpoints or settings get another folder, never mixed rows."""
    key = "|".join([arch, str(shard.resolve()), geometry_name, repr(float(threshold)),
                    *(pair[v].provenance().get("checkpoint_sha256") or "" for v in zoo.VARIANTS)])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cfg.evaluation_dir / f"{arch}_{shard.stem}_{geometry_name}_{digest}"


def _check(arch: str, shard: Optional[str], n_images, geometry_name: str, threshold, cfg: AppConfig):
    try:
        n = int(n_images)
    except (TypeError, ValueError):
        raise UserError(f"the number of images must be a whole number, not {n_images!r}") from None
    if not 1 <= n <= MAX_IMAGES:
        raise UserError(f"evaluate 1 to {MAX_IMAGES} images here; `python -m dclsviz evaluate` has no limit")
    th = check_settings(threshold, geometry_name)
    if arch not in zoo.archs():
        raise UserError(f"unknown architecture {arch!r}; choose one of {', '.join(zoo.archs())}")
    path = resolve_shard(shard, cfg)
    open_shard(path)  # a clear message for an unreadable shard before any model work
    if not shard_label_space_matches(f"{path}:0", arch):
        # the study explains each record's label, so the labels must be classes of the models
        raise UserError(f"the labels of {path.name} are not classes of {arch}: evaluate the demo pair on the demo "
                        f"shard and the study's architectures on ClickMe shards")
    return path, n, th


@on_gpu(duration=300)
def run_evaluation(arch: str, shard: Optional[str], n_images, geometry_name: str, threshold, cfg: AppConfig,
                   progress=None) -> tuple[dict, Path]:
    """Score the first ``n_images`` records of a listed shard with both models; (summary, run folder)."""
    path, n, th = _check(arch, shard, n_images, geometry_name, threshold, cfg)
    pair = load_pair(arch, cfg, progress)
    shards = evaluate.open_shards([path])
    items = evaluate.select_items(shards, n)
    out = run_folder(cfg, arch, path, geometry_name, th, pair)

    def report(done, total):
        if progress is not None:
            progress((done, total), desc=f"Scoring {arch} on {len(items)} records", unit="records")

    with _folder_lock(out):
        try:
            evaluate.evaluate([arch], list(zoo.VARIANTS), shards, items, out, geometry=geometry_name, threshold=th,
                              batch_size=BATCH, progress=False, on_progress=report, log=lambda msg: None,
                              loader=lambda a, v: pair[v])
            summary = evaluate.write_report(out, [arch], list(zoo.VARIANTS), shards, items, geometry=geometry_name,
                                            threshold=th, limit=n)
        except evaluate.EvaluationError as e:
            raise UserError(str(e)) from None
    return summary, out


# --- what the tab shows ---------------------------------------------------------------------------------


def _f(x, fmt="{:.3f}") -> str:
    return "—" if x is None else fmt.format(x)


def summary_rows(summary: dict, arch: str) -> list[list[str]]:
    rows = []
    for v in zoo.VARIANTS:
        s = summary["models"].get(arch, {}).get(v)
        if s is None:
            continue
        for m in MAPS:
            sm = s[m]
            rows.append([VARIANT_TITLES[v], MAP_TITLES[m], _f(sm["mean_spearman"]), _f(sm["ceiling_normalised"]),
                         str(sm["n_defined"]), str(sm["n_undefined"]), _f(sm["mean_dice"]), _f(sm["mean_iou"]),
                         _f(s["top1_accuracy"], "{:.1%}")])
    return rows


def paired_rows(summary: dict, arch: str) -> list[list[str]]:
    rows = []
    for m, s in summary["paired"].get(arch, {}).items():
        ci = f"[{s['ci'][0]:+.3f}, {s['ci'][1]:+.3f}]" if s["ci"] else "—"
        rows.append([MAP_TITLES[m], _f(s["mean_delta"], "{:+.4f}"), ci, _f(s["wilcoxon"]["p"], "{:.3g}"),
                     str(s["n_pairs"])])
    return rows


def image_rows(out: Path, arch: str, items, names) -> list[list[str]]:
    rows = evaluate.ResultStore(out / evaluate.CSV_NAME).rows
    table = []
    for it in items:
        got = {v: rows.get((arch, v, it.shard, it.index)) for v in zoo.VARIANTS}
        if any(r is None for r in got.values()):
            continue
        label = got["baseline"]["label"]
        table.append([f"{it.shard}:{it.index}", labels.short_name(int(label), names) if label != "" else "—",
                      *(labels.short_name(int(got[v]["predicted"]), names) for v in zoo.VARIANTS),
                      *(_f(evaluate.parse_float(got[v][f"spearman_{m}"])) for m in MAPS for v in zoo.VARIANTS)])
    return table


def headline(summary: dict, arch: str, seconds: Optional[float] = None) -> str:
    n = summary["n_items"]
    shard = ", ".join(Path(p).name for p in summary["shards"].values())
    parts = [f"**{arch}** on the first **{n}** records of `{shard}` · geometry `{summary['geometry']}` · "
             f"threshold {summary['threshold']:g} · ρ / ceiling divides by the inter-human ρ "
             f"({metrics.HUMAN_CEILING:.3f})"]
    for m, s in summary["paired"].get(arch, {}).items():
        if s["mean_delta"] is not None:
            parts.append(f"{MAP_TITLES[m]}: DCLS − baseline Δρ **{s['mean_delta']:+.3f}**"
                         + (f" (Wilcoxon p {s['wilcoxon']['p']:.2g})" if s["wilcoxon"]["p"] is not None else ""))
    if seconds is not None:
        parts.append(f"{seconds:.1f} s (records scored earlier with the same models and settings are reused)")
    return "  \n".join(parts)


def bundle(out: Path, export_dir: Path) -> str:
    """The run's files in one zip for download."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name in (evaluate.CSV_NAME, evaluate.SUMMARY_NAME, evaluate.TABLE_NAME, evaluate.SCATTER_NAME,
                     evaluate.RUN_NAME):
            if (out / name).is_file():
                z.write(out / name, name)
    path = Exports(export_dir).new_folder() / f"dclsviz_evaluation_{out.name}.zip"
    path.write_bytes(buf.getvalue())
    return str(path)


# --- the tab ---------------------------------------------------------------------------------------------


def _error(e: UserError, arch: str) -> gr.Error:
    if isinstance(e, CheckpointProblem):
        return gr.Error(f"The {arch} checkpoints are not available. {e}")
    return gr.Error(str(e))


def build(cfg: AppConfig) -> None:
    """The Dataset tab's widgets and handlers; call inside a ``gr.Tab``."""
    import time

    shards = shard_choices(cfg)
    gr.Markdown("Score both models of a pair on the first records of a ClickMe-format shard: the study's "
                "dataset numbers, with the per-image rows behind them. Larger runs: `python -m dclsviz evaluate`.")
    with gr.Row():
        arch = gr.Dropdown(arch_choices(), value=default_arch(cfg), label="Model pair", elem_id="ds-arch")
        shard = gr.Dropdown(shards, value=shards[0][1] if shards else None, label="Shard", elem_id="ds-shard")
        n_images = gr.Slider(1, MAX_IMAGES, DEFAULT_IMAGES, step=1, label="Records (first N)", elem_id="ds-n")
    with gr.Row():
        geom = gr.Radio(list(geometry.GEOMETRIES), value="paper", label="Geometry")
        threshold = gr.Slider(0.0, 1.0, DEFAULT_THRESHOLD, step=0.05, label="Threshold")
        run_btn = gr.Button("Evaluate", variant="primary", elem_id="ds-run")
    headline_md = gr.Markdown(elem_id="ds-headline")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            table = gr.Dataframe(headers=SUMMARY_HEADERS, label="Summary (means over the records)",
                                 interactive=False, elem_id="ds-summary")
            paired = gr.Dataframe(headers=PAIRED_HEADERS, label="Paired, per record: DCLS − baseline",
                                  interactive=False, elem_id="ds-paired")
            download = gr.DownloadButton("Download per-image CSV, summary, table and plot (zip)", visible=False,
                                         elem_id="ds-download")
        with gr.Column(scale=2):
            plot = gr.Image(label="Baseline vs DCLS alignment (the paper's Figure 2)", interactive=False,
                            format="png", buttons=["download", "fullscreen"], elem_id="ds-plot")
    per_image = gr.Dataframe(headers=ROW_HEADERS, label="Per record", interactive=False, max_height=420,
                             elem_id="ds-rows")

    def ui_evaluate(a, sh, n, ge, th, progress=gr.Progress()):
        t0 = time.perf_counter()
        try:
            summary, out = run_evaluation(a, sh, n, ge, th, cfg, progress)
        except UserError as e:
            raise _error(e, a) from None
        items = evaluate.select_items(evaluate.open_shards([Path(p) for p in summary["shards"].values()]),
                                      summary["n_items"])
        scatter = out / evaluate.SCATTER_NAME
        return (headline(summary, a, time.perf_counter() - t0), summary_rows(summary, a), paired_rows(summary, a),
                str(scatter) if scatter.is_file() else None, image_rows(out, a, items, class_names(a)),
                gr.update(value=bundle(out, cfg.export_dir), visible=True))

    run_btn.click(ui_evaluate, [arch, shard, n_images, geom, threshold],
                  [headline_md, table, paired, plot, per_image, download], api_visibility="private",
                  concurrency_id="compute")

    def api_evaluate(arch: str, shard: str, n_images: int, geometry: str, threshold: float,
                     progress=gr.Progress()):
        """Both models of `arch` on the first `n_images` (≤ 200) records of a listed shard ('' = the demo
        shard): the summary (as `evaluate`'s summary.json) and a zip of the run's files."""
        try:
            summary, out = run_evaluation(arch, shard, n_images, geometry, threshold, cfg, progress)
        except UserError as e:
            raise _error(e, arch) from None
        return summary, bundle(out, cfg.export_dir)

    with gr.Column(visible=False):
        inputs = [gr.Textbox(label="arch"), gr.Textbox(label="shard"), gr.Number(DEFAULT_IMAGES, label="n_images"),
                  gr.Radio(list(geometry.GEOMETRIES), value="paper", label="geometry"),
                  gr.Number(DEFAULT_THRESHOLD, label="threshold")]
        outputs = [gr.JSON(label="summary"), gr.File(label="bundle")]
        hidden = gr.Button("evaluate")
    hidden.click(api_evaluate, inputs, outputs, api_name="evaluate", concurrency_id="compute")
