"""SIGKILL ``gensift sort`` part-way, several times, then let it finish (for test_crash.py).

    python crash_harness.py CONFIG INBOX JOURNAL K|op:K...

For each K a child process runs ``gensift sort INBOX -c CONFIG`` and is killed
with SIGKILL as soon as the journal has K more rows than when it started (so
the kill lands between "intent recorded" and "operation finished" as often as
anywhere else). A kill point ``op:K`` makes the child SIGKILL itself as its K-th
file operation starts: inside a batch, after the batch's intents were committed,
with the operations before it done and none of the batch's completions written.
A last child runs to completion. One JSON line per child goes to stdout.
Children are forked from this process after gensift and torch are imported but
before any torch operation has run, so each starts in a moment.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

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


def _die_at_operation(k: int) -> None:
    """Make this process SIGKILL itself as its ``k``-th file operation starts."""
    from gensift.daemon.routing import router

    real, started = router.transfer, itertools.count(1)

    def transfer(*args: Any, **kwargs: Any) -> None:
        if next(started) == k:
            os.kill(os.getpid(), signal.SIGKILL)
        real(*args, **kwargs)

    router.transfer = transfer


def _child(config: Path, inbox: Path, die_at: int | None) -> int:
    pid = os.fork()
    if pid == 0:
        os.dup2(2, 1)  # the child's summary goes to stderr; stdout carries this harness's JSON
        code = 1
        try:
            if die_at is not None:
                _die_at_operation(die_at)
            code = main(["sort", str(inbox), "-c", str(config), "--no-progress"])
        finally:
            os._exit(code)
    return pid


def run(config: Path, inbox: Path, journal: Path, kill_points: list[str]) -> None:
    for point in [*kill_points, None]:
        start = count_rows(journal)
        die_at = int(point[3:]) if point is not None and point.startswith("op:") else None
        k = int(point) if point is not None and die_at is None else None
        pid = _child(config, inbox, die_at)
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
                result = {"k": point, "killed": True, "rows": count_rows(journal) - start}
                break
            if done:
                result = {"k": point, "killed": False, "exit": os.waitstatus_to_exitcode(status)}
                break
            if k is not None and count_rows(journal) >= start + k:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                result = {"k": point, "killed": True, "rows": count_rows(journal) - start}
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise SystemExit(f"child for kill point {point} ran past {DEADLINE_SECONDS} s")
            time.sleep(0.0005)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    run(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:])
