"""The Review tab's endpoints for gradio_client: /review_sessions, /review_create, /review_join,
/review_verdict, /review_delete, /review_next and /review_reveal. Every one that reads or writes a session takes
its organiser token, invite code or a reviewer token as ``token``."""

from __future__ import annotations

import gradio as gr

from .. import review
from ..cam import DEFAULT_THRESHOLD
from .events import api_errors
from .review_tab import SIDES, SLOTS, access, create, delete, join, listing, pictures, reveal, show_next, verdict, _db
from .service import AppConfig


def build(cfg: AppConfig) -> None:
    """Register the endpoints; call inside the Blocks."""
    _plain_endpoints(cfg)
    _endpoints_with_files(cfg)


def _plain_endpoints(cfg: AppConfig) -> None:
    # gr.api reads each endpoint's signature from the function itself, hence these thin named functions
    @api_errors
    def review_sessions(tokens: str) -> list:
        """The sessions the given tokens open (comma- or newline-separated): id, name, arch, your role, items,
        and your verdicts so far (a reviewer) or everyone's (the organiser). Other sessions are never listed."""
        return listing(tokens, cfg)

    @api_errors
    def review_create(name: str, shard: str, start: int, count: int, arch: str, seed: str, hf_users: str = "",
                      methods: str = "") -> dict:
        """A new session over records start..start+count of a listed shard ('' = the demo shard, 'examples' =
        the example photos). Returns its id, the organiser token and the reviewer invite code: keep them, they
        are shown only now. ``seed`` '' draws the sides from a secret random seed; ``hf_users``: Hugging Face
        usernames who may join without the code; ``methods``: the one or two methods whose maps each model shows,
        comma-separated ('' = the paper's two)."""
        kind = "examples" if shard == "examples" else "shard"
        made = create(name, kind, shard, start, count, None, arch, seed, "paper", DEFAULT_THRESHOLD, cfg, hf_users,
                      methods)
        return {"session": made.info.id, "name": made.info.name, "n_items": made.info.n_items,
                "methods": list(made.info.methods), "organiser_token": made.organiser_token,
                "invite_code": made.invite_code}

    @api_errors
    def review_join(token: str, name: str) -> dict:
        """Join with the invite code as reviewer ``name``: your own reviewer token (keep it) and progress.
        Giving a reviewer token instead resumes as that reviewer."""
        acc, mine = join(token, name, cfg)
        return {"reviewer_token": mine or token.strip(), "reviewer": acc.reviewer,
                **review.progress(acc.session, acc.reviewer, _db(cfg))}

    @api_errors
    def review_verdict(token: str, position: int, verdict_: str, note: str) -> dict:
        """Stores your verdict (A, B, tie or neither) on a shown item, committed before this returns."""
        acc = access(token, cfg, ("reviewer",))
        verdict(acc, position, verdict_, note, cfg)
        return review.progress(acc.session, acc.reviewer, _db(cfg))

    @api_errors
    def review_delete(token: str) -> dict:
        """Deletes the session of this organiser token: its verdicts, reviewers, tokens and uploaded photos."""
        acc = access(token, cfg, ("organiser",))
        delete(acc, cfg)
        return {"session": acc.session, "deleted": True}

    for fn in (review_sessions, review_create, review_join, review_verdict, review_delete):
        gr.api(fn, api_name=fn.__name__)


def _endpoints_with_files(cfg: AppConfig) -> None:
    """/review_next and /review_reveal return images and a file, so they are events of hidden components."""

    @api_errors
    def review_next(token: str):
        """Runs both models on your next unjudged item: its position and what it is, never which side is which
        model, with the image, the human map and the A and B maps (per side one per method of the session, in
        ``methods`` order, then None for an unused panel); {"finished": true} when you are done."""
        acc = access(token, cfg, ("reviewer",))
        shown = show_next(acc, cfg)
        p = review.progress(acc.session, acc.reviewer, _db(cfg))
        if shown is None:
            return {**p, "finished": True}, *[None] * (2 + len(SIDES) * len(SLOTS))
        return ({**p, "finished": False, "position": shown.item.position, "kind": shown.item.source.kind,
                 "sample": shown.item.source.public_ref, "methods": list(shown.comparison.methods)},
                *pictures(shown))

    @api_errors
    def review_reveal(token: str):
        """The unblinded results and the CSV: everyone's for the organiser token (any time), your own for a
        reviewer token once you have judged every item."""
        return reveal(access(token, cfg), cfg)

    with gr.Column(visible=False):
        token_in = gr.Textbox(label="token")
        next_out = [gr.JSON(label="item"), gr.Image(label="image", format="png"),
                    gr.Image(label="human", format="png"),
                    *[gr.Image(label=f"{side} map {k + 1}", format="png") for side in SIDES for k in SLOTS]]
        reveal_out, csv_out = gr.JSON(label="reveal"), gr.File(label="csv")
        next_btn, reveal_btn = gr.Button("next"), gr.Button("reveal")
    next_btn.click(review_next, token_in, next_out, api_name="review_next", concurrency_id="compute")
    reveal_btn.click(review_reveal, token_in, [reveal_out, csv_out], api_name="review_reveal")
