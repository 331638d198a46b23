"""The Review tab and its endpoints: blind A/B sessions over ``review``'s SQLite store.

The reviewer sees the image, the human map and two unnamed models' maps, "A" and "B", and never a score or
a model name until the reveal. Sessions, verdicts and the side drawn for each item live in the database
(``review``), so a session continues after a crash or restart where it stopped.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Optional

import gradio as gr

from .. import images, render, review, zoo
from ..cam import DEFAULT_THRESHOLD
from ..compare import MAP_TITLES, MAPS
from .present import Exports
from .service import (AppConfig, CheckpointProblem, UserError, arch_choices, default_arch, load_pair, on_gpu,
                      open_shard, resolve_shard, shard_choices, shard_label_space_matches)

SOURCES = {"shard": "Records of a shard", "examples": "The example photos", "uploads": "Photos I upload"}
MAX_ITEMS = 200
VERDICT_BUTTONS = {"A": "A is more human-like", "B": "B is more human-like", "tie": "Tie", "neither": "Neither"}
PHOTO_TYPES = list(review.PHOTO_TYPES)


def _db(cfg: AppConfig) -> Path:
    return cfg.review_db or review.db_path()


def session_choices(cfg: AppConfig) -> list[tuple[str, str]]:
    return [(f"{s.name} · {s.n_done}/{s.n_items} judged · {s.arch}", s.name) for s in review.sessions(_db(cfg))]


def _uploaded_photos(files, name: str, cfg: AppConfig) -> list[review.Source]:
    """Uploads copied beside the database (a session outlives Gradio's temporary files); each photo is
    checked now so that a bad file is refused before the session exists."""
    paths = [Path(f if isinstance(f, str) else getattr(f, "name", f)) for f in files or []]
    if not paths:
        raise UserError("upload the photos to review (a map named <photo>.human.png beside one is its human map)")
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    folder = _db(cfg).parent / "review_photos" / f"{''.join(c if c.isalnum() else '_' for c in name)[:40]}_{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        try:
            (images.load_map if p.name.lower().endswith(review.HUMAN_SUFFIX) else images.load_image)(str(p))
        except images.ImageError as e:
            raise UserError(f"{p.name}: {e}") from None
        shutil.copyfile(p, folder / p.name)
    return review.photo_items(folder)


def make_sources(kind: str, shard: Optional[str], start, count, files, name: str, cfg: AppConfig):
    if kind == "shard":
        path = resolve_shard(shard, cfg)
        n = len(open_shard(path))
        try:
            first, k = int(start), int(count)
        except (TypeError, ValueError):
            raise UserError("the first record and the number of records must be whole numbers") from None
        if not 0 <= first < n:
            raise UserError(f"the shard has {n} records: start from 0 to {n - 1}")
        return review.clickme_items(path, first, first + max(1, min(k, MAX_ITEMS)))
    if kind == "examples":
        return review.photo_items(zoo.ASSETS / "examples")
    if kind == "uploads":
        return _uploaded_photos(files, name, cfg)
    raise UserError(f"items come from one of {', '.join(SOURCES)}, not {kind!r}")


def create(name: str, kind: str, shard: Optional[str], start, count, files, arch: str, seed, geometry_name: str,
           threshold, cfg: AppConfig) -> review.SessionInfo:
    name = (name or "").strip()
    if not name:
        raise UserError("give the session a name (e.g. your initials and a number)")
    if name in {s.name for s in review.sessions(_db(cfg))}:
        raise UserError(f"a session named {name!r} exists: resume it, or choose another name")
    if arch not in zoo.archs():
        raise UserError(f"unknown architecture {arch!r}")
    try:
        sources = make_sources(kind, shard, start, count, files, name, cfg)
        # a record's label is a class of the model only when the shard and the model share a label space
        matches = kind == "shard" and shard_label_space_matches(sources[0].ref, arch)
        seed = int(seed) if seed not in (None, "") else int.from_bytes(hashlib.sha256(name.encode()).digest()[:4],
                                                                      "big")
        return review.create_session(name, sources, arch=arch, seed=seed, geometry=geometry_name,
                                     threshold=float(threshold if threshold is not None else DEFAULT_THRESHOLD),
                                     target="label" if matches else "pred", db=_db(cfg))
    except ValueError as e:
        raise UserError(str(e)) from None


@on_gpu(pairs=lambda name, cfg, progress=None: [review.get_session(name, _db(cfg)).arch])
def show_next(name: str, cfg: AppConfig, progress=None) -> Optional[review.Shown]:
    """The next unjudged item with both models run (their scores stored, not shown); None when done."""
    try:
        info = review.get_session(name, _db(cfg))
    except KeyError as e:
        raise UserError(e.args[0]) from None
    pair = load_pair(info.arch, cfg, progress)
    try:
        return review.show(name, pair=pair, db=_db(cfg))
    except (images.ImageError, OSError, ValueError) as e:
        raise UserError(f"cannot show the next item of {name!r}: {e}") from None


def verdict(name: str, position, choice: str, note: str, cfg: AppConfig) -> review.Item:
    try:
        return review.record_verdict(name, int(position), choice, note or "", _db(cfg))
    except (KeyError, ValueError, TypeError) as e:
        raise UserError(str(e.args[0]) if e.args else str(e)) from None


def reveal_text(r: dict) -> str:
    n_ab = r["dcls_preferred"] + r["baseline_preferred"]
    pref = r["preference"]
    lines = [f"### Reveal of {r['session']!r}: {r['n_verdicts']} verdicts",
             f"- **DCLS preferred** {r['dcls_preferred']} of {n_ab} A/B verdicts"
             + (f" ({r['dcls_preferred'] / n_ab:.0%}; binomial p {pref['p']:.3g})" if n_ab and pref.get("p")
                is not None else ""),
             f"- baseline preferred {r['baseline_preferred']} · tie {r['ties']} · neither {r['neither']}"]
    for m, a in r["agreement"].items():
        rate = f"{a['rate']:.0%}" if a["rate"] is not None else "—"
        lines.append(f"- agreed with the higher {MAP_TITLES[m]} ρ: **{a['agreed']} of {a['n']}** ({rate})"
                     + (f"; {a['left_out']} left out (a ρ undefined or equal)" if a["left_out"] else ""))
    lines.append(f"- DCLS was shown as A in {r['dcls_was_a']} of {r['n_verdicts']} judged items")
    return "\n".join(lines)


def export(name: str, cfg: AppConfig) -> str:
    folder = Exports(cfg.export_dir).new_folder()
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:60]
    return str(review.export_csv(name, folder / f"review_{safe}.csv", _db(cfg)))


# --- the tab ---------------------------------------------------------------------------------------------


def build(cfg: AppConfig, tab: gr.Tab) -> None:
    """The Review tab's widgets and handlers, and the /review_* endpoints; call inside ``tab``."""
    shards = shard_choices(cfg)
    current = gr.State(None)  # (session name, position) on screen
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            gr.Markdown("Judge which model's maps look more like where people look. The models are shown as "
                        "**A** and **B**, sides drawn at random per image; scores and names stay hidden until "
                        "the reveal. Every verdict is saved at once: close the page any time and resume.")
            with gr.Accordion("Resume a session", open=True):
                existing = gr.Dropdown(session_choices(cfg), label="Session", elem_id="rv-existing")
                resume_btn = gr.Button("Resume", elem_id="rv-resume")
            with gr.Accordion("New session", open=False):
                name = gr.Textbox(label="Name", placeholder="e.g. jd-01", elem_id="rv-name")
                kind = gr.Radio([(v, k) for k, v in SOURCES.items()], value="shard", label="Items")
                shard = gr.Dropdown(shards, value=shards[0][1] if shards else None, label="Shard")
                with gr.Row():
                    start = gr.Number(0, precision=0, minimum=0, label="First record")
                    count = gr.Number(20, precision=0, minimum=1, maximum=MAX_ITEMS, label="Records")
                files = gr.File(file_count="multiple", file_types=PHOTO_TYPES, type="filepath",
                                label="Photos (with optional <photo>.human.png maps)")
                arch = gr.Dropdown(arch_choices(), value=default_arch(cfg), label="Model pair")
                seed = gr.Textbox("", label="Seed for the sides (empty: from the name)")
                create_btn = gr.Button("Create and start", variant="primary", elem_id="rv-create")
        with gr.Column(scale=3):
            where = gr.Markdown("Resume or create a session.", elem_id="rv-progress")
            with gr.Row():
                image = gr.Image(label="Image", interactive=False, format="png", height=230, elem_id="rv-image")
                human = gr.Image(label="Human map", interactive=False, format="png", height=230, elem_id="rv-human")
            panels = {}
            for side in ("A", "B"):
                with gr.Row(equal_height=True):
                    with gr.Column(scale=0, min_width=60):
                        gr.Markdown(f"## {side}", elem_classes="model-head")
                    for m in MAPS:
                        panels[side, m] = gr.Image(label=f"{side}: {MAP_TITLES[m]}", interactive=False,
                                                   format="png", height=230, elem_id=f"rv-{side}-{m}")
            note = gr.Textbox(label="Note (optional)", lines=1, elem_id="rv-note")
            with gr.Row():
                buttons = {k: gr.Button(label, variant="primary" if k in "AB" else "secondary",
                                        interactive=False, elem_id=f"rv-{k}") for k, label in VERDICT_BUTTONS.items()}
            with gr.Row():
                reveal_btn = gr.Button("Reveal (unblinds this session)", size="sm", elem_id="rv-reveal")
                csv_file = gr.DownloadButton("Download verdicts (CSV)", visible=False, size="sm", elem_id="rv-csv")
            reveal_md = gr.Markdown(elem_id="rv-reveal-text")

    screen = [current, where, image, human, *panels.values(), note, *buttons.values(), existing]

    def paint(name_: str, shown: Optional[review.Shown]):
        p = review.progress(name_, _db(cfg))
        listing = gr.update(choices=session_choices(cfg), value=name_)
        if shown is None:
            return [None, f"**{name_}**: all {p['n_items']} items judged. Reveal the results below.",
                    None, None, *[None] * len(panels), gr.update(value=""),
                    *[gr.update(interactive=False)] * len(buttons), listing]
        c = shown.comparison
        img = c.frame_image()
        outs = {"A": shown.a, "B": shown.b}
        pics = [render.overlay(img, outs[side].maps[m], 0.5, "jet") for side, m in panels]
        hm = render.overlay(img, c.human, 0.55, "jet") if c.human is not None else None
        text = (f"**{name_}** · item {shown.item.position + 1} of {p['n_items']} · {p['n_done']} judged · "
                f"`{Path(c.sample.name.rsplit(':', 1)[0]).name}`" + (":" + c.sample.name.rsplit(":", 1)[1]
                                                                      if shown.item.source.kind == "clickme" else ""))
        return [(name_, shown.item.position), text, img, hm, *pics, gr.update(value=""),
                *[gr.update(interactive=True)] * len(buttons), listing]

    def fail(e: Exception):
        if isinstance(e, CheckpointProblem):
            return gr.Error(f"The checkpoints are not available. {e}")
        return gr.Error(str(e))

    def on_resume(name_, progress=gr.Progress()):
        if not name_:
            raise gr.Error("choose a session to resume")
        try:
            return paint(name_, show_next(name_, cfg, progress))
        except UserError as e:
            raise fail(e) from None

    def on_create(nm, kd, sh, st, ct, fs, ar, sd, progress=gr.Progress()):
        try:
            info = create(nm, kd, sh, st, ct, fs, ar, sd, "paper", DEFAULT_THRESHOLD, cfg)
            return paint(info.name, show_next(info.name, cfg, progress))
        except UserError as e:
            raise fail(e) from None

    def on_verdict(choice):
        def handler(state, note_, progress=gr.Progress()):
            if not state:
                raise gr.Error("no item on screen: resume or create a session")
            try:
                verdict(state[0], state[1], choice, note_, cfg)
                return paint(state[0], show_next(state[0], cfg, progress))
            except UserError as e:
                raise fail(e) from None
        return handler

    def on_reveal(state, name_):
        session = state[0] if state else name_
        if not session:
            raise gr.Error("choose a session first")
        try:
            r = review.reveal(session, _db(cfg))
        except KeyError as e:
            raise gr.Error(e.args[0]) from None
        return reveal_text(r), gr.update(value=export(session, cfg), visible=True)

    resume_btn.click(on_resume, existing, screen, api_visibility="private", concurrency_id="compute")
    create_btn.click(on_create, [name, kind, shard, start, count, files, arch, seed], screen,
                     api_visibility="private", concurrency_id="compute")
    for k, b in buttons.items():
        b.click(on_verdict(k), [current, note], screen, api_visibility="private", concurrency_id="compute")
    reveal_btn.click(on_reveal, [current, existing], [reveal_md, csv_file], api_visibility="private")
    # sessions made elsewhere (another browser, the API) appear when the tab is opened
    tab.select(lambda: gr.update(choices=session_choices(cfg)), None, existing, api_visibility="private",
               queue=False)
    _api(cfg)


def _api(cfg: AppConfig) -> None:
    def review_sessions() -> list:
        """Every review session: name, arch, items, verdicts so far."""
        return [{"name": s.name, "arch": s.arch, "n_items": s.n_items, "n_done": s.n_done}
                for s in review.sessions(_db(cfg))]

    def review_create(name: str, shard: str, start: int, count: int, arch: str, seed: str) -> dict:
        """A new session over records start..start+count of a listed shard ('' = the demo shard, 'examples' =
        the example photos); returns its progress."""
        try:
            kind = "examples" if shard == "examples" else "shard"
            create(name, kind, shard, start, count, None, arch, seed, "paper", DEFAULT_THRESHOLD, cfg)
            return review.progress(name, _db(cfg))
        except UserError as e:
            raise gr.Error(str(e)) from None

    def review_next(session: str) -> dict:
        """Runs both models on the next unjudged item: its position and what it is, never which side is which
        model. {"finished": true} when every item has a verdict."""
        try:
            shown = show_next(session, cfg)
        except UserError as e:
            raise gr.Error(str(e)) from None
        if shown is None:
            return {"session": session, "finished": True, **review.progress(session, _db(cfg))}
        return {"session": session, "finished": False, "position": shown.item.position,
                "kind": shown.item.source.kind, "sample": Path(shown.comparison.sample.name).name,
                "n_items": review.progress(session, _db(cfg))["n_items"]}

    def review_verdict(session: str, position: int, verdict_: str, note: str) -> dict:
        """Stores the verdict (A, B, tie or neither) on a shown item, committed before this returns."""
        try:
            verdict(session, position, verdict_, note, cfg)
            return review.progress(session, _db(cfg))
        except UserError as e:
            raise gr.Error(str(e)) from None

    gr.api(review_sessions, api_name="review_sessions")
    gr.api(review_create, api_name="review_create")
    gr.api(review_next, api_name="review_next", concurrency_id="compute")
    gr.api(review_verdict, api_name="review_verdict")

    def review_reveal(session: str):
        """The unblinded results of a session and the CSV of every verdict with its scores."""
        try:
            return review.reveal(session, _db(cfg)), export(session, cfg)
        except KeyError as e:
            raise gr.Error(e.args[0]) from None

    with gr.Column(visible=False):
        s_in = gr.Textbox(label="session")
        r_out, f_out = gr.JSON(label="reveal"), gr.File(label="csv")
        b = gr.Button("reveal")
    b.click(review_reveal, s_in, [r_out, f_out], api_name="review_reveal")
