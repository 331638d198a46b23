"""The study's tables and figures, drawn from a summary (``evaluate.build_summary``): Table 1, the per-method
table, Figure 2 (baseline against DCLS), the robustness figure (Δρ per method) and plausibility against
faithfulness. Files only, through matplotlib's object API (its global-state interface is not safe in the app's
worker threads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .compare import MAP_TITLES, MAPS
from .faithfulness import Faithfulness


def table1(models: dict, archs: Sequence[str]) -> str:
    """The paper's Table 1 layout: ceiling-normalised ρ, rows = architectures, Grad-CAM then Threshold."""
    def cell(a, v, m):
        s = models.get(a, {}).get(v, {}).get(m, {}).get("ceiling_normalised")
        return f"{s:.4f}" if s is not None else "-"

    w = max([len(a) for a in archs] + [12])
    groups = [MAP_TITLES[m] for m in MAPS]
    lines = [f"{'':{w}}  " + "  ".join(f"{g:^19}" for g in groups),
             f"{'architecture':{w}}  " + "  ".join(f"{'baseline':>9} {'DCLS':>9}" for _ in MAPS)]
    lines.append("-" * len(lines[1]))
    for a in archs:
        lines.append(f"{a:{w}}  " + "  ".join(f"{cell(a, 'baseline', m):>9} {cell(a, 'dcls', m):>9}"
                                               for m in MAPS))
    return "\n".join(lines)


def scatter(models: dict, path: Path, title: str) -> bool:
    """The paper's Figure 2: baseline score (x) against DCLS score (y), one labelled point per model and CAM, for
    those of the paper's two maps the run scored (a run of other methods may have neither)."""
    points = [(a, m, models[a]["baseline"][m]["ceiling_normalised"], models[a]["dcls"][m]["ceiling_normalised"])
              for a in models if {"baseline", "dcls"} <= models[a].keys() for m in MAPS
              if m in models[a]["baseline"] and m in models[a]["dcls"]]
    points = [p for p in points if p[2] is not None and p[3] is not None]
    if not points:
        return False
    # the object API only: matplotlib's global-state interface is not safe in the app's worker threads
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    markers = {"gradcam": "o", "threshold_gradcam": "^"}
    tab10 = matplotlib.colormaps["tab10"]
    colours = {a: tab10(i % 10) for i, a in enumerate(dict.fromkeys(p[0] for p in points))}
    fig = Figure(figsize=(6, 6), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    xs = [p[2] for p in points] + [p[3] for p in points]
    lo, hi = min(xs), max(xs)
    # room for the markers and their labels: a point at the extremes stays inside the axes, not on its edge
    pad = 0.15 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.5", lw=1, ls="--", zorder=0)
    for a, m, x, y in points:
        ax.scatter(x, y, marker=markers[m], s=60, color=colours[a], edgecolor="black", lw=0.5, zorder=2)
        ax.annotate(a, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    ax.set_xlabel("baseline alignment (ceiling-normalised Spearman)")
    ax.set_ylabel("DCLS alignment (ceiling-normalised Spearman)")
    ax.set_title(title, fontsize=9)
    drawn = [m for m in MAPS if any(p[1] == m for p in points)]
    ax.legend(handles=[Line2D([], [], marker=markers[m], ls="", color="0.3", label=MAP_TITLES[m]) for m in drawn]
              + [Line2D([], [], color="0.5", ls="--", label="y = x")], loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return True


def _fmt(v, spec: str = "{:.4f}") -> str:
    return "-" if v is None else spec.format(v)


def methods_table(summary: dict) -> str:
    """The per-method block of table1.txt: per arch and method the mean ρ of each variant, Δρ (DCLS − baseline)
    with its 95 % CI and Wilcoxon p, and with faithfulness the mean deletion, insertion and ROAD per variant."""
    models, paired, faithful = summary["models"], summary["paired"], summary.get("faithfulness", False)
    w = max([len(a) for a in summary["archs"]] + [12])
    head = (f"{'architecture':{w}}  {'method':22} {'ρ baseline':>10} {'ρ DCLS':>9} {'Δρ':>8} {'95% CI':>19} "
            f"{'Wilcoxon p':>10}")
    if faithful:
        head += "  " + "  ".join(f"{f + ' b/d':>15}" for f in Faithfulness.FIELDS)
    lines = ["Per method: mean Spearman ρ per variant, Δρ = DCLS − baseline" +
             ("; faithfulness means baseline/DCLS (deletion: lower is more faithful; insertion, ROAD: higher)"
              if faithful else ""), head, "-" * len(head)]
    for a in summary["archs"]:
        for m in summary.get("methods", MAPS):
            cell = {v: models.get(a, {}).get(v, {}).get(m, {}) for v in ("baseline", "dcls")}
            p = paired.get(a, {}).get(m, {})
            ci = f"[{p['ci'][0]:+.4f}, {p['ci'][1]:+.4f}]" if p.get("ci") else "-"
            line = (f"{a:{w}}  {MAP_TITLES.get(m, m):22} {_fmt(cell['baseline'].get('mean_spearman')):>10} "
                    f"{_fmt(cell['dcls'].get('mean_spearman')):>9} {_fmt(p.get('mean_delta'), '{:+.4f}'):>8} "
                    f"{ci:>19} {_fmt(p.get('wilcoxon', {}).get('p'), '{:.3g}'):>10}")
            if faithful:
                pair = ("/".join(_fmt(cell[v].get(f"mean_{f}"), "{:.3f}") for v in ("baseline", "dcls"))
                        for f in Faithfulness.FIELDS)
                line += "  " + "  ".join(f"{t:>15}" for t in pair)
            lines.append(line)
    return "\n".join(lines)


def _figure(width: float, height: float):
    # the object API only: matplotlib's global-state interface is not safe in the app's worker threads
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=150)
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def robustness(summary: dict, path: Path, title: str) -> bool:
    """robustness.png: mean Δρ (DCLS − baseline) with its 95 % bootstrap CI, one row per method, one marker per
    architecture. Points right of the zero line: DCLS aligns better with that method."""
    import matplotlib

    methods = list(summary.get("methods", MAPS))
    archs = [a for a in summary["archs"] if a in summary["paired"]]
    points = [(a, m, summary["paired"][a][m]) for a in archs for m in methods
              if summary["paired"][a].get(m, {}).get("mean_delta") is not None]
    if not points:
        return False
    fig, ax = _figure(7, 1.2 + 0.45 * len(methods) * max(1, len(archs)) ** 0.5)
    tab10 = matplotlib.colormaps["tab10"]
    step = 0.7 / max(1, len(archs))
    for k, a in enumerate(archs):
        mine = [(methods.index(m), p) for b, m, p in points if b == a]
        ys = [len(methods) - 1 - i + (k - (len(archs) - 1) / 2) * step for i, _ in mine]
        xs = [p["mean_delta"] for _, p in mine]
        lo = [p["mean_delta"] - p["ci"][0] if p["ci"] else 0 for _, p in mine]
        hi = [p["ci"][1] - p["mean_delta"] if p["ci"] else 0 for _, p in mine]
        ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", color=tab10(k % 10), ms=5, capsize=3, lw=1.2, label=a)
    ax.axvline(0, color="0.4", lw=1, ls="--")
    ax.set_yticks(range(len(methods)), [MAP_TITLES.get(m, m) for m in reversed(methods)])
    ax.set_ylim(-0.6, len(methods) - 0.4)
    ax.set_xlabel("Δρ = DCLS − baseline (mean Spearman, 95 % bootstrap CI)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best", title="architecture", title_fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return True


def plausibility_faithfulness(summary: dict, path: Path, title: str) -> bool:
    """plausibility_faithfulness.png: mean ρ against the human map (x) and mean deletion AUC (y, lower is more
    faithful), one point per model and method; a line joins each baseline to its DCLS twin."""
    import matplotlib
    from matplotlib.lines import Line2D

    if not summary.get("faithfulness"):
        return False
    methods = list(summary["methods"])
    models = summary["models"]
    pts = {(a, v, m): (e[m]["mean_spearman"], e[m]["mean_deletion"]) for a, per in models.items()
           for v, e in per.items() for m in methods if m in e}
    pts = {k: xy for k, xy in pts.items() if None not in xy}
    if not pts:
        return False
    fig, ax = _figure(7, 5.5)
    tab10 = matplotlib.colormaps["tab10"]
    colour = {m: tab10(i % 10) for i, m in enumerate(methods)}
    marker = {"baseline": "o", "dcls": "^"}
    for (a, v, m), (x, y) in pts.items():
        # methods that coincide (HiResCAM and Grad-CAM under global pooling) show as concentric markers
        size = 30 + 22 * (len(methods) - 1 - methods.index(m))
        ax.scatter(x, y, marker=marker.get(v, "s"), s=size, color=colour[m], edgecolor="black", lw=0.5, zorder=2)
        twin = pts.get((a, "dcls", m)) if v == "baseline" else None
        if twin:
            ax.plot([x, twin[0]], [y, twin[1]], color=colour[m], lw=0.8, alpha=0.6, zorder=1)
    if len(models) > 1:
        for (a, v, m), (x, y) in pts.items():
            if m == methods[0]:
                ax.annotate(a, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=6)
    ax.set_xlabel("plausibility: mean Spearman ρ with the human map (higher: more human-like)")
    ax.set_ylabel("faithfulness: mean deletion AUC (lower: more faithful)")
    ax.set_title(title, fontsize=9)
    ax.legend(handles=[Line2D([], [], marker="s", ls="", color=colour[m], label=MAP_TITLES.get(m, m))
                       for m in methods] + [Line2D([], [], marker=marker[v], ls="", color="0.3", label=v)
                                            for v in ("baseline", "dcls")], fontsize=7, loc="best", ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return True
