from __future__ import annotations

import numpy as np
import pytest
import torch

from gensift.models.calibrate import (
    calibrated_probs,
    choose_threshold,
    fit_temperature,
    nll,
    operating_point,
)


def _overconfident_logits(n: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a 3-class model that is right ~75 % of the time but scaled to look certain."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    logits = torch.randn(n, 3, generator=g)
    logits[torch.arange(n), labels] += 1.5
    return logits * 4.0, labels


def test_temperature_scaling_lowers_nll_of_an_overconfident_model() -> None:
    logits, labels = _overconfident_logits()
    t = fit_temperature(logits, labels)
    assert t > 1.5  # it recognised the over-confidence
    assert nll(logits, labels, t) < nll(logits, labels)


def test_temperature_scaling_never_raises_nll() -> None:
    for seed in range(5):
        # Under-confident and near-calibrated models too.
        logits, labels = _overconfident_logits(seed=seed)
        for scale in (0.1, 0.25, 1.0):
            scaled = logits * scale
            t = fit_temperature(scaled, labels)
            assert nll(scaled, labels, t) <= nll(scaled, labels) + 1e-9


def test_temperature_does_not_change_the_predicted_class() -> None:
    logits, labels = _overconfident_logits()
    t = fit_temperature(logits, labels)
    assert torch.equal(calibrated_probs(logits, t).argmax(1), logits.argmax(1))


def test_chosen_threshold_meets_the_target_precision_on_its_data() -> None:
    logits, labels = _overconfident_logits(n=2000)
    probs = calibrated_probs(logits, fit_temperature(logits, labels)).numpy()
    classes = ["a", "b", "c"]
    for target in (0.8, 0.9, 0.95):
        result = choose_threshold(probs, labels.numpy(), classes, classes, target)
        assert result["reached"]
        # At the chosen threshold and every higher one in the table, precision holds.
        assert result["precision"] >= target
        for row in result["table"]:
            if row["threshold"] >= result["threshold"] and row["count"]:
                assert row["precision"] >= target
        # It is the lowest such threshold: at the next lower confidence, precision falls short.
        conf = probs.max(axis=1)
        below = float(conf[conf < result["threshold"]].max())
        lower = operating_point(probs, labels.numpy(), classes, classes, below)
        assert lower["precision"] < target


def test_thresholds_for_reject_classes_only() -> None:
    # 'reject' predictions are all right above 0.7; 'keep' predictions are noisy.
    probs = np.array([[0.1, 0.9], [0.2, 0.8], [0.25, 0.75], [0.4, 0.6], [0.9, 0.1], [0.8, 0.2]])
    labels = np.array([1, 1, 1, 0, 1, 0])
    result = choose_threshold(probs, labels, ["keep", "reject"], ["reject"], 0.99)
    assert result["reached"]
    assert result["threshold"] == pytest.approx(0.75)
    assert result["precision"] == 1.0
    assert result["coverage"] == pytest.approx(3 / 4)  # 3 of 4 reject predictions acted on
    assert result["recall"] == pytest.approx(3 / 4)  # 3 of 4 true rejects caught
    assert set(result["classes"]) == {"reject"}


def test_unreachable_target_means_the_stage_does_not_act() -> None:
    probs = np.array([[0.05, 0.95], [0.1, 0.9]])
    labels = np.array([0, 1])  # the most confident prediction is wrong
    result = choose_threshold(probs, labels, ["keep", "reject"], ["reject"], 0.99)
    assert not result["reached"]
    assert result["threshold"] == 1.0
    assert result["count"] == 0


def test_target_precision_and_classes_are_validated() -> None:
    probs = np.array([[0.5, 0.5]])
    with pytest.raises(ValueError, match="target precision"):
        choose_threshold(probs, np.array([0]), ["a", "b"], ["a"], 1.5)
    with pytest.raises(ValueError, match="not among"):
        choose_threshold(probs, np.array([0]), ["a", "b"], ["z"], 0.9)
