"""The ``gensift`` command.

Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error. Errors a
user can fix are printed as one paragraph naming the file, key or path at
fault; tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TextIO

from loguru import logger

from gensift.daemon.config import (
    ConfigError,
    Settings,
    config_warnings,
    load_config,
    render_settings,
)
from gensift.daemon.logs import setup_logging, tqdm_sink
from gensift.daemon.runtime.layout import check_training_data
from gensift.models.errors import InputError, RuntimeProblem

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A mistake in what the user asked for (exit code 2)."""


def _package_version() -> str:
    try:
        return version("gensift")
    except PackageNotFoundError:
        return "unknown"


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _add_config_option(
    parser: argparse.ArgumentParser,
    missing: str = "a missing default file means built-in defaults",
) -> None:
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        metavar="CONFIG",
        help="config file (default: $GENSIFT_CONFIG, else the user config dir's "
        f"gensift/config.toml; {missing})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gensift",
        description="Sift an image generator's output: a calibrated quality -> feature "
        "classifier cascade that moves, quarantines or leaves each new image.",
    )
    parser.add_argument("--version", action="version", version=f"gensift {_package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_watch(commands)
    _add_sort(commands)
    _add_undo(commands)
    _add_history(commands)
    _add_review(commands)
    _add_labels(commands)
    _add_stats(commands)
    _add_retrain(commands)
    _add_train(commands)
    _add_evaluate(commands)
    _add_models(commands)
    _add_config(commands)
    _add_service(commands)
    _add_demo(commands)
    return parser


def _add_watch(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "watch",
        help="run the daemon in the foreground (what the services run)",
        description="Watch watch.paths and sift every new image once it is complete: the "
        "quality -> feature cascade decides, the file is moved, quarantined or left, and the "
        "journal records why. Files already there are handled by a start-up scan, and a "
        "rescan every watch.rescan_seconds catches anything the observer missed. A replaced "
        "checkpoint is loaded in the background and swapped in between batches. SIGTERM or "
        "Ctrl+C finishes the batch in flight and exits 0 (a second Ctrl+C exits at once); "
        "SIGHUP reloads the config and the checkpoints. Under systemd (Type=notify) it reports "
        "READY after the start-up scan, STATUS, and watchdog pings.",
    )
    _add_config_option(p)
    p.set_defaults(handler=_run_watch)


def _add_sort(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "sort",
        help="classify and route image files already on disk, then exit",
        description="Run every matching image (watch.patterns) in DIR through the quality -> "
        "feature cascade and move, quarantine or leave it by the rules of the config, with a "
        "progress bar and a closing summary. Every decision is journaled (see 'gensift "
        "history'; 'gensift undo' moves files back). Files already decided are skipped.",
    )
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="folders (or files) to sort")
    p.add_argument("--recursive", action="store_true", help="also sort files in subfolders")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would happen to each file and touch nothing (no moves, no journal)",
    )
    p.add_argument(
        "--plan",
        type=Path,
        metavar="FILE.csv",
        help="also write the plan (or, without --dry-run, what was done) as CSV: source, "
        "action, reason, class, probability, destination, state, note and the probabilities",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_option(p)
    p.set_defaults(handler=_run_sort)


def _add_undo(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "undo",
        help="move sorted files back where they came from",
        description="Using the journal, move files that gensift moved (to a class folder, "
        "_rejected/ or _review/) back to their original paths, oldest first. Without --since, "
        "undoes the last 'gensift sort' run (after the daemon, --since is required). Needs the "
        "daemon stopped: one process at a time moves files under a journal. Nothing is "
        "overwritten: a file whose original name is taken again (a generator that reused "
        "it) comes back next to it as name-1.png. A file that changed or vanished since it "
        "was sorted is left where it is, listed with the reason, and the exit code is 1. "
        "Trashed or deleted files are listed; restore trashed ones from the recycle bin.",
    )
    p.add_argument(
        "--since",
        metavar="DURATION",
        help="undo every move of the last DURATION (e.g. 30m, 2h, 1d, 1h30m) instead of the "
        "last run",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="list what would move back; touch nothing"
    )
    _add_config_option(p)
    p.set_defaults(handler=_run_undo)


def _add_history(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "history",
        help="recent decisions from the journal",
        description="Print the most recent decisions, newest first: time, action, class, "
        "reason, state, probability, source and destination.",
    )
    p.add_argument(
        "--limit", type=_positive_int, default=20, help="how many decisions (default 20)"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per line (source, destination, action, reason, class, "
        "probabilities, checkpoints, time, state, ...)",
    )
    _add_config_option(p)
    p.set_defaults(handler=_run_history)


def _add_review(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "review",
        help="a keyboard-driven page to review, correct and audit decisions",
        description="Serve the review page on 127.0.0.1 and open it in the browser. The "
        "printed address holds this run's token; without it the page answers 403. Every "
        "action is a journalled move (gensift history lists it, gensift undo reverses "
        "it) and a label for retraining. Works while gensift watch runs on the same "
        "config. Press ? on the page for the keys.",
    )
    p.add_argument("--port", type=_port, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--no-browser", action="store_true", help="only print the address")
    _add_config_option(p)
    p.set_defaults(handler=_run_review)


def _add_labels(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "labels",
        help="the labels given on the review page, counted",
        description="Count the labels that stand (the newest label of each file and "
        "stage that was not undone), by stage, label and source (review, audit, rescue).",
    )
    p.add_argument("--json", action="store_true", help="every standing label and the counts")
    _add_config_option(p)
    p.set_defaults(handler=_run_labels)


def _add_stats(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "stats",
        help="where files are, and the live precision of automatic moves (audits)",
        description="How many files gensift and you put in each folder, and per class: how "
        "many audited automatic moves the person confirmed, "
        "with an exact 95 % interval and the count it rests on. Exits 1 when a class is, "
        "with 95 % confidence, below the target precision of the feature checkpoint.",
    )
    p.add_argument("--json", action="store_true", help="the same as JSON")
    _add_config_option(p)
    p.set_defaults(handler=_run_stats)


def _add_retrain(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "retrain",
        help="update a stage's live model with the labels given on the review page",
        description="Train on the example folders the live checkpoint was trained from plus "
        "every file labelled on the review page, hold out about a third of the labels (by "
        "generation) for the gate, and publish only what the gate passes; a running "
        "gensift watch reloads it. By default a fast update on the live model's frozen "
        "features. Exit 0 when published (or, with --dry-run, when the gate passed), 1 "
        "when the gate refused.",
    )
    p.add_argument("stage", choices=["quality", "feature"], help="which stage")
    p.add_argument("--dry-run", action="store_true", help="train and report, publish nothing")
    p.add_argument(
        "--fine-tune",
        action="store_true",
        help="train every layer from the live weights (slower) instead of a new head on "
        "the frozen backbone",
    )
    p.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="the example folders (default: the ones the live checkpoint records)",
    )
    _add_config_option(p)
    p.set_defaults(handler=_run_retrain)


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number (0-65535), got {text}")
    return value


def _add_train(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train",
        help="fine-tune one stage from a folder of class subfolders",
        description="Train the quality or feature stage from DIR/<class>/<image> "
        "(png, jpg, jpeg, webp). Held-out images (variants of one generation kept together) "
        "are split in two: one part chooses the epoch, the other fits the temperature and the "
        "threshold and judges the result. The run writes a candidate checkpoint and a report "
        "(metrics.json and plots); the gate publishes it over --out only if it beats chance "
        "and is not worse than the live checkpoint on the same images. Exit 1 if refused.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("stage", choices=["quality", "feature"], help="which stage to train")
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="class-folder tree")
    val = p.add_mutually_exclusive_group()
    val.add_argument(
        "--val-split",
        type=_unit_interval,
        default=0.2,
        help="share of each class held out for validation (stratified, seeded)",
    )
    val.add_argument(
        "--val-data", type=Path, metavar="DIR", help="a separate validation class-folder tree"
    )
    p.add_argument(
        "--arch",
        default="resnet50",
        choices=["resnet50", "resnet18", "efficientnet_b0", "mobilenet_v3_large", "convnext_tiny"],
        help="backbone architecture",
    )
    p.add_argument(
        "--weights",
        default="imagenet",
        metavar="imagenet|none|PATH",
        help="starting weights: torchvision's ImageNet weights (downloaded once), none "
        "(random), or a torchvision weights file (.pth or .safetensors) for offline machines",
    )
    p.add_argument(
        "--init-from",
        type=Path,
        metavar="CHECKPOINT",
        help="start from an earlier gensift checkpoint's backbone (and head, when the "
        "classes are the same): staged transfer learning",
    )
    p.add_argument(
        "--freeze-backbone",
        action="store_true",
        help="train only the head, on backbone features computed once (fast on CPU; both "
        "stages trained this way on the same weights share one backbone at inference)",
    )
    p.add_argument(
        "--epochs",
        type=_positive_int,
        help="maximum epochs (default 10, or 60 with --freeze-backbone); early stopping may "
        "end sooner, but never in the first half",
    )
    p.add_argument(
        "--warmup-epochs",
        type=_non_negative_int,
        help="epochs training only the head before full fine-tuning (default 1 from "
        "pretrained or --init-from weights, 0 from scratch)",
    )
    p.add_argument(
        "--patience",
        type=_positive_int,
        help="stop after this many epochs without a lower loss on the selection images "
        "(default 3, or 10 with --freeze-backbone)",
    )
    p.add_argument(
        "--min-steps",
        type=_non_negative_int,
        help="at least this many optimiser steps in all, passing over small data several "
        "times an epoch (default 1000 with --weights none, 300 from pretrained weights, "
        "0 with --freeze-backbone)",
    )
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images per batch")
    p.add_argument(
        "--image-size", type=_positive_int, default=224, help="side of the square network input"
    )
    p.add_argument(
        "--lr",
        type=float,
        default=1e-3,
        help="learning rate (from pretrained weights the backbone gets a tenth of it)",
    )
    p.add_argument(
        "--schedule",
        choices=["cosine", "onecycle"],
        default="cosine",
        help="learning-rate schedule (both with warm-up)",
    )
    p.add_argument(
        "--target-precision",
        type=_unit_interval,
        help="precision the stored threshold must reach, as a 95 %% lower bound on at least "
        "20 calibration images (default 0.99 for the quality stage's reject classes, 0.95 for "
        "feature classes)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument(
        "--workers",
        type=int,
        help="image-decoding worker processes (default: by device and CPU count)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for the split, sampling and init")
    p.add_argument(
        "--out",
        type=Path,
        metavar="PATH",
        help="checkpoint to publish (default: the stage's checkpoint path in the config, where "
        "the daemon reads it); the run writes PATH's .candidate file and publishes it only "
        "if the gate passes it, keeping the replaced file under PATH's .versions/ folder",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="publish the candidate even if the gate refuses it",
    )
    p.add_argument(
        "--allow-sorted-data",
        action="store_true",
        help="train on the config's output.root (or a folder in it) after you have reviewed "
        "its class folders; refused without this, as they hold the current models' own "
        "sorting (_rejected/ and _review/ are never classes)",
    )
    p.add_argument(
        "--allow-watched-data",
        action="store_true",
        help="train on images in a folder of the config's watch.paths; refused without this, "
        "as a running daemon moves files out of it",
    )
    p.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="report folder (default: beside the checkpoint, named after it: "
        "quality.safetensors -> quality.report/)",
    )
    _add_config_option(p)
    p.set_defaults(handler=_run_train)


def _add_evaluate(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "evaluate",
        help="metrics, confusion matrix and threshold table on labelled data",
        description="Run CHECKPOINT over DIR/<class>/<image> and write a report (metrics.json "
        "with accuracy, confusion matrix, per-class precision/recall/f1, the precision / "
        "coverage table, and plots). Folder names must be classes of the checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", help="a .safetensors checkpoint")
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="class-folder tree")
    p.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="report folder (default: beside the checkpoint, <stem>.eval-<data folder name>/)",
    )
    p.add_argument(
        "--target-precision",
        type=_unit_interval,
        help="precision for the threshold computed on this data (default: the checkpoint's)",
    )
    p.add_argument("--batch-size", type=_positive_int, default=32, help="images per batch")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--workers", type=int, help="image-decoding worker processes")
    _add_config_option(p)
    p.set_defaults(handler=_run_evaluate)


def _add_models(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "models",
        help="a stage's published checkpoint versions: list them, roll back",
        description="Every publish (by 'gensift train' or a rollback) keeps the checkpoint "
        "it replaces under <checkpoint stem>.versions/ beside it, the last 5 of them.",
    )
    sub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    listing = sub.add_parser(
        "list",
        help="the kept versions and the live checkpoint, with their metrics",
        description="List the kept versions of STAGE's checkpoint, oldest first, then the "
        "live one: id, creation time, held-out accuracy with its 95 % lower bound and count, "
        "the threshold with its precision bound, and the classes.",
    )
    back = sub.add_parser(
        "rollback",
        help="put an earlier version back as the live checkpoint",
        description="Publish a kept version of STAGE's checkpoint again, atomically; the live "
        "file is kept as a version first, so a rollback can itself be rolled back. A running "
        "'gensift watch' reloads it like any new checkpoint.",
    )
    for action in (listing, back):
        action.add_argument("stage", choices=["quality", "feature"], help="which stage")
        action.add_argument(
            "--checkpoint",
            type=Path,
            metavar="PATH",
            help="the live checkpoint (default: the stage's checkpoint path in the config)",
        )
        _add_config_option(action)
        action.set_defaults(handler=_run_models)
    back.add_argument(
        "version",
        nargs="?",
        metavar="VERSION",
        help="the version's name or id (see 'gensift models list'; default: the newest kept "
        "version that is not live)",
    )


def _add_config(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("config", help="configuration tools")
    sub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = sub.add_parser(
        "check",
        help="validate a config and print the effective settings",
        description="Validate the config file (and GENSIFT_<SECTION>__<KEY> environment "
        "overrides) and print the effective settings as TOML. Exit code 2 on any error.",
    )
    _add_config_option(check)
    check.set_defaults(handler=_run_config_check)


def _add_service(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "service",
        help="install gensift as a service (systemd on Linux, a Windows service on Windows)",
        description="Install, remove, start or stop the service that runs `gensift watch -c "
        "CONFIG` for good: a systemd unit on Linux (see systemd/README.md), a Windows service "
        "on Windows (see docs/windows.md). `install` checks the config first; uninstall, "
        "start and stop work without one.",
    )
    sub = p.add_subparsers(dest="service_command", required=True, metavar="ACTION")
    for name, text in (
        ("install", "write the unit (or register the service), enable and start it"),
        ("uninstall", "stop, disable and remove the service"),
        ("start", "start the installed service"),
        ("stop", "stop the installed service (it finishes the batch in flight)"),
    ):
        action = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        scope = action.add_mutually_exclusive_group()
        scope.add_argument(
            "--user",
            dest="scope",
            action="store_const",
            const="user",
            help="Linux: a systemd user unit (systemctl --user); the default unless run as root",
        )
        scope.add_argument(
            "--system",
            dest="scope",
            action="store_const",
            const="system",
            help="Linux: a system unit running as the dedicated user 'gensift' (needs root)",
        )
        action.add_argument(
            "--dry-run", action="store_true", help="print what would be written and run; do nothing"
        )
        _add_config_option(
            action,
            missing="the service runs with this file, so it must exist"
            if name == "install"
            else "not needed: on Windows it only names the files kept and the log to read",
        )
        action.set_defaults(handler=_run_service)


def _add_demo(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "demo",
        help="the whole loop on this machine, nothing downloaded: train, watch, sort",
        description="Draw example training sets, train both stages from scratch on the CPU "
        "(ResNet-18, small images), start the daemon on a simulated generator's output "
        "folder, let the generator write images the way the WebUI (temporary name, then "
        "rename) and ComfyUI (written in place) do, stop the daemon and print what went "
        "where and why. About three minutes on two CPU cores. Everything stays in --dir.",
    )
    p.add_argument(
        "--dir",
        type=Path,
        default=Path("gensift-demo"),
        help="the demo folder (default: ./gensift-demo; an earlier demo's folder is cleared)",
    )
    p.add_argument(
        "--examples",
        type=_positive_int,
        default=60,
        help="training images per class (default: %(default)s)",
    )
    p.add_argument(
        "--images",
        type=_positive_int,
        default=24,
        help="images the generator writes (default: %(default)s)",
    )
    p.add_argument(
        "--epochs",
        type=_positive_int,
        default=8,
        help="training epochs per stage (default: %(default)s)",
    )
    p.add_argument(
        "--image-size",
        type=_positive_int,
        default=48,
        help="training image size in pixels (default: %(default)s)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(handler=_run_demo)


def _settings(
    args: argparse.Namespace, *, sink: TextIO | None = None, warn: bool = True
) -> Settings:
    """The settings, with logging set up; ``warn``: log what the config got wrong but
    accepted (``watch`` logs it itself, at start-up and at each reload)."""
    settings = load_config(args.config)
    setup_logging(settings.log, sink=sink)
    for note in config_warnings(settings) if warn else []:
        logger.warning("config: {}", note)
    return settings


def _run_config_check(args: argparse.Namespace) -> int:
    settings = load_config(args.config)
    for note in config_warnings(settings):
        print(f"gensift: warning: {note}", file=sys.stderr)
    sys.stdout.write(render_settings(settings))
    return EXIT_OK


def _run_watch(args: argparse.Namespace) -> int:
    from gensift.daemon.runtime.service import Daemon

    settings = _settings(args, warn=False)
    code = Daemon(settings, config_path=args.config).run()
    # Everything that matters is closed (journal committed, lock released). Tearing down
    # torch can take tens of seconds on a loaded machine, and a service manager waits for
    # the process to end, so end it now.
    logger.complete()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run_sort(args: argparse.Namespace) -> int:
    from gensift.daemon.commands.sort import format_summary, run_sort

    progress = not args.no_progress and sys.stderr.isatty()
    settings = _settings(args, sink=tqdm_sink() if progress else None)
    result = run_sort(
        settings,
        args.dirs,
        recursive=args.recursive,
        dry_run=args.dry_run,
        plan=args.plan,
        progress=progress,
    )
    print(format_summary(result, dry_run=args.dry_run))
    if args.plan:
        print(f"plan: {args.plan}")
    return EXIT_FAILURE if result.failed else EXIT_OK


def _run_undo(args: argparse.Namespace) -> int:
    from gensift.daemon.commands.history import format_undo, parse_duration, run_undo

    settings = _settings(args)
    since = parse_duration(args.since) if args.since else None
    result = run_undo(settings, since, dry_run=args.dry_run)
    format_undo(result, dry_run=args.dry_run, out=sys.stdout)
    return EXIT_FAILURE if result.not_restored else EXIT_OK


def _run_history(args: argparse.Namespace) -> int:
    from gensift.daemon.commands.history import show_history

    settings = _settings(args)
    if show_history(settings, args.limit, as_json=args.json, out=sys.stdout) == 0 and not args.json:
        print(f"no decisions in {settings.journal.path} yet")
    return EXIT_OK


def _run_review(args: argparse.Namespace) -> int:
    from gensift.daemon.review.server import run_review

    return run_review(_settings(args), port=args.port, open_browser=not args.no_browser)


def _run_labels(args: argparse.Namespace) -> int:
    from gensift.daemon.commands.labels import show_labels

    return show_labels(_settings(args), as_json=args.json, out=sys.stdout)


def _run_stats(args: argparse.Namespace) -> int:
    from gensift.daemon.commands.labels import show_stats

    return show_stats(_settings(args), as_json=args.json, out=sys.stdout)


def _run_retrain(args: argparse.Namespace) -> int:
    from gensift.daemon.commands.retrain import format_result, retrain

    settings = _settings(args)
    result = retrain(
        settings, args.stage, dry_run=args.dry_run, fine_tune=args.fine_tune, data=args.data,
        out=sys.stdout,
    )  # fmt: skip
    format_result(result, args.stage, sys.stdout)
    passed = bool(result.verdict.get("passed"))
    return EXIT_OK if (result.published or (args.dry_run and passed)) else EXIT_FAILURE


def _print_report(metrics: dict, **where: str) -> None:
    """The per-class and threshold tables, then labelled lines saying where things were written."""
    from gensift.models.report import format_per_class_table, format_threshold_table

    print(format_per_class_table(metrics))
    print(format_threshold_table(metrics["thresholds"]))
    width = max(map(len, where), default=0) + 1
    for label, value in where.items():
        print(f"{label + ':':<{width}} {value}")


def _run_train(args: argparse.Namespace) -> int:
    from gensift.models.train import TrainOptions, train

    settings = _settings(args)
    for option, folder in (("--data", args.data), ("--val-data", args.val_data)):
        if folder is not None:
            check_training_data(
                settings,
                folder,
                option=option,
                allow_sorted=args.allow_sorted_data,
                allow_watched=args.allow_watched_data,
            )
    stage_settings = getattr(settings.stages, args.stage)
    out = args.out or stage_settings.checkpoint
    if out is None:
        raise UsageError(
            f"no --out given and stages.{args.stage}.checkpoint is empty in the config; "
            "say where to write the checkpoint"
        )
    result = train(
        TrainOptions(
            stage=args.stage,
            data=args.data,
            out=out,
            report=args.report,
            val_data=args.val_data,
            val_split=args.val_split,
            arch=args.arch,
            weights=args.weights,
            init_from=args.init_from,
            epochs=args.epochs,
            warmup_epochs=args.warmup_epochs,
            patience=args.patience,
            min_steps=args.min_steps,
            force=args.force,
            batch_size=args.batch_size,
            image_size=args.image_size,
            lr=args.lr,
            schedule=args.schedule,
            freeze_backbone=args.freeze_backbone,
            target_precision=args.target_precision,
            target_classes=settings.stages.quality.reject_classes
            if args.stage == "quality"
            else None,
            device=args.device,
            workers=args.workers,
            seed=args.seed,
        )
    )
    if result is None:  # a non-zero torchrun rank
        return EXIT_OK
    _print_report(result.metrics)
    print(result.verdict.explain())
    if result.published:
        forced = "" if result.verdict.passed else ", forced past the gate"
        print(f"published: {result.checkpoint} (id {result.meta.id}{forced})")
        print(f"report:    {result.report_dir}")
        return EXIT_OK
    print(
        f"not published: the candidate was left at {result.checkpoint} (id {result.meta.id}) "
        f"and {out} was not touched. Add examples and train again, or pass --force to "
        f"publish it anyway.\nreport: {result.report_dir}",
        file=sys.stderr,
    )
    return EXIT_FAILURE


def _run_evaluate(args: argparse.Namespace) -> int:
    from gensift.models.evaluate import evaluate

    _settings(args)
    result = evaluate(
        args.checkpoint,
        args.data,
        args.report,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        target_precision=args.target_precision,
    )
    _print_report(result.metrics, report=str(result.report_dir))
    return EXIT_OK


def _run_models(args: argparse.Namespace) -> int:
    from gensift.daemon.commands.models import run_rollback, show_versions, stage_checkpoint

    settings = _settings(args)
    if args.models_command == "list":
        show_versions(
            stage_checkpoint(settings, args.stage, args.checkpoint), args.stage, sys.stdout
        )
    else:
        run_rollback(settings, args.stage, args.checkpoint, args.version, sys.stdout)
    return EXIT_OK


def _run_demo(args: argparse.Namespace) -> int:
    from gensift.daemon.demo.run import DemoOptions, run_demo

    result = run_demo(
        DemoOptions(
            folder=args.dir,
            examples=args.examples,
            images=args.images,
            epochs=args.epochs,
            image_size=args.image_size,
            device=args.device,
        ),
        sys.stdout,
    )
    undecided = sum(row.entry is None for row in result.rows)
    if undecided:
        print(f"gensift demo: {undecided} file(s) were not decided in time", file=sys.stderr)
    return EXIT_FAILURE if undecided or result.exit_code else EXIT_OK


def _run_service(args: argparse.Namespace) -> int:
    from gensift.daemon.platforms.install import run_service

    return run_service(
        args.service_command,
        scope=args.scope,
        config=args.config,
        dry_run=args.dry_run,
        out=sys.stdout,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("gensift: interrupted", file=sys.stderr)
        return 130
    except (ConfigError, UsageError, InputError) as exc:
        print(f"gensift: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeProblem as exc:
        print(f"gensift: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception:  # noqa: BLE001 - the last resort: log the traceback, exit 1
        logger.exception("gensift {} failed", args.command)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
