"""Labelled image folders: ``root/<class>/<image>``.

Scanning decodes every image once, so a corrupt or truncated file is reported
up front and skipped rather than failing an epoch hours into training.
"""

from __future__ import annotations

import hashlib
import io
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
from gensift.models.groups import generation_key, group_ids, perceptual_hash
from gensift.models.presets import open_rgb

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
#: max/min class count above which the user is warned about imbalance
IMBALANCE_LIMIT = 10.0
#: a class with fewer examples gets a warning before training
FEW_PER_CLASS = 30
#: from scratch on fewer images gets a warning before training
FEW_FOR_SCRATCH = 2000

#: Folders gensift writes under its output root (quarantine and review): never classes.
GENSIFT_FOLDERS = ("_rejected", "_review")

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


@dataclass(frozen=True)
class ImageInfo:
    """What one decode of an example image tells: its size, content and generation."""

    width: int
    height: int
    sha256: str
    phash: int
    generation: str | None  # generation parameters' key (see groups.py), if written


@dataclass
class FolderScan:
    """What was found under a class-folder root."""

    root: Path
    classes: list[str]
    samples: list[Sample]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    info: dict[Path, ImageInfo] = field(default_factory=dict)

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


def _inspect(path: Path) -> ImageInfo | str:
    """Decode ``path`` once: its :class:`ImageInfo`, or why it cannot be used."""
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            generation = generation_key(img)
        rgb = open_rgb(io.BytesIO(data), 64)
        return ImageInfo(
            width, height, hashlib.sha256(data).hexdigest(), perceptual_hash(rgb), generation
        )
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "skip and report"
        return f"{type(exc).__name__}: {exc}"


def scan_folder(
    root: Path,
    classes: Sequence[str] | None = None,
    *,
    classes_of: str = "the model",
    workers: int | None = None,
) -> FolderScan:
    """Find and verify the images in ``root/<class>/`` (recursively inside each class).

    ``classes`` fixes the class list and order (for validation data or for
    evaluating a checkpoint); folders not in it are an error whose message says
    they are not classes of ``classes_of``. gensift's own ``_rejected`` and
    ``_review`` folders (a sorted output root) are left out with a warning.
    Unreadable images are skipped and listed in ``FolderScan.skipped`` with a
    warning each.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    folders = []
    for path in sorted(root.iterdir()):
        if not path.is_dir() or path.name.startswith("."):
            continue
        if path.name in GENSIFT_FOLDERS:
            logger.warning(
                "{}: left out, it is gensift's own folder and not a class (to learn from its "
                "images, move them into a class folder)",
                path,
            )
            continue
        folders.append(path)
    found = [p.name for p in folders]
    check_class_names(found, str(root), at_least=2 if classes is None else 1)
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            these, them = f"folders {', '.join(unknown)} are not classes", "them"
            if len(unknown) == 1:
                these, them = f"folder {unknown[0]} is not a class", "it"
            raise DatasetError(
                f"{root}: {these} of {classes_of}, whose classes are {', '.join(classes)}; "
                f"move {them} out of {root}"
            )
    index = {name: i for i, name in enumerate(classes)}
    candidates = [
        Sample(path, index[folder.name])
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) + 2)) as pool:
        inspected = list(pool.map(lambda s: _inspect(s.path), candidates))
    samples, skipped, info = [], [], {}
    for sample, result in zip(candidates, inspected, strict=True):
        if isinstance(result, ImageInfo):
            samples.append(sample)
            info[sample.path] = result
        else:
            logger.warning("skipping unreadable image {}: {}", sample.path, result)
            skipped.append((sample.path, result))
    if not samples:
        raise DatasetError(f"{root}: no readable images (png, jpg, jpeg, webp) found")
    return FolderScan(root, list(classes), samples, skipped, info)


def data_warnings(scan: FolderScan, image_size: int, from_scratch: bool) -> list[str]:
    """What this training set cannot support, each naming the fix (logged by training)."""
    warnings = []
    counts = scan.counts()
    small = {k: v for k, v in counts.items() if v < FEW_PER_CLASS}
    if small:
        warnings.append(
            f"{scan.root}: fewer than {FEW_PER_CLASS} images in "
            + ", ".join(f"{k} ({v})" for k, v in small.items())
            + ": too few to learn from or to show a threshold is safe; add examples, or train "
            "only a head (--freeze-backbone) on pretrained weights"
        )
    present = {k: v for k, v in counts.items() if v}
    if len(present) > 1 and max(present.values()) / min(present.values()) > IMBALANCE_LIMIT:
        warnings.append(
            f"{scan.root}: classes are imbalanced beyond {IMBALANCE_LIMIT:.0f}:1 ("
            + ", ".join(f"{k}={v}" for k, v in counts.items())
            + "); the loss is weighted by class frequency, but add examples of the small classes"
        )
    by_hash: dict[str, set[int]] = {}
    for s in scan.samples:
        by_hash.setdefault(scan.info[s.path].sha256, set()).add(s.label)
    clashes = [labels for labels in by_hash.values() if len(labels) > 1]
    if clashes:
        pairs = sorted({" and ".join(scan.classes[i] for i in sorted(c)) for c in clashes})
        warnings.append(
            f"{scan.root}: {len(clashes)} file(s) are in more than one class ({'; '.join(pairs)}):"
            " the model cannot be right about both; remove each from the class it is not"
        )
    undersized = [
        (i.width, i.height) for i in scan.info.values() if min(i.width, i.height) < image_size
    ]
    if undersized:
        w, h = min(undersized, key=lambda wh: wh[0] * wh[1])
        warnings.append(
            f"{scan.root}: {len(undersized)} image(s) are smaller than --image-size {image_size} "
            f"(the smallest {w}x{h}) and are scaled up; a smaller --image-size loses nothing"
        )
    if from_scratch and len(scan.samples) < FEW_FOR_SCRATCH:
        warnings.append(
            f"training from scratch (--weights none) on {len(scan.samples)} images: a network "
            f"learns little from fewer than a few thousand; pretrained weights (--weights "
            "imagenet, or --weights PATH offline) with --freeze-backbone learn far more from few"
        )
    return warnings


@dataclass(frozen=True)
class Split:
    """Training images, and two held-out parts: one early stopping chooses on, one it never saw.

    ``selection`` picks the epoch; ``calibration`` (untouched by that choice) fits the
    temperature and threshold, and is what the gate and the report's figures rest on.
    """

    train: list[Sample]
    selection: list[Sample]
    calibration: list[Sample]
    groups: int

    def summary(self) -> dict[str, int | str]:
        return {
            "method": "grouped (generation parameters and near-duplicates), stratified, seeded",
            "groups": self.groups,
            "train": len(self.train),
            "selection": len(self.selection),
            "calibration": len(self.calibration),
        }


def _groups(scan: FolderScan, samples: Sequence[Sample]) -> dict[int, list[Sample]]:
    infos = [scan.info[s.path] for s in samples]
    ids = group_ids([i.generation for i in infos], [i.phash for i in infos])
    members: dict[int, list[Sample]] = {}
    for sample, gid in zip(samples, ids, strict=True):
        members.setdefault(gid, []).append(sample)
    return members


def _primary(members: Sequence[Sample]) -> int:
    return Counter(s.label for s in members).most_common(1)[0][0]


def _take(groups: list[list[Sample]], quota: int) -> list[Sample]:
    """Groups (removed from ``groups``) that fill ``quota`` images without overshooting it,
    in their (shuffled) order; the smallest group if none fits."""
    taken: list[Sample] = []
    for g in list(groups):
        if len(taken) + len(g) <= quota:
            taken.extend(g)
            groups.remove(g)
        if len(taken) >= quota:
            break
    if not taken and groups:
        smallest = min(groups, key=len)
        groups.remove(smallest)
        taken = list(smallest)
    return taken


def group_split(
    scan: FolderScan,
    val_fraction: float,
    seed: int,
    held_out: FolderScan | None = None,
) -> Split:
    """Split by groups (variants of one generation stay on one side), per class, seeded.

    ``val_fraction`` of each class is held out, half for selection and half (the odd
    image) for calibration. With ``held_out`` (``--val-data``) all of ``scan`` trains and
    ``held_out`` is split into selection and calibration the same way.
    """
    if held_out is None and not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"--val-split must be between 0 and 1, got {val_fraction}")
    rng = random.Random(seed)
    source = held_out or scan
    groups = _groups(source, source.samples)
    train: list[Sample] = list(scan.samples) if held_out is not None else []
    selection: list[Sample] = []
    calibration: list[Sample] = []
    for label, name in enumerate(scan.classes):
        own = [g for g in groups.values() if _primary(g) == label]
        rng.shuffle(own)
        size = sum(len(g) for g in own)
        where = f"{source.root}/{name}"
        if held_out is not None:
            if len(own) < 2:
                raise DatasetError(
                    f"{where}: {size} validation image(s) in {len(own)} group(s); each class "
                    "needs at least 2 distinct images there (one for early stopping, one for "
                    "calibration)"
                )
            calibration += _take(own, size - size // 2)
            selection += [s for g in own for s in g]
            continue
        if len(own) < 3:
            raise DatasetError(
                f"{where}: {size} readable image(s) in {len(own)} group(s) of distinct "
                "pictures; each class needs at least 3 (to train on, for early stopping and "
                "for calibration): add examples or pass --val-data DIR"
            )
        held = min(size - 1, max(2, round(size * val_fraction)))
        calibration += _take(own, held - held // 2)
        selection += _take(own, held // 2)
        train += [s for g in own for s in g]
    return Split(train, selection, calibration, len(groups))


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
