"""Files a public Space writes: private folders, pruning that never leaves its folder, a bounded Gradio cache,
and responses that never show the server's paths. Real files, a real `app.py` server, a real gradio_client."""

from __future__ import annotations

import os
import stat
import threading
import time
import zipfile
from pathlib import Path

import pytest

pytest.register_assert_rewrite("app_fixtures")
from app_fixtures import EXAMPLES, blob_map, compare, make_client, start_server, stop_server, write_map  # noqa: E402

from dclsviz import limits, zoo  # noqa: E402
from dclsviz.ui import storage  # noqa: E402
from dclsviz.ui.present import Exports  # noqa: E402

pytest_plugins = ["app_fixtures"]

HOURS_AGO_2 = time.time() - 2 * 3600
NOBODY = 65534


def _age(path: Path, when: float = HOURS_AGO_2) -> None:
    os.utime(path, (when, when), follow_symlinks=False)


def _snapshot(root: Path) -> dict:
    """Every path under ``root`` (and root itself) with its content or kind and its mtime, links unfollowed."""
    out = {}
    for p in [root, *sorted(root.rglob("*"))]:
        st = os.lstat(p)
        body = p.read_bytes() if stat.S_ISREG(st.st_mode) else ("dir" if stat.S_ISDIR(st.st_mode) else "other")
        out[str(p)] = (body, st.st_mtime)
    return out


def _outside(tmp: Path) -> tuple[Path, Path]:
    """A folder and a file outside any pruned folder, both two hours old: what pruning must never touch."""
    v = tmp / "outside" / "v"
    v.mkdir(parents=True)
    (v / "f").write_text("x\n")
    (v / "sub").mkdir()
    (v / "sub" / "g").write_text("y\n")
    f = tmp / "outside" / "file.txt"
    f.write_text("keep me\n")
    for p in (v / "sub" / "g", v / "sub", v / "f", v, f):
        _age(p)
    return v, f


def _plant_links(folder: Path, v: Path, f: Path) -> None:
    """The reported trap (a link to an old folder), a link to an old file and a link to a folder's file, all old."""
    for name, target in (("l", v), ("lf", f), ("lsub", v / "sub")):
        (folder / name).symlink_to(target)
        _age(folder / name)


def _tree_bytes(root: Path) -> int:
    return sum(os.lstat(p).st_blocks * 512 for p in root.rglob("*") if not p.is_symlink())


# --- storage, on real files ------------------------------------------------------------------------------


def test_private_dir_is_fresh_0700_and_ours(tmp_path):
    a, b = storage.private_dir("dclsviz-exports-", tmp_path), storage.private_dir("dclsviz-exports-", tmp_path)
    assert a != b
    for d in (a, b):
        st = os.lstat(d)
        assert stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode)
        assert st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700


@pytest.mark.parametrize("kind", ["other_owner", "symlink", "world_writable"])
def test_an_export_folder_that_is_not_ours_is_refused_untouched(tmp_path, kind):
    folder = tmp_path / "exports"
    if kind == "symlink":
        real = tmp_path / "elsewhere"
        real.mkdir(mode=0o700)
        folder.symlink_to(real)
    else:
        folder.mkdir(mode=0o700)
        (folder / "theirs").write_text("their file\n")
        _age(folder / "theirs")
        if kind == "other_owner":
            if os.getuid() != 0:
                pytest.skip("making a folder another user owns needs root")
            os.chown(folder, NOBODY, NOBODY)
        else:
            os.chmod(folder, 0o777)
    before = _snapshot(tmp_path)
    with pytest.raises(storage.UnsafeFolder):
        Exports(folder).new_folder()
    assert _snapshot(tmp_path) == before


def test_prune_by_age(tmp_path):
    d = storage.private_dir("p-", tmp_path)
    for name, age in (("old", 7200), ("new", 10)):
        (d / name).mkdir()
        (d / name / "a.bin").write_bytes(b"1" * 5000)
        _age(d / name / "a.bin", time.time() - age)
        _age(d / name, time.time() - age)
    (d / "old_file").write_bytes(b"2" * 100)
    _age(d / "old_file")
    r = storage.prune(d, max_age_s=3600, max_bytes=10**9)
    assert sorted(r.removed) == ["old", "old_file"] and sorted(os.listdir(d)) == ["new"]
    assert (d / "new" / "a.bin").read_bytes() == b"1" * 5000


def test_a_folder_written_to_recently_counts_as_new(tmp_path):
    d = storage.private_dir("p-", tmp_path)
    (d / "run").mkdir()
    (d / "run" / "per_image.csv").write_text("a,b\n")
    _age(d / "run")  # the folder's own mtime is old; its file was just appended to
    assert storage.prune(d, max_age_s=3600, max_bytes=10**9).removed == []


def test_prune_by_bytes_removes_oldest_first(tmp_path):
    d = storage.private_dir("p-", tmp_path)
    now = time.time()
    for k in range(5):  # e0 oldest ... e4 newest, 64 KiB each
        (d / f"e{k}").mkdir()
        (d / f"e{k}" / "x.bin").write_bytes(os.urandom(64 * 1024))
        for p in (d / f"e{k}" / "x.bin", d / f"e{k}"):
            _age(p, now - 100 + k)
    size = _tree_bytes(d / "e0")
    r = storage.prune(d, max_age_s=3600, max_bytes=int(2.5 * size))
    assert r.removed == ["e0", "e1", "e2"] and sorted(os.listdir(d)) == ["e3", "e4"]
    assert r.kept_bytes <= 2.5 * size
    # what is named in keep survives even when it is the oldest
    r = storage.prune(d, max_age_s=3600, max_bytes=0, keep={"e3"})
    assert r.removed == ["e4"] and os.listdir(d) == ["e3"]


def test_prune_never_follows_a_symlink(tmp_path):
    v, f = _outside(tmp_path)
    before = _snapshot(tmp_path / "outside")
    d = storage.private_dir("p-", tmp_path)
    _plant_links(d, v, f)
    (d / "tree" / "deep").mkdir(parents=True)
    (d / "tree" / "deep" / "link").symlink_to(v)  # a link to the outside, nested in a folder being removed
    (d / "tree" / "deep" / "flink").symlink_to(f)
    for p in (d / "tree" / "deep" / "link", d / "tree" / "deep" / "flink", d / "tree" / "deep", d / "tree"):
        _age(p)
    r = storage.prune(d, max_age_s=60, max_bytes=10**9)
    assert sorted(r.removed) == ["l", "lf", "lsub", "tree"] and os.listdir(d) == []
    assert _snapshot(tmp_path / "outside") == before
    # a byte cap of zero removes everything inside, and still nothing outside
    _plant_links(d, v, f)
    storage.prune(d, max_age_s=10**9, max_bytes=0)
    assert os.listdir(d) == [] and _snapshot(tmp_path / "outside") == before


def test_a_subfolder_swapped_for_a_symlink_while_pruning_does_not_redirect_deletion(tmp_path):
    """A second thread keeps swapping a subfolder of the pruned tree for a symlink to a folder outside; every
    deletion must still land inside the tree (the outside folder's files survive every round)."""
    v, f = _outside(tmp_path)
    before = _snapshot(tmp_path / "outside")
    d = storage.private_dir("p-", tmp_path)
    stop, swapping = threading.Event(), threading.Event()

    def swapper(entry: Path) -> None:
        sub, spare = entry / "sub", entry / "sub.real"
        while not stop.is_set():
            try:
                os.rename(sub, spare)
                sub.symlink_to(v)
                swapping.set()
                time.sleep(0.002)  # mostly a link, so that the pruner meets it in every state
                os.unlink(sub)
                os.rename(spare, sub)
            except OSError:
                pass  # the pruner removed something first: the next round starts again

    for k in range(40):
        e = d / f"run{k}"
        (e / "sub").mkdir(parents=True)
        for n in range(20):
            (e / "sub" / f"f{n}").write_text("in the tree\n")
        for p in (*(e / "sub").iterdir(), e / "sub", e):
            _age(p)
        t = threading.Thread(target=swapper, args=(e,))
        t.start()
        swapping.wait(5)
        try:
            # a byte cap of zero: the swaps keep the folder's mtime fresh, and it must go all the same
            r = storage.prune(d, max_age_s=60, max_bytes=0)
        finally:
            stop.set()
            t.join()
            stop.clear()
            swapping.clear()
        assert r.removed or r.kept_bytes, f"round {k}: nothing was pruned"
        assert _snapshot(tmp_path / "outside") == before, f"round {k}"
        storage.prune(d, max_age_s=0, max_bytes=0)  # what the race left behind (a link, a spare folder)
    assert _snapshot(tmp_path / "outside") == before


def test_entries_of_another_owner_are_left_alone(tmp_path):
    if os.getuid() != 0:
        pytest.skip("making a file another user owns needs root")
    d = storage.private_dir("p-", tmp_path)
    (d / "theirs").mkdir()
    (d / "theirs" / "x").write_text("theirs\n")
    os.chown(d / "theirs" / "x", NOBODY, NOBODY)
    os.chown(d / "theirs", NOBODY, NOBODY)
    (d / "ours").write_text("ours\n")
    for p in (d / "theirs" / "x", d / "theirs", d / "ours"):
        _age(p)
    r = storage.prune(d, max_age_s=60, max_bytes=0)
    assert r.removed == ["ours"] and r.foreign == ["theirs"]
    assert (d / "theirs" / "x").read_text() == "theirs\n"


def test_dataset_runs_are_bounded_by_age(tmp_path):
    runs = tmp_path / "evaluations"
    runs.mkdir()
    for name, age in (("demo_a_paper_1", limits.DATASET_RUNS_MAX_AGE_S + 60), ("demo_b_paper_2", 60)):
        (runs / name).mkdir()
        (runs / name / "per_image.csv").write_text("model,rho\n")
        for p in (runs / name / "per_image.csv", runs / name):
            _age(p, time.time() - age)
    r = storage.prune_dataset_runs(runs)
    assert r.removed == ["demo_a_paper_1"] and os.listdir(runs) == ["demo_b_paper_2"]
    assert storage.prune_dataset_runs(tmp_path / "missing").removed == []


# --- the real server --------------------------------------------------------------------------------------

CACHE_AGE_S = 4


@pytest.fixture(scope="module")
def hosted(tmp_path_factory):
    """The app with its own TMPDIR (holding another user's planted `dclsviz-exports`) and a short cache age."""
    home = tmp_path_factory.mktemp("hosting_home")
    tmp = home / "tmp"
    planted = tmp / "dclsviz-exports"
    planted.mkdir(parents=True)
    (planted / "theirs.txt").write_text("another user's file\n")
    (planted / "old").mkdir()
    for p in (planted / "theirs.txt", planted / "old", planted):
        _age(p)
    # one paper checkpoint "in the cache", so that /models has a found file to describe (its pair stays
    # unavailable: the other variant is missing)
    ckpt = home / "cache" / "checkpoints" / zoo.get("resnet50", "dcls").checkpoint.file_name
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not really a checkpoint")
    server = start_server(home, env={"TMPDIR": str(tmp), "DCLSVIZ_CACHE_MAX_AGE_S": str(CACHE_AGE_S),
                                     "DCLSVIZ_CACHE_PRUNE_EVERY_S": "1"})
    try:
        yield server, planted, _snapshot(planted)
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def hosted_client(hosted, tmp_path_factory):
    return make_client(hosted[0], tmp_path_factory.mktemp("hosting_client"))


def _export_root(home: Path) -> Path:
    roots = sorted((home / "tmp").glob("dclsviz-exports-*"))
    assert len(roots) == 1, roots
    return roots[0]


def test_export_root_is_fresh_private_and_the_planted_folder_untouched(hosted, hosted_client, tmp_path):
    server, planted, planted_before = hosted
    _, _, bundle = compare(hosted_client, index=0)
    root = _export_root(server.home)
    st = os.lstat(root)
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700
    assert _snapshot(planted) == planted_before

    v, f = _outside(tmp_path)
    outside_before = _snapshot(tmp_path / "outside")
    _plant_links(root, v, f)
    (root / "stale").mkdir()
    (root / "stale" / "old.zip").write_bytes(b"PK")
    for p in (root / "stale" / "old.zip", root / "stale"):
        _age(p)
    for i in (1, 2):
        compare(hosted_client, index=i)
    server.assert_alive()
    names = set(os.listdir(root))
    assert "stale" not in names, "the export folder was not pruned"
    assert not names & {"l", "lf", "lsub"}
    assert _snapshot(tmp_path / "outside") == outside_before
    assert _snapshot(planted) == planted_before
    assert Path(bundle).is_file()


def test_gradio_cache_is_bounded(hosted, hosted_client):
    server = hosted[0]
    cache = server.home / "gradio"
    settle = 2 * CACHE_AGE_S + 3  # Gradio deletes a file after the age; its emptied folder goes one age later
    time.sleep(settle)
    floor, floor_dirs = _tree_bytes(cache), len(os.listdir(cache))
    sizes = []
    for i in range(4):
        compare(hosted_client, source="upload", image=EXAMPLES[i % len(EXAMPLES)])
        sizes.append(_tree_bytes(cache))
    grown, dirs = sizes[-1] - floor, len(os.listdir(cache))
    time.sleep(settle)
    after, after_dirs = _tree_bytes(cache), len(os.listdir(cache))
    print(f"gradio cache: {floor} B in {floor_dirs} folders at rest, {sizes} B after each of 4 /compare calls "
          f"({dirs} folders), {after} B in {after_dirs} folders {settle} s later")
    assert grown > 100_000, "the calls should have filled the cache"
    assert after <= floor + 8192 and after_dirs <= floor_dirs, (floor, floor_dirs, sizes, dirs, after, after_dirs)


def test_sweep_removes_only_old_empty_folders_and_files(tmp_path):
    d = storage.private_dir("g-", tmp_path)
    v, f = _outside(tmp_path)
    before = _snapshot(tmp_path / "outside")
    for name in ("old_empty", "new_empty", "old_full"):
        (d / name).mkdir()
    (d / "old_full" / "x.png").write_bytes(b"png")
    (d / "tmp_empty").write_bytes(b"")
    (d / "tmp_data").write_bytes(b"data")
    (d / "link").symlink_to(v)
    for p in (d / "old_empty", d / "old_full", d / "link", d / "tmp_empty", d / "tmp_data"):
        _age(p)
    assert storage.sweep_empty(d, 60) == 2
    assert sorted(os.listdir(d)) == ["link", "new_empty", "old_full", "tmp_data"]
    assert _snapshot(tmp_path / "outside") == before


# --- no server path in any response -----------------------------------------------------------------------


def _strings(x):
    if isinstance(x, str):
        yield x
    elif isinstance(x, dict):
        for k, v in x.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _strings(v)
    elif x is not None:
        yield str(x)


def _file_texts(path: str, client_dir: Path):
    """The text inside a downloaded file: zip members, CSV and JSON; PNGs hold pixels only."""
    p = Path(path)
    if not p.is_file() or client_dir not in p.parents:
        return
    if p.suffix == ".zip":
        with zipfile.ZipFile(p) as z:
            for n in z.namelist():
                yield n
                if n.endswith((".json", ".csv", ".txt")):
                    yield z.read(n).decode()
    elif p.suffix in (".csv", ".json", ".txt"):
        yield p.read_text()


def _leaks(server, tmp_path: Path, calls: dict, errors: dict) -> list[str]:
    """Every response of ``calls`` (strings, and the text inside returned files) and every error message of
    ``errors`` that contains one of the server's folders: its home, cache, temp dirs, the repository, ~."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client_dir = tmp_path / "client"
    client_dir.mkdir(exist_ok=True)
    client = Client(server.url, verbose=False, download_files=str(client_dir))
    private = [str(server.home), str(Path(__file__).resolve().parent.parent), str(Path.home())]
    seen = []
    for name, arg_sets in calls.items():
        for args in arg_sets:
            for s in _strings(client.predict(*args, api_name=name)):
                seen.append((name, s))
                seen.extend((name, t) for t in _file_texts(s, client_dir))
    for name, arg_sets in errors.items():
        for args in arg_sets:
            with pytest.raises(AppError) as e:
                client.predict(*args, api_name=name)
            seen.append((name, str(e.value)))
    server.assert_alive()
    return sorted({f"{name}: ...{s[max(0, s.index(p) - 60):s.index(p) + len(p) + 40]}..." for name, s in seen
                   for p in private if p in s})


def test_no_server_path_in_compare_models_classes_shards_or_review(hosted, tmp_path):
    from gradio_client import Client, handle_file

    server = hosted[0]
    human = write_map(tmp_path / "h.png", blob_map(64, 48))
    (tmp_path / "bad.jpg").write_text("not a photo\n")
    calls = {
        "/compare": [("demo", "clickme", "", "3", None, None, "label", 0.3, "paper"),
                     ("demo", "upload", "", "0", handle_file(str(EXAMPLES[0])), handle_file(str(human)), "pred",
                      0.3, "aligned")],
        "/models": [()], "/classes": [("demo",)], "/shards": [()],
    }
    errors = {"/compare": [("convnext_tiny", "clickme", "", "0", None, None, "label", 0.3, "paper"),
                           ("demo", "upload", "", "0", handle_file(str(tmp_path / "bad.jpg")), None, "label", 0.3,
                            "paper"),
                           ("demo", "clickme", "", "99999", None, None, "label", 0.3, "paper")],
              "/classes": [("no_such_arch",)], "/review_next": [("no such session",)]}
    # every public endpoint is checked here or in the two tests below
    api = Client(server.url, verbose=False).view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(api) <= set(calls) | {"/evaluate"} | REVIEW_ENDPOINTS, set(api) - set(calls)
    found = Client(server.url, verbose=False).predict(api_name="/models")["archs"]["resnet50"]["checkpoints"]
    assert f"cache `{zoo.get('resnet50', 'dcls').checkpoint.file_name}`" in found
    leaks = _leaks(server, tmp_path, calls, errors)
    assert not leaks, "\n".join(leaks)


def test_no_server_path_in_evaluate(hosted, tmp_path):
    leaks = _leaks(hosted[0], tmp_path, {"/evaluate": [("demo", "", 3, "paper", 0.3)]},
                   {"/evaluate": [("resnet50", "", 2, "paper", 0.3)]})
    assert not leaks, "\n".join(leaks)


REVIEW_ENDPOINTS = {"/review_create", "/review_join", "/review_next", "/review_verdict", "/review_reveal",
                    "/review_sessions", "/review_delete"}


def test_no_server_path_in_a_review_session(hosted, tmp_path):
    """Organiser, reviewer, the item, the reveal and its CSV: no response names a server folder."""
    from gradio_client import Client

    server = hosted[0]
    client = Client(server.url, verbose=False, download_files=str(tmp_path))
    made = client.predict("paths", "", 0, 1, "demo", "3", "", api_name="/review_create")
    mine = client.predict(made["invite_code"], "rita", api_name="/review_join")
    seen = [*_strings(made), *_strings(mine)]
    seen += _strings(client.predict(mine["reviewer_token"], api_name="/review_next"))
    seen += _strings(client.predict(mine["reviewer_token"], 0, "tie", "", api_name="/review_verdict"))
    for token in (mine["reviewer_token"], made["organiser_token"]):
        for s in _strings(client.predict(token, api_name="/review_reveal")):
            seen += [s, *_file_texts(s, tmp_path)]
    seen += _strings(client.predict(made["organiser_token"], api_name="/review_sessions"))
    seen += _strings(client.predict(made["organiser_token"], api_name="/review_delete"))
    private = [str(server.home), str(Path(__file__).resolve().parent.parent), str(Path.home())]
    assert not [s for s in seen for p in private if p in s]
