"""``evaluate`` over many processes, GPUs and machines through ``torchrun`` and torch.distributed.

``torchrun --nproc_per_node N -m dclsviz evaluate ...`` (or one ``torchrun`` per node under SLURM) starts the
same command N times with ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set. Here each rank:

1. joins the process group (NCCL when its models are on CUDA, gloo on CPU) and takes the GPU ``LOCAL_RANK``;
2. reads which rows exist already, in the merged ``per_image.csv`` and in every rank's part folder, then waits
   for the others, so that no rank writes before every rank has read;
3. takes its share of the missing records: consecutive batches dealt round-robin, so each batch is the one a
   single process would have made (the same inputs in the same batch give the same floats);
4. evaluates its share into its own part folder (``parts/rank-K``: a ``per_image.csv`` and ``run.json`` of its
   own, so a killed rank resumes from its part alone, whatever the world size of the next run);
5. waits for all; rank 0 merges every part into ``per_image.csv`` in the canonical row order and writes
   ``summary.json``, ``table1.txt`` and the figure exactly as a single process does.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import torch

PARTS = "parts"


@dataclass(frozen=True)
class Rank:
    """This process's place in a torchrun job."""

    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        """Rank 0: it merges the parts and writes the report."""
        return self.rank == 0

    def part(self, out: Path) -> Path:
        """This rank's own folder under ``out``."""
        return out / PARTS / f"rank-{self.rank}"


def from_env(env: Optional[Mapping[str, str]] = None) -> Optional[Rank]:
    """The rank torchrun gave this process, or None when it was not started by torchrun."""
    env = os.environ if env is None else env
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    rank = Rank(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", env["RANK"])))
    if not 0 <= rank.rank < rank.world:
        raise ValueError(f"RANK={rank.rank} is outside WORLD_SIZE={rank.world}")
    return rank


def device_for(rank: Rank, requested: Optional[str]) -> torch.device:
    """Each rank on its own GPU (``cuda:LOCAL_RANK``) when CUDA is asked for or present; else the CPU."""
    if requested is not None and torch.device(requested).type == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", rank.local_rank % torch.cuda.device_count())
    if requested is not None:
        raise ValueError(f"--device {requested}: CUDA is not available on this node")
    return torch.device("cpu")


@contextmanager
def process_group(rank: Rank, device: torch.device) -> Iterator[None]:
    """The job's process group for the duration of the block: NCCL between GPUs, gloo between CPUs."""
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank.rank, world_size=rank.world,
                            **({"device_id": device} if device.type == "cuda" else {}))
    try:
        yield
    finally:
        dist.destroy_process_group()


def all_gather(value) -> list:
    """``value`` from every rank, in rank order (small picklable objects: errors, counts)."""
    import torch.distributed as dist

    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def barrier() -> None:
    """Wait until every rank gets here."""
    import torch.distributed as dist

    dist.barrier()


def share(items: Sequence, rank: Rank, batch_size: int) -> list:
    """This rank's records: consecutive batches of ``items`` dealt round-robin over the ranks."""
    batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    return [it for b in batches[rank.rank::rank.world] for it in b]


def part_folders(out: Path) -> list[Path]:
    """Every rank's part folder under ``out`` (of this run's world size or of an earlier one)."""
    parts = out / PARTS
    if not parts.is_dir():
        return []
    return sorted((p for p in parts.iterdir() if p.is_dir() and p.name.startswith("rank-")),
                  key=lambda p: int(p.name.split("-", 1)[1]) if p.name.split("-", 1)[1].isdigit() else -1)


# --- the ranked evaluation ------------------------------------------------------------------------------


def done_keys(out: Path) -> set[tuple]:
    """The row keys already computed in ``out``: the merged file's and every part's (read, never written)."""
    from .evaluate import read_rows

    keys: set[tuple] = set()
    for folder in [out, *part_folders(out)]:
        if folder.is_dir():
            keys |= read_rows(folder).keys()
    return keys


def _agreed(value_or_error) -> list:
    """Every rank's (error, result); all ranks raise the first error together, so none waits forever."""
    from .evaluate import EvaluationError

    gathered = all_gather(value_or_error)
    errors = [f"rank {k}: {err}" for k, (err, _) in enumerate(gathered) if err]
    if errors:
        raise EvaluationError("; ".join(errors))
    return [result for _, result in gathered]


def _attempt(fn):
    try:
        return None, fn()
    except Exception as e:  # carried to every rank by _agreed, raised there as one EvaluationError
        return f"{type(e).__name__}: {e}", None


def evaluate_ranked(rank: Rank, archs: Sequence[str], variants: Sequence[str], shards: dict, items: Sequence,
                    out: Path, *, geometry: str, threshold: float, batch_size: int, **kwargs) -> tuple[dict, list]:
    """This rank's share of the missing rows into its part folder, then (rank 0) the merged ``per_image.csv``.

    ``kwargs`` go to ``evaluate.evaluate``. Returns what every rank skipped: ({arch: reason}, [record, ...]).
    """
    from .evaluate import RunRecord, evaluate

    layout = (kwargs.get("methods"), kwargs.get("faithfulness"))
    _agreed(_attempt(lambda: RunRecord(out, geometry, threshold, *layout) and None))  # other settings: refused by all
    done = done_keys(out)
    barrier()  # everyone has read what exists before anyone writes
    pending = [it for it in items if any((a, v, it.shard, it.index) not in done for a in archs for v in variants)]
    mine = share(pending, rank, batch_size)

    def run():
        unreadable: list[dict] = []
        skipped = evaluate(archs, variants, shards, mine, rank.part(out), geometry=geometry, threshold=threshold,
                           batch_size=batch_size, skipped_records=unreadable, **kwargs)
        return skipped, unreadable

    results = _agreed(_attempt(run))
    skipped = {a: why for s, _ in results for a, why in s.items()}
    unreadable = list({(r["shard"], r["index"]): r for _, u in results for r in u}.values())
    if rank.main:
        _agreed(_attempt(lambda: merge_parts(out, archs, variants, items, batch_size, geometry, threshold, *layout)))
    else:
        _agreed((None, None))
    return skipped, unreadable


def merge_parts(out: Path, archs: Sequence[str], variants: Sequence[str], items: Sequence, batch_size: int,
                geometry: str, threshold: float, methods=None, faithfulness=None) -> int:
    """Every part's rows and checkpoint hashes into ``out``; returns the number of rows, then removes the parts.

    Rows are ordered as one process appends them on a fresh run (architecture, batch, variant, record), so the
    merged file equals a single process's, row for row. A row present twice (a rank resumed under another
    world size) is kept once, the merged file's first.
    """
    import shutil

    from .evaluate import CSV_NAME, ResultStore, RunRecord, columns_for, csv_text, folder_lock, read_rows, row_cells
    from .files import write_atomically

    position = {(it.shard, it.index): k for k, it in enumerate(items)}
    arch_at, variant_at = {a: k for k, a in enumerate(archs)}, {v: k for k, v in enumerate(variants)}
    parts = part_folders(out)
    with folder_lock(out):
        record = RunRecord(out, geometry, threshold, methods, faithfulness)
        columns = columns_for(record.methods, record.faithfulness)
        rows = dict(ResultStore(out / CSV_NAME, read_only=True).rows)  # read_rows would take the held lock
        for part in parts:
            for model_id, sha in RunRecord(part, geometry, threshold).checkpoints.items():
                record.check_checkpoint(model_id, sha)
            for key, row in read_rows(part).items():
                rows.setdefault(key, row)

        def order(key):
            a, v, s, i = key
            k = position.get((s, i), len(items) + i)
            return (arch_at.get(a, len(archs)), a, k // batch_size, variant_at.get(v, len(variants)), v, k, s)

        text = csv_text([columns, *(row_cells(rows[k], columns) for k in sorted(rows, key=order))])
        write_atomically(out / CSV_NAME, text.encode("utf-8"))
        record.save()
    for part in parts:
        shutil.rmtree(part)
    if parts:
        (out / PARTS).rmdir()
    return len(rows)
