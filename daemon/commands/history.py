"""``gensift undo`` and ``gensift history``: reading the journal back."""

from __future__ import annotations

import json
import re
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

from gensift.daemon.config import Settings
from gensift.daemon.routing.fileops import shown
from gensift.daemon.routing.journal import WATCH_RUN, Entry, Journal, new_run_id
from gensift.daemon.routing.lock import JournalLock
from gensift.daemon.routing.records import FileState
from gensift.daemon.routing.recovery import repair, restore
from gensift.daemon.routing.router import Outcome
from gensift.models.errors import InputError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``1d``, ``1w`` or combinations such as ``1h30m``."""
    compact = text.strip().lower()
    parts = _DURATION.findall(compact)
    if not parts or _DURATION.sub("", compact).strip():
        raise InputError(
            f"--since {text!r}: not a duration; use a number and a unit s, m, h, d or w "
            "(for example 30m, 2h, 1d or 1h30m)"
        )
    try:
        return timedelta(seconds=sum(float(n) * _UNIT_SECONDS[u] for n, u in parts))
    except OverflowError:
        raise InputError(f"--since {text!r}: too long a duration") from None


@dataclass
class UndoResult:
    outcomes: list[tuple[Entry, Outcome]] = field(default_factory=list)
    not_undoable: list[Entry] = field(default_factory=list)
    scope: str = ""

    @property
    def not_restored(self) -> list[tuple[Entry, Outcome]]:
        """The moves that were not (or, in a dry run, would not be) put back."""
        return [
            (e, o) for e, o in self.outcomes if o.state not in (FileState.DONE, FileState.PLANNED)
        ]


def run_undo(settings: Settings, since: timedelta | None, *, dry_run: bool = False) -> UndoResult:
    """Move files back where they came from: all moves within ``since``, else the last run.

    Oldest first, each row to its own source: when a generator reused a name, the first
    file gets it back and a later one comes back next to it as ``name-1.png``.
    """
    path = settings.journal.path
    result = UndoResult()
    if not dry_run and not path.exists():
        result.scope = f"{path} (no journal yet)"
        return result
    lock = nullcontext() if dry_run else JournalLock(path, "undo")
    with lock, Journal.open_readonly(path) if dry_run else Journal.open(path) as journal:
        if not dry_run:
            repair(journal, settings.output.root)
        if since is not None:
            start = datetime.now(UTC) - since
            entries = journal.finished(since=start)
            result.scope = f"since {start:%Y-%m-%d %H:%M:%S} UTC"
            result.not_undoable = journal.finished(("trash", "delete"), since=start)
        else:
            run = journal.last_run()
            if run is not None and run.startswith(f"{WATCH_RUN}-"):
                raise InputError(
                    f"the last files were moved by the daemon (run {run}), which may have "
                    "been running for days: say how far back to undo with --since, for "
                    "example 'gensift undo --since 1h --dry-run' to see the last hour"
                )
            entries = [] if run is None else journal.finished(run=run)
            if run is not None:
                result.not_undoable = journal.finished(("trash", "delete"), run=run)
            result.scope = f"the last run ({run})" if run else "the journal (no moves yet)"
        undo_run = new_run_id("undo")
        claimed: set[Path] = set()
        for entry in chained_order(list(reversed(entries))):  # oldest first, chains back
            outcome = restore(journal, entry, undo_run, dry_run=dry_run, claimed=claimed)
            result.outcomes.append((entry, outcome))
            wrong_cull = entry.actor == "gensift" and entry.action == "quarantine"
            if outcome.state == FileState.DONE and wrong_cull:  # a keep label
                journal.add_label(entry.sha256, "quality", "keep", "undo",
                                  entry=entry.id, path=outcome.destination)  # fmt: skip
    return result


def chained_order(oldest_first: list[Entry]) -> list[Entry]:
    """Oldest first, except that a file moved on again (by the review page, say: from
    ``_review/`` into a class) has its later move undone before the earlier one, so
    that the earlier one finds the file back where it put it."""
    later: dict[Path, list[Entry]] = {}
    for e in oldest_first:
        later.setdefault(e.source, []).append(e)
    done: set[int] = set()
    order: list[Entry] = []

    def visit(e: Entry) -> None:
        if e.id in done:
            return
        done.add(e.id)
        for nxt in later.get(e.destination, []) if e.destination is not None else []:
            if nxt.id > e.id:
                visit(nxt)
        order.append(e)

    for e in oldest_first:
        visit(e)
    return order


def format_undo(result: UndoResult, *, dry_run: bool, out: TextIO) -> None:
    """One line per move (restored, or not and why), per trashed or deleted file, and a total."""
    verb = "would restore" if dry_run else "restored"
    for entry, outcome in result.outcomes:
        assert entry.destination is not None and outcome.destination is not None
        move = f"{shown(entry.destination)} -> {shown(outcome.destination)}"
        note = f" ({outcome.note})" if outcome.note else ""
        if outcome.state in (FileState.DONE, FileState.PLANNED):
            print(f"{verb} {move}{note}", file=out)
        else:
            print(f"not restored: {move}{note}", file=out)
    for entry in result.not_undoable:
        where = "is in the recycle bin" if entry.action == "trash" else "was deleted"
        print(f"cannot undo: {shown(entry.source)} {where}", file=out)
    done = len(result.outcomes) - len(result.not_restored)
    left = (
        f"; {len(result.not_restored)} not restored (listed above)" if result.not_restored else ""
    )
    print(
        f"{verb} {done} of {len(result.outcomes)} moved file(s) from {result.scope}{left}"
        + ("; dry run: nothing was changed" if dry_run else ""),
        file=out,
    )


def format_entry(entry: Entry) -> str:
    """One human-readable history line."""
    when = entry.time[:19].replace("T", " ")
    what = entry.action if entry.label is None else f"{entry.action} {entry.label}"
    p = "" if entry.probability is None else f" p={entry.probability:.3f}"
    target = "" if entry.destination is None else f" -> {shown(entry.destination)}"
    note = f" ({entry.note})" if entry.note else ""
    return f"{when}  {what} [{entry.reason}, {entry.state}]{p}  {shown(entry.source)}{target}{note}"


def show_history(settings: Settings, limit: int, *, as_json: bool, out: TextIO) -> int:
    """Print the newest ``limit`` journal rows, newest first; returns how many."""
    with Journal.open_readonly(settings.journal.path) as journal:
        entries = journal.history(limit)
    for entry in entries:
        print(json.dumps(entry.to_json()) if as_json else format_entry(entry), file=out)
    return len(entries)
