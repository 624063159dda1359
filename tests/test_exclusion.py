"""No spelling of the output root makes sorted files route again.

The folders gensift never picks files from (the output root, the training reports) are
known by device and inode, so a bind mount of the root inside a watched folder, a symlinked
or ``..`` spelling of it, or another case of its name on a case-insensitive disk is the same
folder; and a file at the destination of a finished move, with the size and modification
time it had there, is never decided again. Real mounts where this machine allows them (as
root: ``mount --bind``, a loop-mounted image); skipped, saying why, where it does not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sortkit import check_ledger, decisions, fill_inbox, sha, tiny_checkpoint, write_config
from watchkit import daemon_thread, drawn_files, wait_decided, wait_for

from gensift.daemon.cli import main
from gensift.daemon.config import OutputSettings
from gensift.daemon.routing.folders import Excluded
from gensift.daemon.routing.journal import Journal
from gensift.daemon.routing.records import Decision, FileInfo
from gensift.daemon.routing.recovery import restore
from gensift.daemon.routing.router import Router
from gensift.daemon.runtime import rescan as rescan_module
from gensift.daemon.runtime.paths import discover, undecided


def _sort(config: Path, *args: str) -> int:
    return main(["sort", *args, "-c", str(config), "--no-progress"])


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False)


def _said(done: subprocess.CompletedProcess[str]) -> str:
    """The first line of what a command wrote to stderr (mount adds a hint about dmesg)."""
    lines = done.stderr.strip().splitlines()
    return lines[0] if lines else f"exit {done.returncode}"


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` by relative path, with its digest."""
    return {str(p.relative_to(root)): sha(p) for p in sorted(root.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def bind_mount(source: Path, target: Path) -> Iterator[Path]:
    """``source`` seen a second time at ``target`` (``mount --bind``; needs root)."""
    if sys.platform != "linux" or shutil.which("mount") is None:
        pytest.skip("bind mounts need Linux and mount(8)")
    target.mkdir(parents=True, exist_ok=True)
    done = _run("mount", "--bind", str(source), str(target))
    if done.returncode != 0:
        pytest.skip(f"mount --bind is not permitted here: {_said(done)}")
    try:
        yield target
    finally:
        _run("umount", "-l", str(target))


def _loop_mount(image: Path, mount: Path, fstype: str, options: str = "loop") -> str | None:
    mount.mkdir(exist_ok=True)
    done = _run("mount", "-t", fstype, "-o", options, str(image), str(mount))
    return None if done.returncode == 0 else _said(done)


def _vfat(work: Path) -> tuple[Path | None, str]:
    if shutil.which("mkfs.vfat") is None:
        return None, "no mkfs.vfat (dosfstools)"
    image, mount = work / "vfat.img", work / "vfat"
    with image.open("wb") as handle:
        handle.truncate(32 << 20)
    made = _run("mkfs.vfat", str(image))
    if made.returncode != 0:
        return None, f"mkfs.vfat failed: {_said(made)}"
    failed = _loop_mount(image, mount, "vfat", f"loop,uid={os.getuid()},gid={os.getgid()}")
    return (None, f"vfat: {failed}") if failed else (mount, "")


def _casefold_ext4(work: Path) -> tuple[Path | None, str]:
    if shutil.which("mkfs.ext4") is None or shutil.which("chattr") is None:
        return None, "no mkfs.ext4 or chattr"
    image, mount = work / "ext4.img", work / "ext4"
    with image.open("wb") as handle:
        handle.truncate(16 << 20)
    made = _run("mkfs.ext4", "-q", "-O", "casefold", str(image))
    if made.returncode != 0:
        return None, f"mkfs.ext4 -O casefold failed: {_said(made)}"
    failed = _loop_mount(image, mount, "ext4")
    if failed:
        return None, f"ext4 with casefold: {failed} (a kernel without CONFIG_UNICODE?)"
    folder = mount / "folded"
    folder.mkdir()
    marked = _run("chattr", "+F", str(folder))
    if marked.returncode != 0:
        _run("umount", str(mount))
        return None, f"chattr +F failed: {_said(marked)}"
    return folder, ""


def _xfs_ascii_ci(work: Path) -> tuple[Path | None, str]:
    if shutil.which("mkfs.xfs") is None:
        return None, "no mkfs.xfs (xfsprogs)"
    image, mount = work / "xfs.img", work / "xfs"
    with image.open("wb") as handle:
        handle.truncate(320 << 20)  # sparse; mkfs.xfs refuses less than 300 MB
    made = _run("mkfs.xfs", "-q", "-n", "version=ci", str(image))
    if made.returncode != 0:
        return None, f"mkfs.xfs -n version=ci failed: {_said(made)}"
    failed = _loop_mount(image, mount, "xfs")
    return (None, f"xfs with ascii-ci: {failed}") if failed else (mount, "")


@contextlib.contextmanager
def case_insensitive_folder(work: Path) -> Iterator[Path]:
    """An empty folder on a case-insensitive filesystem (a loop-mounted image; needs root):
    vfat, else ext4 with casefold, else XFS with ascii-ci; skips, saying why, if none mounts."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("loop-mounting a filesystem image needs Linux and root")
    work.mkdir()
    reasons: list[str] = []
    makers: list[Callable[[Path], tuple[Path | None, str]]] = [_vfat, _casefold_ext4, _xfs_ascii_ci]
    for make in makers:
        folder, why = make(work)
        if folder is None:
            reasons.append(why)
            continue
        mount = folder if folder.parent == work else folder.parent
        try:
            (folder / "Probe").mkdir()
            if not (folder / "probe").is_dir():
                reasons.append(f"{make.__name__}: mounted, but names are case-sensitive")
                continue
            (folder / "Probe").rmdir()
            yield folder
            return
        finally:
            _run("umount", "-l", str(mount))
    pytest.skip("no case-insensitive filesystem can be made here: " + "; ".join(reasons))


# --- a bind mount of the output root inside the watched folder --------------------------------


def test_sort_does_not_route_sorted_files_again_through_a_bind_mount_of_the_root(
    tmp_path: Path,
) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    originals = fill_inbox(inbox)
    config = write_config(tmp_path, None, tiny_checkpoint(tmp_path, favour="a"))
    assert _sort(config, str(inbox)) == 0
    journal = tmp_path / "journal.sqlite3"
    rows, sorted_tree = len(decisions(journal)), _tree(out)

    with bind_mount(out, inbox / "mirror") as mirror:  # the root a second time, in the inbox
        assert (mirror / "a").is_dir()
        assert _sort(config, str(inbox), "--recursive") == 0
        assert _tree(out) == sorted_tree  # nothing renamed, nothing moved
    assert len(decisions(journal)) == rows
    check_ledger(originals, journal, out)


def test_the_daemon_never_picks_sorted_files_through_a_bind_mount_of_the_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    originals = fill_inbox(inbox)
    config = write_config(tmp_path, None, tiny_checkpoint(tmp_path, favour="a"),
                          rescan_seconds=0.5)  # fmt: skip
    assert _sort(config, str(inbox)) == 0
    journal = tmp_path / "journal.sqlite3"
    sorted_rows = len(decisions(journal))
    scans: list[object] = []
    scan = rescan_module.run_scan

    def counted(*args: object, **kwargs: object) -> rescan_module.ScanResult:
        result = scan(*args, **kwargs)  # type: ignore[arg-type]
        scans.append(result)
        return result

    monkeypatch.setattr(rescan_module, "run_scan", counted)  # the real scan, counted
    with bind_mount(out, inbox / "mirror"):
        with daemon_thread(config):
            # new files still arrive and are sorted into the root the mirror shows
            new = drawn_files(tmp_path / "staged", 3, prefix="new")
            for path in new:
                shutil.copy(path, inbox / path.name)
            wait_decided(journal, sorted_rows + len(new))
            seen = len(scans)
            wait_for(lambda: len(scans) >= seen + 3, what="three rescans after the new files")
        rows = decisions(journal)
    assert len(rows) == sorted_rows + len(new)
    assert not [e for e in rows if e.source.is_relative_to(inbox / "mirror")]
    originals.update({inbox / p.name: sha(p) for p in new})
    check_ledger(originals, journal, out)


def test_a_root_spelled_through_a_symlink_and_dots_is_never_sorted_again(
    tmp_path: Path,
) -> None:
    inbox = tmp_path / "inbox"
    originals = fill_inbox(inbox)
    (inbox / "sorted").mkdir()
    (tmp_path / "link").symlink_to(inbox, target_is_directory=True)
    spelled = tmp_path / "link" / ".." / "link" / "sorted"  # the root inside the watched folder
    config = write_config(tmp_path, None, tiny_checkpoint(tmp_path, favour="a"), root=spelled)
    assert _sort(config, str(inbox), "--recursive") == 0
    journal = tmp_path / "journal.sqlite3"
    rows, tree = len(decisions(journal)), _tree(inbox / "sorted")
    assert _sort(config, str(tmp_path / "link"), "--recursive") == 0
    assert _sort(config, str(inbox), "--recursive") == 0
    assert len(decisions(journal)) == rows and _tree(inbox / "sorted") == tree
    check_ledger(originals, journal, spelled)


def test_excluded_knows_the_root_by_any_spelling_and_once_it_appears(tmp_path: Path) -> None:
    root = tmp_path / "out"
    clock = [0.0]
    excluded = Excluded([tmp_path / "." / "out"], clock=lambda: clock[0])
    assert excluded.holds(root / "a")  # not there yet: by its resolved path
    assert not excluded.holds(tmp_path / "inbox")
    (root / "a").mkdir(parents=True)
    (tmp_path / "spelled").symlink_to(root, target_is_directory=True)
    clock[0] += 60  # looked for again: from now on by device and inode
    assert excluded.holds(tmp_path / "spelled" / "a")
    assert excluded.holds(tmp_path / "spelled" / ".." / "out" / "a")
    assert excluded.is_one(tmp_path / "spelled") and not excluded.is_one(root / "a")
    assert not excluded.holds(tmp_path / "inbox")


# --- another case of the root's name on a case-insensitive disk ------------------------------


def test_another_case_of_the_roots_name_is_the_same_folder(tmp_path: Path) -> None:
    with case_insensitive_folder(tmp_path / "ci") as disk:
        inbox = disk / "inbox"
        originals = fill_inbox(inbox, broken=False)
        (inbox / "Sorted").mkdir()  # on disk "Sorted"; the config says "sorted"
        config = write_config(tmp_path, None, tiny_checkpoint(tmp_path, favour="a"),
                              inbox=inbox, root=inbox / "sorted")  # fmt: skip
        assert _sort(config, str(inbox)) == 0
        journal = tmp_path / "journal.sqlite3"
        rows, tree = len(decisions(journal)), _tree(inbox / "Sorted")
        assert tree  # the files are there, under the name the disk keeps
        found = discover([inbox], ["*.png"], recursive=True, exclude=[inbox / "sorted"])
        assert found == []  # a scan lists "Sorted": the same folder as "sorted"
        assert _sort(config, str(inbox), "--recursive") == 0
        assert len(decisions(journal)) == rows and _tree(inbox / "Sorted") == tree
        check_ledger(originals, journal, inbox / "sorted")


# --- the journal's destinations ---------------------------------------------------------------


def test_a_file_at_the_destination_of_a_finished_move_is_not_decided_again(
    tmp_path: Path,
) -> None:
    src = tmp_path / "inbox" / "gen.png"
    src.parent.mkdir()
    src.write_bytes(b"\x89PNG not really, but bytes")
    st = src.stat()
    info = FileInfo(src, st.st_size, st.st_mtime_ns, sha(src))
    with Journal.open(tmp_path / "j.sqlite3") as journal:
        router = Router(OutputSettings(root=tmp_path / "out"), journal, "run-1")
        moved = router.apply(info, Decision("move", "class", "red", 0.9), {})
        assert moved.state == "done" and moved.destination is not None
        # seen at its destination (a scan through any spelling that slipped by): decided
        assert undecided([moved.destination], journal) == ([], 1)
        # another file at that name later (other size or time) is new
        [entry] = journal.finished()
        assert restore(journal, entry, "undo-1").state == "done"
        moved.destination.write_bytes(b"another file, later, same name")
        assert undecided([moved.destination], journal) == ([moved.destination], 0)
