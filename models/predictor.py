"""Batched inference through the eval preset.

This is where training's final validation pass, ``evaluate`` and (from the
cascade issue on) ``sort`` and ``watch`` turn images into logits, so there is
one forward path for all of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from gensift.models.data import ImageDataset, Sample
from gensift.models.device import autocast_dtype
from gensift.models.presets import EvalPreset


def prepare_for_inference(model: nn.Module, device: torch.device) -> nn.Module:
    """Move to ``device`` in eval mode; channels_last on CUDA, where it is faster."""
    model = model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


@torch.no_grad()  # not inference_mode: cached features later feed autograd
def forward_batches(
    module: nn.Module,
    loader: DataLoader,
    device: torch.device,
    *,
    desc: str = "",
    show_progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``module`` in eval mode over ``loader``'s (images, labels); (outputs, labels) on CPU.

    Training callers switch back with ``module.train()`` at the start of each epoch.
    """
    module.eval()
    amp = autocast_dtype(device)
    outputs, labels = [], []
    for images, targets in tqdm(loader, desc=desc, leave=False, disable=not show_progress):
        images = images.to(device, non_blocking=True)
        if device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            out = module(images)
        outputs.append(out.float().cpu())
        labels.append(targets)
    if not outputs:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(outputs), torch.cat(labels)


def eval_loader(
    samples: Sequence[Sample],
    preset: EvalPreset,
    batch_size: int,
    workers: int,
    device: torch.device,
) -> DataLoader:
    """Images in order, through the eval preset."""
    return DataLoader(
        ImageDataset(samples, preset, preset.image_size),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
