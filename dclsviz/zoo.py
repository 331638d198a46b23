"""The model registry: one data record per published checkpoint of the DCLS Grad-CAM study, and the demo pair.

Everything that differs between the 16 models (which timm architecture, which convolutions become
DCLS and with which numbers, where the paper fetched the file and how it is packed, the eval
transform, the CAM layer) is data here, written in timm's ``_cfg`` style: keyword-only records
(``entries.py``). Code elsewhere reads them and never branches on a model name. The registry is
built once, at import, and is read-only: a second entry with an id already taken is an error.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Iterable, Mapping

from . import demo
from .entries import (ASSETS, CONV_3X3, DEPTHWISE, DEPTHWISE_7X7, DEPTHWISE_SQUARE, IMAGENET_MEAN,
                      IMAGENET_STD, VARIANTS, CheckpointSource, DclsRecipe, ModelEntry, Transform)

# the record types and constants are the registry's vocabulary: callers reach them as zoo.ModelEntry etc.
__all__ = ["ASSETS", "CONV_3X3", "DEPTHWISE", "DEPTHWISE_7X7", "DEPTHWISE_SQUARE", "IMAGENET_MEAN", "IMAGENET_STD",
           "VARIANTS", "CheckpointSource", "DclsRecipe", "ModelEntry", "Transform", "STUDY", "PAPER_ARCHS",
           "REGISTRY", "build_registry", "get", "archs", "entries"]

ZENODO_CONVNEXT = "https://zenodo.org/record/7112021/files/"
ZENODO_STUDY = "https://zenodo.org/records/8370737/files/"
FB_CONVNEXT = "https://dl.fbaipublicfiles.com/convnext/"
SAIL = "https://huggingface.co/sail/dl/resolve/main/"

CONVNEXT_T = Transform(resize=256, crop=224)
METAFORMER_T = Transform(resize=224, crop=224)
FASTVIT_T = Transform(resize=256, crop=256)
RESNET_T = Transform(resize=235, crop=224)


def _source(url: str, container_key, naming: str, *more_urls: str, file_name: str = "") -> CheckpointSource:
    """A checkpoint at ``url`` (then ``more_urls``); its cache file name is the URL's, as ``torch.hub`` names it."""
    name = file_name or url.rsplit("/", 1)[1].split("?")[0]
    return CheckpointSource(urls=(url, *more_urls), file_name=name, container_key=container_key, naming=naming)


def _convnext() -> list[ModelEntry]:
    e = []
    for size, count in (("tiny", 34), ("small", 40), ("base", 40)):
        arch = f"convnext_{size}"
        # the Zenodo record is spelled record/ for tiny and base and records/ for small in the paper's code
        zen = ZENODO_CONVNEXT.replace("record/", "records/") if size == "small" else ZENODO_CONVNEXT
        common = dict(arch=arch, family="convnext", timm_name=arch, transform=CONVNEXT_T, cam_layer="stages.3")
        e.append(ModelEntry(variant="baseline", **common,
                            checkpoint=_source(f"{FB_CONVNEXT}{arch}_1k_224_ema.pth", "model", "fb-convnext")))
        e.append(ModelEntry(variant="dcls", **common,
                            checkpoint=_source(f"{zen}convnext_dcls_{size}_1k_224_ema.pth", "model", "fb-convnext"),
                            dcls=DclsRecipe(rule=DEPTHWISE, dilated_kernel_size=17, kernel_count=count, version="v0")))
    return e


def _metaformer() -> list[ModelEntry]:
    e = []
    for arch, count, dl in (("caformer_s18", 34, "?download=1"), ("convformer_s18", 40, "")):
        kind = arch.split("_")[0]
        common = dict(arch=arch, family="metaformer", timm_name=arch, transform=METAFORMER_T, cam_layer="stages.3")
        e.append(ModelEntry(variant="baseline", **common,
                            checkpoint=_source(f"{SAIL}{kind}/{arch}.pth", None, "sail-metaformer")))
        e.append(ModelEntry(variant="dcls", **common,
                            checkpoint=_source(f"{ZENODO_STUDY}{arch}_v1_17lim_{count}el_seed0.pth.tar{dl}",
                                               "state_dict_ema", "sail-metaformer"),
                            dcls=DclsRecipe(rule=DEPTHWISE_SQUARE, dilated_kernel_size=17, kernel_count=count,
                                            version="v1")))
    return e


def _fastvit() -> list[ModelEntry]:
    e = []
    for arch in ("fastvit_sa24", "fastvit_sa36"):
        common = dict(arch=arch, family="fastvit", timm_name=arch, transform=FASTVIT_T, cam_layer="final_conv")
        e.append(ModelEntry(variant="baseline", **common,
                            checkpoint=_source(f"{ZENODO_STUDY}{arch}_seed0.pth.tar", "state_dict_ema",
                                               "apple-fastvit"),
                            notes="the study's own baseline; timm's apple_in1k weights are an alternative"))
        e.append(ModelEntry(variant="dcls", **common,
                            checkpoint=_source(f"{ZENODO_STUDY}{arch}_v1_17lim_34el_seed0.pth.tar", "state_dict_ema",
                                               "apple-fastvit"),
                            dcls=DclsRecipe(rule=DEPTHWISE_7X7, dilated_kernel_size=17, kernel_count=34,
                                            version="v1")))
    return e


def _resnet() -> list[ModelEntry]:
    common = dict(arch="resnet50", family="resnet", timm_name="resnet50", transform=RESNET_T, cam_layer="layer4")
    rsb = ("https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-rsb-weights/"
           "resnet50_a1_0-14fe96d1.pth")
    return [ModelEntry(variant="baseline", **common,
                       checkpoint=_source("hf-hub:timm/resnet50.a1_in1k", None, "timm", rsb,
                                          file_name=rsb.rsplit("/", 1)[1])),
            ModelEntry(variant="dcls", **common,
                       checkpoint=_source("https://zenodo.org/records/8373830/files/"
                                          "resnet_dcls_kernel_5_model_best.pth.tar", "state_dict_ema", "timm"),
                       dcls=DclsRecipe(rule=CONV_3X3, dilated_kernel_size=7, kernel_count=5, version="v0"))]


def build_registry(entries: Iterable[ModelEntry]) -> Mapping[str, ModelEntry]:
    """A read-only id → entry mapping, in the order given.

    Raises:
        ValueError: two entries share an id, or an entry's variant is not one of ``VARIANTS``.
    """
    table: dict[str, ModelEntry] = {}
    for entry in entries:
        if entry.variant not in VARIANTS:
            raise ValueError(f"model {entry.id}: variant {entry.variant!r} is not one of {', '.join(VARIANTS)}")
        if entry.id in table:
            raise ValueError(f"two registry entries have the id {entry.id!r}; ids must be unique")
        table[entry.id] = entry
    return MappingProxyType(table)


STUDY: tuple[ModelEntry, ...] = (*_convnext(), *_metaformer(), *_fastvit(), *_resnet())
PAPER_ARCHS: tuple[str, ...] = tuple(dict.fromkeys(m.arch for m in STUDY))
REGISTRY: Mapping[str, ModelEntry] = build_registry([*STUDY, *demo.ENTRIES])


def get(arch: str, variant: str) -> ModelEntry:
    """The entry of ``arch``'s ``variant``.

    Raises:
        KeyError: with the valid choices, for an unknown variant or architecture.
    """
    if variant not in VARIANTS:
        raise KeyError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    try:
        return REGISTRY[f"{arch}.{variant}"]
    except KeyError:
        raise KeyError(f"unknown architecture {arch!r}; choose one of {', '.join(archs())}") from None


def archs() -> list[str]:
    """Every registered architecture, study first, in registry order."""
    return list(dict.fromkeys(m.arch for m in REGISTRY.values()))


def entries() -> list[ModelEntry]:
    """Every registered entry, in registry order."""
    return list(REGISTRY.values())
