"""What a key on the review page does: a file operation and a label, or the undo of both.

Every action goes through the daemon's own :class:`~gensift.daemon.routing.router.Router`
and journal, in a run of its own (``review-…``: the actor is a person), so ``gensift
history`` lists it, ``gensift undo`` reverses it, nothing is overwritten and a crash in
the middle is repaired at the next start like any other move. Every action is also a
label event keyed by the file's content hash (``Journal.add_label``), which ``gensift
labels`` lists and a retrain learns from.

The verbs, for a file the journal placed (its :class:`~gensift.daemon.routing.journal.Entry`):

* ``class`` C – it belongs to feature class C: moved to ``<root>/C/``;
* ``reject`` – a broken generation: quarantined to ``_rejected/``;
* ``keep`` – not broken (quality): a rescued reject goes to ``_review/`` for a class;
* ``accept`` – the model was right: an uncertain file goes to the class the model
  favoured; a decided one stays and its decision is confirmed;
* ``undo`` of an action – the file back where it was, the label withdrawn.

The page never deletes a file.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gensift.daemon.config import OutputSettings
from gensift.daemon.review.queues import QueueName
from gensift.daemon.routing.fileops import same_content, shown
from gensift.daemon.routing.journal import Entry, Journal, Label
from gensift.daemon.routing.lock import operation_lock
from gensift.daemon.routing.records import REJECTED_DIR, REVIEW_DIR, Decision, FileInfo, FileState
from gensift.daemon.routing.recovery import restore
from gensift.daemon.routing.router import Router
from gensift.models.errors import InputError

Verb = Literal["class", "reject", "keep", "accept"]
VERBS: tuple[Verb, ...] = ("class", "reject", "keep", "accept")
#: the label's source, by the queue the action was taken in
SOURCES: Mapping[QueueName, str] = {
    "review": "review",
    "audit": "audit",
    "rejected": "rescue",
    "recent": "review",
}
QUALITY_KEEP, QUALITY_REJECT = "keep", "reject"


class ActionError(InputError):
    """An action the page cannot take (the file changed or went, an unknown class, ...)."""


@dataclass(frozen=True)
class Done:
    """What one action did: the label it recorded, and the move, if it made one."""

    label: Label
    entry: Entry | None  # the journal row of the move; None when the file stayed
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label.to_json(),
            "entry": None if self.entry is None else self.entry.id,
            "folder": None if self.entry is None else self.entry.folder,
            "destination": None
            if self.entry is None or self.entry.destination is None
            else shown(self.entry.destination),
            "note": self.note,
        }


class Reviewer:
    """Carries out the page's actions, one at a time, in one ``review-…`` run."""

    def __init__(
        self,
        output: OutputSettings,
        open_journal: Callable[[], Journal],
        run: str,
        classes: Callable[[], Sequence[str]],
    ) -> None:
        self.output = output
        self.run = run
        self._open = open_journal
        self._classes = classes
        self._lock = threading.Lock()

    def act(self, entry_id: int, verb: Verb, queue: QueueName, cls: str | None = None) -> Done:
        with self._lock, self._open() as journal, operation_lock(journal.path):
            entry = journal.get(entry_id)
            self._check_current(journal, entry)
            source = SOURCES[queue]
            stage, label, folder = self._target(entry, verb, cls)
            moved = None
            note = ""
            if folder is not None and folder != entry.folder:
                moved, note = self._move(journal, entry, folder, label)
            event = journal.add_label(
                entry.sha256,
                stage,
                label,
                source,
                entry=moved.id if moved else entry.id,
                path=(moved or entry).destination,
            )
            return Done(event, moved, note)

    def undo(self, label_id: int) -> Done:
        """Take back one action of the page: its move (if any) reversed, its label withdrawn."""
        with self._lock, self._open() as journal, operation_lock(journal.path):
            event = journal.label(label_id)
            if event.label is None:
                raise ActionError("that action was already undone")
            moved = journal.get(event.entry) if event.entry is not None else None
            restored = None
            note = ""
            if moved is not None and moved.run == self.run and moved.undoes is None:
                if moved.state != FileState.DONE:
                    raise ActionError(
                        f"{shown(moved.destination or moved.source)} has moved on since "
                        f"(journal row {moved.id} is {moved.state}); use gensift undo"
                    )
                outcome = restore(journal, moved, self.run)
                if outcome.state != FileState.DONE:
                    raise ActionError(f"could not put the file back: {outcome.note}")
                restored = journal.last_restore(moved.id)
                note = outcome.note
            withdrawn = journal.add_label(
                event.sha256,
                event.stage,
                None,
                "undo",
                entry=event.entry,
                path=None if restored is None else restored.destination,
                withdraws=event.id,
            )
            return Done(withdrawn, restored, note)

    # -- helpers -----------------------------------------------------------------------

    def _check_current(self, journal: Journal, entry: Entry) -> None:
        if entry.destination is None or entry.state != FileState.DONE:
            raise ActionError(f"journal row {entry.id} did not place a file")
        if not journal.is_placed(entry):
            raise ActionError(
                f"{shown(entry.destination)} has moved since the page was drawn; reload"
            )
        if not same_content(entry.destination, entry.size, entry.sha256):
            raise ActionError(
                f"{shown(entry.destination)} is gone or changed since gensift placed it; "
                "nothing was done"
            )

    def _target(self, entry: Entry, verb: Verb, cls: str | None) -> tuple[str, str, str | None]:
        """(stage, label, folder the file should be in; None: leave it where it is)."""
        if verb == "class":
            classes = self._classes()
            if cls is None or cls not in classes:
                raise ActionError(f"unknown class {cls!r}; the classes are {', '.join(classes)}")
            return "feature", cls, cls
        if verb == "reject":
            return "quality", QUALITY_REJECT, REJECTED_DIR
        if verb == "keep":
            return "quality", QUALITY_KEEP, REVIEW_DIR if entry.action == "quarantine" else None
        # accept: the model's own answer
        if entry.action == "move" and entry.label:
            return "feature", entry.label, None
        if entry.action == "quarantine":
            return "quality", QUALITY_REJECT, None
        favoured = _favoured(entry)
        if favoured is None or favoured not in self._classes():
            raise ActionError(
                "the model left no class for this file to accept; press a class number"
            )
        return "feature", favoured, favoured

    def _move(self, journal: Journal, entry: Entry, folder: str, label: str) -> tuple[Entry, str]:
        assert entry.destination is not None
        st = entry.destination.stat()
        file = FileInfo(entry.destination, st.st_size, st.st_mtime_ns, entry.sha256)
        action = {REJECTED_DIR: "quarantine", REVIEW_DIR: "review"}.get(folder, "move")
        note = "by hand on the review page"
        decision = Decision(action, "human", label, None, entry.probabilities, note)  # type: ignore[arg-type]
        router = Router(self.output, journal, self.run)
        outcome = router.apply(file, decision, entry.checkpoints)
        if outcome.state != FileState.DONE:
            raise ActionError(f"{shown(entry.destination)}: not moved ({outcome.note})")
        moved = journal.last_from(entry.destination)
        assert moved is not None
        return moved, outcome.note


def _favoured(entry: Entry) -> str | None:
    """The class the feature stage gave the highest probability, if it ran."""
    probs = entry.probabilities.get("feature", {})
    return max(probs, key=probs.__getitem__) if probs else None
