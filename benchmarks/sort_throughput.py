"""How fast ``gensift sort`` sifts an archive, against the naive way and its ceilings.

The script draws ``--count`` varied PNG images (smooth gradients, random shapes
and mild noise, so decoding costs what a real generation costs and no image is
culled as blank), writes two random-initialised checkpoints of ``--arch``, and
measures, in one run, on the same files, with the same torch threads:

(a) **naive**, the way the original scripts work: one image at a time, decoded
    in the main thread, then the quality model and the feature model, two full
    models at batch 1, fp32 (channels_last, as the Keras scripts were NHWC).
    It is slow, so it times the first ``--naive-count`` images.
(b) **gensift sort** on a fresh copy of the images, in process
    (``gensift.daemon.cli.main(["sort", DIR, "-c", CONFIG])``), from loading
    the checkpoints to the last file moved and journalled.
(c) **forward ceiling**: the raw forward throughput of the same models at
    ``--batch-size`` on tensors decoded beforehand (on the device), channels_last,
    at the precision ``sort`` uses. For two fine-tuned stages that is two full
    models per image; for a shared frozen backbone it is the backbone once and
    both heads.

and the two other ceilings of (b), neither of which runs a model:

- **decode ceiling** (``benchmarks/decode_ceiling.py``): decode + resize of the
  same files on every core (``os.cpu_count()`` workers): gensift's own
  ``Decoder`` (read, hash, Pillow, blank rule, resize) in its ``DecodePool`` of
  threads and in a ``ProcessPoolExecutor`` (uint8 arrays sent back), so the
  table says whether threads or processes feed faster; and bare read + decode +
  resize with Pillow against pyspng (libspng) in threads, to say what a faster
  PNG decoder would win. pyspng and simplejpeg are optional, not gensift
  dependencies (``pip install pyspng simplejpeg``); the environment line says
  whether they are installed, and the last line whether pyspng's pixels equal
  Pillow's on these PNGs. The decode ceiling of (b) is the faster pool.
- **journal + move ceiling**: journalled moves of as many empty files through
  gensift's ``Router`` in batches of ``--batch-size`` (``Router.apply_many``, as
  ``sort`` routes them: SQLite journal, one commit for a batch's intents and one
  for its completions, ``fsync``; ``benchmarks/journal_moves.py``), the
  journal already open.

The ceilings table names the lowest of the three and gives (b) as a fraction of
it, and the rate the three would allow if they took turns on the same cores
(1 / the sum of 1/rate: the bound on a CPU, where the model and the decoders
share the cores; on a GPU the lowest ceiling is the bound).

``--precision`` sets what (b) and (c) run at; (a) is always fp32, as the
original scripts were. ``auto`` is fp32 on the CPU; ``--precision bf16`` shows
what a user who sets ``inference.precision = "bf16"`` gets on a CPU with bf16
instructions (the environment line says whether this one has them).
``--compile auto|on|off`` writes ``inference.compile`` into sort's config (the
default, ``unset``, writes no key, for a gensift that has none; one that refuses
the key stops the script before anything is timed).

The ways are **interleaved** in ``--rounds`` rounds: each round times (a),
(c), the decode and journal ceilings and (b) on its own share of the images,
and each way's times are summed over the rounds. A shared or throttled machine
can change speed by several times within the minutes one way takes on a CPU;
interleaving makes that drift hit the ways alike instead of deciding the
ratios. (b) loads its checkpoints once per round, a cost counted against it.
Each round prints its figures as it ends, so an interrupted run still says
something.

``--whole-process`` measures what a user waits for instead: the naive loop
(this script's ``--naive-only`` entry: import torch, load both checkpoints
through gensift's reader, one image at a time, fp32; it moves nothing) and
``gensift sort DIR -c CONFIG`` (the console script beside this Python), each a
fresh process on its own fresh copy of every image, timed from its start to
its exit: imports, model loading and any compilation included. Each of the
``--rounds`` rounds (default 1) runs both on all ``--count`` images, taking
turns at going first. Issue 19's target: sort/naive >= 1.5 with fp32 on 600
PNGs (``--whole-process --count 600 --precision fp32 --scenario finetuned``).

Scenarios: ``finetuned`` (two independently initialised models) and ``frozen``
(both checkpoints carry identical backbone tensors, ``frozen_backbone`` set,
equal ``backbone_digest``), as ``gensift train`` writes them. The heads are
biased so that the quality stage keeps every image and the feature stage moves
every image to class ``A``: every file takes the full path through both stages.

Targets (ResNet-50 on the CPU): (b)/(c) >= 0.85; (b)/(a) >= 1.5 with two
fine-tuned stages, >= 2.5 with a shared frozen backbone. On CUDA the table also
shows peak GPU memory per measurement.

    python benchmarks/sort_throughput.py [--count N] [--arch resnet50] [--device auto]
        [--precision auto] [--scenario both] [--rounds 5] [--dir DIR] [--json FILE]
        [--skip-sort] [--compile unset] [--whole-process]

Not run by CI. A measurement, not a test: exits 0 unless something fails.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import multiprocessing
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import decode_ceiling as dc
import numpy as np
import torch
from journal_moves import measure_journal_moves
from PIL import Image

from gensift.daemon.config import ConfigError, load_config
from gensift.daemon.runtime.decode import Decoder
from gensift.models.backbones import Classifier, backbone_digest, build_classifier
from gensift.models.calibrate import DEFAULT_TARGET_PRECISION
from gensift.models.checkpoint import CheckpointMeta, load_classifier, save_checkpoint
from gensift.models.device import autocast_dtype, cpu_has_bf16, resolve_device
from gensift.models.presets import IMAGENET, EvalPreset, open_rgb

QUALITY_CLASSES = ["keep", "reject"]
FEATURE_CLASSES = ["A", "B", "C"]
STAGE_THRESHOLD = 0.5
TARGET_VS_CEILING = 0.85
TARGET_VS_NAIVE = {"finetuned": 1.5, "frozen": 2.5}


@dataclass(frozen=True)
class Measurement:
    images: int
    seconds: float
    peak_gpu_mib: float | None

    @property
    def rate(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


@dataclass(frozen=True)
class DecodeResult:
    """The decode ceilings (:mod:`decode_ceiling`): no model, ``workers`` at a time."""

    threads: Measurement  # gensift's Decoder in its DecodePool
    processes: Measurement  # gensift's Decoder in a process pool
    pillow: Measurement  # read + Pillow decode + resize, threads
    pyspng: Measurement | None  # read + pyspng decode + resize, threads (None: not installed)

    @property
    def best(self) -> tuple[str, Measurement]:
        """gensift's Decoder in the faster of the two pools, and which pool that was."""
        if self.processes.rate > self.threads.rate:
            return "processes", self.processes
        return "threads", self.threads


@dataclass(frozen=True)
class ScenarioResult:
    scenario: str
    naive: Measurement
    ceiling: Measurement
    sort: Measurement | None
    moved: int | None  # files ``sort`` moved out of its input folder
    decode: DecodeResult
    journal: Measurement  # journalled moves of empty files through the Router

    def ceilings(self) -> dict[str, float]:
        """The three ceilings of ``sort``, images/s, by name."""
        pool, decode = self.decode.best
        return {
            "forward (c)": self.ceiling.rate,
            f"decode ({pool})": decode.rate,
            "journal+move": self.journal.rate,
        }

    def lowest(self) -> tuple[str, float]:
        return min(self.ceilings().items(), key=lambda item: item[1])

    def shared_bound(self) -> float:
        """The rate if forward, decode and journal took turns on the same cores (the CPU)."""
        return 1 / sum(1 / rate for rate in self.ceilings().values())

    def to_json(self) -> dict[str, Any]:
        rates = {
            "naive": self.naive.rate,
            "sort": self.sort.rate if self.sort else None,
            "ceiling": self.ceiling.rate,
            "decode_threads": self.decode.threads.rate,
            "decode_processes": self.decode.processes.rate,
            "decode_pillow": self.decode.pillow.rate,
            "decode_pyspng": self.decode.pyspng.rate if self.decode.pyspng else None,
            "journal_move": self.journal.rate,
        }
        name, rate = self.lowest()
        return {
            **asdict(self),
            "images_per_second": rates,
            "ceilings": self.ceilings(),
            "lowest_ceiling": {"name": name, "images_per_second": rate},
            "sort_vs_lowest": self.sort.rate / rate if self.sort else None,
            "shared_cores_bound": self.shared_bound(),
        }


@dataclass(frozen=True)
class WholeProcessResult:
    """``--whole-process``: each way a fresh process, from its start to its exit."""

    scenario: str
    naive: Measurement
    sort: Measurement

    def to_json(self) -> dict[str, Any]:
        rates = {"naive": self.naive.rate, "sort": self.sort.rate}
        return {
            **asdict(self),
            "images_per_second": rates,
            "sort_vs_naive": self.sort.rate / self.naive.rate,
        }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500, help="images to draw (default 500)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument(
        "--naive-count", type=int, metavar="N", help="images (a) times (default: min(count, 100))"
    )
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224, help="network input side")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own)")
    parser.add_argument("--scenario", choices=["finetuned", "frozen", "both"], default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, help="work folder (default: a new temporary one)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument(
        "--skip-sort", action="store_true", help="measure only (a), (c) and the other ceilings"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="interleaved rounds (default 5; with --whole-process 1, each on every image)",
    )
    parser.add_argument(
        "--whole-process",
        action="store_true",
        help="time the naive loop and `gensift sort` as fresh processes, start to exit",
    )
    parser.add_argument(
        "--compile",
        choices=["auto", "on", "off", "unset"],
        default="unset",
        help="inference.compile in sort's config (default unset: the key is not written)",
    )
    parser.add_argument(
        "--naive-only",
        nargs=2,
        type=Path,
        metavar=("IMAGES", "MODELS"),
        help="internal (--whole-process): the naive loop over IMAGES/*.png with the "
        "checkpoints in MODELS, then exit",
    )
    args = parser.parse_args(argv)
    if args.naive_only:
        return args
    if args.rounds is None:
        args.rounds = 1 if args.whole_process else 5
    if args.naive_count is None:
        args.naive_count = min(args.count, 100)
    if args.count < 1 or not 1 <= args.naive_count <= args.count:
        parser.error("need --count >= 1 and 1 <= --naive-count <= --count")
    if args.rounds < 1 or (not args.whole_process and args.rounds > args.naive_count):
        parser.error("need 1 <= --rounds <= --naive-count (each round times some of each way)")
    return args


# -- images --------------------------------------------------------------------------------


def draw_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """An RGB uint8 image: a smooth two-colour gradient, a ripple, a few shapes, mild noise."""
    axis = np.arange(size, dtype=np.float32) / size
    xx, yy = axis[None, :], axis[:, None]
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    c0, c1 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    image = (c0 + (c1 - c0) * (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)).astype(
        np.float32
    )
    ripple = np.sin(2 * np.pi * rng.uniform(1, 6) * (xx + rng.uniform(0, 1) * yy))
    image += 18 * ripple[..., None]
    for _ in range(int(rng.integers(3, 9))):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.04, 0.25)
        if rng.random() < 0.5:
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
        else:
            mask = (np.abs(xx - cx) < r) & (np.abs(yy - cy) < r * rng.uniform(0.3, 1.5))
        image[mask] = 0.35 * image[mask] + 0.65 * rng.uniform(0, 255, 3)
    image += 4 * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_images(folder: Path, count: int, size: int, seed: int) -> list[Path]:
    """Draw ``count`` PNGs into ``folder`` (kept if already there); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"gen-{index:05d}.png"
        if not path.is_file():
            rng = np.random.default_rng([seed, index])
            Image.fromarray(draw_image(rng, size)).save(path)
        paths.append(path)
    return paths


# -- checkpoints ---------------------------------------------------------------------------


def thresholds_for(stage: str, classes: list[str], targets: list[str]) -> dict[str, Any]:
    """A thresholds entry shaped like ``calibrate.choose_threshold``'s, at ``STAGE_THRESHOLD``."""
    point = {
        "threshold": STAGE_THRESHOLD,
        "precision": 1.0,
        "coverage": 1.0,
        "recall": 1.0,
        "count": 0,
        "reached": True,
        "table": [],
    }
    return {
        "target_precision": DEFAULT_TARGET_PRECISION[stage],
        "target_classes": targets,
        **point,
        "classes": {c: dict(point) for c in targets if c in classes},
    }


def biased_model(arch: str, classes: list[str], favoured: str, seed: int) -> Classifier:
    """A random-initialised model whose head always picks ``favoured`` (p ~ 0.99)."""
    torch.manual_seed(seed)
    model = build_classifier(arch, len(classes), weights="none")
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias[classes.index(favoured)] = 5.0
    return model


def write_checkpoints(folder: Path, scenario: str, args: argparse.Namespace) -> tuple[Path, Path]:
    """The quality and feature checkpoints of ``scenario``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    quality = biased_model(args.arch, QUALITY_CLASSES, "keep", args.seed).state_dict()
    feature = biased_model(args.arch, FEATURE_CLASSES, "A", args.seed + 1).state_dict()
    frozen = scenario == "frozen"
    if frozen:
        feature.update({k: v.clone() for k, v in quality.items() if k.startswith("backbone.")})
    paths = folder / "quality.safetensors", folder / "feature.safetensors"
    stages = [
        ("quality", QUALITY_CLASSES, ["reject"], quality),
        ("feature", FEATURE_CLASSES, FEATURE_CLASSES, feature),
    ]
    for path, (stage, classes, targets, state) in zip(paths, stages, strict=True):
        meta = CheckpointMeta(
            stage=stage,
            arch=args.arch,
            classes=classes,
            image_size=args.image_size,
            normalization=IMAGENET,
            temperature=1.0,
            thresholds=thresholds_for(stage, classes, targets),
            metrics={"note": "benchmarks/sort_throughput.py: random weights, biased head"},
            backbone_digest=backbone_digest(state),
            frozen_backbone=frozen,
        )
        save_checkpoint(path, state, meta)
    return paths


# -- timing --------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure(device: torch.device, images: int, work: Callable[[], object]) -> Measurement:
    """Time ``work()`` (and read peak GPU memory on CUDA) after the device is idle."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    started = time.perf_counter()
    work()
    synchronize(device)
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return Measurement(images, seconds, peak)


def warm_up(device: torch.device) -> None:
    """One small forward, so lazy initialisation is not charged to the first measurement."""
    conv = torch.nn.Conv2d(3, 8, 3).to(device).eval()
    with torch.inference_mode():
        conv(torch.zeros(2, 3, 32, 32, device=device))
    synchronize(device)


def free_device(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def load_pair(paths: tuple[Path, Path], device: torch.device) -> tuple[Classifier, Classifier]:
    """Both stages through gensift's one checkpoint reader, on ``device``, channels_last."""
    models = []
    for path, stage in zip(paths, ("quality", "feature"), strict=True):
        model, _ = load_classifier(path, stage=stage)
        models.append(model.to(device, memory_format=torch.channels_last).eval())
    return models[0], models[1]


# -- (a) naive -----------------------------------------------------------------------------


def naive(paths: Sequence[Path], models: Sequence[Classifier], preset: EvalPreset) -> None:
    """One image at a time: decode here, then each full model at batch 1, fp32."""
    device = next(models[0].parameters()).device
    with torch.inference_mode():
        for path in paths:
            with Image.open(path) as img:
                rgb = img.convert("RGB")
            x = preset(rgb).unsqueeze(0).to(device).contiguous(memory_format=torch.channels_last)
            for model in models:
                torch.softmax(model(x), dim=1).cpu()


def measure_naive(
    paths: Sequence[Path], models: Sequence[Classifier], preset: EvalPreset, device: torch.device
) -> Measurement:
    naive(paths[:1], models, preset)  # warm-up at batch 1, untimed
    return measure(device, len(paths), lambda: naive(paths, models, preset))


# -- (c) ceiling ---------------------------------------------------------------------------


def decode_batches(
    paths: Sequence[Path], preset: EvalPreset, batch_size: int, device: torch.device
) -> list[torch.Tensor]:
    """Every image decoded and preprocessed beforehand, batched, on ``device``."""
    tensors = [preset(open_rgb(p, preset.image_size)) for p in paths]
    return [
        torch.stack(tensors[i : i + batch_size])
        .to(device)
        .contiguous(memory_format=torch.channels_last)
        for i in range(0, len(tensors), batch_size)
    ]


def forward_all(
    batches: Sequence[torch.Tensor],
    quality: Classifier,
    feature: Classifier,
    shared: bool,
    amp: torch.dtype | None,
) -> None:
    """Both stages over every batch: full models, or the shared backbone once and two heads."""
    device = batches[0].device
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None),
    ):
        for x in batches:
            if shared:
                features = quality.backbone(x)
                outputs = [quality.head(features), feature.head(features)]
            else:
                outputs = [quality(x), feature(x)]
            for logits in outputs:
                torch.softmax(logits.float(), dim=1).cpu()


def measure_ceiling(
    batches: Sequence[torch.Tensor],
    models: tuple[Classifier, Classifier],
    shared: bool,
    args: argparse.Namespace,
    device: torch.device,
) -> Measurement:
    amp = autocast_dtype(device, args.precision)
    # Warm-up, untimed, once per batch shape (the last batch may be smaller).
    forward_all(list({len(b): b for b in batches}.values()), *models, shared, amp)
    images = sum(len(b) for b in batches)
    return measure(device, images, lambda: forward_all(batches, *models, shared, amp))


# -- (b) gensift sort ----------------------------------------------------------------------


def toml_str(value: object) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_config(
    work: Path,
    inbox: Path,
    checkpoints: tuple[Path, Path],
    args: argparse.Namespace,
    device: torch.device,
) -> Path:
    config = work / "gensift.toml"
    # inference.compile is newer than this benchmark: written only when asked for, so the
    # script runs against a gensift with or without the key.
    compile_key = "" if args.compile == "unset" else f"compile = {toml_str(args.compile)}\n"
    config.write_text(
        f"[watch]\npaths = [{toml_str(inbox)}]\n\n"
        f"[output]\nroot = {toml_str(work / 'sorted')}\n\n"
        f"[inference]\ndevice = {toml_str(device)}\nprecision = {toml_str(args.precision)}\n"
        f"batch_size = {args.batch_size}\n{compile_key}\n"
        f"[stages.quality]\ncheckpoint = {toml_str(checkpoints[0])}\n"
        f'reject_classes = ["reject"]\nthreshold = {STAGE_THRESHOLD}\n\n'
        f"[stages.feature]\ncheckpoint = {toml_str(checkpoints[1])}\n"
        f"threshold = {STAGE_THRESHOLD}\n\n"
        f"[journal]\npath = {toml_str(work / 'journal.sqlite3')}\n\n"
        f'[log]\nlevel = "WARNING"\n'
    )
    return config


def check_config(work: Path, args: argparse.Namespace, device: torch.device) -> None:
    """Stop before any timing if this gensift refuses the config ``sort`` would get
    (``--compile`` against a gensift without ``inference.compile``)."""
    models = work / "models"
    work.mkdir(parents=True, exist_ok=True)
    config = write_config(work, work / "inbox", (models / "q", models / "f"), args, device)
    try:
        load_config(config)
    except ConfigError as exc:
        hint = "; --compile unset writes no such key" if args.compile != "unset" else ""
        raise SystemExit(f"gensift refuses the benchmark's config: {exc}{hint}") from exc


def call_sort(inbox: Path, config: Path) -> int:
    from gensift.daemon.cli import main as gensift_main

    try:
        return gensift_main(["sort", str(inbox), "-c", str(config)])
    except SystemExit as exc:  # argparse refusing the command line
        return exc.code if isinstance(exc.code, int) else 2


def measure_sort(
    images: Sequence[Path],
    work: Path,
    checkpoints: tuple[Path, Path],
    args: argparse.Namespace,
    device: torch.device,
) -> tuple[Measurement, int]:
    """``gensift sort`` on a fresh copy of ``images``; returns the timing and files moved."""
    shutil.rmtree(work / "sorted", ignore_errors=True)
    (work / "journal.sqlite3").unlink(missing_ok=True)
    inbox = work / "inbox"
    shutil.rmtree(inbox, ignore_errors=True)
    inbox.mkdir(parents=True)
    for path in images:
        shutil.copyfile(path, inbox / path.name)
    config = write_config(work, inbox, checkpoints, args, device)
    threads = torch.get_num_threads()
    codes: list[int] = []
    result = measure(device, len(images), lambda: codes.append(call_sort(inbox, config)))
    torch.set_num_threads(threads)  # whatever sort did, the next measurement gets the same
    if codes[0] != 0:
        raise RuntimeError(f"gensift sort {inbox} -c {config} exited with {codes[0]}")
    moved = len(images) - sum(1 for _ in inbox.glob("*.png"))
    return result, moved


# -- the decode ceiling -------------------------------------------------------------------


def decode_workers() -> int:
    return os.cpu_count() or 1


def measure_decode(
    paths: Sequence[Path],
    decoder: Decoder,
    processes: ProcessPoolExecutor,
    preset: EvalPreset,
    device: torch.device,
) -> DecodeResult:
    """Decode + resize of ``paths`` on every core: gensift's Decoder in threads and in
    processes, Pillow and pyspng in threads."""
    workers, n = decode_workers(), len(paths)
    pyspng = dc.pyspng_reader(preset)
    return DecodeResult(
        threads=measure(device, n, lambda: dc.gensift_threads(paths, decoder, workers)),
        processes=measure(
            device, n, lambda: dc.gensift_processes(paths, processes, preset.image_size)
        ),
        pillow=measure(device, n, lambda: dc.threaded(paths, dc.pillow_reader(preset), workers)),
        pyspng=measure(device, n, lambda: dc.threaded(paths, pyspng, workers)) if pyspng else None,
    )


def warm_decoders(paths: Sequence[Path], decoder: Decoder, preset: EvalPreset) -> None:
    """Each decode path once, untimed (plugins and first-call set-up)."""
    dc.gensift_threads(paths[:1], decoder, 1)
    for read in (dc.pillow_reader(preset), dc.pyspng_reader(preset)):
        if read is not None:
            read(paths[0])


# -- the journal + move ceiling ------------------------------------------------------------


def journal_ceiling(work: Path, files: int, batch_size: int) -> Measurement:
    """The journal + move ceiling: journalled moves grouped in batches, as sort routes them."""
    rate = measure_journal_moves(work, files, grouped=True, batch_size=batch_size)
    return Measurement(files, files / rate, None)


# -- one scenario, the table ---------------------------------------------------------------


def shares(items: Sequence[Path], parts: int) -> list[Sequence[Path]]:
    """``items`` cut into ``parts`` consecutive runs of nearly equal length."""
    bounds = [len(items) * i // parts for i in range(parts + 1)]
    return [items[a:b] for a, b in itertools.pairwise(bounds)]


def total(parts: Sequence[Measurement]) -> Measurement:
    peaks = [m.peak_gpu_mib for m in parts if m.peak_gpu_mib is not None]
    return Measurement(
        sum(m.images for m in parts), sum(m.seconds for m in parts), max(peaks, default=None)
    )


def run_scenario(
    scenario: str, images: list[Path], work: Path, args: argparse.Namespace, device: torch.device
) -> ScenarioResult:
    folder = work / scenario
    checkpoints = write_checkpoints(folder / "models", scenario, args)
    preset = EvalPreset(args.image_size, IMAGENET)
    decoder = dc.decoder_for(args.image_size)
    warm_decoders(images, decoder, preset)
    naive_results: list[Measurement] = []
    ceilings: list[Measurement] = []
    decodes: list[DecodeResult] = []
    journals: list[Measurement] = []
    sorts: list[Measurement] = []
    moved = 0
    naive_images = images[: args.naive_count]
    rounds = zip(shares(naive_images, args.rounds), shares(images, args.rounds), strict=True)
    with dc.start_processes(decode_workers(), args.image_size, images) as processes:
        for i, (naive_share, share) in enumerate(rounds, start=1):
            models = load_pair(checkpoints, device)
            naive_results.append(measure_naive(naive_share, models, preset, device))
            batches = decode_batches(share, preset, args.batch_size, device)
            ceilings.append(measure_ceiling(batches, models, scenario == "frozen", args, device))
            del models, batches
            free_device(device)
            decodes.append(measure_decode(share, decoder, processes, preset, device))
            journals.append(journal_ceiling(folder / f"journal-{i}", len(share), args.batch_size))
            line = (
                f"(a) {naive_results[-1].rate:.2f}, (c) {ceilings[-1].rate:.2f}, "
                f"decode {decodes[-1].threads.rate:.2f} threads / "
                f"{decodes[-1].processes.rate:.2f} processes, "
                f"journal+move {journals[-1].rate:.1f}"
            )
            if not args.skip_sort:
                result, count = measure_sort(
                    share, folder / f"round-{i}", checkpoints, args, device
                )
                free_device(device)
                sorts.append(result)
                moved += count
                line += f", (b) {result.rate:.2f}"
            print(f"[{scenario}] round {i}/{args.rounds}: {line} images/s", flush=True)
    return ScenarioResult(
        scenario,
        total(naive_results),
        total(ceilings),
        total(sorts) if sorts else None,
        moved if sorts else None,
        total_decode(decodes),
        total(journals),
    )


def total_decode(parts: Sequence[DecodeResult]) -> DecodeResult:
    pyspng = [p.pyspng for p in parts if p.pyspng is not None]
    return DecodeResult(
        threads=total([p.threads for p in parts]),
        processes=total([p.processes for p in parts]),
        pillow=total([p.pillow for p in parts]),
        pyspng=total(pyspng) if pyspng else None,
    )


# -- whole-process runs (--whole-process) --------------------------------------------------


def sort_command() -> list[str]:
    """``gensift``, the console script beside this Python, else ``python -m gensift.daemon.cli``."""
    # Not resolve(): a venv's python is a symlink to the base interpreter, outside the venv.
    here = os.path.dirname(os.path.abspath(sys.executable))  # noqa: PTH100, PTH120
    script = shutil.which("gensift", path=here)
    return [script] if script else [sys.executable, "-m", "gensift.daemon.cli"]


def naive_command(images: Path, models: Path, args: argparse.Namespace, device: str) -> list[str]:
    """This script's ``--naive-only`` entry: the naive loop in a process of its own."""
    own = [sys.executable, str(Path(__file__).resolve()), "--naive-only", str(images)]
    return [*own, str(models), "--device", device, "--image-size", str(args.image_size)]


def run_process(command: Sequence[str], images: int, env: dict[str, str] | None) -> Measurement:
    """Wall time of ``command`` from its start to its exit; raises if it fails."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(command)} exited with {done.returncode}:\n{done.stderr[-3000:]}"
        )
    return Measurement(images, seconds, None)


def fresh_copy(images: Sequence[Path], folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in images:
        shutil.copyfile(path, folder / path.name)
    return folder


def run_whole_process(
    scenario: str, images: list[Path], work: Path, args: argparse.Namespace, device: torch.device
) -> WholeProcessResult:
    """Each round: the naive loop and ``gensift sort`` as fresh processes on every image,
    each on its own fresh copy; the two take turns going first."""
    folder = work / scenario
    models = folder / "models"
    checkpoints = write_checkpoints(models, scenario, args)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)} if args.threads else None
    naives: list[Measurement] = []
    sorts: list[Measurement] = []
    for i in range(1, args.rounds + 1):
        round_dir = folder / f"whole-{i}"
        shutil.rmtree(round_dir, ignore_errors=True)
        naive_inbox = fresh_copy(images, round_dir / "naive")
        inbox = fresh_copy(images, round_dir / "inbox")
        config = write_config(round_dir, inbox, checkpoints, args, device)
        sort = [*sort_command(), "sort", str(inbox), "-c", str(config), "--no-progress"]
        ways = [
            (naives, naive_command(naive_inbox, models, args, str(device))),
            (sorts, sort),
        ]
        for results, command in ways if i % 2 else ways[::-1]:
            results.append(run_process(command, len(images), env))
        left = sum(1 for _ in inbox.glob("*.png"))
        if left:
            print(f"note [{scenario}]: sort left {left} of {len(images)} files", flush=True)
        line = f"naive {naives[-1].seconds:.1f} s, sort {sorts[-1].seconds:.1f} s"
        print(f"[{scenario}] whole-process round {i}/{args.rounds}: {line}", flush=True)
    return WholeProcessResult(scenario, total(naives), total(sorts))


def naive_only(images: Path, models: Path, args: argparse.Namespace) -> int:
    """The ``--naive-only`` entry: what the original scripts do, start to exit."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    checkpoints = models / "quality.safetensors", models / "feature.safetensors"
    paths = sorted(images.glob("*.png"))
    naive(paths, load_pair(checkpoints, device), EvalPreset(args.image_size, IMAGENET))
    return 0


# -- the report ----------------------------------------------------------------------------


def environment(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "arch": args.arch,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "precision": args.precision,
        "compile": args.compile,
        "images": f"{args.count} PNG {args.size}x{args.size}",
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    if device.type == "cpu":
        env["cpu_bf16_instructions"] = cpu_has_bf16()
    if args.whole_process:
        env["sort_command"] = shlex.join(sort_command())
    else:
        env["decode_workers"] = decode_workers()
        env["process_start"] = multiprocessing.get_start_method()
        env["pyspng"] = dc.version_of("pyspng")
        env["simplejpeg"] = dc.version_of("simplejpeg")
    return env


def ratio(numerator: Measurement | None, denominator: Measurement) -> float | None:
    return numerator.rate / denominator.rate if numerator else None


def cell(value: float | None, target: float | None = None) -> str:
    if value is None:
        return "-"
    mark = "" if target is None else (" ok" if value >= target else " LOW")
    return f"{value:.2f}{mark}"


def row(first: str, cells: Sequence[str], width: int = 12) -> str:
    return f"{first:<10}" + "".join(f"{c:>{width}}" for c in cells)


def print_table(results: Sequence[ScenarioResult], env: dict[str, Any]) -> None:
    print("\n" + ", ".join(f"{k} {v}" for k, v in env.items()))
    header = ("(a) img/s", "(b) img/s", "(c) img/s", "(b)/(a)", "(b)/(c)")
    print(row("scenario", header))
    for r in results:
        cells = [
            cell(r.naive.rate),
            cell(r.sort.rate if r.sort else None),
            cell(r.ceiling.rate),
            cell(ratio(r.sort, r.naive), TARGET_VS_NAIVE[r.scenario]),
            cell(ratio(r.sort, r.ceiling), TARGET_VS_CEILING),
        ]
        print(row(r.scenario, cells))
    targets = ", ".join(f"{k} >= {v}" for k, v in TARGET_VS_NAIVE.items())
    print(f"targets: (b)/(c) >= {TARGET_VS_CEILING}; (b)/(a): {targets}")

    print(f"\nceilings, images/s ({env['decode_workers']} decode workers, no model):")
    header = ("forward", "dec thread", "dec proc", "Pillow", "pyspng", "journal+mv")
    print(row("scenario", header))
    for r in results:
        d = r.decode
        rates = (r.ceiling, d.threads, d.processes, d.pillow, d.pyspng, r.journal)
        print(row(r.scenario, [cell(m.rate if m else None) for m in rates]))
    print(
        "dec thread/proc: gensift's Decoder (hash, Pillow, blank rule, resize) in threads / "
        "processes; Pillow, pyspng: read + decode + resize only, threads"
    )
    for r in results:
        name, rate = r.lowest()
        sort = f"(b) {r.sort.rate:.2f} = {r.sort.rate / rate:.2f} of it" if r.sort else "(b) -"
        print(
            f"lowest ceiling [{r.scenario}]: {name} {rate:.2f} img/s; {sort}; "
            f"{r.shared_bound():.2f} img/s if all three took turns on the same cores"
        )
    for r in results:
        if r.naive.peak_gpu_mib is not None:
            peaks = [m.peak_gpu_mib if m else None for m in (r.naive, r.sort, r.ceiling)]
            text = ", ".join(f"{n} {p:.0f} MiB" for n, p in zip("abc", peaks, strict=True) if p)
            print(f"peak GPU memory [{r.scenario}]: {text}")
        if r.moved is not None and r.sort and r.moved != r.sort.images:
            print(f"note [{r.scenario}]: sort moved {r.moved} of {r.sort.images} files")


def print_whole_process(results: Sequence[WholeProcessResult], env: dict[str, Any]) -> None:
    print("\n" + ", ".join(f"{k} {v}" for k, v in env.items()))
    print("whole process, start to exit, fresh copies (naive: fp32, one image at a time):")
    header = ("naive s", "naive img/s", "sort s", "sort img/s", "sort/naive")
    print(row("scenario", header))
    for r in results:
        cells = [
            f"{r.naive.seconds:.1f}",
            cell(r.naive.rate),
            f"{r.sort.seconds:.1f}",
            cell(r.sort.rate),
            cell(r.sort.rate / r.naive.rate, TARGET_VS_NAIVE[r.scenario]),
        ]
        print(row(r.scenario, cells))
    targets = ", ".join(f"{k} >= {v}" for k, v in TARGET_VS_NAIVE.items())
    print(f"targets: sort/naive: {targets}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.naive_only:
        return naive_only(*args.naive_only, args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    work = args.dir or Path(tempfile.mkdtemp(prefix="gensift-sort-bench-"))
    print(f"drawing {args.count} PNG images of {args.size}x{args.size} in {work} ...", flush=True)
    images = write_images(work / "images", args.count, args.size, args.seed)
    scenarios = ["finetuned", "frozen"] if args.scenario == "both" else [args.scenario]
    if args.whole_process or not args.skip_sort:
        check_config(work / "config-check", args, device)
    env = environment(args, device)
    figures: dict[str, Any] = {"environment": env}
    if args.whole_process:
        whole = [run_whole_process(s, images, work, args, device) for s in scenarios]
        print_whole_process(whole, env)
        figures["whole_process"] = [r.to_json() for r in whole]
    else:
        warm_up(device)
        results = [run_scenario(s, images, work, args, device) for s in scenarios]
        difference = dc.pyspng_difference(images, args.image_size)
        print_table(results, env)
        print(f"pyspng against Pillow on {len(images)} PNGs: {agreement(difference)}")
        figures["scenarios"] = [r.to_json() for r in results]
        figures["pyspng_max_abs_difference"] = difference
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


def agreement(difference: int | None) -> str:
    if difference is None:
        return "pyspng not installed"
    if difference < 0:
        return "the shapes differ"
    same = " (identical pixels)" if difference == 0 else ""
    return f"max abs pixel difference {difference}{same}"


if __name__ == "__main__":
    sys.exit(main())
