"""Review sessions over uploaded photos, through the Review tab's functions: the photos are kept beside the
database in the session's own folder (Gradio's upload folder is temporary), their human maps are paired by
name, bad files are refused."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from app_fixtures import EXAMPLES, blob_map, write_map
from dclsviz import review
from dclsviz.ui import review_tab, service


@pytest.fixture
def cfg(tmp_path):
    return service.AppConfig(export_dir=tmp_path / "exports", evaluation_dir=tmp_path / "runs",
                             review_db=tmp_path / "data" / "review.sqlite", download=False)


def test_uploaded_photos_make_a_session_that_outlives_the_uploads(cfg, tmp_path):
    uploads = tmp_path / "gradio-upload"
    uploads.mkdir()
    photos = [shutil.copy(p, uploads / p.name) for p in EXAMPLES[:2]]
    w, h = Image.open(EXAMPLES[0]).size
    human = write_map(uploads / f"{EXAMPLES[0].stem}.human.png", blob_map(w, h))
    made = review_tab.create("u-1", "uploads", None, 0, 0, [str(p) for p in photos] + [str(human)], "demo", "",
                              "paper", 0.3, cfg)
    assert made.info.n_items == 2
    shutil.rmtree(uploads)  # Gradio cleans its upload folder; the session must not care
    me = review_tab.access(review_tab.join(made.invite_code, "me", cfg)[1], cfg)

    first = review_tab.show_next(me, cfg)
    assert first.item.source.kind == "photo" and first.item.source.human is not None
    assert first.comparison.human is not None  # the map uploaded beside the photo was paired by name
    assert all(first.item.spearman(v, "gradcam") is not None for v in ("baseline", "dcls"))
    review_tab.verdict(me, first.item.position, "B", "", cfg)
    second = review_tab.show_next(me, cfg)
    assert second.item.source.human is None and second.comparison.human is None
    review_tab.verdict(me, second.item.position, "neither", "no map", cfg)
    assert review_tab.show_next(me, cfg) is None
    assert review.reveal(made.info.id, db=cfg.review_db)["n_verdicts"] == 2
    csv_text = open(review_tab.export(me, cfg)).read()
    assert csv_text.count("\n") == 3 and "no map" in csv_text
    assert str(cfg.review_db.parent) not in csv_text  # file names only, never a server folder


def test_a_bad_upload_is_refused_before_the_session_exists(cfg, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    bad.with_name("x.txt").write_text("a note")
    with pytest.raises(service.UserError, match="notes.jpg"):
        review_tab.create("u-2", "uploads", None, 0, 0, [str(EXAMPLES[0]), str(bad)], "demo", "", "paper", 0.3,
                           cfg)
    assert review.sessions(cfg.review_db) == []
    assert not list((cfg.review_db.parent / "review_photos").glob("*/*"))  # nothing of the refused upload is kept
    with pytest.raises(service.UserError, match="x.txt is not an image"):
        review_tab.create("u-2", "uploads", None, 0, 0, [str(bad.with_name("x.txt"))], "demo", "", "paper", 0.3,
                           cfg)
    with pytest.raises(service.UserError, match="upload the photos"):
        review_tab.create("u-2", "uploads", None, 0, 0, [], "demo", "", "paper", 0.3, cfg)
    with pytest.raises(service.UserError, match="session name is required"):
        review_tab.create("  ", "shard", "", 0, 5, None, "demo", "", "paper", 0.3, cfg)


def test_unavailable_checkpoints_are_said_when_the_session_starts(cfg):
    made = review_tab.create("paper-1", "shard", "", 0, 2, None, "convnext_tiny", "5", "paper", 0.3, cfg)
    me = review.join(made.invite_code, "me", db=cfg.review_db)[0]
    with pytest.raises(service.CheckpointProblem, match="convnext_tiny"):
        review_tab.show_next(me, cfg)
    # nothing was shown, so nothing is judged, and the session waits for the checkpoints
    assert review.progress(made.info.id, me.reviewer, db=cfg.review_db)["next_position"] == 0
