"""Paths -> decisions -> file operations: the one pipeline ``sort`` and ``watch`` share.

:func:`load_cascade` turns the config into a :class:`~gensift.models.predictor.Predictor`
and a :class:`~gensift.daemon.runtime.decide.Policy`; :func:`compiled_cascade` compiles
its models where ``inference.compile`` says it pays. :class:`Sifter` decodes files
in a bounded thread pool, culls corrupt and blank files by rule, batches the
rest through the cascade, decides, and hands the decisions of a batch to the router
together (:meth:`~gensift.daemon.routing.router.Router.apply_many`: two journal
commits per batch, not two per file).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from loguru import logger

from gensift.daemon.config import Settings
from gensift.daemon.routing.fileops import shown
from gensift.daemon.routing.records import FileState
from gensift.daemon.routing.router import Job, Outcome, Router
from gensift.daemon.runtime.decide import (
    Policy,
    check_reject_classes,
    decide,
    passes_quality,
    rule_decision,
    stage_threshold,
)
from gensift.daemon.runtime.decode import Decoded, DecodePool, Decoder, default_workers, formats_for
from gensift.daemon.runtime.paths import Reported
from gensift.models.errors import InputError
from gensift.models.predictor import Predictor
from gensift.models.presets import STAGES, Stage

#: What a file is when it is decided by rule, without a model.
RULED = ("corrupt", "blank")


@dataclass(frozen=True)
class Cascade:
    predictor: Predictor
    policy: Policy


def load_cascade(settings: Settings) -> Cascade:
    """Load the configured checkpoints and the rules that act on their probabilities."""
    checkpoints: dict[Stage, Path | None] = {}
    for stage in STAGES:
        path = getattr(settings.stages, stage).checkpoint
        if path is not None and not path.is_file():
            raise InputError(
                f"stages.{stage}.checkpoint: {path} does not exist. Train it with "
                f"'gensift train {stage} --data DIR', or set the key to \"\" to turn the "
                f"{stage} stage off"
            )
        checkpoints[stage] = path
    predictor = Predictor.load(
        checkpoints, device=settings.inference.device, precision=settings.inference.precision
    )
    quality = predictor.stages.get("quality")
    feature = predictor.stages.get("feature")
    reject_classes = settings.stages.quality.reject_classes
    if quality is not None:
        check_reject_classes(reject_classes, quality.meta, str(quality.path))
    policy = Policy(
        reject_action=settings.output.reject_action,
        uncertain_action=settings.output.uncertain_action,
        reject_classes=frozenset(reject_classes),
        quality_threshold=None
        if quality is None
        else stage_threshold("quality", settings.stages.quality.threshold, quality.meta),
        feature_threshold=None
        if feature is None
        else stage_threshold("feature", settings.stages.feature.threshold, feature.meta),
    )
    return Cascade(predictor, policy)


#: ``inference.compile = "auto"``: a sort of at least this many images on the CPU is compiled.
#: Measured on two cores with two fine-tuned ResNet-50 stages (fp32): compiling both took
#: 24-32 s on every run (inductor cannot cache a graph whose weights oneDNN prepacked), and
#: the compiled sort ran 8.5 images/s against 6.5 uncompiled, saving 0.036 s an image: the
#: compile pays for itself from about 1,000 images, so auto waits for twice that.
AUTO_COMPILE_IMAGES = 2000


def compiled_cascade(settings: Settings, cascade: Cascade, *, images: int | None) -> Cascade:
    """``cascade``, compiled if ``inference.compile`` asks for it (checked against the eager
    models; they stay when the check or the compile fails).

    ``on`` always compiles; ``auto`` only a sort (``images``, the files it will decide) of
    at least :data:`AUTO_COMPILE_IMAGES` on the CPU. ``watch`` passes ``images=None``: it
    compiles only with ``on``, for lone files and for full batches.
    """
    mode = settings.inference.compile
    predictor = cascade.predictor
    long_sort = images is not None and images >= AUTO_COMPILE_IMAGES
    if mode == "off" or (mode == "auto" and not (long_sort and predictor.device.type == "cpu")):
        return cascade
    batch = settings.inference.batch_size
    sizes = (batch,) if images is not None else (1, batch)
    logger.info("compiling the models (inference.compile = {}); this takes a while", mode)
    return Cascade(predictor.compiled(sizes), cascade.policy)


def upload(images: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """uint8 images -> one batch on ``device``, still uint8: to a GPU a quarter of the bytes
    of float32, from pinned memory without a staging copy; normalising (cast, scale, mean and
    std) then runs there, not on the CPU cores that decode."""
    batch = torch.stack(list(images))
    if device.type != "cuda":
        return batch
    return batch.pin_memory().to(device, non_blocking=True)


class Sifter:
    """Runs files through decode -> cascade -> decision -> router."""

    def __init__(
        self,
        settings: Settings,
        cascade: Cascade,
        router: Router,
        *,
        workers: int | None = None,
        reported: Reported | None = None,
    ) -> None:
        self.settings = settings
        self.cascade = cascade
        self.router = router
        self.reported = reported or Reported()
        predictor = cascade.predictor
        self.decoder = Decoder(
            presets=predictor.presets,
            formats=formats_for(settings.watch.patterns),
            settle_seconds=settings.watch.settle_seconds,
        )
        self.workers = workers or default_workers(predictor.device)
        self._passes = partial(passes_quality, cascade.policy)

    def sift(self, paths: Iterable[Path]) -> Iterator[Outcome]:
        """Decide and route every path, yielding one outcome per path.

        Files the models decide go to the router a batch at a time; so do the files decided
        by rule (corrupt, blank), in batches of their own. Everything overlaps: decoder
        threads work ahead (a window of batches), the model runs batch n in this thread
        while one routing thread journals and moves batch n-1, so neither the disk syncs
        nor the moves hold up the model. Memory stays bounded: the decode window, the
        batch in the model and the one being routed. The router and its journal are used
        by that one thread only, and outcomes come out in the order the batches were made.
        """
        batch_size = self.settings.inference.batch_size
        pool = DecodePool(self.decoder, self.workers, window=max(4 * batch_size, 2 * self.workers))
        batch: list[Decoded] = []
        ruled: list[Decoded] = []
        with ThreadPoolExecutor(1, thread_name_prefix="gensift-route") as routing:
            pending: deque[Future[list[Outcome]]] = deque()

            def hand_over(route: Callable[[], list[Outcome]]) -> Iterator[Outcome]:
                pending.append(routing.submit(route))
                while len(pending) > 1:  # the batch before this one: done by now, mostly
                    yield from pending.popleft().result()

            for item in pool.map(paths):
                if item.status == "ok":
                    batch.append(item)
                    if len(batch) >= batch_size:
                        yield from hand_over(partial(self._route, self.decide(batch)))
                        batch = []
                else:
                    ruled.append(item)
                    if len(ruled) >= batch_size:
                        yield from hand_over(partial(self.by_rule, ruled))
                        ruled = []
            if ruled:
                yield from hand_over(partial(self.by_rule, ruled))
            if batch:
                yield from hand_over(partial(self._route, self.decide(batch)))
            while pending:
                yield from pending.popleft().result()

    def by_rule(self, items: Sequence[Decoded]) -> list[Outcome]:
        """Corrupt and blank files are decided without a model (and routed as one batch); the
        rest wait for later. The outcomes in the order of ``items``."""
        policy = self.cascade.policy
        jobs = [
            Job(item.file, rule_decision(policy, item.status, item.note), {})  # type: ignore[arg-type]
            for item in items
            if item.status in RULED
        ]
        routed = iter(self._route(jobs))
        return [next(routed) if item.status in RULED else self._later(item) for item in items]

    def _later(self, item: Decoded) -> Outcome:
        """A file that could not be decided now (unsettled, unreadable, gone)."""
        path = item.file.path
        level = (
            self.reported.level(path, item.note) if item.status == FileState.UNREADABLE else "INFO"
        )
        logger.log(level, "{}: {}; left for later", shown(path), item.note)
        return Outcome(item.file, None, None, item.status, item.note)

    def run_batch(self, batch: Sequence[Decoded]) -> list[Outcome]:
        """One forward pass of the cascade over decoded images, then their decisions, routed
        as one batch."""
        return self._route(self.decide(batch))

    def decide(self, batch: Sequence[Decoded]) -> list[Job]:
        """One forward pass of the cascade over decoded images, and their decisions."""
        predictor = self.cascade.predictor
        inputs = {
            key: preset.normalize(upload([item.inputs[key] for item in batch], predictor.device))
            for key, preset in predictor.presets.items()
        }
        results = predictor.predict(inputs, self._passes)
        jobs = []
        for item, probs in zip(batch, results, strict=True):
            decision = decide(self.cascade.policy, probs.get("quality"), probs.get("feature"))
            ids = {stage: predictor.stages[stage].meta.id for stage in probs}
            jobs.append(Job(item.file, decision, ids))
        return jobs

    def _route(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Hand decisions to the router as one batch; log each outcome."""
        if not jobs:
            return []
        outcomes = self.router.apply_many(jobs)
        for outcome in outcomes:
            self._report(outcome)
        return outcomes

    def _report(self, outcome: Outcome) -> None:
        path, folder = outcome.file.path, outcome.destination
        if outcome.state == FileState.FAILED:
            logger.log(self.reported.level(path, outcome.note), "{}", outcome.describe())
        elif outcome.state == FileState.REFUSED:  # one error for the folder, not one per file
            assert folder is not None
            logger.log(self.reported.level(folder, outcome.note), "{}", outcome.note)
            level = self.reported.level(path, outcome.note, first="INFO")
            logger.log(level, "{}: {} refused; left in place", shown(path), outcome.action)
        else:
            self.reported.forget(path)
            if folder is not None:
                self.reported.forget(folder.parent)  # the folder works: news if it breaks
            logger.info("{}", outcome.describe())
