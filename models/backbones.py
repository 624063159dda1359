"""Architectures, pretrained weights and classification heads.

Every model gensift trains or serves is a :class:`Classifier`: a torchvision
backbone whose own classifier layer is replaced by the identity (``backbone``,
images -> features) followed by a fresh linear ``head`` (features -> logits).
Checkpoint tensors are therefore named ``backbone.*`` and ``head.*``, which is
what lets two stages that share frozen backbone weights run it once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import torch
import torchvision
from torch import nn

from gensift.models.errors import InputError
from gensift.models.presets import IMAGENET, Normalization


class WeightsError(InputError):
    """Pretrained weights could not be obtained or do not fit the architecture."""


@dataclass(frozen=True)
class _Arch:
    """Where an architecture keeps its final linear layer."""

    replace_head: Callable[
        [nn.Module], int
    ]  # swaps the layer for Identity, returns its in_features


def _swap(container: nn.Module, attr: str | int) -> int:
    if isinstance(attr, int):
        layer = container[attr]  # type: ignore[index]
        container[attr] = nn.Identity()  # type: ignore[index]
    else:
        layer = getattr(container, attr)
        setattr(container, attr, nn.Identity())
    assert isinstance(layer, nn.Linear)
    return layer.in_features


ARCHITECTURES: Mapping[str, _Arch] = {
    "resnet50": _Arch(lambda m: _swap(m, "fc")),
    "resnet18": _Arch(lambda m: _swap(m, "fc")),
    "efficientnet_b0": _Arch(lambda m: _swap(m.classifier, 1)),
    "mobilenet_v3_large": _Arch(lambda m: _swap(m.classifier, 3)),
    "convnext_tiny": _Arch(lambda m: _swap(m.classifier, 2)),
}
DEFAULT_ARCH = "resnet50"


class Classifier(nn.Module):
    """``head(backbone(x))``; the backbone returns a flat feature vector per image."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_classifier(arch: str, num_classes: int, weights: str | Path = "none") -> Classifier:
    """A backbone of ``arch`` with a fresh head of ``num_classes`` outputs.

    ``weights``: ``"imagenet"`` (torchvision's pretrained weights, downloaded
    once into torch's hub cache), ``"none"`` (random initialisation) or the path
    of a torchvision state dict (``.safetensors``, or ``.pth``/``.pt`` read with
    ``weights_only=True``), for machines without internet.
    """
    if arch not in ARCHITECTURES:
        known = ", ".join(ARCHITECTURES)
        raise InputError(f"unknown architecture {arch!r}; choose one of {known}")
    if str(weights) == "imagenet":
        net = _pretrained(arch)
    else:
        net = torchvision.models.get_model(arch, weights=None)
        if str(weights) != "none":
            _load_weights_file(net, Path(weights), arch)
    feature_dim = ARCHITECTURES[arch].replace_head(net)
    return Classifier(net, feature_dim, num_classes)


def normalization_for(weights: str | Path) -> Normalization:
    """Input statistics for a backbone; torchvision's ImageNet models all share these."""
    del weights  # every supported source (imagenet, none, a torchvision file) uses ImageNet's
    return IMAGENET


def _pretrained(arch: str) -> nn.Module:
    try:
        return torchvision.models.get_model(arch, weights="DEFAULT")
    except (URLError, OSError, RuntimeError) as exc:
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise WeightsError(
            f"could not download torchvision's pretrained {arch} weights ({exc}). "
            f"On a machine without internet, download the file elsewhere and either put it in "
            f"{cache} or pass it with --weights PATH; or train from scratch with --weights none "
            f"(needs more data and epochs)."
        ) from exc


def _load_weights_file(net: nn.Module, path: Path, arch: str) -> None:
    if not path.is_file():
        raise WeightsError(f"--weights {path}: no such file (use imagenet, none or a file path)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"--weights {path}: not a readable weights file ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError) as exc:
        raise WeightsError(
            f"--weights {path}: does not fit torchvision's {arch} ({str(exc).splitlines()[0]})"
        ) from exc


def backbone_digest(state: Mapping[str, torch.Tensor]) -> str:
    """A short hash of the ``backbone.*`` tensors: equal digests mean a shareable backbone."""
    h = hashlib.sha256()
    for name in sorted(k for k in state if k.startswith("backbone.")):
        h.update(name.encode())
        h.update(tensor_bytes(state[name]))
    return h.hexdigest()[:16]


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw bytes of a tensor in its dtype, for hashing."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
