"""ImageNet-1k class names and lookup of a class by index, WordNet id or name.

The names come from timm's bundled ImageNet metadata (`timm.data.ImageNetInfo`), the same table the
models were trained against, so no label file has to be shipped or downloaded.
"""

from __future__ import annotations

import difflib
import functools
import re
from typing import Union

NUM_CLASSES = 1000


@functools.lru_cache(maxsize=1)
def _info():
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    if info.num_classes() != NUM_CLASSES:
        raise RuntimeError(f"timm's imagenet-1k table has {info.num_classes()} classes, expected {NUM_CLASSES}")
    return info


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> list[str]:
    """The 1000 class descriptions in class-index order, e.g. ``"tench, Tinca tinca"``.

    These are WordNet synonym lists; the first synonym is the usual short name. Two classes share the
    description "crane" (134 the bird, 517 the machine).
    """
    info = _info()
    return [info.index_to_description(i) for i in range(NUM_CLASSES)]


@functools.lru_cache(maxsize=1)
def wordnet_ids() -> list[str]:
    """The 1000 WordNet ids (``"n01440764"``, ...) in class-index order."""
    return list(_info().label_names())


def short_name(index: int) -> str:
    """The first synonym of a class, for display: ``short_name(0) == "tench"``."""
    return imagenet_classes()[class_index(index)].split(",")[0].strip()


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", s.strip().lower())


@functools.lru_cache(maxsize=1)
def _name_table() -> dict[str, tuple[int, ...]]:
    # Every full description, every single synonym and every WordNet id maps to the classes it names;
    # a synonym shared by several classes ("crane", "maillot") maps to all of them, so a lookup can
    # say it is ambiguous instead of picking one silently.
    table: dict[str, list[int]] = {}
    for i, (desc, wnid) in enumerate(zip(imagenet_classes(), wordnet_ids())):
        keys = {_norm(desc), _norm(wnid)} | {_norm(s) for s in desc.split(",") if s.strip()}
        for k in keys:
            table.setdefault(k, []).append(i)
    return {k: tuple(v) for k, v in table.items()}


def class_index(name_or_int: Union[str, int]) -> int:
    """The class index named by an int, a numeric string, a WordNet id, a description or one synonym.

    Names match case-insensitively. Raises ValueError for an index out of range, an unknown name (the
    message lists close matches) or a name that several classes share (the message lists them).
    """
    if isinstance(name_or_int, bool):
        raise TypeError("a class is an int or a name, not a bool")
    if isinstance(name_or_int, int) or hasattr(name_or_int, "__index__"):
        idx = int(name_or_int)
        if not 0 <= idx < NUM_CLASSES:
            raise ValueError(f"class index {idx} is outside 0..{NUM_CLASSES - 1}")
        return idx
    if not isinstance(name_or_int, str):
        raise TypeError(f"a class is an int or a name, got {type(name_or_int).__name__}")
    key = _norm(name_or_int)
    if re.fullmatch(r"[+-]?\d+", key):
        return class_index(int(key))
    if not key:
        raise ValueError("empty class name")
    table = _name_table()
    hits = table.get(key)
    if hits and len(hits) == 1:
        return hits[0]
    names = imagenet_classes()
    if hits:
        choices = "; ".join(f"{i}: {names[i]}" for i in hits)
        raise ValueError(f"{name_or_int!r} names several ImageNet classes, give the index: {choices}")
    close = difflib.get_close_matches(key, list(table), n=5, cutoff=0.6)
    hint = (
        "close matches: " + "; ".join(f"{k!r} ({', '.join(map(str, table[k]))})" for k in close)
        if close
        else "no close match"
    )
    raise ValueError(f"{name_or_int!r} is not an ImageNet class name; {hint}")
