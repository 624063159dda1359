from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from gensift.models.backbones import ARCHITECTURES, WeightsError, build_classifier


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_architecture_gets_a_fresh_head(arch: str) -> None:
    model = build_classifier(arch, 3, "none").eval()
    assert isinstance(model.head, torch.nn.Linear) and model.head.out_features == 3
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
        assert model.backbone(torch.randn(1, 3, 64, 64)).shape == (1, model.feature_dim)


def test_weights_from_a_file_for_offline_machines(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = torchvision.models.resnet18()
    state = reference.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "r18.safetensors"))
    torch.save(state, tmp_path / "r18.pth")

    for name in ("r18.safetensors", "r18.pth"):
        model = build_classifier("resnet18", 2, tmp_path / name)
        assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)


def test_unusable_weights_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no such file"):
        build_classifier("resnet18", 2, tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="not a readable weights file"):
        build_classifier("resnet18", 2, tmp_path / "junk.pth")
    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsError, match="does not fit"):
        build_classifier("resnet18", 2, tmp_path / "other.safetensors")


def test_pretrained_weights_that_cannot_be_downloaded_say_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An empty hub cache and a proxy on a closed local port: the download fails at once.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(WeightsError) as info:
        build_classifier("resnet18", 2, "imagenet")
    message = str(info.value)
    assert "--weights PATH" in message and "--weights none" in message
    assert str(tmp_path / "torch-home") in message  # where to put a downloaded copy
