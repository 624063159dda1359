from __future__ import annotations

import json
import struct
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gensift.models.backbones import build_classifier
from gensift.models.checkpoint import (
    CheckpointError,
    CheckpointMeta,
    load_classifier,
    read_checkpoint,
    save_checkpoint,
)
from gensift.models.presets import IMAGENET


def _meta(**overrides: object) -> CheckpointMeta:
    base = CheckpointMeta(
        stage="feature",
        arch="resnet18",
        classes=["red", "blue", "stripes"],
        image_size=32,
        normalization=IMAGENET,
        temperature=1.7,
        thresholds={"threshold": 0.8, "target_precision": 0.95, "target_classes": ["red"]},
        metrics={"val_accuracy": 0.9},
        data_fingerprint="abc",
    )
    return replace(base, **overrides)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, torch.nn.Module, CheckpointMeta]:
    torch.manual_seed(0)
    model = build_classifier("resnet18", 3, "none").eval()
    path = tmp_path / "feature.safetensors"
    meta = save_checkpoint(path, model.state_dict(), _meta())
    return path, model, meta


def _rewrite_metadata(path: Path, edit: dict[str, object]) -> None:
    """Change fields of the JSON metadata in place, keeping the file a valid safetensors file."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["gensift"])
    meta.update(edit)
    header["__metadata__"]["gensift"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def test_round_trip_gives_identical_outputs_and_metadata(saved) -> None:
    path, model, meta = saved
    loaded, loaded_meta = load_classifier(path, stage="feature")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded_meta == meta
    assert loaded_meta.classes == ["red", "blue", "stripes"]
    assert loaded_meta.normalization == IMAGENET
    assert loaded_meta.temperature == 1.7
    assert len(loaded_meta.id) == 12 and loaded_meta.created


def test_file_is_written_atomically_without_leftovers(saved) -> None:
    path, _, _ = saved
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_truncated_file_is_refused(saved) -> None:
    path, _, _ = saved
    data = path.read_bytes()
    for cut in (len(data) - 100, len(data) // 2, 200, 4):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=str(path.name)):
            read_checkpoint(path)


def test_tampered_tensor_is_refused(saved) -> None:
    path, _, _ = saved
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        read_checkpoint(path)


def test_tampered_metadata_is_refused(saved) -> None:
    path, _, _ = saved
    _rewrite_metadata(path, {"classes": ["red", "blue", "green"]})
    with pytest.raises(CheckpointError, match="checksum"):
        read_checkpoint(path)


def test_unknown_version_is_refused_with_advice(saved) -> None:
    path, _, _ = saved
    _rewrite_metadata(path, {"format_version": 99})
    with pytest.raises(CheckpointError, match=r"version 99.*upgrade"):
        read_checkpoint(path)


def test_wrong_stage_is_refused(saved) -> None:
    path, _, _ = saved
    with pytest.raises(CheckpointError, match="feature-stage checkpoint, but the quality"):
        read_checkpoint(path, stage="quality")


def test_non_checkpoints_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="not a gensift checkpoint"):
        read_checkpoint(plain)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        read_checkpoint(junk)
    with pytest.raises(CheckpointError, match="cannot read"):
        read_checkpoint(tmp_path / "missing.safetensors")


def test_unsafe_class_names_are_refused_at_load(tmp_path: Path) -> None:
    model = build_classifier("resnet18", 2, "none")
    path = tmp_path / "evil.safetensors"
    save_checkpoint(path, model.state_dict(), _meta(classes=["ok", "../../etc"]))
    with pytest.raises(CheckpointError, match="etc"):
        read_checkpoint(path)


def test_tensors_that_do_not_fit_the_architecture_are_refused(tmp_path: Path) -> None:
    model = build_classifier("resnet18", 2, "none")  # 2 outputs, metadata says 3 classes
    path = tmp_path / "mismatch.safetensors"
    save_checkpoint(path, model.state_dict(), _meta())
    with pytest.raises(CheckpointError, match="do not fit"):
        load_classifier(path)


def test_no_pickle_in_the_file(saved) -> None:
    path, _, _ = saved
    head = path.read_bytes()[:16]
    assert not head.startswith(b"\x80")  # pickle protocol marker
    assert not head.startswith(b"PK")  # torch.save's zip container
