"""Publishing files atomically: the one way gensift writes a file a reader may be watching."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

#: prefix of every temporary file gensift writes; the watcher ignores these names
TEMP_PREFIX = ".gensift-tmp-"


def publish(target: Path, write: Callable[[Path], None]) -> None:
    """Write through ``write(tmp)`` to a temporary name beside ``target``, fsync, rename.

    The temporary file is created by ``write`` itself (not ``mkstemp``), so the result has
    the user's usual permissions rather than 0600: a service running as another user can
    still read a checkpoint. A reader never sees a half-written ``target``.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}{target.suffix}")
    try:
        write(tmp)
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename or unlink in ``folder`` durable (POSIX; a no-op elsewhere).

    Best effort: some network and FUSE filesystems refuse to open or fsync a
    folder, and the operation it follows has already happened.
    """
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
