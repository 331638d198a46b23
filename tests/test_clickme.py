"""The ClickMe shard reader, writer, index cache and downloader, on the kit's sample shard."""

import functools
import hashlib
import http.server
import json
import os
import shutil
import struct
import threading
from pathlib import Path

import crc32c
import numpy as np
import pytest
import simplejpeg

import kit_data
from dclsviz import clickme
from dclsviz.clickme import ClickMeFormatError, ClickMeShard


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # Index files of read-only shards go to the cache; keep them out of the user's home.
    monkeypatch.setenv("DCLSVIZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(clickme.CLICKME_DIR_ENV, raising=False)


@pytest.fixture(scope="module")
def kit_shard(kit: Path) -> Path:
    return kit / "clickme" / "sample_val.tfrecords"


@pytest.fixture(scope="module")
def golden():
    return kit_data.clickme_golden()


@pytest.fixture(scope="module")
def manifest(kit: Path):
    return json.loads((kit / "clickme" / "sample_val.manifest.json").read_text())


def _copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


def _masked_crc(b: bytes) -> int:
    c = crc32c.crc32c(b)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _frame(data: bytes) -> bytes:
    # Written here from the TFRecord format description, independently of the module under test.
    n = struct.pack("<Q", len(data))
    return n + struct.pack("<I", _masked_crc(n)) + data + struct.pack("<I", _masked_crc(data))


def test_reader_matches_golden(kit_shard, golden):
    shard = ClickMeShard(kit_shard)
    records = list(shard)
    assert len(shard) == len(records) == len(golden["label"]) == 12
    for i, r in enumerate(records):
        assert (r.index, r.shard) == (i, str(kit_shard))
        assert r.label == golden["label"][i]
        assert r.image_jpeg == golden[f"image_jpeg_{i:02d}"].tobytes()
        assert r.heatmap_jpeg == golden[f"heatmap_jpeg_{i:02d}"].tobytes()
        assert np.array_equal(r.image_u8(), golden["image_u8"][i])
        assert np.array_equal(r.heatmap_u8(), golden["heatmap_u8"][i, ..., 0])
        np.testing.assert_allclose(r.image_224(), golden["image_224"][i], rtol=0, atol=1e-2)
        h = r.human_map()
        np.testing.assert_allclose(h, golden["heatmap_224"][i, ..., 0], rtol=0, atol=1e-3)
        assert np.array_equal(h == 0, golden["heatmap_224"][i, ..., 0] == 0)
    assert shard[-1].label == golden["label"][-1]
    with pytest.raises(IndexError):
        shard[12]


def test_record_offsets_point_at_record_starts(kit_shard):
    shard = ClickMeShard(kit_shard)
    data = kit_shard.read_bytes()
    pos, starts = 0, []
    while pos < len(data):
        starts.append(pos)
        pos += 16 + struct.unpack_from("<Q", data, pos)[0]
    assert shard.offsets == starts
    assert [shard[i].offset for i in range(len(shard))] == starts


def test_writing_the_kit_records_reproduces_the_kit_file(kit_shard, manifest, tmp_path):
    out = tmp_path / "copy.tfrecords"
    n = clickme.write_shard(out, ((r.image_jpeg, r.heatmap_jpeg, r.label) for r in ClickMeShard(kit_shard)))
    assert n == 12
    assert hashlib.sha256(out.read_bytes()).hexdigest() == manifest["sha256"]


def test_write_then_read_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    recs = []
    for label in (0, 999, 2**40, -1):
        img = simplejpeg.encode_jpeg(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8), quality=90)
        heat = simplejpeg.encode_jpeg(rng.integers(0, 256, (40, 30, 1), dtype=np.uint8), quality=90, colorspace="GRAY")
        recs.append((img, heat, label))
    path = tmp_path / "sub" / "mine.tfrecords"
    assert clickme.write_shard(path, recs) == 4
    shard = ClickMeShard(path)
    assert [(r.image_jpeg, r.heatmap_jpeg, r.label) for r in shard] == recs
    assert shard[2].heatmap_u8().shape == (40, 30)
    assert shard[3].human_map().shape == (224, 224)


def test_truncated_tail_keeps_the_whole_records(kit_shard, tmp_path):
    shard = ClickMeShard(kit_shard)
    last = shard.offsets[-1]
    for cut in (last + 5, last + 100, kit_shard.stat().st_size - 1):
        bad = tmp_path / f"cut{cut}.tfrecords"
        bad.write_bytes(kit_shard.read_bytes()[:cut])
        cut_shard = ClickMeShard(bad)
        assert cut_shard.offsets == shard.offsets[:-1]
        assert [(o, "truncated" in why) for o, why in cut_shard.damaged] == [(last, True)]
        assert cut_shard[10].label == shard[10].label


def _flipped(src: Path, dst: Path, pos: int) -> Path:
    data = bytearray(src.read_bytes())
    data[pos] ^= 0x01
    dst.write_bytes(bytes(data))
    return dst


def test_flipped_data_byte_is_caught_by_the_data_crc(kit_shard, tmp_path):
    offsets = ClickMeShard(kit_shard).offsets
    bad = _flipped(kit_shard, tmp_path / "data.tfrecords", offsets[3] + 12 + 500)
    shard = ClickMeShard(bad)  # the headers are intact, so the index builds
    assert shard[2].label == ClickMeShard(kit_shard)[2].label
    with pytest.raises(ClickMeFormatError, match="data CRC") as e:
        shard[3]
    assert str(bad) in str(e.value) and f"offset {offsets[3]}" in str(e.value)
    with pytest.raises(ClickMeFormatError, match=f"offset {offsets[3]}"):
        list(shard)


def test_flipped_length_byte_is_caught_by_the_length_crc(kit_shard, tmp_path):
    offsets = ClickMeShard(kit_shard).offsets
    bad = _flipped(kit_shard, tmp_path / "length.tfrecords", offsets[5] + 1)
    shard = ClickMeShard(bad)
    assert shard.offsets == offsets[:5] + offsets[6:]
    assert len(shard.damaged) == 1 and shard.damaged[0][0] == offsets[5]
    assert "length CRC" in shard.damaged[0][1] and f"{offsets[6]}" in shard.damaged[0][1]


def test_bad_protobuf_and_missing_keys(tmp_path):
    good = clickme.encode_example({"image": b"x", "heatmap": b"y", "label": 1})
    missing = clickme.encode_example({"image": b"x", "heatmap": b"y"})
    wrong_kind = clickme.encode_example({"image": b"x", "heatmap": b"y", "label": b"1"})
    garbage = b"\x0a\xff\xff\xff\x0f" + b"\x00" * 10  # a field announcing far more bytes than follow
    path = tmp_path / "proto.tfrecords"
    path.write_bytes(b"".join(_frame(d) for d in (good, missing, wrong_kind, garbage)))
    shard = ClickMeShard(path)
    assert shard[0].label == 1
    starts = shard.offsets
    with pytest.raises(ClickMeFormatError, match=r"missing key\(s\) \['label'\]") as e:
        shard[1]
    assert str(path) in str(e.value) and f"offset {starts[1]}" in str(e.value)
    with pytest.raises(ClickMeFormatError, match="'label' must hold exactly one int64"):
        shard[2]
    with pytest.raises(ClickMeFormatError, match=f"offset {starts[3]}.*not a valid tf.train.Example"):
        shard[3]


def test_colour_heatmap_is_rejected(tmp_path):
    rgb = simplejpeg.encode_jpeg(np.zeros((8, 8, 3), np.uint8) + 100, quality=90)
    path = tmp_path / "colour.tfrecords"
    clickme.write_shard(path, [(rgb, rgb, 3)])
    rec = ClickMeShard(path)[0]
    assert rec.image_u8().shape == (8, 8, 3)
    with pytest.raises(ClickMeFormatError, match="one channel"):
        rec.heatmap_u8()


def test_undecodable_image_names_the_record(tmp_path):
    gray = simplejpeg.encode_jpeg(np.zeros((8, 8, 1), np.uint8), quality=90, colorspace="GRAY")
    path = tmp_path / "broken.tfrecords"
    clickme.write_shard(path, [(gray, gray, 1), (b"\xff\xd8 not really", gray, 2)])
    shard = ClickMeShard(path)
    with pytest.raises(ClickMeFormatError, match=f"record 1 \\(byte offset {shard.offsets[1]}\\): image"):
        shard[1].image_u8()


def _index_files(cache: Path) -> list[Path]:
    return sorted((cache / "clickme-index").glob("*" + clickme.INDEX_SUFFIX))


def test_index_lives_in_the_cache_and_a_changed_shard_gets_a_fresh_one(kit_shard, tmp_path):
    path = _copy(kit_shard, tmp_path / "val-0.tfrecords")
    cache = tmp_path / "cache"
    first = ClickMeShard(path)
    assert first.index_path is not None and first.index_path.parent == cache / "clickme-index"
    assert _index_files(cache) == [first.index_path] and sorted(os.listdir(tmp_path)) == ["cache", "val-0.tfrecords"]
    stamp = first.index_path.stat().st_mtime_ns
    assert json.loads(first.index_path.read_text())["offsets"] == first.offsets
    second = ClickMeShard(path)
    assert second.index_path == first.index_path and second.offsets == first.offsets
    assert first.index_path.stat().st_mtime_ns == stamp  # read, not rewritten

    # same size, other mtime: the old index names another file and is never read for this shard
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    touched = ClickMeShard(path)
    assert touched.index_path not in (None, first.index_path) and touched.offsets == first.offsets
    assert json.loads(touched.index_path.read_text())["fingerprint"]["mtime_ns"] == path.stat().st_mtime_ns

    recs = [(r.image_jpeg, r.heatmap_jpeg, r.label) for r in first]
    clickme.write_shard(path, recs[:5])
    changed = ClickMeShard(path)
    assert changed.index_path not in (first.index_path, touched.index_path)
    assert len(changed) == 5 and changed[4].label == recs[4][2]
    assert json.loads(changed.index_path.read_text())["fingerprint"]["size"] == path.stat().st_size
    assert len(_index_files(cache)) == 3


def test_an_index_whose_fingerprint_disagrees_is_not_used(kit_shard, tmp_path):
    path = _copy(kit_shard, tmp_path / "val-1.tfrecords")
    index = ClickMeShard(path).index_path
    payload = json.loads(index.read_text())
    payload["offsets"] = payload["offsets"][:3]
    payload["fingerprint"]["size"] += 1
    index.write_text(json.dumps(payload))
    assert len(ClickMeShard(path)) == 12


def _snapshot(folder: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_opening_shards_leaves_their_folders_untouched(kit_shard, tmp_path):
    """The repository's demo shard, the kit's sample in tests/data and a writable kit-like copy: no file beside
    any of them appears or changes, however often they are opened."""
    from dclsviz import zoo
    import dclsviz.demo

    kit_like = tmp_path / "conformance" / "clickme"
    shutil.copytree(kit_shard.parent, kit_like)
    shards = [zoo.ASSETS / dclsviz.demo.SHARD, kit_shard, kit_like / kit_shard.name]
    before = {s.parent: _snapshot(s.parent) for s in shards}
    for _ in range(2):
        for s in shards:
            assert ClickMeShard(s).index_path.parent == tmp_path / "cache" / "clickme-index"
    assert {s.parent: _snapshot(s.parent) for s in shards} == before
    assert not any(name.endswith(clickme.INDEX_SUFFIX) for s in shards for name in os.listdir(s.parent))
    assert len(_index_files(tmp_path / "cache")) == 3


def test_parse_spec():
    assert clickme.parse_spec("a/b/val-0.tfrecords:12") == (Path("a/b/val-0.tfrecords"), 12)
    assert clickme.parse_spec(r"C:\data\val-1.tfrecords:0") == (Path(r"C:\data\val-1.tfrecords"), 0)
    for bad in ("val-0.tfrecords", "val-0.tfrecords:x", ":3", "val-0.tfrecords:-1", "val-0.tfrecords:"):
        with pytest.raises(ValueError, match="SHARD:INDEX"):
            clickme.parse_spec(bad)


def test_read_record_by_spec(kit_shard, golden):
    rec = clickme.read_record(f"{kit_shard}:9")
    assert rec.index == 9 and rec.label == golden["label"][9]


def test_find_local_shards(tmp_path, monkeypatch):
    folder = tmp_path / "shards"
    folder.mkdir()
    for name in ("val-10.tfrecords", "val-2.tfrecords", "val-0.tfrecords", "notes.txt",
                 "val-0.tfrecords.dclsviz-index.json", "val-5.tfrecords.part"):
        (folder / name).write_bytes(b"")
    expected = [folder / n for n in ("val-0.tfrecords", "val-2.tfrecords", "val-10.tfrecords")]
    assert clickme.find_local_shards(folder) == expected
    monkeypatch.setenv(clickme.CLICKME_DIR_ENV, str(folder))
    assert clickme.find_local_shards() == expected
    keras = tmp_path / "keras"
    keras.mkdir()
    for i in (11, 1, 3):
        (keras / f"clickme_val_{i}").write_bytes(b"")
    assert [p.name for p in clickme.find_local_shards(keras)] == ["clickme_val_1", "clickme_val_3", "clickme_val_11"]
    assert clickme.find_local_shards(tmp_path / "absent") == []


def test_val_shard_urls_follow_the_reference_loader():
    urls = clickme.val_shard_urls()
    assert len(urls) == clickme.NB_VAL_SHARDS == 17
    assert urls[0] == "https://storage.googleapis.com/serrelab/prj_harmonization/dataset/click-me/val/val-0.tfrecords"
    assert urls[16].endswith("/val/val-16.tfrecords")


def test_download_val_shards_from_a_local_server(kit_shard, tmp_path):
    served = tmp_path / "served" / "val"
    served.mkdir(parents=True)
    for i in range(clickme.NB_VAL_SHARDS):
        _copy(kit_shard, served / f"val-{i}.tfrecords")
    handler = functools.partial(_QuietHandler, directory=str(tmp_path / "served"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        calls = []
        dest = tmp_path / "downloads"
        paths = clickme.download_val_shards(
            dest, progress=lambda k, n, done, total: calls.append((k, n, done, total)),
            base_url=f"http://127.0.0.1:{server.server_address[1]}",
        )
    finally:
        server.shutdown()
        server.server_close()
    assert paths == [dest / f"val-{i}.tfrecords" for i in range(17)]
    size = kit_shard.stat().st_size
    assert {(k, n, total) for k, n, _, total in calls} == {(k, 17, size) for k in range(17)}
    assert all(p.read_bytes() == kit_shard.read_bytes() for p in paths)
    assert clickme.find_local_shards(dest) == paths
    assert len(ClickMeShard(paths[16])) == 12


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
