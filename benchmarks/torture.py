"""Torture run: stream awkward files into ``gensift watch`` and account for every one.

A simulated generator writes ``--files`` images (5,000 by default) into a watched
folder while the daemon runs, mixing the inputs that break file tools in week three:

- ``plain``: a PNG written in one go (most of the stream);
- ``slow``: a PNG written in four chunks with pauses shorter than the settle time;
- ``wide``: a 16-bit greyscale PNG (full range);
- ``bytes``: a PNG whose name is not valid UTF-8 (``img\\xff<n>.png``);
- ``renamed``: written as ``<name>.part`` (not a watched pattern), then renamed;
- ``rotated``: a JPEG with an EXIF orientation tag;
- ``reused``: ``ComfyUI_00001_.png`` and friends, names written again after the
  previous file of that name was sorted away (a counter reset);
- ``corrupt``: bytes that are not an image; ``blank``: a near-constant image.

Every file carries unique bytes (a PNG text chunk or trailing id), so it can be
followed by its SHA-256 wherever it goes. The feature stage's class ``B`` is a
symlink to a folder outside the output root. While the stream runs, the script
replaces the feature checkpoint twice, sends SIGHUP once, and SIGKILLs the daemon
once and starts it again. At the end it stops the daemon with SIGTERM and checks:

- every file written is on disk exactly once, under the output root, nowhere else;
- the journal has exactly one ``done`` row for every file, and no ``failed`` row;
- the daemon's log has no traceback and no ERROR line beyond the expected ones
  (none are expected);
- both daemons' exit codes (-9 for the killed one, 0 for the last).

It prints the figures and exits 1 if any check fails. The models are untrained
ResNet-18s at 32 px whose head biases are set so that roughly a tenth of the images
are rejected and the rest split between two classes; the run tests the runtime, not
the learning.

    python benchmarks/torture.py [--files 5000] [--rate 40] [--dir DIR] [--seed 0]

Not run by CI (several minutes on two CPU cores). Linux only (SIGHUP, bytes names).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from gensift.models.backbones import build_classifier
from gensift.models.checkpoint import CheckpointMeta, save_checkpoint
from gensift.models.presets import IMAGENET, EvalPreset

SIZE, INPUT = 48, 32
KINDS = {  # share of the stream, per 100 files
    "plain": 66,
    "slow": 5,
    "wide": 5,
    "bytes": 4,
    "renamed": 5,
    "rotated": 5,
    "reused": 5,
    "corrupt": 3,
    "blank": 2,
}
REUSED_NAMES = [f"ComfyUI_{n:05d}_.png" for n in range(1, 6)]
GENSIFT = [sys.executable, "-m", "gensift.daemon.cli"]
READY_SECONDS = 600


# -- models ----------------------------------------------------------------------------


def sample_images(count: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    preset = EvalPreset(INPUT, IMAGENET)
    return torch.stack([preset(picture(rng, i)) for i in range(count)])


def write_checkpoint(
    path: Path, stage: str, classes: list[str], share: float, seed: int, images: torch.Tensor
) -> str:
    """An untrained model whose first class wins on about ``share`` of ``images``."""
    torch.manual_seed(seed)
    model = build_classifier("resnet18", 2, "none").eval()
    with torch.inference_mode():
        logits = model(images)
    margin = logits[:, 0] - logits[:, 1]
    spread = float(margin.std()) or 1.0
    shift = float(torch.quantile(margin, 1.0 - share))
    with torch.no_grad():
        model.head.bias[0] -= shift  # class 0 wins on the top ``share`` of margins
        model.head.weight /= spread  # about one logit of spread ...
        model.head.bias /= spread
    meta = CheckpointMeta(
        stage=stage,  # type: ignore[arg-type]
        arch="resnet18",
        classes=classes,
        image_size=INPUT,
        normalization=IMAGENET,
        temperature=0.05,  # ... made sharp: nearly every image clears the threshold
        thresholds={"threshold": 0.6, "reached": True},
    )
    tmp = path.with_name(f".{path.name}.tmp")
    saved = save_checkpoint(tmp, model.state_dict(), meta)
    tmp.replace(path)
    return saved.id


# -- the generator ---------------------------------------------------------------------


def picture(rng: np.random.Generator, n: int) -> Image.Image:
    """A colourful, varied image: gradient, a few shapes, noise."""
    base = rng.integers(0, 256, 3)
    top = rng.integers(0, 256, 3)
    t = np.linspace(0, 1, SIZE)[:, None, None]
    pixels = base * (1 - t) + top * t + rng.normal(0, 20, (SIZE, SIZE, 3))
    for _ in range(int(rng.integers(1, 4))):
        x, y = rng.integers(0, SIZE - 8, 2)
        w, h = rng.integers(4, SIZE // 2, 2)
        pixels[y : y + h, x : x + w] = rng.integers(0, 256, 3)
    del n
    return Image.fromarray(
        np.clip(np.broadcast_to(pixels, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    )


def png_bytes(img: Image.Image, uid: str) -> bytes:
    info = PngInfo()
    info.add_text("torture-id", uid)
    out = io.BytesIO()
    img.save(out, "PNG", pnginfo=info)
    return out.getvalue()


@dataclass
class Written:
    uid: str
    kind: str
    name: bytes
    sha256: str


@dataclass
class Generator:
    inbox: Path
    files: int
    rate: float
    seed: int
    written: list[Written] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    progress: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def kinds(self) -> list[str]:
        pool = [k for k, share in KINDS.items() for _ in range(share)]
        rng = random.Random(self.seed)
        return [rng.choice(pool) for _ in range(self.files)]

    def run(self) -> None:
        rng = np.random.default_rng(self.seed)
        slow: list[threading.Thread] = []
        started = time.monotonic()
        for n, kind in enumerate(self.kinds()):
            if self.stop.is_set():
                break
            wait = started + n / self.rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                made = self.make(kind, n, rng, slow)
            except Exception as exc:  # noqa: BLE001 - every failure is a problem the run reports
                self.errors.append(f"generator, file {n} ({kind}): {type(exc).__name__}: {exc}")
                continue
            if made is not None:
                self.written.append(made)
            self.progress = n + 1
        for thread in slow:
            thread.join()

    def make(
        self, kind: str, n: int, rng: np.random.Generator, slow: list[threading.Thread]
    ) -> Written | None:
        uid = f"{self.seed}-{n}"
        name = f"t{n:05d}.png".encode()
        if kind == "wide":
            ramp = np.linspace(0, 65535, SIZE * SIZE).reshape(SIZE, SIZE)
            noise = rng.normal(0, 3000, (SIZE, SIZE))
            wide = np.clip(ramp + noise, 0, 65535).astype(np.uint16)
            data = png_bytes(Image.fromarray(wide), uid)  # uint16: mode I;16
        elif kind == "rotated":
            out = io.BytesIO()
            exif = Image.Exif()
            exif[0x0112] = int(rng.choice([3, 6, 8]))
            picture(rng, n).save(out, "JPEG", quality=90, exif=exif, comment=uid.encode())
            data, name = out.getvalue(), f"t{n:05d}.jpg".encode()
        elif kind == "corrupt":
            data = b"\x89PNG\r\n\x1a\n broken " + uid.encode() + os.urandom(64)
        elif kind == "blank":
            level = int(rng.integers(0, 256))
            data = png_bytes(Image.new("RGB", (SIZE, SIZE), (level,) * 3), uid)
        else:
            data = png_bytes(picture(rng, n), uid)
        if kind == "bytes":
            name = b"img\xff" + str(n).encode() + b".png"
        if kind == "reused":
            free = [r for r in REUSED_NAMES if not (self.inbox / r).exists()]
            if not free:
                kind, free = "plain", [name.decode()]
            name = free[0].encode()
        path = self.inbox / os.fsdecode(name)  # a surrogate escape keeps the bytes exact
        if kind == "slow":
            thread = threading.Thread(target=_write_slowly, args=(path, data), daemon=True)
            thread.start()
            slow.append(thread)
        elif kind == "renamed":
            part = path.with_name(path.name + ".part")
            _write(part, data)
            part.rename(path)
        else:
            _write(path, data)
        return Written(uid, kind, name, hashlib.sha256(data).hexdigest())


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_slowly(path: Path, data: bytes, chunks: int = 4, pause: float = 0.3) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        step = -(-len(data) // chunks)
        for i in range(0, len(data), step):
            os.write(fd, data[i : i + step])
            time.sleep(pause)
    finally:
        os.close(fd)


# -- the daemon ------------------------------------------------------------------------


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    out: Path

    @classmethod
    def start(cls, config: Path, out: Path) -> Daemon:
        mark = out.stat().st_size if out.exists() else 0
        sink = out.open("ab")
        proc = subprocess.Popen([*GENSIFT, "watch", "-c", str(config)], stdout=sink, stderr=sink)
        deadline = time.monotonic() + READY_SECONDS
        while "watching " not in out.read_bytes()[mark:].decode(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the daemon did not start:\n{out.read_text()[-3000:]}")
            time.sleep(0.2)
        return cls(proc, out)


def write_config(work: Path, quality: Path, feature: Path) -> Path:
    config = work / "gensift.toml"
    config.write_text(
        f"""[watch]
paths = [{json.dumps(str(work / "inbox"))}]
patterns = ["*.png", "*.jpg"]
settle_seconds = 0.5
rescan_seconds = 20
[output]
root = {json.dumps(str(work / "sorted"))}
reject_action = "quarantine"
uncertain_action = "review"
[inference]
device = "cpu"
batch_size = 16
[stages.quality]
checkpoint = {json.dumps(str(quality))}
reject_classes = ["reject"]
[stages.feature]
checkpoint = {json.dumps(str(feature))}
[journal]
path = {json.dumps(str(work / "journal.sqlite3"))}
[log]
file = {json.dumps(str(work / "watch.log"))}
"""
    )
    return config


def journal_rows(journal: Path, columns: str = "sha256, state") -> list[tuple]:
    if not journal.exists():
        return []
    with sqlite3.connect(f"{journal.as_uri()}?mode=ro", uri=True) as db:
        return db.execute(f"SELECT {columns} FROM decisions").fetchall()


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


# -- accounting ------------------------------------------------------------------------


def files_under(folder: Path) -> dict[str, list[Path]]:
    """SHA-256 -> paths of the files under ``folder`` (following class-folder links)."""
    found: dict[str, list[Path]] = {}
    for top, _dirs, names in os.walk(folder, followlinks=True):
        for name in names:
            path = Path(top) / name
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found.setdefault(digest, []).append(path)
    return found


def account(work: Path, written: list[Written]) -> tuple[dict[str, object], list[str]]:
    problems = []
    expected = {w.sha256: w for w in written}
    sorted_files = files_under(work / "sorted")
    left = files_under(work / "inbox")
    for sha, w in expected.items():
        places = sorted_files.get(sha, [])
        if len(places) != 1 or sha in left:
            problems.append(
                f"{w.kind} {w.name!r}: {len(places)} copies under the root, "
                f"{len(left.get(sha, []))} left in the inbox"
            )
    strays = [p for sha, ps in sorted_files.items() if sha not in expected for p in ps]
    problems += [f"a file nobody wrote: {p!r}" for p in strays]
    rows = journal_rows(work / "journal.sqlite3")
    done = Counter(sha for sha, state in rows if state == "done")
    states = Counter(state for _, state in rows)
    for sha, w in expected.items():
        if done[sha] != 1:
            problems.append(f"{w.kind} {w.name!r}: {done[sha]} done journal rows")
    if states.get("failed"):
        problems.append(f"{states['failed']} failed journal rows")
    where = Counter(ps[0].relative_to(work / "sorted").parts[0] for ps in sorted_files.values())
    log = (work / "watch.log").read_text(errors="replace")
    tracebacks = log.count("Traceback") + (work / "daemon.out").read_text(errors="replace").count(
        "Traceback"
    )
    errors = [line for line in log.splitlines() if "| ERROR" in line or "| CRITICAL" in line]
    if tracebacks:
        problems.append(f"{tracebacks} tracebacks in the log")
    problems += [f"log: {line}" for line in errors[:20]]
    models = Counter(
        json.loads(checkpoints).get("feature", "none")
        for checkpoints, state in journal_rows(work / "journal.sqlite3", "checkpoints, state")
        if state == "done"
    )
    figures = {
        "written": len(written),
        "by_kind": dict(Counter(w.kind for w in written)),
        "on_disk_by_folder": dict(where),
        "journal_states": dict(states),
        "done_by_feature_checkpoint": dict(models),
        "log_errors": len(errors),
        "log_warnings": len(re.findall(r"\| WARNING", log)),
        "tracebacks": tracebacks,
    }
    return figures, problems


# -- the run ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=40.0, help="files written a second")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, help="work folder (default: a new temporary one)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    work = args.dir or Path(tempfile.mkdtemp(prefix="gensift-torture-"))
    for folder in ("inbox", "sorted", "bigdisk/B", "models"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    (work / "sorted" / "B").symlink_to(work / "bigdisk" / "B", target_is_directory=True)
    images = sample_images(200, args.seed + 1000)
    quality, feature = (
        work / "models" / "quality.safetensors",
        work / "models" / "feature.safetensors",
    )
    ids = [
        write_checkpoint(quality, "quality", ["reject", "keep"], 0.1, args.seed, images),
        write_checkpoint(feature, "feature", ["A", "B"], 0.5, args.seed + 1, images),
    ]
    config = write_config(work, quality, feature)
    out = work / "daemon.out"
    started = time.monotonic()
    daemon = Daemon.start(config, out)
    print(f"torture: {args.files} files at {args.rate}/s into {work}; daemon ready in "
          f"{time.monotonic() - started:.1f} s", flush=True)  # fmt: skip

    gen = Generator(work / "inbox", args.files, args.rate, args.seed)
    thread = threading.Thread(target=gen.run, name="generator")
    thread.start()
    events = []
    codes = []

    def at(share: float) -> None:
        wait_for(lambda: gen.progress >= share * args.files or not thread.is_alive(), 3600)

    at(0.2)
    ids.append(write_checkpoint(feature, "feature", ["A", "B"], 0.3, args.seed + 2, images))
    events.append(f"feature checkpoint replaced at file {gen.progress} ({ids[-1]})")
    at(0.4)
    daemon.proc.send_signal(signal.SIGHUP)
    events.append(f"SIGHUP at file {gen.progress}")
    at(0.55)
    daemon.proc.send_signal(signal.SIGKILL)
    codes.append(daemon.proc.wait())
    events.append(f"SIGKILL at file {gen.progress}")
    daemon = Daemon.start(config, out)
    events.append(f"restarted, ready at file {gen.progress}")
    at(0.75)
    ids.append(write_checkpoint(feature, "feature", ["A", "B"], 0.7, args.seed + 3, images))
    events.append(f"feature checkpoint replaced again at file {gen.progress} ({ids[-1]})")
    thread.join()
    written_at = time.monotonic()
    expected = {w.sha256 for w in gen.written}
    settled = wait_for(
        lambda: expected <= {s for s, state in journal_rows(work / "journal.sqlite3")
                             if state == "done"},
        600,
    )  # fmt: skip
    drained = time.monotonic() - written_at
    daemon.proc.send_signal(signal.SIGTERM)
    codes.append(daemon.proc.wait(timeout=120))
    elapsed = time.monotonic() - started

    figures, problems = account(work, gen.written)
    problems = gen.errors + problems
    if not settled:
        problems.insert(0, "not every file was decided within 600 s of the last one written")
    if codes != [-signal.SIGKILL, 0]:
        problems.append(f"daemon exit codes {codes}, expected [-9, 0]")
    figures.update(
        seconds=round(elapsed, 1),
        drained_seconds_after_last_write=round(drained, 1),
        exit_codes=codes,
        checkpoints=ids,
        events=events,
        problems=len(problems),
    )
    for event in events:
        print(f"  {event}")
    for key, value in figures.items():
        if key != "events":
            print(f"  {key}: {value}")
    for problem in problems[:50]:
        print(f"  PROBLEM: {problem}")
    print("torture: " + ("every file accounted for exactly once" if not problems else
                         f"{len(problems)} problem(s)"))  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({**figures, "problem_list": problems}, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
