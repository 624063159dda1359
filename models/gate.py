"""The publish gate: is a newly trained candidate good enough to replace what serves now?

Both questions are asked of the calibration images, which neither training nor the
choice of epoch saw (``data.group_split``):

1. **Better than chance**, by a margin these images can show: an exact one-sided
   binomial test of the candidate's accuracy against the majority-class rate (what a
   model that always answers the commonest class gets), at the 5 % level.
2. **Not worse than the live checkpoint** (when one with the same classes serves at the
   destination), beyond noise: an exact one-sided McNemar test on the images where
   the two disagree, at the 5 % level.

The verdict also counts how the decisions on these images would change (acted on ->
left alone, class A -> class B), each model at its own temperature and threshold.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gensift.models.stats import CONFIDENCE, Proportion, better_than_rate, worse_than_paired

LEVEL = 1.0 - CONFIDENCE
LEFT = "left alone"


@dataclass(frozen=True)
class Judged:
    """One model's calibrated probabilities on the gate's images, and its acting threshold."""

    probs: np.ndarray
    threshold: float | None  # None: the model never acts (its target was not reached)
    id: str = ""

    def decisions(self, classes: Sequence[str], targets: Sequence[str]) -> list[str]:
        """Per image, the class acted on, or :data:`LEFT`."""
        top = self.probs.argmax(axis=1)
        conf = self.probs.max(axis=1)
        out = []
        for label, p in zip(top, conf, strict=True):
            name = classes[int(label)]
            acts = self.threshold is not None and name in targets and p >= self.threshold
            out.append(name if acts else LEFT)
        return out


@dataclass(frozen=True)
class Verdict:
    passed: bool
    accuracy: Proportion
    chance_rate: float
    chance_p: float
    reasons: tuple[str, ...] = ()  # why it was refused; empty when passed
    comparison: dict[str, Any] | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "accuracy": self.accuracy.to_json(),
            "chance_rate": self.chance_rate,
            "chance_p_value": self.chance_p,
            "level": LEVEL,
            "reasons": list(self.reasons),
            "comparison": self.comparison,
            "notes": list(self.notes),
        }

    def explain(self) -> str:
        """One paragraph for the terminal."""
        lines = [
            f"gate: accuracy {self.accuracy} on the calibration images against a chance "
            f"(majority-class) rate of {self.chance_rate:.3f}: p = {self.chance_p:.4f}"
        ]
        if self.comparison:
            c = self.comparison
            lines.append(
                f"against the live checkpoint {c['live_id']}: it was right where this one was "
                f"wrong on {c['only_live_right']} image(s), the reverse on "
                f"{c['only_candidate_right']}: p(worse) = {c['p_worse']:.4f}"
            )
            changes = c["changes"]
            lines.append(
                "decisions that would change on these images: "
                + (", ".join(f"{k}: {v}" for k, v in changes.items()) if changes else "none")
            )
        lines.extend(self.notes)
        lines.extend(f"refused: {reason}" for reason in self.reasons)
        return "\n".join(lines)


def _change(before: str, after: str) -> str:
    if after == LEFT:
        return "acted -> left alone"
    if before == LEFT:
        return "left alone -> acted"
    return f"{before} -> {after}"


def judge(
    classes: Sequence[str],
    targets: Sequence[str],
    labels: np.ndarray,
    candidate: Judged,
    live: Judged | None = None,
    notes: Sequence[str] = (),
) -> Verdict:
    """The verdict on ``candidate`` (and against ``live``, scored on the same images)."""
    labels = np.asarray(labels)
    n = len(labels)
    right = candidate.probs.argmax(axis=1) == labels if n else np.zeros(0, dtype=bool)
    accuracy = Proportion(int(right.sum()), n)
    chance_rate = max(Counter(labels.tolist()).values()) / n if n else 1.0
    chance_p = better_than_rate(accuracy.successes, n, chance_rate)
    reasons = []
    if chance_p >= LEVEL:
        reasons.append(
            f"on {n} calibration image(s), an accuracy of {accuracy.value or 0:.3f} cannot be "
            f"told from the {chance_rate:.3f} of always answering the commonest class "
            f"(p = {chance_p:.3f}, needs < {LEVEL:g}): the model may have learned nothing"
            + ("" if n >= 20 else "; with so few held-out images, add examples")
        )
    comparison = None
    if live is not None:
        live_right = live.probs.argmax(axis=1) == labels
        only_live = int((live_right & ~right).sum())
        only_candidate = int((right & ~live_right).sum())
        p_worse = worse_than_paired(only_live, only_candidate)
        before = live.decisions(classes, targets)
        after = candidate.decisions(classes, targets)
        changes = Counter(_change(b, a) for b, a in zip(before, after, strict=True) if a != b)
        comparison = {
            "live_id": live.id,
            "live_accuracy": Proportion(int(live_right.sum()), n).to_json(),
            "only_live_right": only_live,
            "only_candidate_right": only_candidate,
            "p_worse": p_worse,
            "changes": dict(sorted(changes.items())),
        }
        if p_worse < LEVEL:
            reasons.append(
                f"it is worse than the live checkpoint {live.id} on the same {n} images beyond "
                f"noise ({only_live} right only before, {only_candidate} right only now; "
                f"p = {p_worse:.4f})"
            )
    return Verdict(
        passed=not reasons,
        accuracy=accuracy,
        chance_rate=chance_rate,
        chance_p=chance_p,
        reasons=tuple(reasons),
        comparison=comparison,
        notes=tuple(notes),
    )
