"""Choosing the device and the mixed-precision dtype, shared by training and inference."""

from __future__ import annotations

import re

import torch

from gensift.models.errors import InputError

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA (this process's local rank) if present, else MPS, else CPU.

    Raises ``InputError`` naming the device when it was asked for but is not there.
    """
    if not _DEVICE.match(spec):
        raise InputError(f"device {spec!r}: use auto, cpu, cuda, cuda:N or mps")
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {spec!r}: this torch build or machine has no CUDA GPU")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        elif device.index >= torch.cuda.device_count():
            raise InputError(f"device {spec!r}: only {torch.cuda.device_count()} GPU(s) visible")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {spec!r}: MPS is not available on this machine")
    return device


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32.

    ``auto`` is bf16 on CUDA GPUs that support it, fp16 on older ones, fp32 elsewhere.
    """
    if precision == "fp32" or device.type != "cuda":
        return None
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def precision_name(amp: torch.dtype | None) -> str:
    """How logs name an :func:`autocast_dtype`: ``bfloat16``, ``float16`` or ``fp32``."""
    return str(amp).removeprefix("torch.") if amp else "fp32"
