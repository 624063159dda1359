"""Metrics and plots for the training / evaluation report.

`write_report` turns labelled validation (or evaluation) predictions into the report folder the
spec describes: ``metrics.json`` plus PNG plots (confusion matrix, loss and accuracy curves,
reliability diagram, and a contact sheet of the most confidently wrong images). Everything here is
plain numpy and matplotlib's object-oriented API (no pyplot, no global state), so it can run in
any process, including a DDP rank or a test, without touching the user's matplotlib setup.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gensift.models.fsutil import publish
from gensift.models.presets import open_rgb

PROB_FLOOR = 1e-12
ECE_BINS = 15
MAX_CONFIDENT_ERRORS = 16
THUMBNAIL_PX = 160
DPI = 100

METRICS_FILE = "metrics.json"
CONFUSION_PNG = "confusion_matrix.png"
CURVES_PNG = "curves.png"
RELIABILITY_PNG = "reliability.png"
ERRORS_PNG = "confident_errors.png"

PHASE_COLOURS: Mapping[str, str] = {
    "warmup": "#fde2c4",
    "finetune": "#d6e6f5",
    "head": "#dcefd8",
}
OTHER_PHASE_COLOUR = "#e6e6e6"


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of training, as plotted in ``curves.png`` and stored in ``metrics.json``."""

    epoch: int
    phase: str  # "warmup" | "finetune" | "head"
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _check_inputs(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> None:
    if not classes:
        raise ValueError("a report needs at least one class")
    if len(set(classes)) != len(classes):
        raise ValueError(f"class names must be unique, got {list(classes)}")
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {labels.shape}")
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(
            f"probs must have shape (N, C) with N = {labels.shape[0]} labels, got {probs.shape}"
        )
    if probs.shape[1] != len(classes):
        raise ValueError(f"probs has {probs.shape[1]} columns but there are {len(classes)} classes")
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f"labels must lie in [0, {len(classes) - 1}]")
    if not np.all(np.isfinite(probs)):
        raise ValueError("probs contains NaN or infinite values")


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with rows = true class and columns = predicted class."""
    flat = labels.astype(np.int64) * num_classes + preds.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else 0.0


def per_class_metrics(cm: np.ndarray, classes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Precision, recall, f1 and support per class; a zero denominator gives 0.0."""
    result: dict[str, dict[str, Any]] = {}
    for k, name in enumerate(classes):
        true_positive = float(cm[k, k])
        precision = _ratio(true_positive, float(cm[:, k].sum()))
        recall = _ratio(true_positive, float(cm[k, :].sum()))
        f1 = _ratio(2 * precision * recall, precision + recall)
        result[name] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": int(cm[k, :].sum()),
        }
    return result


def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS
) -> list[dict[str, Any]]:
    """Equal-width confidence bins ``(lower, upper]`` (the first also holds 0).

    Empty bins keep ``count`` 0 and ``confidence``/``accuracy`` ``None``.
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges[1:-1], confidence, side="left"), 0, n_bins - 1)
    bins: list[dict[str, Any]] = []
    for b in range(n_bins):
        member = index == b
        count = int(member.sum())
        bins.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": count,
                "confidence": float(confidence[member].mean()) if count else None,
                "accuracy": float(correct[member].mean()) if count else None,
            }
        )
    return bins


def expected_calibration_error(bins: Sequence[Mapping[str, Any]]) -> float:
    """Count-weighted mean of |accuracy - confidence| over the reliability bins."""
    total = sum(b["count"] for b in bins)
    if total == 0:
        return 0.0
    gap = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])
    return float(gap / total)


def classification_metrics(
    labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, confusion matrix, per-class scores, NLL and calibration of ``probs``.

    ``labels`` is an int array (N,), ``probs`` a float array (N, C) of calibrated probabilities
    whose columns follow ``classes``. The prediction is the arg-max column. The result holds only
    plain Python types, ready for ``json.dump``. With no samples at all (an empty validation
    split) every score is 0.0 and ``count`` says why.
    """
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    _check_inputs(labels, probs, classes)
    labels = labels.astype(np.int64)
    preds = probs.argmax(axis=1)
    correct = preds == labels
    cm = confusion_matrix(labels, preds, len(classes))
    per_class = per_class_metrics(cm, classes)
    true_prob = np.clip(probs[np.arange(labels.size), labels], PROB_FLOOR, 1.0)
    bins = reliability_bins(probs.max(axis=1), correct.astype(np.float64))
    return {
        "accuracy": float(correct.mean()) if labels.size else 0.0,
        "count": int(labels.size),
        "classes": list(classes),
        "confusion_matrix": cm.tolist(),
        "per_class": per_class,
        "macro_f1": float(np.mean([m["f1"] for m in per_class.values()])),
        "nll": float(-np.log(true_prob).mean()) if labels.size else 0.0,
        "ece": expected_calibration_error(bins),
        "reliability": bins,
    }


# --------------------------------------------------------------------------------------------
# Writing the report
# --------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays unwrapped, paths as strings, NaN/inf as null."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    return value


def _write_json(target: Path, payload: Mapping[str, Any]) -> None:
    text = json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n"
    publish(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _save_figure(fig: Figure, target: Path) -> None:
    publish(target, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))


def write_report(
    out_dir: Path,
    *,
    classes: Sequence[str],
    labels: np.ndarray,
    probs: np.ndarray,
    paths: Sequence[Path],
    accuracy_key: str,
    temperature: float,
    thresholds: Mapping[str, Any],
    history: Sequence[EpochRecord] = (),
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``metrics.json`` and the PNG plots into ``out_dir`` and return the metrics.

    ``accuracy_key`` names the accuracy for the reader: ``"val_accuracy"`` after training,
    ``"accuracy"`` for ``evaluate``. ``paths[i]`` is the image behind ``labels[i]`` and
    ``probs[i]``; it is only used for the contact sheet of confident errors. Keys in ``extra``
    (checkpoint metadata, data fingerprint, skipped files...) are added to ``metrics.json``; they
    may not replace a key this function writes.
    """
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if len(paths) != labels.shape[0]:
        raise ValueError(f"got {len(paths)} paths for {labels.shape[0]} labels")
    metrics = classification_metrics(labels, probs, classes)
    plots = [CONFUSION_PNG, *([CURVES_PNG] if history else []), RELIABILITY_PNG, ERRORS_PNG]
    metrics[accuracy_key] = metrics["accuracy"]
    metrics["temperature"] = float(temperature)
    metrics["thresholds"] = thresholds
    metrics["history"] = [dataclasses.asdict(record) for record in history]
    metrics["plots"] = plots
    clashes = sorted(set(extra or {}) & set(metrics))
    if clashes:
        raise ValueError(f"extra report keys would replace computed ones: {', '.join(clashes)}")
    metrics.update(extra or {})
    metrics = _jsonable(metrics)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / METRICS_FILE, metrics)
    _save_figure(
        plot_confusion_matrix(metrics["confusion_matrix"], classes), out_dir / CONFUSION_PNG
    )
    if history:
        _save_figure(plot_curves(history), out_dir / CURVES_PNG)
    _save_figure(
        plot_reliability(metrics["reliability"], metrics["ece"]), out_dir / RELIABILITY_PNG
    )
    errors = confident_errors(labels, probs, paths)
    _save_figure(plot_confident_errors(errors, classes, metrics["count"]), out_dir / ERRORS_PNG)
    logger.info("wrote report to {} (accuracy {:.4f})", out_dir, metrics["accuracy"])
    return metrics


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def _short(text: str, limit: int) -> str:
    """``text`` cut in the middle with an ellipsis when longer than ``limit`` characters."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return f"{text[:head]}…{text[-(limit - 1 - head) :]}"


def _matrix_font_sizes(n: int) -> tuple[float, float]:
    """Font sizes (class names, cell counts) that still fit an n x n matrix."""
    if n <= 8:
        return 10.0, 10.0
    if n <= 15:
        return 8.0, 8.0
    return 7.0, 6.0


def plot_confusion_matrix(cm: Sequence[Sequence[int]], classes: Sequence[str]) -> Figure:
    """Cells coloured by share of the true class (row-normalised) and annotated with counts."""
    counts = np.asarray(cm, dtype=np.int64)
    n = len(classes)
    row_sums = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_sums, out=np.zeros(counts.shape), where=row_sums > 0)
    side = float(np.clip(2.2 + 0.34 * n, 4.5, 12.5))
    fig = Figure(figsize=(side + 1.0, side), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.8 if n <= 15 else 0.5, label="share of true class")

    font, count_font = _matrix_font_sizes(n)
    for (row, col), count in np.ndenumerate(counts):
        if count == 0 and n > 10:
            continue
        colour = "white" if shares[row, col] > 0.55 else ("black" if count else "#9a9a9a")
        ax.text(col, row, str(count), ha="center", va="center", fontsize=count_font, color=colour)

    names = [_short(str(c), 18) for c in classes]
    rotate = n > 6 or max((len(s) for s in names), default=0) > 8
    ax.set_xticks(
        range(n),
        names,
        fontsize=font,
        rotation=60 if rotate else 0,
        ha="right" if rotate else "center",
        rotation_mode="anchor",
    )
    ax.set_yticks(range(n), names, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = int(counts.sum())
    accuracy = float(np.trace(counts) / total) if total else 0.0
    ax.set_title(f"Confusion matrix — {total} samples, accuracy {accuracy:.3f}")
    return fig


def _curve_x(history: Sequence[EpochRecord]) -> np.ndarray:
    """Epoch numbers when they increase through the run, otherwise 1..len (per-phase counts)."""
    epochs = np.array([r.epoch for r in history], dtype=np.float64)
    if epochs.size > 1 and np.all(np.diff(epochs) > 0):
        return epochs
    return np.arange(1, len(history) + 1, dtype=np.float64) if epochs.size > 1 else epochs


def _phase_runs(history: Sequence[EpochRecord]) -> list[tuple[str, int, int]]:
    """Contiguous runs of one phase as (phase, first index, last index)."""
    runs: list[tuple[str, int, int]] = []
    for i, record in enumerate(history):
        if runs and runs[-1][0] == record.phase:
            runs[-1] = (record.phase, runs[-1][1], i)
        else:
            runs.append((record.phase, i, i))
    return runs


def _shade_phases(ax: Axes, x: np.ndarray, runs: Sequence[tuple[str, int, int]]) -> None:
    labelled: set[str] = set()
    for k, (phase, first, last) in enumerate(runs):
        colour = PHASE_COLOURS.get(phase, OTHER_PHASE_COLOUR)
        label = phase if phase not in labelled else None
        labelled.add(phase)
        ax.axvspan(x[first] - 0.5, x[last] + 0.5, color=colour, zorder=0, label=label)
        if k > 0:
            ax.axvline(x[first] - 0.5, color="#555555", linestyle="--", linewidth=1.0, zorder=1)


def plot_curves(history: Sequence[EpochRecord]) -> Figure:
    """Loss and accuracy per epoch, train and val, on a background shaded by phase."""
    x = _curve_x(history)
    runs = _phase_runs(history)
    fig = Figure(figsize=(11.0, 4.2), dpi=DPI, layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    series = (
        (loss_ax, "loss", "train_loss", "val_loss"),
        (acc_ax, "accuracy", "train_accuracy", "val_accuracy"),
    )
    for ax, name, train_field, val_field in series:
        _shade_phases(ax, x, runs)
        train = [getattr(r, train_field) for r in history]
        val = [getattr(r, val_field) for r in history]
        ax.plot(x, train, marker="o", markersize=3, color="#1f77b4", label="train", zorder=2)
        ax.plot(x, val, marker="s", markersize=3, color="#d62728", label="val", zorder=2)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    acc_ax.set_ylim(0.0, 1.02)
    return fig


def plot_reliability(bins: Sequence[Mapping[str, Any]], ece: float) -> Figure:
    """Accuracy against mean confidence per bin, with the diagonal, and bin counts beneath."""
    fig = Figure(figsize=(5.5, 6.0), dpi=DPI, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    width = bins[0]["upper"] - bins[0]["lower"] if bins else 1.0
    centres = np.array([(b["lower"] + b["upper"]) / 2 for b in bins])
    filled = [i for i, b in enumerate(bins) if b["count"]]
    accuracy = np.array([bins[i]["accuracy"] for i in filled])
    confidence = np.array([bins[i]["confidence"] for i in filled])
    top.bar(centres[filled], accuracy, width=width * 0.95, color="#4c72b0", label="accuracy")
    top.scatter(confidence, accuracy, color="#dd8452", s=14, zorder=3, label="mean confidence")
    top.plot([0, 1], [0, 1], linestyle="--", color="#555555", label="perfect calibration")
    top.set_xlim(0.0, 1.0)
    top.set_ylim(0.0, 1.0)
    top.set_ylabel("accuracy")
    top.set_title(f"Reliability — ECE {ece:.3f}")
    top.legend(loc="upper left", fontsize=8)
    top.grid(True, alpha=0.3)
    counts = [b["count"] for b in bins]
    bottom.bar(centres, counts, width=width * 0.95, color="#8c8c8c")
    bottom.set_xlabel("confidence (top-class probability)")
    bottom.set_ylabel("samples")
    return fig


@dataclass(frozen=True)
class ConfidentError:
    """A misclassified sample for the contact sheet."""

    path: Path
    true_index: int
    predicted_index: int
    probability: float


def confident_errors(
    labels: np.ndarray, probs: np.ndarray, paths: Sequence[Path], limit: int = MAX_CONFIDENT_ERRORS
) -> list[ConfidentError]:
    """The ``limit`` most confidently wrong samples, highest predicted probability first."""
    preds = probs.argmax(axis=1)
    wrong = np.flatnonzero(preds != labels)
    confidence = probs[wrong, preds[wrong]]
    order = wrong[np.argsort(-confidence, kind="stable")][:limit]
    return [
        ConfidentError(Path(paths[i]), int(labels[i]), int(preds[i]), float(probs[i, preds[i]]))
        for i in order
    ]


def load_thumbnail(path: Path, size: int = THUMBNAIL_PX) -> np.ndarray | None:
    """An RGB thumbnail of ``path``, or None (logged) when the file cannot be read."""
    try:
        rgb = open_rgb(path, size)  # what the model saw: upright, 16-bit scaled, alpha on white
        rgb.thumbnail((size, size))
        return np.asarray(rgb)
    except Exception as exc:  # noqa: BLE001 — a bad image must never break the report
        logger.warning("report: cannot open {} for the contact sheet: {}", path, exc)
        return None


def _placeholder(size: int = THUMBNAIL_PX) -> np.ndarray:
    return np.full((size, size, 3), 160, dtype=np.uint8)


def plot_confident_errors(
    errors: Sequence[ConfidentError], classes: Sequence[str], total: int
) -> Figure:
    """Contact sheet: thumbnail, "true → predicted (p=…)" and file name for each error."""
    if not errors:
        fig = Figure(figsize=(5.0, 1.6), dpi=DPI)
        fig.text(
            0.5,
            0.5,
            f"no misclassified samples ({total} of {total} correct)" if total else "no samples",
            ha="center",
            va="center",
            fontsize=12,
        )
        return fig
    cols = min(4, len(errors))
    rows = math.ceil(len(errors) / cols)
    # A fixed grid rather than a layout engine: every cell is the same size anyway, and
    # constrained layout would measure all 16 captions twice.
    cell_w, image_h, caption_h, banner_h = 2.3, 2.15, 0.4, 0.35
    height = rows * (image_h + caption_h) + banner_h
    fig = Figure(figsize=(cols * cell_w, height), dpi=DPI)
    fig.suptitle(f"Most confidently wrong: {len(errors)} shown", fontsize=11, y=1 - 0.08 / height)
    grid = {
        "left": 0.01,
        "right": 0.99,
        "bottom": 0.05 / height,
        "top": 1 - (banner_h + caption_h) / height,
        "wspace": 0.06,
        "hspace": caption_h / image_h,
    }
    axes = fig.subplots(rows, cols, squeeze=False, gridspec_kw=grid).ravel()
    for ax, error in zip(axes, errors, strict=False):
        thumb = load_thumbnail(error.path)
        ax.imshow(thumb if thumb is not None else _placeholder())
        if thumb is None:
            ax.text(0.5, 0.5, "unreadable", transform=ax.transAxes, ha="center", va="center")
        true_name = _short(str(classes[error.true_index]), 12)
        predicted_name = _short(str(classes[error.predicted_index]), 12)
        caption = f"{true_name} → {predicted_name} (p={error.probability:.2f})"
        ax.set_title(f"{caption}\n{_short(error.path.name, 30)}", fontsize=7.5)
    for ax in axes:
        ax.set_axis_off()
    return fig


# --------------------------------------------------------------------------------------------
# Text tables for the terminal
# --------------------------------------------------------------------------------------------


def _num(value: Any, digits: int = 3) -> str:
    """A float with ``digits`` decimals, or "n/a" for a missing value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def _align(rows: Sequence[Sequence[str]], indent: str = "", label_column: bool = True) -> list[str]:
    """Rows as lines, numbers right-aligned; with ``label_column`` the first is left-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(width) for cell, width in zip(row, widths, strict=True)]
        if label_column:
            cells[0] = row[0].ljust(widths[0])
        lines.append(indent + "  ".join(cells).rstrip())
    return lines


def format_per_class_table(metrics: Mapping[str, Any]) -> str:
    """Per-class precision / recall / f1 / support, then overall accuracy and macro f1."""
    rows = [["class", "precision", "recall", "f1", "support"]]
    for name, scores in metrics["per_class"].items():
        rows.append(
            [
                str(name),
                _num(scores["precision"]),
                _num(scores["recall"]),
                _num(scores["f1"]),
                str(scores["support"]),
            ]
        )
    footer = (
        f"accuracy {_num(metrics['accuracy'])}  macro f1 {_num(metrics['macro_f1'])}"
        f"  ({metrics.get('count', sum(int(r[4]) for r in rows[1:]))} samples)"
    )
    return "\n".join([*_align(rows), footer])


def _operating_point(entry: Mapping[str, Any]) -> str:
    text = f"threshold {_num(entry.get('threshold'))}  precision {_num(entry.get('precision'))}"
    if "precision_lower" in entry:
        text += (
            f" (95 % bound {_num(entry.get('precision_lower'))}, {entry.get('count', 0)} images)"
        )
    text += f"  coverage {_num(entry.get('coverage'))}"
    if "recall" in entry:
        text += f"  recall {_num(entry.get('recall'))}"
    return text


def _threshold_summary(name: str, entry: Mapping[str, Any]) -> list[str]:
    lines = [f"{name}: {_operating_point(entry)}"]
    if not entry.get("reached", True):
        why = entry.get("why") or "no threshold reached it on the calibration images"
        lines.append(f"    target not reached: {why}; the stage does not act with threshold = auto")
    return lines


def _threshold_rows(entry: Mapping[str, Any]) -> list[str]:
    table = entry.get("table") or []
    if not table:
        return []
    chosen = entry.get("threshold")
    columns = ["threshold", "precision"]
    if any("precision_lower" in row for row in table):
        columns.append("precision_lower")
    columns.append("coverage")
    if any("recall" in row for row in table):
        columns.append("recall")
    headers = ["bound" if c == "precision_lower" else c for c in columns]
    rows = [[*headers, "count", ""]]
    for row in table:
        count = row.get("count")
        mark = "<- chosen" if chosen is not None and row.get("threshold") == chosen else ""
        rows.append(
            [*(_num(row.get(c)) for c in columns), "n/a" if count is None else str(count), mark]
        )
    return _align(rows, indent="    ", label_column=False)


def format_threshold_table(thresholds: Mapping[str, Any]) -> str:
    """The chosen threshold per class with its precision and coverage, then the full table.

    Accepts what ``calibrate.choose_threshold`` produces: ``target_precision``, per-class entries
    under ``classes`` and, where present, the stage-wide threshold over all target classes at the
    top level and ``at_checkpoint_threshold`` (added by ``evaluate``).
    """
    header = (
        f"thresholds for target precision {_num(thresholds.get('target_precision'))} "
        "(bound = exact 95 % lower bound of precision on count images; a threshold is chosen "
        f"only where the bound reaches the target on at least {thresholds.get('min_count', 1)}; "
        "coverage = share of this class's predictions at or above the threshold)"
    )
    lines = [header]
    classes: Mapping[str, Any] = thresholds.get("classes") or {}
    if "threshold" in thresholds and len(classes) != 1:
        targets = ", ".join(str(c) for c in thresholds.get("target_classes") or classes)
        lines.extend(_threshold_summary(f"stage ({targets})", thresholds))
        lines.extend(_threshold_rows(thresholds))
    for name, entry in classes.items():
        lines.extend(_threshold_summary(str(name), entry))
        lines.extend(_threshold_rows(entry))
    current = thresholds.get("at_checkpoint_threshold")
    if current:
        lines.append(f"at the checkpoint's stored threshold: {_operating_point(current)}")
    if len(lines) == 1:
        lines.append("no thresholds were computed")
    return "\n".join(lines)
