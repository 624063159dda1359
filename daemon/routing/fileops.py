"""Moving a user's files without ever overwriting or losing one.

:func:`transfer` moves ``src`` to ``dst`` and raises ``FileExistsError`` if
``dst`` exists, whatever the filesystem:

* same filesystem: ``os.link(src, dst)`` (atomic, refuses an existing name)
  then ``unlink(src)``; a crash in between leaves two names for one file,
  which repair resolves by removing the source;
* no hard links there (FAT, some network shares): the name is reserved with
  ``O_CREAT | O_EXCL`` and ``os.replace`` renames the file over our own empty
  placeholder (removed again if the rename fails: a source that vanished leaves
  no empty file behind);
* another filesystem: the bytes are copied to ``<dst dir>/.gensift-tmp-<tag>-<name>``,
  fsynced and placed as above, and only then is the source removed.

The bytes are never re-encoded (PNG text chunks survive); the modification
time is kept. A copy checks the source against the size and modification time
the journal recorded, and that it did not change while it was copied; if it
did, the copy is dropped and :class:`SourceChangedError` says so (the source
is untouched: a file still being written never loses its tail).

:func:`free_name` finds a name no file has in a few probes, however many
``name-N.png`` there are; :func:`confined` refuses a class name that would lead
outside the output root; :func:`shown` spells a path for people (names that are not UTF-8
escaped).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from gensift.models.errors import InputError
from gensift.models.fsutil import TEMP_PREFIX, fsync_dir


class UnsafeDestinationError(InputError):
    """A destination would escape the output root."""


class SourceChangedError(OSError):
    """The source was not the file the journal recorded, or changed while it was copied;
    nothing was moved."""


def shown(path: os.PathLike[str] | str) -> str:
    """``path`` as text for a log, a terminal, JSON or CSV: bytes that are not UTF-8 (a
    name from an old archive) appear as ``\\xff``, so printing it can never fail."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    return text


def confined(root: Path, folder: str) -> Path:
    """``root/folder`` for a class name that is one plain folder name; refused otherwise.

    A name with a separator, ``..``, ``.``, a drive or nothing at all could put files
    outside the output root (or in it, outside every class): a checkpoint trained on
    such "classes" is refused whole (:class:`UnsafeDestinationError`). Where a class folder
    that is a symlink leads is :class:`gensift.daemon.routing.folders.ClassFolders`' question.
    """
    path = Path(folder)
    if folder in ("", ".", "..") or path.name != folder or path.anchor or "/" in folder:
        raise UnsafeDestinationError(
            f"class {folder!r} would put files outside the output root {root}; refused"
        )
    return root / folder


#: how many of ``name-1`` ... ``name-N`` are tried one by one before :func:`free_name` jumps
LINEAR_PROBES = 4


def numbered(folder: Path, name: str, n: int) -> Path:
    """``folder/name`` for ``n = 0``, else ``folder/stem-n.ext``."""
    if n == 0:
        return folder / name
    stem, suffix = Path(name).stem, Path(name).suffix
    return folder / f"{stem}-{n}{suffix}"


def free_name(folder: Path, name: str, taken: Callable[[Path], bool] = os.path.lexists) -> Path:
    """A name in ``folder`` that ``taken`` says is free: ``name``, else ``stem-1.ext`` ...

    The first few numbers are tried in turn (the usual case: the lowest free one); past
    them the number doubles until one is free and bisection finds the first free one
    after the taken run, so 10,000 existing ``stem-N.ext`` cost about 30 probes, not
    10,000. The name is only a candidate: the move creates it with ``O_EXCL`` (or
    ``link``), which refuses a name taken meanwhile, and then asks again.
    """
    for n in range(LINEAR_PROBES + 1):
        path = numbered(folder, name, n)
        if not taken(path):
            return path
    low, high = LINEAR_PROBES, 2 * LINEAR_PROBES  # low is taken; find a free high
    while taken(numbered(folder, name, high)):
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        if taken(numbered(folder, name, middle)):
            low = middle
        else:
            high = middle
    return numbered(folder, name, high)


def temp_path(dst: Path, tag: str) -> Path:
    """Where a cross-filesystem copy to ``dst`` is staged (ignored by the watcher)."""
    return dst.with_name(f"{TEMP_PREFIX}{tag}-{dst.name}")


#: :func:`temp_path` names (the tag is a journal row id); ``models`` stages checkpoints
#: under the same prefix with a hex tag and no dash, which this does not match
TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + r"[0-9]+-.", re.DOTALL)


def transfer(
    src: Path,
    dst: Path,
    tag: str,
    *,
    copy: bool = False,
    expect: tuple[int, int] | None = None,
    sync: bool = True,
) -> None:
    """Move ``src`` to ``dst``; ``FileExistsError`` if ``dst`` exists (nothing changed then).

    ``copy`` forces the cross-filesystem path; ``tag`` names its temporary file. A copy
    raises :class:`SourceChangedError` (and moves nothing) when the source's size and
    modification time are not ``expect`` (what the journal recorded), or change while it
    is copied. On one filesystem the file keeps its inode, so a writer that still holds
    it open writes to the moved file and loses nothing.

    Without ``sync`` a move on one filesystem leaves syncing the folders to the caller
    (the router syncs a batch's folders once, before it records the moves done); a
    copy always syncs, since its source may only go once the copy is on disk.
    """
    if not copy:
        try:
            _place(src, dst)
            if sync:
                fsync_dir(dst.parent)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
    tmp = temp_path(dst, tag)
    try:
        read = _copy(src, tmp, expect)
        _place(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(dst.parent)
    try:
        _check_unchanged(src, read)
    except FileNotFoundError:
        return  # removed meanwhile: ``dst`` is now the only copy and must stay
    except OSError:  # changed, or cannot be looked at: the source stays the only file
        dst.unlink()
        fsync_dir(dst.parent)
        raise
    _remove_source(src, dst)
    fsync_dir(src.parent)


def _copy(src: Path, tmp: Path, expect: tuple[int, int] | None) -> os.stat_result:
    """Copy ``src`` to the new file ``tmp`` (fsynced, with the source's times); the source's
    status as read, checked against ``expect`` before and against itself after."""
    with src.open("rb") as reader:
        before = os.fstat(reader.fileno())
        if expect is not None and (before.st_size, before.st_mtime_ns) != expect:
            raise _changed(src, "since it was read", expect[0], before)
        with tmp.open("xb") as writer:
            shutil.copyfileobj(reader, writer, 1 << 20)
            writer.flush()
            os.fsync(writer.fileno())
            copied = writer.tell()
        after = os.fstat(reader.fileno())
    if copied != before.st_size or _signature(after) != _signature(before):
        raise _changed(src, "while it was copied", before.st_size, after)
    _keep_times(before, tmp)
    return before


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _check_unchanged(src: Path, read: os.stat_result) -> None:
    """Raise unless ``src`` is still the file that was copied, as it was."""
    now = src.stat()
    if _signature(now) != _signature(read):
        raise _changed(src, "while it was copied", read.st_size, now)


def _changed(src: Path, when: str, size: int, now: os.stat_result) -> SourceChangedError:
    detail = f"{now.st_size} bytes, {size} expected" if now.st_size != size else "rewritten"
    return SourceChangedError(
        errno.EAGAIN, f"{shown(src)} changed {when} ({detail}); nothing was moved"
    )


def _keep_times(st: os.stat_result, copy: Path) -> None:
    """Give the copy the source's times ``st``; best effort (CIFS shares refuse utime)."""
    with contextlib.suppress(OSError):
        os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))


def _place(src: Path, dst: Path) -> None:
    """Give ``src``'s file the name ``dst`` (same filesystem), never replacing one."""
    if os.name == "nt":
        # Windows' rename refuses an existing name (FileExistsError), is atomic, and works
        # on files another program holds open, where unlinking a hard link would not.
        src.rename(dst)
        return
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise
        # No hard links on this filesystem: reserve the name, then rename over our placeholder.
        fd = os.open(dst, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            placeholder = os.fstat(fd)
        finally:
            os.close(fd)
        try:
            src.replace(dst)
        except OSError:  # the rename did not happen (the source vanished, say)
            _drop_placeholder(dst, placeholder)
            raise
        return
    _remove_source(src, dst)


def _drop_placeholder(dst: Path, placeholder: os.stat_result) -> None:
    """Remove ``dst`` if it is still the empty file we created to reserve the name."""
    try:
        st = os.lstat(dst)
    except FileNotFoundError:
        return
    if st.st_size == 0 and (st.st_dev, st.st_ino) == (placeholder.st_dev, placeholder.st_ino):
        dst.unlink()


def _remove_source(src: Path, dst: Path) -> None:
    """Remove ``src`` now that ``dst`` holds its bytes; if that fails, take ``dst`` back
    so the file is still in exactly one place, and re-raise.

    Only an ``OSError`` with the source still there takes ``dst`` back: after an
    interrupt (Ctrl-C) both names may remain, and journal repair settles them.
    """
    try:
        src.unlink()
    except FileNotFoundError:
        return  # already gone: ``dst`` is now the only copy and must stay
    except OSError:
        if src.exists():
            dst.unlink(missing_ok=True)
        raise


def same_content(path: Path, size: int, sha256: str) -> bool:
    """Whether ``path`` holds exactly the bytes the journal recorded."""
    try:
        if path.stat().st_size != size:
            return False
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return False
    return digest.hexdigest() == sha256
