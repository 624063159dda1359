"""Which folders the daemon watches and which it must never look into.

Kept free of torch so that ``gensift service install`` can check a layout at the prompt
without a minute of importing models.
"""

from __future__ import annotations

from pathlib import Path

from gensift.daemon.config import Settings
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


def check_layout(settings: Settings) -> None:
    """Refuse a watched folder inside the output root: gensift would sift its own output."""
    root = settings.output.root.resolve()
    for path, real in zip(settings.watch.paths, watched_roots(settings), strict=True):
        if real.is_relative_to(root):
            raise InputError(
                f"watch.paths: {path} is inside output.root ({settings.output.root}); files "
                f"gensift routes there would be watched again. Watch a folder outside the "
                f"output root (the root may be inside a watched folder: it is skipped)"
            )
