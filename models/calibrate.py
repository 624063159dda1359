"""Calibrated confidence and thresholds that mean something.

Raw softmax is over-confident. Temperature scaling (Guo et al., 2017) divides
the logits by one scalar ``T`` fitted on held-out data; it never changes which
class wins, only how sure the model says it is. The fit here is regularised (a
prior on ``log T``, so a few dozen images cannot drag it far) and bounded to
:data:`TEMPERATURE_BOUNDS`. Where the calibration images are too few, or every
one of them is classified correctly (then the likelihood keeps rising as ``T``
shrinks, and any finite fit would be an artefact of the bound), ``T`` stays 1 and
the fit says why.

A stage acts on an image only when the top class is one of its *target*
classes (the quality stage's reject classes; every feature class) and the
calibrated probability is at least the stage's threshold. For a target
precision ``P`` the chosen threshold is the lowest one at which

* at least :data:`MIN_ACTED` calibration images are acted on, and
* the exact one-sided 95 % lower bound of precision (Clopper–Pearson) on them
  is at least ``P``.

Because the bound grows with the count, a high target needs many images: even
with none wrong, 0.95 needs 59 and 0.99 needs 299 acted-on images. Where no
threshold qualifies, the threshold is 1.0, ``reached`` is false, ``why`` says
what was missing, and ``threshold = "auto"`` then makes the stage never act.

Coverage is the share of images whose top class is a target class that clear
the threshold (what gets acted on); recall is the share of images truly of the
target classes that are acted on correctly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gensift.models.stats import CONFIDENCE, Proportion, fewest_for_bound

#: thresholds shown in every report's precision / coverage table
TABLE_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)
DEFAULT_TARGET_PRECISION = {"quality": 0.99, "feature": 0.95}
#: no threshold is set from fewer acted-on calibration images than this, whatever the bound
MIN_ACTED = 20
#: below this many calibration images the temperature is not fitted
MIN_TEMPERATURE_IMAGES = 30
TEMPERATURE_BOUNDS = (0.25, 4.0)
#: standard deviation of the Gaussian prior on log T (centred on T = 1)
LOG_TEMPERATURE_PRIOR_SD = 1.0
THRESHOLD_METHOD = (
    f"lowest threshold with at least {MIN_ACTED} acted-on calibration images whose exact "
    f"one-sided {CONFIDENCE:.0%} lower bound of precision (Clopper-Pearson) reaches the target"
)


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    return float(F.cross_entropy(logits.double() / temperature, labels))


@dataclass(frozen=True)
class TemperatureFit:
    """The calibration temperature, how it was found and on how many images."""

    temperature: float
    fitted: bool
    count: int
    note: str

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "method": "temperature scaling, MAP with a N(0, 1) prior on log T, "
            f"bounded to [{TEMPERATURE_BOUNDS[0]}, {TEMPERATURE_BOUNDS[1]}]",
        }


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> TemperatureFit:
    """The regularised, bounded temperature for these held-out logits (T = 1 where unfounded)."""
    logits = logits.detach().double()
    count = len(labels)
    if count < MIN_TEMPERATURE_IMAGES:
        return TemperatureFit(
            1.0,
            False,
            count,
            f"kept T = 1: {count} calibration images, fewer than the "
            f"{MIN_TEMPERATURE_IMAGES} a temperature fit needs",
        )
    if bool((logits.argmax(1) == labels).all()):
        return TemperatureFit(
            1.0,
            False,
            count,
            f"kept T = 1: all {count} calibration images are classified correctly, so they "
            "say nothing about how sure the model should be",
        )

    def objective(log_t: float) -> float:
        total = float(F.cross_entropy(logits / math.exp(log_t), labels, reduction="sum"))
        return total + log_t**2 / (2 * LOG_TEMPERATURE_PRIOR_SD**2)

    low, high = (math.log(b) for b in TEMPERATURE_BOUNDS)
    from scipy import optimize  # here, not at import: it costs the daemon's start-up 0.7 s

    result = optimize.minimize_scalar(objective, bounds=(low, high), method="bounded")
    temperature = math.exp(float(result.x))
    if not math.isfinite(temperature) or objective(float(result.x)) > objective(0.0):
        return TemperatureFit(1.0, False, count, "kept T = 1: the fit did not improve on it")
    return TemperatureFit(
        temperature, True, count, f"fitted T = {temperature:.3f} on {count} calibration images"
    )


def calibrated_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits.float() / temperature, dim=1)


def _operating_point(
    conf: np.ndarray, pred: np.ndarray, labels: np.ndarray, targets: np.ndarray, t: float
) -> dict[str, Any]:
    candidates = np.isin(pred, targets)
    acted = candidates & (conf >= t)
    n_acted = int(acted.sum())
    n_correct = int((acted & (pred == labels)).sum())
    n_candidates = int(candidates.sum())
    n_true = int(np.isin(labels, targets).sum())
    precision = Proportion(n_correct, n_acted)
    return {
        "threshold": float(t),
        "precision": precision.value,
        "precision_lower": precision.lower,
        "count": n_acted,
        "correct": n_correct,
        "coverage": float(n_acted / n_candidates) if n_candidates else 0.0,
        "recall": float(n_correct / n_true) if n_true else 0.0,
    }


def _lowest_safe_threshold(
    conf: np.ndarray,
    pred: np.ndarray,
    labels: np.ndarray,
    targets: np.ndarray,
    target: float,
    min_count: int,
) -> float | None:
    """Lowest t acting on >= ``min_count`` images whose precision bound reaches ``target``."""
    mask = np.isin(pred, targets)
    order = np.argsort(-conf[mask], kind="stable")
    c = conf[mask][order]
    if not len(c):
        return None
    correct = np.cumsum((pred[mask] == labels[mask])[order])
    # a threshold at c[i] acts on every image with the same confidence: ties enter together
    ends = np.flatnonzero(np.r_[c[1:] != c[:-1], True])
    n = ends + 1
    k = correct[ends]
    from scipy import stats  # here, not at import: scipy.stats costs the daemon a second

    lower = np.where(k > 0, stats.beta.ppf(1.0 - CONFIDENCE, np.maximum(k, 1), n - k + 1), 0.0)
    ok = np.flatnonzero((n >= min_count) & (lower >= target))
    return float(c[ends[ok[-1]]]) if len(ok) else None


def _why_not(best: dict[str, Any], target: float, min_count: int, candidates: int) -> str:
    """Why no threshold reached ``target``; ``best`` is the table row with the highest bound."""
    if target >= 1.0:
        return "a target precision of 1.0 can never be shown by a bound"
    need = max(min_count, fewest_for_bound(target))
    if candidates < need:
        return (
            f"only {candidates} calibration images are predicted as these classes; a "
            f"{CONFIDENCE:.0%} bound of {target} needs at least {need}, all correct "
            "(more examples, or a lower --target-precision)"
        )
    return (
        f"at no threshold did the {CONFIDENCE:.0%} lower bound of precision reach {target} "
        f"(best at {best['threshold']:.3f}: bound {best['precision_lower']:.3f} "
        f"on {best['count']} images)"
    )


def operating_point(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    target_classes: Sequence[str],
    threshold: float,
) -> dict[str, Any]:
    """Precision (with its bound), count, coverage and recall of acting at ``threshold``."""
    targets = np.array([list(classes).index(c) for c in target_classes])
    return _operating_point(
        probs.max(axis=1), probs.argmax(axis=1), np.asarray(labels), targets, threshold
    )


def choose_threshold(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    target_classes: Sequence[str],
    target_precision: float,
    *,
    min_count: int = MIN_ACTED,
) -> dict[str, Any]:
    """The stage threshold for ``target_precision``, its table, and a per-class breakdown."""
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target precision must be in (0, 1], got {target_precision}")
    unknown = [c for c in target_classes if c not in classes]
    if unknown:
        raise ValueError(f"classes {unknown} are not among the model's classes {list(classes)}")
    conf = probs.max(axis=1)
    pred = probs.argmax(axis=1)
    labels = np.asarray(labels)

    def summary(targets: np.ndarray) -> dict[str, Any]:
        t = _lowest_safe_threshold(conf, pred, labels, targets, target_precision, min_count)
        reached = t is not None
        point = _operating_point(conf, pred, labels, targets, t if reached else 1.0)
        rows = sorted({*TABLE_THRESHOLDS, point["threshold"]})
        table = [_operating_point(conf, pred, labels, targets, r) for r in rows]
        entry = {**point, "reached": reached, "table": table}
        if not reached:
            counted = [r for r in table if r["count"] >= min_count] or table
            best = max(counted, key=lambda r: r["precision_lower"])
            entry["why"] = _why_not(
                best,
                target_precision,
                min_count,
                int(np.isin(pred, targets).sum()),
            )
        return entry

    target_idx = np.array([classes.index(c) for c in target_classes])
    return {
        "target_precision": target_precision,
        "target_classes": list(target_classes),
        "method": THRESHOLD_METHOD,
        "min_count": min_count,
        "confidence": CONFIDENCE,
        **summary(target_idx),
        "classes": {c: summary(np.array([classes.index(c)])) for c in target_classes},
    }
