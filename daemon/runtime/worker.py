"""The daemon's inference thread: settled paths in, decisions and file operations out.

One :class:`Worker` thread owns the models and the journal connection that
records decisions. It takes settled paths from a bounded inbox in micro-batches
(whatever is waiting, up to ``batch_size``: a lone file starts at once), has a
pool of decoder threads read and resize them, and while one batch runs through
the cascade the next one is already decoding. Decisions and file operations are
the :class:`~gensift.daemon.runtime.sifter.Sifter`'s, exactly as ``gensift sort``
makes them.

Between batches, and only there, it swaps in a cascade the service loaded in
the background (:meth:`Worker.offer`), drops its models after
``idle_unload_seconds`` without work, and sends the heartbeat. Stopping
finishes the batch in flight; files still in the inbox or in the batch that was
decoding are untouched, and the next start's scan finds them.

Out of GPU memory (the generator shares the GPU) is not a crash. A batch that
does not fit is run again in halves, after a short pause, down to one image;
if one image does not fit either, ``inference.oom_fallback`` decides: ``wait``
hands the files back (they come again once settled) and pauses the worker with
a growing backoff; ``cpu`` moves the models to the CPU and serves there, trying
the configured device again every :data:`FALLBACK_SECONDS`. Models that could
only be loaded on the CPU (:func:`load_models`) are moved to the device before
the next batch the same way. A batch is decided only after its forward pass
returned, so a retry never decides a file twice.
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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from loguru import logger

from gensift.daemon.config import Settings
from gensift.daemon.routing.journal import Journal
from gensift.daemon.routing.records import FileState
from gensift.daemon.routing.router import Outcome, Router, summary_label
from gensift.daemon.runtime.decode import Decoded, default_workers
from gensift.daemon.runtime.layout import class_folders
from gensift.daemon.runtime.paths import Reported
from gensift.daemon.runtime.sifter import (
    RULED,
    Cascade,
    Sifter,
    compiled_cascade,
    load_cascade,
)
from gensift.daemon.runtime.watcher import Arrivals
from gensift.models.device import resolve_device
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
RETRY_STATES = frozenset({FileState.UNSETTLED, FileState.STALE})
#: Out of memory: the pause before a batch is tried again in halves (seconds).
OOM_RETRY_SECONDS = 0.5
#: Out of memory with one image, ``oom_fallback = "wait"``: pauses for each failure in a row.
OOM_BACKOFF = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
#: After this long without running out of memory the batch size doubles back (seconds).
OOM_RECOVER_SECONDS = 60.0
#: ``oom_fallback = "cpu"``: how long the models serve on the CPU before the device is tried.
FALLBACK_SECONDS = 600.0
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Offer:
    """Settings and the cascade loaded for them in the background; no cascade: the worker
    takes the settings and loads the models with the next file (it was idle-unloaded)."""

    settings: Settings
    cascade: Cascade | None


def on_cpu(settings: Settings) -> Settings:
    """``settings`` with the models on the CPU."""
    inference = settings.inference.model_copy(update={"device": "cpu"})
    return settings.model_copy(update={"inference": inference})


def load_models(settings: Settings) -> Cascade:
    """The configured cascade; if the device is out of memory, the same loaded on the CPU
    (the worker moves it to the device before its next batch, or serves it there with
    ``oom_fallback = "cpu"``). Other errors are the caller's, as from ``load_cascade``.
    Compiled with ``inference.compile = "on"``."""
    try:
        cascade = load_cascade(settings)
    except torch.OutOfMemoryError as exc:
        _free_memory()
        logger.warning(
            "out of GPU memory loading the models ({}); loading them on the CPU for now",
            _short(exc),
        )
        cascade = load_cascade(on_cpu(settings))
    return compiled_cascade(settings, cascade, images=None)


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
        # out of memory: the batch size now, when it last ran out, the pause, the device
        self._limit = settings.inference.batch_size
        self._oom_at = 0.0
        self._oom_streak = 0
        self._paused_until = 0.0
        self._target = _configured_device(settings, cascade)
        self._place_at = 0.0
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

    def offer(self, settings: Settings, cascade: Cascade | None) -> None:
        """Serve ``settings`` with ``cascade`` from the next batch on (the current one
        finishes first); with no cascade, drop the models and load them with the next file."""
        with self._offer_lock:
            self._offer = Offer(settings, cascade)
        with contextlib.suppress(queue.Full):  # a worker waiting for work swaps at once
            self.inbox.put_nowait(_WAKE)

    @property
    def swapping(self) -> bool:
        """Whether an offer waits to be swapped in (files fed now would meet the old one)."""
        return self._offer is not None

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
        workers = default_workers(self._target)
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
                        sifter = self._process(journal, sifter, inflight.popleft())
                    elif not inflight and sifter is not None and self._idle():
                        sifter = None  # as in a swap: let go first, then free
                        self._unload()
            finally:
                for batch in inflight:  # decoded but not decided: the next start's scan
                    for path, future in batch:
                        future.cancel()
                        self.arrivals.done(path)

    def _take(self, *, wait: bool) -> list[Path]:
        """A micro-batch from the inbox: block for the first path only when ``wait``.

        Adaptive batching: a batch is whatever waits in the inbox when the worker gets to it,
        up to the batch size, and never waits for more. A file that finds the worker idle
        starts at once (a lone file on a GPU is decided in the time of one forward pass, not
        after a wait for company); under load files pile up while the model runs, so batches
        grow by themselves. Nothing while paused after running out of memory (the files wait
        in the inbox).
        """
        paused = self._paused_until - time.monotonic()
        if paused > 0:
            if wait:
                self._stop.wait(min(paused, self.tick))
            return []
        try:
            first = self.inbox.get(timeout=self.tick) if wait else self.inbox.get_nowait()
        except queue.Empty:
            return []
        if first is _WAKE:
            return []
        paths = [first]
        self._recover_batch_size()
        while len(paths) < self._limit:
            try:
                path = self.inbox.get_nowait()
            except queue.Empty:
                break
            if path is _WAKE:
                break
            paths.append(path)
        return paths

    def _process(
        self, journal: Journal, sifter: Sifter, batch: list[tuple[Path, Future[Decoded]]]
    ) -> Sifter:
        """Decide a decoded batch; the sifter to go on with (another after a move to the CPU)."""
        started = time.perf_counter()
        items = []
        for path, future in batch:
            item = future.result()
            if item.status in ("ok", *RULED) and journal.decided(item.file):
                self.arrivals.done(path)  # a rescan raced with the decision: nothing to do
            else:
                items.append(item)
        decoded = time.perf_counter()
        outcomes: list[Outcome] = []
        left: list[Decoded] = []
        try:
            outcomes += sifter.by_rule([item for item in items if item.status != "ok"])
            ready = [item for item in items if item.status == "ok"]
            sifter, left = self._infer(journal, sifter, ready, outcomes)
        except Exception:  # noqa: BLE001 - one bad batch must not stop the daemon
            logger.exception(
                "worker: a batch of {} file(s) failed ({}); the next rescan tries them again",
                len(items),
                ", ".join(str(i.file.path) for i in items[:5]),
            )
            answered = {outcome.file.path for outcome in outcomes}
            for item in items:
                if item.file.path not in answered:
                    self.arrivals.done(item.file.path)
        for outcome in outcomes:
            self._account(outcome)
        for item in left:  # out of memory: they come back once settled, after the pause
            self.arrivals.retry(item.file.path)
        self.last_work = time.monotonic()
        logger.debug(
            "worker: batch of {} in {:.0f} ms (waiting for decoding {:.0f} ms)",
            len(batch),
            (time.perf_counter() - started) * 1000,
            (decoded - started) * 1000,
        )
        return sifter

    def _infer(
        self, journal: Journal, sifter: Sifter, ready: list[Decoded], outcomes: list[Outcome]
    ) -> tuple[Sifter, list[Decoded]]:
        """Run ``ready`` through the cascade, adding to ``outcomes``, halving the batch while
        out of memory; the sifter to go on with and the files left for later (a pause)."""
        todo = list(ready)
        while todo:
            sifter = self._placed(journal, sifter)
            if self._paused_until > time.monotonic():
                return sifter, todo
            chunk = todo[: self._limit]
            try:
                outcomes += sifter.run_batch(chunk)  # decides only after the forward pass
                todo = todo[len(chunk) :]
                self._oom_streak = 0
                continue
            except torch.OutOfMemoryError as exc:
                note = _short(exc)  # not the error itself: its frames hold the batch's tensors
            sifter = self._out_of_memory(journal, sifter, len(chunk), note)
        return sifter, []

    def _out_of_memory(self, journal: Journal, sifter: Sifter, size: int, note: str) -> Sifter:
        """After a batch of ``size`` ran out of memory: a smaller batch, the CPU, or a pause."""
        _free_memory()
        now = self._oom_at = time.monotonic()
        device = self._serving_device()
        if size > 1:
            self._limit = max(1, size // 2)
            logger.warning(
                "worker: out of memory on {} with a batch of {} ({}); trying again in batches "
                "of {}",
                device,
                size,
                note,
                self._limit,
            )
            self._stop.wait(OOM_RETRY_SECONDS)
            self.heartbeat()
            return sifter
        fallback = self.settings.inference.oom_fallback
        if fallback == "cpu" and device.type != "cpu":
            self._place_at = now + FALLBACK_SECONDS
            logger.warning(
                "worker: out of memory on {} even with one image ({}); running on the CPU "
                '(inference.oom_fallback = "cpu"), trying {} again in {:.0f} s',
                device,
                note,
                device,
                FALLBACK_SECONDS,
            )
            return self._move(journal, CPU)
        self._pause(f"out of memory on {device} even with one image ({note})")
        return sifter

    def _pause(self, why: str) -> None:
        delay = OOM_BACKOFF[min(self._oom_streak, len(OOM_BACKOFF) - 1)]
        self._oom_streak += 1
        self._paused_until = time.monotonic() + delay
        level = "WARNING" if self._oom_streak == 1 else "INFO"
        logger.log(
            level,
            'worker: {}; files wait, trying again in {:.0f} s (inference.oom_fallback = "{}")',
            why,
            delay,
            self.settings.inference.oom_fallback,
        )

    def _placed(self, journal: Journal, sifter: Sifter) -> Sifter:
        """Move the models to the configured device when they are elsewhere (loaded on the CPU
        for lack of memory, or fallen back to it) and it is time to try; on failure serve on
        the CPU (``oom_fallback = "cpu"``) or pause."""
        device = self._serving_device()
        if device == self._target:
            return sifter
        now = time.monotonic()
        fallback = self.settings.inference.oom_fallback
        if now >= self._place_at:
            try:
                sifter = self._move(journal, self._target)
                logger.info("worker: the models run on {} again", self._target)
                return sifter
            except torch.OutOfMemoryError as exc:
                note = _short(exc)
            sifter = self._sifter(journal)  # _move put them back on the CPU
            why = f"out of memory moving the models to {self._target} ({note})"
            if fallback == "cpu":
                self._place_at = now + FALLBACK_SECONDS
                logger.warning(
                    "worker: {}; they stay on the CPU for {:.0f} s", why, FALLBACK_SECONDS
                )
                return sifter
            self._pause(why)
            self._place_at = self._paused_until
            return sifter
        if fallback != "cpu" and self._paused_until <= now:
            self._paused_until = self._place_at  # wait: no inference on the CPU meanwhile
        return sifter

    def _move(self, journal: Journal, device: torch.device) -> Sifter:
        """Move the models to ``device`` (may raise OutOfMemoryError); a sifter for them."""
        cascade = self._cascade
        assert cascade is not None
        self._cascade = None
        try:
            predictor = cascade.predictor.moved_to(device)
        except torch.OutOfMemoryError:
            self._cascade = Cascade(cascade.predictor.moved_to(CPU), cascade.policy)
            del cascade
            _free_memory()
            raise
        self._cascade = Cascade(predictor, cascade.policy)
        del cascade
        _free_memory()
        return self._sifter(journal)

    def _serving_device(self) -> torch.device:
        assert self._cascade is not None
        return self._cascade.predictor.device

    def _recover_batch_size(self) -> None:
        """Double the batch size back after a while without running out of memory."""
        configured = self.settings.inference.batch_size
        if self._limit < configured and time.monotonic() - self._oom_at >= OOM_RECOVER_SECONDS:
            self._limit = min(configured, self._limit * 2)
            self._oom_at = time.monotonic()
            logger.info("worker: batches of up to {} again", self._limit)

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
        router = Router(
            self.settings.output,
            journal,
            self.run,
            guard=self._files,
            folders=class_folders(self.settings),
        )
        sifter = Sifter(self.settings, self._cascade, router, reported=self._reported)
        # a file is corrupt only once it has settled by the watcher's look at it
        sifter.decoder = replace(sifter.decoder, observed=self.arrivals.observation)
        return sifter

    def _swap(self, journal: Journal) -> Sifter | None:
        with self._offer_lock:
            offer, self._offer = self._offer, None
        assert offer is not None
        old = self._cascade
        self._cascade = None
        self.settings = offer.settings
        self._limit = offer.settings.inference.batch_size
        if time.monotonic() - self._oom_at < OOM_RECOVER_SECONDS:
            self._limit = min(self._limit, max(1, self._limit // 2))
        if offer.cascade is None:
            logger.info("worker: new settings; the models load with the next file")
            del old
            _free_memory()
            return None
        self._cascade = offer.cascade
        self._target = _configured_device(offer.settings, offer.cascade)
        self._place_at = 0.0
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
                self._cascade = load_models(self.settings)
                self._target = _configured_device(self.settings, self._cascade)
                self._place_at = 0.0
                logger.info("worker: models loaded again: {}", self._cascade.predictor.describe())
                return self._sifter(journal)
            except (InputError, RuntimeProblem, OSError) as exc:
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
            "worker: idle for {:g} s; models unloaded until the next file",
            self.settings.inference.idle_unload_seconds,
        )
        self._cascade = None
        _free_memory()


def _configured_device(settings: Settings, cascade: Cascade) -> torch.device:
    """Where ``settings`` want the models (the cascade's device if that cannot be told)."""
    try:
        return resolve_device(settings.inference.device)
    except InputError:
        return cascade.predictor.device


def _short(exc: BaseException) -> str:
    """The first line of an error (CUDA's out-of-memory message runs to a paragraph)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
