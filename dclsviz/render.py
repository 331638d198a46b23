"""Pictures and files made from a Comparison: overlays, the side-by-side panel, the export bundle."""

from __future__ import annotations

import functools
import io
import json
import zipfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .compare import MAP_TITLES, MAPS, Comparison

COLORMAPS = ("jet", "turbo", "inferno", "viridis", "magma")
VARIANT_TITLES = {"baseline": "Baseline", "dcls": "DCLS"}


def normalise(m: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] for display; a constant map shows as 0 (nothing stands out)."""
    m = np.nan_to_num(np.asarray(m, np.float32))
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def colorize(m: np.ndarray, cmap: str = "jet") -> np.ndarray:
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
    if not has_human:
        return "ρ: no human map"
    return "ρ undefined (constant map)" if rho is None else f"ρ = {rho:+.3f}"


PANEL_SCALE = 1.5  # each 224×224 map is drawn at 336×336
_FONT_SIZE = 15


@functools.lru_cache(maxsize=4)
def _font(size: int):
    from PIL import ImageFont
    import matplotlib

    # matplotlib's bundled DejaVu Sans has ρ, Δ and ·, which PIL's default bitmap font lacks
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return ImageFont.truetype(str(path), size) if path.is_file() else ImageFont.load_default()


def _tile(picture: np.ndarray, title: str, caption: str = ""):
    """One panel cell: a title (one or two lines) above the picture, an optional caption below."""
    from PIL import Image, ImageDraw

    pic = Image.fromarray(picture).resize((round(picture.shape[1] * PANEL_SCALE),
                                           round(picture.shape[0] * PANEL_SCALE)), Image.BILINEAR)
    line = _FONT_SIZE + 5
    head, foot = 2 * line + 6, (line if caption else 0) + 6
    tile = Image.new("RGB", (pic.width + 16, pic.height + head + foot), "white")
    draw = ImageDraw.Draw(tile)
    for i, text in enumerate(title.split("\n")):
        draw.text((tile.width // 2, 4 + i * line), text, fill="black", font=_font(_FONT_SIZE), anchor="mt")
    tile.paste(pic, (8, head))
    if caption:
        draw.text((tile.width // 2, head + pic.height + 4), caption, fill="black", font=_font(_FONT_SIZE - 3),
                  anchor="mt")
    return tile


def panel_png(c: Comparison, class_names: Sequence[str], alpha: float = 0.5, cmap: str = "jet") -> bytes:
    """One figure for reports: per model, the human map and both CAM overlays with their Spearman.

    Composed with PIL rather than drawn with matplotlib: it is made for every comparison the app serves, and
    PIL's resampling and PNG encoding release the GIL, so concurrent requests are not serialised on it."""
    from PIL import Image, ImageDraw

    img = c.frame_image()
    rows = []
    for v, o in c.outputs.items():
        title = VARIANT_TITLES.get(v, v)
        top = o.top5[0]
        caption = f"target {class_names[o.target]} · top-1 {class_names[top[0]]} ({top[1]:.2f})"
        first = (_tile(overlay(img, o.human, alpha, cmap), f"{title}: human map", caption) if o.human is not None
                 else _tile(img, f"{title}: image (no human map)", caption))
        rows.append([first] + [_tile(overlay(img, o.maps[m], alpha, cmap),
                                     f"{MAP_TITLES[m]}\n{fmt_rho(o.scores[m].spearman, o.human is not None)}")
                               for m in MAPS])
    arch = next(iter(c.outputs.values())).provenance.arch
    heading = f"{arch} · {c.sample.name or 'upload'} · geometry {c.geometry} · threshold {c.threshold}"
    w, h, top_h = sum(t.width for t in rows[0]), sum(r[0].height for r in rows), _FONT_SIZE + 16
    panel = Image.new("RGB", (w, h + top_h), "white")
    ImageDraw.Draw(panel).text((w // 2, 6), heading, fill="black", font=_font(_FONT_SIZE + 1), anchor="mt")
    y = top_h
    for row in rows:
        x = 0
        for tile in row:
            panel.paste(tile, (x, y))
            x += tile.width
        y += row[0].height
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
            for name in MAPS:
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
