"""``gensift labels`` and ``gensift stats``: what people said about files on the review
page, and the live precision their audit answers measure (:mod:`routing.audit`); and
the corrections they made by hand in a file manager (:func:`find_hand_moves`).

Label events are append-only (``Journal.add_label``); a file's label for a stage is
its newest event that was not withdrawn (undo withdraws). Labels are keyed by content
hash, so they follow a file through moves and renames.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from gensift.daemon.config import Settings
from gensift.daemon.routing.audit import live_precision, recorded_target
from gensift.daemon.routing.journal import Journal, Label, in_force
from gensift.daemon.routing.records import REJECTED_DIR, REVIEW_DIR


def current_labels(events: Iterable[Label]) -> dict[tuple[str, str], Label]:
    """(content hash, stage) -> the label that stands: the newest not withdrawn."""
    standing: dict[tuple[str, str], Label] = {}
    for event in in_force(events):  # oldest first: a later label replaces an earlier one
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
    unrecorded = [
        m for m in find_hand_moves(settings)
        if (now := standing.get((m.sha256, m.stage))) is None or now.label != m.label
    ]  # fmt: skip
    if unrecorded:
        print(f"  and {len(unrecorded)} file(s) you moved by hand between gensift's folders, "
              "recorded as labels at the next gensift retrain", file=out)  # fmt: skip
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
    """Where files are now, per action and class, and live precision per class from the
    audit answers; exit 1 if a class is below target."""
    target = recorded_target(settings.stages.feature.checkpoint)
    with Journal.open_readonly(settings.journal.path) as journal:
        rows = live_precision(journal, target)
        placed = journal.placed()
    by_place = Counter(
        (e.action, e.folder or "", "human" if e.actor == "human" else "gensift") for e in placed
    )
    if as_json:
        counts = [
            {"action": a, "folder": f, "by": who, "files": n}
            for (a, f, who), n in sorted(by_place.items())
        ]
        json.dump({"placed": counts, "live_precision": [r.to_json() for r in rows],
                   "target": target}, out, indent=2)  # fmt: skip
        out.write("\n")
        return 1 if any(r.below_target for r in rows) else 0
    print(f"{len(placed)} files under {settings.output.root}, by where gensift or you put them:",
          file=out)  # fmt: skip
    for (action, folder, who), n in sorted(by_place.items()):
        print(f"  {n:>7}  {action:<10} {folder + '/':<20} by {who}", file=out)
    if not rows:
        print("no audited moves yet: answer some in the audit queue of gensift review", file=out)
    else:
        audited = sum(r.audited.count for r in rows)
        print(f"live precision of automatic moves ({audited} audited, target {target:.2f}):",
              file=out)  # fmt: skip
        for r in rows:
            print(f"  {r.describe()}", file=out)
    return 1 if any(r.below_target for r in rows) else 0


@dataclass(frozen=True)
class HandMove:
    """A file gensift placed that the user has since moved to another of its folders."""

    path: Path
    sha256: str
    stage: str
    label: str
    placed_in: str


def find_hand_moves(settings: Settings, reject_label: str = "reject") -> list[HandMove]:
    """Files under the output root that are not where the journal put them, but in another
    of gensift's folders: moved by hand (a file manager) from one class to another, out of
    ``_review/`` into a class, or into or out of ``_rejected/``. Each is a correction.

    Only files at a path no journal row placed are read (their content hash finds the row
    that placed that content), so a sorted archive costs a directory walk.
    """
    root = settings.output.root
    with Journal.open_readonly(settings.journal.path) as journal:
        placed = journal.placed()
    where_placed = {e.destination for e in placed if e.destination is not None}
    by_hash = {}
    for e in reversed(placed):  # oldest first: the newest placement of a content wins
        by_hash[e.sha256] = e
    moves: list[HandMove] = []
    try:
        folders = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    except OSError:
        return moves
    for folder in folders:
        try:
            files = [p for p in folder.iterdir() if p.is_file() and p not in where_placed]
        except OSError:
            continue
        for path in files:
            try:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                continue
            entry = by_hash.get(digest)
            if entry is None or entry.destination is None:
                continue  # not a file gensift placed (the user's own, or an example)
            before = entry.folder
            if before == folder.name:
                continue  # renamed within its folder: no new information
            if folder.name == REJECTED_DIR:
                moves.append(HandMove(path, digest, "quality", reject_label, before or ""))
            elif folder.name == REVIEW_DIR:
                continue  # put back for review: no answer yet
            else:
                moves.append(HandMove(path, digest, "feature", folder.name, before or ""))
                if before == REJECTED_DIR:
                    moves.append(HandMove(path, digest, "quality", "keep", before))
    return moves


def record_hand_moves(settings: Settings, moves: Iterable[HandMove]) -> int:
    """Append a ``moved`` label for each hand move whose label does not already stand."""
    added = 0
    with Journal.open(settings.journal.path) as journal:
        standing = current_labels(journal.labels())
        for m in moves:
            now = standing.get((m.sha256, m.stage))
            if now is not None and now.label == m.label:
                continue
            journal.add_label(m.sha256, m.stage, m.label, "moved", path=m.path)
            added += 1
    return added
