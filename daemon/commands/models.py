"""``gensift models list`` and ``gensift models rollback``: a stage's published versions."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

from gensift.daemon.config import Settings
from gensift.models.errors import InputError
from gensift.models.publish import Version, list_versions, rollback, versions_dir


def stage_checkpoint(settings: Settings, stage: str, checkpoint: Path | None) -> Path:
    """The live checkpoint path: ``--checkpoint``, else the stage's path in the config."""
    path = checkpoint or getattr(settings.stages, stage).checkpoint
    if path is None:
        raise InputError(
            f"stages.{stage}.checkpoint is empty in the config; pass --checkpoint PATH"
        )
    return Path(path)


def _cells(version: Version) -> list[str]:
    name = "live" if version.live else version.name
    meta = version.meta
    if meta is None:
        return [name, "", "unreadable", "", "", version.problem]
    metrics: dict[str, Any] = meta.metrics
    count = metrics.get("val_count")
    accuracy = metrics.get("val_accuracy")
    lower = metrics.get("val_accuracy_lower")
    acc = "n/a" if accuracy is None else f"{accuracy:.3f}"
    if lower is not None:
        acc += f" (>= {lower:.3f})"
    if count is not None:
        acc += f" on {count}"
    t = meta.thresholds
    if t.get("reached", True):
        bound = t.get("precision_lower")
        threshold = f"{meta.threshold:.3f}"
        if bound is not None:
            threshold += f" (precision >= {bound:.3f} on {t.get('count', 0)})"
    else:
        threshold = "none reached"
    return [
        name,
        meta.id,
        meta.created.replace("T", " ")[:19],
        acc,
        threshold,
        ", ".join(meta.classes),
    ]


def show_versions(destination: Path, stage: str, out: TextIO) -> int:
    """Print the kept versions and the live file, oldest first; returns how many."""
    versions = list_versions(destination, stage)
    if not versions:
        out.write(
            f"no checkpoint at {destination} and no versions in {versions_dir(destination)}\n"
        )
        return 0
    rows = [["version", "id", "created (UTC)", "accuracy", "threshold", "classes"]]
    rows += [_cells(v) for v in versions]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out.write(f"{stage} checkpoint {destination}; kept versions in {versions_dir(destination)}\n")
    for row in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
    return len(versions)


def run_rollback(
    settings: Settings, stage: str, checkpoint: Path | None, wanted: str | None, out: TextIO
) -> Version:
    destination = stage_checkpoint(settings, stage, checkpoint)
    target = rollback(destination, wanted, stage)
    assert target.meta is not None
    out.write(
        f"rolled back {destination} to {target.name} (id {target.meta.id}); the file it "
        f"replaced is kept in {versions_dir(destination)}. A running gensift watch reloads it.\n"
    )
    return target
