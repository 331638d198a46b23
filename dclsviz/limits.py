"""Every limit on what a client may send, in one place, and the checks that enforce them.

A public Space serves strangers: each text, number and file that reaches the server has a stated bound, and
breaking it gets a message that names the field and the bound (``LimitError``), never an internal error. The
UI, the API and the CLI all check through these functions, so a limit cannot differ between them.
"""

from __future__ import annotations

import math
import re
from numbers import Integral, Real
from typing import Optional

# Pixels of any image or map we decode (an RGB image at this size is 120 MB in memory).
MAX_PIXELS = 40_000_000
# A class asked for by name (ImageNet's longest description is 121 characters).
MAX_TARGET_CHARS = 200
# A session or reviewer name, and a reviewer's note on one item.
MAX_NAME_CHARS = 80
MAX_NOTE_CHARS = 2_000
# Items of one review session, records of one Dataset-tab run.
MAX_REVIEW_ITEMS = 200
MAX_DATASET_IMAGES = 200
# Seeds are stored as SQLite INTEGER (signed 64-bit).
MAX_SEED = 2**63 - 1
# Index strings: plain ASCII digits, short enough that no float or big-int path is ever taken.
MAX_INDEX_DIGITS = 12
# Photos uploaded into one review session, and their total size.
MAX_SESSION_PHOTOS = 100
MAX_SESSION_UPLOAD_BYTES = 200 * 1024 * 1024
# A review token or invite code as sent (ours are ~40 characters); longer strings are refused before hashing.
MAX_TOKEN_CHARS = 200
# Tokens one request may present (listing sessions), and reviewers who may join one session.
MAX_TOKENS_PER_REQUEST = 50
MAX_SESSION_REVIEWERS = 50
# Hugging Face usernames an organiser may allow into one session.
MAX_HF_USERS = 100

_ASCII_INT = re.compile(r"[0-9]{1,%d}" % MAX_INDEX_DIGITS)


class LimitError(ValueError):
    """A value a client sent breaks a stated limit; the message names the field and the limit."""


def text(value, field: str, max_chars: int, *, required: bool = False) -> str:
    """``value`` as a stripped string of at most ``max_chars`` characters (empty allowed unless ``required``)."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise LimitError(f"{field} must be text, not {type(value).__name__}")
    value = value.strip()
    if required and not value:
        raise LimitError(f"{field} is required")
    if len(value) > max_chars:
        raise LimitError(f"{field} is {len(value):,} characters long; the limit is {max_chars:,}")
    if any(ord(c) < 32 and c not in "\t\n" for c in value):
        raise LimitError(f"{field} contains control characters")
    return value


def whole_number(value, field: str, lo: int, hi: int) -> int:
    """An integer in [lo, hi] from an int, an integral finite float (what number widgets send) or a string of
    plain ASCII digits. Anything else (3.9, inf, 1e400, "٣", "0x10", "-7" below lo) is refused with a message."""
    if isinstance(value, bool):
        raise LimitError(f"{field} must be a whole number, not {value!r}")
    if isinstance(value, str):
        s = value.strip()
        if not _ASCII_INT.fullmatch(s):
            raise LimitError(f"{field} must be a whole number written with the digits 0-9 (at most "
                             f"{MAX_INDEX_DIGITS}), not {value[:40]!r}")
        n = int(s)
    elif isinstance(value, Integral):
        n = int(value)
    elif isinstance(value, Real):
        f = float(value)
        if not math.isfinite(f) or not f.is_integer():
            raise LimitError(f"{field} must be a whole number, not {value!r}")
        n = int(f)
    else:
        raise LimitError(f"{field} must be a whole number, not {type(value).__name__}")
    if not lo <= n <= hi:
        raise LimitError(f"{field} must lie between {lo:,} and {hi:,}, not {n:,}")
    return n


def unit_interval(value, field: str) -> float:
    """A finite number in [0, 1] (thresholds, opacities)."""
    if isinstance(value, bool):
        raise LimitError(f"{field} must be a number in [0, 1], not {value!r}")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise LimitError(f"{field} must be a number in [0, 1], not {str(value)[:40]!r}") from None
    if not (math.isfinite(f) and 0.0 <= f <= 1.0):
        raise LimitError(f"{field} must be a number in [0, 1], not {value!r}")
    return f


def pixels(width: int, height: int, what: str) -> None:
    """Refuse an image or map over ``MAX_PIXELS`` before it is decoded."""
    if width * height > MAX_PIXELS:
        raise LimitError(f"{what} is {width}×{height} pixels ({width * height / 1e6:.0f} MP); the limit is "
                         f"{MAX_PIXELS / 1e6:.0f} MP. Please downscale it.")


def optional_seed(value, field: str = "seed") -> Optional[int]:
    """None for an empty value, else a seed in [0, MAX_SEED]."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return whole_number(value, field, 0, MAX_SEED)

# Disk the app may fill for its clients (a public Space must not run out of disk). Ages in seconds.
# Export bundles (about 1 MB per comparison) are kept for an hour, for the download button.
EXPORTS_MAX_AGE_S = 3600
EXPORTS_MAX_BYTES = 500 * 1024 * 1024
# Dataset-tab run folders are reused when the same pair and settings are asked again: kept longer.
DATASET_RUNS_MAX_AGE_S = 7 * 24 * 3600
DATASET_RUNS_MAX_BYTES = 1024 * 1024 * 1024
# Gradio's cache of uploads and served images: swept every PRUNE_EVERY seconds of files older than MAX_AGE
# (DCLSVIZ_CACHE_MAX_AGE_S / DCLSVIZ_CACHE_PRUNE_EVERY_S override both, never above these).
GRADIO_CACHE_MAX_AGE_S = 3600
GRADIO_CACHE_PRUNE_EVERY_S = 600


def cli_type(check, field: str, *bounds, **options):
    """An argparse ``type=`` running ``check(value, field, *bounds, **options)``: a broken limit becomes argparse's own
    error (usage line, message, exit 2), so the command line states limits exactly as the app does."""
    import argparse

    def parse(value: str):
        try:
            return check(value, field, *bounds, **options)
        except LimitError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = field.lstrip("-").replace("-", "_")
    return parse
