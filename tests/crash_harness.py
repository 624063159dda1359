"""SIGKILL ``gensift sort`` part-way, several times, then let it finish (for test_crash.py).

    python crash_harness.py CONFIG INBOX JOURNAL K...

For each K a child process runs ``gensift sort INBOX -c CONFIG`` and is killed
with SIGKILL as soon as the journal has K more rows than when it started (so
the kill lands between "intent recorded" and "operation finished" as often as
anywhere else). A last child runs to completion. One JSON line per child goes
to stdout. Children are forked from this process after gensift and torch are
imported but before any torch operation has run, so each starts in a moment.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path

import gensift.daemon.commands.sort  # noqa: F401 - import torch once, before forking
from gensift.daemon.cli import main

DEADLINE_SECONDS = 300


def count_rows(journal: Path, states: tuple[str, ...] = ()) -> int:
    """Journal rows (in ``states``, if given), read without disturbing the writer."""
    if not journal.exists():
        return 0
    where = f" WHERE state IN ({', '.join('?' * len(states))})" if states else ""
    try:
        with sqlite3.connect(f"{journal.resolve().as_uri()}?mode=ro", uri=True) as db:
            return db.execute(f"SELECT count(*) FROM decisions{where}", states).fetchone()[0]
    except sqlite3.Error:
        return 0


#: the states that end a file's story (what the watch tests wait for)
FINAL_STATES = ("done", "skipped")


def final_count(journal: Path) -> int:
    """Rows in a final state, restore rows included (the watch tests undo nothing), counted
    by SQLite: cheap enough to poll while a daemon writes."""
    return count_rows(journal, FINAL_STATES)


def _child(config: Path, inbox: Path) -> int:
    pid = os.fork()
    if pid == 0:
        os.dup2(2, 1)  # the child's summary goes to stderr; stdout carries this harness's JSON
        code = 1
        try:
            code = main(["sort", str(inbox), "-c", str(config), "--no-progress"])
        finally:
            os._exit(code)
    return pid


def run(config: Path, inbox: Path, journal: Path, kill_points: list[int]) -> None:
    for k in [*kill_points, None]:
        start = count_rows(journal)
        pid = _child(config, inbox)
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                result = {"k": k, "killed": False, "exit": os.waitstatus_to_exitcode(status)}
                break
            if k is not None and count_rows(journal) >= start + k:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                result = {"k": k, "killed": True, "rows": count_rows(journal) - start}
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise SystemExit(f"child for kill point {k} ran past {DEADLINE_SECONDS} s")
            time.sleep(0.0005)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    run(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), [int(a) for a in sys.argv[4:]])
