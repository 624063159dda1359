"""The daemon's inference thread: settled paths in, decisions and file operations out.

One :class:`Worker` thread owns the models and the journal connection that
records decisions. It takes settled paths from a bounded inbox in micro-batches
(up to ``batch_size``, waiting at most ``max_wait_ms`` after the first), has a
pool of decoder threads read and resize them, and while one batch runs through
the cascade the next one is already decoding. Decisions and file operations are
the :class:`~gensift.daemon.pipeline.Sifter`'s, exactly as ``gensift sort``
makes them.

Between batches, and only there, it swaps in a cascade the service loaded in
the background (:meth:`Worker.offer`), drops its models after
``idle_unload_seconds`` without work, and sends the heartbeat. Stopping
finishes the batch in flight; files still in the inbox or in the batch that was
decoding are untouched, and the next start's scan finds them.
"""

from __future__ import annotations

import contextlib
import gc
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from loguru import logger

from gensift.daemon.config import Settings
from gensift.daemon.decode import Decoded, default_workers
from gensift.daemon.journal import Journal
from gensift.daemon.pipeline import Cascade, Reported, Sifter, load_cascade
from gensift.daemon.router import Outcome, Router
from gensift.daemon.sort import summary_label
from gensift.daemon.watcher import Arrivals
from gensift.models.errors import InputError, RuntimeProblem

#: The inbox holds this many batches: enough to keep the model busy, little memory.
INBOX_BATCHES = 4
#: After a failed model load, files are left to the rescans for this long before trying again.
LOAD_RETRY_SECONDS = 30.0
#: How long a stop waits for a file operation in progress once the grace time is over.
FILE_OPERATION_SECONDS = 1.5
#: Put in the inbox to wake a worker that waits for work (to stop).
_WAKE = Path()
#: Outcomes after which the worker tries a file again once it has settled.
RETRY_STATES = frozenset({"unsettled", "stale"})


@dataclass(frozen=True)
class Offer:
    """A cascade loaded in the background, with the settings it was loaded for."""

    settings: Settings
    cascade: Cascade


class Worker:
    """The one thread that runs the models; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        cascade: Cascade,
        arrivals: Arrivals,
        run: str,
        *,
        tick: float = 1.0,
        heartbeat: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.arrivals = arrivals
        self.run = run
        self.tick = tick
        self.heartbeat = heartbeat
        self.inbox: queue.Queue[Path] = queue.Queue(
            maxsize=INBOX_BATCHES * settings.inference.batch_size
        )
        self.decided = 0
        self._counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        self.last_work = time.monotonic()
        self._cascade: Cascade | None = cascade
        self._offer: Offer | None = None
        self._offer_lock = threading.Lock()
        self._stop = threading.Event()
        self._files = threading.Lock()  # held by the router during each file operation
        self._load_retry_at = 0.0
        self._reported = Reported()  # outlives each Sifter: reloads and idle unloads
        self._thread = threading.Thread(target=self._main, name="gensift-worker", daemon=True)

    # -- called from the service thread ----------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def loaded(self) -> bool:
        return self._cascade is not None

    @property
    def cascade(self) -> Cascade | None:
        return self._cascade

    def counts(self) -> Counter[str]:
        """Outcomes so far, by the labels of ``gensift sort``'s summary."""
        with self._counts_lock:
            return Counter(self._counts)

    def room(self) -> int:
        """How many more paths the inbox takes now."""
        return max(0, self.inbox.maxsize - self.inbox.qsize())

    def put(self, path: Path) -> None:
        """Queue a settled path; call only with :meth:`room` to spare (never blocks)."""
        self.inbox.put_nowait(path)

    def offer(self, settings: Settings, cascade: Cascade) -> None:
        """Serve with ``cascade`` from the next batch on (the current one finishes first)."""
        with self._offer_lock:
            self._offer = Offer(settings, cascade)

    def stop(self, grace: float) -> Literal["stopped", "abandoned", "stuck"]:
        """Finish the batch in flight and stop.

        ``stopped``: done within ``grace`` seconds. ``abandoned``: the batch was still in the
        model; the caller now holds the file-operation lock, so no file operation is half
        done or will start, and the process may exit (those files are untouched).
        ``stuck``: a file operation did not finish either.
        """
        self._stop.set()
        with contextlib.suppress(queue.Full):  # wake the thread if it waits for work
            self.inbox.put_nowait(_WAKE)
        self._thread.join(timeout=grace)
        if not self._thread.is_alive():
            return "stopped"
        return "abandoned" if self._files.acquire(timeout=FILE_OPERATION_SECONDS) else "stuck"

    # -- the thread ------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            with Journal.open(self.settings.journal.path) as journal:
                self._serve(journal)
        except BaseException as exc:  # noqa: BLE001 - the service notices and exits 1
            logger.opt(exception=exc).critical("worker: stopped by an unexpected error")

    def _serve(self, journal: Journal) -> None:
        assert self._cascade is not None, "the worker starts with the models loaded"
        sifter: Sifter | None = self._sifter(journal)
        workers = default_workers(self._cascade.predictor.device)
        inflight: deque[list[tuple[Path, Future[Decoded]]]] = deque()
        with ThreadPoolExecutor(workers, thread_name_prefix="gensift-decode") as pool:
            try:
                while not self._stop.is_set():
                    self.heartbeat()
                    swapping = self._offer is not None
                    if swapping and not inflight:
                        sifter = None  # the old models go before their memory is freed
                        sifter = self._swap(journal)
                    paths = [] if swapping else self._take(wait=not inflight)
                    if paths and sifter is None:
                        sifter = self._reload(journal, paths)
                    if paths and sifter is not None:
                        inflight.append([(p, pool.submit(sifter.decoder, p)) for p in paths])
                    # A batch runs once the next one is decoding (or nothing more is waiting):
                    # decoding overlaps inference, with at most two batches in memory.
                    if inflight and (len(inflight) > 1 or not paths):
                        assert sifter is not None
                        self._process(journal, sifter, inflight.popleft())
                    elif not inflight and sifter is not None and self._idle():
                        sifter = None  # as in a swap: let go first, then free
                        self._unload()
            finally:
                for batch in inflight:  # decoded but not decided: the next start's scan
                    for path, future in batch:
                        future.cancel()
                        self.arrivals.done(path)

    def _take(self, *, wait: bool) -> list[Path]:
        """A micro-batch from the inbox: block for the first path only when ``wait``."""
        try:
            first = self.inbox.get(timeout=self.tick) if wait else self.inbox.get_nowait()
        except queue.Empty:
            return []
        if first is _WAKE:
            return []
        paths = [first]
        inference = self.settings.inference
        deadline = time.monotonic() + inference.max_wait_ms / 1000
        while len(paths) < inference.batch_size:
            left = deadline - time.monotonic()
            try:
                waiting = wait and left > 0
                path = self.inbox.get(timeout=left) if waiting else self.inbox.get_nowait()
            except queue.Empty:
                break
            if path is _WAKE:
                break
            paths.append(path)
        return paths

    def _process(
        self, journal: Journal, sifter: Sifter, batch: list[tuple[Path, Future[Decoded]]]
    ) -> None:
        started = time.perf_counter()
        items = []
        for path, future in batch:
            item = future.result()
            if item.status in ("ok", "blank", "corrupt") and journal.decided(item.file):
                self.arrivals.done(path)  # a rescan raced with the decision: nothing to do
            else:
                items.append(item)
        decoded = time.perf_counter()
        try:
            outcomes = sifter.handle(items)
        except Exception:  # noqa: BLE001 - one bad batch must not stop the daemon
            logger.exception(
                "worker: a batch of {} file(s) failed ({}); the next rescan tries them again",
                len(items),
                ", ".join(str(i.file.path) for i in items[:5]),
            )
            outcomes = []
            for item in items:
                self.arrivals.done(item.file.path)
        for outcome in outcomes:
            self._account(outcome)
        self.last_work = time.monotonic()
        logger.debug(
            "worker: batch of {} in {:.0f} ms (waiting for decoding {:.0f} ms)",
            len(batch),
            (time.perf_counter() - started) * 1000,
            (decoded - started) * 1000,
        )

    def _account(self, outcome: Outcome) -> None:
        path = outcome.file.path
        if outcome.state in RETRY_STATES:
            self.arrivals.retry(path)
        else:
            self.arrivals.done(path)
        with self._counts_lock:
            self.decided += outcome.decision is not None
            self._counts[summary_label(outcome)] += 1

    def _sifter(self, journal: Journal) -> Sifter:
        assert self._cascade is not None
        router = Router(self.settings.output, journal, self.run, guard=self._files)
        return Sifter(self.settings, self._cascade, router, reported=self._reported)

    def _swap(self, journal: Journal) -> Sifter:
        with self._offer_lock:
            offer, self._offer = self._offer, None
        assert offer is not None
        old = self._cascade
        self.settings, self._cascade = offer.settings, offer.cascade
        logger.info(
            "worker: now serving {} (was {})",
            offer.cascade.predictor.describe(),
            "unloaded" if old is None else old.predictor.describe(),
        )
        del old
        _free_memory()
        return self._sifter(journal)

    def _reload(self, journal: Journal, paths: list[Path]) -> Sifter | None:
        """Load the models again after an idle unload; on failure leave ``paths`` to rescans."""
        now = time.monotonic()
        if now >= self._load_retry_at:
            try:
                self._cascade = load_cascade(self.settings)
                logger.info("worker: models loaded again: {}", self._cascade.predictor.describe())
                return self._sifter(journal)
            except (InputError, RuntimeProblem) as exc:
                logger.error("worker: cannot load the models: {}", exc)
                self._load_retry_at = now + LOAD_RETRY_SECONDS
        for path in paths:
            self.arrivals.done(path)
        return None

    def _idle(self) -> bool:
        limit = self.settings.inference.idle_unload_seconds
        return limit > 0 and time.monotonic() - self.last_work >= limit and self.inbox.empty()

    def _unload(self) -> None:
        logger.info(
            "worker: idle for {:.0f} s; models unloaded until the next file",
            self.settings.inference.idle_unload_seconds,
        )
        self._cascade = None
        _free_memory()


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
