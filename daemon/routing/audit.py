"""Live precision: how often gensift's automatic moves were right, as audited by a person.

The review page's *audit* queue is a random sample of recent automatic moves into class
folders; each answer there is a label event with source ``audit``. For each class, the
audited moves into it and how many of them the person confirmed (Enter, or that class's
key) make a :class:`~gensift.models.stats.Proportion`: a quarantine (X) or another
class counts against it. Because the sample is random, this estimates the precision the
daemon really has on the user's images, which validation on training-time data cannot.

It is shown with an exact two-sided 95 % interval and the number audited; a class is
flagged as *below target* only when the one-sided 95 % upper bound is under the target
precision (the evidence says so, not one unlucky answer). The target is the one the live
feature checkpoint was trained for (its metadata), else 0.95.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gensift.daemon.routing.journal import Entry, Journal, Label, in_force
from gensift.models.stats import Proportion, clopper_pearson_lower

#: the feature stage's target precision where the checkpoint does not say
DEFAULT_FEATURE_TARGET = 0.95


@dataclass(frozen=True)
class LivePrecision:
    label: str
    audited: Proportion  # confirmed of audited
    target: float

    @property
    def interval(self) -> tuple[float, float]:
        """The exact two-sided 95 % interval (Clopper-Pearson)."""
        s, n = self.audited.successes, self.audited.count
        if not n:
            return 0.0, 1.0
        return clopper_pearson_lower(s, n, 0.975), 1.0 - clopper_pearson_lower(n - s, n, 0.975)

    @property
    def below_target(self) -> bool:
        """95 % sure the precision is under the target."""
        return self.audited.count > 0 and self.audited.upper < self.target

    def describe(self) -> str:
        s, n = self.audited.successes, self.audited.count
        lo, hi = self.interval
        text = f"{self.label}: {s}/{n} audited moves right, precision {s / n:.3f} "
        text += f"(95 % interval {lo:.3f}-{hi:.3f}; target {self.target:.2f})"
        return text + (" BELOW TARGET" if self.below_target else "")

    def to_json(self) -> dict[str, Any]:
        lo, hi = self.interval
        return {
            "class": self.label,
            "audited": self.audited.count,
            "right": self.audited.successes,
            "precision": self.audited.value,
            "interval95": [lo, hi],
            "target": self.target,
            "below_target": self.below_target,
        }


def live_precision(journal: Journal, target: float = DEFAULT_FEATURE_TARGET) -> list[LivePrecision]:
    """Per class, the audited automatic moves into it and how many were right."""
    right: dict[str, int] = {}
    audited: dict[str, int] = {}
    for event, move in audited_moves(journal, journal.labels()):
        predicted = move.label or ""
        audited[predicted] = audited.get(predicted, 0) + 1
        if event.stage == "feature" and event.label == predicted:
            right[predicted] = right.get(predicted, 0) + 1
    return [
        LivePrecision(label, Proportion(right.get(label, 0), n), target)
        for label, n in sorted(audited.items())
    ]


def audited_moves(journal: Journal, events: Iterable[Label]) -> list[tuple[Label, Entry]]:
    """Each file's standing audit answer, with the automatic move it answered."""
    latest: dict[str, Label] = {}
    for event in in_force(events):  # oldest first: the newest answer stands
        if event.source == "audit":
            latest[event.sha256] = event
    pairs = []
    for event in latest.values():
        move = journal.automatic_move(event.entry) if event.entry is not None else None
        if move is not None:
            pairs.append((event, move))
    return pairs


def recorded_target(checkpoint: Path | None) -> float:
    """The target precision the checkpoint's thresholds were chosen for (no torch needed)."""
    if checkpoint is None:
        return DEFAULT_FEATURE_TARGET
    try:
        with checkpoint.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                return DEFAULT_FEATURE_TARGET
            header = json.loads(f.read(n))
        meta = json.loads(header["__metadata__"]["gensift"])
        return float(meta["thresholds"]["target_precision"])
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return DEFAULT_FEATURE_TARGET
