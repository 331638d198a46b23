"""The Review tab and its endpoints: blind A/B sessions over ``review``'s SQLite store.

The reviewer sees the image, the human map and two unnamed models' maps, "A" and "B", and never a score or
a model name until the reveal. Sessions belong to people: every endpoint that reads or writes one takes the
session's organiser token, invite code or a reviewer token as ``token``, and a wrong or missing one gets the
same message whether the session exists or not. The browser keeps the tokens it was given in its own storage
(``gr.BrowserState``), so a reload resumes, and lists only the sessions those tokens open.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Optional

import gradio as gr

from .. import images, limits, render, review, zoo
from ..cam import DEFAULT_THRESHOLD
from ..compare import MAP_TITLES, MAPS
from .present import Exports
from .service import (AppConfig, CheckpointProblem, UserError, arch_choices, default_arch, load_pair, on_gpu,
                      open_shard, resolve_shard, shard_choices, shard_label_space_matches)

SOURCES = {"shard": "Records of a shard", "examples": "The example photos", "uploads": "Photos I upload"}
MAX_ITEMS = limits.MAX_REVIEW_ITEMS
VERDICT_BUTTONS = {"A": "A is more human-like", "B": "B is more human-like", "tie": "Tie", "neither": "Neither"}
PHOTO_TYPES = list(review.PHOTO_TYPES)
BROWSER_KEY = "dclsviz-review-tokens"
# Hugging Face sets this on a Space with `hf_oauth: true`; without it a LoginButton would need a local HF login.
OAUTH_ENV = "OAUTH_CLIENT_ID"


def _db(cfg: AppConfig) -> Path:
    return cfg.review_db or review.db_path()


def _user_error(e: Exception) -> UserError:
    return UserError(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))


def access(token, cfg: AppConfig, roles=("organiser", "reviewer")) -> review.Access:
    """What ``token`` opens, or a UserError that does not say whether the session exists."""
    try:
        return review.authorize(token, roles, _db(cfg))
    except (review.AccessDenied, limits.LimitError) as e:
        raise UserError(str(e)) from None


# --- creating and joining ----------------------------------------------------------------------------------


def _upload_paths(files) -> list[Path]:
    paths = [Path(f if isinstance(f, str) else getattr(f, "name", f)) for f in files or []]
    if not paths:
        raise UserError("upload the photos to review (a map named <photo>.human.png beside one is its human map)")
    if len(paths) > limits.MAX_SESSION_PHOTOS:
        raise UserError(f"{len(paths)} files uploaded; a session takes at most {limits.MAX_SESSION_PHOTOS}")
    total = sum(p.stat().st_size for p in paths)
    if total > limits.MAX_SESSION_UPLOAD_BYTES:
        raise UserError(f"the uploads are {total / 2**20:,.0f} MB together; a session takes at most "
                        f"{limits.MAX_SESSION_UPLOAD_BYTES / 2**20:,.0f} MB")
    return paths


def _uploaded_photos(files, folder: Path) -> list[review.Source]:
    """Uploads copied into the session's own folder (a session outlives Gradio's temporary files); each photo
    is checked before the session exists, so a bad file is refused with nothing left behind."""
    paths = _upload_paths(files)
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        try:
            (images.load_map if p.name.lower().endswith(review.HUMAN_SUFFIX) else images.load_image)(str(p))
        except images.ImageError as e:
            raise UserError(f"{p.name}: {e}") from None
        shutil.copyfile(p, folder / p.name)
    return review.photo_items(folder)


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
        return _uploaded_photos(files, folder)
    raise UserError(f"items come from one of {', '.join(SOURCES)}, not {str(kind)[:20]!r}")


def create(name: str, kind: str, shard: Optional[str], start, count, files, arch: str, seed, geometry_name: str,
           threshold, cfg: AppConfig, hf_users="") -> review.Created:
    """A new session; the caller hands the organiser token and invite code to the organiser, once."""
    sid = review.new_session_id()
    folder = review.photo_dir(sid, _db(cfg))
    try:
        name = limits.text(name, "session name", limits.MAX_NAME_CHARS, required=True)
        seed = limits.optional_seed(seed, "seed for the sides")
        if arch not in zoo.archs():
            raise UserError(f"unknown architecture {str(arch)[:40]!r}")
        sources = make_sources(kind, shard, start, count, files, folder, cfg)
        # a record's label is a class of the model only when the shard and the model share a label space
        matches = kind == "shard" and shard_label_space_matches(sources[0].ref, arch)
        return review.create_session(name, sources, arch=arch, seed=seed, geometry=geometry_name,
                                     threshold=float(threshold if threshold is not None else DEFAULT_THRESHOLD),
                                     target="label" if matches else "pred", hf_users=hf_users, session_id=sid,
                                     db=_db(cfg))
    except (UserError, ValueError, OSError) as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise e if isinstance(e, UserError) else _user_error(e) from None


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


def _pct(k, n) -> str:
    return f"{k / n:.0%}" if n else "—"


def _summary_lines(r: dict) -> list[str]:
    pref, n_ab = r["preference"], r["dcls_preferred"] + r["baseline_preferred"]
    ci = (f"; 95 % CI {pref['ci'][0]:.0%}–{pref['ci'][1]:.0%} (Wilson); binomial p {pref['p']:.3g}"
          if pref.get("ci") else "")
    lines = [f"- **DCLS preferred** {r['dcls_preferred']} of {n_ab} A/B verdicts ({_pct(r['dcls_preferred'], n_ab)}"
             f"{ci})", f"- baseline preferred {r['baseline_preferred']} · tie {r['ties']} · neither {r['neither']}"]
    for m, a in r["agreement"].items():
        lines.append(f"- agreed with the higher {MAP_TITLES[m]} ρ: **{a['agreed']} of {a['n']}** "
                     f"({_pct(a['agreed'], a['n'])})"
                     + (f"; {a['left_out']} left out (a ρ undefined or equal)" if a["left_out"] else ""))
    lines.append(f"- DCLS was shown as A in {r['dcls_was_a']} of {r['n_verdicts']} judged items")
    return lines


def reveal_text(r: dict) -> str:
    """The reveal as Markdown: pooled and per reviewer for the organiser, one's own for a reviewer."""
    if "reviewers" not in r:
        return "\n".join([f"### Your results in {r['name']!r}: {r['n_verdicts']} verdicts", *_summary_lines(r)])
    lines = [f"### Reveal of {r['name']!r}: {r['n_verdicts']} verdicts from {r['n_reviewers']} reviewers",
             "**Pooled**", *_summary_lines(r)]
    k = r["inter_rater"]
    if k["kappa"] is not None:
        lines.append(f"- **Fleiss' κ {k['kappa']:.3f}** between {k['n_raters']} reviewers over the {k['n_items']} "
                     f"items all of them judged (P̄ {k['p_bar']:.3f}, P̄e {k['p_e']:.3f})")
    else:
        lines.append(f"- Fleiss' κ: undefined ({k['n_raters']} reviewers with verdicts, {k['n_items']} items "
                     "judged by all)")
    for per in r["reviewers"]:
        lines += ["", f"**{per['name']}** ({per['n_verdicts']} verdicts)", *_summary_lines(per)]
    return "\n".join(lines)


def listing(tokens, cfg: AppConfig) -> list[dict]:
    """The sessions the tokens open, as the API and the tab list them."""
    out = []
    for acc, info in review.sessions_for(tokens, _db(cfg)):
        row = {"session": info.id, "name": info.name, "arch": info.arch, "role": acc.role, "n_items": info.n_items}
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
    """Dropdown entries (label, token) for every held token that still opens a session."""
    out = []
    for t in review.split_tokens(held or [])[: limits.MAX_TOKENS_PER_REQUEST]:
        try:
            acc = review.authorize(t, ("organiser", "reviewer"), _db(cfg))
            info = review.get_session(acc.session, _db(cfg))
        except (review.AccessDenied, limits.LimitError):
            continue
        if acc.role == "organiser":
            out.append((f"{info.name} · organiser · {info.n_reviewers} reviewers · {info.n_verdicts} verdicts", t))
        else:
            done = review.progress(acc.session, acc.reviewer, _db(cfg))["n_done"]
            out.append((f"{info.name} · reviewer · {done}/{info.n_items} judged · {info.arch}", t))
    return out


def _hold(held, *tokens) -> list[str]:
    """The held tokens with new ones added, newest last, bounded so the browser's list cannot grow forever."""
    kept = [t for t in (held or []) if isinstance(t, str) and t not in tokens]
    return (kept + [t for t in tokens if t])[-limits.MAX_TOKENS_PER_REQUEST:]


def _widgets(cfg: AppConfig) -> dict:
    w, shards = {}, shard_choices(cfg)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=300):
            gr.Markdown("Judge which model's maps look more like where people look. The models are shown as "
                        "**A** and **B**, sides drawn at random per image; scores and names stay hidden until "
                        "the reveal. Every verdict is saved at once: close the page any time and resume.")
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
                w["name"] = gr.Textbox(label="Name", placeholder="e.g. pilot-01", max_length=limits.MAX_NAME_CHARS,
                                       elem_id="rv-name")
                w["kind"] = gr.Radio([(v, k) for k, v in SOURCES.items()], value="shard", label="Items")
                w["shard"] = gr.Dropdown(shards, value=shards[0][1] if shards else None, label="Shard")
                with gr.Row():
                    w["start"] = gr.Number(0, precision=0, minimum=0, label="First record")
                    w["count"] = gr.Number(20, precision=0, minimum=1, maximum=MAX_ITEMS, label="Records")
                w["files"] = gr.File(file_count="multiple", file_types=PHOTO_TYPES, type="filepath",
                                     label=f"Photos (with optional <photo>.human.png maps; at most "
                                           f"{limits.MAX_SESSION_PHOTOS} files)")
                w["arch"] = gr.Dropdown(arch_choices(), value=default_arch(cfg), label="Model pair")
                w["seed"] = gr.Textbox("", label="Seed for the sides (empty: a secret random one)")
                w["hf"] = gr.Textbox("", label="Hugging Face users who may join without the code (optional)")
                w["me_too"] = gr.Checkbox(True, label="I review it too", elem_id="rv-me-too")
                w["create_btn"] = gr.Button("Create", variant="primary", elem_id="rv-create")
            with gr.Group(visible=False) as w["secrets"]:
                w["org_box"] = gr.Textbox(label="Organiser token: keep it (reveal, delete); shown once",
                                          buttons=["copy"], interactive=False, elem_id="rv-org-token")
                w["inv_box"] = gr.Textbox(label="Invite code: send it to your reviewers", buttons=["copy"],
                                          interactive=False, elem_id="rv-invite")
        with gr.Column(scale=3):
            _judging_widgets(w)
    return w


def _judging_widgets(w: dict) -> None:
    w["where"] = gr.Markdown("Open, join or create a session.", elem_id="rv-progress")
    with gr.Row():
        w["image"] = gr.Image(label="Image", interactive=False, format="png", height=230, elem_id="rv-image")
        w["human"] = gr.Image(label="Human map", interactive=False, format="png", height=230, elem_id="rv-human")
    w["panels"] = {}
    for side in ("A", "B"):
        with gr.Row(equal_height=True):
            with gr.Column(scale=0, min_width=60):
                gr.Markdown(f"## {side}", elem_classes="model-head")
            for m in MAPS:
                w["panels"][side, m] = gr.Image(label=f"{side}: {MAP_TITLES[m]}", interactive=False, format="png",
                                                height=230, elem_id=f"rv-{side}-{m}")
    w["note"] = gr.Textbox(label="Note (optional)", lines=1, max_length=limits.MAX_NOTE_CHARS, elem_id="rv-note")
    with gr.Row():
        w["buttons"] = {k: gr.Button(label, variant="primary" if k in "AB" else "secondary", interactive=False,
                                     elem_id=f"rv-{k}") for k, label in VERDICT_BUTTONS.items()}
    with gr.Row():
        w["reveal_btn"] = gr.Button("Reveal (unblinds this session)", size="sm", elem_id="rv-reveal")
        w["csv_file"] = gr.DownloadButton("Download verdicts (CSV)", visible=False, size="sm", elem_id="rv-csv")
    w["reveal_md"] = gr.Markdown(elem_id="rv-reveal-text")


def pictures(shown: review.Shown) -> list:
    """[image, human map overlay or None, A and B overlays per map] as the reviewer sees them."""
    c = shown.comparison
    img = c.frame_image()
    outs = {"A": shown.a, "B": shown.b}
    hm = render.overlay(img, c.human, 0.55, "jet") if c.human is not None else None
    return [img, hm, *[render.overlay(img, outs[side].maps[m], 0.5, "jet") for side in ("A", "B") for m in MAPS]]


def _paint(acc: review.Access, token: str, shown: Optional[review.Shown], held, cfg: AppConfig) -> list:
    n_buttons = len(VERDICT_BUTTONS)
    listing_ = gr.update(choices=_held_choices(held, cfg), value=token)
    blank = [None] * (2 + 2 * len(MAPS))
    if acc.role == "organiser":
        p = review.progress(acc.session, None, _db(cfg))
        text = (f"**{p['name']}** · organiser · {p['n_items']} items · {p['n_reviewers']} reviewers · "
                f"{p['n_verdicts']} verdicts. Reveal any time; the invite code lets reviewers join.")
        return [None, text, *blank, gr.update(value=""), *[gr.update(interactive=False)] * n_buttons, listing_]
    p = review.progress(acc.session, acc.reviewer, _db(cfg))
    if shown is None:
        return [None, f"**{p['name']}**: all {p['n_items']} items judged. Reveal your results below.", *blank,
                gr.update(value=""), *[gr.update(interactive=False)] * n_buttons, listing_]
    text = (f"**{p['name']}** · item {shown.item.position + 1} of {p['n_items']} · {p['n_done']} judged · "
            f"`{shown.item.source.public_ref}`")
    return [(token, shown.item.position), text, *pictures(shown), gr.update(value=""),
            *[gr.update(interactive=True)] * n_buttons, listing_]


def _fail(e: Exception) -> gr.Error:
    if isinstance(e, CheckpointProblem):
        return gr.Error(f"The checkpoints are not available. {e}")
    return gr.Error(str(e))


def build(cfg: AppConfig, tab: gr.Tab) -> None:
    """The Review tab's widgets and handlers, and the /review_* endpoints; call inside ``tab``."""
    w = _widgets(cfg)
    w["current"] = gr.State(None)  # (reviewer token, position) on screen
    w["held"] = gr.BrowserState([], storage_key=BROWSER_KEY, secret=_browser_secret(cfg))
    _wire_session_handlers(cfg, w)
    _wire_judging_handlers(cfg, w)
    # sessions joined in another tab appear when this one is opened
    tab.select(lambda held: gr.update(choices=_held_choices(held, cfg)), w["held"], w["held_dd"],
               api_visibility="private", queue=False)
    _api(cfg)


def _screen(w: dict) -> list:
    return [w["current"], w["where"], w["image"], w["human"], *w["panels"].values(), w["note"],
            *w["buttons"].values(), w["held_dd"]]


def _open(token, held, cfg: AppConfig, progress=None) -> list:
    acc = access(token, cfg)
    return _paint(acc, token, None if acc.role == "organiser" else show_next(acc, cfg, progress), held, cfg)


def _wire_session_handlers(cfg: AppConfig, w: dict) -> None:
    screen, held = _screen(w), w["held"]

    def on_create(nm, kd, sh, st, ct, fs, ar, sd, hf, me_too, held_, progress=gr.Progress()):
        try:
            made = create(nm, kd, sh, st, ct, fs, ar, sd, "paper", DEFAULT_THRESHOLD, cfg, hf)
            mine = join(made.invite_code, "organiser", cfg)[1] if me_too else None
            held_ = _hold(held_, made.organiser_token, mine)
            shown = _open(mine or made.organiser_token, held_, cfg, progress)
            return [*shown, held_, gr.update(visible=True), made.organiser_token, made.invite_code]
        except UserError as e:
            raise _fail(e) from None

    def on_join(code, who, held_, profile: gr.OAuthProfile | None, progress=gr.Progress()):
        try:
            acc, token = join(code, who, cfg, profile)
            token = token or code.strip()
            held_ = _hold(held_, token)
            return [*_open(token, held_, cfg, progress), held_, ""]
        except UserError as e:
            raise _fail(e) from None

    def on_open(token, held_, progress=gr.Progress()):
        if not token:
            raise gr.Error("choose a session (join or create one first)")
        try:
            return _open(token, held_, cfg, progress)
        except UserError as e:
            raise _fail(e) from None

    def on_delete(token, held_):
        try:
            delete(access(token, cfg), cfg)
        except UserError as e:
            raise _fail(e) from None
        held_ = [t for _, t in _held_choices(held_, cfg)]  # the deleted session's tokens open nothing now
        return held_, gr.update(choices=_held_choices(held_, cfg), value=None), "The session is deleted.", None

    w["create_btn"].click(on_create, [w[k] for k in ("name", "kind", "shard", "start", "count", "files", "arch",
                                                     "seed", "hf", "me_too")] + [held],
                          screen + [held, w["secrets"], w["org_box"], w["inv_box"]], api_visibility="private",
                          concurrency_id="compute")
    w["join_btn"].click(on_join, [w["code"], w["who"], held], screen + [held, w["code"]], api_visibility="private",
                        concurrency_id="compute")
    w["open_btn"].click(on_open, [w["held_dd"], held], screen, api_visibility="private", concurrency_id="compute")
    w["delete_btn"].click(on_delete, [w["held_dd"], held], [held, w["held_dd"], w["where"], w["current"]],
                          api_visibility="private")


def _organiser_of(acc: review.Access, held, cfg: AppConfig) -> review.Access:
    """The organiser's access to ``acc``'s session when this browser holds that token (the reveal then covers
    every reviewer), else ``acc``."""
    for _, t in _held_choices(held, cfg):
        if t.startswith(review.TOKEN_PREFIX["organiser"]):
            other = review.authorize(t, ("organiser",), _db(cfg))
            if other.session == acc.session:
                return other
    return acc


def _wire_judging_handlers(cfg: AppConfig, w: dict) -> None:
    screen, held = _screen(w), w["held"]

    def on_verdict(choice):
        def handler(state, note_, held_, progress=gr.Progress()):
            if not state:
                raise gr.Error("no item on screen: open, join or create a session")
            try:
                acc = access(state[0], cfg, ("reviewer",))
                verdict(acc, state[1], choice, note_, cfg)
                return _paint(acc, state[0], show_next(acc, cfg, progress), held_, cfg)
            except UserError as e:
                raise _fail(e) from None
        return handler

    def on_reveal(state, token, held_):
        token = state[0] if state else token
        if not token:
            raise gr.Error("choose a session first")
        try:
            acc = _organiser_of(access(token, cfg), held_, cfg)
            result, csv_path = reveal(acc, cfg)
        except UserError as e:
            raise _fail(e) from None
        return reveal_text(result), gr.update(value=csv_path, visible=True)

    for k, b in w["buttons"].items():
        b.click(on_verdict(k), [w["current"], w["note"], held], screen, api_visibility="private",
                concurrency_id="compute")
    w["reveal_btn"].click(on_reveal, [w["current"], w["held_dd"], held], [w["reveal_md"], w["csv_file"]],
                          api_visibility="private")


# --- the endpoints -----------------------------------------------------------------------------------------


def _api_errors(fn):
    """UserError and limit breaches become the client's error message; the server carries on."""
    import functools

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (UserError, review.AccessDenied, ValueError) as e:
            raise _fail(e) from None
    return wrapped


def _api(cfg: AppConfig) -> None:
    @_api_errors
    def review_sessions(tokens: str) -> list:
        """The sessions the given tokens open (comma- or newline-separated): id, name, arch, your role, items,
        and your verdicts so far (a reviewer) or everyone's (the organiser). Other sessions are never listed."""
        return listing(tokens, cfg)

    @_api_errors
    def review_create(name: str, shard: str, start: int, count: int, arch: str, seed: str, hf_users: str = "") -> dict:
        """A new session over records start..start+count of a listed shard ('' = the demo shard, 'examples' =
        the example photos). Returns its id, the organiser token and the reviewer invite code: keep them, they
        are shown only now. ``seed`` '' draws the sides from a secret random seed; ``hf_users``: Hugging Face
        usernames who may join without the code."""
        kind = "examples" if shard == "examples" else "shard"
        made = create(name, kind, shard, start, count, None, arch, seed, "paper", DEFAULT_THRESHOLD, cfg, hf_users)
        return {"session": made.info.id, "name": made.info.name, "n_items": made.info.n_items,
                "organiser_token": made.organiser_token, "invite_code": made.invite_code}

    @_api_errors
    def review_join(token: str, name: str) -> dict:
        """Join with the invite code as reviewer ``name``: your own reviewer token (keep it) and progress.
        Giving a reviewer token instead resumes as that reviewer."""
        acc, mine = join(token, name, cfg)
        return {"reviewer_token": mine or token.strip(), "reviewer": acc.reviewer,
                **review.progress(acc.session, acc.reviewer, _db(cfg))}

    @_api_errors
    def review_verdict(token: str, position: int, verdict_: str, note: str) -> dict:
        """Stores your verdict (A, B, tie or neither) on a shown item, committed before this returns."""
        acc = access(token, cfg, ("reviewer",))
        verdict(acc, position, verdict_, note, cfg)
        return review.progress(acc.session, acc.reviewer, _db(cfg))

    @_api_errors
    def review_delete(token: str) -> dict:
        """Deletes the session of this organiser token: its verdicts, reviewers, tokens and uploaded photos."""
        acc = access(token, cfg, ("organiser",))
        delete(acc, cfg)
        return {"session": acc.session, "deleted": True}

    gr.api(review_sessions, api_name="review_sessions")
    gr.api(review_create, api_name="review_create")
    gr.api(review_join, api_name="review_join")
    gr.api(review_verdict, api_name="review_verdict")
    gr.api(review_delete, api_name="review_delete")
    _api_with_files(cfg)


def _api_with_files(cfg: AppConfig) -> None:
    """/review_next and /review_reveal return images and a file, so they are events of hidden components."""

    @_api_errors
    def review_next(token: str):
        """Runs both models on your next unjudged item: its position and what it is, never which side is which
        model, with the image, the human map and the A and B maps; {"finished": true} when you are done."""
        acc = access(token, cfg, ("reviewer",))
        shown = show_next(acc, cfg)
        p = review.progress(acc.session, acc.reviewer, _db(cfg))
        if shown is None:
            return {**p, "finished": True}, *[None] * (2 + 2 * len(MAPS))
        return ({**p, "finished": False, "position": shown.item.position, "kind": shown.item.source.kind,
                 "sample": shown.item.source.public_ref}, *pictures(shown))

    @_api_errors
    def review_reveal(token: str):
        """The unblinded results and the CSV: everyone's for the organiser token (any time), your own for a
        reviewer token once you have judged every item."""
        return reveal(access(token, cfg), cfg)

    with gr.Column(visible=False):
        t_in = gr.Textbox(label="token")
        n_out = [gr.JSON(label="item"), gr.Image(label="image", format="png"), gr.Image(label="human", format="png"),
                 *[gr.Image(label=f"{side} {m}", format="png") for side in ("A", "B") for m in MAPS]]
        r_out, f_out = gr.JSON(label="reveal"), gr.File(label="csv")
        nb, rb = gr.Button("next"), gr.Button("reveal")
    nb.click(review_next, t_in, n_out, api_name="review_next", concurrency_id="compute")
    rb.click(review_reveal, t_in, [r_out, f_out], api_name="review_reveal")
