"""Scans for undecided files: the daemon's queue of last resort, off the service thread.

The daemon scans its watched folders at start-up, every ``rescan_seconds``,
after its observer restarted, when a folder appears under a recursive watch,
and once there is room again after a flood. A scan of 100,000 files on a slow
share takes minutes; on the service thread it would stop the loop that feeds
settled files to the worker and vouches for the systemd watchdog ping, and
systemd would kill a healthy daemon. So every scan after the start-up one runs
in the :class:`Rescanner`'s thread, one at a time, listing one folder at a time
and handing files to :class:`~gensift.daemon.runtime.watcher.Arrivals` in chunks of
:data:`CHUNK`, waking the service loop after each chunk so it feeds the worker
while the scan goes on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from gensift.daemon.routing.journal import Journal
from gensift.daemon.routing.records import FileInfo
from gensift.daemon.runtime.paths import Reported, iter_files
from gensift.daemon.runtime.watcher import Arrivals

#: Files looked at between two wake-ups of the service loop.
CHUNK = 256
#: How long a stop waits for a scan to notice it (a listing blocked on a dead share may not).
STOP_SECONDS = 5.0


@dataclass(frozen=True)
class Scan:
    """What to scan, with the watch settings in force when it was asked for.

    ``why`` names it in the log: ``rescan``, ``catch-up``, ``restart`` or ``folder``;
    ``full`` scans cover every watched folder (and so any folder scan asked for meanwhile).
    """

    roots: tuple[Path, ...]
    patterns: tuple[str, ...]
    recursive: bool
    exclude: tuple[Path, ...]
    why: str
    full: bool = True


@dataclass(frozen=True)
class ScanResult:
    found: int  # files newly tracked
    missed: bool  # Arrivals was full: a catch-up scan must follow once there is room


def run_scan(
    journal: Journal,
    scan: Scan,
    arrivals: Arrivals,
    reported: Reported,
    stop: threading.Event,
) -> ScanResult:
    """Track every file under ``scan.roots`` that has no decision yet, in chunks."""
    found = 0
    try:
        files = iter_files(
            scan.roots,
            scan.patterns,
            recursive=scan.recursive,
            exclude=scan.exclude,
            reported=reported,
        )
        for count, path in enumerate(files, start=1):
            if stop.is_set():
                break
            if count % CHUNK == 0:
                arrivals.wake.set()  # the service feeds what is due while the scan goes on
            if arrivals.tracked(path):
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            if journal.decided(FileInfo(path, st.st_size, st.st_mtime_ns)):
                continue
            if not arrivals.saw(path):
                if arrivals.take_missed():  # full: the rest once the worker has caught up
                    return ScanResult(found, missed=True)
                continue
            found += 1
    except OSError as exc:
        roots = ", ".join(map(str, scan.roots))
        logger.error("scan of {} failed: {}; tried again at the next rescan", roots, exc)
    finally:
        arrivals.wake.set()
    return ScanResult(found, missed=False)


class Rescanner:
    """Runs the scans asked for with :meth:`request` in a thread, one at a time.

    Requests made while a scan runs wait for it and are merged: a full scan covers
    folder scans, and of two full scans the newer settings win.
    ``on_missed`` is called (from the scan thread) when a scan found Arrivals full.
    """

    def __init__(
        self,
        journal_path: Path,
        arrivals: Arrivals,
        reported: Reported,
        on_missed: Callable[[], None],
    ) -> None:
        self.journal_path = journal_path
        self.arrivals = arrivals
        self.reported = reported
        self.on_missed = on_missed
        self._lock = threading.Lock()
        self._wanted: Scan | None = None
        self._running: Scan | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="gensift-rescan", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def busy(self) -> bool:
        """Whether a scan runs or waits to."""
        with self._lock:
            return self._running is not None or self._wanted is not None

    def request(self, scan: Scan) -> None:
        with self._lock:
            pending = self._wanted
            if pending is None or scan.full:
                self._wanted = scan
            elif not pending.full:
                roots = pending.roots + tuple(r for r in scan.roots if r not in pending.roots)
                self._wanted = Scan(
                    roots, scan.patterns, scan.recursive, scan.exclude, scan.why, full=False
                )
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(STOP_SECONDS)
        if self._thread.is_alive():
            logger.warning("rescan: a folder listing did not return; leaving it behind")

    def _main(self) -> None:
        try:
            with Journal.open_readonly(self.journal_path) as journal:
                while not self._stop.is_set():
                    self._wake.wait()
                    self._wake.clear()
                    with self._lock:
                        scan, self._wanted = self._wanted, None
                        self._running = scan
                    try:
                        if scan is not None:
                            self._run(journal, scan)
                    finally:
                        with self._lock:
                            self._running = None
        except BaseException as exc:  # noqa: BLE001 - the service notices and exits 1
            logger.opt(exception=exc).critical("rescan: stopped by an unexpected error")

    def _run(self, journal: Journal, scan: Scan) -> None:
        result = run_scan(journal, scan, self.arrivals, self.reported, self._stop)
        if scan.why == "catch-up":
            logger.info(
                "catch-up scan: {} file(s) that were not tracked in the flood", result.found
            )
        elif scan.why == "rescan" and result.found:
            logger.info("rescan: {} undecided file(s) that were not tracked yet", result.found)
        elif result.found:
            logger.debug("{} scan: {} undecided file(s)", scan.why, result.found)
        if result.missed:
            self.on_missed()
