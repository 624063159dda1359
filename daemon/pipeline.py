"""Paths -> decisions -> file operations: the one pipeline ``sort`` and ``watch`` share.

:func:`load_cascade` turns the config into a :class:`~gensift.models.predictor.Predictor`
and a :class:`~gensift.daemon.decide.Policy`. :class:`Sifter` decodes files
in a bounded thread pool, culls corrupt and blank files by rule, batches the
rest through the cascade, decides, and hands each decision to the router.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from loguru import logger

from gensift.daemon.config import Settings
from gensift.daemon.decide import (
    Decision,
    Policy,
    check_reject_classes,
    decide,
    passes_quality,
    rule_decision,
    stage_threshold,
)
from gensift.daemon.decode import (
    Decoded,
    DecodePool,
    Decoder,
    FileInfo,
    default_workers,
    formats_for,
)
from gensift.daemon.fileops import shown
from gensift.daemon.folders import Excluded
from gensift.daemon.journal import Journal
from gensift.daemon.router import Outcome, Router
from gensift.models.errors import InputError
from gensift.models.fsutil import TEMP_PREFIX
from gensift.models.predictor import Predictor
from gensift.models.presets import STAGES, Stage


@dataclass(frozen=True)
class Cascade:
    predictor: Predictor
    policy: Policy


def load_cascade(settings: Settings) -> Cascade:
    """Load the configured checkpoints and the rules that act on their probabilities."""
    checkpoints: dict[Stage, Path | None] = {}
    for stage in STAGES:
        path = getattr(settings.stages, stage).checkpoint
        if path is not None and not path.is_file():
            raise InputError(
                f"stages.{stage}.checkpoint: {path} does not exist. Train it with "
                f"'gensift train {stage} --data DIR', or set the key to \"\" to turn the "
                f"{stage} stage off"
            )
        checkpoints[stage] = path
    predictor = Predictor.load(
        checkpoints, device=settings.inference.device, precision=settings.inference.precision
    )
    quality = predictor.stages.get("quality")
    feature = predictor.stages.get("feature")
    reject_classes = settings.stages.quality.reject_classes
    if quality is not None:
        check_reject_classes(reject_classes, quality.meta, str(quality.path))
    policy = Policy(
        reject_action=settings.output.reject_action,
        uncertain_action=settings.output.uncertain_action,
        reject_classes=frozenset(reject_classes),
        quality_threshold=None
        if quality is None
        else stage_threshold("quality", settings.stages.quality.threshold, quality.meta),
        feature_threshold=None
        if feature is None
        else stage_threshold("feature", settings.stages.feature.threshold, feature.meta),
    )
    return Cascade(predictor, policy)


def wanted(path: Path, patterns: Sequence[str]) -> bool:
    """Whether a file name matches the watch patterns (case-insensitive) and is not ours."""
    name = path.name.lower()
    if name.startswith(TEMP_PREFIX):
        return False
    return any(fnmatch.fnmatchcase(name, pattern.lower()) for pattern in patterns)


def discover(
    roots: Iterable[Path],
    patterns: Sequence[str],
    *,
    recursive: bool,
    exclude: Sequence[Path],
    reported: Reported | None = None,
) -> list[Path]:
    """Image files under ``roots`` (sorted), skipping symlinks and anything under ``exclude``.

    Folders are listed with ``os.scandir`` and excluded subtrees pruned as a whole (known by
    device and inode, :class:`~gensift.daemon.folders.Excluded`, so no spelling of the output
    root is listed), so a file costs no system call of its own (the daemon rescans with
    :func:`iter_files`, the same walk, unsorted).
    A folder that cannot be listed is skipped with a WARNING; with ``reported`` (the
    daemon's, kept across rescans) the same failure again is only a DEBUG line.
    """
    excluded = Excluded(exclude)
    unlisted = reported if reported is not None else Reported()
    found: set[Path] = set()
    for root in roots:
        if root.is_file():
            if not root.is_symlink() and wanted(root, patterns) and not excluded.holds(root.parent):
                found.add(root.absolute())
        elif root.is_dir():
            found.update(_files_under(root.absolute(), patterns, recursive, excluded, unlisted))
        else:
            raise InputError(f"{root}: no such file or folder")
    return sorted(found)


def iter_files(
    roots: Iterable[Path],
    patterns: Sequence[str],
    *,
    recursive: bool,
    exclude: Sequence[Path],
    reported: Reported | None = None,
) -> Iterator[Path]:
    """The files :func:`discover` finds, one folder listing at a time, unsorted: for scans
    of folders too large to hold (the daemon's rescans). Roots that are not folders are
    skipped."""
    excluded = Excluded(exclude)
    unlisted = reported if reported is not None else Reported()
    for root in roots:
        if root.is_dir():
            yield from _files_under(root.absolute(), patterns, recursive, excluded, unlisted)


def _files_under(
    root: Path,
    patterns: Sequence[str],
    recursive: bool,
    excluded: Excluded,
    reported: Reported,
) -> Iterator[Path]:
    """The walk: the root's own place is checked once (every folder above it), then each
    folder by itself as the walk reaches it (one ``stat`` per folder)."""
    if excluded.holds(root):
        return
    folders = [root]
    while folders:
        folder = folders.pop()
        if folder is not root and excluded.is_one(folder):
            continue
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            note = f"cannot list this folder ({exc.strerror or exc})"
            level = reported.level(folder, note, first="WARNING")
            logger.log(level, "{}: {}; skipped", shown(folder), note)
            continue
        reported.forget(folder)
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if recursive:
                    folders.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False) and wanted(Path(entry.name), patterns):
                yield Path(entry.path)


def undecided(paths: Iterable[Path], journal: Journal) -> tuple[list[Path], int]:
    """The paths with no decision yet (same path, size and mtime), and how many were skipped."""
    todo, skipped = [], 0
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue
        if journal.decided(FileInfo(path, st.st_size, st.st_mtime_ns)):
            skipped += 1
        else:
            todo.append(path)
    return todo, skipped


class Reported:
    """The problems already logged, by path.

    A file the daemon cannot read (or cannot move), or a folder it cannot list, is tried
    again at every rescan; the first failure is logged at its level (ERROR for a file,
    WARNING for a folder), the same failure again only at DEBUG, so one that stays for
    weeks does not fill the log. A different failure, or the same one after the file was
    decided or the folder listed, is logged in full again. Past ``limit`` paths it starts
    over.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._notes: dict[Path, str] = {}

    def level(self, path: Path, note: str, first: str = "ERROR") -> str:
        """The log level for ``note`` about ``path``: ``first`` the first time, then DEBUG."""
        if self._notes.get(path) == note:
            return "DEBUG"
        if len(self._notes) >= self.limit:
            self._notes.clear()
        self._notes[path] = note
        return first

    def forget(self, path: Path) -> None:
        self._notes.pop(path, None)


class Sifter:
    """Runs files through decode -> cascade -> decision -> router."""

    def __init__(
        self,
        settings: Settings,
        cascade: Cascade,
        router: Router,
        *,
        workers: int | None = None,
        reported: Reported | None = None,
    ) -> None:
        self.settings = settings
        self.cascade = cascade
        self.router = router
        self.reported = reported or Reported()
        predictor = cascade.predictor
        self.decoder = Decoder(
            presets=predictor.presets,
            formats=formats_for(settings.watch.patterns),
            settle_seconds=settings.watch.settle_seconds,
        )
        self.workers = workers or default_workers(predictor.device)
        self._passes = partial(passes_quality, cascade.policy)

    def sift(self, paths: Iterable[Path]) -> Iterator[Outcome]:
        """Decide and route every path, yielding one outcome per path."""
        batch_size = self.settings.inference.batch_size
        pool = DecodePool(self.decoder, self.workers, window=max(4 * batch_size, 2 * self.workers))
        batch: list[Decoded] = []
        for item in pool.map(paths):
            if item.status == "ok":
                batch.append(item)
                if len(batch) >= batch_size:
                    yield from self.run_batch(batch)
                    batch = []
            else:
                yield self.by_rule(item)
        if batch:
            yield from self.run_batch(batch)

    def by_rule(self, item: Decoded) -> Outcome:
        """Corrupt and blank files are decided without a model; the rest wait for later."""
        if item.status in ("corrupt", "blank"):
            decision = rule_decision(self.cascade.policy, item.status, item.note)  # type: ignore[arg-type]
            return self._route(item, decision, {})
        path = item.file.path
        level = self.reported.level(path, item.note) if item.status == "unreadable" else "INFO"
        logger.log(level, "{}: {}; left for later", shown(path), item.note)
        return Outcome(item.file, None, None, item.status, item.note)

    def run_batch(self, batch: Sequence[Decoded]) -> list[Outcome]:
        """One forward pass of the cascade over decoded images, then their decisions."""
        predictor = self.cascade.predictor
        inputs = {
            key: preset.normalize(torch.stack([item.inputs[key] for item in batch]))
            for key, preset in predictor.presets.items()
        }
        results = predictor.predict(inputs, self._passes)
        outcomes = []
        for item, probs in zip(batch, results, strict=True):
            decision = decide(self.cascade.policy, probs.get("quality"), probs.get("feature"))
            ids = {stage: predictor.stages[stage].meta.id for stage in probs}
            outcomes.append(self._route(item, decision, ids))
        return outcomes

    def _route(self, item: Decoded, decision: Decision, checkpoints: dict[str, str]) -> Outcome:
        outcome = self.router.apply(item.file, decision, checkpoints)
        path, folder = item.file.path, outcome.destination
        if outcome.state == "failed":
            logger.log(self.reported.level(path, outcome.note), "{}", outcome.describe())
        elif outcome.state == "refused":  # one error for the folder, not one per file
            assert folder is not None
            logger.log(self.reported.level(folder, outcome.note), "{}", outcome.note)
            level = self.reported.level(path, outcome.note, first="INFO")
            logger.log(level, "{}: {} refused; left in place", shown(path), decision.action)
        else:
            self.reported.forget(path)
            if folder is not None:
                self.reported.forget(folder.parent)  # the folder works: news if it breaks
            logger.info("{}", outcome.describe())
        return outcome
