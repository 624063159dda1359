"""Compiled forward passes: ``torch.compile`` (inductor, frozen weights) for ``sort`` and ``watch``.

Why: on a CPU the model, not decoding or the journal, sets gensift's pace, and batching
cannot beat a model that already keeps every core busy. A faster execution of the same
model can: inductor with ``freezing`` folds BatchNorm into the convolutions, prepacks the
weights for oneDNN and fuses the element-wise tails, so ResNet-50 runs faster on the same
cores (22 against 13 images/s at batch 16 on two cores), after a compile of 15 s or more
a model, paid again by every process: inductor's on-disk cache refuses a graph holding
oneDNN's prepacked weights ("mkldnn tensors unpickleable"), and without prepacking the
cached graph ran only 17 images/s.

Shapes are **static**: a graph compiled for a batch of 16 is fast for 16 and is compiled
again for any other size (a dynamic-shape graph is slower on the CPU and, measured here,
still compiled again for a batch of one). :class:`PaddedModule` therefore serves a few
fixed batch sizes, chosen at load, and pads a smaller batch with zeros up to the next one
(the padding rows are dropped from the output; each image is computed on its own, so they
change nothing). ``sort`` compiles only ``inference.batch_size``; ``watch`` also one image,
so a lone file is not run as a batch of 16.

A compiled model must give the probabilities the thresholds were calibrated on:
:meth:`~gensift.models.predictor.Predictor.compiled` compares the compiled cascade with the
eager one on a probe batch (:func:`probe_images`, :func:`largest_difference`) and keeps the
eager models, with a warning, when any probability differs by more than
:data:`TOLERANCE` or the compile fails (no C++ compiler, an operator inductor cannot
handle, a torch without inductor for this platform).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

import torch
from torch import nn

#: Largest difference in any calibrated probability between compiled and eager models.
TOLERANCE = 1e-3


def compiling() -> AbstractContextManager[object]:
    """inductor's settings for the compiles that run inside: weights frozen as constants, so
    BatchNorm folds into the convolutions and oneDNN prepacks them (1.7-1.9x eager for
    ResNet-50 on two cores, against 1.03x without). A module compiles at its first call for
    each shape, so those calls go inside. (``torch.compile(options={"freezing": True})``
    was measured to leave the weights unfrozen; the config patch does freeze them.)"""
    import torch._inductor.config as inductor_config

    return inductor_config.patch(freezing=True)


class PaddedModule(nn.Module):
    """``module`` compiled for the batch sizes ``sizes``; other batches are padded or split.

    A batch of ``n`` images runs as the smallest compiled size of at least ``n`` (zeros
    fill the rest; their outputs are dropped), or in chunks of the largest size.
    """

    def __init__(self, module: nn.Module, sizes: Sequence[int]) -> None:
        super().__init__()
        if not sizes or min(sizes) < 1:
            raise ValueError("PaddedModule needs at least one batch size of 1 or more")
        self.sizes = tuple(sorted(set(sizes)))
        self.compiled = torch.compile(module, dynamic=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        largest = self.sizes[-1]
        if len(images) > largest:
            return torch.cat([self(chunk) for chunk in images.split(largest)])
        n = len(images)
        size = next(s for s in self.sizes if s >= n)
        if size > n:
            pad = images.new_zeros((size - n, *images.shape[1:]))
            images = torch.cat([images, pad]).contiguous(memory_format=_layout(images))
        return self.compiled(images)[:n]


def _layout(images: torch.Tensor) -> torch.memory_format:
    is_nhwc = images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if is_nhwc else torch.contiguous_format


def probe_images(size: int, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` uint8 RGB images (count, 3, size, size) to compare two models on: smooth
    gradients with noise, so activations span a realistic range, the same on every run."""
    generator = torch.Generator().manual_seed(seed)
    axis = torch.linspace(0, 1, size)
    ramp = axis[None, :] + axis[:, None]  # (size, size)
    colours = torch.rand(count, 3, 1, 1, generator=generator)
    images = 255 * (0.2 + 0.6 * colours * ramp / 2)
    images = images + 25 * torch.randn(count, 3, size, size, generator=generator)
    return images.clamp(0, 255).to(torch.uint8)


def largest_difference(
    a: Sequence[dict[str, dict[str, float]]], b: Sequence[dict[str, dict[str, float]]]
) -> float:
    """The largest difference between two cascades' probabilities for the same images
    (infinite when they did not run the same stages)."""
    worst = 0.0
    for left, right in zip(a, b, strict=True):
        if left.keys() != right.keys():
            return float("inf")
        for stage, probs in left.items():
            for name, p in probs.items():
                worst = max(worst, abs(p - right[stage][name]))
    return worst
