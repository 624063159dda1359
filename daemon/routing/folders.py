"""Folders known by what they are, not by how a path spells them.

One folder has many spellings: through a symlink, with ``..``, through a bind mount, in
another case on a case-insensitive disk. Two questions must not depend on the spelling:

* :class:`Excluded`: is a path inside a folder gensift never picks files from (the output
  root, the training reports)? Each folder above the path is compared by device and inode
  with the excluded folders. A scan checks each folder once as it descends
  (:meth:`Excluded.is_one`: one ``stat`` per folder, none per file); the watcher's events ask
  :meth:`Excluded.holds`, which remembers its answer per folder.
* :class:`ClassFolders`: may a class folder that is a symlink (``<root>/a -> /mnt/big/a``) be
  followed? Only to a folder owned by the user gensift runs as (no owner check on Windows),
  other than the output root, that no watched folder scans: files moved there would be
  sorted again. Otherwise that class's files are refused; the others are not affected.

Kept free of torch: the watcher and ``service install`` import it.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from gensift.daemon.routing.fileops import shown

#: A folder's identity: (device, inode).
FolderId = tuple[int, int]
#: How many folders :meth:`Excluded.holds` remembers before it starts over.
CACHE_LIMIT = 10_000
#: How often an excluded folder that did not exist is looked for again (seconds): the output
#: root appears with the first file sorted into it.
REFRESH_SECONDS = 5.0


def real_path(path: Path) -> Path:
    """``path`` with symlinks resolved (made absolute as spelled if that fails)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop, say
        return path.absolute()


def folder_id(path: Path) -> FolderId | None:
    """The device and inode of the folder at ``path`` (following links); None if there is no
    folder there, or the filesystem has no inode numbers to tell folders apart."""
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_ino == 0:
        return None
    return st.st_dev, st.st_ino


class Excluded:
    """The folders the daemon never picks files from, by identity; one thread per instance.

    A folder that does not exist yet (the output root before the first file) is compared by
    its resolved path until it appears, and looked for every :data:`REFRESH_SECONDS`.
    """

    def __init__(
        self, folders: Iterable[Path], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.folders = [real_path(f) for f in folders]
        self._clock = clock
        self._ids: set[FolderId] = set()
        self._missing: frozenset[Path] = frozenset()
        self._known: dict[Path, bool] = {}
        self._looked = 0.0
        self.refresh()

    def refresh(self) -> None:
        """Take the identity of every excluded folder again (one may have appeared or been
        replaced); the answers remembered go if anything changed."""
        ids, missing = set(), set()
        for folder in self.folders:
            found = folder_id(folder)
            if found is None:
                missing.add(folder)
            else:
                ids.add(found)
        if ids != self._ids or missing != self._missing:
            self._known.clear()
        self._ids, self._missing = ids, frozenset(missing)
        self._looked = self._clock()

    def forget(self) -> None:
        """Drop the remembered answers (a folder was created or moved: a path may now name
        another folder)."""
        self._known.clear()

    def is_one(self, folder: Path) -> bool:
        """Whether ``folder`` itself (not a folder above it) is excluded: one ``stat``."""
        self._look_again()
        if folder in self._missing:
            return True
        found = folder_id(folder)
        return found is not None and found in self._ids

    def holds(self, folder: Path) -> bool:
        """Whether ``folder`` is excluded or inside an excluded folder, whatever the spelling.

        Walks up from ``folder`` to the first folder whose answer is remembered, checking
        each on the way (:meth:`is_one`), and remembers the answer for all of them: events
        in one folder cost one dictionary lookup after the first.
        """
        self._look_again()
        current = folder.absolute()
        chain: list[Path] = []
        while True:
            known = self._known.get(current)
            if known is not None:
                answer = known
                break
            chain.append(current)
            if self.is_one(current):
                answer = True
                break
            if current.parent == current:
                answer = False
                break
            current = current.parent
        if len(self._known) + len(chain) > CACHE_LIMIT:
            self._known.clear()
        self._known.update(dict.fromkeys(chain, answer))
        return answer

    def _look_again(self) -> None:
        if self._missing and self._clock() - self._looked >= REFRESH_SECONDS:
            self.refresh()


class ClassFolders:
    """Says whether files may be moved into a folder under the output root.

    ``watched``: (folder, recursive) pairs whose scans would find a file moved into them (the
    watched folders; for ``sort``, also the folders it sorts). ``excluded``: folders never
    scanned besides the root (a link into one of them is fine). The verdict on a link is
    remembered until the link or the folder it leads to changes.
    """

    def __init__(
        self,
        root: Path,
        *,
        watched: Iterable[tuple[Path, bool]] = (),
        excluded: Iterable[Path] = (),
    ) -> None:
        self.root = root
        self.watched = [(real_path(path), recursive) for path, recursive in watched]
        self.excluded = [root, *excluded]  # the root may come twice: no matter
        self._verdicts: dict[tuple[int, ...], str | None] = {}

    def problem(self, folder: Path) -> str | None:
        """Why files must not be moved into ``folder``, or None.

        Only a symlink is judged: a real folder (or none yet) is fine, and anything else in
        the way (a file with the folder's name, no permission) shows when the move fails.
        """
        try:
            link = folder.lstat()
        except OSError:
            return None
        if not stat.S_ISLNK(link.st_mode):
            return None
        try:
            st = folder.stat()
        except OSError as exc:
            return self._refused(folder, f"{shown(_link_text(folder))}, which {_cannot(exc)}")
        key = (link.st_dev, link.st_ino, link.st_ctime_ns, st.st_dev, st.st_ino, st.st_mode,
               st.st_uid)  # fmt: skip
        if key not in self._verdicts:
            if len(self._verdicts) >= CACHE_LIMIT:
                self._verdicts.clear()
            self._verdicts[key] = self._judge(folder, st)
        return self._verdicts[key]

    def _judge(self, folder: Path, st: os.stat_result) -> str | None:
        target = real_path(folder)
        if not stat.S_ISDIR(st.st_mode):
            return self._refused(folder, f"{shown(target)}, which is not a folder")
        uid = getattr(os, "getuid", None)
        if uid is not None and st.st_uid != uid():
            return self._refused(
                folder,
                f"{shown(target)}, a folder owned by uid {st.st_uid}, not by the user "
                f"gensift runs as (uid {uid()})",
            )
        if (st.st_dev, st.st_ino) == folder_id(self.root):
            return self._refused(folder, "the output root itself")
        watched = self._watching(target)
        if watched is not None:
            return self._refused(
                folder,
                f"{shown(target)}, inside the watched folder {shown(watched)}: files moved "
                "there would be sorted again",
            )
        return None

    def _watching(self, target: Path) -> Path | None:
        """The watched folder whose scans would find files in ``target`` (a real path), if
        any: the nearest folder above it decides, and an excluded one is never scanned."""
        excluded = {found for f in self.excluded if (found := folder_id(f)) is not None}
        watched: dict[FolderId, tuple[Path, bool]] = {}
        for path, recursive in self.watched:  # one folder twice: recursive if either is
            if (found := folder_id(path)) is not None:
                recursive = recursive or watched.get(found, (path, False))[1]
                watched[found] = (path, recursive)
        for depth, folder in enumerate((target, *target.parents)):
            found = folder_id(folder)
            if found is None:
                continue
            if found in excluded:
                return None
            if found in watched:
                path, recursive = watched[found]
                if depth == 0 or recursive:
                    return path
        return None

    def _refused(self, folder: Path, where: str) -> str:
        return (
            f"class folder {shown(folder)} is a symlink to {where}; refusing to move files "
            "into it: they are left where they are and tried again at the next run or "
            "rescan. Point the link at a folder you own outside the watched folders, or "
            "make it a real folder"
        )


def _link_text(link: Path) -> str:
    try:
        return str(link.readlink())
    except OSError:
        return "?"


def _cannot(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "does not exist (not mounted?)"
    return f"cannot be reached ({exc.strerror or exc})"
