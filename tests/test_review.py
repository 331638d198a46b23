"""Blind review sessions on a real SQLite file with the demo pair: sides, reveal, crash safety, export."""

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
    review.create_session("s", review.demo_items(0, len(plan)), arch="demo", seed=3, db=db)
    sides, expected_agree = [], {m: [0, 0] for m in MAPS}
    for want in plan:
        shown = review.show("s", pair=pair, db=db)
        dcls_side, mine = side_of_dcls(shown, pair)
        assert shown.item.a_variant == (DCLS if dcls_side == "A" else BASE)  # the DB says what was shown
        sides.append(dcls_side)
        if want in ("tie", "neither"):
            verdict = want
        else:
            verdict = dcls_side if want == DCLS else ("B" if dcls_side == "A" else "A")
            other = BASE if want == DCLS else DCLS
            for m in MAPS:
                rc, ro = mine[want].scores[m]["spearman"], mine[other].scores[m]["spearman"]
                if rc is not None and ro is not None and rc != ro:
                    expected_agree[m][0] += 1
                    expected_agree[m][1] += rc > ro
        review.record_verdict("s", shown.item.position, verdict, note=f"meant {want}", db=db)
    assert set(sides) == {"A", "B"}, "the seed should put DCLS on both sides"
    assert review.show("s", pair=pair, db=db) is None and review.next_item("s", db=db) is None

    r = review.reveal("s", db=db)
    assert (r["dcls_preferred"], r["baseline_preferred"], r["ties"], r["neither"]) == (4, 2, 1, 1)
    assert r["preference"]["rate"] == pytest.approx(4 / 6) and 0 < r["preference"]["p"] <= 1
    assert r["dcls_was_a"] == sides.count("A")
    for m in MAPS:
        assert (r["agreement"][m]["n"], r["agreement"][m]["agreed"]) == tuple(expected_agree[m])

    path = review.export_csv("s", tmp_path / "s.csv", db=db)
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
    review.create_session("crash", review.demo_items(0, 6), arch="demo", seed=1)
    for verdict in ("A", "B", "tie", "neither"):
        shown = review.show("crash", device="cpu")
        review.record_verdict("crash", shown.item.position, verdict, note="note " + verdict)
    print("recorded", flush=True)
    time.sleep(300)
""")


def test_verdicts_survive_a_hard_kill(pair, db, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), review.DB_ENV: str(db), "DCLSVIZ_CACHE": str(tmp_path / "c")}
    proc = subprocess.Popen([sys.executable, "-c", WRITER], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "recorded", proc.stderr.read()[-3000:]
        proc.kill()  # SIGKILL: no cleanup, no checkpoint of the WAL
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -9

    p = review.progress("crash", db=db)
    assert (p["n_items"], p["n_done"], p["next_position"]) == (6, 4, 4)
    assert p["counts"] == {"A": 1, "B": 1, "tie": 1, "neither": 1}
    done = review.items("crash", db=db)
    assert [(it.verdict, it.note) for it in done[:4]] == [(v, f"note {v}") for v in ("A", "B", "tie", "neither")]
    assert all(it.scores is not None and it.shown_at for it in done[:4])
    rows = list(csv.DictReader(open(review.export_csv("crash", tmp_path / "c.csv", db=db), newline="")))
    assert [r["verdict"] for r in rows] == ["A", "B", "tie", "neither"]

    # the session carries on where it stopped
    shown = review.show("crash", pair=pair, db=db)
    assert shown.item.position == 4
    review.record_verdict("crash", 4, "A", db=db)
    assert review.progress("crash", db=db)["next_position"] == 5


def test_sessions_are_separate_and_threads_can_share_the_file(pair, db):
    for name in ("one", "two"):
        review.create_session(name, review.demo_items(10, 14), arch="demo", seed=5, db=db)
    with pytest.raises(ValueError, match="already exists"):
        review.create_session("one", review.demo_items(0, 2), arch="demo", db=db)
    with pytest.raises(ValueError, match="not been shown"):
        review.record_verdict("one", 0, "A", db=db)
    # same seed, same sides: the assignment is a function of the seed alone
    assert [it.a_variant for it in review.items("one", db=db)] == [it.a_variant for it in review.items("two", db=db)]
    for name in ("one", "two"):
        for pos in range(4):
            review.show(name, pos, pair=pair, db=db)
    with pytest.raises(ValueError, match="verdict is one of"):
        review.record_verdict("one", 0, "C", db=db)

    jobs = [(name, pos, verdict) for name in ("one", "two") for pos, verdict in enumerate(("A", "B", "tie", "A"))]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda j: review.record_verdict(*j, db=db), jobs))
        list(pool.map(lambda _: review.progress("one", db=db), range(16)))
    for name in ("one", "two"):
        assert review.progress(name, db=db)["counts"] == {"A": 2, "B": 1, "tie": 1, "neither": 0}
    assert [s.name for s in review.sessions(db=db)] == ["one", "two"]
    review.delete_session("two", db=db)
    assert [s.name for s in review.sessions(db=db)] == ["one"] and review.progress("one", db=db)["n_done"] == 4


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
    review.create_session("photos", sources, arch="demo", seed=0, db=db)
    for verdict in ("A", "B"):
        shown = review.show("photos", pair=pair, db=db)
        review.record_verdict("photos", shown.item.position, verdict, db=db)
    chelsea, coffee = review.items("photos", db=db)
    assert all(chelsea.spearman(v, m) is not None for v in zoo.VARIANTS for m in MAPS)
    assert all(coffee.spearman(v, m) is None for v in zoo.VARIANTS for m in MAPS)
    r = review.reveal("photos", db=db)
    assert all(r["agreement"][m]["left_out"] >= 1 for m in MAPS)  # coffee has no human map to agree with
