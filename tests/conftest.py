"""Shared fixtures. The conformance kit lives in shared/ beside the repository, not inside it."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# The device the model tests run on: cpu here and in CI; `DCLSVIZ_TEST_DEVICE=cuda` checks the GPU path
# against the same goldens and tolerances.
TEST_DEVICE = os.environ.get("DCLSVIZ_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def kit() -> Path:
    """The conformance kit folder: $DCLSVIZ_CONFORMANCE, else ../shared/conformance from the repo root.

    A missing kit fails the run instead of skipping, so that CI cannot pass without the reference data.
    """
    env = os.environ.get("DCLSVIZ_CONFORMANCE")
    path = Path(env).expanduser().resolve() if env else (REPO_ROOT / ".." / "shared" / "conformance").resolve()
    if not path.is_dir():
        pytest.fail(
            f"conformance kit not found at {path} (set DCLSVIZ_CONFORMANCE to the kit folder)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def fake(kit):
    """The kit's fake_checkpoint module, loaded once per session.

    It registers a torch serialization hook (to write cuda:0-tagged storages) when first used; two
    copies of the module would register two and corrupt each other's files.
    """
    import importlib.util
    import sys

    if "fake_checkpoint" in sys.modules:
        return sys.modules["fake_checkpoint"]
    spec = importlib.util.spec_from_file_location("fake_checkpoint", kit / "fake_checkpoint.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fake_checkpoint"] = mod
    spec.loader.exec_module(mod)
    return mod
