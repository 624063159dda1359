"""Choosing the device and the mixed-precision dtype, shared by training and inference."""

from __future__ import annotations

import platform
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

    ``auto`` is bf16 on CUDA GPUs that support it, fp16 on older ones, fp32 elsewhere:
    the CPU stays exact unless asked. An explicit ``bf16`` also runs on the CPU, where a
    processor with bf16 instructions (AVX512-BF16, AMX, Arm BF16) runs it about twice
    as fast as fp32; ``fp16`` there, and any reduced precision on MPS, runs fp32
    (:func:`precision_warning` says so).
    """
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
            return torch.bfloat16
        return torch.float16
    if device.type == "cpu" and precision == "bf16":
        return torch.bfloat16
    return None


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions: AVX512-BF16 or AMX on x86, BF16 on Arm.

    False when torch cannot tell. On x86 oneDNN's own check is not used: it says yes for
    any AVX-512 CPU, where bf16 is emulated and slower than fp32.
    """
    try:
        if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
            cpu = torch.cpu
            return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def precision_warning(device: torch.device, precision: str) -> str | None:
    """Why ``precision`` on ``device`` is not what a user asking for it would get, or None."""
    amp = autocast_dtype(device, precision)
    if precision in ("fp16", "bf16") and amp is None:
        faster = " (this CPU runs bf16 faster)" if device.type == "cpu" and cpu_has_bf16() else ""
        return f"inference.precision {precision} is not used on {device.type}: running fp32{faster}"
    if device.type == "cpu" and amp is torch.bfloat16 and not cpu_has_bf16():
        return (
            "inference.precision bf16: this CPU has no bf16 instructions, so bf16 runs "
            'slower than fp32 here; set inference.precision = "fp32"'
        )
    return None


def precision_name(amp: torch.dtype | None) -> str:
    """How logs name an :func:`autocast_dtype`: ``bfloat16``, ``float16`` or ``fp32``."""
    return str(amp).removeprefix("torch.") if amp else "fp32"
