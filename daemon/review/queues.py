"""The review page's queues, read from the journal: which files, in which order.

A file is where the last finished row that moved it put it (``Journal.placed``), so
the queues follow files through the daemon's moves, the user's actions on the page
and ``gensift undo``. Four queues:

* **review** – the uncertain bucket (``_review/``), smallest margin first: the files
  the model was closest to deciding either way, where a label teaches it most;
* **audit** – a random sample of the last :data:`AUDIT_DAYS` days of automatic moves
  into class folders, not yet audited; the answers measure the live precision;
* **rejected** – the quarantine (``_rejected/``), newest first, to rescue a wrongly
  culled image;
* **recent** – every file gensift or the page placed, newest first.

Reading the journal is cheap next to drawing a page; the list is re-read only when
the journal changed (its row count and largest id).
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from gensift.daemon.routing.journal import Entry, Journal

QueueName = Literal["review", "audit", "rejected", "recent"]
QUEUES: tuple[QueueName, ...] = ("review", "audit", "rejected", "recent")
#: automatic moves older than this are not offered for audit
AUDIT_DAYS = 30
PER_PAGE = 60


@dataclass(frozen=True)
class Page:
    queue: QueueName
    items: list[Entry]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))


def margin(entry: Entry) -> float:
    """How close the model came to another answer: top probability minus the runner-up.

    The feature stage's, where it ran; else the quality stage's; 1 where neither left
    probabilities (nothing to learn from the order).
    """
    for stage in ("feature", "quality"):
        probs = sorted(entry.probabilities.get(stage, {}).values(), reverse=True)
        if len(probs) >= 2:
            return probs[0] - probs[1]
        if probs:
            return probs[0]
    return 1.0


class Queues:
    """The queues of one journal, for one page server (thread-safe)."""

    def __init__(self, open_journal: Callable[[], Journal], seed: str) -> None:
        self._open = open_journal
        self._seed = seed
        self._lock = threading.Lock()
        self._version: tuple[int, int] | None = None
        self._placed: list[Entry] = []
        self._audited: frozenset[str] = frozenset()
        self._sorted: dict[QueueName, Sequence[Entry]] = {}  # per journal version

    def refresh(self) -> None:
        with self._lock, self._open() as journal:
            version = journal.version()
            if version == self._version:
                return
            self._placed = journal.placed()
            self._audited = frozenset(journal.labelled_hashes(source="audit"))
            self._sorted = {}
            self._version = version

    def entries(self, queue: QueueName) -> Sequence[Entry]:
        self.refresh()
        with self._lock:
            cached = self._sorted.get(queue)
            if cached is None:
                cached = self._sorted[queue] = self._entries(queue)
            return cached

    def _entries(self, queue: QueueName) -> Sequence[Entry]:
        placed, audited = self._placed, self._audited
        if queue == "review":
            return sorted((e for e in placed if e.action == "review"), key=margin)
        if queue == "rejected":
            return [e for e in placed if e.action == "quarantine"]
        if queue == "audit":
            since = (datetime.now(UTC) - timedelta(days=AUDIT_DAYS)).isoformat()
            recent = [
                e
                for e in placed
                if e.action == "move" and e.actor == "gensift" and e.time >= since
                if e.sha256 not in audited
            ]
            return sorted(recent, key=self._shuffled)
        return list(placed)

    def page(self, queue: QueueName, page: int = 1, per_page: int = PER_PAGE) -> Page:
        entries = self.entries(queue)
        pages = max(1, math.ceil(len(entries) / per_page))
        page = min(max(1, page), pages)
        start = (page - 1) * per_page
        return Page(queue, list(entries[start : start + per_page]), len(entries), page, per_page)

    def counts(self) -> dict[QueueName, int]:
        return {q: len(self.entries(q)) for q in QUEUES}

    def _shuffled(self, entry: Entry) -> str:
        """A random order, the same for the life of the server (paging stays stable)."""
        return hashlib.sha256(f"{self._seed}:{entry.id}".encode()).hexdigest()
