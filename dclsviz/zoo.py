"""The model registry: one data record per published checkpoint of the DCLS Grad-CAM study.

Everything that differs between the 16 models (which timm architecture, which convolutions become
DCLS and with which numbers, where the paper fetched the file and how it is packed, the eval
transform, the CAM layer) is data here. Code elsewhere reads these records and never branches on
a model name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VARIANTS = ("baseline", "dcls")


@dataclass(frozen=True)
class DclsRecipe:
    """Which convolutions become ``Dcls2d`` and how (see ``dcls.RULES`` for the rules)."""

    rule: str
    dilated_kernel_size: int
    kernel_count: int
    version: str  # "v0" (bilinear interpolation) or "v1" (normalised triangle)


@dataclass(frozen=True)
class Transform:
    """The eval transform: resize the shorter side, centre-crop, normalise."""

    resize: int
    crop: int
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class ModelEntry:
    arch: str
    variant: str
    family: str  # selects the key filter in checkpoints.KEY_FILTERS
    timm_name: str
    checkpoint: CheckpointSource
    transform: Transform
    cam_layer: str  # module name in the timm model; its output is the Grad-CAM activation
    dcls: Optional[DclsRecipe] = None
    timm_kwargs: dict = field(default_factory=dict)
    num_classes: int = 1000
    class_names: Optional[tuple[str, ...]] = None  # None: ImageNet-1k
    channels_last: bool = True  # large depthwise kernels run much faster in NHWC on CPU and GPU
    notes: str = ""

    @property
    def id(self) -> str:
        return f"{self.arch}.{self.variant}"

    @property
    def input_size(self) -> int:
        return self.transform.crop


ASSETS = Path(__file__).resolve().parent.parent / "assets"

ZENODO_CONVNEXT = "https://zenodo.org/record/7112021/files/"
ZENODO_STUDY = "https://zenodo.org/records/8370737/files/"
FB_CONVNEXT = "https://dl.fbaipublicfiles.com/convnext/"
SAIL = "https://huggingface.co/sail/dl/resolve/main/"

CONVNEXT_T = Transform(resize=256, crop=224)
METAFORMER_T = Transform(resize=224, crop=224)
FASTVIT_T = Transform(resize=256, crop=256)
RESNET_T = Transform(resize=235, crop=224)

# Rules, as the paper's replacement helpers apply them (see dcls.RULES):
DEPTHWISE = "depthwise"  # ConvNeXt: groups == in_channels
DEPTHWISE_SQUARE = "depthwise_square"  # MetaFormer: groups == in == out
DEPTHWISE_7X7 = "depthwise_7x7"  # FastViT: groups == in == out and a 7x7 kernel
CONV_3X3 = "conv_3x3"  # ResNet: every 3x3 conv


def _entries() -> list[ModelEntry]:
    e: list[ModelEntry] = []
    for size, count in (("tiny", 34), ("small", 40), ("base", 40)):
        arch = f"convnext_{size}"
        # the Zenodo record is spelled record/ for tiny and base and records/ for small in the paper's code
        zen = ZENODO_CONVNEXT.replace("record/", "records/") if size == "small" else ZENODO_CONVNEXT
        e.append(ModelEntry(arch, "baseline", "convnext", arch,
                            CheckpointSource((f"{FB_CONVNEXT}{arch}_1k_224_ema.pth",),
                                             f"{arch}_1k_224_ema.pth", "model", "fb-convnext"),
                            CONVNEXT_T, "stages.3"))
        e.append(ModelEntry(arch, "dcls", "convnext", arch,
                            CheckpointSource((f"{zen}convnext_dcls_{size}_1k_224_ema.pth",),
                                             f"convnext_dcls_{size}_1k_224_ema.pth", "model", "fb-convnext"),
                            CONVNEXT_T, "stages.3", DclsRecipe(DEPTHWISE, 17, count, "v0")))
    for arch, count, dl in (("caformer_s18", 34, "?download=1"), ("convformer_s18", 40, "")):
        kind = arch.split("_")[0]
        e.append(ModelEntry(arch, "baseline", "metaformer", arch,
                            CheckpointSource((f"{SAIL}{kind}/{arch}.pth",), f"{arch}.pth", None, "sail-metaformer"),
                            METAFORMER_T, "stages.3"))
        name = f"{arch}_v1_17lim_{count}el_seed0.pth.tar"
        e.append(ModelEntry(arch, "dcls", "metaformer", arch,
                            CheckpointSource((f"{ZENODO_STUDY}{name}{dl}",), name, "state_dict_ema", "sail-metaformer"),
                            METAFORMER_T, "stages.3", DclsRecipe(DEPTHWISE_SQUARE, 17, count, "v1")))
    for arch in ("fastvit_sa24", "fastvit_sa36"):
        e.append(ModelEntry(arch, "baseline", "fastvit", arch,
                            CheckpointSource((f"{ZENODO_STUDY}{arch}_seed0.pth.tar",), f"{arch}_seed0.pth.tar",
                                             "state_dict_ema", "apple-fastvit"),
                            FASTVIT_T, "final_conv",
                            notes="the study's own baseline; timm's apple_in1k weights are an alternative"))
        name = f"{arch}_v1_17lim_34el_seed0.pth.tar"
        e.append(ModelEntry(arch, "dcls", "fastvit", arch,
                            CheckpointSource((f"{ZENODO_STUDY}{name}",), name, "state_dict_ema", "apple-fastvit"),
                            FASTVIT_T, "final_conv", DclsRecipe(DEPTHWISE_7X7, 17, 34, "v1")))
    e.append(ModelEntry("resnet50", "baseline", "resnet", "resnet50",
                        CheckpointSource(("hf-hub:timm/resnet50.a1_in1k",
                                          "https://github.com/rwightman/pytorch-image-models/releases/download/"
                                          "v0.1-rsb-weights/resnet50_a1_0-14fe96d1.pth"),
                                         "resnet50_a1_0-14fe96d1.pth", None, "timm"),
                        RESNET_T, "layer4"))
    e.append(ModelEntry("resnet50", "dcls", "resnet", "resnet50",
                        CheckpointSource(("https://zenodo.org/records/8373830/files/"
                                          "resnet_dcls_kernel_5_model_best.pth.tar",),
                                         "resnet_dcls_kernel_5_model_best.pth.tar", "state_dict_ema", "timm"),
                        RESNET_T, "layer4", DclsRecipe(CONV_3X3, 7, 5, "v0")))
    return e


REGISTRY: dict[str, ModelEntry] = {m.id: m for m in _entries()}
PAPER_ARCHS: tuple[str, ...] = tuple(dict.fromkeys(m.arch for m in REGISTRY.values()))


def register(entry: ModelEntry) -> None:
    """Add an entry (the demo pair registers itself this way)."""
    REGISTRY[entry.id] = entry


def get(arch: str, variant: str) -> ModelEntry:
    if variant not in VARIANTS:
        raise KeyError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    try:
        return REGISTRY[f"{arch}.{variant}"]
    except KeyError:
        raise KeyError(f"unknown architecture {arch!r}; choose one of {', '.join(archs())}") from None


def archs() -> list[str]:
    return list(dict.fromkeys(m.arch for m in REGISTRY.values()))


def entries() -> list[ModelEntry]:
    return list(REGISTRY.values())


# The bundled demo pair is an ordinary entry; importing it last registers it with everything above.
from . import demo as _demo  # noqa: E402,F401
