"""Calibrated confidence and thresholds that mean something.

Raw softmax is over-confident. Temperature scaling (Guo et al., 2017) divides
the logits by one scalar ``T`` fitted on held-out data to minimise the negative
log-likelihood; it never changes which class wins, only how sure the model says
it is.

A stage then acts on an image only when the top class is one of its *target*
classes (the quality stage's reject classes; every feature class) and the
calibrated probability is at least the stage's threshold. For a target
precision ``P`` the chosen threshold is the lowest one from which precision on
validation data stays at or above ``P`` for every higher threshold too, so a
lucky dip in a non-monotone curve is never picked. Where no threshold reaches
``P`` the threshold is 1.0: the stage then only acts on saturated certainty and
the report says the target was not reached.

Coverage is the share of images whose top class is a target class that clear
the threshold (what gets acted on); recall is the share of images truly of the
target classes that are acted on correctly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: thresholds shown in every report's precision / coverage table
TABLE_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)
DEFAULT_TARGET_PRECISION = {"quality": 0.99, "feature": 0.95}


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    return float(F.cross_entropy(logits.double() / temperature, labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature minimising validation NLL; never one that raises it above T=1."""
    logits = logits.detach().double()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp().clamp(0.05, 20.0))
    if not math.isfinite(temperature) or nll(logits, labels, temperature) > nll(logits, labels):
        return 1.0
    return temperature


def calibrated_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(logits.float() / temperature, dim=1)


def _operating_point(
    conf: np.ndarray, pred: np.ndarray, labels: np.ndarray, targets: np.ndarray, t: float
) -> dict[str, Any]:
    candidates = np.isin(pred, targets)
    acted = candidates & (conf >= t)
    correct = acted & (pred == labels)
    n_acted = int(acted.sum())
    n_candidates = int(candidates.sum())
    n_true = int(np.isin(labels, targets).sum())
    return {
        "threshold": float(t),
        "precision": float(correct.sum() / n_acted) if n_acted else None,
        "coverage": float(n_acted / n_candidates) if n_candidates else 0.0,
        "recall": float(correct.sum() / n_true) if n_true else 0.0,
        "count": n_acted,
    }


def _lowest_safe_threshold(
    conf: np.ndarray, pred: np.ndarray, labels: np.ndarray, targets: np.ndarray, target: float
) -> float | None:
    """Lowest t with precision >= target at t and at every higher candidate threshold."""
    mask = np.isin(pred, targets)
    order = np.argsort(-conf[mask], kind="stable")
    c = conf[mask][order]
    ok = (pred[mask] == labels[mask])[order]
    chosen = None
    correct = 0
    i = 0
    while i < len(c):
        j = i
        while j < len(c) and c[j] == c[i]:  # ties enter together
            correct += int(ok[j])
            j += 1
        if correct / j < target:
            break
        chosen = float(c[i])
        i = j
    return chosen


def operating_point(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    target_classes: Sequence[str],
    threshold: float,
) -> dict[str, Any]:
    """Precision, coverage, recall and count of acting at ``threshold`` on these probabilities."""
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
        t = _lowest_safe_threshold(conf, pred, labels, targets, target_precision)
        reached = t is not None
        point = _operating_point(conf, pred, labels, targets, t if reached else 1.0)
        rows = sorted({*TABLE_THRESHOLDS, point["threshold"]})
        return {
            **point,
            "reached": reached,
            "table": [_operating_point(conf, pred, labels, targets, r) for r in rows],
        }

    target_idx = np.array([classes.index(c) for c in target_classes])
    return {
        "target_precision": target_precision,
        "target_classes": list(target_classes),
        **summary(target_idx),
        "classes": {c: summary(np.array([classes.index(c)])) for c in target_classes},
    }
