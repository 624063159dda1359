"""A batch's journal rows in one commit.

Real files in ``tmp_path`` and a real SQLite journal, read back through a second connection
(what a crash would leave is what another connection sees).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from gensift.daemon.routing.journal import Journal
from gensift.daemon.routing.records import Decision, FileInfo, FileState

RUN = "run-1"
CHECKPOINTS = {"feature": "bbbbbbbbbbbb"}
RED = Decision("move", "class", "red", 0.93)


def _file(path: Path, text: str | None = None) -> FileInfo:
    """A small file at ``path``, and what the decoder would have recorded about it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (text or f"bytes of {path}").encode()
    path.write_bytes(data)
    return FileInfo(path, len(data), path.stat().st_mtime_ns, hashlib.sha256(data).hexdigest())


def _committed(path: Path) -> list[tuple[Path, str]]:
    """(source, state) of every row another connection sees: what is on disk."""
    with Journal.open_readonly(path) as reader:
        return [(e.source, e.state) for e in reader.entries()]


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal.open(tmp_path / "j.sqlite3") as opened:
        yield opened


# --- the journal's transaction ----------------------------------------------------------------


def test_rows_written_in_a_transaction_are_committed_together(
    journal: Journal, tmp_path: Path
) -> None:
    assert journal.path is not None
    a, b = _file(tmp_path / "in" / "a.png"), _file(tmp_path / "in" / "b.png")
    with journal.transaction():
        first = journal.begin(RUN, a, RED, tmp_path / "out" / "a.png", CHECKPOINTS)
        journal.begin(RUN, b, RED, tmp_path / "out" / "b.png", CHECKPOINTS)
        journal.finish(first, FileState.DONE)  # inside: part of the same commit
        assert _committed(journal.path) == []
    assert _committed(journal.path) == [(a.path, "done"), (b.path, "intent")]


def test_an_error_in_a_transaction_commits_none_of_it(journal: Journal, tmp_path: Path) -> None:
    assert journal.path is not None
    a = _file(tmp_path / "in" / "a.png")
    with pytest.raises(RuntimeError), journal.transaction():
        journal.begin(RUN, a, RED, tmp_path / "out" / "a.png", CHECKPOINTS)
        raise RuntimeError("the disk is full, say")
    assert _committed(journal.path) == []
    journal.begin(RUN, a, RED, tmp_path / "out" / "a.png", CHECKPOINTS)  # still usable
    assert _committed(journal.path) == [(a.path, "intent")]


def test_a_restore_finished_in_a_transaction_marks_the_row_it_undoes(
    journal: Journal, tmp_path: Path
) -> None:
    a = _file(tmp_path / "out" / "red" / "a.png")
    moved = journal.begin(RUN, a, RED, a.path, CHECKPOINTS, state=FileState.DONE)
    with journal.transaction():
        back = journal.begin(
            "undo-1", a, RED, tmp_path / "in" / "a.png", {}, action="restore", undoes=moved
        )
        journal.finish(back, FileState.DONE)
    assert journal.get(moved).state == "undone"
    assert journal.get(back).state == "done"
