"""Decisions -> file operations, each one journaled before and after it happens.

The :class:`Router` carries out a :class:`~gensift.daemon.decide.Decision`:
move to ``<root>/<class>/``, quarantine to ``<root>/_rejected/``, review to
``<root>/_review/``, the OS recycle bin (falling back to quarantine where there
is none), permanent delete, or leave in place. :func:`repair` settles what a
crash interrupted (and removes the staging copies it left) and :func:`restore`
is undo's inverse move; all three share :func:`gensift.daemon.fileops.transfer`.

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
from gensift.daemon.decide import Decision
from gensift.daemon.decode import FileInfo
from gensift.daemon.fileops import (
    TEMP_NAME,
    SourceChangedError,
    confined,
    free_name,
    same_content,
    shown,
    temp_path,
    transfer,
)
from gensift.daemon.folders import ClassFolders
from gensift.daemon.journal import Entry, Journal


@dataclass(frozen=True)
class Outcome:
    """What happened to one file.

    ``state``: done, planned (dry run), skipped (name taken, ``on_conflict = "skip"``),
    failed, stale (changed since it was read, or while it was copied to another
    disk: left in place), refused (its class folder is a symlink that may not be followed,
    :class:`~gensift.daemon.folders.ClassFolders`; left in place, not journaled, and
    ``destination`` is that folder), or, with no decision: unsettled (still being
    written), unreadable or gone. Stale, refused and undecided files are seen again by the
    next run or rescan.
    """

    file: FileInfo
    decision: Decision | None
    destination: Path | None
    state: str
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
            return Outcome(file, decision, None, "stale", "changed since it was read; later")
        folder = decision.folder
        if folder is not None:
            return self._move(file, decision, folder, checkpoints)
        if self.dry_run:
            return Outcome(file, decision, None, "planned", decision.note, checkpoints)
        if decision.action == "leave":
            self.journal.begin(self.run, file, decision, None, checkpoints, state="done")
            return Outcome(file, decision, None, "done", decision.note, checkpoints)
        return self._remove(file, decision, checkpoints)

    def _move(
        self, file: FileInfo, decision: Decision, folder: str, checkpoints: Mapping[str, str]
    ) -> Outcome:
        target_dir = confined(self.output.root, folder)
        problem = self.folders.problem(target_dir)
        if problem is not None:  # that class only; the file waits for the link to be fixed
            return Outcome(file, decision, target_dir, "refused", problem, checkpoints)
        first = target_dir / file.path.name
        while True:
            dst = free_name(target_dir, first.name, self._taken)
            if dst != first and self.output.on_conflict == "skip":
                return self._skipped(file, decision, first, checkpoints)
            if self.dry_run:
                self._claimed.add(dst)
                return Outcome(file, decision, dst, "planned", decision.note, checkpoints)
            try:
                target_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                note = f"cannot create {shown(target_dir)}: {exc.strerror or exc}; left in place"
                return Outcome(file, decision, dst, "failed", note, checkpoints)
            entry_id = self.journal.begin(self.run, file, decision, dst, checkpoints)
            expect = (file.size, file.mtime_ns)
            try:
                transfer(file.path, dst, str(entry_id), copy=self.force_copy, expect=expect)
            except FileExistsError:  # the name was taken after we looked: find another
                self.journal.finish(entry_id, "abandoned", "destination appeared; renamed")
                continue
            except SourceChangedError as exc:  # still being written: the next rescan
                note = f"{exc.strerror}; left in place, decided again later"
                self.journal.finish(entry_id, "abandoned", note)
                return Outcome(file, decision, dst, "stale", note, checkpoints)
            except OSError as exc:
                return self._failed(file, decision, dst, entry_id, exc, checkpoints)
            self.journal.finish(entry_id, "done")
            return Outcome(file, decision, dst, "done", decision.note, checkpoints)

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
                self.run, file, replace(decision, note=note), dst, checkpoints, state="skipped"
            )
        return Outcome(file, decision, dst, "skipped", note, checkpoints)

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
            self.journal.finish(entry_id, "abandoned", note)
            fallback = replace(decision, action="quarantine", note=note)
            return self._apply(file, fallback, checkpoints)
        self.journal.finish(entry_id, "done")
        return Outcome(file, decision, None, "done", decision.note, checkpoints)

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
        self.journal.finish(entry_id, "failed", note)
        return Outcome(file, decision, dst, "failed", note, checkpoints)


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


def repair(journal: Journal, output_root: Path | None = None) -> int:
    """Settle every operation a crash interrupted; returns how many there were.

    For each ``intent`` row: the file is in exactly one place afterwards. A move
    that had not happened is abandoned (the file will be decided again); one
    that had is marked done; a copy that reached its destination loses its
    source; an empty placeholder or a staging copy of ours is removed. A file
    at the destination that is not ours is never touched.

    Then, with ``output_root``, the staging copies a crash left under it that no
    row still unsettled needs are removed (:func:`remove_temporaries`): repair
    first, so that a row it settles no longer holds on to its copy.
    """
    pending = journal.pending()
    for entry in pending:
        try:
            state, note = _settle(entry)
        except OSError as exc:  # an offline share, say: leave the row for the next start
            logger.error("journal repair: {} {}: {}; tried again next start", entry.action,
                         shown(entry.source), exc)  # fmt: skip
            continue
        journal.finish(entry.id, state, note)
        logger.info("journal repair: {} {} -> {}: {}", entry.action, shown(entry.source),
                    state, note)  # fmt: skip
    if output_root is not None:
        remove_temporaries(journal, output_root)
    return len(pending)


def remove_temporaries(journal: Journal, root: Path) -> int:
    """Remove gensift's staging copies (:func:`~gensift.daemon.fileops.temp_path` names)
    under ``root`` that no unsettled journal row needs; how many.

    Each is a partial or redundant copy of a file that is still in its place: a copy
    is staged only after its intent row is committed, and repair settles that row
    (removing the copy) whenever it can. Only names of exactly that form are
    touched, and no symlink is followed but a class folder's that the router would
    follow (a copy to it is staged in it: it is looked into, not below).
    """
    needed = {
        temp_path(entry.destination, str(entry.id))
        for entry in journal.pending()
        if entry.destination is not None
    }
    removed = 0
    linked = ClassFolders(root)
    folders = [(root, True)]  # (folder, whether to go below it)
    while folders:
        folder, below = folders.pop()
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        except OSError as exc:
            logger.warning("{}: cannot list this folder to clean up ({}); skipped",
                           shown(folder), exc.strerror or exc)  # fmt: skip
            continue
        for item in entries:
            path = Path(item.path)
            if item.is_dir(follow_symlinks=False):
                if below:
                    folders.append((path, True))
            elif folder == root and item.is_symlink() and linked.problem(path) is None:
                folders.append((path, False))
            elif item.is_file(follow_symlinks=False):
                removed += _remove_staged(path, needed)
    return removed


def _remove_staged(path: Path, needed: set[Path]) -> int:
    """Remove ``path`` if it is a staging copy no unsettled row needs; 1 if it was removed."""
    if not TEMP_NAME.match(path.name) or path in needed:
        return 0
    try:
        path.unlink()
    except OSError as exc:
        logger.warning("{}: cannot remove this staging copy ({})", shown(path),
                       exc.strerror or exc)  # fmt: skip
        return 0
    logger.info("removed {}, a staging copy an interrupted run left", shown(path))
    return 1


def _settle(entry: Entry) -> tuple[str, str]:
    src, dst = entry.source, entry.destination
    if dst is None:  # trash or delete
        if src.exists():
            return "abandoned", "interrupted before the file was removed; decided again later"
        return "done", "the file was removed before the interruption"
    temp_path(dst, str(entry.id)).unlink(missing_ok=True)
    src_there, dst_there = src.exists(), dst.exists()
    if src_there and dst_there:
        if _same_file(src, dst):
            src.unlink()
            return "done", "the move had reached its destination; the old name was removed"
        if same_content(dst, entry.size, entry.sha256):
            if not same_content(src, entry.size, entry.sha256):
                return "done", "the move had completed; a new file with the old name is left"
            src.unlink()
            return "done", "the copy had reached its destination; the source was removed"
        if dst.stat().st_size == 0:
            dst.unlink()
            return "abandoned", "removed an empty placeholder; decided again later"
        return "abandoned", f"{shown(dst)} holds another file; left alone; decided again later"
    if dst_there:
        return "done", "the move had completed before the interruption"
    if src_there:
        return "abandoned", "interrupted before the file moved; decided again later"
    logger.warning("journal repair: {} is neither at {} nor at {}", entry.sha256[:12],
                   shown(src), shown(dst))  # fmt: skip
    return "failed", "the file is in neither place (moved or deleted by someone else)"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def restore(
    journal: Journal,
    entry: Entry,
    run: str,
    *,
    dry_run: bool = False,
    claimed: set[Path] | None = None,
) -> Outcome:
    """Move one finished move back to its source; undo's one step. Never overwrites: if the
    source name is taken (a generator that reused the name, say), the file comes back
    next to it as ``name-1.png``, and the outcome's note says so. ``claimed`` carries the
    names a dry run has planned, so two rows are not planned to one name."""
    assert entry.destination is not None
    back = FileInfo(entry.destination, entry.size, entry.mtime_ns, entry.sha256)
    decision = Decision("move", entry.reason, entry.label, entry.probability)  # type: ignore[arg-type]
    if not entry.destination.exists():
        return Outcome(back, decision, entry.source, "failed", "no longer at its destination")
    if not same_content(entry.destination, entry.size, entry.sha256):
        return Outcome(back, decision, entry.source, "skipped", "changed since it was sorted")
    planned = claimed if claimed is not None else set()

    def taken(path: Path) -> bool:
        return path in planned or os.path.lexists(path)

    folder, name = entry.source.parent, entry.source.name
    while True:
        target = free_name(folder, name, taken)
        note = (
            ""
            if target == entry.source
            else f"{shown(name)} is taken; restored as {shown(target.name)}"
        )
        if dry_run:
            planned.add(target)
            return Outcome(back, decision, target, "planned", note)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return Outcome(
                back, decision, target, "failed", f"cannot create {shown(folder)}: {exc}"
            )
        entry_id = journal.begin(
            run, back, decision, target, entry.checkpoints, action="restore", undoes=entry.id
        )
        try:
            transfer(entry.destination, target, str(entry_id))
        except FileExistsError:
            journal.finish(entry_id, "abandoned", "the name was taken meanwhile; renamed")
            continue
        except OSError as exc:
            journal.finish(entry_id, "failed", str(exc))
            return Outcome(back, decision, target, "failed", str(exc))
        journal.finish(entry_id, "done", note)
        return Outcome(back, decision, target, "done", note)
