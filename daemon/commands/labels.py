"""``gensift labels`` and ``gensift stats``: what people said about files on the review
page, and the live precision their audit answers measure (:mod:`routing.audit`).

Label events are append-only (``Journal.add_label``); a file's label for a stage is
its newest event that was not withdrawn (undo withdraws). Labels are keyed by content
hash, so they follow a file through moves and renames.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import TextIO

from gensift.daemon.config import Settings
from gensift.daemon.routing.audit import live_precision, recorded_target
from gensift.daemon.routing.journal import Journal, Label


def current_labels(events: Iterable[Label]) -> dict[tuple[str, str], Label]:
    """(content hash, stage) -> the label that stands: the newest not withdrawn."""
    withdrawn = {e.withdraws for e in events if e.withdraws is not None}
    standing: dict[tuple[str, str], Label] = {}
    for event in events:  # oldest first: a later label replaces an earlier one
        if event.label is not None and event.id not in withdrawn:
            standing[(event.sha256, event.stage)] = event
    return standing


def show_labels(settings: Settings, *, as_json: bool, out: TextIO) -> int:
    with Journal.open_readonly(settings.journal.path) as journal:
        events = journal.labels()
    standing = current_labels(events)
    if as_json:
        json.dump(
            {
                "events": len(events),
                "labels": [label.to_json() for label in standing.values()],
                "counts": _counts(standing.values()),
            },
            out,
            indent=2,
        )
        out.write("\n")
        return 0
    if not standing:
        print(
            f"no labels yet ({len(events)} label events); label files with gensift review",
            file=out,
        )
        return 0
    print(f"{len(standing)} labelled files ({len(events)} label events)", file=out)
    for stage, per_label in _counts(standing.values()).items():
        print(f"  {stage}:", file=out)
        for label, by_source in per_label.items():
            total = sum(by_source.values())
            sources = ", ".join(f"{n} {s}" for s, n in sorted(by_source.items()))
            print(f"    {label:<20} {total:>6}  ({sources})", file=out)
    return 0


def _counts(labels: Iterable[Label]) -> dict[str, dict[str, dict[str, int]]]:
    """stage -> label -> source -> count."""
    counts: Counter[tuple[str, str, str]] = Counter(
        (x.stage, x.label or "", x.source) for x in labels
    )
    out: dict[str, dict[str, dict[str, int]]] = {}
    for (stage, label, source), n in sorted(counts.items()):
        out.setdefault(stage, {}).setdefault(label, {})[source] = n
    return out


def show_stats(settings: Settings, *, as_json: bool, out: TextIO) -> int:
    """Live precision per class from the audit answers; exit 1 if a class is below target."""
    target = recorded_target(settings.stages.feature.checkpoint)
    with Journal.open_readonly(settings.journal.path) as journal:
        rows = live_precision(journal, target)
    if as_json:
        json.dump({"live_precision": [r.to_json() for r in rows], "target": target}, out, indent=2)
        out.write("\n")
    elif not rows:
        print("no audited moves yet: answer some in the audit queue of gensift review", file=out)
    else:
        audited = sum(r.audited.count for r in rows)
        print(f"live precision of automatic moves ({audited} audited, target {target:.2f}):",
              file=out)  # fmt: skip
        for r in rows:
            print(f"  {r.describe()}", file=out)
    return 1 if any(r.below_target for r in rows) else 0
