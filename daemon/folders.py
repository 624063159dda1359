"""Folders known by what they are, not by how a path spells them.

One folder has many spellings: through a symlink, with ``..``, through a bind mount, in
another case on a case-insensitive disk. Whether a path is inside a folder gensift never
picks files from (the output root, the training reports) must not depend on the spelling:

* :class:`Excluded` compares each folder above the path by device and inode with the
  excluded folders. A scan checks each folder once as it descends (:meth:`Excluded.is_one`:
  one ``stat`` per folder, none per file); the watcher's events ask :meth:`Excluded.holds`,
  which remembers its answer per folder.

Kept free of torch: the watcher and ``service install`` import it.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path

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
