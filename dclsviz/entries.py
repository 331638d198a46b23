"""The records of the model registry: what one model entry holds, as frozen data with keyword-only fields.

``zoo`` lists the study's entries and ``demo`` the bundled pair's; both build these records, and code
elsewhere reads them and never branches on a model name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VARIANTS = ("baseline", "dcls")


@dataclass(frozen=True, kw_only=True)
class DclsRecipe:
    """Which convolutions become ``Dcls2d`` and how (see ``dcls.RULES`` for the rules)."""

    rule: str
    dilated_kernel_size: int
    kernel_count: int
    version: str  # "v0" (bilinear interpolation) or "v1" (normalised triangle)


@dataclass(frozen=True, kw_only=True)
class Transform:
    """The eval transform: resize the shorter side, centre-crop, normalise."""

    resize: int
    crop: int
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True, kw_only=True)
class CheckpointSource:
    """Where the paper's code fetched a checkpoint and how the file is packed.

    ``urls`` are tried in order; an ``hf-hub:org/name`` entry means the ``model.safetensors`` of
    that Hugging Face repository. ``container_key`` is the entry holding the weights (None: the file
    is the state dict). ``naming`` names the key scheme, mapped to timm by the family's filter.
    """

    urls: tuple[str, ...]
    file_name: str
    container_key: Optional[str]
    naming: str
    sha256: Optional[str] = None
    bundled: Optional[str] = None  # a file shipped in assets/ (the demo pair), relative to assets/


@dataclass(frozen=True, kw_only=True)
class ModelEntry:
    """One published checkpoint and everything needed to build, load and explain it (timm's ``_cfg``, as data).

    ``family`` selects the key filter in ``checkpoints.KEY_FILTERS``; ``cam_layer`` names the module whose
    output is the Grad-CAM activation; ``dcls`` is None for a baseline.
    """

    arch: str
    variant: str
    family: str
    timm_name: str
    checkpoint: CheckpointSource
    transform: Transform
    cam_layer: str
    dcls: Optional[DclsRecipe] = None
    timm_kwargs: dict = field(default_factory=dict)
    num_classes: int = 1000
    class_names: Optional[tuple[str, ...]] = None  # None: ImageNet-1k
    channels_last: bool = True  # large depthwise kernels run much faster in NHWC on CPU and GPU
    notes: str = ""

    @property
    def id(self) -> str:
        """``arch.variant``, the entry's key in the registry."""
        return f"{self.arch}.{self.variant}"

    @property
    def input_size(self) -> int:
        """The side of the square input the model sees."""
        return self.transform.crop



# shipped data (the demo pair and its shard, example photos); a CheckpointSource's ``bundled`` is relative to it
ASSETS = Path(__file__).resolve().parent.parent / "assets"

# Rules, as the paper's replacement helpers apply them (see dcls.RULES):
DEPTHWISE = "depthwise"  # ConvNeXt: groups == in_channels
DEPTHWISE_SQUARE = "depthwise_square"  # MetaFormer: groups == in == out
DEPTHWISE_7X7 = "depthwise_7x7"  # FastViT: groups == in == out and a 7x7 kernel
CONV_3X3 = "conv_3x3"  # ResNet: every 3x3 conv
