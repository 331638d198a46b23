"""Shared fixtures. The conformance kit lives in shared/ beside the repository, not inside it."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


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
