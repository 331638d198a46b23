"""Damage to one record of a shard stays with that record: the real demo shard, copied and damaged byte-wise."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

import dclsviz.demo
from dclsviz import clickme, zoo
from dclsviz.clickme import ClickMeFormatError, ClickMeShard

DEMO_SHARD = zoo.ASSETS / dclsviz.demo.SHARD


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DCLSVIZ_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def intact() -> ClickMeShard:
    return ClickMeShard(DEMO_SHARD)


def _damaged_copy(tmp: Path, name: str, edit) -> Path:
    data = bytearray(DEMO_SHARD.read_bytes())
    data = edit(data)
    path = tmp / name
    path.write_bytes(bytes(data))
    return path


def _flip(pos: int):
    def edit(data: bytearray) -> bytearray:
        data[pos] ^= 0x40
        return data
    return edit


def _same_records(shard: ClickMeShard, intact: ClickMeShard, keep: list[int]) -> None:
    assert len(shard) == len(keep)
    for j, i in enumerate(keep):
        a, b = shard[j], intact[i]
        assert (a.offset, a.label, a.image_jpeg, a.heatmap_jpeg) == (b.offset, b.label, b.image_jpeg, b.heatmap_jpeg)


@pytest.mark.parametrize("where", [1, 9])  # the length itself, then its CRC
def test_bad_length_crc_in_the_middle_loses_that_record_only(intact, tmp_path, where):
    k = len(intact) // 2
    path = _damaged_copy(tmp_path, "len.tfrecords", _flip(intact.offsets[k] + where))
    shard = ClickMeShard(path)
    _same_records(shard, intact, [i for i in range(len(intact)) if i != k])
    assert len(shard.damaged) == 1
    offset, why = shard.damaged[0]
    assert offset == intact.offsets[k] and "length CRC" in why and f"{intact.offsets[k + 1]}" in why
    # the index file keeps the damage, so a second open reads it instead of scanning
    again = ClickMeShard(path)
    assert again.index_path == shard.index_path and again.damaged == shard.damaged
    assert json.loads(shard.index_path.read_text())["version"] == clickme.INDEX_VERSION


def test_two_damaged_spans_and_garbage_between_records(intact, tmp_path):
    a, b = 10, 100

    def edit(data: bytearray) -> bytearray:
        data[intact.offsets[a] + 2] ^= 0xFF
        junk = bytes(range(256)) * 40  # bytes that are no record, inserted before record b
        return data[:intact.offsets[b]] + junk + data[intact.offsets[b]:]

    shard = ClickMeShard(_damaged_copy(tmp_path, "two.tfrecords", edit))
    assert len(shard) == len(intact) - 1
    assert [o for o, _ in shard.damaged] == [intact.offsets[a], intact.offsets[b]]
    assert shard[b - 1].label == intact[b].label and shard[b - 1].image_jpeg == intact[b].image_jpeg


def test_truncated_tail_keeps_every_whole_record(intact, tmp_path):
    last = intact.offsets[-1]
    for cut in (last + 3, last + 12, last + 500, DEMO_SHARD.stat().st_size - 1):
        shard = ClickMeShard(_damaged_copy(tmp_path, f"cut{cut}.tfrecords", lambda d: d[:cut]))
        _same_records(shard, intact, list(range(len(intact) - 1)))
        assert len(shard.damaged) == 1 and shard.damaged[0][0] == last and "truncated" in shard.damaged[0][1]


def test_bad_data_crc_fails_that_record_only(intact, tmp_path):
    k = 7
    shard = ClickMeShard(_damaged_copy(tmp_path, "data.tfrecords", _flip(intact.offsets[k] + 12 + 300)))
    assert shard.offsets == intact.offsets and shard.damaged == []  # the headers are whole
    with pytest.raises(ClickMeFormatError, match=f"data CRC.*offset {intact.offsets[k]}"):
        shard[k]
    assert shard[k - 1].label == intact[k - 1].label and shard[k + 1].label == intact[k + 1].label


def test_empty_shard_and_out_of_range_index_say_so(intact, tmp_path):
    empty = tmp_path / "empty.tfrecords"
    empty.write_bytes(b"")
    with pytest.raises(ClickMeFormatError, match=r"empty\.tfrecords is empty.*at least one record"):
        ClickMeShard(empty)
    nothing = tmp_path / "nothing.tfrecords"
    nothing.write_bytes(DEMO_SHARD.read_bytes()[:10])
    with pytest.raises(ClickMeFormatError, match=r"no readable record.*offset 0: truncated record header"):
        ClickMeShard(nothing)
    n = len(intact)
    for bad in (n, n + 5, -n - 1):
        with pytest.raises(IndexError, match=rf"has {n} readable records \(0 to {n - 1}\), no record {bad}"):
            intact[bad]


def test_healthy_scan_reads_headers_only_and_resync_is_quick(tmp_path):
    # a shard of 40 demo copies (~72 MB) with one damaged length CRC near its start
    data = DEMO_SHARD.read_bytes()
    big = tmp_path / "big.tfrecords"
    big.write_bytes(data * 40)
    t0 = time.perf_counter()
    healthy = clickme._scan_offsets(big, big.stat().st_size)
    t_healthy = time.perf_counter() - t0
    assert len(healthy[0]) == 40 * len(ClickMeShard(DEMO_SHARD)) and healthy[1] == []
    raw = bytearray(big.read_bytes())
    raw[healthy[0][3] + 4] ^= 0x01
    big.write_bytes(bytes(raw))
    t0 = time.perf_counter()
    offsets, damaged = clickme._scan_offsets(big, big.stat().st_size)
    t_damaged = time.perf_counter() - t0
    assert offsets == healthy[0][:3] + healthy[0][4:] and [o for o, _ in damaged] == [healthy[0][3]]
    print(f"scan of {len(healthy[0])} records: healthy {t_healthy * 1e3:.0f} ms, one resync {t_damaged * 1e3:.0f} ms")
    assert t_healthy < 5 and t_damaged < t_healthy + 2


def test_copy_of_intact_shard_has_no_damage(tmp_path):
    path = shutil.copyfile(DEMO_SHARD, tmp_path / "ok.tfrecords")
    assert ClickMeShard(path).damaged == []
