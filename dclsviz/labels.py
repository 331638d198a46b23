"""ImageNet-1k class names and lookup of a class by index, WordNet id or name.

The names come from timm's bundled ImageNet metadata (`timm.data.ImageNetInfo`), the same table the
models were trained against, so no label file has to be shipped or downloaded.
"""

from __future__ import annotations

import difflib
import functools
import re
from typing import Optional, Sequence, Union

from .limits import MAX_INDEX_DIGITS

NUM_CLASSES = 1000


@functools.lru_cache(maxsize=1)
def _info():
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    if info.num_classes() != NUM_CLASSES:
        raise RuntimeError(f"timm's imagenet-1k table has {info.num_classes()} classes, expected {NUM_CLASSES}")
    return info


@functools.lru_cache(maxsize=1)
def _descriptions() -> tuple[str, ...]:
    info = _info()
    return tuple(info.index_to_description(i) for i in range(NUM_CLASSES))


@functools.lru_cache(maxsize=1)
def _wnids() -> tuple[str, ...]:
    return tuple(_info().label_names())


def imagenet_classes() -> list[str]:
    """The 1000 class descriptions in class-index order, e.g. ``"tench, Tinca tinca"``.

    These are WordNet synonym lists; the first synonym is the usual short name. Two classes share the
    description "crane" (134 the bird, 517 the machine). A fresh list each call, so callers may edit it.
    """
    return list(_descriptions())


def wordnet_ids() -> list[str]:
    """The 1000 WordNet ids (``"n01440764"``, ...) in class-index order."""
    return list(_wnids())


def class_names_for(entry) -> list[str]:
    """The class names of a model: its zoo entry's own `class_names`, else ImageNet-1k's."""
    own = getattr(entry, "class_names", None)
    return list(own) if own else imagenet_classes()


def short_name(index: int, class_names: Optional[Sequence[str]] = None) -> str:
    """The first synonym of a class, for display: ``short_name(0) == "tench"``."""
    names = _descriptions() if class_names is None else tuple(class_names)
    return names[class_index(index, class_names)].split(",")[0].strip()


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s.strip().lower())


@functools.lru_cache(maxsize=8)
def _name_tables(names: tuple[str, ...], ids: tuple[str, ...]):
    # Two tiers: whole names and WordNet ids first, then single synonyms. "partridge" is both the whole
    # description of class 86 and a synonym inside class 82's, and must find 86. A synonym shared by
    # several classes maps to all of them, so a lookup can say it is ambiguous instead of guessing.
    exact: dict[str, list[int]] = {}
    synonyms: dict[str, list[int]] = {}
    for i, desc in enumerate(names):
        for k in {_norm(desc)} | ({_norm(ids[i])} if ids else set()):
            exact.setdefault(k, []).append(i)
        for k in {_norm(s) for s in desc.split(",") if s.strip()}:
            synonyms.setdefault(k, []).append(i)
    return {k: tuple(v) for k, v in exact.items()}, {k: tuple(v) for k, v in synonyms.items()}


def class_index(name_or_int: Union[str, int], class_names: Optional[Sequence[str]] = None) -> int:
    """The class index named by an int, a string of ASCII digits, a WordNet id, a description or one synonym.

    Looks in ImageNet-1k, or in `class_names` when a model has its own classes (WordNet ids then do
    not apply). Names match case-insensitively. Raises ValueError for an index out of range, an unknown
    name (the message lists close matches) or a name that several classes share (the message lists them).
    """
    names = _descriptions() if class_names is None else tuple(class_names)
    ids = _wnids() if class_names is None else ()
    n = len(names)
    if isinstance(name_or_int, bool):
        raise TypeError("a class is an int or a name, not a bool")
    if isinstance(name_or_int, int) or hasattr(name_or_int, "__index__"):
        idx = int(name_or_int)
        if not 0 <= idx < n:
            raise ValueError(f"class index {idx} is outside 0..{n - 1}")
        return idx
    if not isinstance(name_or_int, str):
        raise TypeError(f"a class is an int or a name, got {type(name_or_int).__name__}")
    key = _norm(name_or_int)
    # ASCII digits only: \d would take "٣" (Arabic-Indic three) for class 3
    if re.fullmatch(r"[+-]?[0-9]+", key, re.ASCII):
        if len(key.lstrip("+-")) > MAX_INDEX_DIGITS:
            raise ValueError(f"class index {key[:MAX_INDEX_DIGITS + 1]}... is outside 0..{n - 1}")
        return class_index(int(key), class_names)
    if not key:
        raise ValueError("empty class name")
    exact, synonyms = _name_tables(names, ids)
    hits = exact.get(key) or synonyms.get(key)
    if hits and len(hits) == 1:
        return hits[0]
    if hits:
        choices = "; ".join(f"{i}: {names[i]}" for i in hits)
        raise ValueError(f"{name_or_int!r} names several classes, give the index: {choices}")
    table = {**synonyms, **exact}
    close = difflib.get_close_matches(key, list(table), n=5, cutoff=0.6)
    hint = (
        "close matches: " + "; ".join(f"{k!r} ({', '.join(map(str, table[k]))})" for k in close)
        if close
        else "no close match"
    )
    raise ValueError(f"{name_or_int!r} is not a class name of this model; {hint}")


def shard_labels_fit(shard, entry) -> bool:
    """Whether a ClickMe-format shard's labels are classes of ``entry``'s model.

    The bundled demo shard (known by its file name, wherever ``demo train`` wrote it) is labelled with the
    demo pair's classes; every other shard, like ClickMe itself, with ImageNet's.
    """
    from pathlib import Path

    from .demo import SHARD

    return (Path(shard).name == Path(SHARD).name) == (entry.class_names is not None)
