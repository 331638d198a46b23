"""The worker-process data path gives exactly what the in-process path gives, in order, damage included."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import dclsviz.demo
from dclsviz import datapath, evaluate, zoo
from dclsviz.clickme import ClickMeShard
from dclsviz.compare import Sample, prepare_inputs

DEMO_SHARD = zoo.ASSETS / dclsviz.demo.SHARD
TRANSFORMS = [zoo.get("demo", "dcls").transform, zoo.get("convnext_tiny", "dcls").transform]


def _damaged_copy(tmp_path, k: int):
    shard = tmp_path / DEMO_SHARD.name
    shutil.copyfile(DEMO_SHARD, shard)
    data = bytearray(shard.read_bytes())
    data[ClickMeShard(DEMO_SHARD).offsets[k] + 12 + 200] ^= 0x10  # inside record k's data: its data CRC fails
    shard.write_bytes(bytes(data))
    return shard


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_batches_equal_the_in_process_path(tmp_path, workers):
    shards = evaluate.open_shards([_damaged_copy(tmp_path, 6)])
    items = evaluate.select_items(shards, 21)
    got = list(datapath.batches(shards, items, TRANSFORMS, 8, workers))
    assert [len(b.items) + len(b.failed) for b in got] == [8, 8, 5]
    failed = [f for b in got for f in b.failed]
    assert [it.index for it, _ in failed] == [6] and "data CRC" in failed[0][1]
    assert str(tmp_path) not in failed[0][1]  # the shard's file name, never its path
    readable = [it for it in items if it.index != 6]
    assert [it for b in got for it in b.items] == readable
    want = [Sample.from_clickme(shards[it.shard][it.index]) for it in readable]
    samples = [s for b in got for s in b.samples]
    assert [s.label for s in samples] == [s.label for s in want]
    assert all(np.array_equal(a.human, b.human) for a, b in zip(samples, want))
    for t in TRANSFORMS:
        x_want, w_want = prepare_inputs(want, t)
        assert torch.equal(torch.cat([b.inputs[t][0] for b in got]), x_want)
        assert [w for b in got for w in b.inputs[t][1]] == w_want


def test_pinning_keeps_the_values():
    if not torch.cuda.is_available():
        pytest.skip("pinned memory needs CUDA")
    shards = evaluate.open_shards([DEMO_SHARD])
    items = evaluate.select_items(shards, 4)
    plain, pinned = (next(datapath.batches(shards, items, TRANSFORMS[:1], 4, 1, pin)) for pin in (False, True))
    x = pinned.inputs[TRANSFORMS[0]][0]
    assert x.is_pinned() and torch.equal(x, plain.inputs[TRANSFORMS[0]][0])
