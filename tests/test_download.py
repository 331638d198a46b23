"""Downloads against a real local HTTP server: resume after a cut, timeouts, and the offline message."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from dclsviz import checkpoints, zoo
from dclsviz.download import DownloadError, fetch

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _Handler(BaseHTTPRequestHandler):
    cut_after: int | None = None  # bytes sent before the connection drops (first request only)
    requests: list = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        rng = self.headers.get("Range")
        type(self).requests.append(rng)
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = PAYLOAD[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = type(self).cut_after
        if cut is not None:
            type(self).cut_after = None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    _Handler.requests = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_resume_after_a_dropped_connection(server, tmp_path):
    dest = tmp_path / "ckpt.pth"
    _Handler.cut_after = 300_000
    seen = []
    with pytest.raises(DownloadError, match="resume"):
        fetch(f"{server}/f", dest, progress=lambda d, t: seen.append((d, t)))
    kept = (tmp_path / "ckpt.pth.part").stat().st_size
    assert not dest.exists() and 0 < kept <= 300_000
    fetch(f"{server}/f", dest, expected_sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert dest.read_bytes() == PAYLOAD
    assert _Handler.requests == [None, f"bytes={kept}-"]
    assert seen[-1] == (kept, len(PAYLOAD))
    fetch(f"{server}/f", dest)  # already there: no request
    assert len(_Handler.requests) == 2


def test_wrong_hash_discards_the_file(server, tmp_path):
    with pytest.raises(DownloadError, match="sha256"):
        fetch(f"{server}/f", tmp_path / "x", expected_sha256="0" * 64)
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.part").exists()


def test_unreachable_checkpoint_fails_fast_with_directions(tmp_path, monkeypatch):
    """A host that accepts but never answers: the read timeout ends it, and the message says what to do."""
    monkeypatch.setenv("DCLSVIZ_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}/convnext_dcls_tiny_1k_224_ema.pth"
    real = zoo.get("convnext_tiny", "dcls")
    entry = dataclasses.replace(real, checkpoint=dataclasses.replace(real.checkpoint, urls=(url,)))
    start = time.perf_counter()
    with pytest.raises(checkpoints.CheckpointUnavailable) as e:
        checkpoints.resolve(entry, timeout=(1.0, 1.0))
    assert time.perf_counter() - start < 10
    msg = str(e.value)
    # the cache is named by its setting, never by its path: the app shows this text to its clients
    assert url in msg and "--checkpoint-dir" in msg and "$DCLSVIZ_CACHE/checkpoints" in msg
    assert str(tmp_path) not in msg
    silent.close()
