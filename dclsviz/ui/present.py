"""What the page says: a ``Comparison``'s overlays, score and top-5 tables and captions, where checkpoints
come from, and the export bundle file. All the app's Markdown is written here.

Nothing is computed here: maps and scores are the Comparison's, pictures come from ``render``.
"""

from __future__ import annotations

import dataclasses
import inspect
import tempfile
import threading
from pathlib import Path
from typing import Optional

from .. import labels, limits, metrics, render
from ..compare import MAP_TITLES, Comparison
from ..render import public_name
from ..results import Provenance
from . import storage
from .service import VARIANT_TITLES, CheckpointSource

# what compare's Dice/IoU use, read from the metric so the caption cannot drift from it
TOP_FRACTION = inspect.signature(metrics.dice_iou_many).parameters["top"].default


def public_provenance(provenance: Provenance) -> Provenance:
    """A model's provenance as clients see it: the checkpoint's file name and origin, never its path here."""
    return dataclasses.replace(provenance, checkpoint_path=provenance.checkpoint_file)


def public_view(comparison: Comparison) -> Comparison:
    """The comparison as responses show it (manifest, bundle): the same maps and scores, no server paths."""
    outputs = {v: dataclasses.replace(o, provenance=public_provenance(o.provenance))
               for v, o in comparison.outputs.items()}
    sample = dataclasses.replace(comparison.sample, name=public_name(comparison.sample.name))
    return dataclasses.replace(comparison, sample=sample, outputs=outputs)


def provenance_text(comparison: Comparison) -> str:
    """One line naming each checkpoint (file name, origin, sha256 prefix) and the device."""
    parts = []
    for v, o in comparison.outputs.items():
        p = o.provenance
        sha = (p.checkpoint_sha256 or "")[:12]
        name = p.checkpoint_file or "in-memory weights"
        parts.append(f"{VARIANT_TITLES[v]} `{name}` ({p.checkpoint_origin or 'given'}, sha256 `{sha}`)")
    dev = next(iter(comparison.outputs.values())).provenance.device
    return f"**Checkpoints:** {' · '.join(parts)} · **computed on** `{dev}`"


def overlays(comparison: Comparison, alpha: float, cmap: str) -> dict:
    """Display images: the human map and every CAM over the image as the comparison frame shows it."""
    img = comparison.frame_image()
    out = {"human": render.overlay(img, comparison.human, alpha, cmap) if comparison.human is not None else img}
    for v, o in comparison.outputs.items():
        for m in comparison.methods:
            out[f"{v}_{m}"] = render.overlay(img, o.maps[m], alpha, cmap)
    return out


def _fmt(value: Optional[float], signed: bool = True) -> str:
    return "—" if value is None else (f"{value:+.3f}" if signed else f"{value:.3f}")


SCORE_HEADERS = ["model", "map", "ρ", "Δρ", "ρ / ceiling", "Dice", "IoU"]
FAITHFULNESS_HEADERS = ["deletion ↓", "insertion ↑", "ROAD ↑"]

CEILING_NOTE = (
    f"**ρ**: Spearman's rank correlation of the map with the human map. **ρ / ceiling**: ρ divided by "
    f"{metrics.HUMAN_CEILING:.3f}, ClickMe's inter-human ρ (how well one half of the participants' maps predicts "
    "the other half's), the study's alignment score. It can exceed 1: a model can match the pooled human map "
    "better than half of the people do, and the demo shard's synthetic human maps are far cleaner than real "
    "clicks (values of 1.1–1.4 are usual there). **Δρ**: DCLS − baseline, shown only when both models explain "
    "the same class. **Dice, IoU**: overlap of the top-{top:.0%} pixels of the map and the human map; "
    "\"—\" where ρ is undefined. **Deletion, insertion, ROAD** (when *faithfulness* is on): how much the "
    "model's probability for the class depends on the pixels the map ranks first (deletion AUC: lower is more "
    "faithful; insertion AUC and ROAD: higher is); they need no human map.")


def ceiling_note() -> str:
    """The footnote under the score table: what ρ, ρ / ceiling, Δρ, Dice and IoU mean."""
    return CEILING_NOTE.format(top=TOP_FRACTION)


def same_target(comparison: Comparison) -> bool:
    """Whether both models explain the same class (a Δρ between them means something only then)."""
    return len({o.target for o in comparison.outputs.values()}) == 1


def _score_rows(comparison: Comparison) -> list[list[str]]:
    """The score table: per model and map, ρ, Δρ (DCLS rows, same target only), ρ / ceiling, Dice, IoU, and
    deletion, insertion and ROAD when the comparison measured them."""
    rows = []
    for v, o in comparison.outputs.items():
        for m in comparison.methods:
            sc = o.scores[m]
            defined = sc.spearman is not None
            delta = "" if v != "dcls" else (_fmt(comparison.delta(m)) if same_target(comparison)
                                            else "— (different classes)")
            row = [VARIANT_TITLES[v], MAP_TITLES[m], _fmt(sc.spearman), delta, _fmt(sc.ceiling),
                   _fmt(sc.dice if defined else None, False), _fmt(sc.iou if defined else None, False)]
            if o.faithfulness:
                f = o.faithfulness[m]
                row += [_fmt(f.deletion, False), _fmt(f.insertion, False), _fmt(f.road)]
            rows.append(row)
    return rows


def score_table(comparison: Comparison) -> dict:
    """The score table as a Dataframe value: its headers (the faithfulness columns when measured) and rows."""
    measured = any(o.faithfulness for o in comparison.outputs.values())
    return {"headers": SCORE_HEADERS + (FAITHFULNESS_HEADERS if measured else []), "data": _score_rows(comparison)}


TOP5_HEADERS = ["#", "Baseline", "p", "DCLS", "p "]


def top5_rows(comparison: Comparison, names) -> list[list[str]]:
    """The top-5 table: rank, then each model's class and probability."""
    b, d = comparison.outputs["baseline"].top5, comparison.outputs["dcls"].top5
    return [[str(k + 1), labels.short_name(bc, names), f"{bp:.3f}", labels.short_name(dc, names), f"{dp:.3f}"]
            for k, ((bc, bp), (dc, dp)) in enumerate(zip(b, d))]


def rho_text(comparison: Comparison, variant: str, map_name: str) -> str:
    """The ρ line under one map."""
    rho = comparison.outputs[variant].scores[map_name].spearman
    return f"**{render.fmt_rho(rho, comparison.human is not None)}**"


def column_head(comparison: Comparison, variant: str, names) -> str:
    """A model column's heading: the model, the class it explains and its top-1."""
    o = comparison.outputs[variant]
    (c1, p1) = o.top5[0]
    arch = o.provenance.arch
    return (f"### {VARIANT_TITLES[variant]} · `{arch}`\nexplains **{labels.short_name(o.target, names)}** · top-1 "
            f"{labels.short_name(c1, names)} ({p1:.2f})")


def sample_text(comparison: Comparison, names, load_s: float, human_source: Optional[str]) -> str:
    """The line above the results: the input, its label, where its human map comes from, settings and time."""
    s = comparison.sample
    label = f"label **{labels.short_name(s.label, names)}** ({s.label})" if s.label is not None and \
        0 <= s.label < len(names) else ("label " + str(s.label) if s.label is not None else "no label")
    per = ", ".join(f"{VARIANT_TITLES[v]} {o.seconds:.2f} s" for v, o in comparison.outputs.items())
    load = f"; loading the models took {load_s:.1f} s" if load_s > 0.05 else ""
    human = "no human map" if comparison.human is None else f"human map: {human_source or 'yours'}"
    differ = ("" if same_target(comparison) else "  \n**The two models explain different classes** (each its own "
              "top-1), so Δρ is not shown: choose one class under *Class to explain* to compare them on the same "
              "target.")
    return (f"**{public_name(s.name) or 'upload'}** · {label} · {human} · geometry `{comparison.geometry}` · "
            f"threshold {comparison.threshold:g}  \n"
            f"**Time:** {comparison.seconds:.2f} s for both models ({per}){load}{differ}")


def record_text(name: str, label: int, names, known: bool, arch: str) -> str:
    """The caption of a ClickMe record's preview: its shard, index and label."""
    text = (f"label **{labels.short_name(label, names)}** ({label})" if known else
            f"label {label} (not a class of {arch}: the predicted class will be explained)")
    return f"{public_name(name)} · {text}"


def human_head(has_human: Optional[bool]) -> str:
    """The heading of the human-map column: what it shows, or that the input has no human map."""
    if has_human is False:
        return "### Human\n**no human map** for this input: ρ, Dice and IoU need one"
    return "### Human\nClickMe clicks, or your map"


def colorbar_html(cmap: str) -> str:
    """A thin colour scale of ``cmap``, labelled low → high, for the overlays on the page."""
    stops = ", ".join(render.colormap_stops(cmap))
    return (f'<div class="colorbar" title="{cmap}"><span>low</span>'
            f'<div class="colorbar-ramp" style="background: linear-gradient(to right, {stops})"></div>'
            f'<span>high</span><em>{render.COLORBAR_LABEL} ({cmap})</em></div>')


def checkpoint_status(sources: list[CheckpointSource]) -> str:
    """Where each checkpoint of a pair would come from, as the page and /models say it before any load."""
    lines = []
    for s in sources:
        state = {"bundled": f"bundled `{s.file_name}`",
                 "bundled-missing": f"bundled file `{s.file_name}` is missing",
                 "found": f"{s.origin} `{s.file_name}`",
                 "download": f"`{s.file_name}` is not on this server: it is downloaded from {s.url} on the first "
                             "Compare (needs internet access)",
                 "missing": f"**`{s.file_name}` is not on this server, and downloads are off**: get it from "
                            f"{s.url} and put it in $DCLSVIZ_CHECKPOINT_DIR, or use the demo pair"}[s.state]
        lines.append(f"- {VARIANT_TITLES[s.variant]}: {state}")
    return "\n".join(lines)


def failure_status(message: str, previous: Optional[str]) -> str:
    """The persistent status box after a failed run: what went wrong, and that the results still on the page
    (``previous``: what they were of, None when there are none) are from an earlier run."""
    stale = (f"  \n*The results below are still those of the previous run ({previous}), not of these settings.*"
             if previous else "")
    return f"**Not computed.** {message}{stale}"


def result_label(comparison: Comparison) -> str:
    """A short name for a comparison's result: its pair and input, for the stale-results note."""
    arch = next(iter(comparison.outputs.values())).provenance.arch
    return f"{arch} on {public_name(comparison.sample.name) or 'an upload'}"


# --- the Review tab's reveal -------------------------------------------------------------------------


def _pct(part, whole) -> str:
    return f"{part / whole:.0%}" if whole else "—"


def _review_lines(res: dict) -> list[str]:
    pref, n_ab = res["preference"], res["dcls_preferred"] + res["baseline_preferred"]
    ci = (f"; 95 % CI {pref['ci'][0]:.0%}–{pref['ci'][1]:.0%} (Wilson); binomial p {pref['p']:.3g}"
          if pref.get("ci") else "")
    lines = [f"- **DCLS preferred** {res['dcls_preferred']} of {n_ab} A/B verdicts "
             f"({_pct(res['dcls_preferred'], n_ab)}{ci})",
             f"- baseline preferred {res['baseline_preferred']} · tie {res['ties']} · neither {res['neither']}"]
    for m, agreed in res["agreement"].items():
        lines.append(f"- agreed with the higher {MAP_TITLES[m]} ρ: **{agreed['agreed']} of {agreed['n']}** "
                     f"({_pct(agreed['agreed'], agreed['n'])})"
                     + (f"; {agreed['left_out']} left out (a ρ undefined or equal)" if agreed["left_out"] else ""))
    lines.append(f"- DCLS was shown as A in {res['dcls_was_a']} of {res['n_verdicts']} judged items")
    return lines


def reveal_text(res: dict) -> str:
    """The reveal as Markdown: pooled and per reviewer for the organiser, one's own for a reviewer."""
    if "reviewers" not in res:
        return "\n".join([f"### Your results in {res['name']!r}: {res['n_verdicts']} verdicts", *_review_lines(res)])
    lines = [f"### Reveal of {res['name']!r}: {res['n_verdicts']} verdicts from {res['n_reviewers']} reviewers",
             "**Pooled**", *_review_lines(res)]
    kappa = res["inter_rater"]
    if kappa["kappa"] is not None:
        lines.append(f"- **Fleiss' κ {kappa['kappa']:.3f}** between {kappa['n_raters']} reviewers over the "
                     f"{kappa['n_items']} items all of them judged (P̄ {kappa['p_bar']:.3f}, P̄e {kappa['p_e']:.3f})")
    else:
        lines.append(f"- Fleiss' κ: undefined ({kappa['n_raters']} reviewers with verdicts, {kappa['n_items']} "
                     "items judged by all)")
    for per in res["reviewers"]:
        lines += ["", f"**{per['name']}** ({per['n_verdicts']} verdicts)", *_review_lines(per)]
    return "\n".join(lines)


class Exports:
    """Export bundles written for download, in a folder private to this process (``storage.private_dir``
    when none is given). Old ones are pruned, by age and by total size, so the folder stays bounded."""

    def __init__(self, folder: Optional[Path] = None, keep_s: float = limits.EXPORTS_MAX_AGE_S,
                 max_bytes: int = limits.EXPORTS_MAX_BYTES):
        self.folder = storage.private_dir("dclsviz-exports-") if folder is None else Path(folder)
        self.keep_s = keep_s
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    _by_folder: dict[str, "Exports"] = {}
    _by_folder_lock = threading.Lock()

    @classmethod
    def at(cls, folder: Path) -> "Exports":
        """The one ``Exports`` of ``folder`` in this process, so every tab writes and prunes under one lock."""
        with cls._by_folder_lock:
            return cls._by_folder.setdefault(str(folder), cls(Path(folder)))

    def write(self, comparison: Comparison, names, alpha: float, cmap: str, arch: str,
              folder: Optional[Path] = None) -> str:
        """The comparison's zip bundle (with its public manifest) in ``folder`` (default: a new one); returns
        its path."""
        comparison = public_view(comparison)
        data = render.export_bundle(comparison, names, alpha, cmap)
        name = Path(comparison.sample.name or "upload").name
        stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        path = (folder or self.new_folder()) / f"dclsviz_{arch}_{stem[:60]}.zip"
        path.write_bytes(data)
        return str(path)

    def new_folder(self) -> Path:
        """A folder of its own for one download, so concurrent users never overwrite each other's files."""
        # refuses a folder someone else made or swapped for a symlink, before anything is written into it
        storage.ensure_private(self.folder)
        self.prune()
        return Path(tempfile.mkdtemp(dir=self.folder))

    def prune(self) -> storage.PruneReport:
        """Drop bundles older than ``keep_s``, then the oldest until the folder holds at most ``max_bytes``."""
        with self._lock:
            return storage.prune(self.folder, max_age_s=self.keep_s, max_bytes=self.max_bytes)
