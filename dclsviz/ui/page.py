"""The page and the API endpoints: Gradio wiring only. Handlers pass inputs to ``service`` and lay out what
``present`` makes of the result; errors become gr.Warning / gr.Error and the server keeps serving."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Optional

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from .. import clickme, geometry, labels, metrics, render, zoo  # noqa: E402
from ..cam import DEFAULT_THRESHOLD  # noqa: E402
from ..compare import MAP_TITLES, MAPS, NonFiniteError  # noqa: E402
from . import dataset_page, review_page, storage  # noqa: E402
from .present import (SCORE_HEADERS, TOP5_HEADERS, TOP_FRACTION, Exports, column_head, overlays,  # noqa: E402
                      provenance_text, public_view, rho_text, sample_text, score_rows, top5_rows)
from .service import (DEMO_ARCH, SOURCES, TARGET_LABEL, TARGET_PRED, VARIANT_TITLES, AppConfig,  # noqa: E402
                      CheckpointProblem, UserError, arch_choices, build_sample, checkpoint_status, class_names,
                      clickme_sample, default_arch, device_text, editor_value, log, open_shard, pair_available,
                      resolve_shard, run_comparison, shard_choices, shard_label_space_matches)

IMAGE_TYPES = [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"]
MAP_TYPES = IMAGE_TYPES + [".npy"]


def _as_gradio_error(e: Exception) -> gr.Error:
    if isinstance(e, (UserError, NonFiniteError)):
        return gr.Error(str(e))
    log.exception("comparison failed")
    # the exception's text can name server files: it goes to the log, the visitor gets its kind only
    return gr.Error(f"internal error ({type(e).__name__}); the app keeps running and the details are in the "
                    "server log, please report this")


# --- the page ----------------------------------------------------------------------------------------

CSS = """
.rho {text-align: center; font-size: 1.05em; margin-top: -6px}
.rho p {margin: 0}
.model-head h3 {margin-bottom: 2px}
#status-box {border-left: 4px solid #d97706; padding-left: 10px}
"""

INTRO = """# Grad-CAM of DCLS vs baseline models against human attention
Does replacing depthwise convolutions by **Dilated Convolutions with Learnable Spacings** make a model look
where people look? Each column explains one model of a pair; **ρ** is Spearman's correlation of the map with the
human (ClickMe) map, the study's alignment score ([arXiv 2408.03164](https://arxiv.org/abs/2408.03164))."""


def theme():
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="amber")


def build_ui(cfg: Optional[AppConfig] = None) -> gr.Blocks:
    cfg = cfg or AppConfig.from_env()
    exports = Exports.at(cfg.export_dir)
    # Gradio deletes its cached uploads and outputs older than the age, so the cache stays bounded
    with gr.Blocks(title="dclsviz: DCLS Grad-CAM vs human attention",
                   delete_cache=(cfg.cache_prune_every_s, cfg.cache_max_age_s)) as demo:
        gr.Markdown(INTRO)
        gr.Markdown(f"**Device:** {device_text(cfg)}", elem_id="device")
        with gr.Tabs():
            with gr.Tab("Compare", id="compare"):
                _compare_tab(demo, cfg, exports)
            with gr.Tab("Review", id="review") as review_tab:
                review_page.build(cfg, review_tab)
            with gr.Tab("Dataset", id="dataset"):
                dataset_page.build(cfg)
        _api(cfg, exports)
    # every computing event shares concurrency_id="compute", so at most cfg.concurrency compute at once whatever
    # the tab; past queue_size waiting requests a new one is refused at once rather than left to time out
    demo.queue(default_concurrency_limit=cfg.concurrency, max_size=cfg.queue_size)
    return demo


def _target_choices(arch: str) -> list:
    names = class_names(arch)
    return ([("Ground truth (when known, else predicted)", TARGET_LABEL), ("Predicted (top-1)", TARGET_PRED)]
            + [(f"{i}: {n}", str(i)) for i, n in enumerate(names)])


def _compare_tab(demo: gr.Blocks, cfg: AppConfig, exports: Exports) -> None:
    """One image through both models: inputs, controls, the two columns, scores and exports."""
    start_arch = default_arch(cfg)
    shards = shard_choices(cfg)
    example_photos = sorted(str(p) for p in (zoo.ASSETS / "examples").glob("*.jpg"))
    source = gr.State("clickme")
    result = gr.State(None)  # (Comparison, arch): restyling and exports reuse it without recomputing

    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            with gr.Tabs():
                with gr.Tab("ClickMe record", id="clickme") as tab_clickme:
                    with gr.Row():
                        shard = gr.Dropdown(shards, value=shards[0][1] if shards else None, label="Shard",
                                            scale=3, info="the demo shard, plus ClickMe shards found in "
                                            f"${clickme.CLICKME_DIR_ENV}")
                        index = gr.Number(0, precision=0, minimum=0, label="Record index", scale=1)
                        rand = gr.Button("Random record", scale=1, size="sm")
                    with gr.Row():
                        rec_image = gr.Image(label="Image", interactive=False, height=220, format="png",
                                             buttons=["fullscreen"])
                        rec_human = gr.Image(label="Human map (ClickMe)", interactive=False, height=220,
                                             format="png", buttons=["fullscreen"])
                    rec_info = gr.Markdown()
                with gr.Tab("Upload a photo", id="upload") as tab_upload:
                    with gr.Row():
                        photo = gr.File(label="Photo", file_types=IMAGE_TYPES, type="filepath", elem_id="photo")
                        human_file = gr.File(label="Human map (optional; grey levels or .npy)",
                                             file_types=MAP_TYPES, type="filepath", elem_id="human-file")
                    editor = gr.ImageEditor(
                        label="…or paint a human map on the photo",
                        type="numpy", image_mode="RGBA", sources=[], transforms=[], layers=False,
                        brush=gr.Brush(colors=["#e11d48"], color_mode="fixed", default_size=24),
                        format="png", height=340, elem_id="painter")
                    gr.Examples([[p] for p in example_photos], inputs=[photo], label="Example photos",
                                example_labels=[Path(p).stem for p in example_photos])
        with gr.Column(scale=2):
            arch = gr.Dropdown(arch_choices(), value=start_arch, label="Model pair",
                               info="the study's 8 architectures, or the bundled offline demo pair",
                               elem_id="arch")
            arch_status = gr.Markdown(checkpoint_status(start_arch, cfg), elem_id="arch-status")
            target = gr.Dropdown(_target_choices(start_arch), value=TARGET_LABEL, label="Class to explain",
                                 filterable=True, info="type to search the class names")
            with gr.Row():
                threshold = gr.Slider(0.0, 1.0, DEFAULT_THRESHOLD, step=0.05, label="Threshold",
                                      info="Threshold-Grad-CAM floor")
                geom = gr.Radio(list(geometry.GEOMETRIES), value="paper", label="Geometry",
                                info="paper: the study's numbers; aligned: crop and map cover the same pixels")
            with gr.Row():
                alpha = gr.Slider(0.0, 1.0, 0.5, step=0.05, label="Overlay opacity")
                cmap = gr.Dropdown(list(render.COLORMAPS), value="jet", label="Colormap", elem_id="cmap")
            run_btn = gr.Button("Compare", variant="primary", size="lg", elem_id="run")
            status = gr.Markdown(visible=False, elem_id="status-box")
            use_demo = gr.Button("Use the bundled demo pair instead", visible=False, size="sm")

    with gr.Row(equal_height=True):
        summary = gr.Markdown(elem_id="summary")
        export = gr.DownloadButton("Download panel, maps and manifest (zip)", visible=False, scale=0,
                                   min_width=300, elem_id="export")
    provenance = gr.Markdown(elem_id="provenance")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=180):
            gr.Markdown("### Human\nClickMe clicks, or your map")
            human_img = gr.Image(label="Human map", interactive=False, format="png", height=240,
                                 buttons=["download", "fullscreen"], elem_id="human-map")
        cols = {}
        for v in zoo.VARIANTS:
            with gr.Column(scale=2, min_width=360, elem_id=f"col-{v}"):
                head = gr.Markdown(f"### {VARIANT_TITLES[v]}", elem_classes="model-head")
                imgs, rhos = {}, {}
                with gr.Row():
                    for m in MAPS:
                        with gr.Column(min_width=170):
                            imgs[m] = gr.Image(label=f"{VARIANT_TITLES[v]} {MAP_TITLES[m]}", interactive=False,
                                               format="png", height=240, buttons=["download", "fullscreen"],
                                               elem_id=f"{v}-{m}")
                            rhos[m] = gr.Markdown("ρ —", elem_classes="rho", elem_id=f"rho-{v}-{m}")
                cols[v] = (head, imgs, rhos)
    with gr.Row(equal_height=False):
        scores = gr.Dataframe(headers=SCORE_HEADERS, label="Scores · ρ: Spearman with the human map · "
                              f"Δρ: DCLS − baseline · ρ / ceiling: ρ / inter-human ρ "
                              f"({metrics.HUMAN_CEILING:.3f}) · "
                              f"Dice, IoU: overlap of the top-{TOP_FRACTION:.0%} pixels",
                              interactive=False, scale=3, elem_id="scores")
        top5 = gr.Dataframe(headers=TOP5_HEADERS, label="Top-5 predictions", interactive=False, scale=2,
                            elem_id="top5")

    image_outputs = [human_img] + [cols[v][1][m] for v in zoo.VARIANTS for m in MAPS]

    # --- handlers (thin: load inputs, call the core, lay out its results) ---

    def on_arch(a):
        try:
            return (gr.update(choices=_target_choices(a), value=TARGET_LABEL), checkpoint_status(a, cfg))
        except UserError as e:
            raise gr.Error(str(e)) from None

    def on_record(sh, i, a, cm):
        try:
            s = clickme_sample(sh, i, cfg)
        except UserError as e:
            gr.Warning(str(e))
            return gr.skip(), gr.skip(), gr.skip()
        img = geometry.resize_image(s.image)
        names = class_names(a)
        known = shard_label_space_matches(s.name, a) and 0 <= s.label < len(names)
        text = (f"label **{labels.short_name(s.label, names)}** ({s.label})" if known else
                f"label {s.label} (not a class of {a}: the predicted class will be explained)")
        return s.image, render.overlay(img, s.human, 0.55, cm), f"{Path(s.name).name} · {text}"

    def on_random(sh):
        try:
            return random.randrange(len(open_shard(resolve_shard(sh, cfg))))
        except UserError as e:
            raise gr.Error(str(e)) from None

    def on_photo(f):
        value, notes = editor_value(f)
        for n in notes:
            gr.Warning(n)
        return value

    def restyle(state, a_, cm):
        if not state:
            return [gr.skip()] * len(image_outputs)
        c, _ = state
        ov = overlays(c, a_, cm)
        return [ov["human"]] + [ov[f"{v}_{m}"] for v in zoo.VARIANTS for m in MAPS]

    def make_export(state, a_, cm):
        if not state:
            return None
        c, a = state
        return gr.update(value=exports.write(c, class_names(a), a_, cm, a), visible=True)

    def ui_compare(a, src, sh, i, ph, hf, ed, tg, th, ge, a_, cm, progress=gr.Progress()):
        try:
            sample, tspec, notes = build_sample(src, a, sh, i, ph, hf, ed, tg, cfg)
            t0 = time.perf_counter()
            c = run_comparison(a, sample, tspec, th, ge, cfg, progress)
            load_s = time.perf_counter() - t0 - c.seconds
        except CheckpointProblem as e:
            gr.Warning(str(e))
            return {status: gr.update(value=f"**The {a} checkpoints are not available.** {e}", visible=True),
                    use_demo: gr.update(visible=a != DEMO_ARCH)}
        except Exception as e:
            raise _as_gradio_error(e) from None
        # said once the result is there, so that a failed load is not buried under notes about the input
        for n in notes:
            gr.Warning(n)
        if c.human is not None and any(o.scores[m].spearman is None for o in c.outputs.values()
                                       for m in MAPS):
            gr.Warning("ρ is undefined where a map is constant: Spearman's ρ ranks pixels, and a constant "
                       "map has no ranking")
        names = class_names(a)
        ov = overlays(c, a_, cm)
        out = {result: (c, a), human_img: ov["human"], scores: score_rows(c), top5: top5_rows(c, names),
               summary: sample_text(c, names, load_s, src), provenance: provenance_text(c),
               status: gr.update(value="", visible=False), use_demo: gr.update(visible=False)}
        for v in zoo.VARIANTS:
            head, imgs, rhos = cols[v]
            out[head] = column_head(c, v, names)
            for m in MAPS:
                out[imgs[m]] = ov[f"{v}_{m}"]
                out[rhos[m]] = rho_text(c, v, m)
        return out

    compare_inputs = [arch, source, shard, index, photo, human_file, editor, target, threshold, geom, alpha,
                      cmap]
    compare_outputs = [result, human_img, scores, top5, summary, provenance, status, use_demo,
                       *[cols[v][0] for v in zoo.VARIANTS],
                       *[x[m] for v in zoo.VARIANTS for x in cols[v][1:] for m in MAPS]]

    arch.change(on_arch, arch, [target, arch_status], api_visibility="private").then(
        on_record, [shard, index, arch, cmap], [rec_image, rec_human, rec_info], api_visibility="private")
    tab_clickme.select(lambda: "clickme", None, source, api_visibility="private")
    tab_upload.select(lambda: "upload", None, source, api_visibility="private")
    for trigger in (shard.change, index.change):
        trigger(on_record, [shard, index, arch, cmap], [rec_image, rec_human, rec_info], api_visibility="private")
    rand.click(on_random, shard, index, api_visibility="private")
    photo.change(on_photo, photo, editor, api_visibility="private")
    run_btn.click(ui_compare, compare_inputs, compare_outputs, api_visibility="private",
                  concurrency_id="compute").success(make_export, [result, alpha, cmap], export,
                                                    api_visibility="private")
    use_demo.click(lambda: DEMO_ARCH, None, arch, api_visibility="private").then(
        ui_compare, compare_inputs, compare_outputs, api_visibility="private", concurrency_id="compute").success(
        make_export, [result, alpha, cmap], export, api_visibility="private")
    for trigger in (alpha.release, cmap.change):
        trigger(restyle, [result, alpha, cmap], image_outputs, api_visibility="private", queue=False).then(
            make_export, [result, alpha, cmap], export, api_visibility="private")
    demo.load(on_record, [shard, index, arch, cmap], [rec_image, rec_human, rec_info], api_visibility="private")


def _api(cfg: AppConfig, exports: Exports) -> None:
    """The endpoints for gradio_client: plain components that live off-screen."""
    with gr.Column(visible=False):
        a_arch = gr.Dropdown(arch_choices(), value=DEMO_ARCH, label="arch", allow_custom_value=True)
        a_source = gr.Radio(list(SOURCES), value="clickme", label="source")
        a_shard = gr.Textbox("", label="shard", info="a listed shard's file name; empty: the demo shard")
        a_index = gr.Textbox("0", label="index", info="record index, or 'random'")
        a_image = gr.File(label="image", type="filepath")
        a_human = gr.File(label="human_map", type="filepath")
        a_target = gr.Textbox(TARGET_LABEL, label="target", info="'label', 'pred', a class index or name")
        a_threshold = gr.Number(DEFAULT_THRESHOLD, label="threshold")
        a_geometry = gr.Radio(list(geometry.GEOMETRIES), value="paper", label="geometry")
        o_manifest = gr.JSON(label="manifest")
        o_images = [gr.Image(label=n, format="png") for n in
                    ["human", "baseline_gradcam", "baseline_threshold_gradcam", "dcls_gradcam",
                     "dcls_threshold_gradcam"]]
        o_bundle = gr.File(label="bundle")
        a_btn = gr.Button("compare")

    def api_compare(arch, source, shard, index, image, human_map, target, threshold, geometry,
                    progress=gr.Progress()):
        """Both models of `arch` on one input: the manifest (scores, top-5, provenance, notes), the human-map
        and four CAM overlays (PNG), and the export bundle (zip)."""
        try:
            sample, tspec, notes = build_sample(source, arch, shard, index, image, human_map, None, target, cfg)
            c = run_comparison(arch, sample, tspec, threshold, geometry, cfg, progress)
        except Exception as e:
            raise _as_gradio_error(e) from None
        for n in notes:
            gr.Warning(n)
        names = class_names(arch)
        ov = overlays(c, 0.5, "jet")
        manifest = {**public_view(c).manifest(names), "arch": arch, "notes": notes}
        folder = exports.new_folder()
        pngs = {k: render.write_png(pic, folder / f"{k}.png") for k, pic in ov.items() if pic is not None}
        return (manifest, pngs["human"] if c.human is not None else None,
                *[pngs[f"{v}_{m}"] for v in zoo.VARIANTS for m in MAPS],
                exports.write(c, names, 0.5, "jet", arch, folder))

    a_btn.click(api_compare, [a_arch, a_source, a_shard, a_index, a_image, a_human, a_target, a_threshold,
                              a_geometry], [o_manifest, *o_images, o_bundle], api_name="compare",
                concurrency_limit=cfg.concurrency, concurrency_id="compute")

    def api_models() -> dict:
        """The architectures, where their checkpoints are, and the compute device."""
        return {"device": device_text(cfg), "default": default_arch(cfg), "downloads": cfg.download,
                "archs": {a: {"available": pair_available(a, cfg), "paper": a in zoo.PAPER_ARCHS,
                              "checkpoints": checkpoint_status(a, cfg)} for a in arch_choices()}}

    def api_classes(arch: str) -> list:
        """The class names of `arch`'s models, in index order."""
        try:
            return class_names(arch)
        except UserError as e:
            raise gr.Error(str(e)) from None

    def api_shards() -> list:
        """The shards /compare can read: [{name, label, records}]."""
        return [{"name": Path(p).name, "label": lab, "records": len(open_shard(Path(p)))}
                for lab, p in shard_choices(cfg)]

    # answered at once, never behind the computing requests in the queue
    gr.api(api_models, api_name="models", queue=False)
    gr.api(api_classes, api_name="classes", queue=False)
    gr.api(api_shards, api_name="shards", queue=False)


def launch(demo: gr.Blocks, host: str, port: int, **kwargs):
    """Serve ``demo``; with a cache age set, the folders Gradio's own sweep leaves empty are swept too."""
    if demo.delete_cache and "app_kwargs" not in kwargs:
        every, age = demo.delete_cache
        kwargs["app_kwargs"] = {"lifespan": storage.sweeping(Path(gr.utils.get_upload_folder()), every, age)}
    return demo.launch(server_name=host, server_port=port, theme=theme(), css=CSS, show_error=True,
                       max_file_size=os.environ.get("DCLSVIZ_MAX_FILE_SIZE", "60mb"), **kwargs)
