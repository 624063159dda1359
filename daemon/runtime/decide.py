"""Probabilities -> decision: the rules of SPEC.md "Decisions", as pure functions.

1. Undecodable or truncated files are quarantined as ``corrupt`` (never
   deleted, whatever ``reject_action`` says); blank images are culled as
   ``blank`` with the reject action, model or no model.
2. Quality: the top class is a reject class and its calibrated probability
   clears the threshold -> the reject action (``reject``).
3. Feature: the top class clears the threshold -> move to ``<root>/<class>/``
   (``class``); otherwise the uncertain action (``uncertain``).
4. A stage with no checkpoint is skipped. With no feature stage, an image the
   quality stage passed is left where it is (``keep``); one whose top class was
   a reject class below the threshold is ``uncertain``.

A threshold of None means the stage never acts: ``threshold = "auto"`` on a
checkpoint whose training did not reach its target precision. Nothing below a
threshold is ever deleted, moved or trashed: it gets the uncertain action.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from loguru import logger

from gensift.daemon.routing.records import Decision
from gensift.models.errors import InputError

if TYPE_CHECKING:  # the checkpoint reader imports torch; deciding needs none
    from gensift.models.checkpoint import CheckpointMeta


@dataclass(frozen=True)
class Policy:
    """What the config and the loaded checkpoints say about acting on a probability."""

    reject_action: Literal["quarantine", "trash", "delete"] = "quarantine"
    uncertain_action: Literal["leave", "review"] = "leave"
    reject_classes: frozenset[str] = frozenset({"reject"})
    quality_threshold: float | None = None
    feature_threshold: float | None = None


def stage_threshold(stage: str, configured: float | str, meta: CheckpointMeta) -> float | None:
    """The threshold a stage acts at: the configured number, else the checkpoint's.

    ``auto`` on a checkpoint whose training did not reach its target precision
    gives None (the stage never acts), with a warning saying so.
    """
    if not isinstance(configured, str):
        return float(configured)
    if not meta.thresholds.get("reached", True):
        logger.warning(
            "{} checkpoint {}: training did not reach its target precision, so with "
            "threshold = auto this stage will not act; set stages.{}.threshold to a number "
            "(see the report's threshold table) or retrain with more data",
            stage,
            meta.id,
            stage,
        )
        return None
    return meta.threshold


def check_reject_classes(reject_classes: Collection[str], meta: CheckpointMeta, where: str) -> None:
    """Refuse a config whose reject classes are not classes of the quality checkpoint."""
    missing = sorted(set(reject_classes) - set(meta.classes))
    if missing:
        raise InputError(
            f"stages.quality.reject_classes names {', '.join(missing)}, which the quality "
            f"checkpoint {where} does not have (its classes: {', '.join(meta.classes)})"
        )


def _top(probs: Mapping[str, float]) -> tuple[str, float]:
    label = max(probs, key=lambda c: probs[c])
    return label, probs[label]


def _clears(probability: float, threshold: float | None) -> bool:
    return threshold is not None and probability >= threshold


def passes_quality(policy: Policy, quality: Mapping[str, float]) -> bool:
    """False when the quality stage culls the image (it goes no further)."""
    label, p = _top(quality)
    return not (label in policy.reject_classes and _clears(p, policy.quality_threshold))


def decide(
    policy: Policy,
    quality: Mapping[str, float] | None,
    feature: Mapping[str, float] | None,
) -> Decision:
    """The decision for one decoded, non-blank image from its calibrated probabilities."""
    probabilities = {
        stage: dict(p) for stage, p in (("quality", quality), ("feature", feature)) if p is not None
    }
    q_label, q_p = _top(quality) if quality is not None else (None, None)
    if quality is not None and not passes_quality(policy, quality):
        return Decision(policy.reject_action, "reject", q_label, q_p, probabilities)
    if feature is not None:
        label, p = _top(feature)
        if _clears(p, policy.feature_threshold):
            return Decision("move", "class", label, p, probabilities)
        return Decision(policy.uncertain_action, "uncertain", label, p, probabilities)
    if q_label is not None and q_label in policy.reject_classes:
        return Decision(policy.uncertain_action, "uncertain", q_label, q_p, probabilities)
    return Decision("leave", "keep", q_label, q_p, probabilities)


def rule_decision(policy: Policy, reason: Literal["corrupt", "blank"], note: str) -> Decision:
    """Decisions made without a model: corrupt files are quarantined, blank ones culled."""
    if reason == "corrupt":
        return Decision("quarantine", "corrupt", note=note)
    return Decision(policy.reject_action, "blank", note=note)
