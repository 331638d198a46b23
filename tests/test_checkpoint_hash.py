"""Checkpoint hashes are remembered by file identity, and a file changed in any way is hashed again."""

from __future__ import annotations

import hashlib
import json
import os
import time

from dclsviz import checkpoints


def test_a_hash_is_remembered_and_a_rewrite_is_hashed_again(tmp_path, monkeypatch):
    monkeypatch.setenv("DCLSVIZ_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "weights.pth"
    f.write_bytes(b"a" * 100_000)
    want = hashlib.sha256(f.read_bytes()).hexdigest()
    assert checkpoints.checkpoint_sha256(f) == want
    record = tmp_path / "cache" / checkpoints.HASHES_NAME
    known = json.loads(record.read_text())
    assert list(known.values()) == [want]

    # the record is what answers while the file is unchanged (planted value comes back)
    record.write_text(json.dumps({k: "0" * 64 for k in known}))
    assert checkpoints.checkpoint_sha256(f) == "0" * 64

    # same size, same mtime put back: the ctime still moves, so the new content is hashed
    st = f.stat()
    time.sleep(0.01)
    f.write_bytes(b"b" * 100_000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert checkpoints.checkpoint_sha256(f) == hashlib.sha256(b"b" * 100_000).hexdigest()


def test_an_unreadable_record_only_costs_the_hashing(tmp_path, monkeypatch):
    monkeypatch.setenv("DCLSVIZ_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / checkpoints.HASHES_NAME).write_text("{not json")
    f = tmp_path / "w.bin"
    f.write_bytes(b"xyz")
    assert checkpoints.checkpoint_sha256(f) == hashlib.sha256(b"xyz").hexdigest()
