"""The training / evaluation report: metrics by hand, files on disk, tables for the terminal."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from gensift.models.report import (
    EpochRecord,
    classification_metrics,
    confident_errors,
    format_per_class_table,
    format_threshold_table,
    write_report,
)

PNGS = ("confusion_matrix.png", "curves.png", "reliability.png", "confident_errors.png")

# Four classes; "c" is never predicted (precision 0/0) and "d" never occurs at all.
CLASSES = ["a", "b", "c", "d"]
LABELS = np.array([0, 0, 0, 1, 1, 2])
PROBS = np.array(
    [
        [0.6, 0.3, 0.1, 0.0],  # a -> a
        [0.8, 0.1, 0.1, 0.0],  # a -> a
        [0.3, 0.7, 0.0, 0.0],  # a -> b
        [0.2, 0.5, 0.3, 0.0],  # b -> b
        [0.9, 0.0, 0.1, 0.0],  # b -> a, true class has probability 0 (clipped for the NLL)
        [0.1, 0.6, 0.3, 0.0],  # c -> b
    ]
)


def draw_image(path: Path, colour: tuple[int, int, int], size: int = 96) -> Path:
    image = Image.new("RGB", (size, size), colour)
    ImageDraw.Draw(image).ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), "white")
    image.save(path)
    return path


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0, path
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 0 and image.height > 0
        image.load()


def thresholds_fixture() -> dict:
    return {
        "target_precision": 0.95,
        "classes": {
            "a": {
                "threshold": 0.71,
                "precision": 0.96,
                "coverage": 0.83,
                "reached": True,
                "table": [
                    {"threshold": 0.5, "precision": 0.9, "coverage": 0.95, "count": 40},
                    {"threshold": 0.71, "precision": 0.96, "coverage": 0.83, "count": 35},
                ],
            },
            "b": {
                "threshold": 0.9,
                "precision": 0.8,
                "coverage": 0.1,
                "reached": False,
                "table": [{"threshold": 0.9, "precision": 0.8, "coverage": 0.1, "count": 2}],
            },
        },
    }


def test_metrics_on_a_hand_computed_example() -> None:
    m = classification_metrics(LABELS, PROBS, CLASSES)

    assert m["classes"] == CLASSES
    assert m["count"] == 6
    assert m["accuracy"] == pytest.approx(0.5)
    # rows = true class, columns = predicted class
    assert m["confusion_matrix"] == [[2, 1, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert sum(map(sum, m["confusion_matrix"])) == len(LABELS)

    a, b, c, d = (m["per_class"][name] for name in CLASSES)
    assert (a["precision"], a["recall"], a["support"]) == (pytest.approx(2 / 3),) * 2 + (3,)
    assert a["f1"] == pytest.approx(2 / 3)
    assert b["precision"] == pytest.approx(1 / 3)
    assert b["recall"] == pytest.approx(1 / 2)
    assert b["f1"] == pytest.approx(0.4)
    assert b["support"] == 2
    assert c == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}  # 0/0 precision
    assert d == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.4) / 4)

    expected_nll = -sum(math.log(p) for p in (0.6, 0.8, 0.3, 0.5, 1e-12, 0.3)) / 6
    assert m["nll"] == pytest.approx(expected_nll)
    json.dumps(m, allow_nan=False)  # plain JSON types only


def test_ece_is_zero_when_confidence_matches_accuracy() -> None:
    # 10 samples at confidence 0.8 with 8 right, 5 at confidence 0.6 with 3 right.
    probs = np.array([[0.8, 0.2]] * 10 + [[0.4, 0.6]] * 5)
    labels = np.array([0] * 8 + [1] * 2 + [1] * 3 + [0] * 2)
    m = classification_metrics(labels, probs, ["x", "y"])

    assert m["ece"] == pytest.approx(0.0, abs=1e-9)
    bins = m["reliability"]
    assert len(bins) == 15
    assert sum(b["count"] for b in bins) == 15
    assert bins[0]["lower"] == 0.0 and bins[-1]["upper"] == 1.0
    filled = [b for b in bins if b["count"]]
    assert [(b["count"], b["accuracy"]) for b in filled] == [
        (5, pytest.approx(0.6)),
        (10, pytest.approx(0.8)),
    ]
    assert all(b["lower"] < b["confidence"] <= b["upper"] for b in filled)


def test_ece_of_an_overconfident_model() -> None:
    probs = np.array([[1.0, 0.0]] * 4)
    labels = np.array([0, 1, 0, 1])
    m = classification_metrics(labels, probs, ["x", "y"])
    assert m["ece"] == pytest.approx(0.5)
    assert m["nll"] == pytest.approx(-math.log(1e-12) / 2)


def test_an_empty_validation_split_still_gives_a_report(tmp_path: Path) -> None:
    metrics = write_report(
        tmp_path / "empty",
        classes=["keep", "reject"],
        labels=np.zeros(0, dtype=np.int64),
        probs=np.zeros((0, 2)),
        paths=[],
        accuracy_key="val_accuracy",
        temperature=1.0,
        thresholds={},
    )
    assert metrics["count"] == 0 and metrics["val_accuracy"] == 0.0
    assert metrics["confusion_matrix"] == [[0, 0], [0, 0]]
    assert "0 samples" in format_per_class_table(metrics)
    assert_png(tmp_path / "empty" / "confident_errors.png")


def test_metrics_refuse_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="columns"):
        classification_metrics(LABELS, PROBS, CLASSES[:3])
    with pytest.raises(ValueError, match="labels"):
        classification_metrics(np.array([0, 5]), np.full((2, 4), 0.25), CLASSES)


def test_confusion_matrix_sums_to_sample_count() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=200)
    labels = rng.integers(0, 5, size=200)
    m = classification_metrics(labels, probs, [f"k{i}" for i in range(5)])
    cm = np.array(m["confusion_matrix"])
    assert cm.sum() == 200
    assert cm.sum(axis=1).tolist() == [m["per_class"][f"k{i}"]["support"] for i in range(5)]
    assert np.trace(cm) / 200 == pytest.approx(m["accuracy"])


def test_write_report_after_training(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    paths = [draw_image(images / f"img{i}.png", (40 * i, 80, 200 - 30 * i)) for i in range(6)]
    paths[2] = images / "deleted-since.png"  # a confidently wrong sample whose file is gone
    paths[4].write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")  # and one that is corrupt
    history = [
        EpochRecord(1, "warmup", 1.2, 0.4, 1.1, 0.45, 1e-3, 3.0),
        EpochRecord(2, "warmup", 0.9, 0.6, 0.95, 0.55, 1e-3, 3.1),
        EpochRecord(3, "finetune", 0.6, 0.75, 0.8, 0.6, 1e-4, 6.0),
        EpochRecord(4, "finetune", 0.4, 0.85, 0.78, 0.65, 5e-5, 6.2),
    ]
    out = tmp_path / "quality.report"
    returned = write_report(
        out,
        classes=CLASSES,
        labels=LABELS,
        probs=PROBS,
        paths=paths,
        accuracy_key="val_accuracy",
        temperature=1.7,
        thresholds=thresholds_fixture(),
        history=history,
        extra={"checkpoint": {"arch": "resnet18"}, "skipped_files": [images / "bad.png"]},
    )

    saved = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert saved == returned
    for key in ("val_accuracy", "classes", "confusion_matrix", "per_class", "temperature"):
        assert key in saved
    assert saved["val_accuracy"] == pytest.approx(0.5)
    assert saved["temperature"] == pytest.approx(1.7)
    assert saved["thresholds"] == thresholds_fixture()
    assert saved["history"][2]["phase"] == "finetune" and len(saved["history"]) == 4
    assert saved["checkpoint"] == {"arch": "resnet18"}
    assert saved["skipped_files"] == [str(images / "bad.png")]
    assert sorted(saved["plots"]) == sorted(PNGS)
    for name in PNGS:
        assert_png(out / name)
    # Nothing but the report itself: no temporary files left behind.
    assert sorted(p.name for p in out.iterdir()) == sorted([*PNGS, "metrics.json"])


def test_write_report_for_evaluate_without_history_or_errors(tmp_path: Path) -> None:
    paths = [draw_image(tmp_path / f"{i}.jpg", (200, 30 * i, 30)) for i in range(4)]
    labels = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.45, 0.55], [0.6, 0.4]])
    out = tmp_path / "eval"
    write_report(
        out,
        classes=["keep", "reject"],
        labels=labels,
        probs=probs,
        paths=paths,
        accuracy_key="accuracy",
        temperature=1.0,
        thresholds={"target_precision": 0.99, "classes": {}},
    )

    saved = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert saved["accuracy"] == 1.0
    assert "val_accuracy" not in saved
    assert saved["history"] == []
    assert not (out / "curves.png").exists()
    assert "curves.png" not in saved["plots"]
    for name in ("confusion_matrix.png", "reliability.png", "confident_errors.png"):
        assert_png(out / name)


def test_write_report_with_many_classes_and_long_names(tmp_path: Path) -> None:
    classes = [f"class-with-a-rather-long-name-{i:02d}" for i in range(30)]
    labels = np.repeat(np.arange(30), 2)
    predicted = labels.copy()
    predicted[[1, 20, 41]] = [5, 7, 0]  # three mistakes
    probs = np.full((60, 30), 0.1 / 29)
    probs[np.arange(60), predicted] = 0.9
    paths = [tmp_path / "missing" / f"{i}.png" for i in range(60)]  # none exist
    write_report(
        tmp_path / "r",
        classes=classes,
        labels=labels,
        probs=probs,
        paths=paths,
        accuracy_key="accuracy",
        temperature=2.0,
        thresholds={},
    )
    for name in ("confusion_matrix.png", "reliability.png", "confident_errors.png"):
        assert_png(tmp_path / "r" / name)


def test_extra_may_not_replace_computed_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="accuracy"):
        write_report(
            tmp_path,
            classes=CLASSES,
            labels=LABELS,
            probs=PROBS,
            paths=[tmp_path / "x.png"] * 6,
            accuracy_key="accuracy",
            temperature=1.0,
            thresholds={},
            extra={"accuracy": 1.0},
        )


def test_confident_errors_are_the_most_confidently_wrong_first() -> None:
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(3), size=100)
    labels = (probs.argmax(axis=1) + 1) % 3  # every sample wrong
    paths = [Path(f"{i}.png") for i in range(100)]
    errors = confident_errors(labels, probs, paths)
    assert len(errors) == 16
    shown = [e.probability for e in errors]
    assert shown == sorted(shown, reverse=True)
    assert shown[0] == pytest.approx(probs.max())
    assert all(e.true_index != e.predicted_index for e in errors)


def test_per_class_table_names_every_class() -> None:
    text = format_per_class_table(classification_metrics(LABELS, PROBS, CLASSES))
    lines = text.splitlines()
    assert lines[0].split() == ["class", "precision", "recall", "f1", "support"]
    for name in CLASSES:
        assert any(line.split()[0] == name for line in lines[1:-1])
    assert "0.667" in text
    assert "accuracy 0.500" in lines[-1] and "macro f1" in lines[-1]
    # aligned: every row of the table has the same width as the header
    assert len({len(line) for line in lines[:-1]}) == 1


def test_threshold_table_explains_each_class() -> None:
    text = format_threshold_table(thresholds_fixture())
    assert "coverage" in text.splitlines()[0] and "0.950" in text.splitlines()[0]
    assert "a: threshold 0.710  precision 0.960  coverage 0.830" in text
    b_line = text.splitlines().index("b: threshold 0.900  precision 0.800  coverage 0.100")
    assert text.splitlines()[b_line + 1].strip() == (
        "target not reached: no threshold reached it on the calibration images; "
        "the stage does not act with threshold = auto"
    )
    assert "target not reached" not in text.split("b: threshold")[0]  # "a" reached its target
    assert "<- chosen" in text
    assert format_threshold_table({}).splitlines()[-1] == "no thresholds were computed"


def test_threshold_table_shows_the_stage_threshold_and_recall() -> None:
    """The shape calibrate.choose_threshold writes: a stage-wide entry above the per-class ones."""
    point = {"threshold": 0.8, "precision": 0.97, "coverage": 0.6, "recall": 0.55, "count": 30}
    thresholds = {
        "target_precision": 0.95,
        "target_classes": ["cats", "dogs"],
        **point,
        "reached": True,
        "table": [point],
        "classes": {
            "cats": {**point, "reached": True, "table": [point]},
            "dogs": {**point, "precision": None, "reached": False, "table": [point]},
        },
        "at_checkpoint_threshold": {**point, "threshold": 0.9},
    }
    lines = format_threshold_table(thresholds).splitlines()
    assert lines[1] == "stage (cats, dogs): " + (
        "threshold 0.800  precision 0.970  coverage 0.600  recall 0.550"
    )
    assert lines[2].split() == ["threshold", "precision", "coverage", "recall", "count"]
    assert any(line.startswith("dogs: threshold 0.800  precision n/a") for line in lines)
    assert lines[-1].startswith("at the checkpoint's stored threshold: threshold 0.900")
