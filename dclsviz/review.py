"""Blind A/B review sessions: a person judges which model's maps look more human, unaware which is DCLS.

Backend only; the app's Review tab calls these functions. Everything lives in one SQLite file
(``$DCLSVIZ_REVIEW_DB``, else ``cache_root()/review.sqlite``) in WAL mode, and every verdict is its own
committed transaction, so a crash or restart loses nothing and ``next_item`` resumes where the reviewer
stopped. Each call opens its own connection, so the app's worker threads can share the file.

A session is a fixed sequence of items (ClickMe records or photos). Which model is "A" for each item is
drawn from the session's seed when it is created and stored with the item, so the reveal maps verdicts
back to models without re-deriving anything. The models' scores are stored when an item is shown, as
``compare`` computed them for the maps the reviewer saw.

Typical use::

    create_session("alice-1", demo_items(0, 40), arch="demo", seed=7)
    shown = show("alice-1")                  # the next unjudged item, both models run; None when done
    shown.a, shown.b                         # ModelOutputs to display as "A" and "B" (do not label them)
    record_verdict("alice-1", shown.item.position, "A", note="sharper on the handle")
    progress("alice-1"); reveal("alice-1"); export_csv("alice-1", "alice-1.csv")
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from . import clickme, images, stats, zoo
from .cam import DEFAULT_THRESHOLD
from .compare import MAPS, Comparison, ModelOutput, Sample, compare
from .download import cache_root
from .geometry import GEOMETRIES

DB_ENV = "DCLSVIZ_REVIEW_DB"
VERDICTS = ("A", "B", "tie", "neither")
TARGETS = ("label", "pred")
KINDS = ("clickme", "photo")
HUMAN_SUFFIX = ".human.png"
PHOTO_TYPES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
SCHEMA_VERSION = 1

PathLike = Union[str, os.PathLike]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    name TEXT PRIMARY KEY,
    arch TEXT NOT NULL,
    seed INTEGER NOT NULL,
    geometry TEXT NOT NULL,
    threshold REAL NOT NULL,
    target TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    session TEXT NOT NULL REFERENCES sessions(name) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('clickme', 'photo')),
    ref TEXT NOT NULL,
    human TEXT,
    a_variant TEXT NOT NULL,
    b_variant TEXT NOT NULL,
    label INTEGER,
    scores TEXT,
    shown_at REAL,
    verdict TEXT CHECK (verdict IN ('A', 'B', 'tie', 'neither')),
    note TEXT,
    decided_at REAL,
    PRIMARY KEY (session, position)
);
"""


# --- the database ------------------------------------------------------------------------------------


def db_path() -> Path:
    env = os.environ.get(DB_ENV)
    return Path(env).expanduser() if env else cache_root() / "review.sqlite"


_ready: set[str] = set()
_ready_lock = threading.Lock()


@contextmanager
def _connect(db: Optional[PathLike] = None) -> Iterator[sqlite3.Connection]:
    path = Path(db).expanduser() if db is not None else db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = not path.exists()  # a file deleted and made again in this process needs its tables again
    # autocommit mode: transactions are opened explicitly by _write, so none is left open by accident
    con = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    try:
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA foreign_keys = ON")
        # FULL: a committed verdict is on disk before record_verdict returns, even across a power cut
        con.execute("PRAGMA synchronous = FULL")
        key = str(path.resolve())
        with _ready_lock:
            if fresh or key not in _ready:
                con.execute("PRAGMA journal_mode = WAL")
                con.executescript(_SCHEMA)
                found = con.execute("PRAGMA user_version").fetchone()[0]
                if found not in (0, SCHEMA_VERSION):
                    raise ValueError(f"{path} is a review database of schema {found}, this version reads "
                                     f"{SCHEMA_VERSION}")
                con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                _ready.add(key)
        yield con
    finally:
        con.close()


@contextmanager
def _write(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    # IMMEDIATE takes the write lock up front: two threads cannot both read and then fail to upgrade
    con.execute("BEGIN IMMEDIATE")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


# --- what a session shows ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One thing to judge: a ClickMe record ("SHARD:INDEX") or a photo (path, optional human map path)."""

    kind: str
    ref: str
    human: Optional[str] = None

    def sample(self) -> Sample:
        if self.kind == "clickme":
            return Sample.from_clickme(clickme.read_record(self.ref))
        human_raw = images.load_map(self.human) if self.human else None
        return Sample.from_image(images.load_image(self.ref), human_raw, name=self.ref)


def clickme_items(shard: PathLike, start: int = 0, stop: Optional[int] = None) -> list[Source]:
    """Records ``start`` to ``stop`` (exclusive, clipped to the shard) of a ClickMe shard."""
    s = clickme.ClickMeShard(shard)
    path = str(s.path.resolve())
    return [Source("clickme", f"{path}:{i}") for i in range(max(0, start), min(len(s), len(s) if stop is None
                                                                                else stop))]


def demo_items(start: int = 0, stop: Optional[int] = None) -> list[Source]:
    from . import demo

    return clickme_items(zoo.ASSETS / demo.SHARD, start, stop)


def photo_items(folder: PathLike) -> list[Source]:
    """The photos of a folder in name order; ``<stem>.human.png`` beside a photo is its human map."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"no such folder: {folder}")
    out = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.suffix.lower() not in PHOTO_TYPES or p.name.lower().endswith(HUMAN_SUFFIX):
            continue
        human = p.with_name(p.stem + HUMAN_SUFFIX)
        out.append(Source("photo", str(p.resolve()), str(human.resolve()) if human.is_file() else None))
    if not out:
        raise ValueError(f"no photos ({', '.join(PHOTO_TYPES)}) in {folder}")
    return out


# --- sessions and items --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SessionInfo:
    name: str
    arch: str
    seed: int
    geometry: str
    threshold: float
    target: str
    created_at: float
    n_items: int
    n_done: int


@dataclass(frozen=True)
class Item:
    """One position of a session. ``a_variant``/``b_variant`` are the hidden side assignment."""

    session: str
    position: int
    source: Source
    a_variant: str
    b_variant: str
    label: Optional[int]
    scores: Optional[dict]  # variant -> map -> {spearman, ceiling, dice, iou}, stored when shown
    shown_at: Optional[float]
    verdict: Optional[str]
    note: Optional[str]
    decided_at: Optional[float]

    def variant_for(self, side: str) -> str:
        return {"A": self.a_variant, "B": self.b_variant}[side]

    @property
    def preferred(self) -> Optional[str]:
        """The variant the verdict chose, or "tie"/"neither", or None before a verdict."""
        if self.verdict in ("A", "B"):
            return self.variant_for(self.verdict)
        return self.verdict

    def spearman(self, variant: str, map_name: str) -> Optional[float]:
        return None if self.scores is None else self.scores[variant][map_name]["spearman"]


@dataclass
class Shown:
    """An item with both models' outputs, arranged as the reviewer sees them."""

    item: Item
    comparison: Comparison

    @property
    def a(self) -> ModelOutput:
        return self.comparison.outputs[self.item.a_variant]

    @property
    def b(self) -> ModelOutput:
        return self.comparison.outputs[self.item.b_variant]


def _item(row: sqlite3.Row) -> Item:
    return Item(row["session"], row["position"], Source(row["kind"], row["ref"], row["human"]), row["a_variant"],
                row["b_variant"], row["label"], json.loads(row["scores"]) if row["scores"] else None,
                row["shown_at"], row["verdict"], row["note"], row["decided_at"])


def _session_info(con: sqlite3.Connection, name: str) -> SessionInfo:
    row = con.execute("SELECT s.*, (SELECT COUNT(*) FROM items i WHERE i.session = s.name) AS n_items, "
                      "(SELECT COUNT(*) FROM items i WHERE i.session = s.name AND i.verdict IS NOT NULL) AS n_done "
                      "FROM sessions s WHERE s.name = ?", (name,)).fetchone()
    if row is None:
        raise KeyError(f"no review session named {name!r}")
    return SessionInfo(row["name"], row["arch"], row["seed"], row["geometry"], row["threshold"], row["target"],
                       row["created_at"], row["n_items"], row["n_done"])


def create_session(name: str, sources: Sequence[Source], *, arch: str = "demo", seed: int = 0,
                   geometry: str = "paper", threshold: float = DEFAULT_THRESHOLD, target: str = "label",
                   db: Optional[PathLike] = None) -> SessionInfo:
    """A new session over ``sources`` in that order, each item's "A" model drawn from ``seed``."""
    if not name or not name.strip():
        raise ValueError("a session needs a name")
    if not sources:
        raise ValueError("a session needs at least one item")
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, not {geometry!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, not {target!r}")
    for v in zoo.VARIANTS:
        zoo.get(arch, v)
    for s in sources:
        if s.kind not in KINDS:
            raise ValueError(f"unknown item kind {s.kind!r}")
    dcls_first = np.random.default_rng(seed).integers(0, 2, len(sources)).astype(bool)
    base, dcls = zoo.VARIANTS
    rows = [(name, k, s.kind, s.ref, s.human, dcls if a else base, base if a else dcls)
            for k, (s, a) in enumerate(zip(sources, dcls_first))]
    with _connect(db) as con:
        try:
            with _write(con):
                con.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (name, arch, int(seed), geometry, float(threshold), target, time.time()))
                con.executemany("INSERT INTO items (session, position, kind, ref, human, a_variant, b_variant) "
                                "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.IntegrityError:
            raise ValueError(f"a review session named {name!r} already exists") from None
        return _session_info(con, name)


def sessions(db: Optional[PathLike] = None) -> list[SessionInfo]:
    """Every session, oldest first."""
    with _connect(db) as con:
        names = [r[0] for r in con.execute("SELECT name FROM sessions ORDER BY created_at, name")]
        return [_session_info(con, n) for n in names]


def get_session(name: str, db: Optional[PathLike] = None) -> SessionInfo:
    with _connect(db) as con:
        return _session_info(con, name)


def delete_session(name: str, db: Optional[PathLike] = None) -> None:
    with _connect(db) as con, _write(con):
        if con.execute("DELETE FROM sessions WHERE name = ?", (name,)).rowcount == 0:
            raise KeyError(f"no review session named {name!r}")


def item(session: str, position: int, db: Optional[PathLike] = None) -> Item:
    with _connect(db) as con:
        row = con.execute("SELECT * FROM items WHERE session = ? AND position = ?", (session, position)).fetchone()
        if row is None:
            n = _session_info(con, session).n_items
            raise ValueError(f"session {session!r} has items 0..{n - 1}, not {position}")
        return _item(row)


def items(session: str, db: Optional[PathLike] = None) -> list[Item]:
    with _connect(db) as con:
        _session_info(con, session)
        return [_item(r) for r in con.execute("SELECT * FROM items WHERE session = ? ORDER BY position",
                                              (session,))]


def next_item(session: str, db: Optional[PathLike] = None) -> Optional[Item]:
    """The first item without a verdict, or None when the session is finished."""
    with _connect(db) as con:
        _session_info(con, session)
        row = con.execute("SELECT * FROM items WHERE session = ? AND verdict IS NULL ORDER BY position LIMIT 1",
                          (session,)).fetchone()
        return None if row is None else _item(row)


def show(session: str, position: Optional[int] = None, *, pair=None, device=None,
         checkpoint_dir: Optional[PathLike] = None, db: Optional[PathLike] = None) -> Optional[Shown]:
    """Run both models on an item (default: ``next_item``) and store their scores; None when finished.

    ``pair``: the loaded {variant: LoadedModel} of the session's arch; by default ``models.load_pair``.
    """
    info = get_session(session, db)
    it = next_item(session, db) if position is None else item(session, position, db)
    if it is None:
        return None
    if pair is None:
        from .models import load_pair

        pair = load_pair(info.arch, device=device, checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None)
    ids = {v: m.entry.arch for v, m in pair.items()}
    if set(pair) != set(zoo.VARIANTS) or set(ids.values()) != {info.arch}:
        raise ValueError(f"session {session!r} compares {info.arch}'s {' and '.join(zoo.VARIANTS)}; "
                         f"got {sorted(f'{a}.{v}' for v, a in ids.items())}")
    comp = compare(pair, it.source.sample(), info.target, info.threshold, info.geometry)
    scores = {v: o.scores for v, o in comp.outputs.items()}
    scores["checkpoints"] = {v: o.provenance["checkpoint_sha256"] for v, o in comp.outputs.items()}
    scores["targets"] = {v: o.target for v, o in comp.outputs.items()}
    with _connect(db) as con, _write(con):
        con.execute("UPDATE items SET scores = ?, label = ?, shown_at = ? WHERE session = ? AND position = ?",
                    (json.dumps(scores), comp.sample.label, time.time(), session, it.position))
    return Shown(item(session, it.position, db), comp)


def record_verdict(session: str, position: int, verdict: str, note: str = "",
                   db: Optional[PathLike] = None) -> Item:
    """Store (or replace) the verdict on an item that has been shown; committed before returning."""
    if verdict not in VERDICTS:
        raise ValueError(f"a verdict is one of {', '.join(VERDICTS)}, not {verdict!r}")
    with _connect(db) as con:
        with _write(con):
            row = con.execute("SELECT scores FROM items WHERE session = ? AND position = ?",
                              (session, position)).fetchone()
            if row is None:
                _session_info(con, session)
                raise ValueError(f"session {session!r} has no item {position}")
            if row["scores"] is None:
                # the reveal compares the verdict with the scores of what was shown, so there must be some
                raise ValueError(f"item {position} of session {session!r} has not been shown yet")
            con.execute("UPDATE items SET verdict = ?, note = ?, decided_at = ? WHERE session = ? AND position = ?",
                        (verdict, note or None, time.time(), session, position))
        return _item(con.execute("SELECT * FROM items WHERE session = ? AND position = ?",
                                 (session, position)).fetchone())


def progress(session: str, db: Optional[PathLike] = None) -> dict:
    """{n_items, n_done, n_left, next_position, counts per verdict}."""
    with _connect(db) as con:
        info = _session_info(con, session)
        counts = dict.fromkeys(VERDICTS, 0)
        for v, n in con.execute("SELECT verdict, COUNT(*) FROM items WHERE session = ? AND verdict IS NOT NULL "
                                "GROUP BY verdict", (session,)):
            counts[v] = n
        nxt = con.execute("SELECT MIN(position) FROM items WHERE session = ? AND verdict IS NULL",
                          (session,)).fetchone()[0]
    return {"session": session, "n_items": info.n_items, "n_done": info.n_done,
            "n_left": info.n_items - info.n_done, "next_position": nxt, "counts": counts}


def reveal(session: str, db: Optional[PathLike] = None) -> dict:
    """Unblinded results: how often DCLS was preferred, and how often the reviewer sided with the higher ρ.

    ``preference`` counts A/B verdicts only (ties and "neither" are reported beside it) with a two-sided
    binomial test against 1/2. ``agreement[map]`` counts A/B verdicts whose chosen model had the higher
    Spearman for that map; items where either ρ is undefined or both are equal are left out.
    """
    decided = [it for it in items(session, db) if it.verdict is not None]
    base, dcls = zoo.VARIANTS
    counts = dict.fromkeys(VERDICTS, 0)
    for it in decided:
        counts[it.verdict] += 1
    ab = [it for it in decided if it.verdict in ("A", "B")]
    k_dcls = sum(it.preferred == dcls for it in ab)
    agreement = {}
    for m in MAPS:
        agreed = compared = 0
        for it in ab:
            chosen = it.preferred
            other = base if chosen == dcls else dcls
            r_c, r_o = it.spearman(chosen, m), it.spearman(other, m)
            if r_c is None or r_o is None or r_c == r_o:
                continue
            compared += 1
            agreed += r_c > r_o
        agreement[m] = {"n": compared, "agreed": agreed, "rate": agreed / compared if compared else None,
                        "left_out": len(ab) - compared}
    return {"session": session, "n_verdicts": len(decided), "counts": counts,
            "dcls_preferred": k_dcls, "baseline_preferred": len(ab) - k_dcls, "ties": counts["tie"],
            "neither": counts["neither"], "preference": stats.preference(k_dcls, len(ab)),
            "dcls_was_a": sum(it.a_variant == dcls for it in decided), "agreement": agreement}


EXPORT_COLUMNS = ("session", "position", "kind", "ref", "human", "label", "a_variant", "b_variant", "verdict",
                  "preferred", "note", "shown_at", "decided_at",
                  *(f"spearman_{side}_{m}" for side in ("A", "B") for m in MAPS),
                  *(f"spearman_{v}_{m}" for v in zoo.VARIANTS for m in MAPS))


def export_csv(session: str, path: PathLike, db: Optional[PathLike] = None) -> Path:
    """Every verdict of the session with its side assignment and scores, one row per judged item."""
    path = Path(path)
    rows = []
    for it in items(session, db):
        if it.verdict is None:
            continue
        row = {"session": it.session, "position": it.position, "kind": it.source.kind, "ref": it.source.ref,
               "human": it.source.human, "label": it.label, "a_variant": it.a_variant, "b_variant": it.b_variant,
               "verdict": it.verdict, "preferred": it.preferred, "note": it.note, "shown_at": it.shown_at,
               "decided_at": it.decided_at}
        for m in MAPS:
            for side in ("A", "B"):
                row[f"spearman_{side}_{m}"] = it.spearman(it.variant_for(side), m)
            for v in zoo.VARIANTS:
                row[f"spearman_{v}_{m}"] = it.spearman(v, m)
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, EXPORT_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r[k] is None else (repr(r[k]) if isinstance(r[k], float) else r[k])
                        for k in EXPORT_COLUMNS})
    return path
