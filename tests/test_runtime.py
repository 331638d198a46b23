"""The runtime owns the process-wide torch state and the pair LRU; loading a model changes no global state."""

from __future__ import annotations

import threading

import torch

from dclsviz import metrics, models, runtime, zoo


def test_loading_leaves_global_state_alone_and_start_sets_the_policy_once():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_num_threads())
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        models.load(zoo.get("demo", "dcls"), device="cpu")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        rt = runtime.start("cpu", threads=1)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.get_num_threads() == 1 and metrics._POOL.threads == 1
        assert runtime.current() is rt and rt.device == torch.device("cpu")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, threads = before
        runtime.start("cpu", threads=threads)


def test_a_pair_loads_once_for_concurrent_requests():
    rt = runtime.Runtime("cpu", pair_capacity=1)
    with __import__("concurrent.futures").futures.ThreadPoolExecutor(3) as pool:
        pairs = [f.result() for f in [pool.submit(rt.load_pair, "demo") for _ in range(3)]]
    assert set(pairs[0]) == set(zoo.VARIANTS)
    assert all(p[v].model is pairs[0][v].model for p in pairs for v in zoo.VARIANTS)
    assert rt.pairs.keys() == [("demo", "cpu", None)]


def test_the_scoring_pool_is_made_once_under_concurrent_first_use():
    pool = metrics._HalvesPool(2)
    made = []
    start = threading.Barrier(4)

    def first_use():
        start.wait()
        pool.map(lambda x: x, [1, 2])
        made.append(pool._executor)

    threads = [threading.Thread(target=first_use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 4 and len({id(e) for e in made}) == 1 and made[0] is not None
    pool.resize(1)
    assert pool.map(lambda x: x * 2, [1, 2]) == [2, 4] and pool._executor is None
