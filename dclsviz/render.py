"""Pictures and files made from a Comparison: overlays, the side-by-side panel, the export bundle."""

from __future__ import annotations

import io
import json
import zipfile
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


def panel_png(c: Comparison, class_names: Sequence[str], alpha: float = 0.5, cmap: str = "jet") -> bytes:
    """One figure for reports: per model, the human map and both CAM overlays with their Spearman."""
    # the object API only: pyplot's global figure state is not safe in the app's worker threads
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    img = c.frame_image()
    variants = list(c.outputs)
    fig = Figure(figsize=(9.6, 3.4 * len(variants)), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(variants), 3, squeeze=False)
    for r, v in enumerate(variants):
        o = c.outputs[v]
        ax = axes[r, 0]
        if o.human is not None:
            ax.imshow(overlay(img, o.human, alpha, cmap))
            ax.set_title(f"{VARIANT_TITLES.get(v, v)}: human map", fontsize=10)
        else:
            ax.imshow(img)
            ax.set_title(f"{VARIANT_TITLES.get(v, v)}: image (no human map)", fontsize=10)
        for k, name in enumerate(MAPS, start=1):
            axes[r, k].imshow(overlay(img, o.maps[name], alpha, cmap))
            axes[r, k].set_title(f"{MAP_TITLES[name]}\n{fmt_rho(o.scores[name]['spearman'], o.human is not None)}",
                                 fontsize=10)
        top = o.top5[0]
        axes[r, 0].set_xlabel(f"target {class_names[o.target]} · top-1 {class_names[top[0]]} ({top[1]:.2f})",
                              fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    arch = next(iter(c.outputs.values())).provenance["id"].split(".")[0]
    fig.suptitle(f"{arch} · {c.sample.name or 'upload'} · geometry {c.geometry} · threshold {c.threshold}",
                 fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


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
