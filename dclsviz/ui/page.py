"""The page: the Blocks that hold the tabs, the /compare, /models, /classes and /shards endpoints, and the
launch. Each tab's widgets and handlers are in its own module (``compare_tab``, ``review_tab``,
``dataset_tab``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from .. import geometry, methods, render, zoo  # noqa: E402
from ..cam import DEFAULT_THRESHOLD  # noqa: E402
from ..compare import MAPS  # noqa: E402
from . import compare_tab, dataset_tab, present, review_api, review_tab, storage  # noqa: E402
from .events import bind, gradio_error  # noqa: E402
from .present import Exports  # noqa: E402
from .service import (DEMO_ARCH, SOURCES, TARGET_LABEL, AppConfig, CamOptions, UserError,  # noqa: E402
                      arch_choices, build_sample, checkpoint_sources, class_names, default_arch, device_text,
                      open_shard, pair_available, run_comparison, shard_choices)

CSS = """
.rho {text-align: center; font-size: 1.05em; margin-top: -6px}
.rho p {margin: 0}
.model-head h3 {margin-bottom: 2px}
.map-title {text-align: center; margin-bottom: 0}
.map-title p {margin: 0; font-size: 0.92em; white-space: normal}
#status-box {border-left: 4px solid #d97706; padding-left: 10px}
#ds-status {border-left: 4px solid #dc2626; padding-left: 10px}
.footnote {font-size: 0.85em; opacity: 0.85}
.colorbar {display: flex; align-items: center; gap: 8px; font-size: 0.85em; max-width: 640px; margin: 2px auto}
.colorbar-ramp {flex: 1; height: 12px; border-radius: 2px; border: 1px solid #0002}
.colorbar em {white-space: nowrap; opacity: 0.8}
.method-title h4 {margin: 4px 0 0 0; text-align: center}
#rv-existing {min-width: 0}
#rv-existing input {text-overflow: ellipsis}
"""

INTRO = """# Grad-CAM of DCLS vs baseline models against human attention
Does replacing depthwise convolutions by **Dilated Convolutions with Learnable Spacings** make a model look
where people look? Each column explains one model of a pair; **ρ** is Spearman's correlation of the map with the
human (ClickMe) map, the study's alignment score ([arXiv 2408.03164](https://arxiv.org/abs/2408.03164))."""

API_PICTURES = ["human", *(f"{v}_{m}" for v in zoo.VARIANTS for m in MAPS)]


def theme():
    """The app's Gradio theme (given to ``launch``)."""
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="amber")


def build_ui(cfg: Optional[AppConfig] = None) -> gr.Blocks:
    """The whole app: the Compare, Review and Dataset tabs and every API endpoint."""
    cfg = cfg or AppConfig.from_env()
    exports = Exports.at(cfg.export_dir)
    # Gradio deletes its cached uploads and outputs older than the age, so the cache stays bounded
    with gr.Blocks(title="dclsviz: DCLS Grad-CAM vs human attention",
                   delete_cache=(cfg.cache_prune_every_s, cfg.cache_max_age_s)) as demo:
        gr.Markdown(INTRO)
        gr.Markdown(f"**Device:** {device_text(cfg)}", elem_id="device")
        with gr.Tabs():
            with gr.Tab("Compare", id="compare"):
                compare_tab.build(demo, cfg, exports)
            with gr.Tab("Review", id="review") as tab:
                review_tab.build(cfg, tab)
                review_api.build(cfg)
            with gr.Tab("Dataset", id="dataset"):
                dataset_tab.build(cfg)
        _api(ApiContext(cfg, exports))
    # every computing event shares concurrency_id="compute", so at most cfg.concurrency compute at once whatever
    # the tab; past queue_size waiting requests a new one is refused at once rather than left to time out
    demo.queue(default_concurrency_limit=cfg.concurrency, max_size=cfg.queue_size)
    return demo


# --- the endpoints ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiContext:
    """What the API endpoints share: the app's configuration and its export folders."""

    cfg: AppConfig
    exports: Exports


@dataclass(frozen=True)
class ApiCompareRequest:
    """``/compare``'s inputs, in its public order."""

    arch: str
    source: str
    shard: str
    index: Any
    image: Optional[str]
    human_map: Optional[str]
    target: str
    threshold: float
    geometry: str
    methods: str = ",".join(MAPS)
    faithfulness: bool = False
    layer: str = ""


def api_compare(ctx: ApiContext, req: ApiCompareRequest, progress=None) -> tuple:
    """Both models of `arch` on one input: the manifest (scores of every method asked, faithfulness when asked,
    top-5, provenance, notes), the human-map and the paper's four CAM overlays (PNG; empty for a method not
    asked), and the export bundle (zip: every method's maps and the panel)."""
    prepared = build_sample(req.source, req.arch, req.shard, req.index, req.image, req.human_map, None, req.target,
                            ctx.cfg)
    options = CamOptions.checked(req.methods, req.faithfulness, req.layer)
    c = run_comparison(req.arch, prepared.sample, prepared.target, req.threshold, req.geometry, ctx.cfg, progress,
                       options)
    for note in prepared.notes:
        gr.Warning(note)
    names = class_names(req.arch)
    overlays = present.overlays(c, 0.5, "jet")
    manifest = {**present.public_view(c).manifest(names), "arch": req.arch, "notes": list(prepared.notes)}
    folder = ctx.exports.new_folder()
    # only the endpoint's own pictures: the other methods' maps travel in the bundle
    pngs = {k: render.write_png(overlays[k], folder / f"{k}.png") for k in API_PICTURES if k in overlays}
    return (manifest, pngs["human"] if c.human is not None else None, *[pngs.get(k) for k in API_PICTURES[1:]],
            ctx.exports.write(c, names, 0.5, "jet", req.arch, folder))


def models_info(cfg: AppConfig) -> dict:
    """The architectures, where their checkpoints are, and the compute device."""
    return {"device": device_text(cfg), "default": default_arch(cfg), "downloads": cfg.download,
            "archs": {a: {"available": pair_available(a, cfg), "paper": a in zoo.PAPER_ARCHS,
                          "checkpoints": present.checkpoint_status(checkpoint_sources(a, cfg))}
                      for a in arch_choices()}}


def shards_info(cfg: AppConfig) -> list:
    """The shards /compare can read: [{name, label, records}]."""
    return [{"name": Path(p).name, "label": label, "records": len(open_shard(Path(p)))}
            for label, p in shard_choices(cfg)]


def _api(ctx: ApiContext) -> None:
    """The endpoints for gradio_client; /compare's inputs are plain components that live off-screen."""
    with gr.Column(visible=False):
        inputs = [gr.Dropdown(arch_choices(), value=DEMO_ARCH, label="arch", allow_custom_value=True),
                  gr.Radio(list(SOURCES), value="clickme", label="source"),
                  gr.Textbox("", label="shard", info="a listed shard's file name; empty: the demo shard"),
                  gr.Textbox("0", label="index", info="record index, or 'random'"),
                  gr.File(label="image", type="filepath"), gr.File(label="human_map", type="filepath"),
                  gr.Textbox(TARGET_LABEL, label="target", info="'label', 'pred', a class index or name"),
                  gr.Number(DEFAULT_THRESHOLD, label="threshold"),
                  gr.Radio(list(geometry.GEOMETRIES), value="paper", label="geometry"),
                  gr.Textbox(",".join(MAPS), label="methods",
                             info=f"comma-separated: {', '.join(methods.NAMES)}; or 'all': every one-pass "
                                  "method (scorecam only by name)"),
                  gr.Checkbox(False, label="faithfulness", info="deletion, insertion and ROAD of every map (costly)"),
                  gr.Textbox("", label="layer", info="the CAM layer; empty: the study's layer of each model")]
        outputs = [gr.JSON(label="manifest"), *[gr.Image(label=n, format="png") for n in
                                                ["human", "baseline_gradcam", "baseline_threshold_gradcam",
                                                 "dcls_gradcam", "dcls_threshold_gradcam"]], gr.File(label="bundle")]
        button = gr.Button("compare")
    button.click(bind(api_compare, ApiCompareRequest, ctx, progress=True), inputs, outputs, api_name="compare",
                 concurrency_limit=ctx.cfg.concurrency, concurrency_id="compute")

    # gr.api reads the endpoint's signature from the function itself: thin named wrappers over the above
    def models() -> dict:
        """The architectures, where their checkpoints are, and the compute device."""
        return models_info(ctx.cfg)

    def classes(arch: str) -> list:
        """The class names of `arch`'s models, in index order."""
        try:
            return class_names(arch)
        except UserError as e:
            raise gradio_error(e) from None

    def shards() -> list:
        """The shards /compare can read: [{name, label, records}]."""
        return shards_info(ctx.cfg)

    # answered at once, never behind the computing requests in the queue
    gr.api(models, api_name="models", queue=False)
    gr.api(classes, api_name="classes", queue=False)
    gr.api(shards, api_name="shards", queue=False)


def launch(demo: gr.Blocks, host: str, port: int, **kwargs):
    """Serve ``demo``; with a cache age set, the folders Gradio's own sweep leaves empty are swept too."""
    if demo.delete_cache and "app_kwargs" not in kwargs:
        every, age = demo.delete_cache
        kwargs["app_kwargs"] = {"lifespan": storage.sweeping(Path(gr.utils.get_upload_folder()), every, age)}
    return demo.launch(server_name=host, server_port=port, theme=theme(), css=CSS, show_error=True,
                       max_file_size=os.environ.get("DCLSVIZ_MAX_FILE_SIZE", "60mb"), **kwargs)
