"""Labelled image folders: ``root/<class>/<image>``.

Scanning decodes every image once, so a corrupt or truncated file is reported
up front and skipped rather than failing an epoch hours into training.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from loguru import logger
from PIL import Image
from torch.utils.data import Dataset

from gensift.models.errors import InputError
from gensift.models.presets import open_rgb

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
#: max/min class count above which the user is warned about imbalance
IMBALANCE_WARNING_RATIO = 5.0

_WINDOWS_RESERVED = re.compile(r"^(CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9])(\..*)?$", re.IGNORECASE)
_FORBIDDEN_CHARS = set('/\\:*?"<>|')


class DatasetError(InputError):
    """The example folders cannot be used for training; the message says why and where."""


def class_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a class (it becomes a folder under the output root), or None."""
    if not name or not name.strip():
        return "is empty"
    if name in (".", ".."):
        return "is a relative path component"
    if any(c in _FORBIDDEN_CHARS for c in name) or any(ord(c) < 32 for c in name):
        return r"contains a path separator or a character not allowed in folder names (/\:*?\"<>|)"
    if name.startswith("_"):
        return "starts with '_', which gensift reserves for its own folders (_rejected, _review)"
    if name.startswith("."):
        return "starts with '.', which makes a hidden folder"
    if name != name.strip() or name.endswith("."):
        return "starts or ends with a space, or ends with '.' (not portable to Windows)"
    if _WINDOWS_RESERVED.match(name):
        return "is a reserved device name on Windows"
    if len(name.encode()) > 100:
        return "is longer than 100 bytes"
    return None


def check_class_names(names: Sequence[str], where: str, *, at_least: int = 2) -> None:
    """Refuse unsafe, duplicate or too few class names; ``where`` names the source in errors."""
    for name in names:
        problem = class_name_problem(name)
        if problem:
            raise DatasetError(f"{where}: class name {name!r} {problem}; rename it")
    folded = Counter(n.casefold() for n in names)
    dupes = sorted(n for n in names if folded[n.casefold()] > 1)
    if dupes:
        raise DatasetError(f"{where}: class names differ only by case: {', '.join(dupes)}")
    if len(names) < at_least:
        raise DatasetError(
            f"{where}: found {len(names)} class folder(s); at least {at_least} are needed"
        )


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class FolderScan:
    """What was found under a class-folder root."""

    root: Path
    classes: list[str]
    samples: list[Sample]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        c = Counter(s.label for s in self.samples)
        return {name: c.get(i, 0) for i, name in enumerate(self.classes)}

    def fingerprint(self) -> str:
        """Hash of relative paths, sizes and labels: identifies the training data."""
        h = hashlib.sha256()
        for s in sorted(self.samples, key=lambda s: s.path):
            rel = s.path.relative_to(self.root).as_posix()
            h.update(f"{rel}\0{s.path.stat().st_size}\0{self.classes[s.label]}\n".encode())
        return h.hexdigest()[:16]


def _image_problem(path: Path) -> str | None:
    try:
        open_rgb(path, 64)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "skip and report"
        return f"{type(exc).__name__}: {exc}"
    return None


def scan_folder(
    root: Path, classes: Sequence[str] | None = None, *, workers: int | None = None
) -> FolderScan:
    """Find and verify the images in ``root/<class>/`` (recursively inside each class).

    ``classes`` fixes the class list and order (for validation data or for
    evaluating a checkpoint); folders not in it are an error. Unreadable images
    are skipped and listed in ``FolderScan.skipped`` with a warning each.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    found = [p.name for p in folders]
    check_class_names(found, str(root), at_least=2 if classes is None else 1)
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DatasetError(
                f"{root}: folders {', '.join(unknown)} are not classes of the model "
                f"({', '.join(classes)})"
            )
    index = {name: i for i, name in enumerate(classes)}
    candidates = [
        Sample(path, index[folder.name])
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) + 2)) as pool:
        problems = list(pool.map(lambda s: _image_problem(s.path), candidates))
    samples, skipped = [], []
    for sample, problem in zip(candidates, problems, strict=True):
        if problem is None:
            samples.append(sample)
        else:
            logger.warning("skipping unreadable image {}: {}", sample.path, problem)
            skipped.append((sample.path, problem))
    scan = FolderScan(root, list(classes), samples, skipped)
    _check_counts(scan)
    return scan


def _check_counts(scan: FolderScan) -> None:
    counts = scan.counts()
    if not scan.samples:
        raise DatasetError(f"{scan.root}: no readable images (png, jpg, jpeg, webp) found")
    present = {k: v for k, v in counts.items() if v}
    if len(present) > 1:
        ratio = max(present.values()) / min(present.values())
        if ratio >= IMBALANCE_WARNING_RATIO:
            logger.warning(
                "{}: classes are strongly imbalanced ({}); training weights the loss by class "
                "frequency, but more examples of the small classes would help",
                scan.root,
                ", ".join(f"{k}={v}" for k, v in counts.items()),
            )


def stratified_split(
    scan: FolderScan, val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Split each class separately (seeded) so train and validation keep its share."""
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"--val-split must be between 0 and 1, got {val_fraction}")
    rng = random.Random(seed)
    train: list[Sample] = []
    val: list[Sample] = []
    for label, name in enumerate(scan.classes):
        members = [s for s in scan.samples if s.label == label]
        if len(members) < 2:
            raise DatasetError(
                f"{scan.root}/{name}: {len(members)} readable image(s); each class needs at "
                "least 2 to hold one out for validation (or pass --val-data DIR)"
            )
        rng.shuffle(members)
        n_val = min(len(members) - 1, max(1, round(len(members) * val_fraction)))
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return train, val


class ImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """Samples decoded on access through ``transform`` (a preset)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[Image.Image], torch.Tensor],
        image_size: int,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        return self.transform(open_rgb(sample.path, self.image_size)), sample.label


def class_weights(samples: Sequence[Sample], num_classes: int) -> torch.Tensor:
    """Inverse-frequency loss weights, normalised to mean 1 over the classes present."""
    counts = torch.zeros(num_classes)
    for s in samples:
        counts[s.label] += 1
    weights = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp(min=1)), 0.0)
    return weights / weights[counts > 0].mean()
