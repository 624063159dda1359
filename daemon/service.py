"""``gensift watch``: the run loop, signals, hot reload and systemd notify.

Start-up, in this order: take the journal lock, load the models (a bad
checkpoint stops the start with its error), settle what a crash left in the
journal, start the worker and the observer, scan the watched folders for files
with no decision, and only then report READY to systemd.

The service thread then loops: it hands settled files to the worker, rescans
every ``rescan_seconds`` (and at once after the observer restarted or files
went untracked in a flood), restarts a dead observer, reloads changed
checkpoints in the background, and keeps systemd's STATUS current. Signal
handlers only set flags: SIGTERM or SIGINT stops taking files, lets the worker
finish the batch in flight and exits 0; a second SIGINT exits at once (the
journal repairs any half-done move at the next start); SIGHUP reloads the
config and the checkpoints.
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

from gensift.daemon.config import ConfigError, Settings, load_config
from gensift.daemon.decode import FileInfo
from gensift.daemon.journal import Journal
from gensift.daemon.layout import check_layout, exclusions, watched_roots
from gensift.daemon.lock import JournalLock
from gensift.daemon.logs import setup_logging
from gensift.daemon.notify import SystemdNotifier
from gensift.daemon.pipeline import Cascade, Reported, discover, load_cascade
from gensift.daemon.router import repair
from gensift.daemon.sort import WATCH_RUN, new_run_id
from gensift.daemon.watcher import Arrivals, EventHandler, Filter, Watcher
from gensift.daemon.worker import Worker
from gensift.models.errors import InputError, RuntimeProblem
from gensift.models.presets import STAGES

#: How long a stop waits for the batch in flight (systemd's default stop timeout is 90 s).
STOP_GRACE_SECONDS = 8.0
#: Files tracked at once, per image of a batch (the floor of the bound is ``MIN_TRACKED``).
TRACKED_PER_BATCH_IMAGE = 64
MIN_TRACKED = 1024
#: Seconds between checks of the checkpoint files, and how long one must be quiet.
CHECKPOINT_POLL_SECONDS = 2.0
CHECKPOINT_SETTLE_SECONDS = 1.0
#: Seconds between stats lines in the log, and the least between STATUS updates.
STATS_SECONDS = 300.0
STATUS_SECONDS = 2.0
#: The service loop's longest sleep (events and stop requests wake it at once).
TICK_SECONDS = 2.0
#: The worker's longest wait for work when no watchdog needs its heartbeat.
WORKER_TICK_SECONDS = 5.0


def tracking_capacity(settings: Settings) -> int:
    return max(MIN_TRACKED, TRACKED_PER_BATCH_IMAGE * settings.inference.batch_size)


class Reloader:
    """Loads the models again when a checkpoint file changes, in a background thread.

    A changed file must be quiet for a moment (a copy in progress), then it is
    loaded and validated while the worker keeps serving; a good one is offered
    to the worker, which swaps it in between batches. A bad one is refused with
    a log line and not tried again until it changes.
    """

    def __init__(self, settings: Settings, worker: Worker) -> None:
        self.settings = settings
        self.worker = worker
        self._seen = _signature(settings)
        self._candidate = self._seen
        self._candidate_at = 0.0
        self._pending: Settings | None = None
        self._thread: threading.Thread | None = None

    def poll(self) -> None:
        """Start a load if a checkpoint changed (and has been quiet) or one was requested."""
        if self._thread is not None and self._thread.is_alive():
            return
        now = time.monotonic()
        signature = _signature(self.settings)
        if signature != self._seen and self._pending is None:
            if signature != self._candidate:
                self._candidate, self._candidate_at = signature, now
                return
            if now - self._candidate_at < CHECKPOINT_SETTLE_SECONDS:
                return
            self._seen = signature
            if not self.worker.loaded:  # idle-unloaded: the next file loads the new one
                logger.info("reload: a checkpoint changed; it is loaded with the next file")
                return
            logger.info("reload: a checkpoint changed; loading it in the background")
            self._pending = self.settings
        if self._pending is not None:
            settings, self._pending = self._pending, None
            self._thread = threading.Thread(
                target=self._load, args=(settings,), name="gensift-reload", daemon=True
            )
            self._thread.start()

    def request(self, settings: Settings) -> None:
        """Load the models for ``settings`` (SIGHUP) at the next :meth:`poll`."""
        self.settings = settings
        self._seen = self._candidate = _signature(settings)
        self._pending = settings

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _load(self, settings: Settings) -> None:
        current = self.worker.cascade
        serving = "nothing loaded" if current is None else current.predictor.describe()
        try:
            cascade = load_cascade(settings)
        except (InputError, RuntimeProblem, OSError) as exc:
            logger.error("reload refused: {}. Still serving {}", exc, serving)
            return
        except Exception:  # noqa: BLE001 - a bug in loading must not stop the daemon
            logger.exception("reload refused by an unexpected error. Still serving {}", serving)
            return
        logger.info("reload: loaded {}; swapping it in", cascade.predictor.describe())
        self.worker.offer(settings, cascade)


def _signature(settings: Settings) -> tuple[tuple[int, int, int] | None, ...]:
    """What identifies the checkpoint files as they are now (None for a missing one)."""
    result = []
    for stage in STAGES:
        path = getattr(settings.stages, stage).checkpoint
        try:
            st = path.stat() if path is not None else None
        except OSError:
            st = None
        result.append(None if st is None else (st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(result)


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
        self._catch_up = False
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
            worker, serving = self._new_worker(load_cascade(settings))
            with Journal.open(settings.journal.path) as journal:
                repaired = repair(journal, settings.output.root)
                return self._serve(journal, worker, serving, repaired)

    def _new_worker(self, cascade: Cascade) -> tuple[Worker, str]:
        """The worker, and what it serves. From here on the worker is the models' only owner:
        a reference kept anywhere else (a local of :meth:`run`, say) would hold them in (GPU)
        memory through every idle unload and every reload, for the daemon's whole life."""
        interval = self.notifier.watchdog_interval
        worker = Worker(
            self.settings,
            cascade,
            self.arrivals,
            self.run_id,
            tick=min(WORKER_TICK_SECONDS, interval / 2) if interval else WORKER_TICK_SECONDS,
            heartbeat=self._heartbeat,
        )
        return worker, cascade.predictor.describe()

    def _serve(self, journal: Journal, worker: Worker, serving: str, repaired: int) -> int:
        settings = self.settings
        self.worker = worker
        reloader = Reloader(settings, worker)
        worker.start()
        self.watcher = self._new_watcher(settings)
        code = 1  # unless the loop ends normally
        try:
            self.watcher.start()
            self._start_up(journal, serving, repaired)
            code = self._loop(journal, worker, reloader)
        finally:
            code = self._shutdown(worker, reloader, code)
        return code

    def _start_up(self, journal: Journal, serving: str, repaired: int) -> None:
        """The start-up scan, the start-up line, and READY."""
        settings = self.settings
        assert self.watcher is not None
        found = self._scan(journal, watched_roots(settings))
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
        self.notifier.ready(f"start-up scan found {found} undecided file(s); watching")
        self.ready.set()

    def _loop(self, journal: Journal, worker: Worker, reloader: Reloader) -> int:
        settings = self.settings
        now = time.monotonic()
        next_rescan = now + settings.watch.rescan_seconds
        next_stats = now + STATS_SECONDS
        next_checkpoint_poll = now
        last_status, status_at, stats_decided = "", 0.0, 0
        while not self._stop.is_set():
            wait = self.arrivals.next_check() or TICK_SECONDS
            self.arrivals.wake.wait(wait)
            self.arrivals.wake.clear()
            now = self._loop_beat = time.monotonic()
            if not worker.alive():
                logger.critical("the worker thread died; exiting so that the service restarts")
                return 1
            self._feed(worker)
            for folder in self._take_folders():
                self._scan(journal, [folder])
            if self.arrivals.take_missed():
                self._catch_up = True
            if self._catch_up and self._has_room():
                self._catch_up = False
                found = self._scan(journal, watched_roots(settings))
                logger.info("catch-up scan: {} file(s) that were not tracked in the flood", found)
            if settings.watch.rescan_seconds and now >= next_rescan:
                next_rescan = now + settings.watch.rescan_seconds
                found = self._scan(journal, watched_roots(settings))
                if found:
                    logger.info("rescan: {} undecided file(s) that were not tracked yet", found)
            assert self.watcher is not None
            if self.watcher.check():
                self._scan(journal, watched_roots(settings))
            if now >= next_checkpoint_poll:
                next_checkpoint_poll = now + CHECKPOINT_POLL_SECONDS
                reloader.poll()
            if self._hangup.is_set():
                self._hangup.clear()
                self._reload_config(reloader)
                settings = self.settings
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

    def _shutdown(self, worker: Worker, reloader: Reloader, code: int) -> int:
        logger.info("stopping: no new files; finishing the batch in flight")
        self.notifier.stopping("stopping: finishing the batch in flight")
        assert self.watcher is not None
        self.watcher.stop()
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
        room = worker.room()
        if room:
            for path in self.arrivals.due(room):
                worker.put(path)

    def _has_room(self) -> bool:
        return self.arrivals.waiting < self.arrivals.capacity // 2

    def _scan(self, journal: Journal, roots: Sequence[Path]) -> int:
        """Track every file under ``roots`` with no decision; how many were new."""
        settings = self.settings
        existing = [root for root in roots if root.is_dir()]
        try:
            paths = discover(
                existing,
                settings.watch.patterns,
                recursive=settings.watch.recursive,
                exclude=exclusions(settings),
                reported=self._unlisted,
            )
        except OSError as exc:
            logger.error("scan of {} failed: {}; tried again at the next rescan", roots, exc)
            return 0
        found = 0
        for path in paths:
            if self.arrivals.tracked(path):
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            if journal.decided(FileInfo(path, st.st_size, st.st_mtime_ns)):
                continue
            if not self.arrivals.saw(path):
                if self.arrivals.take_missed():
                    self._catch_up = True  # full: the rest once the worker has caught up
                    break
                continue
            found += 1
        if self.worker is not None:
            self._feed(self.worker)
        return found

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
        """SIGHUP: read the config again; apply it with the models it names, or keep both."""
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
            self.watcher.start()
            self._catch_up = True
        reloader.request(new)

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

        The ping also requires the service loop to have turned within the watchdog
        timeout, so a hang in either thread stops the pings and systemd restarts us.
        """
        interval = self.notifier.watchdog_interval
        if interval is None or not self.ready.is_set():  # systemd watches from READY on
            return
        now = time.monotonic()
        if now - self._last_ping < interval or now - self._loop_beat > 2 * interval:
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
