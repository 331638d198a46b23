"""On Hugging Face ZeroGPU the GPU work goes through the real ``spaces.GPU`` decorator; elsewhere it is inert.

What runs here: the split (pairs load in this process before the GPU function is entered, which then finds them
in the LRU), and, in a subprocess with ``SPACES_ZERO_GPU=1``, the real package's main-process side: its torch
patching, a pair placed on ``cuda`` at load time without CUDA, the packing of those tensors and the decorator
with our durations. What cannot run without a Space: the scheduling API and the forked worker on a real GPU.
"""

from __future__ import annotations

import http.server
import json
import pickle
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest
import spaces

from dclsviz import models, runtime
from dclsviz.ui import service

REPO = Path(__file__).resolve().parent.parent


def test_gpu_work_is_wrapped_by_spaces_gpu_with_its_duration(monkeypatch):
    seen = []
    real = spaces.GPU

    def recording(*args, **kwargs):
        seen.append(kwargs.get("duration"))
        return real(*args, **kwargs)

    monkeypatch.setattr(spaces, "GPU", recording)
    wrapped = service.on_gpu(300)(lambda x: x * 2)
    assert wrapped(21) == 42 and seen == [300]


def test_a_comparison_runs_through_the_decorated_function(tmp_path):
    """The module-level functions were decorated by the real package at import; outside ZeroGPU they compute."""
    cfg = service.AppConfig(export_dir=tmp_path / "exports", evaluation_dir=tmp_path / "runs")
    sample = service.clickme_sample("", 3, cfg)
    c = service.run_comparison("demo", sample, "label", 0.3, "paper", cfg)
    assert set(c.outputs) == {"baseline", "dcls"} and c.sample.label == sample.label
    assert all(o.scores["gradcam"].spearman is not None for o in c.outputs.values())
    assert "ZeroGPU" not in service.device_text(cfg)


def _cfg(tmp_path, **kw) -> service.AppConfig:
    return service.AppConfig(export_dir=tmp_path / "exports", evaluation_dir=tmp_path / "runs", device="cpu", **kw)


def test_the_pair_is_loaded_before_the_gpu_function_which_finds_it_in_the_lru(tmp_path):
    seen = {}

    @service.on_gpu(7, pairs=lambda arch, cfg: [arch])
    def inside(arch, cfg):
        seen["cached_at_entry"] = runtime.current().pairs.keys()
        seen["download"] = cfg.download
        return service.load_pair(arch, cfg)

    # a checkpoint folder of its own: a key no earlier test has put in the LRU
    cfg = _cfg(tmp_path, download=True, checkpoint_dir=tmp_path / "checkpoints")
    pair = inside("demo", cfg)
    key = ("demo", "cpu", str(cfg.checkpoint_dir))
    assert key in seen["cached_at_entry"], "the GPU function had to load the pair itself"
    assert seen["download"] is False, "downloads must be off inside the GPU call"
    assert cfg.download is True, "the caller's config is left as it was"
    again = service.load_pair("demo", cfg)
    assert all(pair[v] is again[v] for v in pair), "a later call reuses the same loaded models"
    assert inside.gpu_duration == 7


def test_a_missing_checkpoint_fails_before_the_gpu_is_asked_for(tmp_path, monkeypatch):
    for var in ("DCLSVIZ_CACHE", "TORCH_HOME", "HF_HOME"):
        monkeypatch.setenv(var, str(tmp_path / var))
    monkeypatch.delenv("DCLSVIZ_CHECKPOINT_DIR", raising=False)
    entered = []

    @service.on_gpu(pairs=lambda arch, cfg: [arch])
    def inside(arch, cfg):
        entered.append(arch)

    with pytest.raises(service.CheckpointProblem, match="resnet50"):
        inside("resnet50", _cfg(tmp_path, download=False))
    assert entered == []


def test_a_user_error_inside_the_gpu_call_comes_back_as_it_was(tmp_path):
    @service.on_gpu()
    def inside(cfg):
        raise service.UserError("the record index must be a whole number")

    with pytest.raises(service.UserError, match="whole number"):
        inside(_cfg(tmp_path))
    # across ZeroGPU's process boundary the error travels pickled
    back = pickle.loads(pickle.dumps(service._Failed(service.CheckpointProblem("no file", "resnet50"))))
    assert isinstance(back.error, service.CheckpointProblem) and back.error.arch == "resnet50"
    assert str(back.error) == str(service.CheckpointProblem("no file", "resnet50"))


def test_what_crosses_into_and_out_of_the_gpu_worker_pickles_without_models(tmp_path):
    """ZeroGPU pickles a call's arguments into its worker and the result back: no model may ride along."""
    cfg = _cfg(tmp_path)
    sample = service.clickme_sample("", 5, cfg)
    c = service.run_comparison("demo", sample, "label", 0.3, "paper", cfg)
    sent = pickle.dumps(("demo", sample, "label", 0.3, "paper", cfg))
    back = pickle.loads(pickle.dumps(c))
    assert len(sent) < 1_000_000 and len(pickle.dumps(c)) < 5_000_000
    assert back.outputs["dcls"].scores == c.outputs["dcls"].scores


def test_dataset_duration_grows_with_the_work_and_is_capped():
    small, large = service.dataset_gpu_seconds("demo", 8), service.dataset_gpu_seconds("demo,resnet50", 200)
    assert service.DATASET_GPU_BASE_SECONDS < small < large <= service.MAX_GPU_SECONDS
    assert service.dataset_gpu_seconds(["a", "b", "c", "d", "e", "f", "g", "h"], 200) == service.MAX_GPU_SECONDS
    assert service.dataset_gpu_seconds("demo", "many") == service.MAX_GPU_SECONDS


ZERO_GPU_SCRIPT = r"""
import inspect, json, sys
import spaces  # first, as on a Space: it patches torch before anything touches CUDA
import torch
from spaces.zero import decorator
from spaces.zero.torch import pack
from spaces.zero.torch.patching import cuda_aliases
from dclsviz.ui import dataset_tab, review_tab, service

def duration_of(fn):
    return inspect.getclosurevars(fn.gpu_function).nonlocals["duration"]

cfg = service.AppConfig()
out = {"device_text": service.device_text(cfg), "default_device": str(service.models.default_device())}
out["decorated"] = {name: fn.gpu_function in decorator.decorated_cache and hasattr(fn.gpu_function, "zerogpu")
                    for name, fn in [("compare", service._compare_on_gpu), ("review", review_tab.show_next),
                                     ("dataset", dataset_tab.run_evaluation)]}
compare_args = ("demo", None, "label", 0.3, "paper", cfg, None)
out["compare_duration"] = duration_of(service._compare_on_gpu)(*compare_args)
out["faithful_duration"] = duration_of(service._compare_on_gpu)(*compare_args, service.CamOptions(faithfulness=True))
out["dataset_duration"] = duration_of(dataset_tab.run_evaluation)("demo,demo", "", 100, "paper", 0.3, cfg)
pair = service.load_pair("demo", cfg)
out["pair_devices"] = sorted({str(p.device) for m in pair.values() for p in m.model.parameters()})
out["aliased"] = len(cuda_aliases)
out["cuda_initialised"] = torch.cuda.is_initialized()
out["packed_bytes"] = pack()
out["reused"] = service.load_pair("demo", cfg)["dcls"].model is pair["dcls"].model
print("RESULT" + json.dumps(out))
"""


def test_zero_gpu_main_process_with_the_real_package(tmp_path):
    """The real package with SPACES_ZERO_GPU=1, up to where it would call the scheduling API."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SPACES_ZERO_GPU": "true",
           "SPACES_ZERO_DEVICE_API_URL": "http://127.0.0.1:9", "ZEROGPU_OFFLOAD_DIR": str(tmp_path / "offload"),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "DCLSVIZ_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", ZERO_GPU_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(next(l for l in r.stdout.splitlines() if l.startswith("RESULT"))[len("RESULT"):])
    assert out["device_text"].startswith("ZeroGPU") and out["default_device"] == "cuda"
    assert out["decorated"] == {"compare": True, "review": True, "dataset": True}
    assert out["compare_duration"] == service.COMPARE_GPU_SECONDS
    assert out["faithful_duration"] == service.COMPARE_GPU_SECONDS * service.FAITHFULNESS_GPU_FACTOR
    assert out["dataset_duration"] == service.dataset_gpu_seconds("demo,demo", 100)
    # placed on cuda at load time: ZeroGPU keeps the weights on the CPU here and copies them into each worker
    assert out["pair_devices"] == ["cuda:0"] and out["aliased"] > 0 and not out["cuda_initialised"]
    assert out["packed_bytes"] > 100_000 and out["reused"]


def test_thread_budget_shares_the_cores_among_concurrent_requests(monkeypatch):
    cores = service._cores()
    assert service.AppConfig(concurrency=1).thread_budget() == cores
    assert service.AppConfig(concurrency=cores * 4).thread_budget() == 1
    assert service.AppConfig(concurrency=1, torch_threads=3).thread_budget() == 3
    monkeypatch.setenv("DCLSVIZ_TORCH_THREADS", "1")
    monkeypatch.setenv("DCLSVIZ_QUEUE_SIZE", "5")
    cfg = service.AppConfig.from_env()
    assert cfg.thread_budget() == 1 and cfg.queue_size == 5


def _in_forked_child(fn, timeout: float = 60.0):
    """``fn()``'s result in a child forked now, as ZeroGPU forks its worker; None if it hung."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    results = ctx.SimpleQueue()
    child = ctx.Process(target=lambda: results.put(fn()), daemon=True)
    child.start()
    child.join(timeout)
    if child.is_alive():
        child.kill()
        child.join()
        return None
    return results.get() if not results.empty() else None


def test_a_forked_worker_can_use_the_pair_cache_while_a_request_thread_holds_its_lock():
    cache = models.PairCache()
    cache.get(("a",), lambda: ("base", "dcls"))
    with cache._lock:  # a request thread is inside the cache at the moment of the fork
        got = _in_forked_child(lambda: (cache.get(("a",), lambda: None), cache.get(("b",), lambda: ("x", "y"))))
    assert got == (("base", "dcls"), ("x", "y")), "the forked worker hung on a lock held at the fork"


def test_a_forked_worker_can_score_with_the_scoring_pool():
    import numpy as np

    from dclsviz import metrics

    rng = np.random.default_rng(0)
    maps, humans = rng.random((1, 2, 24, 24)), rng.random((1, 24, 24))
    here = metrics.score_pairs(maps, humans)  # one image: its rows are sorted on the pool's threads
    assert metrics._POOL._executor is not None
    assert _in_forked_child(lambda: metrics.score_pairs(maps, humans)) == here
    with metrics._POOL._lock:  # a request thread is making the pool at the moment of the fork
        assert _in_forked_child(lambda: metrics.score_pairs(maps, humans)) == here


ZERO_GPU_CALL_SCRIPT = r"""
import http.server
import json
import spaces  # first, as on a Space
from dclsviz import models, runtime
from dclsviz.ui import service

ran = []

@service.on_gpu(11, pairs=lambda arch, cfg: [arch])
def inside(arch, cfg):
    ran.append(arch)

out = {"zero_gpu": service.zero_gpu(), "real_decorator": service._spaces_gpu() is spaces.GPU}
try:
    inside("demo", service.AppConfig())
    out["error"] = None
except BaseException as e:
    out["error"] = type(e).__name__ + ": " + str(e)
out["ran_here"] = ran
out["pair_loaded_first"] = any(k[0] == "demo" for k in runtime.current().pairs.keys())
print("RESULT" + json.dumps(out))
"""


class _DeviceApi(http.server.BaseHTTPRequestHandler):
    """Where a Space's ZeroGPU scheduler would be: records each request and answers that no GPU is free."""

    seen: list = []

    def do_POST(self):
        type(self).seen.append(self.path)
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_call_goes_through_the_real_decorator_to_the_zero_gpu_scheduler(tmp_path):
    """A decorated call under SPACES_ZERO_GPU=1, as far as it runs without a Space: our wrapper loads the pair in
    this process, then the real ``spaces.GPU`` handler asks the device API for a GPU with our duration. The API
    says no GPU is free, so the function never runs here, and the refusal reaches the caller."""
    _DeviceApi.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DeviceApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SPACES_ZERO_GPU": "true",
               "SPACES_ZERO_DEVICE_API_URL": f"http://127.0.0.1:{server.server_address[1]}",
               "ZEROGPU_OFFLOAD_DIR": str(tmp_path / "offload"), "GRADIO_ANALYTICS_ENABLED": "False",
               "HF_HUB_OFFLINE": "1", "DCLSVIZ_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}
        r = subprocess.run([sys.executable, "-c", ZERO_GPU_CALL_SCRIPT], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    finally:
        server.shutdown()
        server.server_close()
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(next(l for l in r.stdout.splitlines() if l.startswith("RESULT"))[len("RESULT"):])
    assert out["zero_gpu"] and out["real_decorator"] and out["pair_loaded_first"]
    assert len(_DeviceApi.seen) == 1
    url = urllib.parse.urlsplit(_DeviceApi.seen[0])
    query = urllib.parse.parse_qs(url.query)
    assert url.path == "/schedule" and query["durationSeconds"] == ["11"], _DeviceApi.seen
    assert out["ran_here"] == [] and out["error"] is not None
