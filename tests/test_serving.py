"""Many visitors at once: the queue's limits and the thread budget come from the settings, cheap endpoints answer
while the computing ones are busy, and a full queue refuses at once while the server keeps serving."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from app_fixtures import make_client, start_server, stop_server

pytest_plugins = ["app_fixtures"]


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory):
    """One computing request at a time, one waiting, one torch thread."""
    server = start_server(tmp_path_factory.mktemp("tight_home"),
                          env={"DCLSVIZ_CONCURRENCY": "1", "DCLSVIZ_QUEUE_SIZE": "1", "DCLSVIZ_TORCH_THREADS": "1"})
    try:
        yield server
    finally:
        stop_server(server)


def _dependencies(server) -> dict:
    with urllib.request.urlopen(server.url + "config", timeout=30) as r:
        config = json.load(r)
    return {d.get("api_name"): d for d in config["dependencies"] if d.get("api_name")}


def test_cheap_endpoints_are_not_queued(tight_server):
    deps = _dependencies(tight_server)
    for cheap in ("models", "classes", "shards"):
        assert deps[cheap]["queue"] is False, f"/{cheap} must not wait behind the computing requests"
    for heavy in ("compare", "evaluate", "review_next"):
        assert deps[heavy]["queue"] is True  # the limits themselves show in the next test's refusals


def test_torch_threads_follow_the_budget(tight_server, tmp_path):
    models = make_client(tight_server, tmp_path).predict(api_name="/models")
    assert models["device"] == "CPU (1 threads)"


def test_a_full_queue_refuses_at_once_and_cheap_endpoints_still_answer(tight_server, tmp_path):
    client = make_client(tight_server, tmp_path / "a")
    jobs = [client.submit("demo", "clickme", "", str(i), None, None, "label", 0.3, "paper", api_name="/compare")
            for i in range(6)]
    time.sleep(1.0)  # the jobs have joined the queue: one computing, one waiting, the others refused
    # an unqueued endpoint over plain HTTP answers at once (gradio_client always goes through the queue)
    t0 = time.monotonic()
    req = urllib.request.Request(tight_server.url + "gradio_api/run/shards", data=b'{"data": []}',
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        shards = json.load(r)["data"][0]
    cheap_s = time.monotonic() - t0
    outcomes = []
    for job in jobs:
        try:
            outcomes.append(job.result(timeout=300)[0]["models"]["dcls"]["target"] is not None)
        except Exception as e:  # noqa: BLE001 - the refusal is what is being tested
            outcomes.append(str(e))
    assert shards and shards[0]["records"] > 0 and cheap_s < 10
    served = [o for o in outcomes if o is True]
    refused = [o for o in outcomes if o is not True]
    assert served, outcomes
    assert refused and all("queue" in o.lower() and "full" in o.lower() for o in refused), outcomes
    tight_server.assert_alive()
    manifest = client.predict("demo", "clickme", "", "1", None, None, "label", 0.3, "paper", api_name="/compare")[0]
    assert manifest["models"]["baseline"]["scores"]["gradcam"]["spearman"] is not None


def test_scores_are_the_same_whatever_the_scoring_threads():
    """With a budget of one thread the scoring pool is bypassed; the numbers must not change."""
    import numpy as np

    from dclsviz import metrics

    rng = np.random.default_rng(3)
    maps, humans = rng.random((3, 2, 32, 32)).astype(np.float32), rng.random((3, 32, 32)).astype(np.float32)
    humans[1] = 0.5  # a constant map: undefined either way
    try:
        metrics.set_pool_threads(1)
        inline = metrics.score_pairs(maps, humans), metrics.score_pairs(maps[:1], humans[:1])
        assert metrics._POOL._executor is None
        metrics.set_pool_threads(2)
        pooled = metrics.score_pairs(maps, humans), metrics.score_pairs(maps[:1], humans[:1])
        assert metrics._POOL._executor is not None
    finally:
        metrics.set_pool_threads(2)
    assert inline == pooled
