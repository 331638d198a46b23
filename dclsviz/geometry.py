"""Each model's eval transform, and how its input relates to the 224 comparison frame.

Human maps always arrive in the *image frame*: the whole image, resampled to 224×224. The model
sees a centre crop of the resized image. Two ways to compare:

* ``paper`` (the study's numbers): the CAM of the crop is stretched over the whole 224 frame and
  compared with the human map of the whole image.
* ``aligned``: the comparison frame is the crop window. The CAM already covers it; the human map is
  cut to the same window and resampled to 224, so both maps describe the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .zoo import Transform

GEOMETRIES = ("paper", "aligned")
FRAME = 224


@dataclass(frozen=True)
class Window:
    """The crop window as fractions of the image: top, left, height, width."""

    top: float
    left: float
    height: float
    width: float

    def pixels(self, h: int, w: int) -> tuple[int, int, int, int]:
        """The window in pixels of an ``h`` × ``w`` image: ``(top, left, height, width)``."""
        return (round(self.top * h), round(self.left * w), max(1, round(self.height * h)),
                max(1, round(self.width * w)))


def _resized_size(h: int, w: int, size: int) -> tuple[int, int]:
    # torchvision Resize(int): the shorter side becomes `size`, the longer one keeps the ratio (floor)
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def crop_window(h: int, w: int, t: Transform) -> Window:
    """Where ``t``'s resize-then-centre-crop takes its input from, in an ``h`` × ``w`` image."""
    rh, rw = _resized_size(h, w, t.resize)
    top = int(round((rh - t.crop) / 2.0))
    left = int(round((rw - t.crop) / 2.0))
    return Window(top / rh, left / rw, t.crop / rh, t.crop / rw)


def to_pil(image: np.ndarray | Image.Image) -> Image.Image:
    """An RGB PIL image of an RGB uint8 array (or of a PIL image in any mode)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")


def resize_crop(image: np.ndarray | Image.Image, t: Transform) -> tuple[torch.Tensor, Window]:
    """The geometric part of ``t``, on the PIL image as the study's torchvision ``Compose`` does it: a uint8
    (3, crop, crop) tensor, and the crop window it shows."""
    pil = to_pil(image)
    x = TF.resize(pil, t.resize, interpolation=InterpolationMode(t.interpolation), antialias=True)
    x = TF.center_crop(x, [t.crop, t.crop])
    return torch.from_numpy(np.array(x)).permute(2, 0, 1).contiguous(), crop_window(pil.height, pil.width, t)


def normalise(x_u8: torch.Tensor, t: Transform) -> torch.Tensor:
    """uint8 (..., 3, H, W) → float32 in ``t``'s normalisation: ``ToTensor`` then ``Normalize``, to the bit."""
    mean = torch.tensor(t.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(t.std, dtype=torch.float32).view(3, 1, 1)
    return (x_u8.float().div(255) - mean) / std


def preprocess(image: np.ndarray | Image.Image, t: Transform) -> tuple[torch.Tensor, Window]:
    """RGB uint8 image -> normalised (3, crop, crop) tensor, and the crop window it shows."""
    x, window = resize_crop(image, t)
    return normalise(x, t), window


def crop_to_window(m: np.ndarray, window: Window, size: int = FRAME) -> np.ndarray:
    """Resample the window of an image-frame map (H,W) or (H,W,C) to size×size (bilinear)."""
    t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))
    chw = t.permute(2, 0, 1)[None] if t.ndim == 3 else t[None, None]
    # affine grid in normalised [-1, 1] coordinates, align_corners=False: the window's outer edges
    theta = torch.tensor([[[window.width, 0.0, 2 * window.left + window.width - 1],
                           [0.0, window.height, 2 * window.top + window.height - 1]]], dtype=torch.float32)
    grid = F.affine_grid(theta, [1, chw.shape[1], size, size], align_corners=False)
    out = F.grid_sample(chw, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    return (out.permute(1, 2, 0) if t.ndim == 3 else out[0]).numpy()


def resize_image(image: np.ndarray, size: int = FRAME) -> np.ndarray:
    """An RGB uint8 image resampled to size×size (for drawing overlays in the image frame)."""
    return np.asarray(to_pil(image).resize((size, size), Image.BILINEAR))


def image_in_frame(image: np.ndarray, window: Window, geometry: str) -> np.ndarray:
    """The RGB image as the comparison frame of ``geometry`` shows it (224×224), for overlays."""
    if geometry == "aligned":
        top, left, hh, ww = window.pixels(*image.shape[:2])
        image = image[top:top + hh, left:left + ww]
    return resize_image(image)


def to_frame(image_frame_map: np.ndarray, window: Window, geometry: str) -> np.ndarray:
    """A map given over the whole image (any size) -> the comparison frame of ``geometry``."""
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {GEOMETRIES}, not {geometry!r}")
    if geometry == "paper":
        if image_frame_map.shape[:2] == (FRAME, FRAME):
            return image_frame_map
        return crop_to_window(image_frame_map, Window(0.0, 0.0, 1.0, 1.0))
    return crop_to_window(image_frame_map, window)
