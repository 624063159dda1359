"""Train ``gensift train`` from scratch on real data nobody here wrote.

scikit-learn ships the UCI handwritten digits: 1,797 greyscale images of 8x8
pixels in ten classes. This script writes them out as PNG class folders
(``0/`` ... ``9/``), trains the feature stage on them with the installed
``gensift`` command on the CPU (ResNet-18, random initialisation, 32 px
inputs), and prints the validation accuracy, the time it took and where the
report is. The target is at least 97 % validation accuracy.

    python benchmarks/digits.py [--dir DIR] [--epochs N] [--device cpu]

Not run by CI. Needs scikit-learn (``pip install -e '.[bench]'``); ``make digits`` does both.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

TARGET_ACCURACY = 0.97


def write_digits(root: Path) -> int:
    """Write every digit as ``root/<label>/<index>.png`` (8x8, 8-bit grey); returns the count."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(image * (255 / 16), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{index:04d}.png")
    return len(digits.images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="work folder (default: a new temporary one)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args(argv)

    work = args.dir or Path(tempfile.mkdtemp(prefix="gensift-digits-"))
    data = work / "digits"
    count = write_digits(data)
    checkpoint = work / "digits.safetensors"
    command = [
        sys.executable, "-m", "gensift.daemon.cli", "train", "feature",
        "--data", str(data), "--out", str(checkpoint),
        "--arch", args.arch, "--weights", "none", "--image-size", str(args.image_size),
        "--epochs", str(args.epochs), "--patience", "8", "--batch-size", "64", "--lr", "3e-3",
        "--device", args.device,
    ]  # fmt: skip
    print(f"{count} digit images written to {data}")
    print("running:", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started

    report = checkpoint.with_name(checkpoint.stem + ".report")
    metrics = json.loads((report / "metrics.json").read_text())
    epochs = len(metrics["history"])
    per_epoch = sum(r["seconds"] for r in metrics["history"]) / max(1, epochs)
    accuracy = metrics["val_accuracy"]
    print(
        f"\ndigits: validation accuracy {accuracy:.4f} on {metrics['count']} held-out images "
        f"(target {TARGET_ACCURACY}); {epochs} epochs, {per_epoch:.1f} s/epoch, "
        f"{seconds:.0f} s in all on {metrics['device']}; report: {report}"
    )
    return 0 if accuracy >= TARGET_ACCURACY else 1


if __name__ == "__main__":
    sys.exit(main())
