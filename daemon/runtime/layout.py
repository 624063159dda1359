"""Which folders the daemon watches and which it must never look into.

Kept free of torch so that ``gensift service install`` can check a layout at the prompt
without a minute of importing models.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from loguru import logger

from gensift.daemon.config import Settings
from gensift.daemon.routing.folders import ClassFolders
from gensift.models.errors import InputError


def exclusions(settings: Settings) -> list[Path]:
    """Folders never watched or scanned: the output root and the training reports."""
    excluded = [settings.output.root]
    for stage in (settings.stages.quality, settings.stages.feature):
        if stage.checkpoint is not None:
            excluded.append(stage.checkpoint.with_suffix(".report"))
    return excluded


def watched_roots(settings: Settings) -> list[Path]:
    """The watched folders with symlinks resolved: an observer scheduled on a symlink sees
    nothing inside it, and events and scans must name each file the same way."""
    return [path.resolve() for path in settings.watch.paths]


def class_folders(settings: Settings, also: Iterable[tuple[Path, bool]] = ()) -> ClassFolders:
    """The judge of symlinked class folders for ``settings``: none may lead into a watched
    folder, or into one of ``also`` ((folder, recursive) pairs: the folders ``sort`` reads)."""
    watched = [(path, settings.watch.recursive) for path in settings.watch.paths]
    return ClassFolders(
        settings.output.root, watched=[*watched, *also], excluded=exclusions(settings)
    )


def check_layout(settings: Settings) -> None:
    """Refuse a watched folder inside the output root (whatever the spelling: by device and
    inode where the root exists): gensift would sift its own output."""
    root = settings.output.root
    for path, real in zip(settings.watch.paths, watched_roots(settings), strict=True):
        if _within(real, root):
            raise InputError(
                f"watch.paths: {path} is inside output.root ({settings.output.root}); files "
                f"gensift routes there would be watched again. Watch a folder outside the "
                f"output root (the root may be inside a watched folder: it is skipped)"
            )


# --- training data ---------------------------------------------------------------------------


def _within(inner: Path, outer: Path) -> bool:
    """``inner`` is ``outer`` or below it: by device and inode where ``outer`` exists (so a
    symlink, a bind mount or another spelling on a case-insensitive disk is caught), else by
    resolved path."""
    real = inner.resolve()
    try:
        target = outer.stat()
    except OSError:
        return real.is_relative_to(outer.resolve())
    for folder in (real, *real.parents):
        try:
            if os.path.samestat(folder.stat(), target):
                return True
        except OSError:  # not there (yet): its parents may still be
            continue
    return False


def _relation(data: Path, folder: Path) -> str | None:
    """How training data at ``data`` overlaps ``folder``: "is", "is inside", "contains"."""
    if _within(data, folder):
        return "is" if _within(folder, data) else "is inside"
    return "contains" if _within(folder, data) else None


def check_training_data(
    settings: Settings,
    data: Path,
    *,
    option: str = "--data",
    allow_sorted: bool = False,
    allow_watched: bool = False,
) -> None:
    """Refuse examples that live in the daemon's own folders (the config's, when one was read).

    * The output root: its class folders hold what the current models sorted there, not
      labels a person chose; training on them unreviewed teaches a model its own mistakes
      and lets the gate judge it on them. ``allow_sorted`` (``--allow-sorted-data``) is the
      user saying they reviewed them; ``_rejected/`` and ``_review/`` are never classes.
    * A watched folder: the daemon moves files out of it while training reads them. With
      ``watch.recursive = false`` only the files directly in it are sorted, so class
      folders below it are safe; data around it (the watched folder as a "class") is not.
    """
    config = settings.source
    if config is None:
        return
    root = settings.output.root
    relation = _relation(data, root)
    if relation is not None:
        if allow_sorted:
            logger.warning(
                "{} {}: training on gensift's output root (output.root {}), as "
                "--allow-sorted-data says",
                option,
                data,
                root,
            )
            return
        raise InputError(_sorted_data_problem(option, data, relation, root, config))
    for watched in settings.watch.paths:
        relation = _relation(data, watched)
        if relation is None or (relation != "contains" and not settings.watch.recursive):
            continue  # class folders below a folder watched without recursion are not sorted
        if allow_watched:
            logger.warning(
                "{} {}: training on images in watched folder {}, as --allow-watched-data says",
                option,
                data,
                watched,
            )
            return
        where = _describe(relation, watched)
        raise InputError(
            f"{option} {data} {where} (watch.paths "
            f"in {config}): gensift watch moves new images out of it while training reads "
            f"them, and they are the generator's unlabelled output. Copy your examples to a "
            f"folder outside watch.paths, or pass --allow-watched-data if no daemon watches it"
        )


def _sorted_data_problem(option: str, data: Path, relation: str, root: Path, config: Path) -> str:
    where = f"(output.root in {config})"
    if relation == "contains":
        return (
            f"{option} {data} contains gensift's output root {root} {where}: everything "
            f"gensift sorted there would be read as examples of the one class folder that "
            f"holds it. Point {option} at class folders outside the output root, or pass "
            f"--allow-sorted-data"
        )
    at = (
        "is gensift's output root"
        if relation == "is"
        else f"is inside gensift's output root {root}"
    )
    skipped = "; _rejected/ and _review/ are never used as classes" if relation == "is" else ""
    return (
        f"{option} {data} {at} {where}: its class folders hold what the current models "
        f"sorted, not labels you chose, so a model trained on them learns its own mistakes "
        f"and the gate judges it on them too. Review them first (move misfiled images to the "
        f"right class folder), then pass --allow-sorted-data{skipped}"
    )


def _describe(relation: str, folder: Path) -> str:
    if relation == "is":
        return "is a watched folder"
    if relation == "is inside":
        return f"is inside the watched folder {folder}"
    return f"contains the watched folder {folder}"
