"""The only image preprocessing in gensift.

Training, calibration, evaluation, ``sort`` and ``watch`` all turn images into
tensors through the two presets here, so the normalisation a checkpoint was
trained with is the normalisation it is served with (the scripts gensift
replaces scaled by 1/255 for a backbone that expected ImageNet statistics).

Images are resized to a square of ``image_size`` without cropping: a defect or
a subject at the edge of a generation must still be seen.

Augmentation is chosen per stage:

* **quality** learns to spot blur, noise, washed-out colour and artefacts, so
  its augmentation never produces them: only a horizontal flip and a mild crop
  (at least 85 % of the area, near-square) that, taken from a full-size
  generation, is still downsampled to ``image_size`` and adds no softness.
* **feature** sorts good images into the user's classes, so it also gets a
  wider crop and a mild brightness/contrast/saturation jitter. Hue is never
  changed: a user's classes may be defined by colour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import numpy as np
import torch
from PIL import Image, ImageChops, ImageOps
from torchvision.transforms import v2

Stage = Literal["quality", "feature"]
STAGES: tuple[Stage, ...] = ("quality", "feature")


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and standard deviation the backbone expects (RGB, 0..1 scale)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_lists(cls, mean: Sequence[float], std: Sequence[float]) -> Normalization:
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("normalisation needs three means and three standard deviations")
        if any(s <= 0 for s in std):
            raise ValueError("normalisation standard deviations must be positive")
        return cls(
            (float(mean[0]), float(mean[1]), float(mean[2])),
            (float(std[0]), float(std[1]), float(std[2])),
        )


#: The statistics every torchvision ImageNet backbone was trained with.
IMAGENET = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def open_rgb(
    source: Path | IO[bytes], image_size: int, formats: Sequence[str] | None = None
) -> Image.Image:
    """Decode ``source`` (a path or a binary file object) fully into an upright RGB image.

    ``formats`` limits which decoders Pillow may try (None = all). Images over
    Pillow's ``Image.MAX_IMAGE_PIXELS`` are refused with ``DecompressionBombError``
    before any pixel is decoded. JPEGs are decoded in draft mode at no less than
    twice ``image_size``, which is several times faster for large files and
    loses nothing at the size the network sees. The EXIF orientation is applied,
    so a photo stored on its side is seen as it is shown. Raises ``OSError`` (or
    a Pillow subclass) for unreadable files.

    This is the one way gensift turns a file into pixels: training, evaluation,
    ``sort`` and ``watch`` (and its blank rule) all see what it returns.
    """
    with Image.open(source, formats=formats) as img:
        limit = Image.MAX_IMAGE_PIXELS
        if limit and img.width * img.height > limit:
            raise Image.DecompressionBombError(
                f"{img.width}x{img.height} pixels is over the decompression-bomb limit "
                f"of {limit} pixels"
            )
        if img.format == "JPEG":
            img.draft("RGB", (2 * image_size, 2 * image_size))
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
        if img.mode == "CMYK" and img.format == "JPEG" and "adobe" not in img.info:
            # Pillow reads every CMYK JPEG as Adobe's inverted samples; without Adobe's
            # APP14 marker the file holds plain ones (what libjpeg-based readers assume).
            return _to_rgb(ImageChops.invert(img))
        return _to_rgb(img)


#: Greyscale modes with more than 8 bits a sample. Pillow reads a 16-bit greyscale PNG as
#: I;16 (as I, 32-bit, in older Pillow); its convert() clips these at 255 instead of scaling.
WIDE_GREY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
#: Modes with an alpha channel, composited over white.
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any decoded mode -> 8-bit RGB: wide grey scaled down, transparency over white."""
    if img.mode in WIDE_GREY_MODES:
        img = _grey_to_8bit(img)
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        # Composite transparency (an alpha channel, or a palette entry or key colour marked
        # transparent) over white rather than letting it turn black.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _grey_to_8bit(img: Image.Image) -> Image.Image:
    """16-bit grey -> L, rounding v * 255 / 65535 (v / 257): scaled, never clipped.

    16 bits is the depth of every sample here: PNG stores 16-bit samples scaled to the
    full 0..65535 range even when its sBIT chunk says fewer bits are significant, and
    Pillow's I images from PNG hold 16-bit samples (other values are clamped to that
    range). A key grey marked transparent (PNG tRNS) becomes an alpha channel, matched
    at full depth so that neighbouring greys stay opaque.
    """
    wide = np.asarray(img)  # uint16 in the file's byte order, or int32 for mode I
    clamped = np.clip(wide, 0, 65535).astype(np.uint32)
    grey = Image.fromarray(((clamped + 128) // 257).astype(np.uint8))
    key = img.info.get("transparency")
    if isinstance(key, int):
        alpha = np.where(wide == key, 0, 255).astype(np.uint8)
        return Image.merge("LA", (grey, Image.fromarray(alpha)))
    return grey


class EvalPreset:
    """PIL image -> normalised float tensor (3, size, size). Used by every inference path.

    It is two steps so the runtime can split them: :meth:`resize` (Pillow, in
    decoder threads; uint8 out) and :meth:`normalize` (one batched tensor op on
    the inference thread). Calling the preset does both.
    """

    def __init__(self, image_size: int, normalization: Normalization) -> None:
        self.image_size = image_size
        self.normalization = normalization
        self._resize = v2.Compose(
            [v2.Resize((image_size, image_size), antialias=True), v2.PILToTensor()]
        )
        self._normalize = v2.Compose(
            [
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=list(normalization.mean), std=list(normalization.std)),
            ]
        )

    def resize(self, img: Image.Image) -> torch.Tensor:
        """RGB uint8 tensor (3, size, size), squashed to the square without cropping."""
        return self._resize(_to_rgb(img))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (..., 3, size, size) -> normalised float32."""
        return self._normalize(images)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.normalize(self.resize(img))


class TrainPreset:
    """PIL image -> augmented, normalised tensor; augmentation suits the stage (module doc)."""

    def __init__(self, image_size: int, normalization: Normalization, stage: Stage) -> None:
        if stage == "quality":
            geometric = [
                v2.RandomResizedCrop(
                    (image_size, image_size), scale=(0.85, 1.0), ratio=(0.9, 1.1), antialias=True
                ),
                v2.RandomHorizontalFlip(),
            ]
            photometric: list[v2.Transform] = []
        else:
            geometric = [
                v2.RandomResizedCrop(
                    (image_size, image_size), scale=(0.6, 1.0), ratio=(0.75, 1.33), antialias=True
                ),
                v2.RandomHorizontalFlip(),
            ]
            photometric = [v2.ColorJitter(brightness=0.15, contrast=0.15, saturation=0.1)]
        self._transform = v2.Compose(
            [
                v2.PILToTensor(),
                *geometric,
                *photometric,
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(mean=list(normalization.mean), std=list(normalization.std)),
            ]
        )

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self._transform(_to_rgb(img))
