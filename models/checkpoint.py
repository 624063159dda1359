"""The checkpoint format: one safetensors file, no pickle.

The file holds the model's tensors (``backbone.*``, ``head.*``, float32) and,
in the safetensors header, two string entries: ``format`` =
``gensift-checkpoint`` and ``gensift`` = the JSON metadata below. The metadata
carries a SHA-256 ``checksum`` over itself (without the checksum) and every
tensor's name, dtype, shape and bytes, so a truncated, edited or
tensor-swapped file is refused. The first 12 hex digits of the checksum are the
checkpoint's ``id``: every decision the daemon journals names it.

Files are written to a temporary name in the target folder, fsynced and
renamed into place, so a reader (the daemon's hot reload) never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from gensift.models.backbones import ARCHITECTURES, Classifier, build_classifier, tensor_bytes
from gensift.models.data import DatasetError, check_class_names
from gensift.models.errors import InputError
from gensift.models.fsutil import publish
from gensift.models.presets import STAGES, Normalization

FORMAT = "gensift-checkpoint"
FORMAT_VERSION = 1
#: the image sizes a checkpoint may declare
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 4096


class CheckpointError(InputError):
    """A checkpoint file cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class CheckpointMeta:
    stage: str
    arch: str
    classes: list[str]
    image_size: int
    normalization: Normalization
    temperature: float
    thresholds: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    data_fingerprint: str = ""
    backbone_digest: str = ""
    frozen_backbone: bool = False
    calibration: dict[str, Any] = field(default_factory=dict)  # method, counts, split
    created: str = ""
    format_version: int = FORMAT_VERSION
    checksum: str = ""

    @property
    def id(self) -> str:
        return self.checksum[:12]

    @property
    def threshold(self) -> float:
        """The stage threshold chosen at training (1.0 if the target was not reached)."""
        return float(self.thresholds.get("threshold", 1.0))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["normalization"] = {
            "mean": list(self.normalization.mean),
            "std": list(self.normalization.std),
        }
        return data


def _checksum(meta_json: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    body = {k: v for k, v in meta_json.items() if k != "checksum"}
    h.update(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"\n{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def save_checkpoint(
    path: Path, state: Mapping[str, torch.Tensor], meta: CheckpointMeta
) -> CheckpointMeta:
    """Write ``state`` and ``meta`` atomically to ``path``; returns the meta with its checksum."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    created = meta.created or datetime.now(UTC).isoformat(timespec="seconds")
    draft = replace(meta, created=created, format_version=FORMAT_VERSION, checksum="")
    meta_json = draft.to_json()
    checksum = _checksum(meta_json, tensors)
    meta_json["checksum"] = checksum
    payload = st_save(tensors, metadata={"format": FORMAT, "gensift": json.dumps(meta_json)})
    publish(Path(path), lambda tmp: tmp.write_bytes(payload))
    return replace(draft, checksum=checksum)


def _header_metadata(data: bytes, path: Path) -> dict[str, str]:
    if len(data) < 8:
        raise CheckpointError(f"{path}: not a checkpoint (file is {len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise CheckpointError(f"{path}: truncated or not a safetensors file")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a safetensors file (unreadable header)") from exc
    return header.get("__metadata__") or {}


def read_checkpoint(
    path: Path, *, stage: str | None = None
) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Read and validate a checkpoint; ``stage`` refuses a file of the other stage."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc.strerror or exc})") from exc
    header = _header_metadata(data, path)
    if header.get("format") != FORMAT or "gensift" not in header:
        raise CheckpointError(f"{path}: a safetensors file, but not a gensift checkpoint")
    try:
        raw = json.loads(header["gensift"])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is not valid JSON") from exc
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r}; this gensift reads version "
            f"{FORMAT_VERSION} (a newer gensift may have written it: upgrade, or retrain)"
        )
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: truncated or damaged tensor data ({exc})") from exc
    if raw.get("checksum") != _checksum(raw, tensors):
        raise CheckpointError(
            f"{path}: checksum mismatch; the file was modified or damaged after it was written"
        )
    meta = _validated_meta(raw, path)
    if stage is not None and meta.stage != stage:
        raise CheckpointError(
            f"{path}: a {meta.stage}-stage checkpoint, but the {stage} stage was asked for"
        )
    return tensors, meta


def _validated_meta(raw: dict[str, Any], path: Path) -> CheckpointMeta:
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: invalid checkpoint metadata: {what}")

    known = set(CheckpointMeta.__dataclass_fields__)
    if set(raw) - known:
        raise bad(f"unknown fields {sorted(set(raw) - known)}")
    if raw.get("stage") not in STAGES:
        raise bad(f"stage {raw.get('stage')!r} is not one of {', '.join(STAGES)}")
    if raw.get("arch") not in ARCHITECTURES:
        raise bad(f"unknown architecture {raw.get('arch')!r}")
    classes = raw.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise bad("classes must be a list of names")
    try:
        check_class_names(classes, f"{path}")
    except DatasetError as exc:
        raise CheckpointError(str(exc)) from exc
    size = raw.get("image_size")
    if not isinstance(size, int) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise bad(f"image_size {size!r} out of range")
    temperature = raw.get("temperature")
    if not isinstance(temperature, int | float) or not (
        math.isfinite(temperature) and temperature > 0
    ):
        raise bad(f"temperature {temperature!r} must be a positive number")
    thresholds = raw.get("thresholds")
    if not isinstance(thresholds, dict) or not 0 < thresholds.get("threshold", -1) <= 1:
        raise bad("thresholds must hold a stage threshold in (0, 1]")
    try:
        norm = Normalization.from_lists(raw["normalization"]["mean"], raw["normalization"]["std"])
    except (KeyError, TypeError, ValueError) as exc:
        raise bad(f"normalization ({exc})") from exc
    return CheckpointMeta(**{**raw, "normalization": norm})


def load_classifier(path: Path, *, stage: str | None = None) -> tuple[Classifier, CheckpointMeta]:
    """A ready-to-run model (eval mode, CPU) from a checkpoint file.

    The model is built on the meta device (shapes only) and takes the checkpoint's
    tensors as its own: building it for real would first draw random weights only to
    overwrite them, which takes seconds for a ResNet-50 on a small CPU, at every start,
    hot reload and reload after an idle unload.
    """
    tensors, meta = read_checkpoint(path, stage=stage)
    with torch.device("meta"):
        model = build_classifier(meta.arch, len(meta.classes), weights="none")
    shapes = model.state_dict()
    # each tensor in the dtype the model declares, as a copying load would make it
    tensors = {k: v.to(shapes[k].dtype) if k in shapes else v for k, v in tensors.items()}
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: tensors do not fit a {meta.arch} with {len(meta.classes)} classes "
            f"({str(exc).splitlines()[0]})"
        ) from exc
    left = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a tensor the architecture has but does not save: a gensift bug, not the file's
        raise RuntimeError(f"{meta.arch}: {', '.join(left[:3])} not in its state dict")
    return model.eval(), meta
