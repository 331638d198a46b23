"""Helpers for the app tests: a real `app.py` server, a gradio_client, the CLI, and bad input files.

Test modules load this with ``pytest_plugins = ["app_fixtures"]``, so the server fixture is one
session-wide process however many modules use it.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from PIL import Image

import dclsviz.demo
from dclsviz import zoo

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "assets"
DEMO_SHARD = zoo.ASSETS / dclsviz.demo.SHARD
DEMO_FILES = tuple(zoo.ASSETS / zoo.get("demo", v).checkpoint.bundled for v in ("baseline", "dcls")) + (DEMO_SHARD,)
EXAMPLES = sorted((ASSETS / "examples").glob("*.jpg"))
ARTIFACTS = REPO / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
VARIANTS = ("baseline", "dcls")
MAPS = ("gradcam", "threshold_gradcam")


def require_demo_assets() -> None:
    missing = [str(p) for p in DEMO_FILES if not p.is_file()]
    if missing:
        pytest.fail(f"the demo pair is missing ({', '.join(missing)}); `python -m dclsviz demo train` makes it",
                    pytrace=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    log: Path
    home: Path

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, f"the app server exited ({self.proc.returncode}):\n{self.log_tail()}"


def app_env(home: Path, port: int) -> dict:
    """An isolated, offline app: no cached paper checkpoints can be found, nothing is downloaded."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("DCLSVIZ_CHECKPOINT_DIR", "DCLSVIZ_DEFAULT_ARCH", "DCLSVIZ_REVIEW_DB", "GRADIO_SERVER_NAME",
                        "GRADIO_SERVER_PORT")}
    env.update(DCLSVIZ_HOST="127.0.0.1", DCLSVIZ_PORT=str(port), DCLSVIZ_OFFLINE="1",
               DCLSVIZ_CACHE=str(home / "cache"), TORCH_HOME=str(home / "torch"),
               DCLSVIZ_CLICKME_DIR=str(home / "clickme"), GRADIO_TEMP_DIR=str(home / "gradio"),
               GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", DCLSVIZ_CONCURRENCY="2",
               PYTHONUNBUFFERED="1")
    return env


def start_server(home: Path, timeout: float = 180.0, env: Optional[dict] = None) -> Server:
    """`python app.py` in a subprocess on a free port, with ``home`` holding its cache and data; ``env`` adds
    or overrides environment variables."""
    require_demo_assets()
    port = free_port()
    log = home / "server.log"
    with open(log, "a") as out:
        proc = subprocess.Popen([sys.executable, str(REPO / "app.py")], cwd=REPO,
                                env={**app_env(home, port), **(env or {})},
                                stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}/", proc, log, home)
    deadline = time.monotonic() + timeout
    try:
        while True:
            server.assert_alive()
            try:
                with urllib.request.urlopen(server.url, timeout=5) as r:
                    if r.status == 200:
                        return server
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not start within {timeout:.0f} s:\n{server.log_tail()}", pytrace=False)
            time.sleep(0.5)
    except BaseException:
        stop_server(server)
        raise


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture(scope="session")
def app_server(tmp_path_factory) -> Server:
    """The app serving the demo pair, shared by every test of the session."""
    server = start_server(tmp_path_factory.mktemp("app_home"))
    try:
        yield server
    finally:
        stop_server(server)


def make_client(server: Server, download_dir: Path):
    from gradio_client import Client

    download_dir.mkdir(parents=True, exist_ok=True)
    return Client(server.url, verbose=False, download_files=str(download_dir))


@pytest.fixture(scope="session")
def client(app_server, tmp_path_factory):
    return make_client(app_server, tmp_path_factory.mktemp("client_files"))


def compare(client, *, source="clickme", shard="", index="0", image=None, human=None, target="label",
            threshold=0.3, geometry="paper", arch="demo", **options):
    """One /compare call; returns (manifest, images dict, bundle path). ``options``: the optional trailing
    inputs (methods, faithfulness, layer); with none, the call leaves them out and the endpoint's defaults apply,
    as a client written before they existed does."""
    from gradio_client import handle_file

    trailing = ()
    if options:
        given = {"methods": ",".join(MAPS), "faithfulness": False, "layer": "", **options}
        trailing = (given["methods"], given["faithfulness"], given["layer"])
    out = client.predict(arch, source, shard, str(index), handle_file(str(image)) if image else None,
                         handle_file(str(human)) if human else None, target, threshold, geometry, *trailing,
                         api_name="/compare")
    manifest, *imgs, bundle = out
    names = ["human"] + [f"{v}_{m}" for v in VARIANTS for m in MAPS]
    return manifest, dict(zip(names, imgs)), bundle


# --- the CLI, for reference scores ---------------------------------------------------------------------


def cli_explain(args: list[str], out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DCLSVIZ_CHECKPOINT_DIR"}
    r = subprocess.run([sys.executable, "-m", "dclsviz", "explain", *args, "--device", "cpu", "--out", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"CLI failed: {r.stderr[-2000:]}"
    return json.loads((out / "result.json").read_text())


def cli_pair(input_args: list[str], out: Path) -> dict[str, dict]:
    """result.json of both variants, computed in parallel."""
    with ThreadPoolExecutor(2) as pool:
        futures = {v: pool.submit(cli_explain, [*input_args, "--arch", "demo", "--variant", v], out / v)
                   for v in VARIANTS}
        return {v: f.result() for v, f in futures.items()}


def assert_matches_cli(manifest: dict, cli: dict[str, dict], tol: float = 1e-6) -> None:
    for v in VARIANTS:
        # one schema: the CLI's result.json is the app's manifest for one model
        app_out, ref = manifest["models"][v], cli[v]["models"][v]
        assert manifest["image_sha256"] == cli[v]["image_sha256"]
        assert app_out["target"] == ref["target"]
        assert [c for c, _, _ in app_out["top5"]] == [c for c, _, _ in ref["top5"]]
        assert app_out["checkpoint_sha256"] == ref["checkpoint_sha256"]
        assert app_out.keys() == ref.keys() and app_out["scores"].keys() == ref["scores"].keys()
        for m in MAPS:
            for key in app_out["scores"][m]:
                got, want = app_out["scores"][m][key], ref["scores"][m][key]
                assert (got is None) == (want is None), (v, m, key, got, want)
                if want is not None:
                    assert got == pytest.approx(want, abs=tol), (v, m, key)


# --- input files --------------------------------------------------------------------------------------


def blob_map(width: int, height: int, cx: float = 0.5, cy: float = 0.45, sigma: float = 0.18) -> np.ndarray:
    """A grey human map: one soft blob (uint8)."""
    y, x = np.mgrid[0:height, 0:width]
    d2 = ((x / width - cx) ** 2 + (y / height - cy) ** 2) / sigma**2
    return (255 * np.exp(-d2)).round().astype(np.uint8)


def write_map(path: Path, m: np.ndarray) -> Path:
    Image.fromarray(m).save(path)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def enormous_png(path: Path, side: int = 20000) -> Path:
    """A tiny file whose header declares side×side RGB pixels: a decompression bomb's calling card."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) \
        + _png_chunk(b"IEND", b"")
    path.write_bytes(data)
    return path


def bad_photo(kind: str, folder: Path) -> Path:
    """The bad or unusual uploads of the acceptance list, generated cheaply."""
    src = Image.open(EXAMPLES[0]).convert("RGB")
    if kind == "text_as_jpg":
        p = folder / "notes.jpg"
        p.write_text("this is a text file, not a photo\n")
    elif kind == "truncated_jpeg":
        buf = io.BytesIO()
        src.save(buf, "JPEG", quality=90)
        p = folder / "truncated.jpg"
        p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    elif kind == "one_pixel_png":
        p = folder / "pixel.png"
        Image.new("RGB", (1, 1), (200, 10, 10)).save(p)
    elif kind == "enormous_png":
        p = enormous_png(folder / "enormous.png")
    elif kind == "png16":
        p = folder / "deep.png"
        a = np.asarray(src.convert("L"), np.uint16) * 257
        Image.fromarray(a, "I;16").save(p)
        assert Image.open(p).mode.startswith("I"), "the fixture must really be 16-bit"
    elif kind == "cmyk_jpeg":
        p = folder / "cmyk.jpg"
        src.convert("CMYK").save(p, "JPEG", quality=90)
    elif kind == "rgba_png":
        p = folder / "transparent.png"
        rgba = src.convert("RGBA")
        rgba.putalpha(Image.fromarray(blob_map(*src.size)))
        rgba.save(p)
    elif kind == "animated_gif":
        p = folder / "animated.gif"
        frames = [src.resize((160, 120)).rotate(a) for a in (0, 20, 40)]
        frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)
    else:
        raise ValueError(kind)
    return p
