"""The Dataset tab and its ``/evaluate`` endpoint: a bounded ``evaluate`` run of one or more pairs over a
listed shard with the chosen attribution methods (and, when asked, their faithfulness), then the study's
summary table, the per-method table (mean ρ per model, paired Δρ statistics, faithfulness), Figure 2, the
robustness figure, plausibility against faithfulness, and the per-image rows.

The work is ``evaluate.evaluate``, ``build_summary`` and ``write_summary``, as for ``python -m dclsviz
evaluate``; this module picks the run folders, reports progress and lays out what those wrote. A pair's run
folder is keyed by the pair, shard, geometry, threshold, checkpoint hashes and what is scored (methods,
faithfulness), so asking again (or after a restart, or with other pairs beside it) reuses the rows already
computed and only scores what is missing.
"""

from __future__ import annotations

import hashlib
import io
import functools
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import gradio as gr

from .. import evaluate, geometry, labels, limits, methods, metrics, zoo
from ..cam import DEFAULT_THRESHOLD
from ..compare import MAP_TITLES, MAPS
from ..faithfulness import Faithfulness
from . import storage
from .events import bind, gradio_error, titled_image
from .present import Exports
from .service import (AppConfig, CheckpointProblem, MAX_GPU_SECONDS, UserError, VARIANT_TITLES, arch_choices,
                      check_settings, class_names, dataset_gpu_seconds, default_arch, load_pair, method_names, on_gpu,
                      open_shard, resolve_shard, shard_choices, shard_label_space_matches)

MAX_IMAGES = limits.MAX_DATASET_IMAGES
DEFAULT_IMAGES = 64
BATCH = 16

# Faithfulness runs, per map and record, 2·16 deletion and insertion forwards and 18 ROAD forwards (with
# sparse solves on the CPU): about 16 times the forward and backward pass that scoring a record costs.
FAITHFULNESS_COST = 16

SUMMARY_HEADERS = ["pair", "model", "map", "mean ρ", "ρ / ceiling", "n", "ρ undefined", "Dice", "IoU", "top-1"]
METHOD_HEADERS = ["pair", "method", "ρ baseline", "ρ DCLS", "mean Δρ", "95% CI", "Wilcoxon p", "n"]
# deletion: lower is more faithful; insertion and ROAD: higher
FAITHFUL_HEADERS = {"deletion": "deletion ↓ baseline / DCLS", "insertion": "insertion ↑ baseline / DCLS",
                    "road": "ROAD ↑ baseline / DCLS"}
ROW_HEADERS = ["pair", "record", "label", "Baseline top-1", "DCLS top-1"]


@dataclass(frozen=True)
class Scoring:
    """What a run scores for each map: its methods, and whether their faithfulness too (``evaluate``'s
    ``methods`` and ``faithfulness``)."""

    methods: tuple[str, ...] = MAPS
    faithfulness: bool = False


def run_folder(cfg: AppConfig, arch: str, shard: Path, geometry_name: str, threshold: float, pair,
               scoring: Scoring = Scoring()) -> Path:
    """Where this evaluation's rows live; other checkpoints or settings get another folder, never mixed rows.

    A folder's CSV header fixes its methods and faithfulness (``evaluate.RunRecord`` refuses others), so they
    are part of the key; the paper's two without faithfulness keep the key of the folders made before methods
    could be chosen, whose rows are reused."""
    parts = [arch, str(shard.resolve()), geometry_name, repr(float(threshold)),
             *(pair[v].provenance().checkpoint_sha256 or "" for v in zoo.VARIANTS)]
    if scoring != Scoring():
        parts.append(f"methods={','.join(scoring.methods)};faithfulness={scoring.faithfulness}")
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    return cfg.evaluation_dir / f"{arch}_{shard.stem}_{geometry_name}_{digest}"


def gpu_seconds(archs, n_images, chosen_methods=None, faithfulness=False) -> int:
    """The GPU time a Dataset run asks for: ``dataset_gpu_seconds``, with faithfulness counted as
    ``FAITHFULNESS_COST`` records per method and record. Called before the input is checked."""
    try:
        scale = 1 + FAITHFULNESS_COST * len(method_names(chosen_methods)) if faithfulness else 1
        return dataset_gpu_seconds(archs, float(n_images) * scale)
    except (TypeError, ValueError, UserError):
        return MAX_GPU_SECONDS


def arch_list(archs) -> list[str]:
    """Architectures from a list or a comma-separated string, in the order given, without repeats."""
    if isinstance(archs, str):
        try:
            archs = limits.text(archs, "arch", limits.MAX_NAME_CHARS * 16)
        except limits.LimitError as e:
            raise UserError(str(e)) from None
    names = archs.split(",") if isinstance(archs, str) else list(archs or [])
    if len(names) > len(zoo.archs()):
        raise UserError(f"at most {len(zoo.archs())} model pairs, not {len(names)}")
    out = list(dict.fromkeys(a.strip() for a in names if a and a.strip()))
    if not out:
        raise UserError("choose at least one model pair")
    unknown = [a for a in out if a not in zoo.archs()]
    if unknown:
        raise UserError(f"unknown architecture {', '.join(map(repr, unknown))}; choose from {', '.join(zoo.archs())}")
    return out


def _check(archs: list[str], shard: Optional[str], n_images, geometry_name: str, threshold, cfg: AppConfig):
    try:
        n = limits.whole_number(n_images, "the number of images", 1, MAX_IMAGES)
    except limits.LimitError as e:
        raise UserError(f"{e} (evaluate 1 to {MAX_IMAGES} images here; `python -m dclsviz evaluate` has no "
                        "limit)") from None
    th = check_settings(threshold, geometry_name)
    path = resolve_shard(shard, cfg)
    open_shard(path)  # a clear message for an unreadable shard before any model work
    unfit = [a for a in archs if not shard_label_space_matches(f"{path}:0", a)]
    if unfit:
        # the study explains each record's label, so the labels must be classes of the models
        raise UserError(f"the labels of {path.name} are not classes of {', '.join(unfit)}: evaluate the demo pair "
                        f"on the demo shard and the study's architectures on ClickMe shards")
    return path, n, th


@dataclass
class DatasetRun:
    """One Dataset-tab request's result: the summary over its pairs, their run folders, rows and report folder."""

    summary: dict  # as evaluate's summary.json, over every pair that ran; shard names only, no server path
    folders: dict[str, Path]  # each pair's run folder on the server; never sent to a client
    items: list[evaluate.Item]
    report: Path  # this request's folder: Figure 2, Table 1, summary, and per pair its rows and run.json
    rows: dict[str, dict[tuple, dict]]  # per pair, the rows of the requested items only


def read_run(out: Path, arch: str, items, geometry_name: str, threshold: float) -> tuple[dict, dict]:
    """The rows of ``arch`` on ``items`` in a run folder, and its checkpoint hashes, read under the folder's
    lock without writing anything (a batch being appended meanwhile is neither seen half-written nor cut)."""
    wanted = {(it.shard, it.index) for it in items}
    with evaluate.folder_lock(out):
        rows = evaluate.ResultStore(out / evaluate.CSV_NAME, read_only=True).rows
        shas = evaluate.RunRecord(out, geometry_name, threshold).checkpoints
    return {k: r for k, r in rows.items() if k[0] == arch and (k[2], k[3]) in wanted}, shas


def _score_pair(arch: str, pair, path: Path, shards, items, geometry_name: str, th: float, scoring: Scoring,
                cfg: AppConfig, report, unreadable: list[dict]) -> tuple[Path, dict, dict]:
    out = run_folder(cfg, arch, path, geometry_name, th, pair, scoring)
    try:
        # evaluate holds the folder's lock while it writes; another request for the same folder waits for it
        evaluate.evaluate([arch], list(zoo.VARIANTS), shards, items, out, geometry=geometry_name, threshold=th,
                          batch_size=BATCH, progress=False, on_progress=report, log=lambda msg: None,
                          loader=lambda arch_name, variant: pair[variant], skipped_records=unreadable,
                          methods=scoring.methods, faithfulness=scoring.faithfulness)
        rows, shas = read_run(out, arch, items, geometry_name, th)
    except evaluate.EvaluationError as e:
        # e.g. a folder holding other methods: the message names the folder, never its server path
        raise UserError(f"{arch} not evaluated: {str(e).replace(str(out), out.name)}") from None
    return out, rows, shas


@on_gpu(duration=lambda archs, shard, n_images, *args, chosen_methods=None, faithfulness=False, **kwargs:
        gpu_seconds(archs, n_images, chosen_methods, faithfulness),
        pairs=lambda archs, shard, n_images, geometry_name, threshold, cfg, progress=None, **kwargs:  # input checked
        _check(arch_list(archs), shard, n_images, geometry_name, threshold, cfg) and arch_list(archs))
def run_evaluation(archs, shard: Optional[str], n_images, geometry_name: str, threshold, cfg: AppConfig,
                   progress=None, *, chosen_methods=None, faithfulness=False) -> DatasetRun:
    """Score the first ``n_images`` records of a listed shard with both models of each pair, with
    ``chosen_methods`` (``method_names``; None: the paper's two) and, when ``faithfulness``, their faithfulness.

    A pair whose checkpoints are unavailable is skipped (and said in ``summary["skipped"]``) when others ran.
    Damaged records are skipped and listed (``summary["skipped_records"]``).
    """
    archs = arch_list(archs)
    scoring = Scoring(method_names(chosen_methods), bool(faithfulness))
    path, n, th = _check(archs, shard, n_images, geometry_name, threshold, cfg)
    shards = evaluate.open_shards([path])
    items = evaluate.select_items(shards, n)
    folders, rows, checkpoints, skipped, unreadable = {}, {}, {}, {}, []
    for position, arch in enumerate(archs):
        try:
            pair = load_pair(arch, cfg, progress)
        except CheckpointProblem as e:
            if len(archs) == 1:
                raise
            skipped[arch] = str(e)
            continue
        report = functools.partial(_report_progress, progress, position, arch, len(archs), len(items))
        folders[arch], rows[arch], shas = _score_pair(arch, pair, path, shards, items, geometry_name, th, scoring,
                                                      cfg, report, unreadable)
        checkpoints.update(shas)
    if not folders:
        raise UserError("no pair could be evaluated: " + "; ".join(f"{a}: {why}" for a, why in skipped.items()))
    # evaluate's own summary, over every pair's rows at once: the same numbers and keys as summary.json of
    # `python -m dclsviz evaluate`
    summary = evaluate.build_summary(
        {key: row for part in rows.values() for key, row in part.items()}, archs, list(zoo.VARIANTS), shards, items,
        geometry=geometry_name, threshold=th, checkpoints=checkpoints, limit=n, skipped=skipped,
        skipped_records=list({(r["shard"], r["index"]): r for r in unreadable}.values()))
    run = DatasetRun(summary, folders, items, Exports.at(cfg.export_dir).new_folder(), rows)
    _write_report(run, geometry_name, th)
    # each pair, shard and setting keeps its own run folder: bounded here, never the ones just used
    storage.prune_dataset_runs(cfg.evaluation_dir, keep={f.name for f in folders.values()})
    return run


def _report_progress(progress, position: int, arch: str, n_pairs: int, n_items: int, done: int, total: int) -> None:
    if progress is not None:
        progress((position + done / max(total, 1)) / n_pairs,
                 desc=f"Scoring {arch} ({position + 1} of {n_pairs}) on {n_items} records")


def _write_report(run: DatasetRun, geometry_name: str, th: float) -> None:
    """This request's files: evaluate's summary files over every pair that ran, and per pair exactly the
    requested records' rows (not the run folder's whole CSV, which earlier requests may have grown)."""
    evaluate.write_summary(run.report, run.summary, f"{', '.join(run.folders)}: {len(run.items)} images, "
                                                    f"{geometry_name} geometry, threshold {th}")
    for arch, out in run.folders.items():
        folder = run.report / arch
        folder.mkdir()
        order = [(arch, v, it.shard, it.index) for v in zoo.VARIANTS for it in run.items]
        columns = evaluate.columns_for(run.summary["methods"], run.summary["faithfulness"])  # the run folder's
        table = [evaluate.row_cells(run.rows[arch][key], columns) for key in order if key in run.rows[arch]]
        (folder / evaluate.CSV_NAME).write_text(evaluate.csv_text([columns, *table]), encoding="utf-8")
        with evaluate.folder_lock(out):
            shutil.copyfile(out / evaluate.RUN_NAME, folder / evaluate.RUN_NAME)


# --- what the tab shows ---------------------------------------------------------------------------------


def _f(value, fmt="{:.3f}") -> str:
    return "—" if value is None else fmt.format(value)


def summary_rows(run: DatasetRun) -> list[list[str]]:
    """The summary table: one row per pair, model and map."""
    rows = []
    for arch in run.folders:
        for v in zoo.VARIANTS:
            s = run.summary["models"][arch][v]
            for m in run.summary["methods"]:
                sm = s[m]
                defined = bool(sm["n_defined"])  # no defined ρ: the overlaps mean nothing either
                rows.append([arch, VARIANT_TITLES[v], MAP_TITLES[m], _f(sm["mean_spearman"]),
                             _f(sm["ceiling_normalised"]), str(sm["n_defined"]), str(sm["n_undefined"]),
                             _f(sm["mean_dice"] if defined else None), _f(sm["mean_iou"] if defined else None),
                             _f(s["top1_accuracy"], "{:.1%}")])
    return rows


def method_rows(run: DatasetRun) -> dict:
    """The per-method table (``report.methods_table``'s numbers): per pair and method the mean ρ of each model,
    the paired Δρ = DCLS − baseline with its CI, Wilcoxon p and n, and with faithfulness each model's means."""
    faithful = run.summary["faithfulness"]
    rows = []
    for arch in run.folders:
        models = run.summary["models"][arch]
        for m in run.summary["methods"]:
            p = run.summary["paired"].get(arch, {}).get(m, {})
            ci = f"[{p['ci'][0]:+.3f}, {p['ci'][1]:+.3f}]" if p.get("ci") else "—"
            row = [arch, MAP_TITLES[m], *(_f(models[v][m]["mean_spearman"]) for v in zoo.VARIANTS),
                   _f(p.get("mean_delta"), "{:+.4f}"), ci, _f(p.get("wilcoxon", {}).get("p"), "{:.3g}"),
                   str(p.get("n_pairs", 0))]
            if faithful:
                row += [" / ".join(_f(models[v][m][f"mean_{f}"]) for v in zoo.VARIANTS) for f in Faithfulness.FIELDS]
            rows.append(row)
    headers = METHOD_HEADERS + ([FAITHFUL_HEADERS[f] for f in Faithfulness.FIELDS] if faithful else [])
    return {"headers": headers, "data": rows}


def image_rows(run: DatasetRun) -> dict:
    """The per-record table: each record's label, both models' top-1 and every ρ (per method, per model)."""
    maps = run.summary["methods"]
    table = []
    for arch in run.folders:
        rows = run.rows[arch]
        names = class_names(arch)
        for it in run.items:
            got = {v: rows.get((arch, v, it.shard, it.index)) for v in zoo.VARIANTS}
            if any(r is None for r in got.values()):
                continue
            label = got["baseline"]["label"]
            table.append([arch, f"{it.shard}:{it.index}",
                          labels.short_name(int(label), names) if label != "" else "—",
                          *(labels.short_name(int(got[v]["predicted"]), names) for v in zoo.VARIANTS),
                          *(_f(evaluate.parse_float(got[v][f"spearman_{m}"])) for m in maps for v in zoo.VARIANTS)])
    return {"headers": ROW_HEADERS + [f"{VARIANT_TITLES[v]} ρ {MAP_TITLES[m]}" for m in maps for v in zoo.VARIANTS],
            "data": table}


def headline(run: DatasetRun, seconds: Optional[float] = None) -> str:
    """The Markdown line over the tables: pairs, records, settings, and what was skipped."""
    s = run.summary
    shard = ", ".join(s["shards"])
    parts = [f"**{', '.join(run.folders)}** on the first **{s['n_items']}** records of `{shard}` · geometry "
             f"`{s['geometry']}` · threshold {s['threshold']:g} · ρ / ceiling divides by the inter-human ρ "
             f"({metrics.HUMAN_CEILING:.3f})"]
    for arch in run.folders:
        for m, p in s["paired"].get(arch, {}).items():
            if p["mean_delta"] is not None:
                parts.append(f"{arch} {MAP_TITLES[m]}: DCLS − baseline Δρ **{p['mean_delta']:+.3f}**"
                             + (f" (Wilcoxon p {p['wilcoxon']['p']:.2g})" if p["wilcoxon"]["p"] is not None else ""))
    for arch, why in s["skipped"].items():
        parts.append(f"**{arch} skipped**: {why}")
    bad = s.get("skipped_records", [])
    if bad:
        parts.append(f"**{len(bad)} damaged record(s) skipped**, left out of every mean: "
                     + "; ".join(f"{r['shard']}:{r['index']} ({r['reason']})" for r in bad[:5])
                     + ("; …" if len(bad) > 5 else ""))
    if seconds is not None:
        parts.append(f"{seconds:.1f} s (records scored earlier with the same models and settings are reused)")
    return "  \n".join(parts)


def bundle(run: DatasetRun) -> str:
    """One zip of this request's files: the combined summary, Table 1 (with the per-method table), Figure 2, the
    robustness figure and, with faithfulness, plausibility against faithfulness; and per pair the requested
    records' rows and its run.json, under the pair's name."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name in (evaluate.SUMMARY_NAME, evaluate.TABLE_NAME, evaluate.SCATTER_NAME, evaluate.ROBUSTNESS_NAME,
                     evaluate.PLAUSIBILITY_NAME):
            if (run.report / name).is_file():
                z.write(run.report / name, name)
        for arch in run.folders:
            for name in (evaluate.CSV_NAME, evaluate.RUN_NAME):
                z.write(run.report / arch / name, f"{arch}/{name}")
    path = run.report / f"dclsviz_evaluation_{'_'.join(run.folders)}.zip"
    path.write_bytes(buf.getvalue())
    return str(path)


# --- the tab ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluateRequest:
    """A Dataset-tab run asked for: pairs, shard, number of records, settings, methods and faithfulness (the
    last two appended with defaults, so that API clients from before them keep working)."""

    archs: Any
    shard: Optional[str]
    n_images: Any
    geometry: str
    threshold: Any
    methods: Any = None  # a list (the tab), comma-separated text (the API); None or '': the paper's two
    faithfulness: Any = False


def _run(cfg: AppConfig, req: EvaluateRequest, progress) -> DatasetRun:
    return run_evaluation(req.archs, req.shard, req.n_images, req.geometry, req.threshold, cfg, progress,
                          chosen_methods=req.methods, faithfulness=req.faithfulness)


def _figure(run: DatasetRun, name: str) -> Optional[str]:
    """The path of a figure ``write_summary`` drew, None where it had nothing to draw."""
    path = run.report / name
    return str(path) if path.is_file() else None


def on_evaluate(cfg: AppConfig, req: EvaluateRequest, progress=None) -> list:
    """[status, headline, summary, per method, Figure 2, robustness, plausibility column and figure, per-record
    rows, download]. A failure (a bad input, a run folder holding other methods) changes only the status box,
    which says what went wrong until the next run: the previous results stay, marked as such."""
    t0 = time.perf_counter()
    try:
        run = _run(cfg, req, progress)
    except Exception as e:  # noqa: BLE001 - said in the status box; the page stays as it was
        stale = "  \n*The results below, if any, are from the previous run.*"
        return [gr.update(value=f"**Not evaluated.** {gradio_error(e).message}{stale}", visible=True),
                *[gr.skip()] * 9]
    for arch, why in run.summary["skipped"].items():
        gr.Warning(f"{arch} skipped: {why}")
    # the robustness figure shows even for one method: its CI bars per pair say at a glance what the table says
    faithful = run.summary["faithfulness"]
    return [gr.update(value="", visible=False), headline(run, time.perf_counter() - t0), summary_rows(run),
            method_rows(run), _figure(run, evaluate.SCATTER_NAME), _figure(run, evaluate.ROBUSTNESS_NAME),
            gr.update(visible=faithful), _figure(run, evaluate.PLAUSIBILITY_NAME) if faithful else None,
            image_rows(run), gr.update(value=bundle(run), visible=True)]


def api_evaluate(cfg: AppConfig, req: EvaluateRequest, progress=None) -> tuple:
    """Both models of each pair in `arch` (one name, or several comma-separated) on the first `n_images`
    (≤ 200) records of a listed shard ('' = the demo shard), with `methods` (comma-separated, or 'all'; '' =
    the paper's two) and, when `faithfulness`, their deletion, insertion and ROAD: the summary (as `evaluate`'s
    summary.json, with `skipped` pairs) and a zip of the run."""
    run = _run(cfg, req, progress)
    return run.summary, bundle(run)


def build(cfg: AppConfig) -> None:
    """The Dataset tab's widgets and events, and its /evaluate endpoint; call inside a ``gr.Tab``."""
    gr.Markdown("Score both models of one or more pairs on the first records of a ClickMe-format shard: the "
                "study's dataset numbers (Table 1, Figure 2), with the per-image rows behind them. Other methods "
                "ask whether the DCLS advantage belongs to the model or to Grad-CAM (the robustness figure). "
                "Larger runs: `python -m dclsviz evaluate`.")
    inputs, run_btn = _inputs(cfg)
    outputs = _outputs()
    run_btn.click(bind(on_evaluate, EvaluateRequest, cfg, progress=True), inputs, outputs, api_visibility="private",
                  concurrency_id="compute")
    with gr.Column(visible=False):
        hidden_inputs = [gr.Textbox(label="arch"), gr.Textbox(label="shard"),
                         gr.Number(DEFAULT_IMAGES, label="n_images"),
                         gr.Radio(list(geometry.GEOMETRIES), value="paper", label="geometry"),
                         gr.Number(DEFAULT_THRESHOLD, label="threshold"),
                         # appended last, with defaults: older clients send the five inputs above only
                         gr.Textbox("", label="methods"), gr.Checkbox(False, label="faithfulness")]
        hidden_outputs = [gr.JSON(label="summary"), gr.File(label="bundle")]
        hidden = gr.Button("evaluate")
    hidden.click(bind(api_evaluate, EvaluateRequest, cfg, progress=True), hidden_inputs, hidden_outputs,
                 api_name="evaluate", concurrency_id="compute")


def _inputs(cfg: AppConfig) -> tuple[list, gr.Button]:
    shards = shard_choices(cfg)
    with gr.Row():
        arch = gr.Dropdown(arch_choices(), value=[default_arch(cfg)], multiselect=True, label="Model pairs",
                           info="several pairs make Figure 2 a comparison across architectures", elem_id="ds-arch")
        shard = gr.Dropdown(shards, value=shards[0][1] if shards else None, label="Shard", elem_id="ds-shard")
        n_images = gr.Slider(1, MAX_IMAGES, DEFAULT_IMAGES, step=1, label="Records (first N)", elem_id="ds-n")
    with gr.Row():
        geom = gr.Radio(list(geometry.GEOMETRIES), value="paper", label="Geometry")
        threshold = gr.Slider(0.0, 1.0, DEFAULT_THRESHOLD, step=0.05, label="Threshold")
    with gr.Row():
        chosen = gr.Dropdown([(methods.choice_label(m), m) for m in methods.NAMES], value=list(MAPS), multiselect=True,
                             label="Methods", info="all from one forward and backward pass: more methods cost little",
                             elem_id="ds-methods", scale=3)
        faithful = gr.Checkbox(False, label="Faithfulness (deletion, insertion, ROAD)",
                               info=f"costly: about {FAITHFULNESS_COST}× the time per method", elem_id="ds-faithful")
        run_btn = gr.Button("Evaluate", variant="primary", elem_id="ds-run")
    return [arch, shard, n_images, geom, threshold, chosen, faithful], run_btn


def _outputs() -> list:
    status = gr.Markdown(visible=False, elem_id="ds-status")
    headline_md = gr.Markdown(elem_id="ds-headline")
    table = gr.Dataframe(headers=SUMMARY_HEADERS, label="Summary (means over the records)", interactive=False,
                         wrap=True, elem_id="ds-summary")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            per_method = gr.Dataframe(headers=METHOD_HEADERS, label="Per method: mean ρ of each model; paired per "
                                      "record Δρ = DCLS − baseline, bootstrap 95% CI of its mean, Wilcoxon "
                                      "signed-rank p, n pairs; with faithfulness each model's means",
                                      interactive=False, wrap=True, elem_id="ds-methods-table")
            download = gr.DownloadButton("Download per-image CSV, summary, tables and figures (zip)", visible=False,
                                         elem_id="ds-download")
        with gr.Column(scale=2):
            plot = titled_image("Baseline vs DCLS alignment (the paper's Figure 2)",
                                buttons=["download", "fullscreen"], elem_id="ds-plot")
    with gr.Row(equal_height=False):
        with gr.Column():
            robustness = titled_image("Robustness: Δρ per method, 95% CI (right of 0: DCLS more human-aligned)",
                                      buttons=["download", "fullscreen"], elem_id="ds-robustness")
        with gr.Column(visible=False) as plausibility_col:
            plausibility = titled_image("Plausibility (ρ) against faithfulness (deletion AUC, lower: more "
                                        "faithful)", buttons=["download", "fullscreen"], elem_id="ds-plausibility")
    per_image = gr.Dataframe(headers=ROW_HEADERS, label="Per record", interactive=False, max_height=420,
                             wrap=True, elem_id="ds-rows")
    return [status, headline_md, table, per_method, plot, robustness, plausibility_col, plausibility, per_image,
            download]
