"""Decisions -> file operations, each one journaled before and after it happens.

The :class:`Router` carries out a :class:`~gensift.daemon.routing.records.Decision`:
move to ``<root>/<class>/``, quarantine to ``<root>/_rejected/``, review to
``<root>/_review/``, the OS recycle bin (falling back to quarantine where there
is none), permanent delete, or leave in place. Moves go through
:func:`gensift.daemon.routing.fileops.transfer`, which never overwrites; what a crash
interrupts is settled by :mod:`gensift.daemon.routing.recovery`.

In a dry run nothing on disk or in the journal changes; names a real run would
take are claimed in memory so the plan shows the same renames.
"""

from __future__ import annotations

import ntpath
import os
import sys
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

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
        """Carry out ``decision`` for ``file`` (or plan it, in a dry run), holding ``guard``.

        The daemon passes a lock as ``guard``: while it holds that lock itself, no file
        operation is half done, so it can exit at once.
        """
        with self.guard:
            return self._apply(file, decision, checkpoints)

    def _apply(self, file: FileInfo, decision: Decision, checkpoints: Mapping[str, str]) -> Outcome:
        if not self.dry_run and _changed_since_read(file):
            return Outcome(
                file, decision, None, FileState.STALE, "changed since it was read; later"
            )
        folder = decision.folder
        if folder is not None:
            return self._move(file, decision, folder, checkpoints)
        if self.dry_run:
            return Outcome(file, decision, None, FileState.PLANNED, decision.note, checkpoints)
        if decision.action == "leave":
            self.journal.begin(self.run, file, decision, None, checkpoints, state=FileState.DONE)
            return Outcome(file, decision, None, FileState.DONE, decision.note, checkpoints)
        return self._remove(file, decision, checkpoints)

    def _move(
        self, file: FileInfo, decision: Decision, folder: str, checkpoints: Mapping[str, str]
    ) -> Outcome:
        target_dir = confined(self.output.root, folder)
        problem = self.folders.problem(target_dir)
        if problem is not None:  # that class only; the file waits for the link to be fixed
            return Outcome(file, decision, target_dir, FileState.REFUSED, problem, checkpoints)
        first = target_dir / file.path.name
        while True:
            dst = free_name(target_dir, first.name, self._taken)
            if dst != first and self.output.on_conflict == "skip":
                return self._skipped(file, decision, first, checkpoints)
            if self.dry_run:
                self._claimed.add(dst)
                return Outcome(file, decision, dst, FileState.PLANNED, decision.note, checkpoints)
            try:
                target_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                note = f"cannot create {shown(target_dir)}: {exc.strerror or exc}; left in place"
                return Outcome(file, decision, dst, FileState.FAILED, note, checkpoints)
            entry_id = self.journal.begin(self.run, file, decision, dst, checkpoints)
            expect = (file.size, file.mtime_ns)
            try:
                transfer(file.path, dst, str(entry_id), copy=self.force_copy, expect=expect)
            except FileExistsError:  # the name was taken after we looked: find another
                self.journal.finish(entry_id, FileState.ABANDONED, "destination appeared; renamed")
                continue
            except SourceChangedError as exc:  # still being written: the next rescan
                note = f"{exc.strerror}; left in place, decided again later"
                self.journal.finish(entry_id, FileState.ABANDONED, note)
                return Outcome(file, decision, dst, FileState.STALE, note, checkpoints)
            except OSError as exc:
                return self._failed(file, decision, dst, entry_id, exc, checkpoints)
            self.journal.finish(entry_id, FileState.DONE)
            if self.output.sidecars == "xmp":
                write_sidecar(dst, decision, checkpoints, folder)
                remove_sidecar(file.path)  # the one it had at its last place, if ours
            return Outcome(file, decision, dst, FileState.DONE, decision.note, checkpoints)

    def _taken(self, path: Path) -> bool:
        return path in self._claimed or os.path.lexists(path)

    def _skipped(
        self, file: FileInfo, decision: Decision, dst: Path, checkpoints: Mapping[str, str]
    ) -> Outcome:
        note = (
            f"{shown(dst.name)} already exists in {shown(dst.parent)}; left in place "
            "(on_conflict = skip)"
        )
        if not self.dry_run:
            self.journal.begin(
                self.run,
                file,
                replace(decision, note=note),
                dst,
                checkpoints,
                state=FileState.SKIPPED,
            )
        return Outcome(file, decision, dst, FileState.SKIPPED, note, checkpoints)

    def _remove(
        self, file: FileInfo, decision: Decision, checkpoints: Mapping[str, str]
    ) -> Outcome:
        entry_id = self.journal.begin(self.run, file, decision, None, checkpoints)
        try:
            if decision.action == "trash":
                _send_to_trash(file.path)
            else:
                file.path.unlink()
        except OSError as exc:
            if decision.action != "trash":
                return self._failed(file, decision, None, entry_id, exc, checkpoints)
            note = f"no recycle bin for {shown(file.path)} ({exc}); quarantined instead"
            logger.warning("{}", note)
            self.journal.finish(entry_id, FileState.ABANDONED, note)
            fallback = replace(decision, action="quarantine", note=note)
            return self._apply(file, fallback, checkpoints)
        self.journal.finish(entry_id, FileState.DONE)
        return Outcome(file, decision, None, FileState.DONE, decision.note, checkpoints)

    def _failed(
        self,
        file: FileInfo,
        decision: Decision,
        dst: Path | None,
        entry_id: int,
        exc: OSError,
        checkpoints: Mapping[str, str],
    ) -> Outcome:
        note = f"{decision.action} failed: {exc.strerror or exc}; the file was left in place"
        self.journal.finish(entry_id, FileState.FAILED, note)
        return Outcome(file, decision, dst, FileState.FAILED, note, checkpoints)


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
