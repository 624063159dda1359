"""The only image preprocessing in gensift.

Training, calibration, evaluation, ``sort`` and ``watch`` all turn images into
tensors through the two presets here, so the normalisation a checkpoint was
trained with is the normalisation it is served with (the scripts gensift
replaces scaled by 1/255 for a backbone that expected ImageNet statistics).

Files become pixels in :mod:`pixels` (``open_rgb``, re-exported here). Images are
resized to a square of ``image_size`` without cropping: a defect or
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
from typing import Literal

import torch
from PIL import Image
from torchvision.transforms import v2

from gensift.models.pixels import open_rgb as open_rgb  # re-exported: callers read it here
from gensift.models.pixels import to_rgb

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
        return self._resize(to_rgb(img))

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
        return self._transform(to_rgb(img))
