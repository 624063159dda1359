"""Fine-tuning one stage: data -> model -> calibration -> checkpoint -> report.

The recipe (see README "Training"):

1. **Head warm-up**: the backbone is frozen (and its BatchNorm statistics kept)
   while the fresh head learns, so large early gradients do not wreck
   pretrained features. One epoch by default when starting from pretrained
   weights or ``--init-from``; none from scratch.
2. **Fine-tuning** of everything with AdamW, the backbone at a tenth of the
   head's learning rate, a cosine (or one-cycle) schedule with linear warm-up,
   label smoothing, gradient clipping and class-frequency loss weights.
   Mixed precision and channels_last on CUDA.
3. **Early stopping** on validation accuracy (ties broken by lower loss); the
   best epoch's weights are what is saved.

``freeze_backbone`` instead computes backbone features once (each training
image and its mirror) and trains only the head on them, which takes a minute
for a few hundred images on a CPU.

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
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, TensorDataset
from tqdm import tqdm

from gensift.models.backbones import (
    Classifier,
    backbone_digest,
    build_classifier,
    normalization_for,
)
from gensift.models.calibrate import (
    DEFAULT_TARGET_PRECISION,
    calibrated_probs,
    choose_threshold,
    fit_temperature,
    nll,
)
from gensift.models.checkpoint import CheckpointMeta, read_checkpoint, save_checkpoint
from gensift.models.data import (
    DatasetError,
    FolderScan,
    ImageDataset,
    Sample,
    class_weights,
    scan_folder,
    stratified_split,
)
from gensift.models.device import autocast_dtype, precision_name, resolve_device
from gensift.models.predictor import eval_loader, forward_batches
from gensift.models.presets import EvalPreset, Stage, TrainPreset
from gensift.models.report import EpochRecord, write_report


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
    backbone_lr_scale: float = 0.1
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


@dataclass
class TrainResult:
    checkpoint: Path
    meta: CheckpointMeta
    report_dir: Path
    metrics: dict[str, Any]


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
    accuracy: float = -1.0
    loss: float = math.inf
    epoch: int = 0
    state: dict[str, torch.Tensor] = field(default_factory=dict)

    def offer(self, epoch: int, accuracy: float, loss: float, model: nn.Module) -> bool:
        if (accuracy, -loss) <= (self.accuracy, -self.loss):
            return False
        self.accuracy, self.loss, self.epoch = accuracy, loss, epoch
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return True


def report_dir_for(checkpoint: Path) -> Path:
    """``models/quality.safetensors`` -> ``models/quality.report``."""
    return checkpoint.with_name(checkpoint.stem + ".report")


def train(opts: TrainOptions) -> TrainResult | None:
    """Train one stage; returns the result on rank 0 and None on other ranks."""
    started = time.monotonic()
    ddp = _init_distributed(opts.device)
    try:
        torch.manual_seed(opts.seed)
        device = resolve_device(opts.device, ddp.local_rank)
        scan, train_samples, val_samples = _load_data(opts)
        targets = _target_classes(opts, scan.classes)
        model, init_note = _build_model(opts, len(scan.classes), scan.classes)
        if ddp.main:
            logger.info(
                "training {} stage: {} classes ({}), {} train / {} val images, {}{} on {} {}{}",
                opts.stage,
                len(scan.classes),
                ", ".join(f"{k}={v}" for k, v in scan.counts().items()),
                len(train_samples),
                len(val_samples),
                opts.arch,
                init_note,
                device,
                precision_name(autocast_dtype(device)),
                f", {ddp.world} processes" if ddp.world > 1 else "",
            )
        trainer = _Trainer(opts, ddp, device, model, scan.classes, train_samples, val_samples)
        history, val_logits, val_labels = trainer.fit()
        if not ddp.main:
            return None
        return _finish(
            opts,
            model,
            scan,
            val_samples,
            targets,
            history,
            val_logits,
            val_labels,
            extra={
                "device": str(device),
                "processes": ddp.world,
                "best_epoch": trainer.best.epoch,
                "seconds": round(time.monotonic() - started, 1),
                "init": init_note.strip(", ") or "none",
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


def _load_data(opts: TrainOptions) -> tuple[FolderScan, list[Sample], list[Sample]]:
    scan = scan_folder(opts.data)
    if opts.val_data is None:
        train_samples, val_samples = stratified_split(scan, opts.val_split, opts.seed)
        return scan, train_samples, val_samples
    val_scan = scan_folder(opts.val_data, scan.classes)
    scan.skipped.extend(val_scan.skipped)
    return scan, scan.samples, val_scan.samples


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
        ddp: _Dist,
        device: torch.device,
        model: Classifier,
        classes: Sequence[str],
        train_samples: list[Sample],
        val_samples: list[Sample],
    ) -> None:
        self.opts, self.ddp, self.device = opts, ddp, device
        self.model = model.to(device).eval()
        if device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.classes = classes
        self.train_samples, self.val_samples = train_samples, val_samples
        self.amp = autocast_dtype(device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp is torch.float16)
        weights = class_weights(train_samples, len(classes)).to(device)
        self.criterion = nn.CrossEntropyLoss(weight=weights, label_smoothing=opts.label_smoothing)
        self.val_criterion = nn.CrossEntropyLoss(reduction="sum")
        self.best = _Best()
        self.history: list[EpochRecord] = []
        self.workers = _workers(opts, device)
        self.norm = normalization_for(opts.weights)
        self.show = ddp.main and sys.stderr.isatty()

    # -- public -------------------------------------------------------------

    def fit(self) -> tuple[list[EpochRecord], torch.Tensor, torch.Tensor]:
        """Train; afterwards the model holds the best epoch. Returns validation logits on rank 0."""
        if self.opts.freeze_backbone:
            return self._fit_head_on_features()
        epochs = self.opts.epochs if self.opts.epochs is not None else 10
        pretrained = self.opts.init_from is not None or self.opts.weights != "none"
        warmup = self.opts.warmup_epochs
        warmup = min(epochs, warmup if warmup is not None else int(pretrained))
        patience = self.opts.patience if self.opts.patience is not None else 3
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
                        "lr": self.opts.lr * self.opts.backbone_lr_scale,
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
                if epoch - self.best.epoch >= patience:
                    if self.ddp.main:
                        logger.info(
                            "early stop: no better validation accuracy for {} epochs", patience
                        )
                    break
        self.model.load_state_dict(self.best.state)
        if not self.ddp.main:
            return self.history, torch.empty(0), torch.empty(0)
        preset = EvalPreset(self.opts.image_size, self.norm)
        loader = eval_loader(
            self.val_samples, preset, self.opts.batch_size, self.workers, self.device
        )
        logits, labels = forward_batches(
            self.model, loader, self.device, desc="calibration", show_progress=self.show
        )
        return self.history, logits, labels

    # -- fine-tuning --------------------------------------------------------

    def _train_loader(self) -> tuple[DataLoader, DistributedSampler | None]:
        dataset = ImageDataset(
            self.train_samples,
            TrainPreset(self.opts.image_size, self.norm, self.opts.stage),
            self.opts.image_size,
        )
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
            batch_size=self.opts.batch_size,
            sampler=sampler,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.workers > 0,
            drop_last=len(dataset) > self.opts.batch_size * self.ddp.world,
        )
        return loader, sampler if isinstance(sampler, DistributedSampler) else None

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
        bar = tqdm(loader, desc=f"epoch {epoch} {phase}", leave=False, disable=not self.show)
        for images, labels in bar:
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
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        train_loss, train_acc = self._reduce(sums)
        val_loss, val_acc = self._validate()
        self._record(epoch, phase, train_loss, train_acc, val_loss, val_acc, optimizer, started)

    def _validate(self) -> tuple[float, float]:
        """Loss and accuracy on the validation set; each process takes every world-th image."""
        shard = self.val_samples[self.ddp.rank :: self.ddp.world]
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
        epochs = self.opts.epochs if self.opts.epochs is not None else 60
        patience = self.opts.patience if self.opts.patience is not None else 10
        x1, y1 = self._features(self.train_samples, mirrored=False)
        x2, y2 = self._features(self.train_samples, mirrored=True)
        train_x, train_y = torch.cat([x1, x2]), torch.cat([y1, y2])
        val_x, val_y = self._features(self.val_samples, mirrored=False)
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
            if epoch - self.best.epoch >= patience:
                break
        self.model.to("cpu").load_state_dict({k: v.cpu() for k, v in self.best.state.items()})
        with torch.no_grad():
            return self.history, self.model.head(val_x), val_y


class _Mirror(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flip(x, dims=[3])


def _finish(
    opts: TrainOptions,
    model: Classifier,
    scan: FolderScan,
    val_samples: list[Sample],
    targets: list[str],
    history: list[EpochRecord],
    val_logits: torch.Tensor,
    val_labels: torch.Tensor,
    extra: dict[str, Any],
) -> TrainResult:
    """Calibrate on validation logits, choose the threshold, save checkpoint and report."""
    temperature = fit_temperature(val_logits, val_labels)
    probs = calibrated_probs(val_logits, temperature).numpy()
    labels = val_labels.numpy()
    target_precision = opts.target_precision or DEFAULT_TARGET_PRECISION[opts.stage]
    thresholds = choose_threshold(probs, labels, scan.classes, targets, target_precision)
    state = {
        k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()
        for k, v in model.state_dict().items()
    }
    accuracy = float((probs.argmax(1) == labels).mean()) if len(labels) else 0.0
    meta = save_checkpoint(
        opts.out,
        state,
        CheckpointMeta(
            stage=opts.stage,
            arch=opts.arch,
            classes=list(scan.classes),
            image_size=opts.image_size,
            normalization=normalization_for(opts.weights),
            temperature=temperature,
            thresholds=thresholds,
            metrics={
                "val_accuracy": accuracy,
                "val_nll_uncalibrated": nll(val_logits, val_labels),
                "val_nll": nll(val_logits, val_labels, temperature),
                "val_count": len(labels),
                "train_count": len(scan.samples)
                - (len(val_samples) if opts.val_data is None else 0),
            },
            data_fingerprint=scan.fingerprint(),
            backbone_digest=backbone_digest(state),
            frozen_backbone=opts.freeze_backbone,
        ),
    )
    logger.info("wrote checkpoint {} (id {})", opts.out, meta.id)
    report_dir = opts.report or report_dir_for(opts.out)
    metrics = write_report(
        report_dir,
        classes=scan.classes,
        labels=labels,
        probs=probs,
        paths=[s.path for s in val_samples],
        accuracy_key="val_accuracy",
        temperature=temperature,
        thresholds=thresholds,
        history=history,
        extra={
            **extra,
            "stage": opts.stage,
            "arch": opts.arch,
            "checkpoint": str(opts.out),
            "checkpoint_id": meta.id,
            "data": str(opts.data),
            "data_fingerprint": meta.data_fingerprint,
            "calibration": {k: meta.metrics[k] for k in ("val_nll_uncalibrated", "val_nll")},
            "skipped_files": [{"path": str(p), "problem": why} for p, why in scan.skipped],
        },
    )
    logger.info("wrote report {}", report_dir)
    return TrainResult(opts.out, meta, report_dir, metrics)
