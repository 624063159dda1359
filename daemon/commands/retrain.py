"""``gensift retrain STAGE``: the live model, updated with the user's labels, behind the gate.

What it trains on:

* the example folders the live checkpoint was trained from (recorded in its metadata,
  or its report's ``metrics.json``; ``--data`` overrides), and
* every file labelled on the review page for this stage (the labels that stand,
  :func:`~gensift.daemon.commands.labels.current_labels`) that still exists, found by its
  content hash wherever it was moved since, and every file the user moved by hand from
  one of gensift's folders to another (recorded as ``moved`` labels first).

What judges it: a slice of the user's labels, held out by groups (variants of one
generation stay on one side; about a third of each class's label groups), with every
class topped up from its examples towards the largest held-out class (at most a third
of its examples): the gate tests the candidate against always answering the commonest
class, which a held-out slice of one class would make unbeatable. The publish
gate (``models/gate.py``) compares the candidate with the live model on those images:
a model no better than chance, or worse than the live one, is refused and the live
checkpoint stays byte-identical.

How: by default a fast update, the live backbone frozen (``--init-from`` the live
checkpoint with ``--freeze-backbone``: features computed once, a new head, a minute on a
CPU); ``--fine-tune`` trains everything from the live weights. On success the new
version is published (the old one kept, ``gensift models rollback`` restores it), a
running ``gensift watch`` reloads it, and the command prints what changed on the
held-out labels and how many files now waiting in ``_review/`` it would decide.
``--dry-run`` trains and reports without publishing.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from gensift.daemon.commands.labels import (
    HandMove,
    current_labels,
    find_hand_moves,
    record_hand_moves,
)
from gensift.daemon.config import Settings
from gensift.daemon.routing.fileops import same_content
from gensift.daemon.routing.journal import Journal, Label
from gensift.models.errors import InputError
from gensift.models.stats import Proportion

#: the share of each class's label groups held out for the gate
HOLD_OUT = 0.34
#: a class needs this many held-out groups for the gate to judge it
MIN_HELD_OUT_GROUPS = 2
#: with few labels, the share of a class's example groups held out (as ``--val-split``)
EXAMPLES_HELD_OUT = 0.2


@dataclass
class RetrainData:
    """The folders a retrain trains and is judged on, and what went into them."""

    train: Path
    held_out: Path
    examples: Path
    labelled: dict[str, int] = field(default_factory=dict)  # class -> labelled files used
    held_out_labels: dict[str, int] = field(default_factory=dict)
    topped_up: dict[str, int] = field(default_factory=dict)  # class -> example images moved
    gone: int = 0  # labelled files no longer anywhere
    hand_moves: int = 0  # files the user moved between gensift's folders by hand


@dataclass
class RetrainResult:
    published: bool
    dry_run: bool
    data: RetrainData
    verdict: dict[str, Any]
    accuracy_before: Proportion | None  # right of the held-out labels, top class
    accuracy_after: Proportion | None
    before: Proportion | None  # precision of what the model acts on, at its threshold
    after: Proportion | None
    coverage_before: Proportion | None
    coverage_after: Proportion | None
    review_decided_before: int | None
    review_decided_after: int | None
    review_waiting: int


def examples_of(checkpoint: Path, override: Path | None) -> Path:
    """The example folder the checkpoint was trained from."""
    if override is not None:
        return override
    from gensift.models.checkpoint import CheckpointError, read_checkpoint
    from gensift.models.publish import report_dir_for

    try:
        _, meta = read_checkpoint(checkpoint)
    except CheckpointError as exc:
        raise InputError(f"cannot retrain: {exc}") from None
    recorded = meta.metrics.get("data")
    if not recorded:
        report = report_dir_for(checkpoint) / "metrics.json"
        try:
            recorded = json.loads(report.read_text(encoding="utf-8")).get("data")
        except (OSError, ValueError):
            recorded = None
    if not recorded:
        raise InputError(
            f"{checkpoint} does not record the example folder it was trained from; "
            "say where it is with --data DIR"
        )
    folder = Path(recorded)
    if not folder.is_dir():
        raise InputError(
            f"the example folder {folder} that {checkpoint.name} was trained from is gone; "
            "say where the examples are now with --data DIR"
        )
    return folder


def gather(
    settings: Settings,
    stage: str,
    classes: Sequence[str],
    examples: Path,
    work: Path,
    *,
    reject_class: str | None = None,
    keep_class: str | None = None,
    seed: int = 0,
    extra: Sequence[HandMove] = (),
) -> RetrainData:
    """Lay out ``work/train/<class>/`` and ``work/held_out/<class>/`` (links, else copies)."""
    from gensift.models.data import IMAGE_SUFFIXES

    data = RetrainData(work / "train", work / "held_out", examples)
    with Journal.open_readonly(settings.journal.path) as journal:
        standing = current_labels(journal.labels())
        placed = {e.sha256: e for e in reversed(journal.placed())}  # newest last wins
    for m in extra:  # hand moves not recorded (a dry run): as if they were
        standing[(m.sha256, m.stage)] = Label(-1, "", m.sha256, m.stage, m.label, "moved",
                                              None, m.path, None)  # fmt: skip
    by_class: dict[str, list[Path]] = defaultdict(list)
    for (sha256, label_stage), label in standing.items():
        if label_stage != stage or label.label is None:
            continue
        name = label.label
        if stage == "quality":
            name = {"reject": reject_class, "keep": keep_class}.get(name) or ""
        if name not in classes:
            continue
        path = _find(label.path, placed.get(sha256), sha256)
        if path is None:
            data.gone += 1
            continue
        by_class[name].append(path)
    rng = random.Random(seed)
    held_labels: dict[str, list[list[Path]]] = {}
    for name in classes:  # a third of each class's label groups, for the gate
        files = sorted(by_class.get(name, []))
        groups = _groups(files)
        rng.shuffle(groups)
        n_held = round(len(groups) * HOLD_OUT) if len(groups) >= 3 else 0
        held_labels[name] = groups[:n_held]
        _place_all((p for g in groups[n_held:] for p in g), data.train / name, "label")
        _place_all((p for g in groups[:n_held] for p in g), data.held_out / name, "label")
        data.labelled[name] = len(files)
        data.held_out_labels[name] = sum(len(g) for g in groups[:n_held])
    # top every class up from its examples towards the largest held-out class (at most a
    # third of its examples): the gate's chance test compares with always answering the
    # commonest class, and a held-out slice of one class could never beat that
    target = max(data.held_out_labels.values(), default=0)
    for name in classes:
        example_files = sorted(
            p for p in (examples / name).rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )  # fmt: skip
        groups = _groups(example_files)
        rng.shuffle(groups)
        room = max(0, len(groups) - 1) if not data.labelled[name] else len(groups)
        most = min(room, max(MIN_HELD_OUT_GROUPS, round(len(groups) * HOLD_OUT)))
        # at least the slice an ordinary split would hold out, counting the labels held out
        floor = max(MIN_HELD_OUT_GROUPS, round(len(groups) * EXAMPLES_HELD_OUT))
        take, images = 0, data.held_out_labels[name]
        while take < most and (images < target or len(held_labels[name]) + take < floor):
            images += len(groups[take])
            take += 1
        if len(held_labels[name]) + take < MIN_HELD_OUT_GROUPS:
            raise InputError(
                f"{examples / name}: too few examples and labels of {name} to hold "
                f"{MIN_HELD_OUT_GROUPS} distinct images out for the gate; add examples or "
                "label more files of it on the review page"
            )
        _place_all((p for g in groups[:take] for p in g), data.held_out / name, "example")
        _place_all((p for g in groups[take:] for p in g), data.train / name, "example")
        data.topped_up[name] = sum(len(g) for g in groups[:take])
    return data


def _find(path: Path | None, entry: Any, sha256: str) -> Path | None:
    """Where the file with this content is now: where it was labelled, or where the
    journal last placed it; None if neither holds it any more."""
    for candidate in (path, None if entry is None else entry.destination):
        if candidate is not None and candidate.is_file():
            try:
                size = candidate.stat().st_size
            except OSError:
                continue
            if same_content(candidate, size, sha256):
                return candidate
    return None


def _groups(files: Sequence[Path]) -> list[list[Path]]:
    """Files grouped as the training split groups them (one generation, near-duplicates)."""
    if not files:
        return []
    from PIL import Image

    from gensift.models.groups import generation_key, group_ids, perceptual_hash

    keys: list[str | None] = []
    hashes: list[int | None] = []
    for path in files:
        try:
            with Image.open(path) as img:
                keys.append(generation_key(img))
                hashes.append(perceptual_hash(img.convert("RGB")))
        except (OSError, ValueError):
            keys.append(None)
            hashes.append(None)
    grouped: dict[int, list[Path]] = defaultdict(list)
    for path, gid in zip(files, group_ids(keys, hashes), strict=True):
        grouped[gid].append(path)
    return list(grouped.values())


def _place_all(files: Iterable[Path], folder: Path, prefix: str) -> None:
    for i, path in enumerate(files):
        _place(path, folder / f"{prefix}-{i:05d}{path.suffix.lower()}")


def _place(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another device, or no hard links: a copy (the originals stay put)
        shutil.copy2(source, target)


def retrain(
    settings: Settings,
    stage: str,
    *,
    dry_run: bool = False,
    fine_tune: bool = False,
    data: Path | None = None,
    seed: int = 0,
    out: TextIO | None = None,
) -> RetrainResult:
    from gensift.models.checkpoint import CheckpointError, load_classifier
    from gensift.models.device import resolve_device
    from gensift.models.train import TrainOptions, train

    stage_settings = getattr(settings.stages, stage)
    live = stage_settings.checkpoint
    if live is None or not live.is_file():
        raise InputError(
            f"no live {stage} checkpoint at {live}: train one first (gensift train {stage})"
        )
    try:
        _, meta = load_classifier(live, stage=stage)
    except CheckpointError as exc:
        raise InputError(f"cannot retrain: {exc}") from None
    examples = examples_of(live, data)
    reject_class = keep_class = None
    if stage == "quality":
        rejects = list(settings.stages.quality.reject_classes)
        reject_class = rejects[0]
        keeps = [c for c in meta.classes if c not in rejects]
        keep_class = keeps[0] if len(keeps) == 1 else None
    work_root = settings.journal.path.parent
    work_root.mkdir(parents=True, exist_ok=True)
    # corrections made in a file manager become labels too (recorded unless a dry run)
    moves = find_hand_moves(settings, reject_class or "reject")
    if moves and not dry_run:
        record_hand_moves(settings, moves)
    with tempfile.TemporaryDirectory(prefix="retrain-", dir=work_root) as tmp:
        work = Path(tmp)
        gathered = gather(
            settings, stage, meta.classes, examples, work,
            reject_class=reject_class, keep_class=keep_class, seed=seed,
            extra=moves if dry_run else (),
        )  # fmt: skip
        gathered.hand_moves = len(moves)
        if not sum(gathered.labelled.values()):
            raise InputError(
                f"no {stage} labels to learn from yet: label files with gensift review"
                + (f" ({gathered.gone} labelled file(s) no longer exist)" if gathered.gone else "")
            )
        _say(out, _describe(gathered))
        before_model = work / "before.safetensors"  # the live model as it was
        shutil.copy2(live, before_model)
        # a dry run trains against a copy of the live file: the gate compares the same way,
        # and whatever it decides lands in the temporary folder
        destination = work / "dry-run" / live.name if dry_run else live
        if dry_run:
            destination.parent.mkdir()
            shutil.copy2(live, destination)
        opts = TrainOptions(
            stage=stage,  # type: ignore[arg-type]
            data=gathered.train,
            val_data=gathered.held_out,
            out=destination,
            arch=meta.arch,
            weights="none",
            init_from=before_model,
            freeze_backbone=not fine_tune,
            image_size=meta.image_size,
            target_classes=list(settings.stages.quality.reject_classes)
            if stage == "quality"
            else None,
            device=settings.inference.device,
            seed=seed,
            data_source=examples,
        )
        result = train(opts)
        assert result is not None
        device = resolve_device(settings.inference.device)
        held = [
            (path, meta.classes.index(path.parent.name))
            for path in sorted(gathered.held_out.glob("*/label-*"))
        ]
        review = _review_files(settings) if stage == "feature" else []
        before, decided_before = _score(before_model, held, review, device)
        after, decided_after = _score(result.checkpoint, held, review, device)
        return RetrainResult(
            published=result.published and not dry_run,
            dry_run=dry_run,
            data=gathered,
            verdict=result.metrics.get("gate", {}),
            accuracy_before=before[0],
            accuracy_after=after[0],
            before=before[1],
            after=after[1],
            coverage_before=before[2],
            coverage_after=after[2],
            review_decided_before=decided_before,
            review_decided_after=decided_after,
            review_waiting=len(review),
        )


def _score(
    checkpoint: Path, held: list[tuple[Path, int]], review: list[Path], device: Any
) -> tuple[tuple[Proportion | None, Proportion | None, Proportion | None], int | None]:
    """One pass of the checkpoint's model over the held-out labels and the ``_review/``
    files: :func:`_operating_point` on the first, how many of the second it would decide
    at its own threshold (None without any)."""
    if not held and not review:
        return (None, None, None), None
    probs, threshold = _probabilities(checkpoint, [p for p, _ in held] + review, device)
    point = _operating_point(probs[: len(held)], threshold, [label for _, label in held])
    decided = int((probs[len(held) :].max(axis=1) >= threshold).sum()) if review else None
    return point, decided


def _operating_point(
    probs: Any, threshold: float, labels: list[int]
) -> tuple[Proportion | None, Proportion | None, Proportion | None]:
    """(accuracy, precision of what the model would act on, coverage) on labelled images
    at ``threshold``; None where there are none."""
    if not labels:
        return None, None, None
    acted = right_acted = right = 0
    for row, label in zip(probs, labels, strict=True):
        correct = int(row.argmax()) == label
        right += correct
        if float(row.max()) >= threshold:
            acted += 1
            right_acted += correct
    n = len(labels)
    return Proportion(right, n), Proportion(right_acted, acted), Proportion(acted, n)


def _probabilities(checkpoint: Path, files: list[Path], device: Any) -> tuple[Any, float]:
    from gensift.models.checkpoint import load_classifier
    from gensift.models.data import Sample
    from gensift.models.evaluate import score_model

    model, meta = load_classifier(checkpoint)
    samples = [Sample(path, 0) for path in files]
    probs = score_model(model, meta, samples, device, desc=f"score {checkpoint.name}")
    reached = meta.thresholds.get("reached", True)
    return probs, meta.threshold if reached else float("inf")


def format_result(r: RetrainResult, stage: str, out: TextIO) -> None:
    def point(p: Proportion | None, c: Proportion | None) -> str:
        if p is None or c is None:
            return "n/a (no labels held out)"
        share = f"{c.value or 0:.3f} ({c.successes}/{c.count})"
        return f"precision {p} on the files it acts on, coverage {share}"

    verdict = "passed" if r.verdict.get("passed") else "refused"
    print(f"gate: {verdict}", file=out)
    for reason in r.verdict.get("reasons", []):
        print(f"  {reason}", file=out)
    print("on your held-out labels:", file=out)
    for when, acc, p, c in (
        ("before", r.accuracy_before, r.before, r.coverage_before),
        ("after ", r.accuracy_after, r.after, r.coverage_after),
    ):
        right = "n/a" if acc is None else f"{acc.successes}/{acc.count} right ({acc.value:.3f})"
        print(f"  {when}: {right}; {point(p, c)}", file=out)
    if r.review_decided_before is not None:
        print(
            f"_review/: {r.review_waiting} file(s) waiting; the live model would decide "
            f"{r.review_decided_before}, the new one {r.review_decided_after}",
            file=out,
        )
    if r.dry_run:
        print("dry run: nothing was published", file=out)
    elif r.published:
        print(
            f"published the new {stage} model; a running gensift watch reloads it "
            f"('gensift models rollback {stage}' brings the old one back)",
            file=out,
        )
    else:
        print(f"the live {stage} model stays (unchanged)", file=out)


def _say(out: TextIO | None, text: str) -> None:
    if out is not None:
        print(text, file=out, flush=True)


def _describe(d: RetrainData) -> str:
    parts = [f"{c} {n}" for c, n in d.labelled.items() if n]
    held = sum(d.held_out_labels.values())
    text = (
        f"retrain: {sum(d.labelled.values())} labelled file(s) ({', '.join(parts)}), "
        f"{held} of them held out for the gate; examples from {d.examples}"
    )
    topped = {c: n for c, n in d.topped_up.items() if n}
    if topped:
        text += "; held out from the examples too: " + ", ".join(
            f"{c} {n}" for c, n in topped.items()
        )
    if d.hand_moves:
        text += f"; {d.hand_moves} file(s) you moved by hand between gensift's folders count"
    if d.gone:
        text += f"; {d.gone} labelled file(s) no longer exist"
    return text


def _review_files(settings: Settings) -> list[Path]:
    with Journal.open_readonly(settings.journal.path) as journal:
        return [
            e.destination
            for e in journal.placed()
            if e.action == "review" and e.destination is not None and e.destination.is_file()
        ]
