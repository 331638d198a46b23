"""How a ``Comparison`` is shown: overlays, score and top-5 tables, captions, and the export bundle file.

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
from ..compare import MAP_TITLES, MAPS, Comparison
from ..results import Provenance
from . import storage
from .service import VARIANT_TITLES

# what compare's Dice/IoU use, read from the metric so the caption cannot drift from it
TOP_FRACTION = inspect.signature(metrics.dice_iou_many).parameters["top"].default


def public_provenance(p: Provenance) -> Provenance:
    """A model's provenance as clients see it: the checkpoint's file name and origin, never its path here."""
    return dataclasses.replace(p, checkpoint_path=p.checkpoint_file)


def public_name(name: str) -> str:
    """A sample's name without the server's folders: a record "SHARD:INDEX" keeps the shard's file name."""
    shard, sep, index = name.rpartition(":")
    if sep and index.isdigit():
        return f"{Path(shard).name}:{index}"
    return Path(name).name if name else name


def public_view(c: Comparison) -> Comparison:
    """The comparison as responses show it (manifest, bundle): the same maps and scores, no server paths."""
    outputs = {v: dataclasses.replace(o, provenance=public_provenance(o.provenance)) for v, o in c.outputs.items()}
    return dataclasses.replace(c, sample=dataclasses.replace(c.sample, name=public_name(c.sample.name)),
                               outputs=outputs)


def provenance_text(c: Comparison) -> str:
    """One line naming each checkpoint (file name, origin, sha256 prefix) and the device."""
    parts = []
    for v, o in c.outputs.items():
        p = o.provenance
        sha = (p.checkpoint_sha256 or "")[:12]
        name = p.checkpoint_file or "in-memory weights"
        parts.append(f"{VARIANT_TITLES[v]} `{name}` ({p.checkpoint_origin or 'given'}, sha256 `{sha}`)")
    dev = next(iter(c.outputs.values())).provenance.device
    return f"**Checkpoints:** {' · '.join(parts)} · **computed on** `{dev}`"


def overlays(c: Comparison, alpha: float, cmap: str) -> dict:
    """Display images: the human map and every CAM over the image as the comparison frame shows it."""
    img = c.frame_image()
    out = {"human": render.overlay(img, c.human, alpha, cmap) if c.human is not None else img}
    for v, o in c.outputs.items():
        for m in MAPS:
            out[f"{v}_{m}"] = render.overlay(img, o.maps[m], alpha, cmap)
    return out


def _fmt(x: Optional[float], signed: bool = True) -> str:
    return "—" if x is None else (f"{x:+.3f}" if signed else f"{x:.3f}")


SCORE_HEADERS = ["model", "map", "ρ", "Δρ", "ρ / ceiling", "Dice", "IoU"]


def score_rows(c: Comparison) -> list[list[str]]:
    rows = []
    for v, o in c.outputs.items():
        for m in MAPS:
            sc = o.scores[m]
            rows.append([VARIANT_TITLES[v], MAP_TITLES[m], _fmt(sc.spearman),
                         _fmt(c.delta(m)) if v == "dcls" else "", _fmt(sc.ceiling), _fmt(sc.dice, False),
                         _fmt(sc.iou, False)])
    return rows


TOP5_HEADERS = ["#", "Baseline", "p", "DCLS", "p "]


def top5_rows(c: Comparison, names) -> list[list[str]]:
    b, d = c.outputs["baseline"].top5, c.outputs["dcls"].top5
    return [[str(k + 1), labels.short_name(bc, names), f"{bp:.3f}", labels.short_name(dc, names), f"{dp:.3f}"]
            for k, ((bc, bp), (dc, dp)) in enumerate(zip(b, d))]


def rho_text(c: Comparison, variant: str, m: str) -> str:
    return f"**{render.fmt_rho(c.outputs[variant].scores[m].spearman, c.human is not None)}**"


def column_head(c: Comparison, variant: str, names) -> str:
    o = c.outputs[variant]
    (c1, p1) = o.top5[0]
    arch = o.provenance.arch
    return (f"### {VARIANT_TITLES[variant]} · `{arch}`\nexplains **{labels.short_name(o.target, names)}** · top-1 "
            f"{labels.short_name(c1, names)} ({p1:.2f})")


def sample_text(c: Comparison, names, load_s: float, source: str) -> str:
    s = c.sample
    label = f"label **{labels.short_name(s.label, names)}** ({s.label})" if s.label is not None and \
        0 <= s.label < len(names) else ("label " + str(s.label) if s.label is not None else "no label")
    per = ", ".join(f"{VARIANT_TITLES[v]} {o.seconds:.2f} s" for v, o in c.outputs.items())
    load = f"; loading the models took {load_s:.1f} s" if load_s > 0.05 else ""
    human = "no human map" if c.human is None else (
        "human map: ClickMe" if source == "clickme" else "human map: yours")
    targets = {o.target for o in c.outputs.values()}
    differ = ("  \n**The two models explain different classes** (each its own top-1): choose one class to "
              "compare them on the same target." if len(targets) > 1 else "")
    return (f"**{Path(s.name).name or 'upload'}** · {label} · {human} · geometry `{c.geometry}` · "
            f"threshold {c.threshold:g}  \n"
            f"**Time:** {c.seconds:.2f} s for both models ({per}){load}{differ}")


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

    def write(self, c: Comparison, names, alpha: float, cmap: str, arch: str, folder: Optional[Path] = None) -> str:
        """The comparison's zip bundle (with its public manifest) in ``folder`` (default: a new one); returns
        its path."""
        c = public_view(c)
        data = render.export_bundle(c, names, alpha, cmap)
        stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(c.sample.name or "upload").name)
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
