"""Hot reload: the models loaded again, off the service thread, when they or the config change.

The service polls a :class:`Reloader` every few seconds. A checkpoint file that changed
(and has been quiet for a moment: a copy may be in progress), or a SIGHUP's config, is
loaded and validated in a background thread while the worker keeps serving the old
models; the service then applies the new settings and offers the new cascade to the
worker together. A refused load keeps what runs and is tried again when a checkpoint
changes, at the next SIGHUP, and after a backoff when memory or I/O was the cause.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch
from loguru import logger

from gensift.daemon.config import Settings
from gensift.daemon.runtime.sifter import Cascade, load_cascade
from gensift.daemon.runtime.worker import Worker, load_models, on_cpu
from gensift.models.errors import InputError, RuntimeProblem
from gensift.models.presets import STAGES

#: Seconds between checks of the checkpoint files, and how long one must be quiet.
CHECKPOINT_POLL_SECONDS = 2.0
CHECKPOINT_SETTLE_SECONDS = 1.0
#: A load refused for want of memory or an I/O error is tried again after these pauses.
RELOAD_BACKOFF = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0)


@dataclass(frozen=True)
class Loaded:
    """What a background load produced for the service to apply: the settings and their
    cascade (None: checked on the CPU only, while the worker is idle-unloaded)."""

    settings: Settings
    cascade: Cascade | None


class Reloader:
    """Loads the models again, in a background thread, when they or the config change.

    ``settings`` is what runs; ``wanted`` what the config asks for (they differ while a
    SIGHUP's config waits for its checkpoints to load). A checkpoint of ``wanted`` that
    changed must be quiet for a moment (a copy in progress), then it is loaded and
    validated while the worker keeps serving; :meth:`poll` hands a good load to the
    service, which applies its settings and offers its cascade to the worker together.
    While the worker is idle-unloaded a changed checkpoint is checked on the CPU and let
    go, so a broken one is reported at once, not when the next file needs it.

    A refused load is tried again when a checkpoint changes (size, mtime, inode or
    ctime: a copy that keeps the size and mtime still changes the ctime), at the next
    SIGHUP, and, when it failed for want of memory or an I/O error, after a backoff.
    """

    def __init__(self, settings: Settings, worker: Worker) -> None:
        self.settings = settings
        self.wanted = settings
        self.worker = worker
        self._seen = _signature(settings)
        self._candidate = self._seen
        self._candidate_at = 0.0
        self._request: Settings | None = None
        self._thread: threading.Thread | None = None
        self._result: Loaded | BaseException | None = None
        self._retry_at: float | None = None
        self._failures = 0

    def poll(self) -> Loaded | None:
        """Start a load if one is due; a load that succeeded since the last call, if any."""
        if self._thread is not None and self._thread.is_alive():
            return None
        now = time.monotonic()
        loaded = self._take_result(now)
        signature = _signature(self.wanted)
        if self._request is None and signature != self._seen:
            if signature != self._candidate:
                self._candidate, self._candidate_at = signature, now
                return loaded
            if now - self._candidate_at < CHECKPOINT_SETTLE_SECONDS:
                return loaded
            logger.info("reload: a checkpoint changed; loading it in the background")
            self._request = self.wanted
        if self._request is None and self._retry_at is not None and now >= self._retry_at:
            logger.info("reload: trying the refused load again")
            self._request = self.wanted
        if self._request is not None:
            settings, self._request = self._request, None
            self._seen = self._candidate = _signature(settings)
            self._retry_at = None
            check_only = settings == self.settings and not self.worker.loaded
            self._thread = threading.Thread(
                target=self._load, args=(settings, check_only), name="gensift-reload", daemon=True
            )
            self._thread.start()
        return loaded

    def request(self, settings: Settings) -> None:
        """Load the models for ``settings`` (SIGHUP) at the next :meth:`poll`."""
        self.wanted = settings
        self._request = settings

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _take_result(self, now: float) -> Loaded | None:
        result, self._result = self._result, None
        if isinstance(result, BaseException):
            if isinstance(result, OSError | torch.OutOfMemoryError):  # may pass by itself
                delay = RELOAD_BACKOFF[min(self._failures, len(RELOAD_BACKOFF) - 1)]
                self._failures += 1
                self._retry_at = now + delay
                logger.info("reload: trying again in {:.0f} s", delay)
            return None
        if result is not None:
            self._failures = 0
        return result

    def _load(self, settings: Settings, check_only: bool) -> None:
        try:
            if check_only:
                cascade = load_cascade(on_cpu(settings))
                logger.info(
                    "reload: checked {}: it loads; the models load with the next file "
                    "(unloaded while idle)",
                    _checkpoints(cascade),
                )
                del cascade
                self._result = Loaded(settings, None)
                return
            cascade = load_models(settings)
        except (InputError, RuntimeProblem, OSError, torch.OutOfMemoryError) as exc:
            logger.error("reload refused: {}. {}", exc, self._keeping(settings))
            self._result = exc
            return
        except Exception as exc:  # noqa: BLE001 - a bug in loading must not stop the daemon
            logger.exception("reload refused by an unexpected error. {}", self._keeping(settings))
            self._result = exc
            return
        logger.info("reload: loaded {}; swapping it in", cascade.predictor.describe())
        self._result = Loaded(settings, cascade)

    def _keeping(self, settings: Settings) -> str:
        """What goes on after a refused load of ``settings``."""
        current = self.worker.cascade
        if current is None:
            serving = "the models are unloaded (idle): files wait until they load"
        else:
            serving = f"still serving {current.predictor.describe()}"
        if settings != self.settings:
            return f"Keeping the running configuration; {serving}"
        return serving[0].upper() + serving[1:]


def _checkpoints(cascade: Cascade) -> str:
    stages = cascade.predictor.stages.values()
    return "; ".join(f"{s.stage} {s.meta.id} ({s.path})" for s in stages)


def _signature(settings: Settings) -> tuple[tuple[int, int, int, int] | None, ...]:
    """What identifies the checkpoint files as they are now (None for a missing one)."""
    result = []
    for stage in STAGES:
        path = getattr(settings.stages, stage).checkpoint
        try:
            st = path.stat() if path is not None else None
        except OSError:
            st = None
        signature = None if st is None else (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
        result.append(signature)
    return tuple(result)
