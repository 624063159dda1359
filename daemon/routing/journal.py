"""The journal: one SQLite row per decision, written before and after the file moves.

A row starts in state ``intent`` (committed before anything on disk changes)
and ends ``done``, ``skipped`` (``on_conflict = "skip"`` found the name taken),
``failed`` (the operation raised; the file was not touched), ``abandoned``
(interrupted before anything moved, or repaired back; the file will be decided
again) or ``undone`` (``gensift undo`` moved it back). ``gensift undo`` writes
its own ``restore`` rows. :func:`gensift.daemon.routing.recovery.repair` settles the
``intent`` rows a crash left behind.

WAL mode with ``synchronous = FULL``: a commit is on disk before the file
operation it announces starts, even across a power cut; readers (``history``)
never block the daemon. A commit is a disk sync, so the router writes a batch's
rows in two commits (:meth:`Journal.transaction`), not two per file: every intent
of the batch before its first file operation, every completion after its last.

Paths are stored losslessly: as text when they are valid UTF-8 (every path of a
version 1 journal), else as a BLOB of the name's bytes (``os.fsencode``: a name
from an old archive on Linux, say ``bad\\xff0.png``). One path always has the
same form, so equality lookups find it. Schema 2 only adds that (and an index
on ``destination``); gensift before it could not read a BLOB path, so it
refuses a version 2 journal instead of crashing on one.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gensift.daemon.routing.fileops import shown
from gensift.daemon.routing.records import (
    DECIDED_STATES,
    REJECTED_DIR,
    REVIEW_DIR,
    Decision,
    FileInfo,
    FileState,
)
from gensift.models.errors import RuntimeProblem

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    id            INTEGER PRIMARY KEY,
    run           TEXT NOT NULL,
    time          TEXT NOT NULL,
    source        TEXT NOT NULL,
    destination   TEXT,
    action        TEXT NOT NULL,
    reason        TEXT NOT NULL,
    label         TEXT,
    probability   REAL,
    probabilities TEXT NOT NULL,
    checkpoints   TEXT NOT NULL,
    size          INTEGER NOT NULL,
    mtime_ns      INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    state         TEXT NOT NULL,
    note          TEXT NOT NULL DEFAULT '',
    undoes        INTEGER REFERENCES decisions(id)
);
CREATE INDEX IF NOT EXISTS decisions_source ON decisions(source);
CREATE INDEX IF NOT EXISTS decisions_state ON decisions(state);
CREATE INDEX IF NOT EXISTS decisions_destination ON decisions(destination);
CREATE TABLE IF NOT EXISTS labels (
    id        INTEGER PRIMARY KEY,
    time      TEXT NOT NULL,
    sha256    TEXT NOT NULL,
    stage     TEXT NOT NULL,
    label     TEXT,
    source    TEXT NOT NULL,
    entry     INTEGER REFERENCES decisions(id),
    path      TEXT,
    withdraws INTEGER REFERENCES labels(id)
);
CREATE INDEX IF NOT EXISTS labels_sha256 ON labels(sha256);
"""
#: Actions that put a file somewhere under the output root, which undo can reverse.
MOVING_ACTIONS = ("move", "quarantine", "review")


#: the run id of every ``gensift watch`` decision
WATCH_RUN = "watch"
#: the prefix of the run ids of actions a person took on the review page
REVIEW_RUN = "review"


def new_run_id(kind: str) -> str:
    """A readable id for one invocation; journal rows carry it so undo can reverse one run."""
    return f"{kind}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


class JournalError(RuntimeProblem):
    """The journal cannot be opened or is not a gensift journal."""


@dataclass(frozen=True)
class Entry:
    """One journal row."""

    id: int
    run: str
    time: str
    source: Path
    destination: Path | None
    action: str
    reason: str
    label: str | None
    probability: float | None
    probabilities: dict[str, dict[str, float]]
    checkpoints: dict[str, str]
    size: int
    mtime_ns: int
    sha256: str
    state: FileState
    note: str
    undoes: int | None

    @property
    def folder(self) -> str | None:
        """The folder under the output root this row put the file in (a class, ``_review``,
        ``_rejected``), if it moved one there."""
        if self.action == "quarantine":
            return REJECTED_DIR
        if self.action == "review":
            return REVIEW_DIR
        return self.label if self.action == "move" else None

    @property
    def actor(self) -> str:
        """``human`` for an action taken on the review page, else ``gensift``."""
        return "human" if self.run.startswith(f"{REVIEW_RUN}-") else "gensift"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time,
            "source": shown(self.source),
            "destination": None if self.destination is None else shown(self.destination),
            "action": self.action,
            "reason": self.reason,
            "class": self.label,
            "probability": self.probability,
            "probabilities": self.probabilities,
            "checkpoints": self.checkpoints,
            "size": self.size,
            "sha256": self.sha256,
            "state": self.state,
            "note": self.note,
            "run": self.run,
            "actor": self.actor,
            "undoes": self.undoes,
        }


@dataclass(frozen=True)
class Label:
    """One label event: a person said what a file (by content hash) is, or withdrew that.

    ``label`` is a class of ``stage`` (``keep`` / ``reject`` for quality), or None for
    a withdrawal (``withdraws`` names the event it takes back). ``source``: review,
    audit, rescue or undo. ``entry`` is the journal row of the file operation the
    action made (or of the file it was about), ``path`` where the file was then.
    """

    id: int
    time: str
    sha256: str
    stage: str
    label: str | None
    source: str
    entry: int | None
    path: Path | None
    withdraws: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time,
            "sha256": self.sha256,
            "stage": self.stage,
            "label": self.label,
            "source": self.source,
            "entry": self.entry,
            "path": None if self.path is None else shown(self.path),
            "withdraws": self.withdraws,
        }


def in_force(events: Iterable[Label]) -> list[Label]:
    """The label events that still say something, oldest first: neither a withdrawal nor
    withdrawn by a later event."""
    events = list(events)
    withdrawn = {e.withdraws for e in events if e.withdraws is not None}
    return [e for e in events if e.label is not None and e.id not in withdrawn]


def _label(row: sqlite3.Row) -> Label:
    return Label(
        id=row["id"],
        time=row["time"],
        sha256=row["sha256"],
        stage=row["stage"],
        label=row["label"],
        source=row["source"],
        entry=row["entry"],
        path=None if row["path"] is None else _path(row["path"]),
        withdraws=row["withdraws"],
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def path_key(path: Path) -> str | bytes:
    """How the journal stores ``path``: text if it is valid UTF-8, else its bytes."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(text)
    return text


def _text(note: str) -> str:
    """``note`` as SQLite can store it: a path that is not UTF-8 inside it is escaped."""
    return note.encode("utf-8", "backslashreplace").decode("utf-8")


def _path(value: str | bytes) -> Path:
    return Path(os.fsdecode(value))


def _entry(row: sqlite3.Row) -> Entry:
    return Entry(
        id=row["id"],
        run=row["run"],
        time=row["time"],
        source=_path(row["source"]),
        destination=None if row["destination"] is None else _path(row["destination"]),
        action=row["action"],
        reason=row["reason"],
        label=row["label"],
        probability=row["probability"],
        probabilities=json.loads(row["probabilities"]),
        checkpoints=json.loads(row["checkpoints"]),
        size=row["size"],
        mtime_ns=row["mtime_ns"],
        sha256=row["sha256"],
        state=FileState(row["state"]),
        note=row["note"],
        undoes=row["undoes"],
    )


class Journal:
    """The SQLite journal; use as a context manager. One thread at a time per instance."""

    def __init__(self, connection: sqlite3.Connection, path: Path | None) -> None:
        self._db = connection
        self._db.row_factory = sqlite3.Row
        self.path = path

    @classmethod
    def open(cls, path: Path) -> Journal:
        """Open (creating it and its folder if needed) the journal at ``path``."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # check_same_thread off: ``sort`` opens the journal in its main thread and routes
            # in a thread of its own (one thread at a time, as the class says)
            db = sqlite3.connect(path, isolation_level=None, timeout=10.0, check_same_thread=False)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise JournalError(
                    f"{path}: journal schema {version} is newer than this gensift "
                    f"understands ({SCHEMA_VERSION}); upgrade gensift"
                )
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"{path}: cannot open the journal ({exc})") from exc
        return cls(db, path)

    @classmethod
    def open_readonly(cls, path: Path) -> Journal:
        """Read an existing journal without changing anything; an empty one if it is missing."""
        if not path.exists():
            db = sqlite3.connect(":memory:", isolation_level=None)
            db.executescript(_SCHEMA)
            return cls(db, None)
        try:
            db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0)
            db.execute("SELECT count(*) FROM decisions").fetchone()
        except sqlite3.Error as exc:
            raise JournalError(f"{path}: cannot read the journal ({exc})") from exc
        return cls(db, path)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Commit the rows begun and finished inside together, when the block ends: one
        commit, so one disk sync, for a batch's intents or for its completions.

        No file operation may run inside one: an intent must be on disk before its
        operation starts, and a completion written only once its operation is over.
        Inside another transaction it is part of that one. An error rolls the whole
        transaction back: intents that were never committed announced nothing that
        happened; completions that were not leave their rows at ``intent``, for repair.
        """
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN IMMEDIATE")  # the write lock now, not at a later statement
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.rollback()
            raise

    def begin(
        self,
        run: str,
        file: FileInfo,
        decision: Decision,
        destination: Path | None,
        checkpoints: Mapping[str, str],
        *,
        action: str | None = None,
        state: FileState = FileState.INTENT,
        undoes: int | None = None,
    ) -> int:
        """Record a decision (by default as an intent, before its file operation); its id.

        Committed at once, or with the rest of the :meth:`transaction` it is called in."""
        cursor = self._db.execute(
            "INSERT INTO decisions (run, time, source, destination, action, reason, label, "
            "probability, probabilities, checkpoints, size, mtime_ns, sha256, state, note, "
            "undoes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                run,
                _now(),
                path_key(file.path),
                None if destination is None else path_key(destination),
                action or decision.action,
                decision.reason,
                decision.label,
                decision.probability,
                json.dumps(decision.probabilities),
                json.dumps(dict(checkpoints)),
                file.size,
                file.mtime_ns,
                file.sha256,
                state,
                _text(decision.note),
                undoes,
            ),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def finish(self, entry_id: int, state: FileState, note: str | None = None) -> None:
        """Move a row to its final state (after its file operation); a finished ``restore``
        marks the row it undoes ``undone`` in the same commit."""
        with self.transaction():
            if note is None:
                self._db.execute("UPDATE decisions SET state = ? WHERE id = ?", (state, entry_id))
            else:
                self._db.execute(
                    "UPDATE decisions SET state = ?, note = ? WHERE id = ?",
                    (state, _text(note), entry_id),
                )
            if state == FileState.DONE:
                self._db.execute(
                    f"UPDATE decisions SET state = '{FileState.UNDONE}' WHERE id = "
                    "(SELECT undoes FROM decisions WHERE id = ?)",
                    (entry_id,),
                )

    # -- reading ---------------------------------------------------------------------------

    def decided(self, file: FileInfo) -> bool:
        """Whether this file (same path, size and modification time) already has a decision.

        A file ``gensift undo`` put back counts as decided, at its original path (the row
        it undid) or at the name it was restored under (its ``restore`` row); so does a
        file gensift moved, at its destination (a scan that reached the output root by a
        spelling the exclusions missed must not route it again).
        """
        key = (path_key(file.path), file.size, file.mtime_ns)
        row = (
            self._db.execute(
                "SELECT 1 FROM decisions WHERE source = ? AND size = ? AND mtime_ns = ? "
                f"AND action != 'restore' AND state IN ({', '.join('?' * len(DECIDED_STATES))}) "
                "LIMIT 1",
                (*key, *DECIDED_STATES),
            ).fetchone()
            or self._db.execute(
                "SELECT 1 FROM decisions WHERE destination = ? AND size = ? AND mtime_ns = ? "
                f"AND state = '{FileState.DONE}' LIMIT 1",
                key,
            ).fetchone()
        )
        return row is not None

    def pending(self) -> list[Entry]:
        """Rows whose file operation was started but never finished (a crash)."""
        rows = self._db.execute(
            "SELECT * FROM decisions WHERE state = ? ORDER BY id", (FileState.INTENT,)
        )
        return [_entry(r) for r in rows]

    def get(self, entry_id: int) -> Entry:
        """Row ``entry_id``; ``KeyError`` if there is none."""
        row = self._db.execute("SELECT * FROM decisions WHERE id = ?", (entry_id,)).fetchone()
        if row is None:
            raise KeyError(f"no journal row {entry_id}")
        return _entry(row)

    def history(self, limit: int | None = None) -> list[Entry]:
        """The most recent rows, newest first."""
        rows = self._db.execute(
            "SELECT * FROM decisions ORDER BY id DESC LIMIT ?", (-1 if limit is None else limit,)
        )
        return [_entry(r) for r in rows]

    def entries(self) -> Iterator[Entry]:
        """Every row, oldest first."""
        for row in self._db.execute("SELECT * FROM decisions ORDER BY id"):
            yield _entry(row)

    def last_run(self) -> str | None:
        """The run that most recently moved a file under the output root."""
        row = self._db.execute(
            f"SELECT run FROM decisions WHERE action IN {MOVING_ACTIONS} "
            f"AND state = '{FileState.DONE}' "
            "ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return None if row is None else row[0]

    def finished(
        self,
        actions: tuple[str, ...] = MOVING_ACTIONS,
        *,
        since: datetime | None = None,
        run: str | None = None,
    ) -> list[Entry]:
        """Finished rows of ``actions`` (newest first): all since ``since``, or one run.

        With the default actions these are the moves undo may reverse.
        """
        marks = ", ".join("?" * len(actions))
        query = f"SELECT * FROM decisions WHERE action IN ({marks}) AND state = '{FileState.DONE}'"
        params: list[str] = list(actions)
        if since is not None:
            query += " AND time >= ?"
            params.append(since.astimezone(UTC).isoformat(timespec="milliseconds"))
        if run is not None:
            query += " AND run = ?"
            params.append(run)
        rows = self._db.execute(query + " ORDER BY id DESC", params)
        return [_entry(r) for r in rows]

    # -- where files are now, and labels (the review page) --------------------------------

    def version(self) -> tuple[int, ...]:
        """Changes whenever a row is added or finishes, or a label is added."""
        rows, last, done = self._db.execute(
            "SELECT count(*), coalesce(max(id), 0), coalesce(sum(state = ?), 0) FROM decisions",
            (FileState.DONE,),
        ).fetchone()
        labels = self._db.execute("SELECT coalesce(max(id), 0) FROM labels").fetchone()[0]
        return rows, last, done, labels

    _PLACED = (
        "d.state = ? AND d.action IN (?, ?, ?) AND d.destination IS NOT NULL AND NOT EXISTS "
        "(SELECT 1 FROM decisions n WHERE n.source = d.destination AND n.id > d.id "
        "AND n.state IN (?, ?))"
    )

    def placed(self) -> list[Entry]:
        """Rows that put a file where it still is, newest first: finished moves into the
        output root that no later row (finished or under way) moved on from."""
        rows = self._db.execute(
            f"SELECT * FROM decisions d WHERE {self._PLACED} ORDER BY d.id DESC",
            (FileState.DONE, *MOVING_ACTIONS, FileState.DONE, FileState.INTENT),
        )
        return [_entry(r) for r in rows]

    def is_placed(self, entry: Entry) -> bool:
        """Whether ``entry``'s file is still where that row put it (as far as the journal knows)."""
        row = self._db.execute(
            f"SELECT 1 FROM decisions d WHERE d.id = ? AND {self._PLACED}",
            (entry.id, FileState.DONE, *MOVING_ACTIONS, FileState.DONE, FileState.INTENT),
        ).fetchone()
        return row is not None

    def last_from(self, source: Path) -> Entry | None:
        """The newest finished row that moved the file at ``source``."""
        row = self._db.execute(
            "SELECT * FROM decisions WHERE source = ? AND state = ? ORDER BY id DESC LIMIT 1",
            (path_key(source), FileState.DONE),
        ).fetchone()
        return None if row is None else _entry(row)

    def last_restore(self, undone: int) -> Entry | None:
        """The finished ``restore`` row that undid row ``undone``."""
        row = self._db.execute(
            "SELECT * FROM decisions WHERE undoes = ? AND state = ? ORDER BY id DESC LIMIT 1",
            (undone, FileState.DONE),
        ).fetchone()
        return None if row is None else _entry(row)

    def automatic_move(self, entry_id: int) -> Entry | None:
        """The automatic move into a class folder that row ``entry_id`` is about: the row
        itself, or, for a person's move, the automatic move that had put the file there."""
        try:
            entry = self.get(entry_id)
        except KeyError:
            return None
        if entry.actor == "gensift":
            return entry if entry.action == "move" else None
        row = self._db.execute(
            "SELECT * FROM decisions WHERE destination = ? AND id < ? AND action = 'move' "
            "AND run NOT LIKE ? ORDER BY id DESC LIMIT 1",
            (path_key(entry.source), entry.id, f"{REVIEW_RUN}-%"),
        ).fetchone()
        return None if row is None else _entry(row)

    def feature_classes(self, recent: int = 2000) -> set[str]:
        """The feature classes the last ``recent`` decisions scored or moved files to."""
        rows = self._db.execute(
            "SELECT DISTINCT j.key FROM (SELECT probabilities FROM decisions "
            "ORDER BY id DESC LIMIT ?) d, json_each(d.probabilities, '$.feature') j",
            (recent,),
        )
        names = {r[0] for r in rows}
        rows = self._db.execute(
            "SELECT DISTINCT label FROM decisions WHERE action = 'move' AND label IS NOT NULL"
        )
        return names | {r[0] for r in rows}

    def add_label(
        self,
        sha256: str,
        stage: str,
        label: str | None,
        source: str,
        *,
        entry: int | None = None,
        path: Path | None = None,
        withdraws: int | None = None,
    ) -> Label:
        """Append one label event (labels are never changed, only withdrawn by a later one)."""
        cursor = self._db.execute(
            "INSERT INTO labels (time, sha256, stage, label, source, entry, path, withdraws) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                _now(),
                sha256,
                stage,
                label,
                source,
                entry,
                None if path is None else path_key(path),
                withdraws,
            ),
        )
        assert cursor.lastrowid is not None
        return self.label(cursor.lastrowid)

    def label(self, label_id: int) -> Label:
        row = self._db.execute("SELECT * FROM labels WHERE id = ?", (label_id,)).fetchone()
        if row is None:
            raise KeyError(f"no label event {label_id}")
        return _label(row)

    def labels(self) -> list[Label]:
        """Every label event, oldest first (none in a journal older than labels)."""
        try:
            return [_label(r) for r in self._db.execute("SELECT * FROM labels ORDER BY id")]
        except sqlite3.OperationalError:  # opened read-only before any labels existed
            return []

    def labelled_hashes(self, source: str) -> set[str]:
        """Content hashes with a label event from ``source`` that was not withdrawn."""
        rows = self._db.execute(
            "SELECT DISTINCT sha256 FROM labels l WHERE source = ? AND label IS NOT NULL AND "
            "NOT EXISTS (SELECT 1 FROM labels w WHERE w.withdraws = l.id)",
            (source,),
        )
        return {r[0] for r in rows}
