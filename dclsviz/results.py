"""The typed results of the data path, each with its one conversion to JSON and to CSV cells.

``MapScores``: one map against the human map. ``Provenance``: which weights on which device produced a
model's output. ``compare`` builds them; the manifest, ``explain``'s result.json, review sessions and
``evaluate``'s per-image rows all write them through the methods here, so a key is spelled in one place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class MapScores:
    """A map's agreement with the human map; every field None when the pair has no ranking (no human
    map, or a constant one).

    Args:
        spearman: the study's per-image Spearman ρ.
        ceiling: ρ divided by ClickMe's inter-human ceiling (``metrics.HUMAN_CEILING``).
        dice, iou: overlap of the two maps' top-10 % pixels.
    """

    spearman: Optional[float] = None
    ceiling: Optional[float] = None
    dice: Optional[float] = None
    iou: Optional[float] = None

    FIELDS = ("spearman", "ceiling", "dice", "iou")

    def as_dict(self) -> dict:
        """The JSON form: ``{spearman, ceiling, dice, iou}``, None as null."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MapScores":
        """Back from ``as_dict`` (e.g. a review session's stored scores)."""
        return cls(**{k: d.get(k) for k in cls.FIELDS})

    def csv_cells(self, map_name: str) -> dict:
        """The per-image CSV's cells of this map: ``{field}_{map_name}`` → float or None."""
        return {f"{k}_{map_name}": None if v is None else float(v) for k, v in self.as_dict().items()}

    @staticmethod
    def csv_columns(map_names) -> tuple[str, ...]:
        """The CSV column names ``csv_cells`` fills for ``map_names``, field by field."""
        return tuple(f"{k}_{m}" for k in MapScores.FIELDS for m in map_names)


UNDEFINED = MapScores()


@dataclass(frozen=True)
class Provenance:
    """Which weights, from where, on which device: enough to reproduce a model's output."""

    id: str  # the registry id, ``arch.variant``
    timm_name: str
    checkpoint_path: Optional[str]  # a path on this machine; None for weights given in memory
    checkpoint_origin: Optional[str]
    checkpoint_sha256: Optional[str]
    device: str

    @property
    def arch(self) -> str:
        """The architecture part of the id."""
        return self.id.rsplit(".", 1)[0]

    @property
    def checkpoint_file(self) -> Optional[str]:
        """The checkpoint's file name, without its folder."""
        return Path(self.checkpoint_path).name if self.checkpoint_path else None

    def as_dict(self, public: bool = True) -> dict:
        """The JSON form. ``public``: the checkpoint's file name only, never its path on this machine (what
        clients of the app see); else the full path (the CLI's own output)."""
        d = {"arch": self.arch, "variant": self.id.rsplit(".", 1)[1], **dataclasses.asdict(self)}
        d.pop("checkpoint_path")
        d["checkpoint"] = self.checkpoint_file if public else self.checkpoint_path
        return d
