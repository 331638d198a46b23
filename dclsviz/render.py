"""Pictures and files made from a Comparison: overlays, the side-by-side panel, the export bundle."""

from __future__ import annotations

import functools
import io
import json
import zipfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .compare import MAP_TITLES, Comparison

COLORMAPS = ("jet", "turbo", "inferno", "viridis", "magma")
VARIANT_TITLES = {"baseline": "Baseline", "dcls": "DCLS"}


def normalise(m: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] for display; a constant map shows as 0 (nothing stands out)."""
    m = np.nan_to_num(np.asarray(m, np.float32))
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def colorize(m: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """A map as RGB uint8 through ``cmap``, after scaling it to [0, 1] (a constant map gives the colormap's low end)."""
    import matplotlib

    if cmap not in COLORMAPS:
        raise ValueError(f"colormap must be one of {COLORMAPS}")
    return (matplotlib.colormaps[cmap](normalise(m))[..., :3] * 255).round().astype(np.uint8)


def overlay(image: np.ndarray, m: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a map over a same-sized RGB uint8 image; alpha 0 shows the image, 1 the map."""
    alpha = float(np.clip(alpha, 0.0, 1.0))
    heat = colorize(m, cmap).astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + heat * alpha).round().clip(0, 255).astype(np.uint8)


def fmt_rho(rho: Optional[float], has_human: bool) -> str:
    """ρ as the app and the panel caption it: signed to three places, or why there is none."""
    if not has_human:
        return "ρ: no human map"
    return "ρ undefined (constant map)" if rho is None else f"ρ = {rho:+.3f}"


def colormap_stops(cmap: str = "jet", n: int = 11) -> list[str]:
    """``n`` evenly spaced colours of ``cmap`` from low to high, as CSS hex, for a colour scale drawn elsewhere."""
    ramp = colorize(np.linspace(0.0, 1.0, n, dtype=np.float32)[None, :], cmap)[0]
    return ["#%02x%02x%02x" % tuple(int(c) for c in rgb) for rgb in ramp]


def public_name(name: str) -> str:
    """A sample's name without the server's folders: a record "SHARD:INDEX" keeps the shard's file name."""
    shard, sep, index = name.rpartition(":")
    if sep and index.isdigit():
        return f"{Path(shard).name}:{index}"
    return Path(name).name if name else name


PANEL_SCALE = 1.5  # each 224×224 map is drawn at 336×336
_FONT_SIZE = 15
_MIN_FONT_SIZE = 9
COLORBAR_LABEL = "map value, each map scaled to its own range"


@functools.lru_cache(maxsize=16)
def _font(size: int):
    from PIL import ImageFont
    import matplotlib

    # matplotlib's bundled DejaVu Sans has ρ, Δ and ·, which PIL's default bitmap font lacks
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return ImageFont.truetype(str(path), size) if path.is_file() else ImageFont.load_default()


def _fitted_font(draw, text: str, width: int, size: int):
    """The largest font, from ``size`` down, in which ``text`` fits ``width`` pixels: a long class or file name
    shrinks rather than spilling into its neighbour."""
    while size > _MIN_FONT_SIZE and draw.textlength(text, font=_font(size)) > width:
        size -= 1
    return _font(size)


def _text(draw, xy: tuple, text: str, width: int, size: int) -> None:
    draw.text(xy, text, fill="black", font=_fitted_font(draw, text, width, size), anchor="mt")


def _tile(picture: np.ndarray, title: str, caption: str = ""):
    """One panel cell: a title (one or two lines) above the picture, a caption (one or two lines) below; each
    line has its own band, so nothing overlaps."""
    from PIL import Image, ImageDraw

    pic = Image.fromarray(picture).resize((round(picture.shape[1] * PANEL_SCALE),
                                           round(picture.shape[0] * PANEL_SCALE)), Image.BILINEAR)
    line = _FONT_SIZE + 5
    head, foot = 2 * line + 6, 2 * line + 6
    tile = Image.new("RGB", (pic.width + 16, pic.height + head + foot), "white")
    draw = ImageDraw.Draw(tile)
    for i, text in enumerate(title.split("\n")[:2]):
        _text(draw, (tile.width // 2, 4 + i * line), text, tile.width - 8, _FONT_SIZE)
    tile.paste(pic, (8, head))
    for i, text in enumerate(caption.split("\n")[:2] if caption else []):
        _text(draw, (tile.width // 2, head + pic.height + 4 + i * line), text, tile.width - 8, _FONT_SIZE - 2)
    return tile


def colorbar_strip(width: int, cmap: str = "jet"):
    """A thin horizontal colour scale of ``cmap`` labelled low → high, ``width`` pixels wide (PIL image)."""
    from PIL import Image, ImageDraw

    bar_w, bar_h, pad = min(width - 200, 480), 14, 8
    strip = Image.new("RGB", (width, bar_h + 2 * pad + _FONT_SIZE + 4), "white")
    ramp = colorize(np.linspace(0.0, 1.0, bar_w, dtype=np.float32)[None, :], cmap)
    x0 = (width - bar_w) // 2
    strip.paste(Image.fromarray(np.repeat(ramp, bar_h, axis=0)), (x0, pad))
    draw = ImageDraw.Draw(strip)
    font = _font(_FONT_SIZE - 2)
    draw.text((x0 - 8, pad + bar_h // 2), "low", fill="black", font=font, anchor="rm")
    draw.text((x0 + bar_w + 8, pad + bar_h // 2), "high", fill="black", font=font, anchor="lm")
    draw.text((width // 2, pad + bar_h + 4), COLORBAR_LABEL, fill="black", font=font, anchor="mt")
    return strip


def _overlap_text(scores) -> str:
    """Dice and IoU of one map's ``MapScores``, "—" where ρ is undefined (an overlap of a map with no ranking
    means nothing)."""
    if scores.spearman is None:
        return "Dice — · IoU —"
    fmt = (lambda value: "—" if value is None else f"{value:.3f}")
    return f"Dice {fmt(scores.dice)} · IoU {fmt(scores.iou)}"


def panel_texts(c: Comparison, class_names: Sequence[str]) -> dict:
    """Every text of ``panel_png``: {"heading": str, variant: [(title, caption) of the human/image cell, then of
    each map's cell]}. Names the input by its file name only: the figure leaves the server."""
    arch = next(iter(c.outputs.values())).provenance.arch
    out: dict = {"heading": f"{arch} · {public_name(c.sample.name) or 'upload'} · geometry {c.geometry} · "
                            f"threshold {c.threshold:g}"}
    for v, o in c.outputs.items():
        title = VARIANT_TITLES.get(v, v)
        top = o.top5[0]
        target = f"target {class_names[o.target]}"
        cells = [(f"{title}: human map", f"{target}\ntop-1 {class_names[top[0]]} ({top[1]:.2f})")
                 if o.human is not None else (f"{title}: image", f"no human map\n{target}")]
        for m in o.maps:  # the maps the comparison carries: the paper's two unless other methods were asked
            cells.append((f"{title} {MAP_TITLES[m]}\n{fmt_rho(o.scores[m].spearman, o.human is not None)}",
                          _overlap_text(o.scores[m]) if o.human is not None else ""))
        out[v] = cells
    return out


def panel_png(c: Comparison, class_names: Sequence[str], alpha: float = 0.5, cmap: str = "jet") -> bytes:
    """One figure for reports: per model, the human map and both CAM overlays with their scores, under a
    heading (pair, the input's file name, settings) and over a colour scale.

    Composed with PIL rather than drawn with matplotlib: it is made for every comparison the app serves, and
    PIL's resampling and PNG encoding release the GIL, so concurrent requests are not serialised on it."""
    from PIL import Image, ImageDraw

    texts, img = panel_texts(c, class_names), c.frame_image()
    rows = []
    for v, o in c.outputs.items():
        pictures = [overlay(img, o.human, alpha, cmap) if o.human is not None else img]
        pictures += [overlay(img, o.maps[m], alpha, cmap) for m in o.maps]
        rows.append([_tile(pic, title, caption) for pic, (title, caption) in zip(pictures, texts[v])])
    w, h, top_h = max(sum(t.width for t in r) for r in rows), sum(r[0].height for r in rows), _FONT_SIZE + 16
    bar = colorbar_strip(w, cmap)
    panel = Image.new("RGB", (w, top_h + h + bar.height), "white")
    _text(ImageDraw.Draw(panel), (w // 2, 6), texts["heading"], w - 16, _FONT_SIZE + 1)
    y = top_h
    for row in rows:
        x = 0
        for tile in row:
            panel.paste(tile, (x, y))
            x += tile.width
        y += row[0].height
    panel.paste(bar, (0, y))
    buf = io.BytesIO()
    panel.save(buf, "PNG", compress_level=1)  # a report picture: a fast encode beats a few more kB
    return buf.getvalue()


def write_png(picture: np.ndarray, path: Path) -> str:
    """``picture`` (RGB uint8) as a PNG at ``path``, encoded fast: Gradio's own encoding of an array costs
    ~20 ms per 224×224 overlay, five per comparison; this one ~3 ms, for a slightly larger file."""
    from PIL import Image

    Image.fromarray(picture).save(path, "PNG", compress_level=1)
    return str(path)


def export_bundle(c: Comparison, class_names: Sequence[str], alpha: float = 0.5, cmap: str = "jet") -> bytes:
    """A zip: panel.png, every map as .npy (224×224 float32, the comparison frame), manifest.json."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("panel.png", panel_png(c, class_names, alpha, cmap))
        for v, o in c.outputs.items():
            for name in o.maps:
                z.writestr(f"{v}_{name}.npy", _npy(o.maps[name]))
                z.writestr(f"{v}_{name}_lowres.npy", _npy(o.lowres[name]))
        if c.human is not None:
            z.writestr("human.npy", _npy(c.human))
        z.writestr("manifest.json", json.dumps(c.manifest(class_names), indent=1))
    return buf.getvalue()


def _npy(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.save(b, np.asarray(a, np.float32))
    return b.getvalue()
