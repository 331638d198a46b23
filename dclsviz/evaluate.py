"""Dataset evaluation: every (model, ClickMe record) through ``explain_batch``, resumably, then the study's tables.

``python -m dclsviz evaluate --arch demo --demo --out runs/demo`` writes, in ``--out``:

* ``per_image.csv``: one row per (arch, variant, shard, index), appended and fsynced batch by batch, so a
  killed run loses at most the batch in flight; a rerun skips the rows present and drops a torn last line.
  A malformed line is moved aside into ``per_image.malformed-<UTC time>.csv`` and its row computed again.
  Writers and readers of a folder take ``folder_lock``; readers open the file read-only.
* ``run.json``: what the rows were computed with (geometry, threshold, target, checkpoint hashes); a rerun
  with other settings or other checkpoints is refused instead of mixing incomparable rows.
* ``summary.json``: per arch × variant × map the mean ρ and its ceiling-normalised score, and per arch × map
  the paired DCLS − baseline statistics (``stats.paired``), over the records and models of this run.
  Damaged data is listed there: the spans the shard index skipped (``damaged_spans``) and the records that
  could not be read or decoded (``skipped_records``), which have no row.
* ``scatter.png``: the paper's Figure 2 (baseline score against DCLS score, one point per model and CAM).
* ``table1.txt``: the paper's Table 1 layout, also printed to stdout; with ``--methods`` or ``--faithfulness``
  a per-method block follows (mean ρ per variant, Δρ with its CI and Wilcoxon p, faithfulness means).
* ``robustness.png``: mean Δρ (DCLS − baseline) with its 95 % CI for every method and architecture.
* ``plausibility_faithfulness.png`` (with ``--faithfulness``): mean ρ against mean deletion AUC per model and method.

``--methods`` adds ``spearman_<method>`` (and ceiling, dice, iou) columns, ``--faithfulness`` the
``deletion_<method>``, ``insertion_<method>``, ``road_<method>`` ones. A folder's header fixes its methods: a
folder made with the paper's two (every folder made before methods existed) resumes with them; asking for
other methods there is refused with the flags that would resume it.

All maps and scores come from ``compare.explain_batch``; this module only schedules, stores and aggregates.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Sequence

from tqdm import tqdm

from . import clickme, datapath, metrics, report, stats, zoo
from .files import write_atomically, write_json
from .cam import DEFAULT_THRESHOLD
from .compare import MAPS, explain_batch, versions
from .faithfulness import Faithfulness
from .results import MapScores

if TYPE_CHECKING:
    from .models import LoadedModel

TARGET = "label"  # the study explains the record's ground-truth class
KEY = ("arch", "variant", "shard", "index")
_LEAD = (*KEY, "label", "target", "predicted")


def columns_for(methods: Sequence[str] = MAPS, faithfulness: bool = False) -> tuple[str, ...]:
    """The per-image CSV's columns for ``methods``: the scores of each, then (when asked) its faithfulness."""
    return (*_LEAD, *MapScores.csv_columns(methods), *(Faithfulness.csv_columns(methods) if faithfulness else ()))


def layout_of(header: Sequence[str]) -> Optional[tuple[tuple[str, ...], bool]]:
    """(methods, faithfulness) of a per-image CSV header; None when it is no header this version writes."""
    methods = tuple(c[len("spearman_"):] for c in header if c.startswith("spearman_"))
    for faithful in (False, True):
        if tuple(header) == columns_for(methods, faithful):
            return methods, faithful
    return None


COLUMNS = columns_for()  # the paper's two maps, no faithfulness: the default, and every older folder's
CSV_NAME, RUN_NAME, SUMMARY_NAME, SCATTER_NAME, TABLE_NAME = (
    "per_image.csv", "run.json", "summary.json", "scatter.png", "table1.txt")
ROBUSTNESS_NAME, PLAUSIBILITY_NAME = "robustness.png", "plausibility_faithfulness.png"
LOCK_NAME = ".lock"  # flock'ed by writers and readers of the folder
DEFAULT_BATCH = 32


class EvaluationError(ValueError):
    """The run cannot go on as asked (inconsistent output folder, bad input); the message says why."""


# --- what to evaluate --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One record of a run: the shard's file name and the record's index in it."""
    shard: str  # the shard's file name: the key in per_image.csv, stable when the data folder moves
    index: int


def resolve_shards(paths: Sequence[os.PathLike]) -> list[Path]:
    """Shard files from files or folders (a folder contributes its shards in numeric order)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = clickme.find_local_shards(p)
            if not found:
                raise EvaluationError(f"no ClickMe shards (*.tfrecords) in {p}")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise EvaluationError(f"no such shard or folder: {p}")
    return out


def open_shards(paths: Sequence[Path]) -> dict[str, clickme.ClickMeShard]:
    """The shards by file name; two shards with one file name are an error (rows are keyed by it)."""
    shards: dict[str, clickme.ClickMeShard] = {}
    for p in paths:
        if p.name in shards:
            if shards[p.name].path.resolve() == p.resolve():
                continue
            raise EvaluationError(f"two shards are named {p.name} ({shards[p.name].path} and {p}); rows are keyed "
                                  f"by file name, so evaluate them into different --out folders")
        shards[p.name] = clickme.ClickMeShard(p)
    return shards


def select_items(shards: dict[str, clickme.ClickMeShard], limit: Optional[int] = None) -> list[Item]:
    """The first ``limit`` records over the shards, in shard order."""
    items: list[Item] = []
    for name, shard in shards.items():
        take = len(shard) if limit is None else min(len(shard), limit - len(items))
        items.extend(Item(name, i) for i in range(take))
        if limit is not None and len(items) >= limit:
            break
    return items


# --- per_image.csv -----------------------------------------------------------------------------------


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)  # the shortest text that reads back as the same double
    return str(v)


def parse_float(s: str) -> Optional[float]:
    """A CSV cell as a float; the empty cell is None (undefined)."""
    return None if s == "" else float(s)


class ResultStore:
    """``per_image.csv``: append-only rows, fsynced per batch.

    Opened for writing (the default; only under ``folder_lock``) a torn last line is cut off and malformed
    lines (wrong field count, unparsable number, invalid UTF-8) are moved aside into
    ``per_image.malformed-<UTC time>.csv`` before the file is rewritten without them, so their rows are
    computed again. Opened with ``read_only=True`` nothing is ever written: a torn last line and malformed
    lines are left out of ``rows``. A header of another version is refused either way.

    ``columns``: the header a writer needs (``columns_for``); a file with another one is refused. None (readers)
    takes any header this version writes; ``columns`` is then the file's (``COLUMNS`` for a new file).
    """

    def __init__(self, path: Path, *, read_only: bool = False, columns: Optional[Sequence[str]] = None):
        self.path = Path(path)
        self.read_only = read_only
        self.wanted = None if columns is None else tuple(columns)
        self.columns = self.wanted or COLUMNS
        self.rows: dict[tuple, dict] = {}
        self.dropped_torn_line = False
        self.duplicates = 0
        self.malformed: list[str] = []  # "line N: why", in file order
        self.moved_aside: Optional[Path] = None
        self._file = None
        self._load()

    def _read(self) -> bytes:
        try:
            with open(self.path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""
        except OSError as e:
            raise EvaluationError(f"cannot read {self.path}: {e.strerror or e}") from None

    def _load(self) -> None:
        data = self._read()
        if data and not data.endswith(b"\n"):
            # Each batch is one write ending in a newline, so only a kill during a write (or a writer still
            # writing, for a reader) leaves a line without one, and then it is the last.
            data = data[:data.rfind(b"\n") + 1]
            self.dropped_torn_line = True
            if not self.read_only:
                self._truncate(len(data))
        lines = data.split(b"\n")[:-1]
        if not lines:
            return
        self._check_header(lines[0])
        good, bad = [lines[0]], []
        for lineno, raw in enumerate(lines[1:], start=2):
            try:
                row = _parse_line(raw, self.columns)
            except (ValueError, csv.Error) as e:
                self.malformed.append(f"line {lineno}: {e}")
                bad.append(raw)
                continue
            good.append(raw)
            key = tuple(row[k] for k in KEY)
            if key in self.rows:
                self.duplicates += 1
                continue
            self.rows[key] = row
        if bad and not self.read_only:
            self._move_aside(good, bad)

    def _check_header(self, raw: bytes) -> None:
        try:
            header = next(csv.reader([raw.decode("utf-8")]), [])
        except (UnicodeDecodeError, csv.Error) as e:
            raise EvaluationError(f"{self.path}: the header line is unreadable ({e}); use another --out folder") from None
        layout = layout_of(header)
        if layout is None:
            raise EvaluationError(f"{self.path} has columns {header}, not this version's {list(self.columns)}; "
                                  f"use another --out folder")
        if self.wanted is not None and tuple(header) != self.wanted:
            want = layout_of(self.wanted)
            raise EvaluationError(f"{self.path} holds {_layout_text(*layout)}, not the {_layout_text(*want)} asked "
                                  f"for: resume it with {_layout_flags(*layout)}, or use another --out folder")
        self.columns = tuple(header)

    def _truncate(self, size: int) -> None:
        try:
            with open(self.path, "rb+") as f:
                f.truncate(size)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise EvaluationError(f"cannot repair {self.path}: {e.strerror or e}") from None

    def _move_aside(self, good: list[bytes], bad: list[bytes]) -> None:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        side = self.path.with_name(f"{self.path.stem}.malformed-{stamp}{self.path.suffix}")
        try:
            write_atomically(side, b"".join(raw + b"\n" for raw in bad))
            write_atomically(self.path, b"".join(raw + b"\n" for raw in good))
        except OSError as e:
            raise EvaluationError(f"cannot repair {self.path}: {e.strerror or e}") from None
        self.moved_aside = side

    def repair_note(self) -> Optional[str]:
        """What opening the file changed, for the log; None when it was whole."""
        notes = []
        if self.dropped_torn_line:
            notes.append("dropped a torn last line left by an interrupted run")
        if self.moved_aside is not None:
            notes.append(f"moved {len(self.malformed)} malformed line(s) ({'; '.join(self.malformed[:5])}"
                         f"{'; …' if len(self.malformed) > 5 else ''}) to {self.moved_aside}; their rows are "
                         f"computed again")
        return f"{self.path}: " + "; ".join(notes) if notes else None

    def done(self, arch: str, variant: str) -> set[Item]:
        """The items that already have a row for ``arch``'s ``variant``."""
        return {Item(k[2], k[3]) for k in self.rows if k[0] == arch and k[1] == variant}

    def __enter__(self) -> "ResultStore":
        if self.read_only:
            raise EvaluationError(f"{self.path} was opened read-only")
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        if new:
            self._write([self.columns])
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()
        self._file = None

    def _write(self, rows: Iterable[Sequence]) -> None:
        self._file.write(csv_text(rows))
        self._file.flush()
        os.fsync(self._file.fileno())

    def append(self, rows: list[dict]) -> None:
        """Write ``rows`` at the end of the file (whole lines, flushed) and keep them in ``self.rows``."""
        self._write([row_cells(r, self.columns) for r in rows])
        for r in rows:
            self.rows[tuple(r[k] for k in KEY)] = {c: (_cell(r[c]) if c != "index" else r[c]) for c in self.columns}


def _layout_text(methods: Sequence[str], faithfulness: bool) -> str:
    return f"methods {','.join(methods)} {'with' if faithfulness else 'without'} faithfulness"


def _layout_flags(methods: Sequence[str], faithfulness: bool) -> str:
    return f"--methods {','.join(methods)}{' --faithfulness' if faithfulness else ''}"


def row_cells(row: dict, columns: Sequence[str] = COLUMNS) -> list[str]:
    """A row (as computed, or as read back) as the CSV's cells, in ``columns`` order."""
    return [_cell(row[c]) for c in columns]


def csv_text(rows: Iterable[Sequence]) -> str:
    """Rows as ``per_image.csv`` writes them (``\\n`` line ends, minimal quoting)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _parse_line(raw: bytes, columns: Sequence[str] = COLUMNS) -> dict:
    """One data line of ``per_image.csv`` as a row (strings, the index an int); ValueError says what is wrong."""
    fields = next(csv.reader([raw.decode("utf-8")]), [])
    if len(fields) != len(columns):
        raise ValueError(f"{len(fields)} fields, expected {len(columns)}")
    row = dict(zip(columns, fields))
    row["index"] = int(row["index"])
    int(row["target"]), int(row["predicted"])
    if row["label"] != "":  # a record without a label has none
        int(row["label"])
    for k in columns[len(_LEAD):]:
        parse_float(row[k])
    return row


_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


@contextmanager
def folder_lock(folder: Path):
    """Exclusive use of a run folder, across threads and processes: writers (``evaluate``) and readers alike.

    ``flock`` belongs to an open file, so two threads of one process could each hold their own; the
    per-folder ``threading.Lock`` orders threads, the ``flock`` on ``LOCK_NAME`` orders processes. The kernel
    drops the ``flock`` when a process dies, so a killed run leaves no stale lock. Not reentrant.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _thread_locks_guard:
        lock = _thread_locks.setdefault(str(folder.resolve()), threading.Lock())
    with lock, open(folder / LOCK_NAME, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def read_rows(folder: Path) -> dict[tuple, dict]:
    """The rows of ``folder/per_image.csv`` read under the folder's lock, without writing anything."""
    with folder_lock(folder):
        return ResultStore(Path(folder) / CSV_NAME, read_only=True).rows


def output_row(arch: str, variant: str, item: Item, label: Optional[int], out) -> dict:
    """The per-image CSV row of one model's output on one record: the scores (and faithfulness, when computed)
    of every map it carries."""
    row = {"arch": arch, "variant": variant, "shard": item.shard, "index": item.index, "label": label,
           "target": out.target, "predicted": out.top5[0][0]}
    for m in out.maps:
        row.update(out.scores[m].csv_cells(m))
    for m, f in out.faithfulness.items():
        row.update(f.csv_cells(m))
    return row


# --- run.json ----------------------------------------------------------------------------------------


class RunRecord:
    """``run.json``: the settings and checkpoint hashes the rows of this folder were computed with."""

    def __init__(self, out: Path, geometry: str, threshold: float, methods: Optional[Sequence[str]] = None,
                 faithfulness: Optional[bool] = None):
        """``methods``/``faithfulness``: what a writer asks for; None (readers) accepts the folder's."""
        self.path = out / RUN_NAME
        settings = {"geometry": geometry, "threshold": float(threshold), "target": TARGET}
        rows = out / CSV_NAME
        if not self.path.exists() and rows.exists() and rows.stat().st_size > 0:
            raise EvaluationError(f"{rows} exists without {RUN_NAME}, so its settings are unknown; "
                                  f"use another --out folder")
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {**settings, "checkpoints": {}}
        differ = {k: (self.data.get(k), v) for k, v in settings.items() if self.data.get(k) != v}
        if differ:
            said = ", ".join(f"{k} {old!r} (asked {new!r})" for k, (old, new) in differ.items())
            raise EvaluationError(f"{out} holds rows computed with {said}; use another --out folder")
        if not self.path.exists():  # a new folder holds what is asked
            self.data["methods"] = list(methods if methods is not None else MAPS)
            self.data["faithfulness"] = bool(faithfulness)
        # a folder from before methods existed holds the paper's two without faithfulness
        held = (tuple(self.data.setdefault("methods", list(MAPS))), bool(self.data.setdefault("faithfulness", False)))
        asked = (tuple(methods) if methods is not None else held[0],
                 bool(faithfulness) if faithfulness is not None else held[1])
        if asked != held:
            raise EvaluationError(f"{out} holds rows of {_layout_text(*held)}, not the {_layout_text(*asked)} asked "
                                  f"for: resume it with {_layout_flags(*held)}, or use another --out folder")

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods the rows of this folder carry."""
        return tuple(self.data["methods"])

    @property
    def faithfulness(self) -> bool:
        """Whether the rows of this folder carry faithfulness numbers."""
        return bool(self.data["faithfulness"])

    @property
    def checkpoints(self) -> dict:
        """Model id → the sha256 of the checkpoint its rows were computed with."""
        return self.data["checkpoints"]

    def check_checkpoint(self, model_id: str, sha256: Optional[str]) -> None:
        """Record ``model_id``'s checkpoint; refuse one that differs from the checkpoint of its existing rows."""
        old = self.checkpoints.get(model_id)
        if old is not None and sha256 is not None and old != sha256:
            raise EvaluationError(f"{model_id}: the rows in {self.path.parent} come from checkpoint {old[:12]}…, "
                                  f"this one is {sha256[:12]}…; use another --out folder")
        if old is None:
            self.checkpoints[model_id] = sha256
            write_json(self.path, self.data)

    def save(self) -> None:
        """Write run.json atomically."""
        write_json(self.path, self.data)


# --- the loop ----------------------------------------------------------------------------------------


def _progress(total: int, enabled: bool):
    return tqdm(total=total, unit="img", desc="evaluate", file=sys.stderr, disable=not enabled, smoothing=0.1)


def _download_bar(name: str, enabled: bool):
    bar = {}

    def update(done: int, total: Optional[int]) -> None:
        if "b" not in bar:
            bar["b"] = tqdm(total=total, unit="B", unit_scale=True, desc=name, file=sys.stderr, disable=not enabled)
        bar["b"].update(done - bar["b"].n)

    return update


@dataclass
class _Run:
    """What one ``evaluate`` call shares between its architectures."""

    shards: dict[str, clickme.ClickMeShard]
    items: Sequence[Item]
    store: ResultStore
    record: RunRecord
    pending: dict[tuple[str, str], set[Item]]  # (arch, variant) -> the items without a row yet
    workers: int
    bar: tqdm
    log: Callable[[str], None]
    threshold: float
    geometry: str
    batch_size: int
    on_progress: Optional[Callable[[int, int], None]]
    unreadable: dict[Item, str]
    methods: tuple[str, ...] = MAPS
    faithfulness: bool = False

    @classmethod
    def start(cls, out: Path, shards, items: Sequence[Item], archs, variants, *, geometry: str, threshold: float,
              batch_size: int, workers: int, log, progress: bool, on_progress, methods: Sequence[str] = MAPS,
              faithfulness: bool = False) -> "_Run":
        """Record the run's settings, open its rows (repairing a torn file) and find what is left to do.
        The caller holds ``folder_lock(out)``."""
        record = RunRecord(out, geometry, threshold, methods, faithfulness)
        record.save()
        store = ResultStore(out / CSV_NAME, columns=columns_for(methods, faithfulness))
        if store.repair_note():
            log(store.repair_note())
        pending = {(a, v): {it for it in items if it not in store.done(a, v)} for a in archs for v in variants}
        return cls(shards, items, store, record, pending, workers,
                   _progress(sum(len(p) for p in pending.values()), progress), log, threshold, geometry,
                   batch_size, on_progress, {}, tuple(methods), bool(faithfulness))


def evaluate(archs: Sequence[str], variants: Sequence[str], shards: dict[str, clickme.ClickMeShard],
             items: Sequence[Item], out: Path, *, geometry: str = "paper", threshold: float = DEFAULT_THRESHOLD,
             batch_size: int = DEFAULT_BATCH, device=None, checkpoint_dir: Optional[Path] = None,
             download: bool = True, progress: bool = True, log=None,
             on_progress: Optional[Callable[[int, int], None]] = None,
             loader: Optional[Callable[[str, str], "LoadedModel"]] = None,
             skipped_records: Optional[list[dict]] = None, workers: int = 0, methods: Sequence[str] = MAPS,
             faithfulness: bool = False) -> dict[str, str]:
    """Append the missing rows of ``archs`` × ``variants`` × ``items`` to ``out/per_image.csv``.

    The folder is held under ``folder_lock`` throughout. ``on_progress(done, total)`` is called after each
    batch (rows this call has to compute). ``loader(arch, variant)``: a ready model, e.g. from the app's pair
    cache; by default ``models.load``. A record that cannot be read or decoded is logged and skipped (it gets
    no row, so each later run tries and reports it again); ``skipped_records``, when given, receives one
    {shard, index, reason} per such record. Returns {arch: reason} for the architectures skipped because a
    checkpoint is unavailable. ``workers``: processes that read, decode and preprocess the records
    (``datapath``); 0 does it in a thread of this process, a batch ahead of the models. ``methods``: the maps
    scored (``methods.parse``); ``faithfulness``: also their deletion, insertion and ROAD (costly).
    """
    if batch_size < 1:
        raise EvaluationError("--batch-size must be at least 1")
    # through tqdm, so a message does not land in the middle of the progress bar's line
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    loader = loader or _checkpoint_loader(device, checkpoint_dir, download, progress)
    skipped: dict[str, str] = {}
    with folder_lock(out):
        run = _Run.start(out, shards, items, archs, variants, geometry=geometry, threshold=threshold,
                         batch_size=batch_size, workers=workers, log=log, progress=progress, on_progress=on_progress,
                         methods=methods, faithfulness=faithfulness)
        try:
            with run.store:
                for arch in archs:
                    if any(run.pending[arch, v] for v in variants):
                        _evaluate_arch(run, arch, {v: run.pending[arch, v] for v in variants if run.pending[arch, v]},
                                       loader, skipped)
        finally:
            run.bar.close()
    if skipped_records is not None:
        skipped_records.extend({"shard": it.shard, "index": it.index, "reason": why}
                               for it, why in run.unreadable.items())
    return skipped


def _checkpoint_loader(device, checkpoint_dir: Optional[Path], download: bool, progress: bool):
    """``loader(arch, variant)`` that loads the checkpoint (downloading it with a byte bar when allowed)."""
    import torch

    from .models import load

    device = torch.device(device) if device is not None else None

    def loader(arch: str, variant: str):
        entry = zoo.get(arch, variant)
        return load(entry, checkpoint_dir=checkpoint_dir, device=device, download=download,
                    progress=_download_bar(entry.checkpoint.file_name, progress))

    return loader


def _evaluate_arch(run: _Run, arch: str, todo: dict[str, set[Item]], loader, skipped: dict[str, str]) -> None:
    """One architecture's missing rows, batch by batch; a checkpoint problem skips the architecture."""
    from .cam import CamEngine
    from .checkpoints import CheckpointError

    loaded = {}
    try:
        for v in todo:
            loaded[v] = loader(arch, v)
    except CheckpointError as e:
        skipped[arch] = str(e)
        run.log(f"skipping {arch}: {e}")
        run.bar.total -= sum(len(t) for t in todo.values())
        run.bar.refresh()
        return  # the variant that did load is of no use alone
    for v, lm in loaded.items():
        run.record.check_checkpoint(lm.entry.id, lm.provenance().checkpoint_sha256)
    engines = {v: CamEngine(lm) for v, lm in loaded.items()}
    transforms = list(dict.fromkeys(lm.entry.transform for lm in loaded.values()))
    union = [it for it in run.items if any(it in t for t in todo.values())]
    pin = any(lm.device.type == "cuda" for lm in loaded.values())
    for batch in datapath.batches(run.shards, union, transforms, run.batch_size, run.workers, pin):
        for it, why in batch.failed:
            if it not in run.unreadable:
                run.unreadable[it] = why
                run.log(f"skipping {it.shard} record {it.index}: {why}")
            run.bar.total -= sum(it in t for t in todo.values())
        rows = [row for v, lm in loaded.items() for row in _batch_rows(run, arch, v, lm, engines[v], batch, todo[v])]
        if rows:
            run.store.append(rows)
        run.bar.update(len(rows))
        if run.on_progress is not None:
            run.on_progress(run.bar.n, run.bar.total)


def _batch_rows(run: _Run, arch: str, variant: str, lm, engine, batch, todo: set[Item]) -> list[dict]:
    """One model's rows for the records of ``batch`` it still lacks (all of them, but in a resumed run)."""
    idx = [i for i, it in enumerate(batch.items) if it in todo]
    if not idx:
        return []
    x, windows = batch.inputs[lm.entry.transform]
    if len(idx) < len(batch.items):
        x, windows = x[idx], [windows[i] for i in idx]
    outs = explain_batch(lm, [batch.samples[i] for i in idx], TARGET, run.threshold, run.geometry, engine,
                         inputs=(x, windows), methods=run.methods, faithfulness=run.faithfulness)
    return [output_row(arch, variant, batch.items[i], batch.labels[i], o) for i, o in zip(idx, outs)]


# --- aggregation -------------------------------------------------------------------------------------


def row_methods(rows) -> tuple[tuple[str, ...], bool]:
    """(methods, faithfulness) the per-image rows carry (the paper's two for none)."""
    first = next(iter(rows), None)
    if first is None:
        return MAPS, False
    methods = tuple(k[len("spearman_"):] for k in first if k.startswith("spearman_"))
    return methods, all(f"deletion_{m}" in first for m in methods)


def _mean(rows, column: str) -> Optional[float]:
    return metrics.summarise(parse_float(r[column]) for r in rows)["mean"]


def _model_entry(rows: dict[tuple, dict], methods: Sequence[str], faithful: bool) -> dict:
    """One model's summary: images, top-1 accuracy, and per method its mean scores (and faithfulness)."""
    entry = {"n_images": len(rows),
             "top1_accuracy": (sum(r["predicted"] == r["label"] for r in rows.values()) / len(rows)
                               if all(r["label"] != "" for r in rows.values()) else None)}
    for m in methods:
        s = metrics.summarise(parse_float(r[f"spearman_{m}"]) for r in rows.values())
        entry[m] = {"mean_spearman": s["mean"], "ceiling_normalised": s["ceiling_normalised"], "n": s["n"],
                    "n_defined": s["n_defined"], "n_undefined": s["n_undefined"],
                    "mean_dice": _mean(rows.values(), f"dice_{m}"), "mean_iou": _mean(rows.values(), f"iou_{m}")}
        if faithful:
            entry[m].update({f"mean_{f}": _mean(rows.values(), f"{f}_{m}") for f in Faithfulness.FIELDS})
    return entry


def _paired(base: dict[tuple, dict], dcls: dict[tuple, dict], m: str, n_resamples: int, seed: int) -> dict:
    """Paired DCLS − baseline statistics of ``m``'s ρ over the images both models have a defined ρ for."""
    b_vals, d_vals = [], []
    for key in sorted(base.keys() & dcls.keys()):
        b, d = parse_float(base[key][f"spearman_{m}"]), parse_float(dcls[key][f"spearman_{m}"])
        if b is not None and d is not None and math.isfinite(b) and math.isfinite(d):
            b_vals.append(b)
            d_vals.append(d)
    return stats.paired(b_vals, d_vals, n_resamples=n_resamples, seed=seed)


def summarise(store_rows: dict[tuple, dict], archs: Sequence[str], variants: Sequence[str], items: Sequence[Item],
              *, n_resamples: int = stats.N_RESAMPLES, seed: int = stats.SEED) -> dict:
    """Per model × method means and per arch × method paired statistics, over ``items`` only, for every method
    (and the faithfulness numbers) the rows carry."""
    wanted = {(it.shard, it.index) for it in items}
    by_model: dict[tuple[str, str], dict[tuple, dict]] = {}
    for (a, v, s, i), row in store_rows.items():
        if a in archs and v in variants and (s, i) in wanted:
            by_model.setdefault((a, v), {})[(s, i)] = row
    methods, faithful = row_methods(store_rows.values())
    models: dict[str, dict] = {}
    for (a, v), rows in sorted(by_model.items()):
        models.setdefault(a, {})[v] = _model_entry(rows, methods, faithful)
    paired: dict[str, dict] = {}
    for a in archs:
        base, dcls = by_model.get((a, "baseline")), by_model.get((a, "dcls"))
        if base and dcls:
            paired[a] = {m: _paired(base, dcls, m, n_resamples, seed) for m in methods}
    return {"methods": list(methods), "faithfulness": faithful, "models": models, "paired": paired}


def data_report(shards: dict[str, clickme.ClickMeShard], skipped_records: Sequence[dict] = ()) -> dict:
    """The summary's account of the data: shard file names (never a server path), the damaged spans their
    indexing skipped and the records that could not be read, which have no row and are in no mean."""
    report = {"shards": list(shards),
              "damaged_spans": [{"shard": name, "offset": o, "reason": why}
                                for name, sh in shards.items() for o, why in sh.damaged],
              "skipped_records": list(skipped_records)}
    if report["skipped_records"] or report["damaged_spans"]:
        report["skipped_note"] = ("damaged data was skipped: the records listed have no row and are left out of "
                                  "every mean; a rerun reports them again")
    return report


def build_summary(rows: dict[tuple, dict], archs: Sequence[str], variants: Sequence[str],
                  shards: dict[str, clickme.ClickMeShard], items: Sequence[Item], *, geometry: str, threshold: float,
                  checkpoints: dict[str, Optional[str]], limit: Optional[int] = None, skipped: Optional[dict] = None,
                  skipped_records: Sequence[dict] = (), n_resamples: int = stats.N_RESAMPLES,
                  seed: int = stats.SEED) -> dict:
    """The summary of ``rows`` (per-image rows by key, of one or more run folders) over ``items``: settings, the
    data report, per-model means, paired statistics, checkpoints and versions. What summary.json holds.

    Args:
        checkpoints: model id → the sha256 the rows were computed with (a run record's ``checkpoints``).
        skipped: arch → why it was not evaluated; skipped_records: records that could not be read.
    """
    result = summarise(rows, archs, variants, items, n_resamples=n_resamples, seed=seed)
    return {"geometry": geometry, "threshold": threshold, "target": TARGET, "human_ceiling": metrics.HUMAN_CEILING,
            "n_items": len(items), **data_report(shards, skipped_records), "limit": limit, "archs": list(archs),
            "variants": list(variants), "skipped": dict(skipped or {}),
            "checkpoints": {k: sha for k, sha in checkpoints.items()
                            if k.rsplit(".", 1)[0] in archs and k.rsplit(".", 1)[1] in variants},
            **result, "versions": versions()}


def write_summary(folder: Path, summary: dict, title: str) -> None:
    """summary.json, table1.txt, Figure 2 (scatter.png), robustness.png and, with faithfulness,
    plausibility_faithfulness.png of ``summary`` into ``folder``."""
    write_json(folder / SUMMARY_NAME, summary)
    # every requested architecture has its line: one that was skipped shows "-", not nothing
    table = report.table1(summary["models"], summary["archs"])
    if tuple(summary.get("methods", MAPS)) != MAPS or summary.get("faithfulness"):
        table += "\n\n" + report.methods_table(summary)
    write_atomically(folder / TABLE_NAME, (table + "\n").encode())
    report.scatter(summary["models"], folder / SCATTER_NAME, title)
    report.robustness(summary, folder / ROBUSTNESS_NAME, title)
    report.plausibility_faithfulness(summary, folder / PLAUSIBILITY_NAME, title)


def write_report(out: Path, archs: Sequence[str], variants: Sequence[str], shards: dict[str, clickme.ClickMeShard],
                 items: Sequence[Item], *, geometry: str, threshold: float, limit: Optional[int] = None,
                 skipped: Optional[dict] = None, skipped_records: Sequence[dict] = (),
                 n_resamples: int = stats.N_RESAMPLES, seed: int = stats.SEED) -> dict:
    """summary.json, table1.txt and scatter.png of ``out``'s rows for these models and items; returns the summary."""
    with folder_lock(out):
        record = RunRecord(out, geometry, threshold)
        rows = ResultStore(out / CSV_NAME, read_only=True).rows
        summary = build_summary(rows, archs, variants, shards, items, geometry=geometry, threshold=threshold,
                                checkpoints=record.checkpoints, limit=limit, skipped=skipped,
                                skipped_records=skipped_records, n_resamples=n_resamples, seed=seed)
        write_summary(out, summary, f"{len(items)} images, {geometry} geometry, threshold {threshold}")
    return summary
