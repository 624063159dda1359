"""Metrics, threshold table and plots for a checkpoint on any labelled folder."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loguru import logger
from torch import nn

from gensift.models.batches import eval_loader, forward_batches
from gensift.models.calibrate import calibrated_probs, choose_threshold, operating_point
from gensift.models.checkpoint import CheckpointMeta, load_classifier
from gensift.models.data import Sample, scan_folder
from gensift.models.device import resolve_device
from gensift.models.predictor import prepare_for_inference
from gensift.models.presets import EvalPreset
from gensift.models.report import write_report


def score(
    checkpoint: Path,
    samples: Sequence[Sample],
    device: torch.device,
    batch_size: int = 32,
    workers: int | None = None,
    desc: str = "evaluate",
) -> tuple[np.ndarray, CheckpointMeta]:
    """Calibrated probabilities of ``checkpoint`` on ``samples``, in order, and its metadata."""
    model, meta = load_classifier(checkpoint)
    return score_model(model, meta, samples, device, batch_size, workers, desc), meta


def score_model(
    model: nn.Module,
    meta: CheckpointMeta,
    samples: Sequence[Sample],
    device: torch.device,
    batch_size: int = 32,
    workers: int | None = None,
    desc: str = "evaluate",
) -> np.ndarray:
    """Calibrated probabilities of a loaded checkpoint's model on ``samples``, in order."""
    model = prepare_for_inference(model, device)
    preset = EvalPreset(meta.image_size, meta.normalization)
    n_workers = workers if workers is not None else min(4, (os.cpu_count() or 1) - 1)
    loader = eval_loader(samples, preset, batch_size, n_workers, device)
    logits, _ = forward_batches(model, loader, device, desc=desc, show_progress=sys.stderr.isatty())
    return calibrated_probs(logits, meta.temperature).numpy()


@dataclass
class EvaluateResult:
    report_dir: Path
    metrics: dict[str, Any]


def default_report_dir(checkpoint: Path, data: Path) -> Path:
    """``models/quality.safetensors`` on ``~/held-out`` -> ``models/quality.eval-held-out``."""
    return checkpoint.with_name(f"{checkpoint.stem}.eval-{data.resolve().name or 'data'}")


def evaluate(
    checkpoint: Path,
    data: Path,
    report: Path | None = None,
    *,
    device: str = "auto",
    batch_size: int = 32,
    workers: int | None = None,
    target_precision: float | None = None,
) -> EvaluateResult:
    """Run ``checkpoint`` over ``data/<class>/*`` and write a report.

    The threshold table is computed on this data for the checkpoint's target
    classes, at ``target_precision`` (default: the one it was trained for);
    ``at_checkpoint_threshold`` shows how the threshold stored in the
    checkpoint does here.
    """
    model, meta = load_classifier(checkpoint)
    scan = scan_folder(data, meta.classes, classes_of=f"checkpoint {checkpoint}")
    torch_device = resolve_device(device)
    probs = score_model(model, meta, scan.samples, torch_device, batch_size, workers)
    labels = np.array([s.label for s in scan.samples])
    stored = meta.thresholds
    targets = stored.get("target_classes") or meta.classes
    precision = target_precision or stored.get("target_precision") or 0.95
    thresholds = choose_threshold(probs, labels, meta.classes, targets, precision)
    thresholds["at_checkpoint_threshold"] = operating_point(
        probs, labels, meta.classes, targets, meta.threshold
    )
    report_dir = report or default_report_dir(checkpoint, data)
    metrics = write_report(
        report_dir,
        classes=meta.classes,
        labels=labels,
        probs=probs,
        paths=[s.path for s in scan.samples],
        accuracy_key="accuracy",
        temperature=meta.temperature,
        thresholds=thresholds,
        extra={
            "stage": meta.stage,
            "arch": meta.arch,
            "checkpoint": str(checkpoint),
            "checkpoint_id": meta.id,
            "checkpoint_threshold": meta.threshold,
            "data": str(data),
            "device": str(torch_device),
            "skipped_files": [{"path": str(p), "problem": why} for p, why in scan.skipped],
        },
    )
    logger.info("wrote report {}", report_dir)
    return EvaluateResult(report_dir, metrics)
