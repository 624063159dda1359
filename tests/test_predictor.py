"""The cascade predictor: calibrated probabilities, shared backbone, feature only where kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import draw

from gensift.models.checkpoint import load_classifier
from gensift.models.predictor import Predictor


def _batch(predictor: Predictor, n: int = 6) -> dict:
    rng = np.random.default_rng(3)
    images = [draw(kind, rng) for kind in ["keep", "reject", "red", "blue", "stripes", "keep"][:n]]
    return {
        key: preset.normalize(torch.stack([preset.resize(img) for img in images]))
        for key, preset in predictor.presets.items()
    }, images


def test_frozen_stages_on_one_backbone_share_it_and_give_the_same_answers(
    frozen_pair: tuple[Path, Path],
) -> None:
    quality, feature = frozen_pair
    checkpoints = {"quality": quality, "feature": feature}
    shared = Predictor.load(checkpoints, device="cpu")
    separate = Predictor.load(checkpoints, device="cpu", share_backbone=False)
    assert shared.shared_backbone and not separate.shared_backbone
    assert "shared backbone" in shared.describe()

    inputs, _ = _batch(shared)
    a = shared.predict(inputs, lambda probs: True)
    b = separate.predict(inputs, lambda probs: True)
    for x, y in zip(a, b, strict=True):
        for stage in ("quality", "feature"):
            assert x[stage].keys() == y[stage].keys()
            assert np.allclose(list(x[stage].values()), list(y[stage].values()), atol=1e-5)


def test_probabilities_are_the_calibrated_softmax_of_the_checkpoint(
    frozen_pair: tuple[Path, Path],
) -> None:
    _, feature = frozen_pair
    predictor = Predictor.load({"feature": feature}, device="cpu")
    inputs, images = _batch(predictor)
    got = predictor.predict(inputs, lambda probs: True)

    model, meta = load_classifier(feature)
    preset = next(iter(predictor.presets.values()))
    with torch.no_grad():
        logits = model(torch.stack([preset(img) for img in images]))
    expected = torch.softmax(logits / meta.temperature, dim=1).numpy()
    for row, want in zip(got, expected, strict=True):
        assert "quality" not in row
        assert list(row["feature"]) == meta.classes
        assert np.allclose(list(row["feature"].values()), want, atol=1e-5)
        assert sum(row["feature"].values()) == pytest.approx(1.0, abs=1e-5)


def test_feature_stage_runs_only_on_images_quality_let_through(
    frozen_pair: tuple[Path, Path], trained_quality: Path
) -> None:
    _, feature = frozen_pair
    # a fine-tuned quality stage and a frozen feature stage: two full models
    predictor = Predictor.load({"quality": trained_quality, "feature": feature}, device="cpu")
    assert not predictor.shared_backbone
    inputs, _ = _batch(predictor)
    culled_first = iter([False, True, False, True, True, True])
    results = predictor.predict(inputs, lambda probs: next(culled_first))
    assert ["feature" in r for r in results] == [False, True, False, True, True, True]
    assert all("quality" in r for r in results)
    nothing = predictor.predict(inputs, lambda probs: False)
    assert all("feature" not in r for r in nothing)


def test_bf16_runs_on_the_cpu_only_when_asked_and_gives_the_fp32_answers(
    frozen_pair: tuple[Path, Path], trained_quality: Path
) -> None:
    checkpoints = {"quality": trained_quality, "feature": frozen_pair[1]}
    exact = Predictor.load(checkpoints, device="cpu")  # precision auto: fp32 on the CPU
    fast = Predictor.load(checkpoints, device="cpu", precision="bf16")
    assert exact.amp is None and "cpu fp32" in exact.describe()
    assert fast.amp is torch.bfloat16 and "cpu bfloat16" in fast.describe()

    inputs, _ = _batch(exact)
    a = exact.predict(inputs, lambda probs: True)
    b = fast.predict(inputs, lambda probs: True)
    gaps = [
        abs(x[stage][c] - y[stage][c])
        for x, y in zip(a, b, strict=True)
        for stage in ("quality", "feature")
        for c in x[stage]
    ]
    assert max(gaps) <= 0.05, gaps  # the tolerance test_cuda.py allows bf16 on a GPU
    assert max(gaps) > 0, "bf16 gave fp32's exact answers: it did not run in bf16"


def test_a_precision_the_device_cannot_use_runs_fp32_and_says_so(
    trained_quality: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    predictor = Predictor.load({"quality": trained_quality}, device="cpu", precision="fp16")
    assert predictor.amp is None
    assert "precision fp16 is not used on cpu: running fp32" in capsys.readouterr().err

    # bf16 on a CPU without bf16 instructions still runs (correctly, slowly), with a warning
    monkeypatch.setattr("gensift.models.device.cpu_has_bf16", lambda: False)
    predictor = Predictor.load({"quality": trained_quality}, device="cpu", precision="bf16")
    assert predictor.amp is torch.bfloat16
    assert "this CPU has no bf16 instructions" in capsys.readouterr().err

    Predictor.load({"quality": trained_quality}, device="cpu", precision="fp32")
    assert "precision" not in capsys.readouterr().err
