"""File names that are not valid UTF-8 (bytes names on Linux): journaled losslessly, sorted,
undone and shown escaped, by ``sort``, ``undo``, ``history`` and the daemon."""

from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import draw
from loguru import logger
from sortkit import decisions, sha, tiny_checkpoint, write_config
from watchkit import daemon_thread, wait_decided

from gensift.daemon.cli import main
from gensift.daemon.config import LogSettings
from gensift.daemon.logs import setup_logging
from gensift.daemon.routing.journal import SCHEMA_VERSION, Journal
from gensift.daemon.routing.records import Decision, FileInfo

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="Windows names are UTF-16; no bytes names there"
)

#: ``bad\xff0.png``: the byte 0xff never occurs in UTF-8; Python spells it with a surrogate
BAD = os.fsdecode(b"bad\xff0.png")
SHOWN = "bad\\xff0.png"  # how gensift prints it


def _drawn(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    draw("red", np.random.default_rng(seed)).save(path)
    return path


def _config(tmp_path: Path, inbox: Path) -> Path:
    # an untrained two-class feature stage at threshold 0.1: every image is moved to a class
    return write_config(
        tmp_path, None, tiny_checkpoint(tmp_path), feature_threshold=0.1, inbox=inbox
    )


def _sort(config: Path, *args: str) -> int:
    return main(["sort", *args, "-c", str(config), "--no-progress"])


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_sort_history_and_undo_of_a_name_that_is_not_utf8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox = tmp_path / "inbox"
    bad = _drawn(inbox / BAD, 1)
    good = _drawn(inbox / "good.png", 2)
    digests = {bad: sha(bad), good: sha(good)}
    config = _config(tmp_path, inbox)

    assert _sort(config, str(inbox)) == 0
    said = capsys.readouterr()
    assert "sorted 2 file(s)" in said.out
    assert f"{inbox}/{SHOWN}: move [done]" in said.err  # the log line, escaped
    assert "Logging error" not in said.err
    assert not bad.exists() and not good.exists()
    out = tmp_path / "out"
    [moved] = [p for p in _files(out) if p.name == BAD]  # the same bytes name
    assert os.fsencode(moved.name) == b"bad\xff0.png"
    assert sha(moved) == digests[bad]
    rows = {e.source: e for e in decisions(tmp_path / "journal.sqlite3")}
    assert rows[bad].destination == moved and rows[bad].state == "done"

    # history: escaped, on a stdout that only takes UTF-8 (capsys's is strict)
    assert main(["history", "--json", "-c", str(config)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    by_name = {Path(row["source"]).name: row for row in lines}
    assert set(by_name) == {SHOWN, "good.png"}
    assert by_name[SHOWN]["source"] == f"{inbox}/{SHOWN}"
    assert by_name[SHOWN]["destination"] == f"{moved.parent}/{SHOWN}"
    assert main(["history", "-c", str(config)]) == 0
    text = capsys.readouterr().out
    assert f"{inbox}/{SHOWN} -> {moved.parent}/{SHOWN}" in text

    assert main(["undo", "-c", str(config)]) == 0
    said = capsys.readouterr().out
    assert "restored 2 of 2" in said and SHOWN in said
    assert {p: sha(p) for p in digests} == digests
    assert _files(out) == []
    # undone files count as decided: the bytes name is found in the journal again
    assert _sort(config, str(inbox)) == 0
    assert "sorted 0 file(s) in" in capsys.readouterr().out
    assert bad.exists()


def test_dry_run_and_plan_show_a_name_that_is_not_utf8_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox = tmp_path / "inbox"
    bad = _drawn(inbox / BAD, 1)
    config = _config(tmp_path, inbox)
    plan = tmp_path / "plan.csv"

    assert _sort(config, str(inbox), "--dry-run", "--plan", str(plan)) == 0
    printed = capsys.readouterr().out
    assert f"{inbox}/{SHOWN}: move [planned]" in printed
    with plan.open(newline="", encoding="utf-8") as handle:
        [row] = list(csv.DictReader(handle))
    assert row["source"] == f"{inbox}/{SHOWN}"
    assert row["destination"].endswith(f"/{SHOWN}") and row["state"] == "planned"
    assert bad.exists()

    assert _sort(config, str(inbox), "--plan", str(plan)) == 0
    with plan.open(newline="", encoding="utf-8") as handle:
        [row] = list(csv.DictReader(handle))
    assert row["source"] == f"{inbox}/{SHOWN}" and row["state"] == "done"
    assert not bad.exists()


def test_the_journal_keeps_bytes_names_exactly_and_reads_a_version_1_journal(
    tmp_path: Path,
) -> None:
    old = tmp_path / "v1.sqlite3"
    db = sqlite3.connect(old)  # a journal as gensift 1 wrote it: every path as text
    db.executescript(
        """CREATE TABLE decisions (id INTEGER PRIMARY KEY, run TEXT NOT NULL, time TEXT NOT NULL,
        source TEXT NOT NULL, destination TEXT, action TEXT NOT NULL, reason TEXT NOT NULL,
        label TEXT, probability REAL, probabilities TEXT NOT NULL, checkpoints TEXT NOT NULL,
        size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL,
        state TEXT NOT NULL, note TEXT NOT NULL DEFAULT '', undoes INTEGER);
        INSERT INTO decisions VALUES (1, 'sort-1', '2024-01-01T00:00:00.000+00:00',
        '/in/été.png', '/out/red/été.png', 'move', 'class', 'red', 0.9, '{}', '{}', 5, 7, 'ab',
        'done', '', NULL);
        PRAGMA user_version = 1;"""
    )
    db.close()
    with Journal.open_readonly(old) as journal:
        [entry] = journal.history()
        assert entry.source == Path("/in/été.png")
    with Journal.open(old) as journal:
        assert journal.decided(FileInfo(Path("/in/été.png"), 5, 7))
        bad = Path("/in") / BAD
        entry_id = journal.begin(
            "sort-2",
            FileInfo(bad, 3, 9, "cd"),
            Decision("move", "class", "red", 0.9),
            Path("/out/red") / BAD,
            {},
            state="done",
        )
        again = journal.get(entry_id)
        assert again.source == bad and again.destination == Path("/out/red") / BAD
        assert os.fsencode(again.source) == b"/in/bad\xff0.png"
        assert journal.decided(FileInfo(bad, 3, 9))
        assert not journal.decided(FileInfo(Path("/in/bad?0.png"), 3, 9))
        assert [e.source for e in journal.entries()] == [Path("/in/été.png"), bad]
    version = sqlite3.connect(old).execute("PRAGMA user_version").fetchone()[0]
    assert version == SCHEMA_VERSION == 2


def test_the_log_file_escapes_a_name_that_is_not_utf8(tmp_path: Path) -> None:
    log = tmp_path / "gensift.log"
    setup_logging(LogSettings(file=log), sink=io.StringIO())
    logger.info("found {}", tmp_path / BAD)  # a module that logs a path as it is
    setup_logging(LogSettings(), sink=io.StringIO())  # closes the file
    assert f"found {tmp_path}/bad\\udcff0.png" in log.read_text(encoding="utf-8")


def test_the_daemon_routes_names_that_are_not_utf8_at_start_up_and_while_running(
    tmp_path: Path,
) -> None:
    inbox = tmp_path / "inbox"
    first = _drawn(inbox / BAD, 1)  # there before the daemon starts
    config = _config(tmp_path, inbox)
    journal = tmp_path / "journal.sqlite3"
    arriving = inbox / os.fsdecode(b"later\xfe\xff.png")
    with daemon_thread(config):  # reaches READY: the start-up scan did not die on it
        wait_decided(journal, 1)
        _drawn(arriving, 2)
        wait_decided(journal, 2)
        after = _drawn(inbox / "after.png", 3)  # the worker is still alive
        rows = wait_decided(journal, 3)
    assert {e.source for e in rows} == {first, arriving, after}
    assert all(e.action == "move" and e.state == "done" for e in rows)
    for e in rows:
        assert e.destination is not None and e.destination.name == e.source.name
        assert e.destination.exists() and not e.source.exists()
