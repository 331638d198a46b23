"""Who may see and change a review session, through the real app server and two real gradio_client clients:
a client without the session's token cannot list, open, judge, reveal, export or delete it, nor see its photos;
reviewers' verdicts are kept apart; bad input gets a clear message and the server carries on."""

from __future__ import annotations

import csv
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from app_fixtures import EXAMPLES, make_client
from dclsviz import review, stats
from dclsviz.ui import review_tab, service

pytest_plugins = ["app_fixtures"]


@pytest.fixture(scope="module")
def clients(app_server, tmp_path_factory):
    """Two independent clients of one server: the session's people, and a stranger."""
    return (make_client(app_server, tmp_path_factory.mktemp("owner")),
            make_client(app_server, tmp_path_factory.mktemp("stranger")))


def _refused(client, *args, api_name, match="does not open a review session"):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=match) as e:
        client.predict(*args, api_name=api_name)
    return str(e.value)


def test_a_stranger_can_reach_nothing_of_a_session(app_server, clients, tmp_path):
    owner, stranger = clients
    # a session over uploaded photos, made the way the tab makes it, in the server's own database
    cfg = service.AppConfig(export_dir=tmp_path / "x", review_db=app_server.home / "cache" / "review.sqlite")
    uploads = tmp_path / "up"
    uploads.mkdir()
    made = review_tab.create("private", "uploads", None, 0, 0, [shutil.copy(EXAMPLES[0], uploads)], "demo", "",
                              "paper", 0.3, cfg)
    token = owner.predict(made.invite_code, "ann", api_name="/review_join")["reviewer_token"]
    shown, image, *_ = owner.predict(token, api_name="/review_next")
    assert shown["sample"] == EXAMPLES[0].name and Path(image).is_file()
    owner.predict(token, 0, "A", "", api_name="/review_verdict")

    mine = stranger.predict("mine", "", 0, 2, "demo", "", api_name="/review_create")
    listed = stranger.predict(f"{mine['organiser_token']}\nrvo_guess, {made.info.id}", api_name="/review_sessions")
    assert [s["session"] for s in listed] == [mine["session"]]  # only what its own tokens open
    assert stranger.predict("", api_name="/review_sessions") == []
    gone = stranger.predict(stranger.predict("tmp", "", 0, 1, "demo", "", api_name="/review_create")["organiser_token"],
                            api_name="/review_delete")
    assert gone["deleted"]
    messages = {}
    for guess in ("rvr_" + made.info.id, "rvo_" + "x" * 32, mine["invite_code"].replace("rvi", "rvo"),
                  made.invite_code.replace("rvi", "rvr")):
        for api_name, args in (("/review_next", ()), ("/review_verdict", (0, "B", "")), ("/review_reveal", ()),
                               ("/review_delete", ()), ("/review_join", ("eve",))):
            messages.setdefault(api_name, set()).add(_refused(stranger, guess, *args, api_name=api_name))
    # the same words whether or not a session is behind the guess, and never its id
    assert all(len(m) == 1 and made.info.id not in next(iter(m)) for m in messages.values())
    _refused(stranger, made.info.id, "eve", api_name="/review_join", match="invite code")  # the id is no key
    # the photos are in no place the server hands out
    photo = review.photo_dir(made.info.id, cfg.review_db) / EXAMPLES[0].name
    assert photo.is_file()
    for url in (f"{app_server.url}gradio_api/file={photo}", f"{app_server.url}file={photo}"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url, timeout=10)
        assert e.value.code in (403, 404)
    p = owner.predict(token, api_name="/review_sessions")
    assert [(s["session"], s["n_done"]) for s in p] == [(made.info.id, 1)]  # untouched by the stranger
    # and the organiser's own token still deletes it, photos included
    assert owner.predict(made.organiser_token, api_name="/review_delete")["deleted"]
    assert not photo.parent.exists()
    _refused(owner, token, api_name="/review_next")


def test_reviewers_are_kept_apart_and_the_organiser_sees_both(clients):
    one, two = clients
    made = one.predict("pair", "", 10, 3, "demo", "", api_name="/review_create")
    ann = one.predict(made["invite_code"], "Ann", api_name="/review_join")["reviewer_token"]
    bob = two.predict(made["invite_code"], "Bob", api_name="/review_join")["reviewer_token"]
    plans = {ann: (one, ["A", "B", "tie"]), bob: (two, ["A", "A", "neither"])}
    for token, (c, plan) in plans.items():
        for k, v in enumerate(plan):
            shown = c.predict(token, api_name="/review_next")[0]
            assert shown["position"] == k and shown["n_done"] == k  # each reviewer's own progress
            c.predict(token, k, v, f"note {k}", api_name="/review_verdict")
            if token == ann and k == 1:
                _refused(c, token, api_name="/review_reveal", match="1 of 3 left")
    own, own_csv = two.predict(bob, api_name="/review_reveal")
    assert "reviewers" not in own and own["n_verdicts"] == 3
    assert {r["reviewer_name"] for r in csv.DictReader(open(own_csv, newline=""))} == {"Bob"}

    full, full_csv = one.predict(made["organiser_token"], api_name="/review_reveal")
    assert [(r["name"], r["n_verdicts"]) for r in full["reviewers"]] == [("Ann", 3), ("Bob", 3)]
    assert full["n_verdicts"] == 6 and full["preference"]["ci_method"] == "wilson"
    rows = list(csv.DictReader(open(full_csv, newline="")))
    assert sorted((r["reviewer_name"], int(r["position"]), r["verdict"]) for r in rows) == sorted(
        (name, k, v) for name, plan in (("Ann", plans[ann][1]), ("Bob", plans[bob][1])) for k, v in enumerate(plan))
    table = [[sum(r["preferred"] == c for r in rows if int(r["position"]) == k) for c in review.PREFERENCES]
             for k in range(3)]
    assert full["inter_rater"]["kappa"] == pytest.approx(stats.fleiss_kappa(table)["kappa"], abs=1e-12)
    assert full["inter_rater"]["n_items"] == 3 and full["inter_rater"]["n_raters"] == 2


HUGE_NAME = "n" * 5_000_000
BAD_INPUTS = {
    "5 MB name": ("/review_create", (HUGE_NAME, "", 0, 2, "demo", ""), "session name is 5,000,000 characters"),
    "count 0": ("/review_create", ("c", "", 0, 0, "demo", ""), "number of records must lie between 1 and 200, not 0"),
    "count -7": ("/review_create", ("c", "", 0, -7, "demo", ""), "number of records must lie between 1 and 200"),
    "first record 10^30": ("/review_create", ("c", "", 10**30, 2, "demo", ""), "first record must lie between"),
    "seed 10^30": ("/review_create", ("c", "", 0, 2, "demo", str(10**30)), "seed for the sides must be a whole"),
    "10 kB token": ("/review_next", ("t" * 10_000,), "token is 10,000 characters long; the limit is 200"),
    "10 kB token list": ("/review_sessions", ("t" * 10_000,), "token is 10,000 characters long"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_a_clear_message_and_the_server_keeps_serving(clients, app_server, case):
    one, _ = clients
    api_name, args, words = BAD_INPUTS[case]
    _refused(one, *args, api_name=api_name, match=words)
    app_server.assert_alive()
    made = one.predict("after", "", 0, 1, "demo", "", api_name="/review_create")
    assert [s["name"] for s in one.predict(made["organiser_token"], api_name="/review_sessions")] == ["after"]


@pytest.mark.parametrize("case", ["30 MB note", "position 10^30"])
def test_bad_verdicts_get_a_clear_message_and_nothing_is_stored(clients, app_server, case):
    one, _ = clients
    made = one.predict("v", "", 0, 2, "demo", "", api_name="/review_create")
    token = one.predict(made["invite_code"], "r", api_name="/review_join")["reviewer_token"]
    one.predict(token, api_name="/review_next")
    if case == "30 MB note":
        _refused(one, token, 0, "A", "x" * 30_000_000, api_name="/review_verdict",
                 match="note is 30,000,000 characters long; the limit is 2,000")
    else:
        _refused(one, token, 10**30, "A", "", api_name="/review_verdict", match="position must lie between 0 and 199")
    app_server.assert_alive()
    assert one.predict(token, api_name="/review_sessions")[0]["n_done"] == 0
    assert one.predict(token, 0, "A", "fine", api_name="/review_verdict")["n_done"] == 1
