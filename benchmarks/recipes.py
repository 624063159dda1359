"""What each training recipe learns on small data, beside a plain loop, in one run.

For every cell of a grid -- three **datasets** x three **sizes** (images per class)
x three **regimes** -- the script trains the feature stage with the installed
``gensift train`` command and scores the result on held-out images the run never
saw. Beside each row it trains a **plain reference loop** on the same images from
the same starting weights: the kind of loop a tutorial shows (AdamW at one learning
rate, 12 epochs, batch 32, flips and crops, no validation split, no early
stopping, no calibration), scored on the same held-out images.

Datasets (ResNet-18, small inputs, CPU):

- ``digits``: scikit-learn's UCI handwritten digits (real data nobody here
  wrote: 1,797 greyscale 8x8 images, ten classes), at 32 px. The held-out
  images are the digits no training set of the run uses (about 70 a class).
- ``textures``: stripes, checks and dots in random colours (``daemon/demo/samples.py``;
  the classes of the failure that published chance), 64 px, 100 held out a class.
- ``colours``: random grey shapes on a red, green or blue ground, 64 px.

Regimes, as ``gensift train`` picks them (README "Training"):

- ``scratch``: ``--weights none``.
- ``pretrained``: full fine-tuning from pretrained weights.
- ``frozen``: ``--freeze-backbone``, a linear head on cached features.

Pretrained weights: ``--weights imagenet`` works where torchvision's file is in
torch's hub cache, ``--weights PATH`` takes a torchvision state dict. Without
either (as on a machine with no internet), the script makes a **stand-in**: a
ResNet-18 trained from scratch with ``gensift train`` on 1,800 images of the
six classes of the demo's images (three scenes; noisy, washed-out and blurred
output), used
with ``--init-from``. Its features are far weaker than ImageNet's, so the
pretrained and frozen rows then understate what real pretrained weights give; the
first line of the output says which was used.

Per cell it prints: held-out accuracy (with the number of images), whether the
gate published the candidate (every run is trained with ``--force`` so that a
refused candidate can be scored too), the threshold chosen for the 0.95 target
(``-`` where the calibration images could not show one), the 95 % lower bound of
precision and the coverage the calibration images gave it, and the precision
the threshold really had on the held-out images, with its count. The plain loop's
held-out accuracy is the last column.

    python benchmarks/recipes.py [--datasets digits,textures,colours] [--sizes 8,30,100]
        [--regimes scratch,pretrained,frozen] [--weights stand-in|imagenet|PATH]
        [--epochs 12] [--train-args "..."] [--dir DIR] [--json FILE]

Not run by CI (tens of minutes on two CPU cores: the scratch cells take at least
1,000 optimiser steps each). Needs scikit-learn for ``digits``
(``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from gensift.daemon.demo.samples import (
    COLOURS,
    FAILURES,
    SCENES,
    TEXTURES,
    colour,
    draw,
    texture,
    write_class_folders,
)
from gensift.models.backbones import Classifier, build_classifier, normalization_for
from gensift.models.calibrate import operating_point
from gensift.models.checkpoint import read_checkpoint
from gensift.models.data import ImageDataset, scan_folder
from gensift.models.evaluate import score
from gensift.models.presets import EvalPreset, TrainPreset

ARCH = "resnet18"
TARGET = 0.95
PLAIN_EPOCHS, PLAIN_LR, PLAIN_BATCH = 12, 1e-3, 32
HELD_OUT_PER_CLASS = 100
STAND_IN_PER_CLASS = 300


@dataclass(frozen=True)
class Dataset:
    name: str
    image_size: int
    pool: Path  # <class>/<file>, at least max(sizes) a class, in a fixed order
    held_out: Path  # <class>/<file>, never trained on


@dataclass
class Cell:
    dataset: str
    per_class: int
    regime: str
    accuracy: float
    held_out: int
    published: bool
    threshold: float | None
    bound: float | None
    coverage: float | None
    calibration_count: int
    held_out_precision: float | None
    held_out_acted: int
    plain_accuracy: float | None
    train_seconds: float
    plain_seconds: float


# -- data -------------------------------------------------------------------


def write_digits(pool: Path, held_out: Path, per_class: int) -> None:
    """The first ``per_class`` digits of each class into ``pool``, the rest into ``held_out``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    seen: dict[int, int] = {}
    for index, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        n = seen.get(int(label), 0)
        seen[int(label)] = n + 1
        folder = (pool if n < per_class else held_out) / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(image * (255 / 16), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{index:04d}.png")


def make_datasets(work: Path, names: Sequence[str], largest: int) -> list[Dataset]:
    made = []
    drawers: dict[str, tuple[tuple[str, ...], Callable]] = {
        "textures": (TEXTURES, texture),
        "colours": (COLOURS, colour),
    }
    for name in names:
        pool, held_out = work / name / "pool", work / name / "held-out"
        if name == "digits":
            if not pool.is_dir():
                write_digits(pool, held_out, largest)
            made.append(Dataset(name, 32, pool, held_out))
        elif name in drawers:
            kinds, drawer = drawers[name]
            if not pool.is_dir():
                write_class_folders(pool, kinds, largest, drawer, seed=1)
                write_class_folders(held_out, kinds, HELD_OUT_PER_CLASS, drawer, seed=99)
            made.append(Dataset(name, 64, pool, held_out))
        else:
            raise SystemExit(f"unknown dataset {name!r}: choose digits, textures, colours")
    return made


def subset(dataset: Dataset, per_class: int, dest: Path) -> Path:
    """Links to the first ``per_class`` images of each class of the pool."""
    if dest.is_dir():
        return dest
    for folder in sorted(p for p in dataset.pool.iterdir() if p.is_dir()):
        files = sorted(folder.iterdir())[:per_class]
        (dest / folder.name).mkdir(parents=True)
        for f in files:
            (dest / folder.name / f.name).symlink_to(f)
    return dest


# -- pretrained weights -------------------------------------------------------


def stand_in(work: Path, epochs: int) -> Path:
    """A gensift checkpoint of a ResNet-18 trained on six classes of the demo's images."""
    out = work / "stand-in" / "stand-in.safetensors"
    if out.is_file():
        return out
    rng = np.random.default_rng(7)
    root = work / "stand-in" / "data"
    shutil.rmtree(root, ignore_errors=True)
    # not "black": its images are one near-duplicate group, which the split keeps together
    for kind in (*SCENES, *(f for f in FAILURES if f != "black")):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(STAND_IN_PER_CLASS):
            draw(kind, rng, 64).save(root / kind / f"{kind}_{i:03d}.png")
    gensift_train(root, out, 64, ["--weights", "none", "--epochs", str(epochs)])
    return out


def start_flags(regime: str, weights: str, init: Path | None) -> list[str]:
    if regime == "scratch":
        return ["--weights", "none"]
    start = ["--init-from", str(init)] if init is not None else ["--weights", weights]
    return start + (["--freeze-backbone"] if regime == "frozen" else [])


def start_model(regime: str, weights: str, init: Path | None, classes: int) -> Classifier:
    """The starting point of the plain loop: the same weights the regime starts from."""
    if regime == "scratch":
        return build_classifier(ARCH, classes, "none")
    model = build_classifier(ARCH, classes, "none" if init is not None else weights)
    if init is not None:
        tensors, _ = read_checkpoint(init)
        model.load_state_dict({k: v for k, v in tensors.items() if k.startswith("backbone.")},
                              strict=False)  # fmt: skip
    return model


# -- the two ways of training -------------------------------------------------


def gensift_train(data: Path, out: Path, image_size: int, flags: list[str]) -> float:
    command = [
        sys.executable, "-m", "gensift.daemon.cli", "train", "feature",
        "--data", str(data), "--out", str(out), "--arch", ARCH,
        "--image-size", str(image_size), "--device", "cpu", "--force", *flags,
    ]  # fmt: skip
    started = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        sys.stderr.write(run.stdout + run.stderr)
        raise SystemExit(f"gensift train failed ({run.returncode}): {' '.join(command)}")
    return time.perf_counter() - started


def plain_loop(model: Classifier, data: Path, held_out: Path, image_size: int, frozen: bool
               ) -> tuple[float, float]:  # fmt: skip
    """Train ``model`` the tutorial way on every image of ``data``; held-out accuracy, seconds."""
    started = time.perf_counter()
    torch.manual_seed(0)
    norm = normalization_for("none")
    train = scan_folder(data)
    loader = DataLoader(
        ImageDataset(train.samples, TrainPreset(image_size, norm, "feature"), image_size),
        batch_size=PLAIN_BATCH,
        shuffle=True,
    )
    params = model.head.parameters() if frozen else model.parameters()
    optimizer = torch.optim.AdamW(params, lr=PLAIN_LR)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(PLAIN_EPOCHS):
        model.train()
        if frozen:
            model.backbone.eval()
        for images, labels in loader:
            optimizer.zero_grad()
            loss_fn(model(images), labels).backward()
            optimizer.step()
    test = scan_folder(held_out, train.classes)
    loader = DataLoader(
        ImageDataset(test.samples, EvalPreset(image_size, norm), image_size), batch_size=64
    )
    model.eval()
    correct = 0
    with torch.inference_mode():
        for images, labels in loader:
            correct += int((model(images).argmax(1) == labels).sum())
    return correct / len(test.samples), time.perf_counter() - started


def cell(dataset: Dataset, per_class: int, regime: str, args: argparse.Namespace,
         init: Path | None, work: Path) -> Cell:  # fmt: skip
    data = subset(dataset, per_class, work / dataset.name / f"n{per_class}")
    extra = shlex.split(args.train_args)
    tag = "".join(c for c in "-".join(extra) if c.isalnum() or c in "-.") or "default"
    out = work / dataset.name / f"{regime}-{per_class}-{tag}.safetensors"
    epochs = [] if regime == "frozen" else ["--epochs", str(args.epochs)]
    flags = start_flags(regime, args.weights, init) + epochs + extra
    seconds = gensift_train(data, out, dataset.image_size, flags)
    _, meta = read_checkpoint(out)
    test = scan_folder(dataset.held_out, meta.classes)
    probs, _ = score(out, test.samples, torch.device("cpu"))
    labels = np.array([s.label for s in test.samples])
    accuracy = float((probs.argmax(1) == labels).mean())
    t = meta.thresholds
    reached = bool(t.get("reached"))
    live = operating_point(probs, labels, meta.classes, meta.classes, t["threshold"])
    gate = meta.metrics.get("gate", {})
    plain, plain_seconds = None, 0.0
    if not args.no_plain:
        model = start_model(regime, args.weights, init, len(meta.classes))
        plain, plain_seconds = plain_loop(model, data, dataset.held_out, dataset.image_size,
                                          regime == "frozen")  # fmt: skip
    return Cell(
        dataset=dataset.name,
        per_class=per_class,
        regime=regime,
        accuracy=accuracy,
        held_out=len(test.samples),
        published=bool(gate.get("passed")),
        threshold=t["threshold"] if reached else None,
        bound=t["precision_lower"] if reached else None,
        coverage=t["coverage"] if reached else None,
        calibration_count=int(meta.metrics.get("val_count", 0)),
        held_out_precision=live["precision"] if reached else None,
        held_out_acted=live["count"] if reached else 0,
        plain_accuracy=plain,
        train_seconds=round(seconds, 1),
        plain_seconds=round(plain_seconds, 1),
    )


# -- output -------------------------------------------------------------------

HEADER = (
    "| data | n/class | regime | held-out acc | gate | threshold | bound | coverage "
    "| held-out precision at it | plain loop acc | s (gensift / plain) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def row(c: Cell) -> str:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    held = "-" if c.threshold is None else f"{c.held_out_precision or 0:.3f} ({c.held_out_acted})"
    return (
        f"| {c.dataset} | {c.per_class} | {c.regime} | {c.accuracy:.3f} ({c.held_out}) "
        f"| {'published' if c.published else 'refused'} | {f(c.threshold)} | {f(c.bound)} "
        f"| {f(c.coverage)} | {held} | {f(c.plain_accuracy)} "
        f"| {c.train_seconds:.0f} / {c.plain_seconds:.0f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="digits,textures,colours")
    parser.add_argument("--sizes", default="8,30,100", help="images per class, comma-separated")
    parser.add_argument("--regimes", default="scratch,pretrained,frozen")
    parser.add_argument(
        "--weights",
        default="stand-in",
        help="pretrained weights for the pretrained and frozen regimes: stand-in (module "
        "doc), imagenet, or a torchvision weights file",
    )
    parser.add_argument("--epochs", type=int, default=12, help="for scratch and pretrained")
    parser.add_argument(
        "--train-args",
        default="",
        help='more options for every gensift train, e.g. "--min-steps 300" (to compare recipes)',
    )
    parser.add_argument("--no-plain", action="store_true", help="skip the plain loop")
    parser.add_argument("--dir", type=Path, help="work folder (default: a new temporary one)")
    parser.add_argument("--json", type=Path, help="also write the cells here")
    args = parser.parse_args(argv)

    work = args.dir or Path(tempfile.mkdtemp(prefix="gensift-recipes-"))
    sizes = [int(s) for s in args.sizes.split(",")]
    regimes = args.regimes.split(",")
    datasets = make_datasets(work, args.datasets.split(","), max(sizes))
    init = None
    if args.weights == "stand-in" and set(regimes) - {"scratch"}:
        started = time.perf_counter()
        init = stand_in(work, args.epochs)
        print(f"stand-in pretrained weights: {init} ({time.perf_counter() - started:.0f} s)")
    print(
        f"# recipes: {ARCH}, target precision {TARGET}, weights {args.weights}"
        f"{', train args ' + args.train_args if args.train_args else ''}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; work {work}",
        flush=True,
    )
    print(HEADER, flush=True)
    cells = []
    for dataset in datasets:
        for per_class in sizes:
            for regime in regimes:
                c = cell(dataset, per_class, regime, args, init, work)
                cells.append(c)
                print(row(c), flush=True)
    if args.json:
        args.json.write_text(json.dumps([asdict(c) for c in cells], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
