"""The writer side of the run-folder lock tests, importable by a subprocess without loading gradio.

``python tests/lock_writer.py RUN_FOLDER batches``: appends every batch through the real writer, printing each
batch's number once it is on disk. ``... slow``: holds the lock with a batch half written for 1.5 s.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dclsviz import evaluate  # noqa: E402

SHARD = "x.tfrecords"
BATCHES, PER_BATCH = 40, 25


def batch_rows(b: int, per_batch: int = PER_BATCH) -> list[dict]:
    """Rows as evaluate computes them, for records b*per_batch ... of one model."""
    rows = []
    for i in range(b * per_batch, (b + 1) * per_batch):
        row = {"arch": "demo", "variant": "dcls", "shard": SHARD, "index": i, "label": i % 8, "target": i % 8,
               "predicted": (i + 1) % 8}
        row.update({c: 1.0 / (i + 3) for c in evaluate.COLUMNS[len(evaluate.KEY) + 3:]})
        rows.append(row)
    return rows


def append_batch(out: Path, b: int) -> None:
    """The writer's own path: the store is opened (repaired if need be) and appended to under the lock."""
    with evaluate.folder_lock(out), evaluate.ResultStore(out / evaluate.CSV_NAME) as store:
        store.append(batch_rows(b))


def slow_batch(out: Path) -> None:
    """One whole row, then a second row's first half, held under the lock for 1.5 s before it is finished."""
    row = evaluate.csv_text([evaluate.row_cells(r) for r in batch_rows(1, 1)])
    with evaluate.folder_lock(out), evaluate.ResultStore(out / evaluate.CSV_NAME) as store:
        store.append(batch_rows(0, 1))
        with open(out / evaluate.CSV_NAME, "a") as f:
            f.write(row[:20])
            f.flush()
            print("holding", flush=True)
            time.sleep(1.5)
            f.write(row[20:])


if __name__ == "__main__":
    folder, mode = Path(sys.argv[1]), sys.argv[2]
    if mode == "slow":
        slow_batch(folder)
    else:
        for k in range(BATCHES):
            append_batch(folder, k)
            print(k, flush=True)
