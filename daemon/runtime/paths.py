"""Which files there are to sift: name patterns, folder walks, exclusions, the journal.

Kept free of torch (as are the watcher and the layout rules) so that what watches and
lists folders starts in a moment and can be used without loading a model.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from loguru import logger

from gensift.daemon.routing.fileops import shown
from gensift.daemon.routing.folders import Excluded
from gensift.daemon.routing.journal import Journal
from gensift.daemon.routing.records import FileInfo
from gensift.models.errors import InputError
from gensift.models.fsutil import TEMP_PREFIX


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

    Folders are listed with ``os.scandir`` and excluded subtrees pruned as a whole (known
    by device and inode, :class:`~gensift.daemon.routing.folders.Excluded`, so no spelling
    of the output root is listed), so a file costs no system call of its own (the daemon
    rescans with :func:`iter_files`, the same walk, unsorted).
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
