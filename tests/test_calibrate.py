from __future__ import annotations

import numpy as np
import pytest
import torch

from gensift.models.calibrate import (
    MIN_ACTED,
    TEMPERATURE_BOUNDS,
    calibrated_probs,
    choose_threshold,
    fit_temperature,
    nll,
    operating_point,
)
from gensift.models.stats import clopper_pearson_lower


def _overconfident_logits(n: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a 3-class model that is right ~75 % of the time but scaled to look certain."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    logits = torch.randn(n, 3, generator=g)
    logits[torch.arange(n), labels] += 1.5
    return logits * 4.0, labels


def test_temperature_scaling_lowers_nll_of_an_overconfident_model() -> None:
    logits, labels = _overconfident_logits()
    fit = fit_temperature(logits, labels)
    assert fit.fitted and fit.count == 600
    assert fit.temperature > 1.5  # it recognised the over-confidence
    assert nll(logits, labels, fit.temperature) < nll(logits, labels)


def test_temperature_scaling_never_raises_nll() -> None:
    for seed in range(5):
        # Under-confident and near-calibrated models too.
        logits, labels = _overconfident_logits(seed=seed)
        for scale in (0.1, 0.25, 1.0):
            scaled = logits * scale
            t = fit_temperature(scaled, labels).temperature
            assert TEMPERATURE_BOUNDS[0] <= t <= TEMPERATURE_BOUNDS[1]
            assert nll(scaled, labels, t) <= nll(scaled, labels) + 1e-9


def test_temperature_does_not_change_the_predicted_class() -> None:
    logits, labels = _overconfident_logits()
    t = fit_temperature(logits, labels).temperature
    assert torch.equal(calibrated_probs(logits, t).argmax(1), logits.argmax(1))


def test_temperature_stays_1_on_a_perfectly_separated_set() -> None:
    # every image right: the likelihood would keep rising as T -> 0, and a fit would
    # only find the bound. This is what gave T = 0.056 from six images.
    logits, labels = _overconfident_logits(n=200)
    logits[torch.arange(200), labels] += 20.0
    fit = fit_temperature(logits, labels)
    assert fit.temperature == 1.0 and not fit.fitted
    assert "classified correctly" in fit.note


def test_temperature_stays_1_on_too_few_images() -> None:
    logits, labels = _overconfident_logits(n=12)
    fit = fit_temperature(logits, labels)
    assert fit.temperature == 1.0 and not fit.fitted
    assert "12 calibration images" in fit.note


def test_temperature_fit_is_bounded_and_regularised() -> None:
    # 40 images, two wrong by a mile: unregularised, the fit runs far towards the bound
    logits, labels = _overconfident_logits(n=40, seed=3)
    logits = logits * 50.0
    fit = fit_temperature(logits, labels)
    assert fit.fitted
    assert TEMPERATURE_BOUNDS[0] <= fit.temperature <= TEMPERATURE_BOUNDS[1]


def test_chosen_threshold_meets_the_target_precision_on_its_data() -> None:
    logits, labels = _overconfident_logits(n=2000)
    probs = calibrated_probs(logits, fit_temperature(logits, labels).temperature).numpy()
    classes = ["a", "b", "c"]
    for target in (0.8, 0.9, 0.95):
        result = choose_threshold(probs, labels.numpy(), classes, classes, target)
        assert result["reached"]
        # The bound, not the point estimate, reaches the target, on enough images.
        assert result["precision_lower"] >= target
        assert result["precision"] > result["precision_lower"]
        assert result["count"] >= MIN_ACTED
        bound = clopper_pearson_lower(result["correct"], result["count"])
        assert result["precision_lower"] == pytest.approx(bound)
        # It is the lowest such threshold: one confidence lower, the bound falls short.
        conf = probs.max(axis=1)
        below = float(conf[conf < result["threshold"]].max())
        lower = operating_point(probs, labels.numpy(), classes, classes, below)
        assert lower["precision_lower"] < target


def test_three_separable_images_give_no_threshold() -> None:
    probs = np.array([[0.001, 0.999], [0.002, 0.998], [0.99, 0.01]])
    labels = np.array([1, 1, 0])
    result = choose_threshold(probs, labels, ["keep", "reject"], ["reject"], 0.99)
    assert not result["reached"]
    assert result["threshold"] == 1.0
    assert "2 calibration images" in result["why"] and "299" in result["why"]
    # the table still shows what there is, with the count and the bound beside it
    row = next(r for r in result["table"] if r["threshold"] == 0.9)
    assert (row["count"], row["precision"]) == (2, 1.0)
    assert row["precision_lower"] < 0.25


def test_a_point_estimate_above_target_is_not_enough() -> None:
    # 30 of 30 right: precision 1.0, but the bound is 0.905 < 0.95
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.96, 1.0, 30)
    probs = np.stack([1 - conf, conf], axis=1)
    result = choose_threshold(probs, np.ones(30, dtype=int), ["keep", "reject"], ["reject"], 0.95)
    assert not result["reached"]
    # 60 of 60 right is enough for 0.95
    conf = rng.uniform(0.96, 1.0, 60)
    probs = np.stack([1 - conf, conf], axis=1)
    result = choose_threshold(probs, np.ones(60, dtype=int), ["keep", "reject"], ["reject"], 0.95)
    assert result["reached"] and result["count"] == 60


def test_thresholds_for_reject_classes_only() -> None:
    # 'reject' predictions are all right above 0.7 (3 of 3: bound 0.37), not below (3 of 4:
    # bound 0.25); 'keep' predictions are noisy.
    probs = np.array([[0.1, 0.9], [0.2, 0.8], [0.25, 0.75], [0.4, 0.6], [0.9, 0.1], [0.8, 0.2]])
    labels = np.array([1, 1, 1, 0, 1, 0])
    result = choose_threshold(probs, labels, ["keep", "reject"], ["reject"], 0.3, min_count=1)
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
