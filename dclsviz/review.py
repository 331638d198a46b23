"""Blind A/B review sessions: people judge which model's maps look more human, unaware which is DCLS.

Backend only; the app's Review tab and the ``review`` CLI call these functions. Everything lives in one
SQLite file (``$DCLSVIZ_REVIEW_DB``, else ``cache_root()/review.sqlite``) in WAL mode, and every verdict is its
own committed transaction, so a crash or restart loses nothing and ``next_item`` resumes where each reviewer
stopped. Each call opens its own connection, so the app's worker threads can share the file.

Sessions belong to people. Creating one returns two secrets: an *organiser token* (reveal, export, delete)
and a *reviewer invite code*; each reviewer who joins with the code gets a *reviewer token* of their own, and
their verdicts are stored under their identity. Only sha256 digests of the secrets are stored. A session is
known by a random id; its name is a label and may repeat. A session may also name Hugging Face users who join
without a code, as reviewer ``hf:<username>``.

A session is a fixed sequence of items (ClickMe records or photos). Which model is "A" for each item is
drawn from the session's seed (secret and random unless the organiser gives one) when it is created and stored
with the item, so the reveal maps verdicts back to models without re-deriving anything. The models' scores
are stored when an item is first shown, as ``compare`` computed them for the maps the reviewer saw. Those maps
come from the session's methods (one or two of ``methods.REGISTRY``, chosen at creation; the paper's two by
default and for every session made before sessions had methods).

Typical use::

    made = create_session("alice-1", demo_items(0, 40), arch="demo")
    me, my_token = join(made.invite_code, "Bob")
    shown = show(me.session, me.reviewer)     # the next item Bob has not judged; None when he is done
    shown.a, shown.b                          # ModelOutputs to display as "A" and "B" (do not label them)
    record_verdict(me.session, me.reviewer, shown.item.position, "A", note="sharper on the handle")
    reveal(made.info.id)                      # the organiser's view: every reviewer, pooled, Fleiss' kappa
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import secrets
import shutil
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from . import clickme, images, limits, methods as methods_, stats, zoo
from .cam import DEFAULT_THRESHOLD
from .compare import MAPS, Comparison, ModelOutput, Sample, compare
from .download import cache_root
from .geometry import GEOMETRIES

DB_ENV = "DCLSVIZ_REVIEW_DB"
VERDICTS = ("A", "B", "tie", "neither")
# what a verdict meant once the sides are known: the categories of the inter-rater agreement
PREFERENCES = ("dcls", "baseline", "tie", "neither")
TARGETS = ("label", "pred")
KINDS = ("clickme", "photo")
HUMAN_SUFFIX = ".human.png"
PHOTO_TYPES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
SCHEMA_VERSION = 3
# A reviewer compares at most two maps per model: the panel has two columns per side, and /review_next returns
# two maps per side, as it did when every session showed the paper's two.
MAX_METHODS = 2
PHOTO_FOLDER = "review_photos"
# A token says what it is before any lookup, so a pasted secret in the wrong box gets a precise message.
TOKEN_PREFIX = {"organiser": "rvo_", "invite": "rvi_", "reviewer": "rvr_"}
ROLES = tuple(TOKEN_PREFIX)
HF_PREFIX = "hf:"

PathLike = Union[str, os.PathLike]

# sessions from before methods existed showed the paper's two: the default of their ``methods`` column
_PAPER_METHODS = json.dumps(list(MAPS))
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    arch TEXT NOT NULL,
    seed INTEGER NOT NULL,
    geometry TEXT NOT NULL,
    threshold REAL NOT NULL,
    target TEXT NOT NULL,
    created_at REAL NOT NULL,
    hf_users TEXT NOT NULL DEFAULT '[]',
    methods TEXT NOT NULL DEFAULT '@PAPER@'
);
CREATE TABLE IF NOT EXISTS tokens (
    digest TEXT PRIMARY KEY,
    session TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('organiser', 'invite', 'reviewer')),
    reviewer TEXT,
    created_at REAL NOT NULL,
    FOREIGN KEY (session, reviewer) REFERENCES reviewers(session, id) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS reviewers (
    session TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    id TEXT NOT NULL,
    name TEXT NOT NULL,
    joined_at REAL NOT NULL,
    PRIMARY KEY (session, id)
);
CREATE TABLE IF NOT EXISTS items (
    session TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('clickme', 'photo')),
    ref TEXT NOT NULL,
    human TEXT,
    a_variant TEXT NOT NULL,
    b_variant TEXT NOT NULL,
    label INTEGER,
    scores TEXT,
    shown_at REAL,
    PRIMARY KEY (session, position)
);
CREATE TABLE IF NOT EXISTS verdicts (
    session TEXT NOT NULL,
    position INTEGER NOT NULL,
    reviewer TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('A', 'B', 'tie', 'neither')),
    note TEXT,
    decided_at REAL NOT NULL,
    PRIMARY KEY (session, position, reviewer),
    FOREIGN KEY (session, position) REFERENCES items(session, position) ON DELETE CASCADE,
    FOREIGN KEY (session, reviewer) REFERENCES reviewers(session, id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS tokens_by_session ON tokens(session);
""".replace("@PAPER@", _PAPER_METHODS)


class AccessDenied(Exception):
    """A token or code that opens nothing, or not this action. The message never says whether a session exists."""


# --- the database ------------------------------------------------------------------------------------


def db_path() -> Path:
    """``$DCLSVIZ_REVIEW_DB``, else ``review.sqlite`` in the download cache."""
    env = os.environ.get(DB_ENV)
    return Path(env).expanduser() if env else cache_root() / "review.sqlite"


def _resolve_db(db: Optional[PathLike]) -> Path:
    return Path(db).expanduser() if db is not None else db_path()


def photo_dir(session: str, db: Optional[PathLike] = None) -> Path:
    """Where the uploaded photos of a session live: beside the database, in a folder named by its random id."""
    if not session or not all(c.isalnum() or c in "-_" for c in session):
        raise ValueError("not a session id")
    return _resolve_db(db).parent / PHOTO_FOLDER / session


_ready: set[str] = set()
_ready_lock = threading.Lock()


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _prepare(con: sqlite3.Connection, path: Path) -> None:
    con.execute("PRAGMA journal_mode = WAL")
    found = con.execute("PRAGMA user_version").fetchone()[0]
    if found == 1:
        _migrate_v1(con)
    elif found == 2:
        _migrate_v2(con)
    elif found not in (0, SCHEMA_VERSION):
        raise ValueError(f"{path} is a review database of schema {found}, this version reads {SCHEMA_VERSION}")
    con.executescript(_SCHEMA)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@contextmanager
def _connect(db: Optional[PathLike] = None) -> Iterator[sqlite3.Connection]:
    path = _resolve_db(db)
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
                _prepare(con, path)
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


def _migrate_v1(con: sqlite3.Connection) -> None:
    """Schema 1 (sessions keyed by name, one verdict per item) to 2, in one transaction: each session gets a
    random id and fresh secrets nobody knows (the host issues new ones with ``review tokens``), and its
    verdicts move to one reviewer, "reviewer 1"."""
    with _write(con):
        if con.execute("PRAGMA user_version").fetchone()[0] != 1:
            return  # another process migrated the file while this one waited for the write lock
        con.execute("ALTER TABLE items RENAME TO items_v1")
        con.execute("ALTER TABLE sessions RENAME TO sessions_v1")
        for stmt in _statements(_SCHEMA):  # executescript would commit the open transaction
            con.execute(stmt)
        for old in con.execute("SELECT * FROM sessions_v1 ORDER BY created_at, name").fetchall():
            sid = new_session_id()
            con.execute("INSERT INTO sessions (id, name, arch, seed, geometry, threshold, target, created_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (sid, old["name"], old["arch"], old["seed"],
                                                           old["geometry"], old["threshold"], old["target"],
                                                           old["created_at"]))
            _issue(con, sid, "organiser")
            _issue(con, sid, "invite")
            con.execute("INSERT INTO items SELECT ?, position, kind, ref, human, a_variant, b_variant, label, "
                        "scores, shown_at FROM items_v1 WHERE session = ?", (sid, old["name"]))
            judged = con.execute("SELECT COUNT(*) FROM items_v1 WHERE session = ? AND verdict IS NOT NULL",
                                 (old["name"],)).fetchone()[0]
            if judged:
                rid = _new_reviewer_id()
                con.execute("INSERT INTO reviewers VALUES (?, ?, 'reviewer 1', ?)", (sid, rid, old["created_at"]))
                con.execute("INSERT INTO verdicts SELECT ?, position, ?, verdict, note, "
                            "COALESCE(decided_at, shown_at, 0) FROM items_v1 WHERE session = ? AND verdict IS NOT "
                            "NULL", (sid, rid, old["name"]))
        con.execute("DROP TABLE items_v1")
        con.execute("DROP TABLE sessions_v1")
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _migrate_v2(con: sqlite3.Connection) -> None:
    """Schema 2 to 3: sessions record the methods their maps come from; every older session showed the paper's
    two, which the column's default says."""
    with _write(con):
        if con.execute("PRAGMA user_version").fetchone()[0] != 2:
            return  # another process migrated the file while this one waited for the write lock
        con.execute(f"ALTER TABLE sessions ADD COLUMN methods TEXT NOT NULL DEFAULT '{_PAPER_METHODS}'")
        con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


# --- secrets -------------------------------------------------------------------------------------------


def new_session_id() -> str:
    """A random session id: not secret, but unguessable, so it says nothing about other sessions."""
    return "s" + secrets.token_hex(8)


def _new_reviewer_id() -> str:
    return "r" + secrets.token_hex(6)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _issue(con: sqlite3.Connection, session: str, role: str, reviewer: Optional[str] = None) -> str:
    token = TOKEN_PREFIX[role] + secrets.token_urlsafe(24)
    con.execute("INSERT INTO tokens VALUES (?, ?, ?, ?, ?)", (_digest(token), session, role, reviewer, time.time()))
    return token


@dataclass(frozen=True)
class Access:
    """What a token opens: one session, as its organiser, as a would-be reviewer (invite) or as one reviewer."""

    session: str
    role: str
    reviewer: Optional[str] = None


DENIED = "this token or code does not open a review session: check it, or ask the session's organiser"


def _checked_token(token) -> str:
    token = limits.text(token, "token", limits.MAX_TOKEN_CHARS)
    if not token:
        raise AccessDenied("a review token or invite code is needed")
    return token


def authorize(token, roles: Sequence[str] = ROLES, db: Optional[PathLike] = None) -> Access:
    """The access ``token`` grants if its role is one of ``roles``; AccessDenied otherwise (LimitError for a
    token over ``limits.MAX_TOKEN_CHARS``, refused before it is hashed)."""
    token = _checked_token(token)
    with _connect(db) as con:
        row = con.execute("SELECT session, role, reviewer FROM tokens WHERE digest = ?",
                          (_digest(token),)).fetchone()
    if row is None:
        raise AccessDenied(DENIED)
    access = Access(row["session"], row["role"], row["reviewer"])
    if access.role not in roles:
        needed = " or ".join({"organiser": "the organiser token", "invite": "the invite code",
                              "reviewer": "a reviewer token"}[r] for r in roles)
        raise AccessDenied(f"this needs {needed}; the {access.role} {'code' if access.role == 'invite' else 'token'}"
                           " you gave cannot do it")
    return access


def split_tokens(tokens) -> list[str]:
    """Tokens from a comma/newline/space-separated string or a list, each bounded, at most
    ``limits.MAX_TOKENS_PER_REQUEST``."""
    if tokens is None:
        return []
    if isinstance(tokens, str):
        if len(tokens) > limits.MAX_TOKENS_PER_REQUEST * (limits.MAX_TOKEN_CHARS + 1):
            raise limits.LimitError(f"tokens is {len(tokens):,} characters long; the limit is "
                                    f"{limits.MAX_TOKENS_PER_REQUEST * (limits.MAX_TOKEN_CHARS + 1):,}")
        tokens = tokens.replace(",", " ").split()
    if not isinstance(tokens, (list, tuple)):
        raise limits.LimitError("tokens must be text or a list of texts")
    if len(tokens) > limits.MAX_TOKENS_PER_REQUEST:
        raise limits.LimitError(f"{len(tokens)} tokens given; the limit is {limits.MAX_TOKENS_PER_REQUEST}")
    return [limits.text(t, "token", limits.MAX_TOKEN_CHARS) for t in tokens if isinstance(t, str) and t.strip()]


# --- what a session shows ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One thing to judge: a ClickMe record ("SHARD:INDEX") or a photo (path, optional human map path)."""

    kind: str
    ref: str
    human: Optional[str] = None

    def sample(self) -> Sample:
        """The record or photo as ``compare`` takes it, named without its server folder."""
        if self.kind == "clickme":
            sample = Sample.from_clickme(clickme.read_record(self.ref))
            sample.name = self.public_ref
            return sample
        human_raw = images.load_map(self.human) if self.human else None
        return Sample.from_image(images.load_image(self.ref), human_raw, name=self.public_ref)

    @property
    def public_ref(self) -> str:
        """What a client may see: the shard's file name and index, or the photo's file name; never a folder."""
        if self.kind == "clickme":
            shard, index = self.ref.rsplit(":", 1)
            return f"{Path(shard).name}:{index}"
        return Path(self.ref).name

    @property
    def public_human(self) -> Optional[str]:
        """The human map's file name, never its path on the server."""
        return Path(self.human).name if self.human else None


def clickme_items(shard: PathLike, start: int = 0, stop: Optional[int] = None) -> list[Source]:
    """Records ``start`` to ``stop`` (exclusive, clipped to the shard) of a ClickMe shard."""
    s = clickme.ClickMeShard(shard)
    path = str(s.path.resolve())
    return [Source("clickme", f"{path}:{i}") for i in range(max(0, start), min(len(s), len(s) if stop is None
                                                                                else stop))]


def demo_items(start: int = 0, stop: Optional[int] = None) -> list[Source]:
    """Records of the bundled demo shard."""
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
        raise ValueError(f"no photos ({', '.join(PHOTO_TYPES)}) in the folder {folder.name!r}")
    return out


def uploaded_photo_items(files: Sequence[PathLike], folder: PathLike) -> list[Source]:
    """Uploaded photos (and ``<photo>.human.png`` maps) copied into a session's own ``folder``, which outlives
    the upload's temporary files. The count and total size are bounded, and every file is read before any is
    kept, so a bad one is refused (``ValueError`` naming it) before the session exists."""
    paths = [Path(f) for f in files or []]
    if not paths:
        raise ValueError("upload the photos to review (a map named <photo>.human.png beside one is its human map)")
    if len(paths) > limits.MAX_SESSION_PHOTOS:
        raise limits.LimitError(f"{len(paths)} files uploaded; a session takes at most {limits.MAX_SESSION_PHOTOS}")
    total = sum(p.stat().st_size for p in paths)
    if total > limits.MAX_SESSION_UPLOAD_BYTES:
        raise limits.LimitError(f"the uploads are {total / 2**20:,.0f} MB together; a session takes at most "
                                f"{limits.MAX_SESSION_UPLOAD_BYTES / 2**20:,.0f} MB")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for p in paths:
        try:
            (images.load_map if p.name.lower().endswith(HUMAN_SUFFIX) else images.load_image)(str(p))
        except images.ImageError as e:
            raise images.ImageError(f"{p.name}: {e}") from None
        shutil.copyfile(p, folder / p.name)
    return photo_items(folder)


def create_session_from(name: str, make_sources, *, labels_fit=lambda sources: True,
                        db: Optional[PathLike] = None, **settings) -> Created:
    """A new session whose items ``make_sources(folder)`` makes, ``folder`` being the session's own photo
    folder; if anything fails the folder goes with it. Each item's label is explained when
    ``labels_fit(sources)`` (the records' labels are classes of the model), else the model's prediction.
    ``settings``: ``create_session``'s keywords (arch, seed, geometry, threshold, hf_users, methods)."""
    sid = new_session_id()
    folder = photo_dir(sid, db)
    try:
        sources = make_sources(folder)
        return create_session(name, sources, target="label" if labels_fit(sources) else "pred", session_id=sid,
                              db=db, **settings)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


# --- sessions, reviewers and items ---------------------------------------------------------------------


@dataclass(frozen=True)
class SessionInfo:
    """A review session as stored: what it compares and how, and how far it is."""

    id: str
    name: str
    arch: str
    seed: int
    geometry: str
    threshold: float
    target: str
    created_at: float
    hf_users: tuple
    n_items: int
    n_reviewers: int
    n_verdicts: int
    methods: tuple = MAPS  # the maps each model shows, in panel order


@dataclass(frozen=True)
class Created:
    """A new session and its two secrets, returned once: they are stored only as digests."""

    info: SessionInfo
    organiser_token: str
    invite_code: str


@dataclass(frozen=True)
class Item:
    """One position of a session. ``a_variant``/``b_variant`` are the hidden side assignment."""

    session: str
    position: int
    source: Source
    a_variant: str
    b_variant: str
    label: Optional[int]
    scores: Optional[dict]  # variant -> map -> {spearman, ceiling, dice, iou}, stored when first shown
    shown_at: Optional[float]

    def variant_for(self, side: str) -> str:
        """The model shown on ``side`` ("A" or "B")."""
        return {"A": self.a_variant, "B": self.b_variant}[side]

    def spearman(self, variant: str, map_name: str) -> Optional[float]:
        """The stored ρ of ``variant``'s ``map_name`` map with the human map; None before shown or undefined."""
        return None if self.scores is None else self.scores[variant][map_name]["spearman"]


@dataclass(frozen=True)
class Verdict:
    """One reviewer's verdict on one item."""

    item: Item
    reviewer: str
    verdict: str
    note: Optional[str]
    decided_at: float

    @property
    def preferred(self) -> str:
        """The variant the verdict chose, or "tie"/"neither"."""
        return self.item.variant_for(self.verdict) if self.verdict in ("A", "B") else self.verdict


@dataclass
class Shown:
    """An item with both models' outputs, arranged as the reviewer sees them."""

    item: Item
    comparison: Comparison

    @property
    def a(self) -> ModelOutput:
        """The output of the model shown as A."""
        return self.comparison.outputs[self.item.a_variant]

    @property
    def b(self) -> ModelOutput:
        """The output of the model shown as B."""
        return self.comparison.outputs[self.item.b_variant]


def _item(row: sqlite3.Row) -> Item:
    return Item(row["session"], row["position"], Source(row["kind"], row["ref"], row["human"]), row["a_variant"],
                row["b_variant"], row["label"], json.loads(row["scores"]) if row["scores"] else None,
                row["shown_at"])


def _session_info(con: sqlite3.Connection, session: str) -> SessionInfo:
    row = con.execute("SELECT s.*, (SELECT COUNT(*) FROM items i WHERE i.session = s.id) AS n_items, "
                      "(SELECT COUNT(*) FROM reviewers r WHERE r.session = s.id) AS n_reviewers, "
                      "(SELECT COUNT(*) FROM verdicts v WHERE v.session = s.id) AS n_verdicts "
                      "FROM sessions s WHERE s.id = ?", (session,)).fetchone()
    if row is None:
        raise AccessDenied(DENIED)
    return SessionInfo(row["id"], row["name"], row["arch"], row["seed"], row["geometry"], row["threshold"],
                       row["target"], row["created_at"], tuple(json.loads(row["hf_users"])), row["n_items"],
                       row["n_reviewers"], row["n_verdicts"], tuple(json.loads(row["methods"])))


def _hf_users(users) -> list[str]:
    if isinstance(users, str):
        users = users.replace(",", " ").split()
    users = [limits.text(u, "Hugging Face username", limits.MAX_NAME_CHARS) for u in users or ()]
    if len(users) > limits.MAX_HF_USERS:
        raise limits.LimitError(f"{len(users)} Hugging Face usernames given; the limit is {limits.MAX_HF_USERS}")
    return sorted({u.lower() for u in users if u})


def _check_new_session(name, sources, arch, geometry, target) -> str:
    name = limits.text(name, "session name", limits.MAX_NAME_CHARS, required=True)
    if not sources:
        raise ValueError("a session needs at least one item")
    if len(sources) > limits.MAX_REVIEW_ITEMS:
        raise limits.LimitError(f"a session has {len(sources)} items; the limit is {limits.MAX_REVIEW_ITEMS}")
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, not {geometry!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, not {target!r}")
    for v in zoo.VARIANTS:
        zoo.get(arch, v)
    for s in sources:
        if s.kind not in KINDS:
            raise ValueError(f"unknown item kind {s.kind!r}")
    return name


def session_methods(spec) -> tuple[str, ...]:
    """A session's methods from names or a comma-separated list (``methods.parse``; None: the paper's two), at
    most ``MAX_METHODS``; ValueError says what is wrong."""
    chosen = methods_.parse(spec)
    if len(chosen) > MAX_METHODS:
        raise ValueError(f"a review session shows at most {MAX_METHODS} methods per model, not {len(chosen)} "
                         f"({', '.join(chosen)})")
    return chosen


def create_session(name: str, sources: Sequence[Source], *, arch: str = "demo", seed=None, geometry: str = "paper",
                   threshold: float = DEFAULT_THRESHOLD, target: str = "label", hf_users: Iterable[str] = (),
                   session_id: Optional[str] = None, methods=None, db: Optional[PathLike] = None) -> Created:
    """A new session over ``sources`` in that order, each item's "A" model drawn from ``seed`` (None: a secret
    ``secrets.randbits(63)``); returns it with its organiser token and invite code. ``hf_users``: Hugging Face
    usernames who may join without the code. ``session_id``: one from ``new_session_id`` (the caller may need
    the photo folder before the session exists). ``methods``: the maps each model shows (``session_methods``;
    None: the paper's two)."""
    name = _check_new_session(name, sources, arch, geometry, target)
    chosen = session_methods(methods)
    seed = limits.optional_seed(seed)
    seed = secrets.randbits(63) if seed is None else seed
    allowed = _hf_users(hf_users)
    sid = session_id or new_session_id()
    photo_dir(sid, db)  # the id must be one a folder can be named by
    dcls_first = np.random.default_rng(seed).integers(0, 2, len(sources)).astype(bool)
    base, dcls = zoo.VARIANTS
    rows = [(sid, k, s.kind, s.ref, s.human, dcls if a else base, base if a else dcls)
            for k, (s, a) in enumerate(zip(sources, dcls_first))]
    with _connect(db) as con:
        with _write(con):
            con.execute("INSERT INTO sessions (id, name, arch, seed, geometry, threshold, target, created_at, "
                        "hf_users, methods) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (sid, name, arch, seed, geometry, float(threshold), target, time.time(), json.dumps(allowed),
                         json.dumps(list(chosen))))
            con.executemany("INSERT INTO items (session, position, kind, ref, human, a_variant, b_variant) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            organiser, invite = _issue(con, sid, "organiser"), _issue(con, sid, "invite")
        return Created(_session_info(con, sid), organiser, invite)


def _add_reviewer(con: sqlite3.Connection, session: str, rid: str, name: str) -> None:
    if con.execute("SELECT 1 FROM reviewers WHERE session = ? AND id = ?", (session, rid)).fetchone():
        return
    n = con.execute("SELECT COUNT(*) FROM reviewers WHERE session = ?", (session,)).fetchone()[0]
    if n >= limits.MAX_SESSION_REVIEWERS:
        raise limits.LimitError(f"this session has {n} reviewers; the limit is {limits.MAX_SESSION_REVIEWERS}")
    con.execute("INSERT INTO reviewers VALUES (?, ?, ?, ?)", (session, rid, name, time.time()))


def join(code, name: str = "", *, hf_username: Optional[str] = None,
         db: Optional[PathLike] = None) -> tuple[Access, Optional[str]]:
    """Join a session as a reviewer: (access, new reviewer token).

    ``code``: the invite code (a new reviewer, named ``name``), a reviewer token (rejoining: the same reviewer,
    no new token), or, with ``hf_username`` signed in through Hugging Face, the session id of a session that
    lists that user (reviewer ``hf:<username>``, the same on every visit; a fresh token each time)."""
    code = _checked_token(code)
    name = limits.text(name, "reviewer name", limits.MAX_NAME_CHARS)
    if code.startswith(TOKEN_PREFIX["reviewer"]):
        return authorize(code, ("reviewer",), db), None
    if code.startswith(TOKEN_PREFIX["invite"]):
        session, rid = authorize(code, ("invite",), db).session, _new_reviewer_id()
        name = name or "reviewer"
    elif hf_username:
        session, rid = _hf_session(code, hf_username, db)
        name = name or hf_username
    else:
        raise AccessDenied(DENIED if code.startswith(tuple(TOKEN_PREFIX.values())) else
                           "give the invite code (or sign in with Hugging Face, if the organiser allowed you)")
    with _connect(db) as con, _write(con):
        _add_reviewer(con, session, rid, name)
        token = _issue(con, session, "reviewer", rid)
    return Access(session, "reviewer", rid), token


def _hf_session(session: str, hf_username: str, db: Optional[PathLike]) -> tuple[str, str]:
    user = limits.text(hf_username, "Hugging Face username", limits.MAX_NAME_CHARS, required=True).lower()
    with _connect(db) as con:
        row = con.execute("SELECT hf_users FROM sessions WHERE id = ?", (session,)).fetchone()
    if row is None or user not in json.loads(row["hf_users"]):
        raise AccessDenied(f"{DENIED} (signed in as {hf_username}: not on this session's list)")
    return session, HF_PREFIX + user


def sessions(db: Optional[PathLike] = None) -> list[SessionInfo]:
    """Every session, oldest first: the host's view (the ``review list`` CLI), never a network endpoint's."""
    with _connect(db) as con:
        ids = [r[0] for r in con.execute("SELECT id FROM sessions ORDER BY created_at, id")]
        return [_session_info(con, s) for s in ids]


def sessions_for(tokens, db: Optional[PathLike] = None) -> list[tuple[Access, SessionInfo]]:
    """The sessions the given tokens open, once each (an organiser token wins over a reviewer's); tokens that
    open nothing are skipped."""
    found: dict[str, Access] = {}
    for t in split_tokens(tokens):
        try:
            a = authorize(t, ("organiser", "reviewer"), db)
        except AccessDenied:
            continue
        if a.session not in found or a.role == "organiser":
            found[a.session] = a
    with _connect(db) as con:
        out = []
        for a in found.values():
            try:
                out.append((a, _session_info(con, a.session)))
            except AccessDenied:  # deleted between the two lookups
                continue
    return sorted(out, key=lambda p: (p[1].created_at, p[1].id))


def get_session(session: str, db: Optional[PathLike] = None) -> SessionInfo:
    """A session by id (AccessDenied when there is none)."""
    with _connect(db) as con:
        return _session_info(con, session)


def find_session(id_or_name: str, db: Optional[PathLike] = None) -> SessionInfo:
    """A session by id, else by name when exactly one has it (the host's CLI)."""
    with _connect(db) as con:
        rows = con.execute("SELECT id FROM sessions WHERE id = ? OR name = ?", (id_or_name, id_or_name)).fetchall()
        exact = [r[0] for r in rows if r[0] == id_or_name]
        if exact or len(rows) == 1:
            return _session_info(con, (exact or [rows[0][0]])[0])
    if not rows:
        raise KeyError(f"no review session with the id or name {id_or_name!r}")
    raise KeyError(f"{len(rows)} sessions are named {id_or_name!r}: give one's id (see `review list`)")


def issue_secrets(session: str, db: Optional[PathLike] = None) -> Created:
    """New organiser token and invite code for a session; the old ones stop working (reviewer tokens stay)."""
    with _connect(db) as con:
        with _write(con):
            _session_info(con, session)
            con.execute("DELETE FROM tokens WHERE session = ? AND role IN ('organiser', 'invite')", (session,))
            organiser, invite = _issue(con, session, "organiser"), _issue(con, session, "invite")
        return Created(_session_info(con, session), organiser, invite)


def delete_session(session: str, db: Optional[PathLike] = None) -> None:
    """Remove a session, its items, reviewers, verdicts, tokens and its uploaded photos' folder."""
    with _connect(db) as con, _write(con):
        if con.execute("DELETE FROM sessions WHERE id = ?", (session,)).rowcount == 0:
            raise AccessDenied(DENIED)
    shutil.rmtree(photo_dir(session, db), ignore_errors=True)


def reviewers(session: str, db: Optional[PathLike] = None) -> dict[str, str]:
    """{reviewer id: display name} in joining order."""
    with _connect(db) as con:
        return {r["id"]: r["name"] for r in con.execute("SELECT id, name FROM reviewers WHERE session = ? "
                                                        "ORDER BY joined_at, id", (session,))}


def _position(position) -> int:
    return limits.whole_number(position, "position", 0, limits.MAX_REVIEW_ITEMS - 1)


def item(session: str, position, db: Optional[PathLike] = None) -> Item:
    """Item ``position`` of a session (validated before it reaches SQLite)."""
    position = _position(position)
    with _connect(db) as con:
        row = con.execute("SELECT * FROM items WHERE session = ? AND position = ?", (session, position)).fetchone()
        if row is None:
            n = _session_info(con, session).n_items
            raise ValueError(f"this session has items 0..{n - 1}, not {position}")
        return _item(row)


def items(session: str, db: Optional[PathLike] = None) -> list[Item]:
    """Every item of a session in order."""
    with _connect(db) as con:
        _session_info(con, session)
        return [_item(r) for r in con.execute("SELECT * FROM items WHERE session = ? ORDER BY position",
                                              (session,))]


def next_item(session: str, reviewer: str, db: Optional[PathLike] = None) -> Optional[Item]:
    """The first item ``reviewer`` has not judged, or None when they are finished."""
    with _connect(db) as con:
        _session_info(con, session)
        row = con.execute("SELECT * FROM items i WHERE session = ? AND NOT EXISTS (SELECT 1 FROM verdicts v WHERE "
                          "v.session = i.session AND v.position = i.position AND v.reviewer = ?) ORDER BY position "
                          "LIMIT 1", (session, reviewer)).fetchone()
        return None if row is None else _item(row)


def show(session: str, reviewer: str, position=None, *, pair=None, device=None,
         checkpoint_dir: Optional[PathLike] = None, db: Optional[PathLike] = None) -> Optional[Shown]:
    """Run both models on an item (default: the reviewer's ``next_item``) and store their scores; None when the
    reviewer is finished. ``pair``: the loaded {variant: LoadedModel} of the session's arch; by default
    the runtime's (``runtime.current().load_pair``)."""
    info = get_session(session, db)
    it = next_item(session, reviewer, db) if position is None else item(session, position, db)
    if it is None:
        return None
    if pair is None:
        from .runtime import current

        pair = current().load_pair(info.arch, device=device,
                                   checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None)
    ids = {v: m.entry.arch for v, m in pair.items()}
    if set(pair) != set(zoo.VARIANTS) or set(ids.values()) != {info.arch}:
        raise ValueError(f"this session compares {info.arch}'s {' and '.join(zoo.VARIANTS)}; "
                         f"got {sorted(f'{a}.{v}' for v, a in ids.items())}")
    comp = compare(pair, it.source.sample(), info.target, info.threshold, info.geometry, methods=info.methods)
    scores = {v: {m: s.as_dict() for m, s in o.scores.items()} for v, o in comp.outputs.items()}
    scores["checkpoints"] = {v: o.provenance.checkpoint_sha256 for v, o in comp.outputs.items()}
    scores["targets"] = {v: o.target for v, o in comp.outputs.items()}
    with _connect(db) as con, _write(con):
        con.execute("UPDATE items SET scores = ?, label = ?, shown_at = COALESCE(shown_at, ?) WHERE session = ? "
                    "AND position = ?", (json.dumps(scores), comp.sample.label, time.time(), session, it.position))
    return Shown(item(session, it.position, db), comp)


def record_verdict(session: str, reviewer: str, position, verdict: str, note: str = "",
                   db: Optional[PathLike] = None) -> Verdict:
    """Store (or replace) ``reviewer``'s verdict on an item that has been shown; committed before returning."""
    position = _position(position)
    note = limits.text(note, "note", limits.MAX_NOTE_CHARS)
    if verdict not in VERDICTS:
        raise ValueError(f"a verdict is one of {', '.join(VERDICTS)}, not {str(verdict)[:20]!r}")
    with _connect(db) as con:
        with _write(con):
            row = con.execute("SELECT scores FROM items WHERE session = ? AND position = ?",
                              (session, position)).fetchone()
            if row is None:
                n = _session_info(con, session).n_items
                raise ValueError(f"this session has items 0..{n - 1}, not {position}")
            if row["scores"] is None:
                # the reveal compares the verdict with the scores of what was shown, so there must be some
                raise ValueError(f"item {position} has not been shown yet")
            con.execute("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?, ?)",
                        (session, position, reviewer, verdict, note or None, time.time()))
        return _verdicts(con, session, reviewer, position)[0]


def _verdicts(con: sqlite3.Connection, session: str, reviewer: Optional[str] = None,
              position: Optional[int] = None) -> list[Verdict]:
    sql = ("SELECT i.*, v.reviewer, v.verdict, v.note, v.decided_at FROM verdicts v JOIN items i ON "
           "i.session = v.session AND i.position = v.position JOIN reviewers r ON r.session = v.session AND "
           "r.id = v.reviewer WHERE v.session = ?")
    args: list = [session]
    if reviewer is not None:
        sql, args = sql + " AND v.reviewer = ?", args + [reviewer]
    if position is not None:
        sql, args = sql + " AND v.position = ?", args + [position]
    rows = con.execute(sql + " ORDER BY r.joined_at, r.id, v.position", args).fetchall()
    return [Verdict(_item(r), r["reviewer"], r["verdict"], r["note"], r["decided_at"]) for r in rows]


def verdicts(session: str, reviewer: Optional[str] = None, db: Optional[PathLike] = None) -> list[Verdict]:
    """The verdicts of one reviewer, or of all (in joining order), each with its item."""
    with _connect(db) as con:
        _session_info(con, session)
        return _verdicts(con, session, reviewer)


def progress(session: str, reviewer: Optional[str] = None, db: Optional[PathLike] = None) -> dict:
    """{n_items, n_done, n_left, next_position, counts per verdict} of one reviewer; without one, the
    session's totals (n_reviewers, n_verdicts, counts over everyone)."""
    with _connect(db) as con:
        info = _session_info(con, session)
        mine = _verdicts(con, session, reviewer)
    counts = dict.fromkeys(VERDICTS, 0)
    for v in mine:
        counts[v.verdict] += 1
    out = {"session": session, "name": info.name, "n_items": info.n_items, "counts": counts}
    if reviewer is None:
        return {**out, "n_reviewers": info.n_reviewers, "n_verdicts": info.n_verdicts}
    done = {v.item.position for v in mine}
    left = [p for p in range(info.n_items) if p not in done]
    return {**out, "reviewer": reviewer, "n_done": len(done), "n_left": len(left),
            "next_position": left[0] if left else None}


def _summary(judged: Sequence[Verdict], methods: Sequence[str]) -> dict:
    """How often DCLS was preferred (with a 95 % Wilson interval and a two-sided binomial p) and how often the
    chosen model had the higher ρ, per map of the session's ``methods``."""
    base, dcls = zoo.VARIANTS
    counts = dict.fromkeys(VERDICTS, 0)
    for v in judged:
        counts[v.verdict] += 1
    ab = [v for v in judged if v.verdict in ("A", "B")]
    k_dcls = sum(v.preferred == dcls for v in ab)
    agreement = {}
    for m in methods:
        agreed = compared = 0
        for v in ab:
            chosen = v.preferred
            r_c, r_o = v.item.spearman(chosen, m), v.item.spearman(base if chosen == dcls else dcls, m)
            if r_c is None or r_o is None or r_c == r_o:
                continue
            compared += 1
            agreed += r_c > r_o
        agreement[m] = {"n": compared, "agreed": agreed, "rate": agreed / compared if compared else None,
                        "left_out": len(ab) - compared}
    return {"n_verdicts": len(judged), "counts": counts, "dcls_preferred": k_dcls,
            "baseline_preferred": len(ab) - k_dcls, "ties": counts["tie"], "neither": counts["neither"],
            "preference": stats.preference(k_dcls, len(ab)),
            "dcls_was_a": sum(v.item.a_variant == dcls for v in judged), "agreement": agreement}


def rating_table(judged: Sequence[Verdict]) -> tuple[list[int], list[str], np.ndarray]:
    """Fleiss' input: (positions, raters, counts[item, category]) over the items every rater with a verdict
    judged, categories ``PREFERENCES``."""
    by_rater: dict[str, dict[int, str]] = {}
    for v in judged:
        by_rater.setdefault(v.reviewer, {})[v.item.position] = v.preferred
    raters = list(by_rater)
    common = sorted(set.intersection(*(set(d) for d in by_rater.values()))) if raters else []
    table = np.zeros((len(common), len(PREFERENCES)), dtype=np.int64)
    for i, pos in enumerate(common):
        for r in raters:
            table[i, PREFERENCES.index(by_rater[r][pos])] += 1
    return common, raters, table


def inter_rater(judged: Sequence[Verdict]) -> dict:
    """Fleiss' κ over the items every reviewer with a verdict judged (None when fewer than two reviewers or
    no common item)."""
    common, raters, table = rating_table(judged)
    out = {"method": "Fleiss' kappa", "categories": list(PREFERENCES), "n_items": len(common),
           "n_raters": len(raters), "kappa": None, "p_bar": None, "p_e": None}
    if len(raters) >= 2 and common:
        out.update(stats.fleiss_kappa(table))
    return out


def reveal(session: str, reviewer: Optional[str] = None, db: Optional[PathLike] = None) -> dict:
    """Unblinded results. With ``reviewer``: that reviewer's own, only once they judged every item. Without
    (the organiser, any time): pooled over everyone, per reviewer, and Fleiss' κ between reviewers.

    ``preference`` counts A/B verdicts only (ties and "neither" are reported beside it) with a two-sided
    binomial test against 1/2 and a 95 % Wilson interval. ``agreement[map]`` counts A/B verdicts whose chosen
    model had the higher Spearman for that map; items where either ρ is undefined or both are equal are left out.
    """
    info = get_session(session, db)
    judged = verdicts(session, reviewer, db)
    if reviewer is not None:
        left = info.n_items - len(judged)
        if left:
            raise AccessDenied(f"the reveal opens once you have judged every item: {left} of {info.n_items} left")
        return {"session": session, "name": info.name, "reviewer": reviewer, "methods": list(info.methods),
                **_summary(judged, info.methods)}
    names = reviewers(session, db)
    per = [{"reviewer": rid, "name": nm, **_summary([v for v in judged if v.reviewer == rid], info.methods)}
           for rid, nm in names.items()]
    return {"session": session, "name": info.name, "n_items": info.n_items, "n_reviewers": len(names),
            "methods": list(info.methods), **_summary(judged, info.methods), "reviewers": per,
            "inter_rater": inter_rater(judged)}


def export_columns(methods: Sequence[str] = MAPS) -> tuple[str, ...]:
    """The export's columns for a session of ``methods``: each score column names its method."""
    return ("session", "name", "reviewer", "reviewer_name", "position", "kind", "ref", "human", "label",
            "a_variant", "b_variant", "verdict", "preferred", "note", "shown_at", "decided_at",
            *(f"spearman_{side}_{m}" for side in ("A", "B") for m in methods),
            *(f"spearman_{v}_{m}" for v in zoo.VARIANTS for m in methods))


def _export_row(v: Verdict, info: SessionInfo, names: dict) -> dict:
    it = v.item
    row = {"session": info.id, "name": info.name, "reviewer": v.reviewer, "reviewer_name": names.get(v.reviewer),
           "position": it.position, "kind": it.source.kind, "ref": it.source.public_ref,
           "human": it.source.public_human, "label": it.label, "a_variant": it.a_variant, "b_variant": it.b_variant,
           "verdict": v.verdict, "preferred": v.preferred, "note": v.note, "shown_at": it.shown_at,
           "decided_at": v.decided_at}
    for m in info.methods:
        for side in ("A", "B"):
            row[f"spearman_{side}_{m}"] = it.spearman(it.variant_for(side), m)
        for var in zoo.VARIANTS:
            row[f"spearman_{var}_{m}"] = it.spearman(var, m)
    return row


def export_csv(session: str, path: PathLike, reviewer: Optional[str] = None,
               db: Optional[PathLike] = None) -> Path:
    """One row per reviewer and judged item (one reviewer's only, if given) with the sides and the scores;
    ``ref`` is the shard's file name and index or the photo's file name, never a server folder."""
    path = Path(path)
    info, names = get_session(session, db), reviewers(session, db)
    rows = [_export_row(v, info, names) for v in verdicts(session, reviewer, db)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        columns = export_columns(info.methods)
        w = csv.DictWriter(f, columns, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if r[k] is None else (repr(r[k]) if isinstance(r[k], float) else r[k])
                        for k in columns})
    return path


# --- the host's command line -----------------------------------------------------------------------------


def _cmd_list(args) -> int:
    for s in sessions(args.db):
        allowed = f" · hf: {', '.join(s.hf_users)}" if s.hf_users else ""
        print(f"{s.id}  {s.name!r} · {s.arch} · {', '.join(s.methods)} · {s.n_items} items · "
              f"{s.n_reviewers} reviewers · "
              f"{s.n_verdicts} verdicts · created {time.strftime('%Y-%m-%d %H:%M', time.gmtime(s.created_at))} "
              f"UTC{allowed}")
    return 0


def _cmd_tokens(args) -> int:
    made = issue_secrets(find_session(args.session, args.db).id, args.db)
    print(f"session:         {made.info.id} ({made.info.name!r})\norganiser token: {made.organiser_token}\n"
          f"invite code:     {made.invite_code}\n(the previous organiser token and invite code no longer work)")
    return 0


def add_parser(sub) -> None:
    """``review list`` and ``review tokens``: the host's tools, working on the database file directly."""
    r = sub.add_parser("review", help="review sessions on this machine's database: list them, issue secrets")
    rs = r.add_subparsers(dest="review_command", required=True)
    lst = rs.add_parser("list", help="every session: id, name, items, reviewers, verdicts")
    tok = rs.add_parser("tokens", help="issue a session a new organiser token and invite code (the old ones "
                                       "stop working) and print them")
    tok.add_argument("session", metavar="SESSION_ID_OR_NAME")
    for p, fn in ((lst, _cmd_list), (tok, _cmd_tokens)):
        p.add_argument("--db", type=Path, default=None, help=f"the database (default: ${DB_ENV}, else the cache)")
        p.set_defaults(func=fn)
