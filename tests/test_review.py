"""Blind review sessions on a real SQLite file with the demo pair: sides, reveal, crash safety, export, several
reviewers, Fleiss' kappa, migration of schema-1 files and the host's CLI."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dclsviz.demo
from dclsviz import clickme, models, review, zoo
from dclsviz.compare import MAPS, Sample, explain_batch

REPO = Path(__file__).resolve().parent.parent
DEMO_SHARD = zoo.ASSETS / dclsviz.demo.SHARD
DEMO_FILES = tuple(zoo.ASSETS / zoo.get("demo", v).checkpoint.bundled for v in zoo.VARIANTS) + (DEMO_SHARD,)
EXAMPLES = REPO / "assets" / "examples"
BASE, DCLS = zoo.VARIANTS


@pytest.fixture(scope="module")
def pair():
    missing = [str(p) for p in DEMO_FILES if not p.is_file()]
    if missing:
        pytest.fail(f"the demo pair is missing ({', '.join(missing)}); `python -m dclsviz demo train` makes it",
                    pytrace=False)
    return {v: models.load(zoo.get("demo", v), device="cpu") for v in zoo.VARIANTS}


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "review.sqlite"


def side_of_dcls(shown: review.Shown, pair) -> str:
    """Which side showed the DCLS model, found from the maps alone, without the recorded assignment."""
    sample = Sample.from_clickme(clickme.read_record(shown.item.source.ref))
    mine = {v: explain_batch(m, [sample])[0] for v, m in pair.items()}
    a_is = [v for v in mine if np.array_equal(mine[v].maps["gradcam"], shown.a.maps["gradcam"])]
    b_is = [v for v in mine if np.array_equal(mine[v].maps["gradcam"], shown.b.maps["gradcam"])]
    assert len(a_is) == len(b_is) == 1 and a_is != b_is
    return ("A" if a_is == [DCLS] else "B"), mine


def test_reveal_follows_the_recorded_sides(pair, db, tmp_path):
    # what the reviewer means for each item: prefer DCLS, prefer the baseline, or neither of the two
    plan = [DCLS, DCLS, BASE, "tie", DCLS, "neither", BASE, DCLS]
    sid = review.create_session("s", review.demo_items(0, len(plan)), arch="demo", seed=3, db=db).info.id
    me = review.join(review.issue_secrets(sid, db).invite_code, "me", db=db)[0]
    sides, expected_agree = [], {m: [0, 0] for m in MAPS}
    for want in plan:
        shown = review.show(sid, me.reviewer, pair=pair, db=db)
        dcls_side, mine = side_of_dcls(shown, pair)
        assert shown.item.a_variant == (DCLS if dcls_side == "A" else BASE)  # the DB says what was shown
        sides.append(dcls_side)
        if want in ("tie", "neither"):
            verdict = want
        else:
            verdict = dcls_side if want == DCLS else ("B" if dcls_side == "A" else "A")
            other = BASE if want == DCLS else DCLS
            for m in MAPS:
                rc, ro = mine[want].scores[m].spearman, mine[other].scores[m].spearman
                if rc is not None and ro is not None and rc != ro:
                    expected_agree[m][0] += 1
                    expected_agree[m][1] += rc > ro
        review.record_verdict(sid, me.reviewer, shown.item.position, verdict, note=f"meant {want}", db=db)
    assert set(sides) == {"A", "B"}, "the seed should put DCLS on both sides"
    assert review.show(sid, me.reviewer, pair=pair, db=db) is None and review.next_item(sid, me.reviewer, db) is None

    r = review.reveal(sid, db=db)
    own = review.reveal(sid, me.reviewer, db)  # the reviewer's own view, now that every item is judged
    assert {k: own[k] for k in ("dcls_preferred", "preference", "agreement")} == {
        k: r["reviewers"][0][k] for k in ("dcls_preferred", "preference", "agreement")}
    assert r["inter_rater"]["kappa"] is None  # one reviewer: nothing to agree with
    assert (r["dcls_preferred"], r["baseline_preferred"], r["ties"], r["neither"]) == (4, 2, 1, 1)
    assert r["preference"]["rate"] == pytest.approx(4 / 6) and 0 < r["preference"]["p"] <= 1
    assert r["dcls_was_a"] == sides.count("A")
    for m in MAPS:
        assert (r["agreement"][m]["n"], r["agreement"][m]["agreed"]) == tuple(expected_agree[m])

    path = review.export_csv(sid, tmp_path / "s.csv", db=db)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r_["preferred"] for r_ in rows] == plan
    assert [r_["note"] for r_ in rows] == [f"meant {w}" for w in plan]
    for row, side in zip(rows, sides):
        assert row["a_variant"] == (DCLS if side == "A" else BASE)
        for m in MAPS:
            assert row[f"spearman_{row['a_variant']}_{m}"] == row[f"spearman_A_{m}"]


WRITER = textwrap.dedent("""
    import sys, time
    from dclsviz import review
    made = review.create_session("crash", review.demo_items(0, 6), arch="demo", seed=1)
    me, token = review.join(made.invite_code, "me")
    for verdict in ("A", "B", "tie", "neither"):
        shown = review.show(me.session, me.reviewer, device="cpu")
        review.record_verdict(me.session, me.reviewer, shown.item.position, verdict, note="note " + verdict)
    print("recorded", token, flush=True)
    time.sleep(300)
""")


def test_verdicts_survive_a_hard_kill(pair, db, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), review.DB_ENV: str(db), "DCLSVIZ_CACHE": str(tmp_path / "c")}
    proc = subprocess.Popen([sys.executable, "-c", WRITER], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("recorded "), proc.stderr.read()[-3000:]
        proc.kill()  # SIGKILL: no cleanup, no checkpoint of the WAL
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -9

    me = review.authorize(line.split()[1], ("reviewer",), db)  # the reviewer's token still opens the session
    p = review.progress(me.session, me.reviewer, db=db)
    assert (p["n_items"], p["n_done"], p["next_position"]) == (6, 4, 4)
    assert p["counts"] == {"A": 1, "B": 1, "tie": 1, "neither": 1}
    done = review.verdicts(me.session, me.reviewer, db=db)
    assert [(v.verdict, v.note) for v in done] == [(v, f"note {v}") for v in ("A", "B", "tie", "neither")]
    assert all(v.item.scores is not None and v.item.shown_at for v in done)
    rows = list(csv.DictReader(open(review.export_csv(me.session, tmp_path / "c.csv", db=db), newline="")))
    assert [r["verdict"] for r in rows] == ["A", "B", "tie", "neither"]

    # the session carries on where it stopped
    shown = review.show(me.session, me.reviewer, pair=pair, db=db)
    assert shown.item.position == 4
    review.record_verdict(me.session, me.reviewer, 4, "A", db=db)
    assert review.progress(me.session, me.reviewer, db=db)["next_position"] == 5


def test_sessions_are_separate_and_threads_can_share_the_file(pair, db):
    made = {}
    for key in ("one", "two"):  # one name for both: names are labels, the ids tell sessions apart
        made[key] = review.create_session("same name", review.demo_items(10, 14), arch="demo", seed=5, db=db)
    ids = {k: m.info.id for k, m in made.items()}
    assert ids["one"] != ids["two"] and made["one"].invite_code != made["two"].invite_code
    who = {k: review.join(made[k].invite_code, "r", db=db)[0] for k in made}
    with pytest.raises(ValueError, match="not been shown"):
        review.record_verdict(ids["one"], who["one"].reviewer, 0, "A", db=db)
    # same seed, same sides: the assignment is a function of the seed alone
    assert [it.a_variant for it in review.items(ids["one"], db=db)] == [
        it.a_variant for it in review.items(ids["two"], db=db)]
    for k in made:
        for pos in range(4):
            review.show(ids[k], who[k].reviewer, pos, pair=pair, db=db)
    with pytest.raises(ValueError, match="verdict is one of"):
        review.record_verdict(ids["one"], who["one"].reviewer, 0, "C", db=db)

    jobs = [(ids[k], who[k].reviewer, pos, v) for k in made for pos, v in enumerate(("A", "B", "tie", "A"))]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda j: review.record_verdict(*j, db=db), jobs))
        list(pool.map(lambda _: review.progress(ids["one"], who["one"].reviewer, db=db), range(16)))
    for k in made:
        assert review.progress(ids[k], who[k].reviewer, db=db)["counts"] == {"A": 2, "B": 1, "tie": 1, "neither": 0}
    assert [s.id for s in review.sessions(db=db)] == sorted(ids.values(), key=[ids["one"], ids["two"]].index)
    review.delete_session(ids["two"], db=db)
    assert [s.id for s in review.sessions(db=db)] == [ids["one"]]
    assert review.progress(ids["one"], who["one"].reviewer, db=db)["n_done"] == 4
    with pytest.raises(review.AccessDenied):
        review.authorize(made["two"].organiser_token, db=db)


def test_photo_folder_with_optional_human_maps(pair, db, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("chelsea.jpg", "coffee.jpg"):
        (folder / name).write_bytes((EXAMPLES / name).read_bytes())
    yy, xx = np.mgrid[0:120, 0:160]
    blob = (255 * np.exp(-((yy - 50) ** 2 + (xx - 90) ** 2) / 800.0)).astype(np.uint8)
    Image.fromarray(blob, "L").save(folder / "chelsea.human.png")
    sources = review.photo_items(folder)
    assert [(Path(s.ref).name, s.human and Path(s.human).name) for s in sources] == [
        ("chelsea.jpg", "chelsea.human.png"), ("coffee.jpg", None)]
    made = review.create_session("photos", sources, arch="demo", seed=0, db=db)
    me = review.join(made.invite_code, "me", db=db)[0]
    for verdict in ("A", "B"):
        shown = review.show(me.session, me.reviewer, pair=pair, db=db)
        review.record_verdict(me.session, me.reviewer, shown.item.position, verdict, db=db)
    chelsea, coffee = review.items(me.session, db=db)
    assert all(chelsea.spearman(v, m) is not None for v in zoo.VARIANTS for m in MAPS)
    assert all(coffee.spearman(v, m) is None for v in zoo.VARIANTS for m in MAPS)
    r = review.reveal(me.session, db=db)
    assert all(r["agreement"][m]["left_out"] >= 1 for m in MAPS)  # coffee has no human map to agree with
    rows = list(csv.DictReader(open(review.export_csv(me.session, tmp_path / "p.csv", db=db), newline="")))
    assert [(r_["ref"], r_["human"]) for r_ in rows] == [("chelsea.jpg", "chelsea.human.png"), ("coffee.jpg", "")]
