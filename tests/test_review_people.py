"""Review sessions that belong to people, on a real SQLite file: secrets, several reviewers, Fleiss' kappa, the
sides' secret seed, limits, deleting with the photos, Hugging Face sign-in, a schema-1 file migrated and
opened again through the host's CLI, a schema-2 file (sessions without methods) opened with the paper's two, and
sessions on other methods."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys

import gradio as gr
import numpy as np
import pytest

from app_fixtures import EXAMPLES, REPO, blob_map, write_map
from dclsviz import limits, models, review, stats, zoo
from dclsviz.ui import review_tab, service

BASE, DCLS = zoo.VARIANTS

# Fleiss (1971) as reproduced on Wikipedia's "Fleiss' kappa" page: 10 subjects, 14 raters, 5 categories.
FLEISS_EXAMPLE = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                  [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]


@pytest.fixture(scope="module")
def pair():
    return {v: models.load(zoo.get("demo", v), device="cpu") for v in zoo.VARIANTS}


@pytest.fixture
def db(tmp_path):
    return tmp_path / "data" / "review.sqlite"


@pytest.fixture
def cfg(tmp_path, db):
    return service.AppConfig(export_dir=tmp_path / "exports", evaluation_dir=tmp_path / "runs", review_db=db,
                             download=False)


def test_fleiss_kappa_reproduces_the_published_example():
    k = stats.fleiss_kappa(FLEISS_EXAMPLE)
    assert (round(k["p_bar"], 3), round(k["p_e"], 3), round(k["kappa"], 3)) == (0.378, 0.213, 0.210)
    assert (k["n_subjects"], k["n_raters"]) == (10, 14)
    assert stats.fleiss_kappa([[3, 0], [0, 3]])["kappa"] == 1.0  # perfect agreement
    assert stats.fleiss_kappa([[2, 0], [2, 0]])["kappa"] is None  # one category only: undefined
    with pytest.raises(ValueError, match="same number"):
        stats.fleiss_kappa([[2, 0], [1, 0]])


def test_preference_interval_is_scipys_wilson_interval():
    from scipy.stats import binomtest

    p = stats.preference(7, 10)
    ci = binomtest(7, 10).proportion_ci(0.95, method="wilson")
    assert p["ci"] == [ci.low, ci.high] and p["ci_method"] == "wilson" and p["ci"][0] < 0.7 < p["ci"][1]


def test_secrets_roles_and_two_reviewers_kept_apart(pair, db):
    made = review.create_session("pilot", review.demo_items(0, 6), arch="demo", db=db)
    stored = sqlite3.connect(db).execute("SELECT digest FROM tokens").fetchall()
    for secret in (made.organiser_token, made.invite_code):
        assert (hashlib.sha256(secret.encode()).hexdigest(),) in stored  # a digest, never the secret itself
        assert secret not in db.read_bytes().decode("latin-1")
    ann, ann_token = review.join(made.invite_code, "Ann", db=db)
    bob, _ = review.join(made.invite_code, "Bob", db=db)
    assert ann.reviewer != bob.reviewer and review.join(ann_token, db=db) == (ann, None)  # rejoining
    for pos in range(6):
        review.show(made.info.id, ann.reviewer, pos, pair=pair, db=db)
    plans = {ann.reviewer: ["A", "B", "tie", "A", "A", "neither"], bob.reviewer: ["A", "A", "tie", "B", "A"]}
    for rid, plan in plans.items():
        for pos, v in enumerate(plan):
            review.record_verdict(made.info.id, rid, pos, v, note=f"{rid} {pos}", db=db)
    assert review.progress(made.info.id, bob.reviewer, db)["next_position"] == 5  # each sees their own progress
    assert [v.verdict for v in review.verdicts(made.info.id, ann.reviewer, db)] == plans[ann.reviewer]
    with pytest.raises(review.AccessDenied, match="1 of 6 left"):
        review.reveal(made.info.id, bob.reviewer, db)
    assert review.reveal(made.info.id, ann.reviewer, db)["n_verdicts"] == 6

    r = review.reveal(made.info.id, db=db)
    assert [p["n_verdicts"] for p in r["reviewers"]] == [6, 5] and r["n_verdicts"] == 11
    items = review.items(made.info.id, db)
    pref = {rid: [items[p].variant_for(v) if v in "AB" else v for p, v in enumerate(plan)] for rid, plan in
            plans.items()}
    table = [[sum(pref[rid][p] == c for rid in pref) for c in review.PREFERENCES] for p in range(5)]
    k = r["inter_rater"]
    assert k["n_items"] == 5 and k["n_raters"] == 2 and k["kappa"] == stats.fleiss_kappa(table)["kappa"]
    with pytest.raises(review.AccessDenied, match="organiser token"):
        review.authorize(made.invite_code, ("organiser",), db)


def test_sides_come_from_a_secret_seed_not_the_name(db):
    draws = [review.create_session("same", review.demo_items(0, 64), arch="demo", db=db).info for _ in range(2)]
    sides = [[it.a_variant for it in review.items(s.id, db)] for s in draws]
    assert sides[0] != sides[1] and draws[0].seed != draws[1].seed
    old_seed = int.from_bytes(hashlib.sha256(b"same").digest()[:4], "big")  # what an empty seed used to mean
    old = [DCLS if a else BASE for a in np.random.default_rng(old_seed).integers(0, 2, 64).astype(bool)]
    assert old not in sides and old_seed not in (draws[0].seed, draws[1].seed)
    given = review.create_session("given", review.demo_items(0, 64), arch="demo", seed=7, db=db).info
    assert given.seed == 7
    with pytest.raises(limits.LimitError, match="seed"):
        review.create_session("big", review.demo_items(0, 2), arch="demo", seed=10**30, db=db)


def test_core_limits_refuse_before_sqlite(pair, db):
    with pytest.raises(limits.LimitError, match="session name is 5,000,000 characters long; the limit is 80"):
        review.create_session("x" * 5_000_000, review.demo_items(0, 2), arch="demo", db=db)
    made = review.create_session("ok", review.demo_items(0, 2), arch="demo", db=db)
    me = review.join(made.invite_code, "me", db=db)[0]
    review.show(me.session, me.reviewer, pair=pair, db=db)
    with pytest.raises(limits.LimitError, match="note is 30,000,000 characters long; the limit is 2,000"):
        review.record_verdict(me.session, me.reviewer, 0, "A", "n" * 30_000_000, db=db)
    with pytest.raises(limits.LimitError, match="position must lie between 0 and 199"):
        review.record_verdict(me.session, me.reviewer, 10**30, "A", db=db)
    with pytest.raises(limits.LimitError, match="token is 10,000 characters long; the limit is 200"):
        review.authorize("t" * 10_000, db=db)
    assert review.progress(me.session, me.reviewer, db)["n_done"] == 0


def test_deleting_removes_the_photo_folder_and_every_row(cfg, db, tmp_path):
    uploads = tmp_path / "gradio-upload"
    uploads.mkdir()
    photos = [shutil.copy(p, uploads / p.name) for p in EXAMPLES[:2]]
    made = review_tab.create("mine", "uploads", None, 0, 0, [str(p) for p in photos], "demo", "", "paper", 0.3, cfg)
    keep = review_tab.create("other", "uploads", None, 0, 0, [str(photos[0])], "demo", "", "paper", 0.3, cfg)
    folder = review.photo_dir(made.info.id, db)
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in EXAMPLES[:2])
    review.join(made.invite_code, "r", db=db)
    with pytest.raises(service.UserError, match="organiser"):
        review_tab.delete(review_tab.access(review.join(made.invite_code, "s", db=db)[1], cfg), cfg)
    review_tab.delete(review_tab.access(made.organiser_token, cfg), cfg)
    assert not folder.exists() and review.photo_dir(keep.info.id, db).is_dir()
    con = sqlite3.connect(db)
    for table in ("sessions", "tokens", "reviewers", "items", "verdicts"):
        col = "id" if table == "sessions" else "session"
        assert con.execute(f"SELECT COUNT(*) FROM {table} WHERE {col} = ?", (made.info.id,)).fetchone()[0] == 0
    assert con.execute("SELECT COUNT(*) FROM items WHERE session = ?", (keep.info.id,)).fetchone()[0] == 1


def test_too_many_or_too_large_uploads_are_refused(cfg, tmp_path):
    w, h = 64, 48
    many = [write_map(tmp_path / f"p{i}.png", blob_map(w, h)) for i in range(limits.MAX_SESSION_PHOTOS + 1)]
    with pytest.raises(service.UserError, match="101 files uploaded; a session takes at most 100"):
        review_tab.create("many", "uploads", None, 0, 0, [str(p) for p in many], "demo", "", "paper", 0.3, cfg)
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(limits.MAX_SESSION_UPLOAD_BYTES + 1)  # sparse: the size is checked before any byte is read
    with pytest.raises(service.UserError, match="at most 200 MB"):
        review_tab.create("big", "uploads", None, 0, 0, [str(big)], "demo", "", "paper", 0.3, cfg)
    assert review.sessions(cfg.review_db) == [] and not list((cfg.review_db.parent / "review_photos").glob("*/*"))


def test_hugging_face_users_on_the_list_join_without_a_code(cfg, db):
    made = review_tab.create("hf", "shard", "", 0, 3, None, "demo", "", "paper", 0.3, cfg, "Alice, bob")
    alice = gr.OAuthProfile({"name": "Alice A", "preferred_username": "alice", "profile": "https://hf.co/alice",
                             "picture": ""})
    first, t1 = review_tab.join(made.info.id, "", cfg, alice)
    again, t2 = review_tab.join(made.info.id, "", cfg, alice)
    assert first == again and first.reviewer == "hf:alice" and t1 != t2  # same identity on every visit
    assert review.reviewers(made.info.id, db) == {"hf:alice": "alice"}
    mallory = gr.OAuthProfile({"name": "M", "preferred_username": "mallory", "profile": "", "picture": ""})
    with pytest.raises(service.UserError, match="not on this session's list"):
        review_tab.join(made.info.id, "", cfg, mallory)
    with pytest.raises(service.UserError, match="invite code"):
        review_tab.join(made.info.id, "", cfg, None)  # not signed in: the id alone opens nothing


# The schema of the first release (user_version 1), as it created its files.
V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    name TEXT PRIMARY KEY,
    arch TEXT NOT NULL,
    seed INTEGER NOT NULL,
    geometry TEXT NOT NULL,
    threshold REAL NOT NULL,
    target TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    session TEXT NOT NULL REFERENCES sessions(name) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('clickme', 'photo')),
    ref TEXT NOT NULL,
    human TEXT,
    a_variant TEXT NOT NULL,
    b_variant TEXT NOT NULL,
    label INTEGER,
    scores TEXT,
    shown_at REAL,
    verdict TEXT CHECK (verdict IN ('A', 'B', 'tie', 'neither')),
    note TEXT,
    decided_at REAL,
    PRIMARY KEY (session, position)
);
"""


def _v1_file(path):
    ref = review.demo_items(0, 1)[0].ref.rsplit(":", 1)[0]
    scores = json.dumps({v: {m: {"spearman": s, "ceiling": s, "dice": 0.1, "iou": 0.1} for m in
                             ("gradcam", "threshold_gradcam")} for v, s in ((BASE, 0.2), (DCLS, 0.4))})
    con = sqlite3.connect(path)
    con.executescript(V1_SCHEMA)
    con.execute("PRAGMA user_version = 1")
    con.execute("INSERT INTO sessions VALUES ('alice-1', 'demo', 11, 'paper', 0.3, 'label', 100.0)")
    con.execute("INSERT INTO sessions VALUES ('empty', 'demo', 3, 'paper', 0.3, 'pred', 200.0)")
    rows = [("alice-1", 0, "A", "sharper", 101.0), ("alice-1", 1, "tie", None, 102.0), ("alice-1", 2, None, None, None),
            ("empty", 0, None, None, None)]
    for s, pos, verdict, note, t in rows:
        con.execute("INSERT INTO items VALUES (?, ?, 'clickme', ?, NULL, ?, ?, 3, ?, ?, ?, ?, ?)",
                    (s, pos, f"{ref}:{pos}", DCLS if pos % 2 == 0 else BASE, BASE if pos % 2 == 0 else DCLS,
                     scores if verdict else None, t, verdict, note, t))
    con.commit()
    con.close()


def _cli(*args):
    env = {k: v for k, v in os.environ.items() if k != review.DB_ENV}
    r = subprocess.run([sys.executable, "-m", "dclsviz", "review", *args], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_a_schema_1_file_migrates_and_the_host_issues_new_secrets(db):
    db.parent.mkdir(parents=True)
    _v1_file(db)
    listed = _cli("list", "--db", str(db))
    assert "'alice-1'" in listed and "'empty'" in listed and "2 verdicts" in listed
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == review.SCHEMA_VERSION
    assert {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} == {
        "sessions", "tokens", "reviewers", "items", "verdicts"}
    out = _cli("tokens", "alice-1", "--db", str(db))
    secrets_ = dict(line.split(":", 1) for line in out.splitlines() if line.startswith(("organiser", "invite")))
    org = review.authorize(secrets_["organiser token"].strip(), ("organiser",), db)
    assert review.get_session(org.session, db).name == "alice-1" and review.get_session(org.session, db).seed == 11
    (rid, name), = review.reviewers(org.session, db).items()
    assert name == "reviewer 1"
    got = [(v.item.position, v.verdict, v.note, v.decided_at) for v in review.verdicts(org.session, rid, db)]
    assert got == [(0, "A", "sharper", 101.0), (1, "tie", None, 102.0)]
    assert review.progress(org.session, rid, db)["next_position"] == 2
    r = review.reveal(org.session, db=db)
    assert r["dcls_preferred"] == 1 and r["agreement"]["gradcam"] == {"n": 1, "agreed": 1, "rate": 1.0,
                                                                      "left_out": 0}
    newcomer = review.join(secrets_["invite code"].strip(), "Cy", db=db)[0]
    assert newcomer.session == org.session and review.next_item(org.session, newcomer.reviewer, db).position == 0
    again = _cli("tokens", org.session, "--db", str(db))  # rotating: the previous secrets stop working
    assert org.session in again
    with pytest.raises(review.AccessDenied):
        review.authorize(secrets_["organiser token"].strip(), db=db)


# The columns of the sessions table of the release before sessions had methods (user_version 2).
V2_SESSION_COLUMNS = ["id", "name", "arch", "seed", "geometry", "threshold", "target", "created_at", "hf_users"]
PAPER = ("gradcam", "threshold_gradcam")


def _v2_file(path):
    """A schema-2 file as that release wrote it: one session, a reviewer who judged item 0 of 2, an organiser
    token ``rvo_known``."""
    ref = review.demo_items(0, 1)[0].ref.rsplit(":", 1)[0]
    scores = json.dumps({v: {m: {"spearman": s, "ceiling": s, "dice": 0.1, "iou": 0.1} for m in PAPER}
                         for v, s in ((BASE, 0.2), (DCLS, 0.4))})
    con = sqlite3.connect(path)
    # schema 2 is schema 3 without the sessions' methods column
    con.executescript(review._SCHEMA + "ALTER TABLE sessions DROP COLUMN methods;")
    assert [r[1] for r in con.execute("PRAGMA table_info(sessions)")] == V2_SESSION_COLUMNS
    con.execute("PRAGMA user_version = 2")
    con.execute("INSERT INTO sessions VALUES ('s00000000000000aa', 'old', 'demo', 5, 'paper', 0.3, 'label', 100.0, "
                "'[]')")
    con.execute("INSERT INTO tokens VALUES (?, 's00000000000000aa', 'organiser', NULL, 100.0)",
                (hashlib.sha256(b"rvo_known").hexdigest(),))
    con.execute("INSERT INTO reviewers VALUES ('s00000000000000aa', 'r1', 'bob', 101.0)")
    con.execute("INSERT INTO items VALUES ('s00000000000000aa', 0, 'clickme', ?, NULL, ?, ?, 3, ?, 102.0)",
                (f"{ref}:0", DCLS, BASE, scores))
    con.execute("INSERT INTO items VALUES ('s00000000000000aa', 1, 'clickme', ?, NULL, ?, ?, NULL, NULL, NULL)",
                (f"{ref}:1", BASE, DCLS))
    con.execute("INSERT INTO verdicts VALUES ('s00000000000000aa', 0, 'r1', 'A', 'old note', 103.0)")
    con.commit()
    con.close()


def test_a_schema_2_file_opens_with_the_paper_maps(db, cfg, pair, tmp_path):
    db.parent.mkdir(parents=True)
    _v2_file(db)
    sid = review.authorize("rvo_known", ("organiser",), db).session
    info = review.get_session(sid, db)
    assert (info.name, info.methods) == ("old", PAPER)
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == review.SCHEMA_VERSION == 3
    r = review.reveal(sid, db=db)
    assert r["methods"] == list(PAPER) and r["dcls_preferred"] == 1
    assert r["agreement"] == {m: {"n": 1, "agreed": 1, "rate": 1.0, "left_out": 0} for m in PAPER}
    path = review.export_csv(sid, tmp_path / "old.csv", db=db)
    header = path.read_text().splitlines()[0].split(",")
    assert header[-8:] == [f"spearman_{side}_{m}" for side in ("A", "B", BASE, DCLS) for m in PAPER]
    shown = review.show(sid, "r1", pair=pair, db=db)  # the item left: both models, the paper's two maps
    assert shown.item.position == 1 and shown.comparison.methods == PAPER
    assert set(review.item(sid, 1, db).scores[BASE]) == set(PAPER)
    assert review_tab.listing("rvo_known", cfg)[0]["methods"] == list(PAPER)
    assert "gradcam, threshold_gradcam" in _cli("list", "--db", str(db))


def test_a_session_on_one_method_shows_and_exports_that_method(db, cfg, pair, tmp_path):
    from dclsviz.compare import Sample, compare

    with pytest.raises(service.UserError, match="unknown method"):
        review_tab.create("x", "shard", "", 0, 2, None, "demo", "", "paper", 0.3, cfg, "", ["gradcam", "nope"])
    with pytest.raises(service.UserError, match="at most 2 methods"):
        review_tab.create("x", "shard", "", 0, 2, None, "demo", "", "paper", 0.3, cfg, "", "all")
    made = review_tab.create("lc", "shard", "", 0, 2, None, "demo", "", "paper", 0.3, cfg, "", ["layercam"])
    me = review.join(made.invite_code, "me", db=db)[0]
    shown = review.show(me.session, me.reviewer, pair=pair, db=db)
    assert shown.comparison.methods == ("layercam",)
    mine = compare(pair, shown.item.source.sample(), methods=("layercam",))
    for v in zoo.VARIANTS:
        assert np.array_equal(shown.comparison.outputs[v].maps["layercam"], mine.outputs[v].maps["layercam"])
    # the panels: the first per side titled LayerCAM, the second hidden
    values = review_tab._panels(shown)
    panels, titles = values[2:6], values[6:10]
    assert [p["visible"] for p in panels] == [True, False, True, False]
    assert titles[0]["value"] == "**A: LayerCAM**" and titles[2]["value"] == "**B: LayerCAM**"
    assert not titles[1]["visible"] and panels[1]["value"] is None
    review.record_verdict(me.session, me.reviewer, 0, "B", db=db)
    path = review.export_csv(me.session, tmp_path / "lc.csv", db=db)
    header = path.read_text().splitlines()[0].split(",")
    assert header == list(review.export_columns(("layercam",))) and "spearman_B_layercam" in header
