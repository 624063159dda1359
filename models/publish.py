"""Publishing a checkpoint: candidate -> live file, the replaced one kept as a version.

For a stage whose live checkpoint is ``models/feature.safetensors``:

```
models/feature.safetensors              what the daemon serves
models/feature.report/                  its report
models/feature.candidate.safetensors    a trained candidate the gate refused (and its
models/feature.candidate.report/        report), until the next run or --force
models/feature.versions/                the files it replaced, newest last, the last
    20261204T171500Z-0e982eb058c4.safetensors      VERSIONS_KEPT of them, each with its
    20261204T171500Z-0e982eb058c4.report/          report
```

:func:`install` is the one way a checkpoint becomes live, for ``train``, ``retrain``
and ``models rollback`` alike: the file being replaced is kept as a version first,
then the new one is written to a temporary name beside the live file, fsynced and
renamed over it, so the running daemon (which polls the file) only ever sees the old
file or the new one, and hot-reloads it like any new checkpoint.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from loguru import logger

from gensift.models.checkpoint import CheckpointError, CheckpointMeta, read_checkpoint
from gensift.models.errors import InputError
from gensift.models.fsutil import publish

#: how many replaced checkpoints are kept beside the live one
VERSIONS_KEPT = 5


def report_dir_for(checkpoint: Path) -> Path:
    """``models/quality.safetensors`` -> ``models/quality.report``."""
    return checkpoint.with_name(checkpoint.stem + ".report")


def candidate_for(destination: Path) -> Path:
    """``models/quality.safetensors`` -> ``models/quality.candidate.safetensors``."""
    return destination.with_name(f"{destination.stem}.candidate{destination.suffix}")


def versions_dir(destination: Path) -> Path:
    return destination.with_name(destination.stem + ".versions")


@dataclass(frozen=True)
class Version:
    """A kept checkpoint file, or the live one; ``meta`` is None where it cannot be read."""

    path: Path
    meta: CheckpointMeta | None
    problem: str = ""
    live: bool = False

    @property
    def name(self) -> str:
        return self.path.stem

    def matches(self, wanted: str) -> bool:
        """Whether ``wanted`` names this version: its file name, stem, or a prefix of its id."""
        if wanted in (self.path.name, self.name):
            return True
        return self.meta is not None and len(wanted) >= 4 and self.meta.id.startswith(wanted)


def _read(path: Path, stage: str | None = None) -> Version:
    try:
        return Version(path, read_checkpoint(path, stage=stage)[1])
    except CheckpointError as exc:
        return Version(path, None, str(exc))


def _version_name(version: Version) -> str:
    if version.meta is None:
        stamp = datetime.fromtimestamp(version.path.stat().st_mtime, UTC)
        return f"{stamp:%Y%m%dT%H%M%SZ}-unreadable"
    created = datetime.fromisoformat(version.meta.created) if version.meta.created else None
    stamp = (created or datetime.now(UTC)).astimezone(UTC)
    return f"{stamp:%Y%m%dT%H%M%SZ}-{version.meta.id}"


def _copy_file(source: Path, target: Path) -> None:
    """``target`` becomes a copy of ``source``: a hard link where the filesystem allows."""
    try:
        os.link(source, target)
    except OSError:
        publish(target, lambda tmp: shutil.copyfile(source, tmp))


def _replace_folder(source: Path, target: Path) -> None:
    """``target`` becomes a copy of the folder ``source`` (nothing if ``source`` is missing)."""
    if not source.is_dir() or source.resolve() == target.resolve():
        return
    staging = target.with_name(f".gensift-tmp-{target.name}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def _keep_current(destination: Path) -> Path | None:
    """Keep the live file (and its report) as a version; returns where, or None if no file."""
    if not destination.is_file():
        return None
    current = _read(destination)
    folder = versions_dir(destination)
    folder.mkdir(parents=True, exist_ok=True)
    kept = folder / f"{_version_name(current)}{destination.suffix}"
    if not kept.exists():
        _copy_file(destination, kept)
        _replace_folder(report_dir_for(destination), report_dir_for(kept))
    return kept


def _prune(destination: Path, keep: int = VERSIONS_KEPT) -> None:
    folder = versions_dir(destination)
    if not folder.is_dir():
        return
    files = sorted(p for p in folder.iterdir() if p.suffix == destination.suffix)
    for old in files[: max(0, len(files) - keep)]:
        logger.info("removing old checkpoint version {}", old)
        old.unlink(missing_ok=True)
        shutil.rmtree(report_dir_for(old), ignore_errors=True)


def install(source: Path, destination: Path, report: Path | None = None) -> Path | None:
    """Make ``source`` the live checkpoint at ``destination``, atomically.

    The file it replaces (if any) is kept first under ``<stem>.versions/`` with its
    report, and only the last :data:`VERSIONS_KEPT` are kept. ``report`` (the new file's
    report folder) is copied to ``<stem>.report/``. Returns the kept version's path.
    """
    source, destination = Path(source), Path(destination)
    kept = _keep_current(destination)
    publish(destination, lambda tmp: shutil.copyfile(source, tmp))
    if report is not None:
        _replace_folder(report, report_dir_for(destination))
    _prune(destination)
    logger.info(
        "published {} as {}{}",
        source,
        destination,
        f" (the previous one kept as {kept})" if kept else "",
    )
    return kept


def discard_candidate(destination: Path) -> None:
    """Remove a candidate (and its report) left beside ``destination`` by an earlier run."""
    candidate = candidate_for(destination)
    candidate.unlink(missing_ok=True)
    shutil.rmtree(report_dir_for(candidate), ignore_errors=True)


def list_versions(destination: Path, stage: str | None = None) -> list[Version]:
    """The kept versions, oldest first, then the live file (``live=True``) if there is one."""
    destination = Path(destination)
    folder = versions_dir(destination)
    kept = (
        sorted(p for p in folder.iterdir() if p.suffix == destination.suffix)
        if folder.is_dir()
        else []
    )
    versions = [_read(p, stage) for p in kept]
    if destination.is_file():
        live = _read(destination, stage)
        versions.append(Version(live.path, live.meta, live.problem, live=True))
    return versions


def rollback(destination: Path, wanted: str | None = None, stage: str | None = None) -> Version:
    """Put a kept version back as the live checkpoint (through :func:`install`).

    ``wanted`` names it (file name, stem or id prefix); None means the newest kept
    version that is not what is live now.
    """
    versions = list_versions(destination, stage)
    live = next((v for v in versions if v.live), None)
    kept = [v for v in versions if not v.live]
    if wanted is None:
        choices = [
            v
            for v in kept
            if v.meta is not None
            and (live is None or live.meta is None or v.meta.id != live.meta.id)
        ]
        if not choices:
            raise InputError(
                f"{destination}: no earlier version to roll back to "
                f"(kept versions live in {versions_dir(destination)})"
            )
        target = choices[-1]
    else:
        matches = [v for v in kept if v.matches(wanted)]
        if len(matches) != 1:
            names = ", ".join(v.name for v in kept) or "none"
            what = "no" if not matches else "more than one"
            raise InputError(
                f"{destination}: {what} kept version matches {wanted!r} (kept: {names})"
            )
        target = matches[0]
    if target.meta is None:
        raise InputError(f"{target.path}: cannot roll back to it: {target.problem}")
    install(target.path, destination, report_dir_for(target.path))
    return target
