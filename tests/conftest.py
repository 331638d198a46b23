"""Shared fixtures.

The tests read the conformance kit's facts from tests/data (inside the repository) and write stand-in
checkpoints with tests/fake_checkpoints.py, so a fresh clone tests itself with nothing beside it. The kit folder
itself ($DCLSVIZ_CONFORMANCE, else ../shared/conformance) is read only by the tests that prove tests/data and
our stand-ins equal the kit's (`reference_kit`); they skip where no kit is at hand.
"""

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # kit_data and fake_checkpoints sit beside this file
    sys.path.insert(0, str(TESTS))

import kit_data  # noqa: E402

# The device the model tests run on: cpu here and in CI; `DCLSVIZ_TEST_DEVICE=cuda` checks the GPU path
# against the same goldens and tolerances.
TEST_DEVICE = os.environ.get("DCLSVIZ_TEST_DEVICE", "cpu")
DATA = kit_data.DATA


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """A cache folder of the test session's own where a test sets none: tests never write to ~/.cache."""
    if "DCLSVIZ_CACHE" in os.environ:
        yield
        return
    os.environ["DCLSVIZ_CACHE"] = str(tmp_path_factory.mktemp("dclsviz-cache"))
    try:
        yield
    finally:
        os.environ.pop("DCLSVIZ_CACHE", None)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A test of its own: an empty download cache and torch hub, and no checkpoint folder from the environment
    (nothing on this machine can stand in for the files the test writes)."""
    monkeypatch.setenv("DCLSVIZ_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("DCLSVIZ_CHECKPOINT_DIR", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def kit() -> Path:
    """The conformance kit's data as the repository keeps it (tests/data), laid out as the kit is.

    manifests/<id>.json, golden/<id>.npz, kit_index.json and clickme/ (sample shard, its manifest, metric
    cases) are the kit's files; the shared inputs are read with `kit_data.kit_input`, the ClickMe goldens with
    `kit_data.clickme_golden` / `kit_data.metric_golden`.
    """
    return DATA


@pytest.fixture(scope="session")
def fake():
    """The stand-in checkpoint writer (tests/fake_checkpoints.py): load_manifest, make_state_dict,
    write_checkpoint, state_dict_sha256."""
    import fake_checkpoints

    return fake_checkpoints


def reference_kit_path() -> Path:
    """Where the conformance kit folder would be: $DCLSVIZ_CONFORMANCE, else ../shared/conformance."""
    env = os.environ.get("DCLSVIZ_CONFORMANCE")
    return Path(env).expanduser().resolve() if env else (REPO_ROOT / ".." / "shared" / "conformance").resolve()


@pytest.fixture(scope="session")
def reference_kit() -> Path:
    """The conformance kit folder itself, for the tests that compare tests/data and our stand-ins with it."""
    path = reference_kit_path()
    if not (path / "manifests").is_dir():
        pytest.skip(f"no conformance kit at {path} (set DCLSVIZ_CONFORMANCE to compare tests/data with it)")
    return path
