"""The demo pair: a tiny ResNet and its DCLS twin, trained on synthetic shapes and shipped in assets/demo.

They let a machine with no network and no downloaded checkpoint use the whole app. Both are ordinary
zoo entries built through the same code as the paper's models (timm + ``dcls.apply_recipe``).
Importing this module only describes them (``ENTRIES``, which ``zoo`` registers): nothing is generated or
trained here.
"""

from __future__ import annotations

from ..entries import CONV_3X3, VARIANTS, CheckpointSource, DclsRecipe, ModelEntry, Transform

# The classes live here, not in data.py, so registering the pair does not import OpenCV.
CLASS_NAMES: tuple[str, ...] = ("disc", "ring", "square", "triangle", "cross", "star", "crescent", "arrow")
ARCH = "demo"
SHARD = "demo/demo_val.tfrecords"  # relative to zoo.ASSETS
META = "demo/demo_meta.json"

TIMM_NAME = "resnet18"
# A narrow ResNet with one block per stage: BatchNorm ResNets learn these shapes in minutes on CPU
# where a ConvNeXt of the same cost barely leaves chance level. Output stride 16 keeps the last stage
# at 8x8 for the 128-pixel input, so the Grad-CAM has 8x8 cells instead of 4x4.
TIMM_KWARGS = {"layers": (1, 1, 1, 1), "channels": (16, 32, 64, 128), "stem_width": 16, "output_stride": 16}
TRANSFORM = Transform(resize=128, crop=128)
# The paper's ResNet recipe (every 3x3 conv becomes a Dcls2d with 5 learnable taps), in a 5x5 window
# rather than 7x7 because the maps here are only 32x32 to 8x8. 9 taps learn a little faster but cost
# 1.8x the kernel-construction time per step, which dominates the CPU training budget.
RECIPE = DclsRecipe(rule=CONV_3X3, dilated_kernel_size=5, kernel_count=5, version="v0")
CAM_LAYER = "layer4"


def entry_for(variant: str) -> ModelEntry:
    """The demo pair's ``variant`` entry, its checkpoint shipped in assets/demo."""
    file_name = f"demo_{variant}.safetensors"
    return ModelEntry(
        arch=ARCH, variant=variant, family="demo", timm_name=TIMM_NAME,
        checkpoint=CheckpointSource(urls=(), file_name=file_name, container_key=None, naming="timm",
                                    bundled=f"demo/{file_name}"),
        transform=TRANSFORM, cam_layer=CAM_LAYER, dcls=RECIPE if variant == "dcls" else None,
        timm_kwargs=dict(TIMM_KWARGS), num_classes=len(CLASS_NAMES), class_names=CLASS_NAMES,
        notes="synthetic-shape demo pair trained by `python -m dclsviz demo train`",
    )


ENTRIES: tuple[ModelEntry, ...] = tuple(entry_for(v) for v in VARIANTS)
