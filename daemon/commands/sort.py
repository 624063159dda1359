"""``gensift sort``: route files already on disk through the cascade, then summarise."""

from __future__ import annotations

import csv
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from loguru import logger
from tqdm import tqdm

from gensift.daemon.config import Settings
from gensift.daemon.routing.fileops import shown
from gensift.daemon.routing.journal import Journal, new_run_id
from gensift.daemon.routing.lock import JournalLock
from gensift.daemon.routing.records import FileState
from gensift.daemon.routing.recovery import repair
from gensift.daemon.routing.router import Outcome, Router, summary_label
from gensift.daemon.runtime.layout import class_folders
from gensift.daemon.runtime.paths import discover, undecided
from gensift.daemon.runtime.sifter import Sifter, compiled_cascade, load_cascade

PLAN_COLUMNS = (
    "source",
    "action",
    "reason",
    "class",
    "probability",
    "destination",
    "state",
    "note",
    "quality",
    "feature",
)


#: The run-id prefix of ``gensift watch``: one run per daemon start.
@dataclass
class SortResult:
    counts: Counter[str] = field(default_factory=Counter)
    decided: int = 0
    already: int = 0
    seconds: float = 0.0
    repaired: int = 0
    failed: int = 0  # operations that raised or were refused, files that could not be read


def run_sort(
    settings: Settings,
    roots: Sequence[Path],
    *,
    recursive: bool = False,
    dry_run: bool = False,
    plan: Path | None = None,
    out: TextIO | None = None,
    progress: bool = True,
    force_copy: bool = False,
) -> SortResult:
    """Sort every matching file under ``roots``; prints the plan in a dry run."""
    result = SortResult()
    journal_path = settings.journal.path
    paths = discover(
        roots, settings.watch.patterns, recursive=recursive, exclude=[settings.output.root]
    )
    cascade = load_cascade(settings)
    logger.info("cascade: {}", cascade.predictor.describe())
    lock = nullcontext() if dry_run else JournalLock(journal_path, "sort")
    with (
        lock,
        Journal.open_readonly(journal_path) if dry_run else Journal.open(journal_path) as journal,
    ):
        if not dry_run:
            result.repaired = repair(journal, settings.output.root)
        todo, result.already = undecided(paths, journal)
        cascade = compiled_cascade(settings, cascade, images=len(todo))
        router = Router(
            settings.output,
            journal,
            new_run_id("dry-run" if dry_run else "sort"),
            dry_run=dry_run,
            force_copy=force_copy,
            folders=class_folders(settings, also=[(r, recursive) for r in roots]),
        )
        sifter = Sifter(settings, cascade, router)
        started = time.perf_counter()
        with _plan_writer(plan) as write_row:
            bar = tqdm(total=len(todo), unit="img", disable=not progress, file=sys.stderr)
            with bar:
                for outcome in sifter.sift(todo):
                    bar.update()
                    result.counts[summary_label(outcome)] += 1
                    result.decided += outcome.decision is not None and outcome.state not in (
                        FileState.STALE,
                        FileState.REFUSED,
                    )
                    result.failed += outcome.state in (
                        FileState.FAILED,
                        FileState.UNREADABLE,
                        FileState.REFUSED,
                    )
                    write_row(outcome)
                    if dry_run:
                        print(outcome.describe(), file=out or sys.stdout)
        result.seconds = time.perf_counter() - started
    return result


@contextmanager
def _plan_writer(path: Path | None) -> Iterator[Callable[[Outcome], object]]:
    """A function that writes one outcome to the CSV plan at ``path`` (or nowhere)."""
    if path is None:
        yield lambda outcome: None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(PLAN_COLUMNS)
        yield lambda outcome: writer.writerow(plan_row(outcome))


def plan_row(outcome: Outcome) -> list[str]:
    d = outcome.decision
    probs = d.probabilities if d is not None else {}
    return [
        shown(outcome.file.path),
        outcome.action,
        d.reason if d else "",
        (d.label or "") if d else "",
        "" if d is None or d.probability is None else f"{d.probability:.6f}",
        "" if outcome.destination is None else shown(outcome.destination),
        outcome.state,
        outcome.note,
        json.dumps(probs["quality"]) if "quality" in probs else "",
        json.dumps(probs["feature"]) if "feature" in probs else "",
    ]


def format_summary(result: SortResult, *, dry_run: bool) -> str:
    verb = "planned" if dry_run else "sorted"
    rate = result.decided / result.seconds if result.seconds > 0 else 0.0
    lines = [
        f"{verb} {result.decided} file(s) in {result.seconds:.1f} s ({rate:.1f} images/s); "
        f"{result.already} already decided earlier"
        + (f"; {result.repaired} interrupted operation(s) repaired" if result.repaired else "")
    ]
    if result.counts:
        width = max(map(len, result.counts))
        for label, count in sorted(result.counts.items()):
            lines.append(f"  {label:<{width}}  {count:>6}")
    if dry_run:
        lines.append("dry run: nothing was moved and the journal was not changed")
    return "\n".join(lines)
