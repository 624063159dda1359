"""Training one stage: data -> model -> calibration -> candidate -> gate -> publish.

Three recipes, by where the backbone's weights come from (README "Training"):

* **pretrained** (``--weights imagenet|PATH`` or ``--init-from``): one epoch of
  head warm-up with the backbone frozen (its BatchNorm statistics kept), then
  everything with AdamW, the backbone at a tenth of the head's learning rate,
  for at least ``min_steps`` (300) optimiser steps, so that a few dozen images
  are not a dozen steps.
* **scratch** (``--weights none``): one learning rate for every layer, and at
  least ``min_steps`` optimiser steps in all however few the images (each epoch
  then passes over the data several times, in smaller batches where the data is
  small). Before each validation the BatchNorm statistics are recomputed over the
  training images as evaluation sees them (no augmentation, exact averages): with
  a few dozen steps the running averages still describe the random initial
  network, and evaluation would see a different model from the one that trained.
* **frozen** (``--freeze-backbone``): backbone features computed once (each
  training image and its mirror), only the head trains, a minute on a CPU.

All three use a cosine (or one-cycle) schedule with linear warm-up, label
smoothing, gradient clipping and class-frequency loss weights; mixed precision
and channels_last on CUDA. The epoch kept is the one with the lowest loss on the
*selection* images (accuracy breaks ties); early stopping waits ``patience``
epochs and never ends a run before half of its epochs. The temperature, the
threshold and the publish gate then use the *calibration* images, which that
choice never saw (``data.group_split``).

Training writes a *candidate* beside the destination; :mod:`gate` judges it and
:mod:`publish` puts it in place, keeping the file it replaces as a version.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains its shard with
DistributedDataParallel (NCCL on GPUs, gloo on CPUs); rank 0 calibrates and
writes the checkpoint and report.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from loguru import logger
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import (
    ConcatDataset,
    DataLoader,
    DistributedSampler,
    RandomSampler,
    TensorDataset,
)
from tqdm import tqdm

from gensift.models.backbones import (
    ARCHITECTURES,
    Classifier,
    backbone_digest,
    build_classifier,
    normalization_for,
)
from gensift.models.batches import eval_loader, forward_batches
from gensift.models.calibrate import (
    DEFAULT_TARGET_PRECISION,
    calibrated_probs,
    choose_threshold,
    fit_temperature,
    nll,
)
from gensift.models.checkpoint import (
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    CheckpointError,
    CheckpointMeta,
    load_classifier,
    read_checkpoint,
    save_checkpoint,
)
from gensift.models.data import (
    DatasetError,
    FolderScan,
    ImageDataset,
    Sample,
    Split,
    class_weights,
    data_warnings,
    group_split,
    scan_folder,
)
from gensift.models.device import autocast_dtype, precision_name, resolve_device
from gensift.models.errors import InputError
from gensift.models.evaluate import score_model
from gensift.models.gate import Judged, Verdict, judge
from gensift.models.predictor import forward
from gensift.models.presets import EvalPreset, Stage, TrainPreset
from gensift.models.publish import candidate_for, discard_candidate, install, report_dir_for
from gensift.models.report import EpochRecord, write_report

#: from scratch, a run takes at least this many optimiser steps, however few the images
MIN_STEPS_FROM_SCRATCH = 1000
#: fine-tuning pretrained weights needs fewer, but more than 12 epochs of 24 images make
MIN_STEPS_PRETRAINED = 300
#: ... and each pass over the data at least this many (in batches no smaller than 8)
MIN_STEPS_PER_PASS, MIN_BATCH = 8, 8
#: BatchNorm statistics are recomputed over at most this many training images
PRECISE_BN_IMAGES = 1024

Regime = Literal["pretrained", "scratch", "frozen"]


@dataclass(frozen=True)
class TrainOptions:
    stage: Stage
    data: Path
    out: Path
    report: Path | None = None
    val_data: Path | None = None
    val_split: float = 0.2
    arch: str = "resnet50"
    weights: str = "imagenet"
    init_from: Path | None = None
    epochs: int | None = None  # None: 10, or 60 with freeze_backbone
    warmup_epochs: int | None = None  # None: 1 from pretrained/init-from weights, else 0
    batch_size: int = 32
    image_size: int = 224
    lr: float = 1e-3
    backbone_lr_scale: float | None = None  # None: 0.1 from pretrained weights, else 1
    min_steps: int | None = None  # None: MIN_STEPS_FROM_SCRATCH / _PRETRAINED, frozen 0
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    patience: int | None = None  # None: 3, or 10 with freeze_backbone
    schedule: Literal["cosine", "onecycle"] = "cosine"
    freeze_backbone: bool = False
    target_precision: float | None = None
    target_classes: Sequence[str] | None = None  # quality: the reject classes
    device: str = "auto"
    workers: int | None = None
    seed: int = 0
    force: bool = False  # publish even if the gate refuses
    data_source: Path | None = None  # the examples ``data`` is a view of (gensift retrain)


@dataclass(frozen=True)
class Recipe:
    """How one run trains, derived from the options and the regime (module doc)."""

    regime: Regime
    epochs: int
    warmup_epochs: int
    patience: int
    backbone_lr_scale: float
    min_steps: int
    precise_bn: bool

    @classmethod
    def for_options(cls, opts: TrainOptions) -> Recipe:
        if opts.freeze_backbone:
            regime: Regime = "frozen"
        elif opts.init_from is not None or opts.weights != "none":
            regime = "pretrained"
        else:
            regime = "scratch"
        epochs = opts.epochs if opts.epochs is not None else (60 if regime == "frozen" else 10)
        warmup = (
            opts.warmup_epochs if opts.warmup_epochs is not None else int(regime == "pretrained")
        )
        default_patience = 10 if regime == "frozen" else 3
        default_steps = {
            "scratch": MIN_STEPS_FROM_SCRATCH,
            "pretrained": MIN_STEPS_PRETRAINED,
            "frozen": 0,
        }
        scratch = regime == "scratch"
        return cls(
            regime=regime,
            epochs=epochs,
            warmup_epochs=min(epochs, warmup) if regime != "frozen" else 0,
            patience=opts.patience if opts.patience is not None else default_patience,
            backbone_lr_scale=opts.backbone_lr_scale
            if opts.backbone_lr_scale is not None
            else (1.0 if scratch else 0.1),
            min_steps=opts.min_steps if opts.min_steps is not None else default_steps[regime],
            precise_bn=scratch,
        )

    def describe(self) -> str:
        parts = [f"{self.regime} recipe", f"{self.epochs} epochs"]
        if self.warmup_epochs:
            parts.append(f"{self.warmup_epochs} head warm-up")
        if self.min_steps:
            parts.append(f"at least {self.min_steps} steps")
        return ", ".join(parts)


@dataclass
class TrainResult:
    checkpoint: Path  # where the model is now: the destination if published, else the candidate
    meta: CheckpointMeta
    report_dir: Path
    metrics: dict[str, Any]
    verdict: Verdict
    published: bool


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class _Best:
    """The epoch with the lowest selection loss so far (higher accuracy breaks ties)."""

    loss: float = math.inf
    accuracy: float = -1.0
    epoch: int = 0
    state: dict[str, torch.Tensor] = field(default_factory=dict)

    def offer(self, epoch: int, accuracy: float, loss: float, model: nn.Module) -> bool:
        if (-loss, accuracy) <= (-self.loss, self.accuracy):
            return False
        self.accuracy, self.loss, self.epoch = accuracy, loss, epoch
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return True


def check_options(opts: TrainOptions) -> None:
    """Refuse options that cannot train, before any data is read (InputError: exit 2)."""
    if opts.epochs is not None and opts.epochs < 1:
        raise InputError(f"--epochs must be at least 1, got {opts.epochs}")
    if opts.arch not in ARCHITECTURES:
        raise InputError(
            f"unknown architecture {opts.arch!r}; choose one of {', '.join(ARCHITECTURES)}"
        )
    size = opts.image_size
    if not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise InputError(
            f"--image-size {size}: must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels"
        )
    # one forward pass of a dummy batch on the meta device: shapes only, no memory, no time
    with torch.device("meta"):
        model = build_classifier(opts.arch, 2, "none")
        try:
            model.train()(torch.zeros(2, 3, size, size))
        except RuntimeError as exc:
            raise InputError(
                f"--image-size {size} is too small for {opts.arch} "
                f"({str(exc).splitlines()[0]}); try a larger one"
            ) from exc


def train(opts: TrainOptions) -> TrainResult | None:
    """Train one stage; returns the result on rank 0 and None on other ranks."""
    started = time.monotonic()
    check_options(opts)
    recipe = Recipe.for_options(opts)
    ddp = _init_distributed(opts.device)
    try:
        torch.manual_seed(opts.seed)
        device = resolve_device(opts.device, ddp.local_rank)
        scan, split = _load_data(opts)
        targets = _target_classes(opts, scan.classes)
        warnings = data_warnings(scan, opts.image_size, recipe.regime == "scratch")
        model, init_note = _build_model(opts, len(scan.classes), scan.classes)
        if ddp.main:
            for warning in warnings:
                logger.warning("{}", warning)
            logger.info(
                "training {} stage: {} classes ({}), {} train / {} selection / {} calibration "
                "images in {} groups, {}{} on {} {}; {}{}",
                opts.stage,
                len(scan.classes),
                ", ".join(f"{k}={v}" for k, v in scan.counts().items()),
                len(split.train),
                len(split.selection),
                len(split.calibration),
                split.groups,
                opts.arch,
                init_note,
                device,
                precision_name(autocast_dtype(device)),
                recipe.describe(),
                f", {ddp.world} processes" if ddp.world > 1 else "",
            )
        trainer = _Trainer(opts, recipe, ddp, device, model, scan.classes, split)
        history, cal_logits, cal_labels = trainer.fit()
        if not ddp.main:
            return None
        return _finish(
            opts,
            model,
            scan,
            split,
            targets,
            history,
            cal_logits,
            cal_labels,
            device,
            warnings,
            extra={
                "device": str(device),
                "processes": ddp.world,
                "best_epoch": trainer.best.epoch,
                "seconds": round(time.monotonic() - started, 1),
                "init": init_note.strip(", ") or "none",
                "recipe": {**recipe.__dict__, "batch_size": trainer.batch_size},
            },
        )
    finally:
        if ddp.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def _init_distributed(device_spec: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_nccl = device_spec != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_nccl else "gloo")
    if use_nccl:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    if rank != 0:
        logger.remove()
        logger.add(sys.stderr, level="WARNING")
    return _Dist(rank, world, local_rank)


def _load_data(opts: TrainOptions) -> tuple[FolderScan, Split]:
    scan = scan_folder(opts.data)
    if opts.val_data is None:
        return scan, group_split(scan, opts.val_split, opts.seed)
    val_scan = scan_folder(opts.val_data, scan.classes, classes_of=f"--data {opts.data}")
    scan.skipped.extend(val_scan.skipped)
    return scan, group_split(scan, opts.val_split, opts.seed, held_out=val_scan)


def _target_classes(opts: TrainOptions, classes: Sequence[str]) -> list[str]:
    if opts.stage == "feature" or opts.target_classes is None:
        return list(classes)
    missing = [c for c in opts.target_classes if c not in classes]
    if missing:
        raise DatasetError(
            f"{opts.data}: the quality stage's reject classes {missing} (config "
            f"stages.quality.reject_classes) have no folder; found {', '.join(classes)}"
        )
    return list(opts.target_classes)


def _build_model(
    opts: TrainOptions, num_classes: int, classes: Sequence[str]
) -> tuple[Classifier, str]:
    if opts.init_from is None:
        return build_classifier(opts.arch, num_classes, opts.weights), f", weights {opts.weights}"
    tensors, meta = read_checkpoint(opts.init_from)
    if meta.arch != opts.arch:
        raise DatasetError(
            f"--init-from {opts.init_from}: a {meta.arch} checkpoint, but --arch is {opts.arch}"
        )
    model = build_classifier(opts.arch, num_classes, "none")
    keep_head = list(meta.classes) == list(classes)
    state = {k: v for k, v in tensors.items() if keep_head or k.startswith("backbone.")}
    model.load_state_dict(state, strict=keep_head)
    what = "backbone and head" if keep_head else "backbone"
    return model, f", {what} from {opts.init_from.name} ({meta.id})"


def _workers(opts: TrainOptions, device: torch.device) -> int:
    if opts.workers is not None:
        return opts.workers
    cpus = os.cpu_count() or 1
    return min(8, cpus - 1) if device.type == "cuda" else (0 if cpus <= 2 else 2)


def adamw(
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    lr: float,
    weight_decay: float,
    device: torch.device,
) -> torch.optim.AdamW:
    """AdamW, fused into one kernel on the CPU and CUDA: on the CPU torch otherwise loops
    over the tensors one by one, 3-6x slower a step (ResNet-18: 46 against 8 ms)."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)


class _Trainer:
    """The fit loop: warm-up and fine-tuning, or head-only on cached features."""

    def __init__(
        self,
        opts: TrainOptions,
        recipe: Recipe,
        ddp: _Dist,
        device: torch.device,
        model: Classifier,
        classes: Sequence[str],
        split: Split,
    ) -> None:
        self.opts, self.recipe, self.ddp, self.device = opts, recipe, ddp, device
        self.model = model.to(device).eval()
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.classes = classes
        self.split = split
        self.amp = autocast_dtype(device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp is torch.float16)
        weights = class_weights(split.train, len(classes)).to(device)
        self.criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=opts.label_smoothing)
        self.val_criterion = nn.CrossEntropyLoss(reduction="sum")
        self.best = _Best()
        self.history: list[EpochRecord] = []
        self.workers = _workers(opts, device)
        self.norm = normalization_for(opts.weights)
        self.show = ddp.main and sys.stderr.isatty()
        self.batch_size = self._batch_size()

    # -- public -------------------------------------------------------------

    def fit(self) -> tuple[list[EpochRecord], torch.Tensor, torch.Tensor]:
        """Train; the model then holds the best epoch. Returns calibration logits on rank 0."""
        if self.recipe.regime == "frozen":
            return self._fit_head_on_features()
        recipe = self.recipe
        epochs, warmup = recipe.epochs, recipe.warmup_epochs
        loader, sampler = self._train_loader()
        epoch = 0
        if warmup:
            self._set_backbone_trainable(False)
            optimizer = adamw(
                self.model.head.parameters(), self.opts.lr, self.opts.weight_decay, self.device
            )
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
            for _ in range(warmup):
                epoch += 1
                self._epoch(epoch, "warmup", loader, sampler, optimizer, scheduler)
        if epochs > warmup:
            self._set_backbone_trainable(True)
            optimizer = adamw(
                [
                    {
                        "params": self.model.backbone.parameters(),
                        "lr": self.opts.lr * recipe.backbone_lr_scale,
                    },
                    {"params": self.model.head.parameters(), "lr": self.opts.lr},
                ],
                self.opts.lr,
                self.opts.weight_decay,
                self.device,
            )
            scheduler = self._schedule(optimizer, (epochs - warmup) * len(loader))
            for _ in range(epochs - warmup):
                epoch += 1
                self._epoch(epoch, "finetune", loader, sampler, optimizer, scheduler)
                if self._should_stop(epoch):
                    break
        self.model.load_state_dict(self.best.state)
        if not self.ddp.main:
            return self.history, torch.empty(0), torch.empty(0)
        preset = EvalPreset(self.opts.image_size, self.norm)
        loader = eval_loader(
            self.split.calibration, preset, self.opts.batch_size, self.workers, self.device
        )
        logits, labels = forward_batches(
            self.model, loader, self.device, desc="calibration", show_progress=self.show
        )
        return self.history, logits, labels

    def _should_stop(self, epoch: int) -> bool:
        """Early stopping: ``patience`` epochs without a better one, but never in the first half."""
        waited = epoch - self.best.epoch
        if epoch < math.ceil(self.recipe.epochs / 2) or waited < self.recipe.patience:
            return False
        if self.ddp.main:
            logger.info("early stop: no lower selection loss for {} epochs", waited)
        return True

    # -- fine-tuning --------------------------------------------------------

    def _batch_size(self) -> int:
        """The batch size; from scratch on few images, small enough for several steps a pass."""
        if self.recipe.regime != "scratch" or not self.recipe.min_steps:
            return self.opts.batch_size
        per_rank = len(self.split.train) // self.ddp.world
        return max(1, min(self.opts.batch_size, max(MIN_BATCH, per_rank // MIN_STEPS_PER_PASS)))

    def _passes(self) -> int:
        """Passes over the data per epoch, so that the run takes at least ``min_steps`` steps."""
        per_rank = len(self.split.train) // self.ddp.world
        steps_per_pass = max(1, per_rank // self.batch_size)
        total = (self.recipe.epochs - self.recipe.warmup_epochs) * steps_per_pass
        if not self.recipe.min_steps or total <= 0:
            return 1
        return max(1, math.ceil(self.recipe.min_steps / total))

    def _train_loader(self) -> tuple[DataLoader, DistributedSampler | None]:
        images = ImageDataset(
            self.split.train,
            TrainPreset(self.opts.image_size, self.norm, self.opts.stage),
            self.opts.image_size,
        )
        # an "epoch" of small data is several passes, each image freshly augmented each time
        dataset = ConcatDataset([images] * self._passes())
        batch = self.batch_size
        drop_last = len(dataset) > batch * self.ddp.world
        sampler: DistributedSampler | RandomSampler
        if self.ddp.world > 1:
            sampler = DistributedSampler(
                dataset, self.ddp.world, self.ddp.rank, shuffle=True, seed=self.opts.seed
            )
        else:
            sampler = RandomSampler(
                dataset, generator=torch.Generator().manual_seed(self.opts.seed)
            )
        loader = DataLoader(
            dataset,
            batch_size=batch,
            sampler=sampler,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.workers > 0,
            drop_last=drop_last,
        )
        return loader, sampler if isinstance(sampler, DistributedSampler) else None

    def _recompute_batchnorm(self) -> None:
        """Exact BatchNorm statistics of the training images as evaluation sees them."""
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        samples = self.split.train[: PRECISE_BN_IMAGES * self.ddp.world]
        shard = samples[self.ddp.rank :: self.ddp.world]
        batch = self.batch_size
        loader = DataLoader(
            ImageDataset(shard, EvalPreset(self.opts.image_size, self.norm), self.opts.image_size),
            batch_size=batch,
            num_workers=self.workers,
            drop_last=len(shard) > batch,  # a batch of one has no variance to measure
        )
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches, not a decayed one
        self.model.train()
        with torch.no_grad():
            for images, _ in loader:
                forward(self.model, images, self.device, self.amp)
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
            if self.ddp.world > 1:
                for buffer in (m.running_mean, m.running_var):
                    if buffer is not None:
                        dist.all_reduce(buffer)
                        buffer /= self.ddp.world

    def _set_backbone_trainable(self, trainable: bool) -> None:
        for p in self.model.backbone.parameters():
            p.requires_grad_(trainable)
        # DDP registers only parameters that need gradients, so wrap anew per phase.
        self.wrapped: nn.Module = (
            DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            if self.ddp.world > 1
            else self.model
        )

    def _schedule(
        self, optimizer: torch.optim.Optimizer, total_steps: int
    ) -> torch.optim.lr_scheduler.LRScheduler:
        total_steps = max(1, total_steps)
        if self.opts.schedule == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=[g["lr"] for g in optimizer.param_groups],
                total_steps=total_steps,
                pct_start=0.1,
            )
        warm = max(1, total_steps // 20)

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            progress = (step - warm) / max(1, total_steps - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def _epoch(
        self,
        epoch: int,
        phase: str,
        loader: DataLoader,
        sampler: DistributedSampler | None,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> None:
        started = time.monotonic()
        if sampler is not None:
            sampler.set_epoch(epoch)
        self.model.train()
        if phase == "warmup":
            self.model.backbone.eval()  # keep pretrained BatchNorm statistics
        sums = torch.zeros(3, dtype=torch.float64)  # loss * n, correct, n
        bar = tqdm(loader, desc=f"epoch {epoch} {phase}", leave=False) if self.show else None
        for images, labels in bar or loader:
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            if self.device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(
                self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None
            ):
                logits = self.wrapped(images)
                loss = self.criterion(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], self.opts.grad_clip
            )
            self.scaler.step(optimizer)
            self.scaler.update()
            scheduler.step()
            n = len(labels)
            sums += torch.tensor(
                [float(loss.detach()) * n, float((logits.argmax(1) == labels).sum()), n],
                dtype=torch.float64,
            )
            if bar is not None:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        train_loss, train_acc = self._reduce(sums)
        if self.recipe.precise_bn and phase == "finetune":
            self._recompute_batchnorm()
        val_loss, val_acc = self._validate()
        self._record(epoch, phase, train_loss, train_acc, val_loss, val_acc, optimizer, started)

    def _validate(self) -> tuple[float, float]:
        """Loss and accuracy on the selection images; each process takes every world-th one."""
        shard = self.split.selection[self.ddp.rank :: self.ddp.world]
        preset = EvalPreset(self.opts.image_size, self.norm)
        loader = eval_loader(shard, preset, self.opts.batch_size, self.workers, self.device)
        logits, labels = forward_batches(self.model, loader, self.device)
        return self._sums_of(logits, labels)

    def _sums_of(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        sums = torch.tensor(
            [
                float(self.val_criterion(logits, labels)) if len(labels) else 0.0,
                float((logits.argmax(1) == labels).sum()) if len(labels) else 0.0,
                len(labels),
            ],
            dtype=torch.float64,
        )
        return self._reduce(sums)

    def _reduce(self, sums: torch.Tensor) -> tuple[float, float]:
        if self.ddp.world > 1:
            dist.all_reduce(sums)
        n = max(1.0, float(sums[2]))
        return float(sums[0]) / n, float(sums[1]) / n

    def _record(
        self,
        epoch: int,
        phase: str,
        train_loss: float,
        train_acc: float,
        val_loss: float,
        val_acc: float,
        optimizer: torch.optim.Optimizer,
        started: float,
    ) -> None:
        better = self.best.offer(epoch, val_acc, val_loss, self.model)
        record = EpochRecord(
            epoch=epoch,
            phase=phase,
            train_loss=train_loss,
            train_accuracy=train_acc,
            val_loss=val_loss,
            val_accuracy=val_acc,
            lr=float(optimizer.param_groups[-1]["lr"]),
            seconds=round(time.monotonic() - started, 2),
        )
        self.history.append(record)
        if self.ddp.main:
            logger.info(
                "epoch {:>3} {:<8} train loss {:.4f} acc {:.3f} | val loss {:.4f} acc {:.3f} | "
                "{:.1f}s{}",
                epoch,
                phase,
                train_loss,
                train_acc,
                val_loss,
                val_acc,
                record.seconds,
                "  *best" if better else "",
            )

    # -- head only, on cached backbone features -----------------------------

    def _features(self, samples: list[Sample], mirrored: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features of ``samples`` (and their mirror images), gathered on every rank."""
        preset = EvalPreset(self.opts.image_size, self.norm)
        shard = samples[self.ddp.rank :: self.ddp.world]
        loader = eval_loader(shard, preset, self.opts.batch_size, self.workers, self.device)
        backbone = self.model.backbone
        if mirrored:
            backbone = nn.Sequential(_Mirror(), backbone)
        feats, labels = forward_batches(
            backbone, loader, self.device, desc="features", show_progress=self.show
        )
        if self.ddp.world > 1:
            gathered: list[Any] = [None] * self.ddp.world
            dist.all_gather_object(gathered, (feats, labels))
            # Shards were samples[r::world]; put rows back in sample order.
            order = torch.cat(
                [torch.arange(len(samples))[r :: self.ddp.world] for r in range(self.ddp.world)]
            )
            rows = torch.cat([g[0] for g in gathered])
            feats, labels = torch.empty_like(rows), torch.empty(len(samples), dtype=torch.long)
            feats[order] = rows
            labels[order] = torch.cat([g[1] for g in gathered])
        return feats.cpu(), labels

    def _fit_head_on_features(self) -> tuple[list[EpochRecord], torch.Tensor, torch.Tensor]:
        epochs = self.recipe.epochs
        x1, y1 = self._features(self.split.train, mirrored=False)
        x2, y2 = self._features(self.split.train, mirrored=True)
        train_x, train_y = torch.cat([x1, x2]), torch.cat([y1, y2])
        val_x, val_y = self._features(self.split.selection, mirrored=False)
        cal_x, cal_y = self._features(self.split.calibration, mirrored=False)
        head = self.model.head.cpu()
        head.train()
        generator = torch.Generator().manual_seed(self.opts.seed)
        loader = DataLoader(
            TensorDataset(train_x, train_y),
            batch_size=max(self.opts.batch_size, 64),
            shuffle=True,
            generator=generator,
        )
        optimizer = adamw(
            head.parameters(), self.opts.lr, self.opts.weight_decay, torch.device("cpu")
        )
        scheduler = self._schedule(optimizer, epochs * len(loader))
        criterion = nn.CrossEntropyLoss(
            weight=self.criterion.weight.cpu(), label_smoothing=self.opts.label_smoothing
        )
        for epoch in range(1, epochs + 1):
            started = time.monotonic()
            sums = torch.zeros(3, dtype=torch.float64)
            for x, y in loader:
                logits = head(x)
                loss = criterion(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(head.parameters(), self.opts.grad_clip)
                optimizer.step()
                scheduler.step()
                sums += torch.tensor(
                    [float(loss.detach()) * len(y), float((logits.argmax(1) == y).sum()), len(y)],
                    dtype=torch.float64,
                )
            with torch.no_grad():
                val_logits = head(val_x)
            val_loss = float(self.val_criterion(val_logits, val_y)) / max(1, len(val_y))
            val_acc = float((val_logits.argmax(1) == val_y).float().mean()) if len(val_y) else 0.0
            n = max(1.0, float(sums[2]))
            self._record(
                epoch,
                "head",
                float(sums[0]) / n,
                float(sums[1]) / n,
                val_loss,
                val_acc,
                optimizer,
                started,
            )
            if self._should_stop(epoch):
                break
        self.model.to("cpu").load_state_dict({k: v.cpu() for k, v in self.best.state.items()})
        with torch.no_grad():
            return self.history, self.model.head(cal_x), cal_y


class _Mirror(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flip(x, dims=[3])


def _live_judged(
    opts: TrainOptions, classes: Sequence[str], samples: Sequence[Sample], device: torch.device
) -> tuple[Judged | None, list[str]]:
    """The live checkpoint at the destination scored on ``samples``, or why it is not compared."""
    if not opts.out.is_file():
        return None, ["no checkpoint at the destination yet: compared with chance only"]
    try:
        model, meta = load_classifier(opts.out)
    except CheckpointError as exc:
        return None, [
            f"the checkpoint at the destination cannot be read ({exc}): it is kept as "
            "a version, and the candidate is compared with chance only"
        ]
    if meta.stage != opts.stage or list(meta.classes) != list(classes):
        return None, [
            f"the live checkpoint {meta.id} has other classes ({', '.join(meta.classes)}): "
            "compared with chance only"
        ]
    probs = score_model(model, meta, samples, device, opts.batch_size, desc="live checkpoint")
    threshold = meta.threshold if meta.thresholds.get("reached", True) else None
    return Judged(probs, threshold, meta.id), []


def _finish(
    opts: TrainOptions,
    model: Classifier,
    scan: FolderScan,
    split: Split,
    targets: list[str],
    history: list[EpochRecord],
    cal_logits: torch.Tensor,
    cal_labels: torch.Tensor,
    device: torch.device,
    warnings: list[str],
    extra: dict[str, Any],
) -> TrainResult:
    """Calibrate, choose the threshold, judge; write the candidate and its report; publish."""
    fit = fit_temperature(cal_logits, cal_labels)
    logger.info("calibration: {}", fit.note)
    probs = calibrated_probs(cal_logits, fit.temperature).numpy()
    labels = cal_labels.numpy()
    target_precision = opts.target_precision or DEFAULT_TARGET_PRECISION[opts.stage]
    thresholds = choose_threshold(probs, labels, scan.classes, targets, target_precision)
    live, notes = _live_judged(opts, scan.classes, split.calibration, device)
    candidate_threshold = thresholds["threshold"] if thresholds["reached"] else None
    verdict = judge(scan.classes, targets, labels, Judged(probs, candidate_threshold), live, notes)
    state = {
        k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()
        for k, v in model.state_dict().items()
    }
    calibration = {
        "split": split.summary(),
        "temperature": fit.to_json(),
        "threshold_method": thresholds["method"],
        "min_count": thresholds["min_count"],
        "nll_uncalibrated": nll(cal_logits, cal_labels) if len(labels) else None,
        "nll": nll(cal_logits, cal_labels, fit.temperature) if len(labels) else None,
    }
    discard_candidate(opts.out)
    candidate = candidate_for(opts.out)
    meta = save_checkpoint(
        candidate,
        state,
        CheckpointMeta(
            stage=opts.stage,
            arch=opts.arch,
            classes=list(scan.classes),
            image_size=opts.image_size,
            normalization=normalization_for(opts.weights),
            temperature=fit.temperature,
            thresholds=thresholds,
            metrics={
                "val_accuracy": verdict.accuracy.value or 0.0,
                "val_accuracy_lower": verdict.accuracy.lower,
                "val_count": len(labels),
                "train_count": len(split.train),
                "selection_count": len(split.selection),
                "groups": split.groups,
                "gate": verdict.to_json(),
                "data": str((opts.data_source or opts.data).resolve()),
            },
            data_fingerprint=scan.fingerprint(),
            backbone_digest=backbone_digest(state),
            frozen_backbone=opts.freeze_backbone,
            calibration=calibration,
        ),
    )
    logger.info("wrote candidate checkpoint {} (id {})", candidate, meta.id)
    report_dir = opts.report or report_dir_for(candidate)
    metrics = write_report(
        report_dir,
        classes=scan.classes,
        labels=labels,
        probs=probs,
        paths=[s.path for s in split.calibration],
        accuracy_key="val_accuracy",
        temperature=fit.temperature,
        thresholds=thresholds,
        history=history,
        extra={
            **extra,
            "stage": opts.stage,
            "arch": opts.arch,
            "checkpoint": str(opts.out),
            "checkpoint_id": meta.id,
            "data": str((opts.data_source or opts.data).resolve()),
            "data_fingerprint": meta.data_fingerprint,
            "val_accuracy_interval": verdict.accuracy.to_json(),
            "split": split.summary(),
            "calibration": calibration,
            "gate": {**verdict.to_json(), "forced": opts.force and not verdict.passed},
            "warnings": warnings,
            "skipped_files": [{"path": str(p), "problem": why} for p, why in scan.skipped],
        },
    )
    logger.info("wrote report {}", report_dir)
    published = verdict.passed or opts.force
    if not published:
        return TrainResult(candidate, meta, report_dir, metrics, verdict, False)
    if not verdict.passed:
        logger.warning("the gate refused the candidate; publishing it anyway (--force)")
    install(candidate, opts.out, report_dir)
    if opts.report is None:
        discard_candidate(opts.out)
        report_dir = report_dir_for(opts.out)
    else:
        candidate.unlink(missing_ok=True)
    return TrainResult(opts.out, meta, report_dir, metrics, verdict, True)
