"""The Compare tab: one image through both models of a pair, its maps beside the human map, scores, exports.

Each event's inputs become one frozen request (``CompareRequest``, ``RecordRequest``, …) and a module-level
handler answers it with the values of the widgets it changes, by name; ``CompareTab`` holds the widgets and
turns those names into Gradio's outputs.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import gradio as gr
import numpy as np

from .. import clickme, geometry, images, methods, render, zoo
from ..cam import DEFAULT_THRESHOLD
from ..compare import MAP_TITLES, MAPS, Comparison
from . import present
from .events import bind, gradio_error, is_checkpoint_problem, request, titled_image
from .present import Exports
from .service import (DEMO_ARCH, TARGET_LABEL, TARGET_PRED, VARIANT_TITLES, AppConfig, CamOptions, UserError,
                      arch_choices, build_sample, checkpoint_sources, class_names, clickme_sample, default_arch,
                      open_shard, resolve_shard, run_comparison, shard_choices, shard_label_space_matches)

IMAGE_TYPES = [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"]
MAP_TYPES = IMAGE_TYPES + [".npy"]
# The painting canvas only needs to look right; the photo itself is read at full size for the models.
EDITOR_MAX_SIDE = 1024
HUMAN_PREVIEW_ALPHA = 0.55
# every method has its place on the page; a comparison shows the blocks of the methods it computed
MAP_KEYS = [f"{v}_{m}" for v in zoo.VARIANTS for m in methods.NAMES]
METHOD_CHOICES = [(methods.choice_label(m), m) for m in methods.NAMES]


@dataclass(frozen=True)
class Shown:
    """The comparison on screen: restyling and exports reuse it without recomputing."""

    comparison: Comparison
    arch: str
    human_source: Optional[str]


@dataclass(frozen=True)
class CompareRequest:
    """A comparison asked for: the pair, the input (record or photo, with its human map) and the settings."""

    arch: str
    source: str
    shard: Optional[str]
    index: Any
    photo: Optional[str]
    human_file: Optional[str]
    editor: Optional[dict]
    target: str
    threshold: float
    geometry: str
    alpha: float
    cmap: str
    previous: Optional[Shown]
    methods: Optional[list]
    faithfulness: bool
    layer: Optional[str]


StyleRequest = request(
    "StyleRequest", "A restyle of the shown comparison: overlay opacity and colormap.",
    __name__, shown=Optional[Shown], alpha=float, cmap=str)
ArchRequest = request(
    "ArchRequest", "A change of the model pair.",
    __name__, arch=str)
ShardRequest = request(
    "ShardRequest", "A change of the ClickMe shard.",
    __name__, shard=Optional[str])
PhotoRequest = request(
    "PhotoRequest", "A new photo: the painting canvas follows it.",
    __name__, photo=Optional[str])
RecordRequest = request(
    "RecordRequest", "A ClickMe record's preview: shard, index, the pair (for its class names) and colormap.",
    __name__, shard=Optional[str], index=Any, arch=str, cmap=str)
@dataclass
class CompareTab:
    """The tab's widgets by name, with what the handlers need beside them."""

    cfg: AppConfig
    exports: Exports
    widgets: dict = field(default_factory=dict)

    def __getitem__(self, name: str):
        return self.widgets[name]

    def view(self, values: dict) -> dict:
        """Gradio's output dict for handler ``values`` keyed by widget name."""
        return {self.widgets[k]: v for k, v in values.items()}

    def results(self) -> list:
        """Every widget a comparison writes (the outputs of the Compare events)."""
        names = ["shown", "human", "head_human", "scores", "top5", "summary", "provenance", "status", "use_demo",
                 "colorbar", *(f"head_{v}" for v in zoo.VARIANTS), *(f"block_{m}" for m in methods.NAMES), *MAP_KEYS,
                 *(f"rho_{k}" for k in MAP_KEYS)]
        return [self.widgets[n] for n in names]

    def pictures(self) -> list:
        """The pictures a restyle redraws: the human map, the four maps and the colour scale."""
        return [self.widgets[n] for n in ("human", "head_human", *MAP_KEYS, "colorbar")]


# --- handlers ------------------------------------------------------------------------------------------


def on_compare(tab: CompareTab, req: CompareRequest, progress=None) -> dict:
    """Both models on the chosen input. A failure keeps the previous results on the page, marks them as
    stale and says in the status box what went wrong and what to do."""
    try:
        prepared = build_sample(req.source, req.arch, req.shard, req.index, req.photo, req.human_file,
                                painted_map(req.editor), req.target, tab.cfg)
        options = CamOptions.checked(req.methods, req.faithfulness, req.layer)
        t0 = time.perf_counter()
        c = run_comparison(req.arch, prepared.sample, prepared.target, req.threshold, req.geometry, tab.cfg,
                           progress, options)
        load_s = time.perf_counter() - t0 - c.seconds
    except Exception as e:  # noqa: BLE001 - every failure is said in the status box, the page stays usable
        previous = present.result_label(req.previous.comparison) if req.previous else None
        return tab.view({"status": gr.update(value=present.failure_status(gradio_error(e).message, previous),
                                             visible=True),
                         "use_demo": gr.update(visible=is_checkpoint_problem(e) and req.arch != DEMO_ARCH)})
    # said once the result is there, so that a failed load is not buried under notes about the input
    for note in prepared.notes:
        gr.Warning(note)
    if c.human is not None and any(s.spearman is None for o in c.outputs.values() for s in o.scores.values()):
        gr.Warning("ρ is undefined where a map is constant: Spearman's ρ ranks pixels, and a constant map has no "
                   "ranking")
    shown = Shown(c, req.arch, prepared.human_source)
    return tab.view({**_result_values(shown, load_s, req.source), **_picture_values(shown, req.alpha, req.cmap)})


def _result_values(shown: Shown, load_s: float, source: str) -> dict:
    c, names = shown.comparison, class_names(shown.arch)
    values = {"shown": shown, "scores": present.score_table(c), "top5": present.top5_rows(c, names),
              "summary": present.sample_text(c, names, load_s, shown.human_source),
              "provenance": present.provenance_text(c), "status": gr.update(value="", visible=False),
              "use_demo": gr.update(visible=False)}
    for m in methods.NAMES:
        values[f"block_{m}"] = gr.update(visible=m in c.methods)
    for v in zoo.VARIANTS:
        values[f"head_{v}"] = present.column_head(c, v, names)
        for m in methods.NAMES:
            values[f"rho_{v}_{m}"] = present.rho_text(c, v, m) if m in c.methods else "ρ —"
    return values


def _picture_values(shown: Shown, alpha: float, cmap: str) -> dict:
    overlays = present.overlays(shown.comparison, alpha, cmap)
    values = {k: overlays.get(k) for k in MAP_KEYS}
    has_human = shown.comparison.human is not None
    values["human"] = overlays["human"] if has_human else None
    values["head_human"] = present.human_head(has_human)
    values["colorbar"] = present.colorbar_html(cmap)
    return values


def on_restyle(tab: CompareTab, req: StyleRequest) -> dict:
    """The overlays and the colour scale in the new opacity and colormap, from the comparison on screen."""
    if not req.shown:
        return tab.view({"colorbar": present.colorbar_html(req.cmap)})
    return tab.view(_picture_values(req.shown, req.alpha, req.cmap))


def on_export(tab: CompareTab, req: StyleRequest):
    """The download bundle of the comparison on screen, in the current style."""
    if not req.shown:
        return None
    c, arch = req.shown.comparison, req.shown.arch
    return gr.update(value=tab.exports.write(c, class_names(arch), req.alpha, req.cmap, arch), visible=True)


def on_arch(tab: CompareTab, req: ArchRequest) -> tuple:
    """The pair's classes as targets, and where its checkpoints would come from."""
    return (gr.update(choices=target_choices(req.arch), value=TARGET_LABEL),
            present.checkpoint_status(checkpoint_sources(req.arch, tab.cfg)))


def on_record(tab: CompareTab, req: RecordRequest) -> tuple:
    """The record's image and its human map in the chosen colormap, with its label; a bad index is a warning
    and the preview stays."""
    try:
        s = clickme_sample(req.shard, req.index, tab.cfg)
    except UserError as e:
        gr.Warning(str(e))
        return gr.skip(), gr.skip(), gr.skip()
    names = class_names(req.arch)
    known = shard_label_space_matches(s.name, req.arch) and 0 <= s.label < len(names)
    human = (render.overlay(geometry.resize_image(s.image), s.human, HUMAN_PREVIEW_ALPHA, req.cmap)
             if s.human is not None else None)
    return s.image, human, present.record_text(s.name, s.label, names, known, req.arch)


def on_random(tab: CompareTab, req: ShardRequest) -> int:
    """A random record index of the shard."""
    return random.randrange(len(open_shard(resolve_shard(req.shard, tab.cfg))))


def on_photo(tab: CompareTab, req: PhotoRequest):
    """The photo as the painting canvas's background (downscaled for display only)."""
    if not req.photo:
        return None
    try:
        image, notes = images.load_image(req.photo, with_notes=True)
    except images.ImageError as e:
        gr.Warning(f"photo: {e}")
        return None
    for note in notes:
        gr.Warning(f"photo: {note}")
    pil = geometry.to_pil(image)
    pil.thumbnail((EDITOR_MAX_SIDE, EDITOR_MAX_SIDE))
    background = np.asarray(pil)
    return {"background": background, "layers": [], "composite": background}


def painted_map(editor) -> Optional[np.ndarray]:
    """The strokes painted on the photo (an ImageEditor value), as a map: their opacity, 0 where nothing was
    painted; None when nothing was."""
    if not editor or not isinstance(editor, dict):
        return None
    strokes = [np.asarray(layer) for layer in editor.get("layers") or [] if layer is not None]
    strokes = [s for s in strokes if s.ndim == 3 and s.shape[2] == 4 and s[..., 3].any()]
    if not strokes:
        return None
    return np.max(np.stack([s[..., 3] for s in strokes]), axis=0).astype(np.float32)


def target_choices(arch: str) -> list:
    """The class-to-explain choices of ``arch``: ground truth, prediction, then every class by index."""
    names = class_names(arch)
    return ([("Ground truth (when known, else predicted)", TARGET_LABEL), ("Predicted (top-1)", TARGET_PRED)]
            + [(f"{i}: {n}", str(i)) for i, n in enumerate(names)])


# --- the widgets ----------------------------------------------------------------------------------------


def build(demo: gr.Blocks, cfg: AppConfig, exports: Exports) -> CompareTab:
    """The Compare tab's widgets and events; call inside a ``gr.Tab``."""
    tab = CompareTab(cfg, exports)
    tab.widgets["source"] = gr.State("clickme")
    tab.widgets["shown"] = gr.State(None)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            with gr.Tabs():
                with gr.Tab("ClickMe record", id="clickme") as tab.widgets["tab_clickme"]:
                    _record_inputs(tab)
                with gr.Tab("Upload a photo", id="upload") as tab.widgets["tab_upload"]:
                    _upload_inputs(tab)
        with gr.Column(scale=2):
            _controls(tab)
    _results(tab)
    _wire(demo, tab)
    return tab


def _record_inputs(tab: CompareTab) -> None:
    w, shards = tab.widgets, shard_choices(tab.cfg)
    with gr.Row():
        w["shard"] = gr.Dropdown(shards, value=shards[0][1] if shards else None, label="Shard", scale=3,
                                 info=f"the demo shard, plus ClickMe shards found in ${clickme.CLICKME_DIR_ENV}")
        w["index"] = gr.Number(0, precision=0, minimum=0, label="Record index", scale=1, elem_id="record-index")
        w["random"] = gr.Button("Random record", scale=1, size="sm")
    with gr.Row():
        with gr.Column(min_width=160):
            w["rec_image"] = titled_image("Image", height=220, buttons=["fullscreen"])
        with gr.Column(min_width=160):
            w["rec_human"] = titled_image("Human map (ClickMe)", height=220, buttons=["fullscreen"],
                                          elem_id="rec-human")
    w["rec_info"] = gr.Markdown()


def _upload_inputs(tab: CompareTab) -> None:
    w = tab.widgets
    examples = sorted(str(p) for p in (zoo.ASSETS / "examples").glob("*.jpg"))
    with gr.Row():
        w["photo"] = gr.File(label="Photo", file_types=IMAGE_TYPES, type="filepath", elem_id="photo")
        w["human_file"] = gr.File(label="Human map (optional; grey levels or .npy)", file_types=MAP_TYPES,
                                  type="filepath", elem_id="human-file")
    w["editor"] = gr.ImageEditor(label="…or paint a human map on the photo", type="numpy", image_mode="RGBA",
                                 sources=[], transforms=[], layers=False,
                                 brush=gr.Brush(colors=["#e11d48"], color_mode="fixed", default_size=24),
                                 format="png", height=340, elem_id="painter")
    gr.Examples([[p] for p in examples], inputs=[w["photo"]], label="Example photos",
                example_labels=[Path(p).stem for p in examples])


def _controls(tab: CompareTab) -> None:
    w, start = tab.widgets, default_arch(tab.cfg)
    w["arch"] = gr.Dropdown(arch_choices(), value=start, label="Model pair", elem_id="arch",
                            info="the study's 8 architectures, or the bundled offline demo pair")
    w["arch_status"] = gr.Markdown(present.checkpoint_status(checkpoint_sources(start, tab.cfg)),
                                   elem_id="arch-status")
    w["target"] = gr.Dropdown(target_choices(start), value=TARGET_LABEL, label="Class to explain", filterable=True,
                              info="type to search the class names")
    with gr.Row():
        w["threshold"] = gr.Slider(0.0, 1.0, DEFAULT_THRESHOLD, step=0.05, label="Threshold",
                                   info="Threshold-Grad-CAM floor")
        w["geometry"] = gr.Radio(list(geometry.GEOMETRIES), value="paper", label="Geometry",
                                 info="paper: the study's numbers; aligned: crop and map cover the same pixels")
    with gr.Row():
        w["alpha"] = gr.Slider(0.0, 1.0, 0.5, step=0.05, label="Overlay opacity")
        w["cmap"] = gr.Dropdown(list(render.COLORMAPS), value="jet", label="Colormap", elem_id="cmap")
    _method_controls(tab)
    w["run"] = gr.Button("Compare", variant="primary", size="lg", elem_id="run")
    w["status"] = gr.Markdown(visible=False, elem_id="status-box")
    w["use_demo"] = gr.Button("Use the bundled demo pair instead", visible=False, size="sm", elem_id="use-demo")


def _method_controls(tab: CompareTab) -> None:
    w = tab.widgets
    w["methods"] = gr.Dropdown(METHOD_CHOICES, value=list(MAPS), multiselect=True, label="Attribution methods",
                               elem_id="methods", info="each gets a baseline | DCLS pair of maps; all but Score-CAM "
                                                       "come from the same forward and backward pass")
    with gr.Accordion("Faithfulness and CAM layer", open=False, elem_id="advanced"):
        w["faithfulness"] = gr.Checkbox(False, label="Faithfulness: deletion, insertion and ROAD of every map",
                                        info="costly: 2 × 16 + 18 perturbed forwards per map",
                                        elem_id="faithfulness")
        w["layer"] = gr.Textbox("", label="CAM layer", placeholder="the study's layer of each model",
                                info="any module whose output is (B, C, h, w), e.g. stages.2; a wrong name lists "
                                     "the valid ones near it", max_length=80, elem_id="layer")


def _results(tab: CompareTab) -> None:
    w = tab.widgets
    with gr.Row(equal_height=True):
        w["summary"] = gr.Markdown(elem_id="summary")
        w["export"] = gr.DownloadButton("Download panel, maps and manifest (zip)", visible=False, scale=0,
                                        min_width=300, elem_id="export")
    w["provenance"] = gr.Markdown(elem_id="provenance")
    w["colorbar"] = gr.HTML(present.colorbar_html("jet"), elem_id="colorbar")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=180):
            w["head_human"] = gr.Markdown(present.human_head(None), elem_classes="model-head",
                                          elem_id="human-head")
            w["human"] = gr.Image(label="Human map", show_label=False, interactive=False, format="png",
                                  height=260, buttons=["download", "fullscreen"], elem_id="human-map")
        with gr.Column(scale=4):
            with gr.Row():
                for v in zoo.VARIANTS:
                    w[f"head_{v}"] = gr.Markdown(f"### {VARIANT_TITLES[v]}", elem_classes="model-head",
                                                 elem_id=f"col-{v}")
            with gr.Row(equal_height=False, elem_id="method-grid"):
                for m in methods.NAMES:
                    _method_block(tab, m)
    _score_tables(tab)


def _method_block(tab: CompareTab, method: str) -> None:
    """One method's pair of maps, baseline | DCLS, with ρ under each; shown when the comparison has it."""
    w = tab.widgets
    with gr.Column(min_width=380, visible=method in MAPS, elem_id=f"method-{method}",
                   elem_classes="method-block") as w[f"block_{method}"]:
        gr.Markdown(f"#### {MAP_TITLES[method]}", elem_classes="method-title")
        with gr.Row():
            for v in zoo.VARIANTS:
                with gr.Column(min_width=180):
                    w[f"{v}_{method}"] = titled_image(f"{VARIANT_TITLES[v]} {MAP_TITLES[method]}", height=260,
                                                      buttons=["download", "fullscreen"], elem_id=f"{v}-{method}")
                    w[f"rho_{v}_{method}"] = gr.Markdown("ρ —", elem_classes="rho", elem_id=f"rho-{v}-{method}")


def _score_tables(tab: CompareTab) -> None:
    w = tab.widgets
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            w["scores"] = gr.Dataframe(headers=present.SCORE_HEADERS, label="Scores (see the note below)",
                                       interactive=False, elem_id="scores")
            gr.Markdown(present.ceiling_note(), elem_id="score-note", elem_classes="footnote")
        w["top5"] = gr.Dataframe(headers=present.TOP5_HEADERS, label="Top-5 predictions", interactive=False,
                                 scale=2, elem_id="top5")


def _wire(demo: gr.Blocks, tab: CompareTab) -> None:
    w, private = tab.widgets, {"api_visibility": "private"}
    compare_inputs = [w[k] for k in ("arch", "source", "shard", "index", "photo", "human_file", "editor", "target",
                                     "threshold", "geometry", "alpha", "cmap", "shown", "methods", "faithfulness",
                                     "layer")]
    style_inputs = [w["shown"], w["alpha"], w["cmap"]]
    record = (bind(on_record, RecordRequest, tab), [w["shard"], w["index"], w["arch"], w["cmap"]],
              [w["rec_image"], w["rec_human"], w["rec_info"]])
    compute = bind(on_compare, CompareRequest, tab, progress=True)
    export = bind(on_export, StyleRequest, tab)

    w["arch"].change(bind(on_arch, ArchRequest, tab), w["arch"], [w["target"], w["arch_status"]], **private).then(
        *record, **private)
    w["tab_clickme"].select(lambda: "clickme", None, w["source"], **private)
    w["tab_upload"].select(lambda: "upload", None, w["source"], **private)
    for trigger in (w["shard"].change, w["index"].change, w["cmap"].change):
        trigger(*record, **private)
    w["random"].click(bind(on_random, ShardRequest, tab), w["shard"], w["index"], **private)
    w["photo"].change(bind(on_photo, PhotoRequest, tab), w["photo"], w["editor"], **private)
    w["run"].click(compute, compare_inputs, tab.results(), concurrency_id="compute", **private).then(
        export, style_inputs, w["export"], **private)
    w["use_demo"].click(lambda: DEMO_ARCH, None, w["arch"], **private).then(
        compute, compare_inputs, tab.results(), concurrency_id="compute", **private).then(
        export, style_inputs, w["export"], **private)
    for trigger in (w["alpha"].release, w["cmap"].change):
        trigger(bind(on_restyle, StyleRequest, tab), style_inputs, tab.pictures(), queue=False, **private).then(
            export, style_inputs, w["export"], **private)
    demo.load(*record, **private)
