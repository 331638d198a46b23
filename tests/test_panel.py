"""panel.png, the figure the app exports and `explain` writes: what it says and that its parts do not collide."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dclsviz import render, zoo
from dclsviz.compare import MAPS, Sample, compare
from dclsviz.demo import CLASS_NAMES
from dclsviz.runtime import Runtime

pytest.register_assert_rewrite("app_fixtures")
from app_fixtures import DEMO_SHARD, EXAMPLES, REPO  # noqa: E402


@pytest.fixture(scope="module")
def pair():
    return Runtime("cpu").load_pair("demo")


@pytest.fixture(scope="module")
def record(pair):
    from dclsviz import clickme

    return compare(pair, Sample.from_clickme(clickme.ClickMeShard(str(DEMO_SHARD))[2]))


def _panel(comparison, cmap="jet") -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(render.panel_png(comparison, CLASS_NAMES, 0.5, cmap))).convert("RGB"))


def test_texts_name_the_model_and_only_the_shard_file(record):
    texts = render.panel_texts(record, CLASS_NAMES)
    assert texts["heading"].startswith(f"demo · {DEMO_SHARD.name}:2 ·")
    assert str(DEMO_SHARD.parent) not in json.dumps(texts)
    for v, title in (("baseline", "Baseline"), ("dcls", "DCLS")):
        map_titles = [t for t, _ in texts[v][1:]]
        assert [t.split("\n")[0] for t in map_titles] == [f"{title} Grad-CAM", f"{title} Threshold-Grad-CAM"]
        assert all(("Dice " in cap and "IoU " in cap) for _, cap in texts[v][1:])


def test_undefined_rho_shows_no_overlap_scores(pair):
    image = np.asarray(Image.open(EXAMPLES[0]).convert("RGB"))
    flat = compare(pair, Sample.from_image(image, np.full(image.shape[:2], 7, np.uint8), name=str(EXAMPLES[0])))
    assert all(o.scores[m].spearman is None for o in flat.outputs.values() for m in MAPS)
    texts = render.panel_texts(flat, CLASS_NAMES)
    assert texts["heading"].split(" · ")[1] == EXAMPLES[0].name
    for v in zoo.VARIANTS:
        assert [cap for _, cap in texts[v][1:]] == ["Dice — · IoU —"] * len(MAPS)


def test_panel_ends_with_the_colour_scale_of_its_colormap(record):
    for cmap in ("jet", "viridis"):
        panel = _panel(record, cmap)
        ramp = render.colorize(np.linspace(0, 1, 11, dtype=np.float32)[None, :], cmap)[0].astype(int)
        # the strip's bar is the last non-white band of saturated colour: find a row holding both ends of the ramp
        rows = [panel[y].astype(int) for y in range(panel.shape[0] - 60, panel.shape[0])]
        hits = [r for r in rows if np.abs(r - ramp[0]).sum(axis=1).min() < 12 and
                np.abs(r - ramp[-1]).sum(axis=1).min() < 12]
        assert hits, f"no {cmap} colour scale at the bottom of the panel"


def test_cells_keep_titles_and_captions_off_the_pictures(record):
    """Every picture sits untouched in its band, and the margins between cells stay white: no title or caption
    is drawn over a map or runs across a cell's edge."""
    panel = _panel(record)
    top_h, head = render._FONT_SIZE + 16, 2 * (render._FONT_SIZE + 5) + 6
    side = round(224 * render.PANEL_SCALE)
    tile_w, tile_h = side + 16, side + 2 * head
    img = record.frame_image()
    for row, o in enumerate(record.outputs.values()):
        pictures = [render.overlay(img, o.human), *(render.overlay(img, o.maps[m]) for m in MAPS)]
        y = top_h + row * tile_h + head
        for k, pic in enumerate(pictures):
            want = np.asarray(Image.fromarray(pic).resize((side, side), Image.BILINEAR)).astype(int)
            got = panel[y:y + side, k * tile_w + 8:k * tile_w + 8 + side].astype(int)
            assert np.abs(got - want).max() <= 1, f"cell {row},{k}: the picture is covered or misplaced"
            if k:
                edge = panel[top_h + row * tile_h:top_h + (row + 1) * tile_h, k * tile_w - 8:k * tile_w + 8]
                assert (edge > 240).all(), f"something runs across the edge before cell {row},{k}"


def test_explain_writes_the_panel(tmp_path):
    r = subprocess.run([sys.executable, "-m", "dclsviz", "explain", "--clickme", f"{DEMO_SHARD}:2", "--arch", "demo",
                        "--variant", "dcls", "--device", "cpu", "--out", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    panel = Image.open(tmp_path / "panel.png")
    assert panel.format == "PNG" and panel.width >= 3 * round(224 * render.PANEL_SCALE)
