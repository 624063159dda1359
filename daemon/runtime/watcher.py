"""Seeing files arrive: the observer, finished-file detection and rescans.

A file takes this path before the worker sees it:

1. The observer (watchdog; :class:`Watcher` restarts it if its thread dies)
   reports it, or a scan finds it. Only names matching ``watch.patterns`` count,
   so ``x.png.tmp`` renamed to ``x.png`` is seen as ``x.png``. The output root
   and gensift's own temporary files are never reported.
2. :class:`Arrivals` holds it until it is complete: a close-after-write event
   (Linux) or a rename into place ends the wait; otherwise its size and mtime
   must stay unchanged across two looks at least ``settle_seconds`` apart on
   gensift's own monotonic clock. The file's mtime is compared only with itself,
   never with the local clock: a network share stamps files with another
   machine's clock, and a copy may keep the original's. The decoder still checks
   that it decodes, and calls a file corrupt only once it has settled by the
   same rule (:meth:`Arrivals.observation`), so a file closed half-written is
   tried again, not called corrupt.
3. :meth:`Arrivals.due` hands complete files on to the worker's bounded inbox,
   no more than it has room for; the file stays *tracked* until the worker
   reports back, so a rescan never queues a file twice.

Arrivals holds at most ``capacity`` files. Past that, a file is not tracked
but ``missed`` is set, and the service runs a catch-up scan once there is room:
a flood is handled at the worker's pace with bounded memory, and nothing is
lost, because the folder itself is the queue of last resort.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from loguru import logger
from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from gensift.daemon.routing.folders import Excluded
from gensift.daemon.runtime.paths import wanted

#: The events that can mean "a file appeared or changed"; the rest are not delivered.
EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirMovedEvent,
]
#: Seconds between restarts of an observer that keeps failing (doubling up to the last).
RESTART_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class Observation:
    """A file as gensift saw it: its size and mtime, unchanged since ``since`` (monotonic)."""

    size: int
    mtime_ns: int
    since: float


@dataclass
class _Pending:
    size: int
    mtime_ns: int
    stable_since: float  # monotonic time the size and mtime were first seen as they are now
    finished: bool  # a close-after-write or rename said the writer is done


class Arrivals:
    """Files seen but not yet decided, and when each one is complete. Thread-safe."""

    def __init__(
        self,
        settle_seconds: float,
        capacity: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settle_seconds = settle_seconds
        self.capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[Path, _Pending] = {}
        self._queued: dict[Path, _Pending] = {}  # with the last look before it was handed on
        self._missed = False
        self.peak = 0  # the most files tracked at once
        self.wake = threading.Event()  # set when something may have become due

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._queued)

    @property
    def waiting(self) -> int:
        """Files not yet complete or not yet handed to the worker."""
        with self._lock:
            return len(self._pending)

    def saw(self, path: Path, *, finished: bool = False) -> bool:
        """Note that ``path`` was created, written, closed or renamed into place.

        Returns False when the file could not be tracked (full, or gone already).
        """
        try:
            st = path.stat()
        except OSError:
            return False
        with self._lock:
            if path in self._queued:
                return True  # the worker has it; it checks for changes itself
            known = self._pending.get(path)
            if known is None:
                if len(self._pending) + len(self._queued) >= self.capacity:
                    self._missed = True
                    return False
                known = self._pending[path] = _Pending(
                    st.st_size, st.st_mtime_ns, self._clock(), finished
                )
                self.peak = max(self.peak, len(self._pending) + len(self._queued))
            elif (st.st_size, st.st_mtime_ns) != (known.size, known.mtime_ns):
                known.size, known.mtime_ns = st.st_size, st.st_mtime_ns
                known.stable_since = self._clock()
                known.finished = finished
            else:
                known.finished = known.finished or finished
        if finished:
            self.wake.set()
        return True

    def tracked(self, path: Path) -> bool:
        with self._lock:
            return path in self._pending or path in self._queued

    def due(self, limit: int) -> list[Path]:
        """Up to ``limit`` complete files, oldest first; they count as queued from now on."""
        now = self._clock()
        with self._lock:
            candidates = list(self._pending.items())
        ready, gone = [], []
        for path, p in candidates:
            if len(ready) >= limit:
                break
            try:
                st = path.stat()
            except FileNotFoundError:
                gone.append(path)
                continue
            except OSError as exc:
                logger.warning("{}: cannot stat ({}); the next rescan tries again", path, exc)
                gone.append(path)
                continue
            if (st.st_size, st.st_mtime_ns) != (p.size, p.mtime_ns):
                with self._lock:
                    p.size, p.mtime_ns, p.stable_since = st.st_size, st.st_mtime_ns, now
                    p.finished = False
                continue
            if p.finished or now - p.stable_since >= self.settle_seconds:
                ready.append(path)
        with self._lock:
            for path in gone:
                self._pending.pop(path, None)
            for path in ready:
                if (p := self._pending.pop(path, None)) is not None:
                    self._queued[path] = p
        return ready

    def observation(self, path: Path) -> Observation | None:
        """How a file handed to the worker looked, and since when (None if not handed on)."""
        with self._lock:
            p = self._queued.get(path)
            return None if p is None else Observation(p.size, p.mtime_ns, p.stable_since)

    def next_check(self) -> float | None:
        """Seconds until a waiting file might become complete (None when none waits)."""
        with self._lock:
            if not self._pending:
                return None
            oldest = min(p.stable_since for p in self._pending.values())
        return max(0.05, min(0.25, oldest + self.settle_seconds - self._clock()))

    def done(self, path: Path) -> None:
        """The worker is finished with ``path`` (decided, or gone, or unreadable)."""
        with self._lock:
            self._queued.pop(path, None)

    def retry(self, path: Path) -> None:
        """The worker found ``path`` still being written: wait for it to settle again."""
        with self._lock:
            self._queued.pop(path, None)
        self.saw(path)

    def take_missed(self) -> bool:
        """Whether files went untracked since the last call (a catch-up scan is needed)."""
        with self._lock:
            missed, self._missed = self._missed, False
        return missed


class Filter:
    """Which paths the daemon considers: matching names, outside the excluded folders (known
    by device and inode, whatever the spelling; the answer is remembered per folder)."""

    def __init__(self, patterns: Sequence[str], exclude: Iterable[Path]) -> None:
        self.patterns = list(patterns)
        self.exclude = Excluded(exclude)

    def excluded(self, folder: Path) -> bool:
        return self.exclude.holds(folder)

    def folder_changed(self) -> None:
        """A folder was created or moved in: a path may now name another folder."""
        self.exclude.forget()

    def __call__(self, path: Path) -> bool:
        return wanted(path, self.patterns) and not self.excluded(path.parent)


class EventHandler(FileSystemEventHandler):
    """Turns observer events into :class:`Arrivals` notes; runs on the observer's thread."""

    def __init__(
        self, accept: Filter, arrivals: Arrivals, on_folder: Callable[[Path], None]
    ) -> None:
        self.accept = accept
        self.arrivals = arrivals
        self.on_folder = on_folder

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self._handle(event)
        except Exception:  # noqa: BLE001 - an odd event must not kill the observer thread
            logger.exception("watcher: could not handle {}", event)

    def _handle(self, event: FileSystemEvent) -> None:
        moved = isinstance(event, FileMovedEvent | DirMovedEvent)
        path = Path(_text(event.dest_path if moved else event.src_path))
        if event.is_directory:
            # A folder created or moved in may already hold files no event will announce.
            self.accept.folder_changed()
            if not self.accept.excluded(path):
                self.on_folder(path)
            return
        if not self.accept(path):
            return
        finished = isinstance(event, FileClosedEvent | FileMovedEvent)
        if not self.arrivals.saw(path, finished=finished):
            logger.debug("watcher: {} not tracked now (gone, or the daemon is full)", path)


def _text(path: str | bytes) -> str:
    return path.decode() if isinstance(path, bytes) else path


class Watcher:
    """A watchdog observer over the watched folders, restarted with backoff when it fails.

    :meth:`check` is called from the service loop: it notices a dead observer or
    emitter thread (a network share that went away kills watchdog's polling
    thread for good) and folders that did not exist at the last start, and
    restarts. It returns True after a restart, because events were lost while
    the observer was down and the service should rescan.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        *,
        recursive: bool,
        polling: bool,
        handler: FileSystemEventHandler,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.paths = list(paths)
        self.recursive = recursive
        self.polling = polling
        self.handler = handler
        self._clock = clock
        self._observer: BaseObserver | None = None
        self._missing: list[Path] = []
        self._failures = 0
        self._retry_at = 0.0
        self._healthy_since = 0.0

    @property
    def observer(self) -> BaseObserver | None:
        """The running watchdog observer (None while it is down)."""
        return self._observer

    @property
    def kind(self) -> str:
        return "polling" if self.polling else "native"

    def start(self) -> None:
        """Start observing every folder that exists; the others are retried by :meth:`check`."""
        observer: BaseObserver = PollingObserver() if self.polling else Observer()
        observer.name = "gensift-observer"
        self._missing = []
        for path in self.paths:
            if not path.is_dir():
                self._missing.append(path)
                continue
            try:
                observer.schedule(
                    self.handler, str(path), recursive=self.recursive, event_filter=EVENTS
                )
            except OSError as exc:
                logger.error("watcher: cannot watch {}: {}", path, exc.strerror or exc)
                self._missing.append(path)
        for path in self._missing:
            logger.warning("watcher: {} is not a folder (yet); checking again later", path)
        observer.start()
        self._observer = observer
        self._healthy_since = self._clock()

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is None:
            return
        try:
            observer.stop()
            observer.join(timeout=5.0)
        except Exception:  # noqa: BLE001 - a broken observer must not stop the shutdown
            logger.exception("watcher: error while stopping the observer")

    def alive(self) -> bool:
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        return all(emitter.is_alive() for emitter in observer.emitters)

    def check(self) -> bool:
        """Restart a failed observer (with backoff); True when it was restarted."""
        now = self._clock()
        healthy = self.alive()
        appeared = [p for p in self._missing if p.is_dir()]
        if healthy and not appeared:
            if now - self._healthy_since > RESTART_BACKOFF[-1]:
                self._failures = 0
            return False
        if now < self._retry_at:
            return False
        if not healthy:
            logger.error(
                "watcher: the {} observer stopped (its thread died); restarting it", self.kind
            )
            self._retry_at = now + RESTART_BACKOFF[min(self._failures, len(RESTART_BACKOFF) - 1)]
            self._failures += 1
        else:
            logger.info("watcher: {} appeared; watching it", ", ".join(map(str, appeared)))
        self.stop()
        try:
            self.start()
        except Exception as exc:  # noqa: BLE001 - keep trying with backoff; rescans still run
            logger.error("watcher: cannot start the {} observer: {}", self.kind, exc)
            self._observer = None
        return True
