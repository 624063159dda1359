"""Probabilities -> decisions: the rules of daemon/runtime/decide.py as a user would see them."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Literal

import pytest

from gensift.daemon.routing.records import REJECTED_DIR, REVIEW_DIR, Decision
from gensift.daemon.runtime.decide import (
    Policy,
    check_reject_classes,
    decide,
    passes_quality,
    rule_decision,
    stage_threshold,
)
from gensift.models.checkpoint import CheckpointMeta
from gensift.models.errors import InputError
from gensift.models.presets import IMAGENET

RejectAction = Literal["quarantine", "trash", "delete"]
UncertainAction = Literal["leave", "review"]

#: a full cascade: quality (keep/reject) then feature (red/blue/stripes)
FULL = Policy(
    reject_action="quarantine",
    uncertain_action="review",
    quality_threshold=0.8,
    feature_threshold=0.7,
)


def _quality(reject: float) -> dict[str, float]:
    return {"keep": 1.0 - reject, "reject": reject}


def _feature(top: str, p: float) -> dict[str, float]:
    others = [c for c in ("red", "blue", "stripes") if c != top]
    return {top: p, **{c: (1.0 - p) / 2 for c in others}}


def _meta(**overrides: object) -> CheckpointMeta:
    base = CheckpointMeta(
        stage="quality",
        arch="resnet18",
        classes=["keep", "reject"],
        image_size=32,
        normalization=IMAGENET,
        temperature=1.0,
        thresholds={"threshold": 0.85, "reached": True},
        checksum="0123456789abcdef" * 4,
    )
    return replace(base, **overrides)


# --- quality stage --------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["quarantine", "trash", "delete"])
@pytest.mark.parametrize("p", [0.8, 0.95, 1.0])
def test_reject_class_at_or_above_threshold_gets_the_reject_action(
    action: RejectAction, p: float
) -> None:
    policy = replace(FULL, reject_action=action)
    decision = decide(policy, _quality(p), _feature("red", 0.99))
    assert decision.action == action
    assert decision.reason == "reject"
    assert decision.label == "reject"
    assert decision.probability == pytest.approx(p)
    assert decision.folder == (REJECTED_DIR if action == "quarantine" else None)
    # both stages' probabilities are kept for the journal
    assert set(decision.probabilities) == {"quality", "feature"}
    assert not passes_quality(policy, _quality(p))


def test_reject_class_below_threshold_goes_on_to_the_feature_stage() -> None:
    quality = _quality(0.79)
    assert passes_quality(FULL, quality)
    decision = decide(FULL, quality, _feature("blue", 0.9))
    assert (decision.action, decision.reason, decision.label) == ("move", "class", "blue")


def test_any_configured_reject_class_can_cull() -> None:
    policy = replace(FULL, reject_classes=frozenset({"blurry", "nsfw"}))
    quality = {"keep": 0.05, "blurry": 0.9, "nsfw": 0.05}
    decision = decide(policy, quality, _feature("red", 0.99))
    assert (decision.action, decision.reason, decision.label) == ("quarantine", "reject", "blurry")
    # a class that is not a reject class never culls, however sure the model is
    assert passes_quality(policy, {"keep": 0.99, "blurry": 0.01})


# --- feature stage --------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.7, 0.71, 1.0])
def test_feature_top_class_at_or_above_threshold_is_moved_to_its_folder(p: float) -> None:
    decision = decide(FULL, _quality(0.1), _feature("stripes", p))
    assert decision.action == "move"
    assert decision.reason == "class"
    assert decision.label == "stripes"
    assert decision.folder == "stripes"
    assert decision.probability == pytest.approx(p)


@pytest.mark.parametrize(("uncertain", "folder"), [("leave", None), ("review", REVIEW_DIR)])
def test_feature_below_threshold_gets_the_uncertain_action(
    uncertain: UncertainAction, folder: str | None
) -> None:
    policy = replace(FULL, uncertain_action=uncertain)
    decision = decide(policy, _quality(0.1), _feature("red", 0.69))
    assert decision.action == uncertain
    assert decision.reason == "uncertain"
    assert decision.label == "red"
    assert decision.folder == folder


def test_review_folder_is_the_review_dir() -> None:
    assert Decision("review", "uncertain", "red").folder == "_review"
    assert Decision("quarantine", "reject", "reject").folder == "_rejected"
    assert Decision("leave", "keep").folder is None
    assert Decision("delete", "reject").folder is None
    assert Decision("trash", "blank").folder is None


def test_a_none_threshold_never_acts() -> None:
    policy = replace(FULL, quality_threshold=None, feature_threshold=None, uncertain_action="leave")
    # certain reject, certain class: neither stage acts
    decision = decide(policy, _quality(1.0), _feature("red", 1.0))
    assert decision.action == "leave"
    assert decision.reason == "uncertain"
    decision = decide(policy, _quality(1.0), None)  # no feature stage
    assert decision.action == "leave"
    assert decision.reason == "uncertain"
    assert decision.label == "reject"


# --- missing stages -------------------------------------------------------------------------


def test_no_feature_stage_keeps_an_image_quality_passed() -> None:
    policy = replace(FULL, feature_threshold=None)
    decision = decide(policy, _quality(0.1), None)
    assert decision.action == "leave"
    assert decision.reason == "keep"
    assert decision.label == "keep"
    assert decision.folder is None
    assert set(decision.probabilities) == {"quality"}


@pytest.mark.parametrize(("uncertain", "folder"), [("leave", None), ("review", REVIEW_DIR)])
def test_no_feature_stage_and_a_reject_class_below_threshold_is_uncertain(
    uncertain: UncertainAction, folder: str | None
) -> None:
    policy = replace(FULL, feature_threshold=None, uncertain_action=uncertain)
    decision = decide(policy, _quality(0.6), None)
    assert decision.action == uncertain
    assert decision.reason == "uncertain"
    assert decision.label == "reject"
    assert decision.probability == pytest.approx(0.6)
    assert decision.folder == folder


def test_without_a_quality_stage_the_feature_stage_decides_alone() -> None:
    policy = replace(FULL, quality_threshold=None)
    moved = decide(policy, None, _feature("blue", 0.9))
    assert (moved.action, moved.reason, moved.label, moved.folder) == (
        "move",
        "class",
        "blue",
        "blue",
    )
    assert set(moved.probabilities) == {"feature"}
    unsure = decide(policy, None, _feature("blue", 0.5))
    assert (unsure.action, unsure.reason, unsure.folder) == ("review", "uncertain", REVIEW_DIR)


# --- rules without a model ------------------------------------------------------------------


@pytest.mark.parametrize("action", ["quarantine", "trash", "delete"])
def test_corrupt_files_are_always_quarantined(action: RejectAction) -> None:
    decision = rule_decision(Policy(reject_action=action), "corrupt", "truncated PNG")
    assert decision.action == "quarantine"
    assert decision.reason == "corrupt"
    assert decision.folder == REJECTED_DIR
    assert decision.note == "truncated PNG"


@pytest.mark.parametrize("action", ["quarantine", "trash", "delete"])
def test_blank_images_follow_the_reject_action(action: RejectAction) -> None:
    decision = rule_decision(Policy(reject_action=action), "blank", "near-constant pixels")
    assert decision.action == action
    assert decision.reason == "blank"
    assert decision.note == "near-constant pixels"


# --- the safety property --------------------------------------------------------------------

GRID = [0.0, 0.2, 0.5, 0.69, 0.7, 0.7001, 0.79, 0.8, 0.9, 0.99, 1.0]
THRESHOLDS: list[float | None] = [None, 0.5, 0.7, 0.8, 0.95, 1.0]


def test_nothing_is_moved_or_removed_below_its_threshold() -> None:
    """Over a grid of probabilities and thresholds, every acting decision is justified."""
    checked = 0
    for q_p, f_p, q_t, f_t, reject_action, uncertain, stages in itertools.product(
        GRID,
        GRID,
        THRESHOLDS,
        THRESHOLDS,
        ("quarantine", "trash", "delete"),
        ("leave", "review"),
        ("both", "quality", "feature"),
    ):
        policy = Policy(
            reject_action=reject_action,
            uncertain_action=uncertain,
            quality_threshold=q_t,
            feature_threshold=f_t,
        )
        quality = _quality(q_p) if stages != "feature" else None
        feature = _feature("red", max(f_p, 1 / 3)) if stages != "quality" else None
        decision = decide(policy, quality, feature)
        checked += 1
        if decision.action in ("delete", "trash", "quarantine"):
            assert decision.reason == "reject"
            assert quality is not None and decision.label == "reject"
            assert q_t is not None and quality["reject"] >= q_t, (policy, quality, decision)
            assert decision.probability == quality["reject"]
        elif decision.action == "move":
            assert decision.reason == "class"
            assert feature is not None and decision.label == "red"
            assert f_t is not None and feature["red"] >= f_t, (policy, feature, decision)
            # and the quality stage did not want it culled
            assert quality is None or passes_quality(policy, quality)
        else:
            assert decision.action in ("leave", "review")
            assert decision.action == "leave" or uncertain == "review"
    assert checked == len(GRID) ** 2 * len(THRESHOLDS) ** 2 * 3 * 2 * 3


# --- thresholds and reject classes from checkpoints -----------------------------------------


def test_a_configured_number_wins_over_the_checkpoint() -> None:
    assert stage_threshold("quality", 0.6, _meta()) == pytest.approx(0.6)
    unreached = _meta(thresholds={"threshold": 1.0, "reached": False})
    assert stage_threshold("quality", 0.6, unreached) == pytest.approx(0.6)


def test_auto_gives_the_checkpoint_threshold() -> None:
    assert stage_threshold("quality", "auto", _meta()) == pytest.approx(0.85)
    # a checkpoint that does not say whether it reached its target is taken at its word
    older = _meta(thresholds={"threshold": 0.9})
    assert stage_threshold("feature", "auto", older) == pytest.approx(0.9)


def test_auto_on_an_unreached_target_never_acts() -> None:
    meta = _meta(thresholds={"threshold": 1.0, "reached": False})
    threshold = stage_threshold("quality", "auto", meta)
    assert threshold is None
    policy = Policy(quality_threshold=threshold)
    assert decide(policy, _quality(1.0), None).action == "leave"


def test_reject_classes_must_be_checkpoint_classes() -> None:
    check_reject_classes(["reject"], _meta(), "quality.safetensors")  # fine
    with pytest.raises(InputError, match="blurry") as caught:
        check_reject_classes(["reject", "blurry"], _meta(), "quality.safetensors")
    message = str(caught.value)
    assert "quality.safetensors" in message
    assert "keep" in message  # it lists the checkpoint's classes
