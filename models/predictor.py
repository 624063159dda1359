"""Batched inference through the eval preset.

:func:`forward` (autocast, channels_last) is the one forward path: training's
validation passes, ``evaluate``, ``sort`` and ``watch`` all turn images into logits
through it (the first two by way of :mod:`gensift.models.batches`, which reads labelled
samples). :class:`Predictor` is the cascade the runtime serves: one or two
checkpoints, calibrated probabilities, the feature stage only on images the quality
stage let through, and one backbone pass per image when both stages were trained with
``--freeze-backbone`` on the same backbone weights. :meth:`Predictor.compiled` runs those
forward passes through ``torch.compile`` (:mod:`gensift.models.compiled`), checked against
the eager models first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from loguru import logger
from torch import nn

from gensift.models.backbones import Classifier
from gensift.models.checkpoint import CheckpointMeta, load_classifier
from gensift.models.compiled import (
    TOLERANCE,
    PaddedModule,
    compiling,
    largest_difference,
    probe_images,
)
from gensift.models.device import (
    autocast_dtype,
    precision_name,
    precision_warning,
    resolve_device,
)
from gensift.models.errors import InputError
from gensift.models.presets import STAGES, EvalPreset, Normalization, Stage


def channels_last(device: torch.device) -> bool:
    """Whether convolutions run faster in NHWC here: cuDNN and oneDNN (CPU) do; MPS not."""
    return device.type in ("cuda", "cpu")


def prepare_for_inference(model: nn.Module, device: torch.device) -> nn.Module:
    """Move to ``device`` in eval mode, channels_last where that is faster."""
    model = model.to(device).eval()
    if channels_last(device):
        model = model.to(memory_format=torch.channels_last)
    return model


def forward(
    module: nn.Module, images: torch.Tensor, device: torch.device, amp: torch.dtype | None
) -> torch.Tensor:
    """``module(images)`` on ``device`` under autocast ``amp`` (None = fp32); float32 out."""
    images = images.to(device, non_blocking=True)
    if channels_last(device):
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        return module(images).float()


#: What an image must be turned into for a stage: (image size, normalisation).
PresetKey = tuple[int, Normalization]
#: Calibrated probabilities of one image: stage -> class -> probability.
CascadeProbs = dict[Stage, dict[str, float]]


def preset_key(meta: CheckpointMeta) -> PresetKey:
    return (meta.image_size, meta.normalization)


@dataclass(frozen=True)
class LoadedStage:
    """One stage ready to serve; ``model`` is None when it borrows the quality backbone."""

    stage: Stage
    path: Path
    meta: CheckpointMeta
    model: Classifier | None
    head: nn.Module

    @property
    def key(self) -> PresetKey:
        return preset_key(self.meta)


def _can_share(quality: CheckpointMeta, feature: CheckpointMeta) -> bool:
    return (
        quality.frozen_backbone
        and feature.frozen_backbone
        and bool(quality.backbone_digest)
        and quality.backbone_digest == feature.backbone_digest
        and quality.arch == feature.arch
        and preset_key(quality) == preset_key(feature)
    )


class Predictor:
    """The quality -> feature cascade on batches of preprocessed images.

    Build it with :meth:`load`. Inputs are one tensor per distinct preprocessing
    (:attr:`presets`), so two stages trained at the same size share it.
    """

    def __init__(
        self,
        stages: Sequence[LoadedStage],
        device: torch.device,
        amp: torch.dtype | None,
        precision: str = "auto",
        runners: Mapping[Stage, nn.Module] | None = None,
    ) -> None:
        self.stages: dict[Stage, LoadedStage] = {s.stage: s for s in stages}
        self.device = device
        self.amp = amp
        self.precision = precision  # as asked for; ``amp`` is what it means on ``device``
        self.shared_backbone = any(s.model is None for s in stages)
        self.presets: dict[PresetKey, EvalPreset] = {
            s.key: EvalPreset(s.meta.image_size, s.meta.normalization) for s in stages
        }
        # What each stage runs on its input: its model, or the quality backbone when shared,
        # compiled where :meth:`compiled` made them so (none for a borrowing feature stage).
        self.runners: dict[Stage, nn.Module] = dict(runners or self._eager_runners())

    def _eager_runners(self) -> dict[Stage, nn.Module]:
        runners: dict[Stage, nn.Module] = {}
        for s in self.stages.values():
            if s.model is not None:
                shared = self.shared_backbone and s.stage == "quality"
                runners[s.stage] = s.model.backbone if shared else s.model
        return runners

    @property
    def is_compiled(self) -> bool:
        return any(isinstance(r, PaddedModule) for r in self.runners.values())

    @classmethod
    def load(
        cls,
        checkpoints: Mapping[Stage, Path | None],
        *,
        device: str = "auto",
        precision: str = "auto",
        share_backbone: bool = True,
    ) -> Predictor:
        """Load each configured stage through the one checkpoint reader (CheckpointError if bad).

        ``share_backbone=False`` runs two full models even where one backbone would do.
        """
        torch_device = resolve_device(device)
        if note := precision_warning(torch_device, precision):
            logger.warning("{}", note)
        loaded: dict[Stage, tuple[Path, Classifier, CheckpointMeta]] = {}
        for stage in STAGES:
            path = checkpoints.get(stage)
            if path is not None:
                model, meta = load_classifier(path, stage=stage)
                loaded[stage] = (Path(path), model, meta)
        if not loaded:
            raise InputError("no stage has a checkpoint: train one with 'gensift train'")
        share = share_backbone and "quality" in loaded and "feature" in loaded
        share = share and _can_share(loaded["quality"][2], loaded["feature"][2])
        stages = []
        for stage, (path, model, meta) in loaded.items():
            if share and stage == "feature":
                head = model.head.to(torch_device).eval()
                stages.append(LoadedStage(stage, path, meta, None, head))
            else:
                model = prepare_for_inference(model, torch_device)
                stages.append(LoadedStage(stage, path, meta, model, model.head))
        return cls(stages, torch_device, autocast_dtype(torch_device, precision), precision)

    def moved_to(self, device: torch.device) -> Predictor:
        """The same models on ``device`` (moved in place: use only the result from now on).

        May raise ``torch.OutOfMemoryError`` part-way; moving to the CPU then brings every
        tensor back.
        """
        stages = []
        for s in self.stages.values():
            if s.model is not None:
                model = prepare_for_inference(s.model, device)
                stages.append(replace(s, model=model, head=model.head))
            else:
                stages.append(replace(s, head=s.head.to(device).eval()))
        return Predictor(stages, device, autocast_dtype(device, self.precision), self.precision)

    def compiled(self, sizes: Sequence[int]) -> Predictor:
        """These models with their forward passes compiled for batches of ``sizes`` (others
        are padded up or split), if the compiled cascade gives this one's probabilities on a
        probe batch to within :data:`~gensift.models.compiled.TOLERANCE`; else ``self``, with
        a warning saying why. Compiling takes seconds to a minute, here, not at the first file.
        """
        sizes = sorted(set(sizes))
        runners = {stage: PaddedModule(r, sizes) for stage, r in self.runners.items()}
        candidate = Predictor(
            list(self.stages.values()), self.device, self.amp, self.precision, runners
        )
        started = time.perf_counter()
        try:
            with compiling():  # each size compiles on its first batch
                for size in sizes:
                    candidate.predict(self.probe(size), _all)
            probe = self.probe(min(4, max(sizes)), seed=1)  # padded up: that is checked too
            difference = largest_difference(
                self.predict(probe, _all), candidate.predict(probe, _all)
            )
        except Exception as exc:  # noqa: BLE001 - any failure to compile leaves the eager models
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            logger.warning(
                "could not compile the models ({}: {}); running them uncompiled",
                type(exc).__name__,
                first,
            )
            return self
        if difference > TOLERANCE:
            logger.warning(
                "the compiled models' probabilities differ from the uncompiled ones by up to "
                "{:.2g} (more than {:g}); running them uncompiled so the thresholds still hold",
                difference,
                TOLERANCE,
            )
            return self
        logger.info(
            "models compiled for batches of {} in {:.1f} s (probabilities within {:.1g} of "
            "the uncompiled models)",
            ", ".join(map(str, sizes)),
            time.perf_counter() - started,
            difference,
        )
        return candidate

    def probe(self, count: int, seed: int = 0) -> dict[PresetKey, torch.Tensor]:
        """``count`` fixed synthetic images, normalised for each preset (to compare models)."""
        return {
            key: preset.normalize(probe_images(preset.image_size, count, seed))
            for key, preset in self.presets.items()
        }

    def describe(self) -> str:
        parts = [f"{s.stage} {s.meta.arch} {s.meta.id} ({s.path})" for s in self.stages.values()]
        precision = precision_name(self.amp)
        shared = ", one shared backbone pass" if self.shared_backbone else ""
        compiled = ", compiled" if self.is_compiled else ""
        return f"{'; '.join(parts)}; device {self.device} {precision}{shared}{compiled}"

    def predict(
        self,
        inputs: Mapping[PresetKey, torch.Tensor],
        passes_quality: Callable[[dict[str, float]], bool],
    ) -> list[CascadeProbs]:
        """Calibrated probabilities per image; the feature stage only where ``passes_quality``."""
        count = len(next(iter(inputs.values())))
        results: list[CascadeProbs] = [{} for _ in range(count)]
        keep = list(range(count))
        features: torch.Tensor | None = None
        with torch.inference_mode():
            quality = self.stages.get("quality")
            if quality is not None:
                output = forward(
                    self.runners["quality"], inputs[quality.key], self.device, self.amp
                )
                if self.shared_backbone:
                    features = output
                    logits = quality.head(features)
                else:
                    logits = output
                for i, probs in enumerate(_calibrated(logits, quality.meta)):
                    results[i]["quality"] = probs
                keep = [i for i in keep if passes_quality(results[i]["quality"])]
            feature = self.stages.get("feature")
            if feature is not None and keep:
                if features is not None:
                    logits = feature.head(features[keep])
                else:
                    batch = inputs[feature.key][keep]
                    logits = forward(self.runners["feature"], batch, self.device, self.amp)
                for i, probs in zip(keep, _calibrated(logits, feature.meta), strict=True):
                    results[i]["feature"] = probs
        return results


def _all(probs: dict[str, float]) -> bool:
    return True


def _calibrated(logits: torch.Tensor, meta: CheckpointMeta) -> list[dict[str, float]]:
    probs = torch.softmax(logits.float() / meta.temperature, dim=1).cpu().tolist()
    return [dict(zip(meta.classes, row, strict=True)) for row in probs]
