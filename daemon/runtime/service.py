"""``gensift watch``: the run loop, signals, hot reload and systemd notify.

Start-up, in this order: take the journal lock, load the models (a bad
checkpoint stops the start with its error), settle what a crash left in the
journal, start the worker and the observer, scan the watched folders for files
with no decision, and only then report READY to systemd.

The service thread then loops, never waiting on anything slow: it hands
settled files to the worker, asks the rescanner's thread for a rescan every
``rescan_seconds`` (and at once after the observer restarted or files went
untracked in a flood), restarts a dead observer, has the reloader's thread
load changed checkpoints, and keeps systemd's STATUS current; the watchdog
ping needs both it and the worker to be turning. Signal handlers only set
flags: SIGTERM or SIGINT stops taking files, lets the worker finish the batch
in flight and exits 0; a second SIGINT exits at once (the journal repairs any
half-done move at the next start); SIGHUP reads the config again and the reloader
(:mod:`~gensift.daemon.runtime.reload`) loads the checkpoints it names in the
background; the service then applies the watcher's and the worker's settings
together, or, if the models do not load, neither.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from loguru import logger

from gensift.daemon.config import ConfigError, Settings, config_warnings, load_config
from gensift.daemon.logs import setup_logging
from gensift.daemon.routing.audit import live_precision, recorded_target
from gensift.daemon.routing.journal import WATCH_RUN, Journal, new_run_id
from gensift.daemon.routing.lock import JournalLock
from gensift.daemon.routing.recovery import repair
from gensift.daemon.runtime.layout import check_layout, exclusions, watched_roots
from gensift.daemon.runtime.notify import SystemdNotifier
from gensift.daemon.runtime.paths import Reported
from gensift.daemon.runtime.reload import CHECKPOINT_POLL_SECONDS, Loaded, Reloader
from gensift.daemon.runtime.rescan import Rescanner, Scan, run_scan
from gensift.daemon.runtime.sifter import Cascade
from gensift.daemon.runtime.watcher import Arrivals, EventHandler, Filter, Watcher
from gensift.daemon.runtime.worker import Worker, load_models
from gensift.models.errors import InputError

#: How long a stop waits for the batch in flight (systemd's default stop timeout is 90 s).
STOP_GRACE_SECONDS = 8.0
#: Files tracked at once, per image of a batch (the floor of the bound is ``MIN_TRACKED``).
TRACKED_PER_BATCH_IMAGE = 64
MIN_TRACKED = 1024
#: The longest gap between two systemd watchdog pings, whatever WatchdogSec says.
WATCHDOG_MAX_SECONDS = 30.0
#: Seconds between stats lines in the log, and the least between STATUS updates.
STATS_SECONDS = 300.0
STATUS_SECONDS = 2.0
#: The service loop's longest sleep (events and stop requests wake it at once).
TICK_SECONDS = 2.0
#: The worker's longest wait for work when no watchdog needs its heartbeat.
WORKER_TICK_SECONDS = 5.0


def tracking_capacity(settings: Settings) -> int:
    return max(MIN_TRACKED, TRACKED_PER_BATCH_IMAGE * settings.inference.batch_size)


class Daemon:
    """``gensift watch``; :meth:`run` returns the exit code."""

    def __init__(
        self,
        settings: Settings,
        *,
        config_path: Path | None = None,
        notifier: SystemdNotifier | None = None,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.environ = environ
        self.notifier = notifier or SystemdNotifier()
        self.run_id = new_run_id(WATCH_RUN)
        self.arrivals = Arrivals(settings.watch.settle_seconds, tracking_capacity(settings))
        self._stop = threading.Event()
        self._hangup = threading.Event()
        self._interrupts = 0
        self._folders: set[Path] = set()
        self._folders_lock = threading.Lock()
        self._loop_beat = time.monotonic()
        self._last_ping = 0.0
        interval = self.notifier.watchdog_interval  # half of WatchdogSec
        # a ping at least every half of min(30 s, WatchdogSec / 2), whatever the worker does
        self._ping_every = min(interval, WATCHDOG_MAX_SECONDS) / 2 if interval else None
        self._catch_up = threading.Event()  # a scan found Arrivals full: scan again later
        self._unlisted = Reported()  # folders a scan could not list: warned about once
        self.worker: Worker | None = None
        self.watcher: Watcher | None = None
        self.ready = threading.Event()  # set once READY was reported (tests wait on it)

    # -- control from other threads and signal handlers -----------------------------------

    def request_stop(self) -> None:
        self._stop.set()
        self.arrivals.wake.set()

    def request_reload(self) -> None:
        self._hangup.set()
        self.arrivals.wake.set()

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> int:
        settings = self.settings
        check_layout(settings)
        with JournalLock(settings.journal.path, "watch"), self._signals():
            worker, serving = self._new_worker(load_models(settings))
            with Journal.open(settings.journal.path) as journal:
                repaired = repair(journal, settings.output.root)
                return self._serve(journal, worker, serving, repaired)

    def _new_worker(self, cascade: Cascade) -> tuple[Worker, str]:
        """The worker, and what it serves. From here on the worker is the models' only owner:
        a reference kept anywhere else (a local of :meth:`run`, say) would hold them in (GPU)
        memory through every idle unload and every reload, for the daemon's whole life."""
        worker = Worker(
            self.settings,
            cascade,
            self.arrivals,
            self.run_id,
            tick=min(WORKER_TICK_SECONDS, self._ping_every / 2)
            if self._ping_every
            else WORKER_TICK_SECONDS,
            heartbeat=self._heartbeat,
        )
        return worker, cascade.predictor.describe()

    def _serve(self, journal: Journal, worker: Worker, serving: str, repaired: int) -> int:
        settings = self.settings
        self.worker = worker
        reloader = Reloader(settings, worker)
        rescanner = Rescanner(
            settings.journal.path, self.arrivals, self._unlisted, on_missed=self._catch_up.set
        )
        worker.start()
        self.watcher = self._new_watcher(settings)
        code = 1  # unless the loop ends normally
        try:
            self.watcher.start()
            self._start_up(journal, serving, repaired)
            rescanner.start()
            code = self._loop(worker, reloader, rescanner)
        finally:
            code = self._shutdown(worker, reloader, rescanner, code)
        return code

    def _start_up(self, journal: Journal, serving: str, repaired: int) -> None:
        """The start-up scan, the start-up line, and READY."""
        settings = self.settings
        assert self.watcher is not None
        scan = self._scan_of("start-up")
        result = run_scan(journal, scan, self.arrivals, self._unlisted, self._stop)
        if result.missed:
            self._catch_up.set()
        if self.worker is not None:
            self._feed(self.worker)
        for note in config_warnings(settings):
            logger.warning("config: {}", note)
        logger.info(
            "watching {} ({} observer{}, settle {} s, rescan every {}) -> {}; {}; journal {}{}; "
            "run {}",
            ", ".join(map(str, settings.watch.paths)),
            self.watcher.kind,
            ", recursive" if settings.watch.recursive else "",
            settings.watch.settle_seconds,
            f"{settings.watch.rescan_seconds:g} s" if settings.watch.rescan_seconds else "never",
            settings.output.root,
            serving,
            settings.journal.path,
            f" ({repaired} interrupted operation(s) repaired)" if repaired else "",
            self.run_id,
        )
        target = recorded_target(settings.stages.feature.checkpoint)
        for live in live_precision(journal, target):
            if live.below_target:
                logger.warning(
                    "live precision {}: review the audit queue (gensift review) and retrain",
                    live.describe(),
                )
        self.notifier.ready(f"start-up scan found {result.found} undecided file(s); watching")
        self.ready.set()

    def _loop(self, worker: Worker, reloader: Reloader, rescanner: Rescanner) -> int:
        """The service thread's loop: nothing in it may take long (scans run in the
        rescanner's thread, loads in the reloader's), so that it turns at least every
        ``tick`` seconds and the watchdog ping it vouches for keeps coming."""
        now = time.monotonic()
        next_rescan = now + self.settings.watch.rescan_seconds
        next_stats = now + STATS_SECONDS
        next_checkpoint_poll = now
        last_status, status_at, stats_decided = "", 0.0, 0
        tick = min(TICK_SECONDS, self._ping_every / 2) if self._ping_every else TICK_SECONDS
        while not self._stop.is_set():
            self.arrivals.wake.wait(min(self.arrivals.next_check() or tick, tick))
            self.arrivals.wake.clear()
            now = self._loop_beat = time.monotonic()
            settings = self.settings
            for thread, name in ((worker, "worker"), (rescanner, "rescan")):
                if not thread.alive():
                    logger.critical("the {} thread died; exiting so the service restarts", name)
                    return 1
            self._feed(worker)
            folders = self._take_folders()
            if folders:
                rescanner.request(self._scan_of("folder", folders))
            if self.arrivals.take_missed():
                self._catch_up.set()
            if self._catch_up.is_set() and self._has_room() and not rescanner.busy:
                self._catch_up.clear()
                rescanner.request(self._scan_of("catch-up"))
            if settings.watch.rescan_seconds and now >= next_rescan:
                next_rescan = now + settings.watch.rescan_seconds
                if rescanner.busy:
                    logger.debug("rescan: the last scan still runs; skipping this one")
                else:
                    rescanner.request(self._scan_of("rescan"))
            assert self.watcher is not None
            if self.watcher.check():
                rescanner.request(self._scan_of("restart"))
            if now >= next_checkpoint_poll:
                next_checkpoint_poll = now + CHECKPOINT_POLL_SECONDS
                loaded = reloader.poll()
                if loaded is not None:
                    self._apply(loaded, reloader, worker)
            if self._hangup.is_set():
                self._hangup.clear()
                self._reload_config(reloader)
                next_checkpoint_poll = now  # start loading at the next turn
            status = self._status(worker)
            if status != last_status and now - status_at >= STATUS_SECONDS:
                self.notifier.status(status)
                last_status, status_at = status, now
            if now >= next_stats:
                next_stats = now + STATS_SECONDS
                logger.info("stats: {}; {} decided since the last stats line", self._stats(
                    worker), worker.decided - stats_decided)  # fmt: skip
                stats_decided = worker.decided
        return 0

    def _shutdown(self, worker: Worker, reloader: Reloader, rescanner: Rescanner, code: int) -> int:
        logger.info("stopping: no new files; finishing the batch in flight")
        self.notifier.stopping("stopping: finishing the batch in flight")
        assert self.watcher is not None
        self.watcher.stop()
        if rescanner.alive():
            rescanner.stop()
        stopped = worker.stop(STOP_GRACE_SECONDS)
        if stopped == "abandoned":
            logger.warning(
                "the batch in flight was still in the model after {:.0f} s; abandoned it "
                "between two file operations (its files are untouched and are decided at the "
                "next start)",
                STOP_GRACE_SECONDS,
            )
        elif stopped == "stuck":
            logger.error(
                "a file operation did not finish within {:.0f} s; exiting anyway (the next "
                "start repairs it from the journal)",
                STOP_GRACE_SECONDS,
            )
            code = 1
        reloader.join(timeout=1.0)
        logger.info("stopped: {}", self._stats(worker))
        self.notifier.close()
        return code

    # -- pieces of the loop ----------------------------------------------------------------

    def _feed(self, worker: Worker) -> None:
        """Hand due files to the worker; none while it swaps in new settings, so that every
        file handed on after a reload was applied is decided by the new settings."""
        room = worker.room()
        if room and not worker.swapping:
            for path in self.arrivals.due(room):
                worker.put(path)

    def _has_room(self) -> bool:
        return self.arrivals.waiting < self.arrivals.capacity // 2

    def _scan_of(self, why: str, folders: Sequence[Path] | None = None) -> Scan:
        """A scan of ``folders`` (all watched folders when None) with the running settings."""
        settings = self.settings
        return Scan(
            roots=tuple(watched_roots(settings) if folders is None else folders),
            patterns=tuple(settings.watch.patterns),
            recursive=settings.watch.recursive,
            exclude=tuple(exclusions(settings)),
            why=why,
            full=folders is None,
        )

    def _folder_appeared(self, folder: Path) -> None:
        with self._folders_lock:
            self._folders.add(folder)
        self.arrivals.wake.set()

    def _take_folders(self) -> list[Path]:
        """Folders that appeared under a recursive watch since the last turn."""
        with self._folders_lock:
            folders, self._folders = sorted(self._folders), set()
        return folders if self.settings.watch.recursive else []

    def _new_watcher(self, settings: Settings) -> Watcher:
        accept = Filter(settings.watch.patterns, exclusions(settings))
        handler = EventHandler(accept, self.arrivals, self._folder_appeared)
        return Watcher(
            watched_roots(settings),
            recursive=settings.watch.recursive,
            polling=settings.watch.polling,
            handler=handler,
        )

    def _reload_config(self, reloader: Reloader) -> None:
        """SIGHUP: read the config again and load the models it names in the background;
        :meth:`_apply` applies both once they loaded, or neither."""
        logger.info("SIGHUP: reloading {}", self.config_path or "the configuration")
        try:
            new = load_config(self.config_path, environ=self.environ)
            check_layout(new)
        except (ConfigError, InputError) as exc:
            logger.error("reload refused: {}; keeping the running configuration", exc)
            return
        old = self.settings
        if new.journal.path != old.journal.path:
            logger.warning(
                "journal.path changed to {}; that takes effect at the next start", new.journal.path
            )
            new = new.model_copy(update={"journal": old.journal})
        for note in config_warnings(new):
            logger.warning("config: {}", note)
        logger.info(
            "SIGHUP: loading the checkpoints the configuration names; it is applied once they "
            "load, or not at all"
        )
        reloader.request(new)

    def _apply(self, loaded: Loaded, reloader: Reloader, worker: Worker) -> None:
        """Apply what the reloader loaded: the watcher's settings and the worker's together."""
        new, old = loaded.settings, self.settings
        reloader.settings = new
        if new != old:
            if new.log != old.log:
                try:
                    setup_logging(new.log)
                except ConfigError as exc:
                    logger.error("log settings not applied: {}", exc)
            self.settings = new
            self.arrivals.settle_seconds = new.watch.settle_seconds
            if new.watch != old.watch or new.output.root != old.output.root:
                assert self.watcher is not None
                self.watcher.stop()
                self.watcher = self._new_watcher(new)
                try:
                    self.watcher.start()
                except Exception as exc:  # noqa: BLE001 - check() restarts it with backoff
                    logger.error("watcher: cannot start the observer: {}", exc)
                self._catch_up.set()
            logger.info("reload: the new configuration applies from the next batch")
        elif loaded.cascade is None:
            return  # a checkpoint checked while idle-unloaded: nothing changes now
        worker.offer(new, loaded.cascade)

    def _status(self, worker: Worker) -> str:
        return (
            f"{worker.decided} decided; {self.arrivals.waiting} waiting to settle, "
            f"{worker.inbox.qsize()} queued; models {'loaded' if worker.loaded else 'unloaded'}"
        )

    def _stats(self, worker: Worker) -> str:
        counts = worker.counts()
        parts = ", ".join(f"{label} {n}" for label, n in sorted(counts.items())) or "nothing yet"
        rss = _peak_rss_mib()
        memory = f"; peak RSS {rss:.0f} MiB" if rss is not None else ""
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            memory += f"; peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
        return (
            f"{self._status(worker)}; most files tracked at once {self.arrivals.peak} "
            f"(bound {self.arrivals.capacity}); outcomes: {parts}{memory}"
        )

    def _heartbeat(self) -> None:
        """Called by the worker on every turn of its loop: ping systemd's watchdog.

        Pings come every ``_ping_every`` seconds (a quarter of WatchdogSec, at most 15 s),
        so the gap between two stays under min(30 s, WatchdogSec / 2) even when a turn of
        the worker runs late. The ping also requires the service loop to have turned
        lately (it never waits on a scan or a load), so a hang in either thread stops the
        pings and systemd restarts us.
        """
        interval = self.notifier.watchdog_interval
        every = self._ping_every
        if interval is None or every is None or not self.ready.is_set():  # from READY on
            return
        now = time.monotonic()
        if now - self._last_ping < every or now - self._loop_beat > 2 * interval:
            return
        self._last_ping = now
        self.notifier.watchdog()

    @contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGTERM/SIGINT stop, a second SIGINT exits at once, SIGHUP reloads (main thread)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handlers: dict[int, Callable[[int, object], None]] = {
            signal.SIGTERM: lambda signum, frame: self.request_stop(),
            signal.SIGINT: self._on_interrupt,
        }
        if hasattr(signal, "SIGHUP"):
            handlers[signal.SIGHUP] = lambda signum, frame: self.request_reload()
        previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_interrupt(self, signum: int, frame: object) -> None:
        self._interrupts += 1
        if self._interrupts > 1:
            sys.stderr.write("gensift: second interrupt, exiting now\n")
            os._exit(130)
        self.request_stop()


def _peak_rss_mib() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20
