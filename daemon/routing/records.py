"""The plain values that cross from the runtime to the file side, and where a file stands.

A :class:`FileInfo` is a file as it was read (what the journal records about its
content), a :class:`Decision` what to do with it and why, and a :class:`FileState`
where it stands: the state of its journal row, or what a run did with it when no row
was written. No torch here: the watcher, the journal and ``history`` use these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Literal

Reason = Literal["class", "reject", "uncertain", "corrupt", "blank", "keep", "human"]
Action = Literal["move", "quarantine", "trash", "delete", "review", "leave"]

#: Folders under the output root that gensift owns (class names cannot start with "_").
REJECTED_DIR = "_rejected"
REVIEW_DIR = "_review"


class FileState(StrEnum):
    """Where a file stands. Members are their own strings, as the journal stores them.

    A journal row starts ``INTENT`` (committed before anything on disk changes) and ends
    ``DONE``, ``SKIPPED`` (``on_conflict = "skip"`` found the name taken), ``FAILED`` (the
    operation raised; the file was not touched), ``ABANDONED`` (interrupted before anything
    moved, or repaired back; the file will be decided again) or ``UNDONE`` (``gensift
    undo`` moved it back). The other states are outcomes that write no row, so the file is
    seen again by the next run or rescan: ``PLANNED`` (a dry run), ``STALE`` (changed since
    it was read), ``UNSETTLED`` (still being written), ``UNREADABLE``, ``GONE`` and
    ``REFUSED`` (its class folder is a link gensift will not follow).
    """

    INTENT = "intent"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"
    ABANDONED = "abandoned"
    UNDONE = "undone"
    PLANNED = "planned"
    STALE = "stale"
    UNSETTLED = "unsettled"
    UNREADABLE = "unreadable"
    GONE = "gone"
    REFUSED = "refused"


#: States in which a file counts as decided and is not processed again.
DECIDED_STATES = (FileState.DONE, FileState.SKIPPED, FileState.UNDONE)


@dataclass(frozen=True)
class FileInfo:
    """A file as it was read: what the journal records about its content."""

    path: Path
    size: int = 0
    mtime_ns: int = 0
    sha256: str = ""


@dataclass(frozen=True)
class Decision:
    """What to do with one file and why; ``label`` is the class (or reject class) that decided."""

    action: Action
    reason: Reason
    label: str | None = None
    probability: float | None = None
    probabilities: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    note: str = ""

    @property
    def folder(self) -> str | None:
        """The folder under the output root this decision sends the file to, if any."""
        if self.action == "move":
            return self.label
        if self.action == "quarantine":
            return REJECTED_DIR
        if self.action == "review":
            return REVIEW_DIR
        return None
