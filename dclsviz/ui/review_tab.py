"""The Review tab and its endpoints: blind A/B sessions over ``review``'s SQLite store.

The reviewer sees the image, the human map and two unnamed models' maps, "A" and "B", and never a score or
a model name until the reveal. The maps come from the one or two attribution methods the session's creator
chose (the paper's two by default); the panels are titled with the method, never with the model.

Sessions belong to people: every endpoint that reads or writes one takes the session's organiser token, invite
code or a reviewer token as ``token``, and a wrong or missing one gets the same message whether the session
exists or not. The browser keeps the tokens it was given in its own storage
(``gr.BrowserState``), so a reload resumes, and lists only the sessions those tokens open.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import gradio as gr

from .. import images, limits, methods, render, review, zoo
from ..cam import DEFAULT_THRESHOLD
from ..compare import MAP_TITLES, MAPS
from . import present
from .events import bind, gradio_error, request, title_and_image, title_text, titled_image
from .present import Exports
from .service import (AppConfig, UserError, arch_choices, default_arch, load_pair, method_names, on_gpu,
                      open_shard, resolve_shard, shard_choices, shard_label_space_matches)

SOURCES = {"shard": "Records of a shard", "examples": "The example photos", "uploads": "Photos I upload"}
SIDES = ("A", "B")
SLOTS = range(review.MAX_METHODS)  # the map panels per side; a one-method session hides the second
MAX_ITEMS = limits.MAX_REVIEW_ITEMS
VERDICT_BUTTONS = {"A": "A is more human-like", "B": "B is more human-like", "tie": "Tie", "neither": "Neither"}
PHOTO_TYPES = list(review.PHOTO_TYPES)
BROWSER_KEY = "dclsviz-review-tokens"
# Hugging Face sets this on a Space with `hf_oauth: true`; without it a LoginButton would need a local HF login.
OAUTH_ENV = "OAUTH_CLIENT_ID"


def _db(cfg: AppConfig) -> Path:
    return cfg.review_db or review.db_path()


def _user_error(error: Exception) -> UserError:
    return UserError(str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error))


def access(token, cfg: AppConfig, roles=("organiser", "reviewer")) -> review.Access:
    """What ``token`` opens, or a UserError that does not say whether the session exists."""
    try:
        return review.authorize(token, roles, _db(cfg))
    except (review.AccessDenied, limits.LimitError) as e:
        raise UserError(str(e)) from None


# --- creating and joining ----------------------------------------------------------------------------------


def make_sources(kind: str, shard: Optional[str], start, count, files, folder: Path, cfg: AppConfig):
    """The items of a new session: records of a listed shard, the example photos, or uploads into ``folder``."""
    if kind == "shard":
        path = resolve_shard(shard, cfg)
        n = len(open_shard(path))
        k = limits.whole_number(count, "number of records", 1, MAX_ITEMS)
        first = limits.whole_number(start, "first record", 0, max(n - 1, 0))
        return review.clickme_items(path, first, first + k)
    if kind == "examples":
        return review.photo_items(zoo.ASSETS / "examples")
    if kind == "uploads":
        return review.uploaded_photo_items([f if isinstance(f, str) else getattr(f, "name", f) for f in files or []],
                                           folder)
    raise UserError(f"items come from one of {', '.join(SOURCES)}, not {str(kind)[:20]!r}")


def create(name: str, kind: str, shard: Optional[str], start, count, files, arch: str, seed, geometry_name: str,
           threshold, cfg: AppConfig, hf_users="", chosen_methods=None) -> review.Created:
    """A new session; the caller hands the organiser token and invite code to the organiser, once.
    ``chosen_methods``: the maps each model shows (``method_names``; at most ``review.MAX_METHODS``)."""
    if arch not in zoo.archs():
        raise UserError(f"unknown architecture {str(arch)[:40]!r}")
    try:
        # a record's label is a class of the model only when the shard and the model share a label space
        return review.create_session_from(
            name, lambda folder: make_sources(kind, shard, start, count, files, folder, cfg),
            labels_fit=lambda sources: kind == "shard" and shard_label_space_matches(sources[0].ref, arch),
            arch=arch, seed=limits.optional_seed(seed, "seed for the sides"), geometry=geometry_name,
            threshold=float(threshold if threshold is not None else DEFAULT_THRESHOLD), hf_users=hf_users,
            methods=method_names(chosen_methods), db=_db(cfg))
    except (ValueError, OSError) as e:
        raise _user_error(e) from None


def join(code, name: str, cfg: AppConfig, profile: Optional[gr.OAuthProfile] = None):
    """(access, new reviewer token or None when ``code`` already was one); a signed-in Hugging Face user may
    give the session id instead of the invite code when the organiser listed them."""
    user = getattr(profile, "username", None) if profile is not None else None
    try:
        return review.join(code, name, hf_username=user, db=_db(cfg))
    except (review.AccessDenied, ValueError) as e:
        raise UserError(str(e)) from None


# --- judging and revealing -----------------------------------------------------------------------------------


@on_gpu(pairs=lambda acc, cfg, progress=None: [review.get_session(acc.session, _db(cfg)).arch])
def show_next(acc: review.Access, cfg: AppConfig, progress=None) -> Optional[review.Shown]:
    """The reviewer's next unjudged item with both models run (scores stored, not shown); None when done."""
    info = review.get_session(acc.session, _db(cfg))
    pair = load_pair(info.arch, cfg, progress)
    try:
        return review.show(acc.session, acc.reviewer, pair=pair, db=_db(cfg))
    except images.ImageError as e:
        raise UserError(f"cannot show the next item: {e}") from None
    except OSError:
        raise UserError("cannot show the next item: its file cannot be read") from None


def verdict(acc: review.Access, position, choice: str, note: str, cfg: AppConfig) -> review.Verdict:
    """Store the reviewer's verdict; committed before this returns."""
    try:
        return review.record_verdict(acc.session, acc.reviewer, position, choice, note or "", _db(cfg))
    except (review.AccessDenied, ValueError) as e:
        raise UserError(str(e)) from None


def reveal(acc: review.Access, cfg: AppConfig) -> tuple[dict, str]:
    """(results, CSV path): the organiser's over everyone, any time; a reviewer's own, once they finished."""
    mine = acc.reviewer if acc.role == "reviewer" else None
    try:
        return review.reveal(acc.session, mine, _db(cfg)), export(acc, cfg)
    except review.AccessDenied as e:
        raise UserError(str(e)) from None


def export(acc: review.Access, cfg: AppConfig) -> str:
    """The CSV of the verdicts ``acc`` may see (everyone's for the organiser) in a fresh download folder."""
    info = review.get_session(acc.session, _db(cfg))
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in info.name)[:60]
    path = Exports.at(cfg.export_dir).new_folder() / f"review_{safe}.csv"
    mine = acc.reviewer if acc.role == "reviewer" else None
    return str(review.export_csv(acc.session, path, mine, _db(cfg)))


def listing(tokens, cfg: AppConfig) -> list[dict]:
    """The sessions the tokens open, as the API and the tab list them."""
    out = []
    for acc, info in review.sessions_for(tokens, _db(cfg)):
        row = {"session": info.id, "name": info.name, "arch": info.arch, "methods": list(info.methods),
               "role": acc.role, "n_items": info.n_items}
        if acc.role == "reviewer":
            row["n_done"] = review.progress(info.id, acc.reviewer, _db(cfg))["n_done"]
        else:
            row.update(n_reviewers=info.n_reviewers, n_verdicts=info.n_verdicts)
        out.append(row)
    return out


def delete(acc: review.Access, cfg: AppConfig) -> None:
    """Remove the session, its verdicts and its photos (organiser only: ``acc`` must come from that token)."""
    if acc.role != "organiser":
        raise UserError("only the session's organiser can delete it")
    review.delete_session(acc.session, _db(cfg))



# --- the tab ---------------------------------------------------------------------------------------------


def _browser_secret(cfg: AppConfig) -> str:
    """The key BrowserState encrypts the held tokens with; kept beside the database so that a restart of the
    app does not make every browser forget its sessions."""
    path = _db(cfg).parent / "review_browser.key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(16))
    return path.read_text().strip()


def _held_choices(held, cfg: AppConfig) -> list[tuple[str, str]]:
    """Dropdown entries (label, token) for every held token that still opens a session; short, so that the
    dropdown shows them whole."""
    out = []
    for t in review.split_tokens(held or [])[: limits.MAX_TOKENS_PER_REQUEST]:
        try:
            acc = review.authorize(t, ("organiser", "reviewer"), _db(cfg))
            info = review.get_session(acc.session, _db(cfg))
        except (review.AccessDenied, limits.LimitError):
            continue
        if acc.role == "organiser":
            out.append((f"{info.name} · organiser · {info.n_verdicts} verdicts", t))
        else:
            done = review.progress(acc.session, acc.reviewer, _db(cfg))["n_done"]
            out.append((f"{info.name} · reviewer · {done}/{info.n_items} judged", t))
    return out


def _hold(held, *tokens) -> list[str]:
    """The held tokens with new ones added, newest last, bounded so the browser's list cannot grow forever."""
    kept = [t for t in (held or []) if isinstance(t, str) and t not in tokens]
    return (kept + [t for t in tokens if t])[-limits.MAX_TOKENS_PER_REQUEST:]


@dataclass
class ReviewTab:
    """The tab's widgets by name, with the configuration the handlers need."""

    cfg: AppConfig
    widgets: dict = field(default_factory=dict)

    def __getitem__(self, name: str):
        return self.widgets[name]

    def screen(self) -> list:
        """What showing an item changes, in ``_paint``'s order."""
        w = self.widgets
        return [w["current"], w["where"], w["image"], w["human"], *w["panels"].values(), *w["titles"].values(),
                w["note"], *w["buttons"].values(), w["held_dd"]]


def _session_widgets(tab: ReviewTab) -> None:
    w = tab.widgets
    gr.Markdown("Judge which model's maps look more like where people look. The models are shown as **A** and "
                "**B**, sides drawn at random per image; scores and names stay hidden until the reveal. Every "
                "verdict is saved at once: close the page any time and resume.")
    with gr.Accordion("Your sessions", open=True):
        w["held_dd"] = gr.Dropdown([], label="Session (only those this browser holds a token for)",
                                   elem_id="rv-existing")
        with gr.Row():
            w["open_btn"] = gr.Button("Open", elem_id="rv-resume")
            w["delete_btn"] = gr.Button("Delete (organiser)", variant="stop", size="sm", elem_id="rv-delete")
    with gr.Accordion("Join a session", open=False):
        w["code"] = gr.Textbox(label="Invite code or reviewer token", type="password", elem_id="rv-code")
        w["who"] = gr.Textbox(label="Your name", max_length=limits.MAX_NAME_CHARS, elem_id="rv-who")
        if os.environ.get(OAUTH_ENV):
            gr.Markdown("Or sign in with Hugging Face and give the session id, if the organiser listed you.")
            gr.LoginButton()
        w["join_btn"] = gr.Button("Join", elem_id="rv-join")
    with gr.Accordion("New session", open=False):
        _new_session_widgets(tab)
    with gr.Group(visible=False) as w["secrets"]:
        w["org_box"] = gr.Textbox(label="Organiser token: keep it (reveal, delete); shown once", buttons=["copy"],
                                  interactive=False, elem_id="rv-org-token")
        w["inv_box"] = gr.Textbox(label="Invite code: send it to your reviewers", buttons=["copy"],
                                  interactive=False, elem_id="rv-invite")


def _new_session_widgets(tab: ReviewTab) -> None:
    w, shards = tab.widgets, shard_choices(tab.cfg)
    w["name"] = gr.Textbox(label="Name", placeholder="e.g. pilot-01", max_length=limits.MAX_NAME_CHARS,
                           elem_id="rv-name")
    w["kind"] = gr.Radio([(v, k) for k, v in SOURCES.items()], value="shard", label="Items", elem_id="rv-kind")
    # only the widgets of the chosen kind of items show (see on_kind)
    w["shard"] = gr.Dropdown(shards, value=shards[0][1] if shards else None, label="Shard", elem_id="rv-shard")
    with gr.Row() as w["range"]:
        w["start"] = gr.Number(0, precision=0, minimum=0, label="First record")
        w["count"] = gr.Number(20, precision=0, minimum=1, maximum=MAX_ITEMS, label="Records")
    w["files"] = gr.File(file_count="multiple", file_types=PHOTO_TYPES, type="filepath", visible=False,
                         label=f"Photos (with optional <photo>.human.png maps; at most "
                               f"{limits.MAX_SESSION_PHOTOS} files)", elem_id="rv-files")
    w["arch"] = gr.Dropdown(arch_choices(), value=default_arch(tab.cfg), label="Model pair")
    w["methods"] = gr.Dropdown([(methods.choice_label(m), m) for m in methods.NAMES], value=list(MAPS),
                               multiselect=True, max_choices=review.MAX_METHODS,
                               label="Maps each model shows (one or two methods)", elem_id="rv-methods")
    w["seed"] = gr.Textbox("", label="Seed for the sides (empty: a secret random one)")
    w["hf"] = gr.Textbox("", label="Hugging Face users who may join without the code (optional)")
    w["me_too"] = gr.Checkbox(True, label="I review it too", elem_id="rv-me-too")
    w["create_btn"] = gr.Button("Create", variant="primary", elem_id="rv-create")


def _judging_widgets(tab: ReviewTab) -> None:
    w = tab.widgets
    w["where"] = gr.Markdown("Open, join or create a session.", elem_id="rv-progress")
    with gr.Row():
        with gr.Column(min_width=160):
            w["image"] = titled_image("Image", height=230, elem_id="rv-image")
        with gr.Column(min_width=160):
            w["human"] = titled_image("Human map", height=230, elem_id="rv-human")
    w["panels"], w["titles"] = {}, {}
    for side in SIDES:
        with gr.Row(equal_height=True):
            with gr.Column(scale=0, min_width=60):
                gr.Markdown(f"## {side}", elem_classes="model-head")
            for k, m in zip(SLOTS, MAPS):  # titled when a session opens, after its methods
                with gr.Column(min_width=160):
                    w["titles"][side, k], w["panels"][side, k] = title_and_image(
                        f"{side}: {MAP_TITLES[m]}", height=230, elem_id=f"rv-{side}-{k + 1}")
    w["note"] = gr.Textbox(label="Note (optional)", lines=1, max_length=limits.MAX_NOTE_CHARS, elem_id="rv-note")
    with gr.Row():
        w["buttons"] = {k: gr.Button(label, variant="primary" if k in "AB" else "secondary", interactive=False,
                                     elem_id=f"rv-{k}") for k, label in VERDICT_BUTTONS.items()}
    with gr.Row():
        w["reveal_btn"] = gr.Button("Reveal (unblinds this session)", size="sm", elem_id="rv-reveal")
        w["csv_file"] = gr.DownloadButton("Download verdicts (CSV)", visible=False, size="sm", elem_id="rv-csv")
    w["reveal_md"] = gr.Markdown(elem_id="rv-reveal-text")


def pictures(shown: review.Shown) -> list:
    """[image, human map overlay or None, then per side (A, B) one overlay per panel: the session's methods in
    order, None where a session has fewer methods than panels] as the reviewer sees them."""
    c = shown.comparison
    img = c.frame_image()
    outs = {"A": shown.a, "B": shown.b}
    hm = render.overlay(img, c.human, 0.55, "jet") if c.human is not None else None
    return [img, hm, *[render.overlay(img, outs[side].maps[c.methods[k]], 0.5, "jet") if k < len(c.methods)
                       else None for side in SIDES for k in SLOTS]]


def _panels(shown: Optional[review.Shown]) -> list:
    """The values of the image, the human map, the map panels and their titles (``ReviewTab.screen``'s order):
    each panel titled with its method, the panels a session does not use hidden; all empty without an item."""
    if shown is None:
        return [None, None, *[None] * (len(SIDES) * len(SLOTS)), *[gr.skip()] * (len(SIDES) * len(SLOTS))]
    img, hm, *maps = pictures(shown)
    names = shown.comparison.methods
    used = [k < len(names) for _ in SIDES for k in SLOTS]
    titles = [gr.update(value=title_text(f"{side}: {MAP_TITLES[names[k]]}") if k < len(names) else "",
                        visible=k < len(names)) for side in SIDES for k in SLOTS]
    return [img, hm, *[gr.update(value=m, visible=u) for m, u in zip(maps, used)], *titles]


def _paint(acc: review.Access, token: str, shown: Optional[review.Shown], held, cfg: AppConfig) -> list:
    """The screen's values (``ReviewTab.screen``'s order) for ``acc`` with ``shown`` on it, if anything."""
    n_buttons = len(VERDICT_BUTTONS)
    listing_ = gr.update(choices=_held_choices(held, cfg), value=token)
    if acc.role == "organiser":
        p = review.progress(acc.session, None, _db(cfg))
        text = (f"**{p['name']}** · organiser · {p['n_items']} items · {p['n_reviewers']} reviewers · "
                f"{p['n_verdicts']} verdicts. Reveal any time; the invite code lets reviewers join.")
        return [None, text, *_panels(None), gr.update(value=""), *[gr.update(interactive=False)] * n_buttons,
                listing_]
    p = review.progress(acc.session, acc.reviewer, _db(cfg))
    if shown is None:
        return [None, f"**{p['name']}**: all {p['n_items']} items judged. Reveal your results below.",
                *_panels(None), gr.update(value=""), *[gr.update(interactive=False)] * n_buttons, listing_]
    text = (f"**{p['name']}** · item {shown.item.position + 1} of {p['n_items']} · {p['n_done']} judged · "
            f"`{shown.item.source.public_ref}`")
    return [(token, shown.item.position), text, *_panels(shown), gr.update(value=""),
            *[gr.update(interactive=True)] * n_buttons, listing_]


def _open(token, held, cfg: AppConfig, progress=None) -> list:
    acc = access(token, cfg)
    return _paint(acc, token, None if acc.role == "organiser" else show_next(acc, cfg, progress), held, cfg)


def _organiser_of(acc: review.Access, held, cfg: AppConfig) -> review.Access:
    """The organiser's access to ``acc``'s session when this browser holds that token (the reveal then covers
    every reviewer), else ``acc``."""
    for _, t in _held_choices(held, cfg):
        if t.startswith(review.TOKEN_PREFIX["organiser"]):
            other = review.authorize(t, ("organiser",), _db(cfg))
            if other.session == acc.session:
                return other
    return acc


# --- handlers: one frozen request each ---------------------------------------------------------------------


@dataclass(frozen=True)
class CreateRequest:
    """A new review session asked for: name, items (shard records or photos), pair, methods, seed and sign-in
    users."""

    name: str
    kind: str
    shard: Optional[str]
    start: Any
    count: Any
    files: Any
    arch: str
    methods: Any
    seed: Any
    hf_users: str
    me_too: bool
    held: Any


JoinRequest = request(
    "JoinRequest", "A reviewer joining with an invite code (or resuming with their token), under a name.",
    __name__, code=str, who=str, held=Any)
SessionRequest = request(
    "SessionRequest", "Opening the session a token gives access to.",
    __name__, token=Optional[str], held=Any)
VerdictRequest = request(
    "VerdictRequest", "A verdict on the item on screen, with the reviewer's note.",
    __name__, current=Optional[tuple], note=str, held=Any)
RevealRequest = request(
    "RevealRequest", "Revealing the results of the session on screen.",
    __name__, current=Optional[tuple], token=Optional[str], held=Any)
KindRequest = request(
    "KindRequest", "A change of what a new session reviews (shard records or uploaded photos).",
    __name__, kind=str)
HeldRequest = request(
    "HeldRequest", "Only the tokens the browser holds.",
    __name__, held=Any)
def on_create(tab: ReviewTab, req: CreateRequest, progress=None) -> list:
    """A new session; the organiser (also a reviewer with "I review it too") sees its first item and the two
    secrets, once."""
    made = create(req.name, req.kind, req.shard, req.start, req.count, req.files, req.arch, req.seed, "paper",
                  DEFAULT_THRESHOLD, tab.cfg, req.hf_users, req.methods)
    mine = join(made.invite_code, "organiser", tab.cfg)[1] if req.me_too else None
    held = _hold(req.held, made.organiser_token, mine)
    shown = _open(mine or made.organiser_token, held, tab.cfg, progress)
    return [*shown, held, gr.update(visible=True), made.organiser_token, made.invite_code]


def on_join(tab: ReviewTab, req: JoinRequest, profile: Optional[gr.OAuthProfile], progress=None) -> list:
    """Join with an invite code (or resume with a reviewer token) and show the first unjudged item."""
    _, token = join(req.code, req.who, tab.cfg, profile)
    token = token or req.code.strip()
    held = _hold(req.held, token)
    return [*_open(token, held, tab.cfg, progress), held, ""]


def on_open(tab: ReviewTab, req: SessionRequest, progress=None) -> list:
    """Open a session this browser holds a token for."""
    if not req.token:
        raise UserError("choose a session (join or create one first)")
    return _open(req.token, req.held, tab.cfg, progress)


def on_delete(tab: ReviewTab, req: SessionRequest) -> list:
    """Delete the chosen session (organiser only) and forget its tokens."""
    delete(access(req.token, tab.cfg), tab.cfg)
    held = [t for _, t in _held_choices(req.held, tab.cfg)]  # the deleted session's tokens open nothing now
    return [held, gr.update(choices=_held_choices(held, tab.cfg), value=None), "The session is deleted.", None]


def on_verdict(tab: ReviewTab, choice: str, req: VerdictRequest, progress=None) -> list:
    """Store ``choice`` for the item on screen and show the next one."""
    if not req.current:
        raise UserError("no item on screen: open, join or create a session")
    acc = access(req.current[0], tab.cfg, ("reviewer",))
    verdict(acc, req.current[1], choice, req.note, tab.cfg)
    return _paint(acc, req.current[0], show_next(acc, tab.cfg, progress), req.held, tab.cfg)


def on_reveal(tab: ReviewTab, req: RevealRequest) -> list:
    """The unblinded results and the CSV. Judging on this page stops: verdicts given after seeing which model
    is which would not be blind (opening the session again resumes)."""
    token = req.current[0] if req.current else req.token
    if not token:
        raise UserError("choose a session first")
    result, csv_path = reveal(_organiser_of(access(token, tab.cfg), req.held, tab.cfg), tab.cfg)
    return [present.reveal_text(result), gr.update(value=csv_path, visible=True), None,
            *[gr.update(interactive=False)] * len(VERDICT_BUTTONS)]


def on_kind(tab: ReviewTab, req: KindRequest) -> list:
    """Show only the widgets of the chosen kind of items: shard and range, or the photo upload."""
    return [gr.update(visible=req.kind == "shard"), gr.update(visible=req.kind == "shard"),
            gr.update(visible=req.kind == "uploads")]


def on_tab(tab: ReviewTab, req: HeldRequest):
    """Sessions joined in another browser tab appear when this one is opened."""
    return gr.update(choices=_held_choices(req.held, tab.cfg))


def _join_callback(tab: ReviewTab):
    """on_join for Gradio, which hands over the signed-in Hugging Face profile by the parameter's type."""
    def on_join_event(profile: gr.OAuthProfile | None = None, progress=gr.Progress(), *values):
        try:
            return on_join(tab, JoinRequest(*values), profile, progress)
        except Exception as e:  # noqa: BLE001 - one mapping of errors for every event
            raise gradio_error(e) from None
    return on_join_event


def build(cfg: AppConfig, tab_widget: gr.Tab) -> None:
    """The Review tab's widgets and events, and the /review_* endpoints; call inside ``tab_widget``."""
    tab = ReviewTab(cfg)
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=380):
            _session_widgets(tab)
        with gr.Column(scale=5):
            _judging_widgets(tab)
    tab.widgets["current"] = gr.State(None)  # (reviewer token, position) on screen
    tab.widgets["held"] = gr.BrowserState([], storage_key=BROWSER_KEY, secret=_browser_secret(cfg))
    _wire(tab)
    tab_widget.select(bind(on_tab, HeldRequest, tab), tab["held"], tab["held_dd"], api_visibility="private",
                      queue=False)


def _wire(tab: ReviewTab) -> None:
    w, screen, held = tab.widgets, tab.screen(), tab.widgets["held"]
    private, compute = {"api_visibility": "private"}, {"api_visibility": "private", "concurrency_id": "compute"}
    create_inputs = [w[k] for k in ("name", "kind", "shard", "start", "count", "files", "arch", "methods", "seed",
                                    "hf", "me_too", "held")]
    w["create_btn"].click(bind(on_create, CreateRequest, tab, progress=True), create_inputs,
                          screen + [held, w["secrets"], w["org_box"], w["inv_box"]], **compute)
    w["join_btn"].click(_join_callback(tab), [w["code"], w["who"], held], screen + [held, w["code"]], **compute)
    w["open_btn"].click(bind(on_open, SessionRequest, tab, progress=True), [w["held_dd"], held], screen, **compute)
    w["delete_btn"].click(bind(on_delete, SessionRequest, tab), [w["held_dd"], held],
                          [held, w["held_dd"], w["where"], w["current"]], **private)
    w["kind"].change(bind(on_kind, KindRequest, tab), w["kind"], [w["shard"], w["range"], w["files"]], **private)
    for choice, button in w["buttons"].items():
        button.click(bind(on_verdict, VerdictRequest, tab, choice, progress=True), [w["current"], w["note"], held],
                     screen, **compute)
    w["reveal_btn"].click(bind(on_reveal, RevealRequest, tab), [w["current"], w["held_dd"], held],
                          [w["reveal_md"], w["csv_file"], w["current"], *w["buttons"].values()], **private)
