"""One process at a time moves files under a journal.

``gensift watch``, ``sort`` and ``undo`` each start by settling the journal's
unfinished operations (:func:`gensift.daemon.routing.recovery.repair`). Two of them at
once would settle each other's operations while they are still running, and a
file could be taken back from a destination the other process is about to
finish. So each holds an exclusive advisory lock on ``<journal>.lock`` while it
works; a second one is refused with a message naming the holder. The operating
system drops the lock when its process dies, however it dies, so a crash never
leaves a stale lock behind. Reading the journal (``history``, dry runs) needs
no lock.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO

from gensift.models.errors import RuntimeProblem

#: Windows locks byte ranges, and a locked range cannot be read by others: lock
#: one byte far past the holder's description so that it stays readable.
_WINDOWS_LOCK_OFFSET = 2**30


class JournalBusy(RuntimeProblem):
    """Another gensift process holds the journal."""


class JournalLock:
    """An exclusive lock beside the journal, held from ``acquire`` to ``release``."""

    def __init__(self, journal: Path, purpose: str) -> None:
        self.path = journal.with_name(journal.name + ".lock")
        self.journal = journal
        self.purpose = purpose
        self._handle: IO[str] | None = None

    def acquire(self) -> JournalLock:
        """Take the lock now or raise :class:`JournalBusy` naming the process that has it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = self.path.open("a+", encoding="utf-8")
        except OSError as exc:
            raise RuntimeProblem(
                f"{self.path}: cannot create the journal lock: {exc.strerror or exc}"
            ) from None
        if not _try_lock(handle):
            handle.seek(0)
            holder = handle.read(500).strip() or "a process that did not say which"
            handle.close()
            raise JournalBusy(
                f"{self.journal} is in use by another gensift process ({holder}). Only one "
                f"process at a time may move files under one journal: stop the other one "
                f"first (for the daemon: 'systemctl --user stop gensift' or Ctrl+C), or point "
                f"this command at another journal with journal.path"
            )
        handle.seek(0)
        handle.truncate()
        since = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        handle.write(f"pid {os.getpid()}, gensift {self.purpose}, since {since}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        # The file stays: removing it would race with a process that has just opened it.
        if self._handle is not None:
            _unlock(self._handle)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> JournalLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


#: how long a file operation or a repair waits for the other to finish
OPERATION_WAIT_SECONDS = 60.0


@contextmanager
def operation_lock(journal: Path | None, wait: float = OPERATION_WAIT_SECONDS) -> Iterator[None]:
    """Held around each of the review page's file operations and around repair.

    The page moves files under a journal while ``gensift watch`` (which holds the
    :class:`JournalLock` for its whole life) runs; it never repairs. A repair starting
    in another process at that moment would settle the page's row while its move is
    under way. This short lock (``<journal>.ops.lock``) makes them take turns: each
    holds it for one operation, or one repair, and waits for the other. ``journal``
    None (an in-memory journal): no lock.
    """
    if journal is None:
        yield
        return
    path = journal.with_name(journal.name + ".ops.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+", encoding="utf-8")
    deadline = time.monotonic() + wait
    try:
        while not _try_lock(handle):
            if time.monotonic() > deadline:
                raise JournalBusy(
                    f"{journal}: another gensift process held {path.name} for over {wait:g} s"
                )
            time.sleep(0.02)
        try:
            yield
        finally:
            _unlock(handle)
    finally:
        handle.close()


def _try_lock(handle: IO[str]) -> bool:
    if sys.platform == "win32":
        import msvcrt

        handle.seek(_WINDOWS_LOCK_OFFSET)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(handle: IO[str]) -> None:
    if sys.platform == "win32":  # Windows wants the range unlocked before the file closes
        import msvcrt

        handle.seek(_WINDOWS_LOCK_OFFSET)
        msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
    # elsewhere closing the file drops the flock
