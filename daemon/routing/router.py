"""Decisions -> file operations, each one journaled before and after it happens.

The :class:`Router` carries out a :class:`~gensift.daemon.routing.records.Decision`:
move to ``<root>/<class>/``, quarantine to ``<root>/_rejected/``, review to
``<root>/_review/``, the OS recycle bin (falling back to quarantine where there
is none), permanent delete, or leave in place. Moves go through
:func:`gensift.daemon.routing.fileops.transfer`, which never overwrites; what a crash
interrupts is settled by :mod:`gensift.daemon.routing.recovery`.

A batch's decisions are carried out together (:meth:`Router.apply_many`; ``apply`` is a
batch of one), because each journal commit is a disk sync: the batch's intents in one
commit, then its file operations, then the folders they changed synced once each, then
its completions in one commit. Every intent is on disk before its operation starts and
every completion only after its operation is, as when files went one at a time.

In a dry run nothing on disk or in the journal changes; names a real run would
take are claimed in memory so the plan shows the same renames.
"""

from __future__ import annotations

import ntpath
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from loguru import logger

from gensift.daemon.config import OutputSettings
from gensift.daemon.routing.fileops import (
    SourceChangedError,
    confined,
    free_name,
    shown,
    transfer,
)
from gensift.daemon.routing.folders import ClassFolders
from gensift.daemon.routing.journal import Journal
from gensift.daemon.routing.records import Decision, FileInfo, FileState
from gensift.daemon.routing.sidecars import remove_sidecar, write_sidecar
from gensift.models.fsutil import fsync_dir


@dataclass(frozen=True)
class Outcome:
    """What happened to one file.

    ``state``: done, planned (dry run), skipped (name taken, ``on_conflict = "skip"``),
    failed, stale (changed since it was read, or while it was copied to another
    disk: left in place), refused (its class folder is a symlink that may not be followed,
    :class:`~gensift.daemon.routing.folders.ClassFolders`; left in place, not journaled, and
    ``destination`` is that folder), or, with no decision: unsettled (still being
    written), unreadable or gone. Stale, refused and undecided files are seen again by the
    next run or rescan.
    """

    file: FileInfo
    decision: Decision | None
    destination: Path | None
    state: FileState
    note: str = ""
    checkpoints: Mapping[str, str] | None = None

    @property
    def action(self) -> str:
        return self.decision.action if self.decision is not None else "none"

    def describe(self) -> str:
        """One line saying what happened to the file and why (the log, the dry-run plan)."""
        d = self.decision
        path = shown(self.file.path)
        if d is None:
            return f"{path}: not decided ({self.state}: {self.note})"
        why = d.reason if d.label is None else f"{d.reason} {d.label}"
        p = "" if d.probability is None else f" p={d.probability:.3f}"
        where = f" -> {shown(self.destination)}" if self.destination is not None else ""
        note = f" ({self.note})" if self.note else ""
        return f"{path}: {d.action} [{self.state}] {why}{p}{where}{note}"


class Job(NamedTuple):
    """One file for :meth:`Router.apply_many`: as it was read, what to do with it, and the
    checkpoints (stage -> id) that decided it."""

    file: FileInfo
    decision: Decision
    checkpoints: Mapping[str, str]


@dataclass
class _Step:
    """A file of a round that gets a journal row, written in the round's intent commit.

    The row is an ``intent`` when a file operation follows (a move to ``destination``, or
    a removal); else it is final already (``state``: ``leave`` is done, a name taken under
    ``on_conflict = "skip"`` skipped) and ``outcome`` is known. ``job`` is what the row
    records (a skip's decision carries the note saying why).
    """

    index: int
    job: Job
    destination: Path | None = None
    state: FileState = FileState.INTENT
    outcome: Outcome | None = None
    entry_id: int = 0


@dataclass(frozen=True)
class _Ended:
    """How a step's file operation ended: its row's final state and note, and the file's
    outcome, or the job to try in the next round (a name taken meanwhile, or trash with no
    recycle bin, as a quarantine)."""

    state: FileState
    note: str | None = None
    outcome: Outcome | None = None
    retry: Job | None = None


class Router:
    """Carries out decisions under ``output.root``; one thread per instance.

    ``folders`` judges class folders that are symlinks (by default: none is watched).
    """

    def __init__(
        self,
        output: OutputSettings,
        journal: Journal,
        run: str,
        *,
        dry_run: bool = False,
        force_copy: bool = False,
        guard: AbstractContextManager[object] | None = None,
        folders: ClassFolders | None = None,
    ) -> None:
        self.output = output
        self.folders = folders or ClassFolders(output.root)
        self.journal = journal
        self.run = run
        self.dry_run = dry_run
        self.force_copy = force_copy
        self.guard = guard or nullcontext()
        self._claimed: set[Path] = set()

    def apply(self, file: FileInfo, decision: Decision, checkpoints: Mapping[str, str]) -> Outcome:
        """Carry out ``decision`` for ``file`` (or plan it, in a dry run): a batch of one."""
        [outcome] = self.apply_many([Job(file, decision, checkpoints)])
        return outcome

    def apply_many(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Carry out a batch of decisions (or plan them, in a dry run); the outcomes in the
        order of ``jobs``.

        The daemon passes a lock as ``guard``: while it holds that lock itself, no file
        operation is half done, so it can exit at once.

        Each file fares as it would alone, but the journal is written in two commits
        rather than two per file: every row of the batch (an intent, or a final ``leave``
        or skip) in one before the first file operation starts, then the operations, the
        folders they changed synced once each, and every completion in one commit. A crash
        in between leaves intents, which :func:`~gensift.daemon.routing.recovery.repair`
        settles one by one, as after a crash in :meth:`apply`. Names are claimed for the
        whole batch before anything moves, so two of its files never get one name (with
        ``on_conflict = "skip"`` the second of two same-named files is skipped). A file
        whose name was taken meanwhile, or that had no recycle bin, is tried again in
        another round after the batch's completions.
        """
        outcomes: dict[int, Outcome] = {}
        todo = list(enumerate(jobs))
        while todo:
            # The guard is held for a whole round (plan, intents, operations, completions),
            # not per phase or per file: the daemon's stopper, which takes it and exits, then
            # never finds a batch half recorded (intents whose operations never started,
            # moves done but not yet recorded), so a clean stop leaves repair nothing to do.
            # A round of renames on a local disk takes milliseconds, well inside the
            # stopper's wait (worker.FILE_OPERATION_SECONDS); a batch of copies to a slow
            # share may not, and then the stopper exits "stuck" and the next start repairs
            # the round, as after a crash. Between rounds it may stop: a retried file's row
            # is already abandoned and the file untouched.
            with self.guard:
                todo = self._round(todo, outcomes)
        return [outcomes[i] for i in range(len(jobs))]

    def _round(
        self, todo: list[tuple[int, Job]], outcomes: dict[int, Outcome]
    ) -> list[tuple[int, Job]]:
        """Plan, record, carry out and complete ``todo``, filling ``outcomes``; the jobs left
        to try again."""
        claimed = self._claimed if self.dry_run else set()
        steps: list[_Step] = []
        for index, job in todo:
            planned = self._plan(index, job, claimed)
            if isinstance(planned, Outcome):
                outcomes[index] = planned
            else:
                steps.append(planned)
        if not steps:
            return []
        with self.journal.transaction():  # every row on disk before any operation starts
            for step in steps:
                file, decision, checkpoints = step.job
                step.entry_id = self.journal.begin(
                    self.run, file, decision, step.destination, checkpoints, state=step.state
                )
        ended: list[tuple[_Step, _Ended]] = []
        try:
            for step in steps:
                if step.outcome is None:
                    ended.append((step, self._operate(step)))
        finally:  # even after an unexpected error: what ended is recorded so
            self._complete(ended)
        retry = []
        for step in steps:
            if step.outcome is not None:
                outcomes[step.index] = step.outcome
        for step, end in ended:
            if end.retry is not None:
                retry.append((step.index, end.retry))
                continue
            assert end.outcome is not None
            outcomes[step.index] = end.outcome
            if end.state == FileState.DONE and step.destination is not None:
                self._sidecar(step)
        return retry

    # -- planning: no file moves, no row is written (a class folder may be made) ----------

    def _plan(self, index: int, job: Job, claimed: set[Path]) -> Outcome | _Step:
        """What to do for ``job``: an outcome at once (stale, refused, planned, ...), or a
        step that writes a row."""
        file, decision, checkpoints = job
        if not self.dry_run and _changed_since_read(file):
            return Outcome(
                file, decision, None, FileState.STALE, "changed since it was read; later"
            )
        folder = decision.folder
        if folder is not None:
            return self._plan_move(index, job, folder, claimed)
        if self.dry_run:
            return Outcome(file, decision, None, FileState.PLANNED, decision.note, checkpoints)
        if decision.action == "leave":  # nothing to do: recorded as done
            done = Outcome(file, decision, None, FileState.DONE, decision.note, checkpoints)
            return _Step(index, job, state=FileState.DONE, outcome=done)
        return _Step(index, job)  # trash or delete

    def _plan_move(self, index: int, job: Job, folder: str, claimed: set[Path]) -> Outcome | _Step:
        file, decision, checkpoints = job
        target_dir = confined(self.output.root, folder)
        problem = self.folders.problem(target_dir)
        if problem is not None:  # that class only; the file waits for the link to be fixed
            return Outcome(file, decision, target_dir, FileState.REFUSED, problem, checkpoints)
        first = target_dir / file.path.name
        dst = free_name(target_dir, first.name, lambda p: p in claimed or os.path.lexists(p))
        if dst != first and self.output.on_conflict == "skip":
            note = (
                f"{shown(first.name)} already exists in {shown(target_dir)}; left in place "
                "(on_conflict = skip)"
            )
            skipped = Outcome(file, decision, first, FileState.SKIPPED, note, checkpoints)
            if self.dry_run:
                return skipped
            row = Job(file, replace(decision, note=note), checkpoints)
            return _Step(index, row, first, FileState.SKIPPED, skipped)
        claimed.add(dst)
        if self.dry_run:
            return Outcome(file, decision, dst, FileState.PLANNED, decision.note, checkpoints)
        try:
            target_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            note = f"cannot create {shown(target_dir)}: {exc.strerror or exc}; left in place"
            return Outcome(file, decision, dst, FileState.FAILED, note, checkpoints)
        return _Step(index, job, dst)

    # -- the file operations, between the two commits --------------------------------------

    def _operate(self, step: _Step) -> _Ended:
        if step.destination is not None:
            return self._transfer(step, step.destination)
        return self._remove(step)

    def _transfer(self, step: _Step, dst: Path) -> _Ended:
        file, decision, checkpoints = step.job
        expect = (file.size, file.mtime_ns)
        try:
            transfer(
                file.path, dst, str(step.entry_id), copy=self.force_copy, expect=expect, sync=False
            )
        except FileExistsError:  # the name was taken after we looked: another, next round
            return _Ended(FileState.ABANDONED, "destination appeared; renamed", retry=step.job)
        except SourceChangedError as exc:  # still being written: the next rescan
            note = f"{exc.strerror}; left in place, decided again later"
            stale = Outcome(file, decision, dst, FileState.STALE, note, checkpoints)
            return _Ended(FileState.ABANDONED, note, stale)
        except OSError as exc:
            return self._failed(step, exc)
        done = Outcome(file, decision, dst, FileState.DONE, decision.note, checkpoints)
        return _Ended(FileState.DONE, outcome=done)

    def _remove(self, step: _Step) -> _Ended:
        file, decision, checkpoints = step.job
        try:
            if decision.action == "trash":
                _send_to_trash(file.path)
            else:
                file.path.unlink()
        except OSError as exc:
            if decision.action != "trash":
                return self._failed(step, exc)
            note = f"no recycle bin for {shown(file.path)} ({exc}); quarantined instead"
            logger.warning("{}", note)
            fallback = replace(decision, action="quarantine", note=note)
            return _Ended(FileState.ABANDONED, note, retry=Job(file, fallback, checkpoints))
        done = Outcome(file, decision, None, FileState.DONE, decision.note, checkpoints)
        return _Ended(FileState.DONE, outcome=done)

    @staticmethod
    def _failed(step: _Step, exc: OSError) -> _Ended:
        file, decision, checkpoints = step.job
        note = f"{decision.action} failed: {exc.strerror or exc}; the file was left in place"
        failed = Outcome(file, decision, step.destination, FileState.FAILED, note, checkpoints)
        return _Ended(FileState.FAILED, note, failed)

    # -- after the operations --------------------------------------------------------------

    def _complete(self, ended: list[tuple[_Step, _Ended]]) -> None:
        """Make the operations that were done durable, syncing each folder they changed once,
        then record how every operation ended in one commit."""
        if not ended:
            return
        folders: dict[Path, None] = {}
        for step, end in ended:
            if end.state == FileState.DONE:
                folders[step.job.file.path.parent] = None
                if step.destination is not None:
                    folders[step.destination.parent] = None
        for folder in folders:
            fsync_dir(folder)
        with self.journal.transaction():
            for step, end in ended:
                self.journal.finish(step.entry_id, end.state, end.note)

    def _sidecar(self, step: _Step) -> None:
        """The XMP sidecar of a file moved under the output root (``[output] sidecars``)."""
        file, decision, checkpoints = step.job
        if self.output.sidecars == "xmp" and decision.folder is not None:
            assert step.destination is not None
            write_sidecar(step.destination, decision, checkpoints, decision.folder)
            remove_sidecar(file.path)  # the one it had at its last place, if ours


def _changed_since_read(file: FileInfo) -> bool:
    try:
        st = file.path.stat()
    except OSError:
        return True
    return (st.st_size, st.st_mtime_ns) != (file.size, file.mtime_ns)


def _send_to_trash(path: Path) -> None:
    if not trash_keeps_files(path):
        raise OSError(f"the drive of {shown(path)} has no recycle bin (network or removable drive)")
    from send2trash import send2trash

    send2trash(path)


#: ``GetDriveTypeW``'s answer for a local fixed disk, the only kind with a recycle bin.
DRIVE_FIXED = 3


def trash_keeps_files(
    path: Path, *, platform: str = sys.platform, drive_type: Callable[[str], int] | None = None
) -> bool:
    """Whether the recycle bin really keeps a file at ``path``.

    On Windows only local fixed disks have one: on a network share or a USB stick
    send2trash deletes the file permanently without an error (send2trash #2, #94).
    Elsewhere send2trash follows the freedesktop trash spec or macOS's Finder.
    """
    if platform != "win32":
        return True
    drive = ntpath.splitdrive(str(path))[0]  # "C:" or "\\\\server\\share"
    query = drive_type or _windows_drive_type
    return query(drive.rstrip("\\") + "\\") == DRIVE_FIXED


def _windows_drive_type(root: str) -> int:
    import ctypes

    return int(ctypes.windll.kernel32.GetDriveTypeW(root))  # type: ignore[attr-defined]


def summary_label(outcome: Outcome) -> str:
    """The line of the closing summary an outcome counts towards."""
    d = outcome.decision
    if d is None or outcome.state == FileState.STALE:  # a stale file was left as it was
        return f"not decided: {outcome.state} (tried again next run)"
    if outcome.state == FileState.REFUSED and outcome.destination is not None:
        return f"refused: {d.action} to {shown(outcome.destination.name)}/ (see the error above)"
    if outcome.state in (FileState.SKIPPED, FileState.FAILED):
        return f"{outcome.state}: {d.action} ({d.reason})"
    if d.action == "move":
        return f"move to {d.label}/"
    if d.action == "leave":
        return f"leave in place ({d.reason})"
    return f"{d.action} ({d.reason})"
