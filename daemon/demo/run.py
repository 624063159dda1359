"""``gensift demo``: the whole loop on a fresh machine, with nothing downloaded.

1. draw example training sets (:mod:`gensift.daemon.demo.samples`);
2. train both stages from scratch (``--weights none``, small images, the CPU is enough);
3. write a config and start the daemon (``gensift watch``) on a "generator output" folder;
4. a simulated generator writes images there, some the way the Stable Diffusion WebUI
   does (a temporary name, then a rename, in a dated subfolder) and some the way ComfyUI
   does (written in place, in pieces);
5. stop the daemon cleanly and print what went where and why;
6. correct the model's mistakes (the demo knows what it drew) through the same code the
   review page uses, retrain each stage that got labels behind the publish gate
   (``gensift retrain``), and print what changed and the ``gensift review`` command.

Everything stays in one folder for the user to look at, and the config written there
works with every other command (``gensift history -c <dir>/gensift.toml``, ``undo``...).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np
from PIL import Image

from gensift.daemon.config import Settings, load_config
from gensift.daemon.demo.samples import FAILURES, SCENES, draw, write_training_sets
from gensift.daemon.logs import setup_logging
from gensift.daemon.routing.journal import Entry, Journal
from gensift.daemon.routing.records import DECIDED_STATES
from gensift.models.errors import InputError, RuntimeProblem

if TYPE_CHECKING:
    from gensift.daemon.runtime.service import Daemon

#: a file in the demo folder that says it is one (so a second run may clear it)
MARKER = ".gensift-demo"
#: what the simulated generator writes, in this order (shuffled with a fixed seed)
_PLAN = [*SCENES, *FAILURES, "mixed"]
_CHUNK = 4096


@dataclass(frozen=True)
class DemoOptions:
    folder: Path
    examples: int = 60  # training images per class
    held_out: int = 200  # images per class to choose the epoch on and to calibrate
    images: int = 24  # images the simulated generator writes
    epochs: int = 8
    image_size: int = 48
    device: str = "auto"
    rate: float = 4.0  # images per second from the simulated generator
    seed: int = 0


@dataclass(frozen=True)
class Generated:
    """One file the simulated generator wrote."""

    path: Path
    drawn_as: str  # a scene, a failure, or "truncated"
    style: str  # "webui" or "comfyui"


@dataclass(frozen=True)
class Row:
    """One line of the closing table: a generated file and its journal entry."""

    generated: Generated
    entry: Entry | None  # None: the daemon did not decide it in time

    @property
    def location(self) -> Path:
        """Where the file is now."""
        if self.entry is not None and self.entry.destination is not None:
            return self.entry.destination
        return self.generated.path


@dataclass(frozen=True)
class Correction:
    """A mistake the demo corrected the way a user would on the review page."""

    file: str
    stage: str
    was: str
    now: Path


@dataclass(frozen=True)
class DemoResult:
    folder: Path
    config: Path
    rows: list[Row]
    reports: dict[str, Path]
    exit_code: int  # the daemon's
    corrections: list[Correction]


def run_demo(opts: DemoOptions, out: TextIO) -> DemoResult:
    from gensift.daemon.runtime.service import Daemon

    folder = _prepare(opts.folder)
    say = _Printer(out)
    say.step(f"demo folder: {folder}")
    say.step(f"drawing {opts.examples} training and {opts.held_out} held-out images per class")
    quality_data, feature_data = write_training_sets(
        folder / "examples", opts.examples, seed=opts.seed
    )
    quality_held, feature_held = write_training_sets(
        folder / "held-out", opts.held_out, seed=opts.seed + 1
    )
    reports = {
        stage: _train(stage, data, held, folder / "models", opts, say)
        for stage, data, held in (
            ("quality", quality_data, quality_held),
            ("feature", feature_data, feature_held),
        )
    }
    config = _write_config(folder, opts)
    settings = load_config(config)
    setup_logging(settings.log)
    (folder / "generator-output").mkdir()
    say.step(f"starting the daemon: gensift watch -c {config}")
    daemon = Daemon(settings, config_path=config)
    with _running(daemon) as serving:
        generated = _generate(folder / "generator-output", opts, say)
        entries = _wait_for_decisions(settings, generated, serving, timeout=60 + 5 * opts.images)
        say.step("stopping the daemon (as systemd or Ctrl+C would)")
    code = serving.code
    rows = [Row(g, entries.get(g.path)) for g in generated]
    say.table(folder, rows)
    corrections = _correct(settings, rows, say)
    for stage in ("quality", "feature"):
        if any(c.stage == stage for c in corrections):
            _retrain(settings, stage, out, say)
    say.closing(folder, config, settings, reports)
    return DemoResult(folder, config, rows, reports, code, corrections)


# -- the folder -------------------------------------------------------------------------------


def _prepare(folder: Path) -> Path:
    """An empty demo folder: a new one, or an earlier demo's, cleared."""
    # resolved: the daemon journals real paths, and the table matches files by path
    folder = folder.expanduser().resolve()
    if folder.exists():
        if not folder.is_dir():
            raise InputError(f"{folder} is a file; give --dir a folder")
        if any(folder.iterdir()):
            if not (folder / MARKER).exists():
                raise InputError(
                    f"{folder} is not empty and was not made by gensift demo; "
                    "give --dir an empty or new folder"
                )
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("made by `gensift demo`; a new demo run clears this folder\n")
    return folder


def _write_config(folder: Path, opts: DemoOptions) -> Path:
    """The demo's config: every path inside ``folder``, everything else the defaults."""

    def q(path: Path) -> str:
        return json.dumps(str(path))

    text = f"""\
# Written by `gensift demo`. Every command takes it: gensift history -c {folder / "gensift.toml"}
[watch]
paths = [{q(folder / "generator-output")}]
settle_seconds = 1.0

[output]
root = {q(folder / "sorted")}
reject_action = "quarantine"
uncertain_action = "review"

[inference]
device = "{opts.device}"
batch_size = 8

[stages.quality]
checkpoint = {q(folder / "models" / "quality.safetensors")}
reject_classes = ["reject"]

[stages.feature]
checkpoint = {q(folder / "models" / "feature.safetensors")}

[journal]
path = {q(folder / "journal.sqlite3")}

[log]
level = "INFO"
"""
    path = folder / "gensift.toml"
    path.write_text(text)
    return path


# -- training ---------------------------------------------------------------------------------


def _train(
    stage: str, data: Path, held_out: Path, models: Path, opts: DemoOptions, say: _Printer
) -> Path:
    from gensift.models.train import TrainOptions, train

    say.step(f"training the {stage} stage on {data} (ResNet-18 from scratch, {opts.image_size} px)")
    started = time.monotonic()
    result = train(
        TrainOptions(
            stage=stage,  # type: ignore[arg-type]
            data=data,
            val_data=held_out,
            out=models / f"{stage}.safetensors",
            arch="resnet18",
            weights="none",
            epochs=opts.epochs,
            patience=opts.epochs,
            batch_size=32,
            image_size=opts.image_size,
            lr=3e-3,
            # 0.99 needs at least 299 held-out rejects to show; the demo holds out 200 a class
            target_precision=0.95,
            target_classes=["reject"] if stage == "quality" else None,
            device=opts.device,
            seed=opts.seed,
        )
    )
    if result is None:  # only other torchrun ranks get None
        raise RuntimeProblem("gensift demo cannot run under torchrun")
    if not result.published:
        raise RuntimeProblem(
            f"the {stage} stage did not pass the publish gate:\n{result.verdict.explain()}"
        )
    t = result.meta.thresholds
    threshold = (
        f"threshold {t['threshold']:.3f} (precision >= {t['precision_lower']:.3f} "
        f"on {t['count']} held-out images)"
        if t["reached"]
        else f"no threshold ({t.get('why', 'target not reached')})"
    )
    say.step(
        f"{stage}: held-out accuracy {result.verdict.accuracy}, {threshold}, "
        f"in {time.monotonic() - started:.0f} s; report: {result.report_dir}"
    )
    return result.report_dir


# -- the daemon and the generator -----------------------------------------------------------


@dataclass
class _Serving:
    """The daemon's thread, and its exit code once it has one."""

    thread: threading.Thread | None = None
    code: int = 1

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


@contextmanager
def _running(daemon: Daemon) -> Iterator[_Serving]:
    """Run ``daemon`` in a thread until READY; stop it (and wait) on the way out."""
    serving = _Serving()

    def serve() -> None:
        serving.code = daemon.run()

    serving.thread = threading.Thread(target=serve, name="gensift-demo-daemon", daemon=True)
    serving.thread.start()
    while not daemon.ready.wait(0.2):
        if not serving.alive():
            raise RuntimeProblem("the daemon stopped before it was ready; see the log above")
    try:
        yield serving
    finally:
        daemon.request_stop()
        serving.thread.join()


def _generate(outputs: Path, opts: DemoOptions, say: _Printer) -> list[Generated]:
    """Write ``opts.images`` images into ``outputs`` at ``opts.rate`` per second."""
    rng = np.random.default_rng(opts.seed + 1)
    kinds = [_PLAN[i % len(_PLAN)] for i in range(opts.images - 1)] + ["truncated"]
    rng.shuffle(kinds)
    say.step(f"simulated generator: {len(kinds)} images into {outputs}")
    webui = outputs / "txt2img-images" / time.strftime("%Y-%m-%d")
    webui.mkdir(parents=True, exist_ok=True)
    written = []
    for i, kind in enumerate(kinds):
        image = draw(kind if kind != "truncated" else "forest", rng)
        if i % 2 == 0:
            path = webui / f"{i:05d}-{int(rng.integers(1 << 31))}.png"
            _write_webui(image, path)
            written.append(Generated(path, kind, "webui"))
        else:
            path = outputs / f"ComfyUI_{i:05d}_.png"
            _write_comfyui(image, path, truncate=kind == "truncated")
            written.append(Generated(path, kind, "comfyui"))
        time.sleep(1 / opts.rate)
    return written


def _write_webui(image: Image.Image, path: Path) -> None:
    """A whole file under a temporary name, then renamed into place."""
    temporary = path.with_name(path.name + ".tmp")
    image.save(temporary, format="PNG")
    temporary.rename(path)


def _write_comfyui(image: Image.Image, path: Path, *, truncate: bool) -> None:
    """Written in place, a piece at a time; ``truncate`` stops half-way, as a crash would."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    if truncate:
        data = data[: len(data) // 2]
    with path.open("wb") as f:
        for start in range(0, len(data), _CHUNK):
            f.write(data[start : start + _CHUNK])
            f.flush()
            time.sleep(0.01)


def _wait_for_decisions(
    settings: Settings, generated: list[Generated], serving: _Serving, *, timeout: float
) -> dict[Path, Entry]:
    """Journal entries for the generated files, once all have one (or ``timeout`` passed, or
    the daemon stopped: its log says why)."""
    wanted = {g.path for g in generated}
    deadline = time.monotonic() + timeout
    found: dict[Path, Entry] = {}
    while True:
        with Journal.open_readonly(settings.journal.path) as journal:
            found = {
                e.source: e
                for e in journal.entries()
                if e.source in wanted and e.state in DECIDED_STATES
            }
        if len(found) == len(wanted) or time.monotonic() > deadline or not serving.alive():
            return found
        time.sleep(0.25)


# -- the learning loop ------------------------------------------------------------------------


def _correct(settings: Settings, rows: list[Row], say: _Printer) -> list[Correction]:
    """Each placed file the model got wrong or left for review, answered through the review
    page's own code (a journalled move and a label, as pressing a class key or X would)."""
    from gensift.daemon.review.actions import ActionError
    from gensift.daemon.review.server import build_review
    from gensift.daemon.routing.records import REJECTED_DIR

    reviewer = build_review(settings).reviewer
    done: list[Correction] = []
    for row in rows:
        e, truth = row.entry, row.generated.drawn_as
        if e is None or e.destination is None or e.state not in DECIDED_STATES:
            continue
        if truth in SCENES and e.folder != truth:  # a mistake, or an open question
            verb, cls, stage = "class", truth, "feature"
        elif truth not in SCENES and truth != "mixed" and e.folder != REJECTED_DIR:
            verb, cls, stage = "reject", None, "quality"
        else:
            continue
        try:
            result = reviewer.act(e.id, verb, "review", cls)  # type: ignore[arg-type]
        except ActionError as exc:
            say.step(f"could not correct {row.generated.path.name}: {exc}")
            continue
        now = (
            result.entry.destination if result.entry and result.entry.destination else e.destination
        )
        done.append(Correction(row.generated.path.name, stage, e.folder or "", now))
    if not done:
        say.step("nothing to correct: the models got every file right and were sure of it")
        return done
    say.step(
        f"answering {len(done)} file(s) the models got wrong or left in _review/, as you would "
        "on the review page (gensift review): each is a journalled move and a label"
    )
    home = settings.output.root.parent
    for c in done:
        print(f"  corrected {c.file}: {c.was}/ -> {c.now.relative_to(home)}", file=say.out)
    return done


def _retrain(settings: Settings, stage: str, out: TextIO, say: _Printer) -> None:
    from gensift.daemon.commands.retrain import format_result, retrain

    say.step(f"gensift retrain {stage}: the examples plus your labels, behind the publish gate")
    try:
        result = retrain(settings, stage, out=out)
    except InputError as exc:
        say.step(f"retrain: {exc}")
        return
    format_result(result, stage, out)


# -- what the user sees -----------------------------------------------------------------------


class _Printer:
    def __init__(self, out: TextIO) -> None:
        self.out = out

    def step(self, text: str) -> None:
        print(f"==> {text}", file=self.out, flush=True)

    def table(self, folder: Path, rows: list[Row]) -> None:
        header = ("file", "drawn as", "written", "action", "reason", "p", "now at")
        lines = [header]
        for row in rows:
            e = row.entry
            action = (
                "undecided"
                if e is None
                else e.action + (f" {e.label}" if e.label and e.action == "move" else "")
            )
            lines.append(
                (
                    row.generated.path.name,
                    row.generated.drawn_as,
                    row.generated.style,
                    action,
                    "" if e is None else e.reason,
                    "" if e is None or e.probability is None else f"{e.probability:.3f}",
                    str(row.location.relative_to(folder)),
                )
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        print(file=self.out)
        for line in lines:
            print(
                "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip(),
                file=self.out,
            )
        counts = Counter(line[3] + (f" ({line[4]})" if line[4] else "") for line in lines[1:])
        print(file=self.out)
        for label, count in sorted(counts.items()):
            print(f"  {count:>3}  {label}", file=self.out)
        print(file=self.out)

    def closing(
        self, folder: Path, config: Path, settings: Settings, reports: dict[str, Path]
    ) -> None:
        print(file=self.out)
        print(f"journal: {settings.journal.path}", file=self.out)
        for stage, report in reports.items():
            print(f"{stage} report: {report}", file=self.out)
        print(f"sorted files: {settings.output.root}", file=self.out)
        print(
            "\n'drawn as' is the truth. These models learnt from a few dozen drawn pictures in "
            "a few minutes, so a mistake or two is expected; what matters is that nothing is "
            "deleted, whatever falls below a threshold waits in sorted/_review/ for you, and every "
            "move can be undone. Trained on your own examples from a pretrained backbone "
            "(`gensift train`'s defaults), they do far better.",
            file=self.out,
        )
        print(
            f"\nLook at it all, with the keyboard: gensift review -c {config}\n"
            f"Every decision, with its probabilities: gensift history -c {config}\n"
            f"Put everything back: gensift undo --since 1h -c {config}\n"
            f"Run the daemon yourself: gensift watch -c {config}",
            file=self.out,
        )
