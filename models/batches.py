"""Labelled samples -> logits, in batches: the passes training and evaluation make.

Training's validation and calibration passes, its cached backbone features and
``evaluate`` read :class:`~gensift.models.data.Sample` lists through a DataLoader and the
eval preset, and run them through :func:`~gensift.models.predictor.forward`, the same
forward path ``sort`` and ``watch`` use. Kept apart from the predictor so that the runtime
does not load the training data code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from gensift.models.data import ImageDataset, Sample
from gensift.models.device import autocast_dtype
from gensift.models.predictor import forward
from gensift.models.presets import EvalPreset


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
    # no tqdm object at all unless shown: even a disabled one starts tqdm's monitor thread
    batches = tqdm(loader, desc=desc, leave=False) if show_progress else loader
    for images, targets in batches:
        outputs.append(forward(module, images, device, amp).cpu())
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
