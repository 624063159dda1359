"""Putting things right: what a crash interrupted, and what ``gensift undo`` reverses.

:func:`repair` settles every journal row a crash left at ``intent`` (each file ends in
exactly one place) and then removes the staging copies no row needs;
:func:`restore` moves a decided file back where it came from. Both use
:func:`~gensift.daemon.routing.fileops.transfer`, as the router does, so they cannot
overwrite a file either.
"""

from __future__ import annotations

import os
from pathlib import Path

from loguru import logger

from gensift.daemon.routing.fileops import (
    TEMP_NAME,
    free_name,
    same_content,
    shown,
    temp_path,
    transfer,
)
from gensift.daemon.routing.folders import ClassFolders
from gensift.daemon.routing.journal import Entry, Journal
from gensift.daemon.routing.lock import operation_lock
from gensift.daemon.routing.records import Decision, FileInfo, FileState
from gensift.daemon.routing.router import Outcome
from gensift.daemon.routing.sidecars import remove_sidecar


def repair(journal: Journal, output_root: Path | None = None) -> int:
    """Settle every operation a crash interrupted; returns how many there were.

    For each ``intent`` row: the file is in exactly one place afterwards. A move
    that had not happened is abandoned (the file will be decided again); one
    that had is marked done; a copy that reached its destination loses its
    source; an empty placeholder or a staging copy of ours is removed. A file
    at the destination that is not ours is never touched. A crash inside a batch
    leaves every intent of it (the router commits them together, before the
    batch's first operation): some moved, some half-moved, some not started; each
    row is settled on its own, by where its own file is.

    Then, with ``output_root``, the staging copies a crash left under it that no
    row still unsettled needs are removed (:func:`remove_temporaries`): repair
    first, so that a row it settles no longer holds on to its copy.
    """
    with operation_lock(journal.path):  # not while the review page moves a file
        return _repair(journal, output_root)


def _repair(journal: Journal, output_root: Path | None) -> int:
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
    """Remove gensift's staging copies (:func:`~gensift.daemon.routing.fileops.temp_path` names)
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
            return (
                FileState.ABANDONED,
                "interrupted before the file was removed; decided again later",
            )
        return FileState.DONE, "the file was removed before the interruption"
    temp_path(dst, str(entry.id)).unlink(missing_ok=True)
    src_there, dst_there = src.exists(), dst.exists()
    if src_there and dst_there:
        if _same_file(src, dst):
            src.unlink()
            return FileState.DONE, "the move had reached its destination; the old name was removed"
        if same_content(dst, entry.size, entry.sha256):
            if not same_content(src, entry.size, entry.sha256):
                return (
                    FileState.DONE,
                    "the move had completed; a new file with the old name is left",
                )
            src.unlink()
            return FileState.DONE, "the copy had reached its destination; the source was removed"
        if dst.stat().st_size == 0:
            dst.unlink()
            return FileState.ABANDONED, "removed an empty placeholder; decided again later"
        return (
            FileState.ABANDONED,
            f"{shown(dst)} holds another file; left alone; decided again later",
        )
    if dst_there:
        return FileState.DONE, "the move had completed before the interruption"
    if src_there:
        return FileState.ABANDONED, "interrupted before the file moved; decided again later"
    logger.warning("journal repair: {} is neither at {} nor at {}", entry.sha256[:12],
                   shown(src), shown(dst))  # fmt: skip
    return FileState.FAILED, "the file is in neither place (moved or deleted by someone else)"


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
        return Outcome(
            back, decision, entry.source, FileState.FAILED, "no longer at its destination"
        )
    if not same_content(entry.destination, entry.size, entry.sha256):
        return Outcome(
            back, decision, entry.source, FileState.SKIPPED, "changed since it was sorted"
        )
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
            return Outcome(back, decision, target, FileState.PLANNED, note)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return Outcome(
                back, decision, target, FileState.FAILED, f"cannot create {shown(folder)}: {exc}"
            )
        entry_id = journal.begin(
            run, back, decision, target, entry.checkpoints, action="restore", undoes=entry.id
        )
        try:
            transfer(entry.destination, target, str(entry_id))
        except FileExistsError:
            journal.finish(entry_id, FileState.ABANDONED, "the name was taken meanwhile; renamed")
            continue
        except OSError as exc:
            journal.finish(entry_id, FileState.FAILED, str(exc))
            return Outcome(back, decision, target, FileState.FAILED, str(exc))
        journal.finish(entry_id, FileState.DONE, note)
        remove_sidecar(entry.destination)  # the file left the output root: its sidecar too
        return Outcome(back, decision, target, FileState.DONE, note)
