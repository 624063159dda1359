"""Moving files without losing one: fileops.transfer, the journal, the router, repair, restore.

Everything here runs on real files in ``tmp_path`` and a real SQLite journal; the one fake is a
hard-link-less filesystem (``os.link`` raising EPERM), which cannot be mounted here.
"""

from __future__ import annotations

import errno
import hashlib
import ntpath
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest
import send2trash
import send2trash.exceptions
from conftest import draw

from gensift.daemon.config import OutputSettings
from gensift.daemon.routing import router as router_module
from gensift.daemon.routing.fileops import (
    SourceChangedError,
    UnsafeDestinationError,
    confined,
    free_name,
    same_content,
    temp_path,
    transfer,
)
from gensift.daemon.routing.journal import Journal
from gensift.daemon.routing.records import Decision, FileInfo
from gensift.daemon.routing.recovery import remove_temporaries, repair, restore
from gensift.daemon.routing.router import Router, summary_label, trash_keeps_files
from gensift.models.fsutil import TEMP_PREFIX

RUN = "run-1"
CHECKPOINTS = {"quality": "aaaaaaaaaaaa", "feature": "bbbbbbbbbbbb"}
OLD = 1_600_000_000  # a modification time in the past, in seconds

MOVE = Decision("move", "class", "red", 0.93, {"feature": {"red": 0.93, "blue": 0.07}})


def _image(path: Path, seed: int = 0) -> Path:
    """A drawn PNG at ``path`` with an old modification time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draw("red", np.random.default_rng(seed)).save(path)
    os.utime(path, (OLD, OLD))
    return path


def _info(path: Path) -> FileInfo:
    """What the decoder would have recorded about ``path``."""
    data = path.read_bytes()
    return FileInfo(path, len(data), path.stat().st_mtime_ns, hashlib.sha256(data).hexdigest())


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(TEMP_PREFIX)]


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal.open(tmp_path / "j.sqlite3") as opened:
        yield opened


@pytest.fixture
def src_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "outputs"
    folder.mkdir()
    return folder


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


def _router(journal: Journal, out: Path, **kwargs: object) -> Router:
    settings = {k: kwargs.pop(k) for k in ("on_conflict", "reject_action") if k in kwargs}
    return Router(OutputSettings(root=out, **settings), journal, RUN, **kwargs)  # type: ignore[arg-type]


# --- transfer ---------------------------------------------------------------------------------


def _check_moved(src: Path, dst: Path, data: bytes, mtime_ns: int) -> None:
    assert not src.exists()
    assert dst.read_bytes() == data
    assert dst.stat().st_mtime_ns == mtime_ns
    assert not _temp_files(dst.parent)


@pytest.mark.parametrize("copy", [False, True], ids=["link", "copy"])
def test_transfer_moves_bytes_and_mtime(tmp_path: Path, copy: bool) -> None:
    src = _image(tmp_path / "a" / "gen.png")
    data, mtime = src.read_bytes(), src.stat().st_mtime_ns
    dst = tmp_path / "b" / "gen.png"
    dst.parent.mkdir()
    transfer(src, dst, "7", copy=copy)
    _check_moved(src, dst, data, mtime)


@pytest.mark.parametrize("copy", [False, True], ids=["link", "copy"])
def test_transfer_never_overwrites(tmp_path: Path, copy: bool) -> None:
    src = _image(tmp_path / "a" / "gen.png", seed=1)
    dst = _image(tmp_path / "b" / "gen.png", seed=2)
    src_bytes, dst_bytes = src.read_bytes(), dst.read_bytes()
    assert src_bytes != dst_bytes
    with pytest.raises(FileExistsError):
        transfer(src, dst, "7", copy=copy)
    assert src.read_bytes() == src_bytes
    assert dst.read_bytes() == dst_bytes
    assert not _temp_files(tmp_path)


def test_transfer_across_filesystems(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm")
    if shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("/dev/shm is on the same filesystem as tmp_path")
    other = Path(tempfile.mkdtemp(prefix="gensift-test-", dir=shm))
    try:
        src = _image(tmp_path / "gen.png")
        data, mtime = src.read_bytes(), src.stat().st_mtime_ns
        dst = other / "gen.png"
        transfer(src, dst, "7")
        _check_moved(src, dst, data, mtime)
        # and back again, refusing to overwrite on the way
        _image(tmp_path / "gen.png", seed=5)
        with pytest.raises(FileExistsError):
            transfer(dst, tmp_path / "gen.png", "8")
        assert dst.read_bytes() == data
        assert not _temp_files(tmp_path)
    finally:
        shutil.rmtree(other)


@pytest.fixture
def no_hard_links(monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem without hard links (FAT, some network shares)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", refuse)


@pytest.mark.usefixtures("no_hard_links")
@pytest.mark.parametrize("copy", [False, True], ids=["rename", "copy"])
def test_transfer_without_hard_links(tmp_path: Path, copy: bool) -> None:
    src = _image(tmp_path / "a" / "gen.png")
    data, mtime = src.read_bytes(), src.stat().st_mtime_ns
    dst = tmp_path / "b" / "gen.png"
    dst.parent.mkdir()
    transfer(src, dst, "7", copy=copy)
    _check_moved(src, dst, data, mtime)

    again = _image(tmp_path / "a" / "gen.png", seed=3)
    again_bytes = again.read_bytes()
    with pytest.raises(FileExistsError):
        transfer(again, dst, "8", copy=copy)
    assert again.read_bytes() == again_bytes
    assert dst.read_bytes() == data
    assert not _temp_files(tmp_path)


# --- small helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["..", "", "/etc", ".", "red/../..", "../out-other"])
def test_confined_refuses_escapes(tmp_path: Path, folder: str) -> None:
    root = tmp_path / "out"
    root.mkdir()
    with pytest.raises(UnsafeDestinationError, match="outside the output root"):
        confined(root, folder)


def test_confined_judges_the_name_only_a_linked_class_folder_is_the_routers_question(
    tmp_path: Path,
) -> None:
    root = tmp_path / "out"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "red").symlink_to(elsewhere, target_is_directory=True)
    assert confined(root, "red") == root / "red"


def test_confined_accepts_a_class_name(tmp_path: Path) -> None:
    root = tmp_path / "out"
    assert confined(root, "red") == root / "red"
    assert confined(root, "_rejected") == root / "_rejected"


def test_temp_path(tmp_path: Path) -> None:
    tmp = temp_path(tmp_path / "gen.png", "12")
    assert tmp.parent == tmp_path
    assert tmp.name.startswith(TEMP_PREFIX)
    assert tmp.name.endswith("gen.png")


def test_same_content(tmp_path: Path) -> None:
    path = _image(tmp_path / "gen.png")
    info = _info(path)
    assert same_content(path, info.size, info.sha256)
    assert not same_content(path, info.size + 1, info.sha256)
    assert not same_content(path, info.size, "0" * 64)
    assert not same_content(tmp_path / "missing.png", info.size, info.sha256)


# --- the router -------------------------------------------------------------------------------


def test_move_lands_in_the_class_folder_and_is_journaled(
    journal: Journal, src_dir: Path, out: Path
) -> None:
    src = _image(src_dir / "gen.png")
    data, info = src.read_bytes(), _info(src)
    outcome = _router(journal, out).apply(info, MOVE, CHECKPOINTS)
    dst = out / "red" / "gen.png"
    assert outcome.state == "done"
    assert outcome.destination == dst
    assert not src.exists()
    assert dst.read_bytes() == data
    assert dst.stat().st_mtime_ns == info.mtime_ns
    [row] = journal.history()
    assert row.state == "done"
    assert (row.source, row.destination) == (src, dst)
    assert (row.action, row.reason, row.label) == ("move", "class", "red")
    assert row.probability == pytest.approx(0.93)
    assert row.probabilities == {"feature": {"red": 0.93, "blue": 0.07}}
    assert row.checkpoints == CHECKPOINTS
    assert (row.size, row.sha256) == (info.size, info.sha256)
    assert row.run == RUN
    assert journal.decided(info)


def test_same_name_is_renamed(journal: Journal, src_dir: Path, out: Path) -> None:
    first = _image(src_dir / "a" / "gen.png", seed=1)
    second = _image(src_dir / "b" / "gen.png", seed=2)
    first_bytes, second_bytes = first.read_bytes(), second.read_bytes()
    router = _router(journal, out, on_conflict="rename")
    assert router.apply(_info(first), MOVE, CHECKPOINTS).destination == out / "red" / "gen.png"
    outcome = router.apply(_info(second), MOVE, CHECKPOINTS)
    assert outcome.state == "done"
    assert outcome.destination == out / "red" / "gen-1.png"
    assert (out / "red" / "gen.png").read_bytes() == first_bytes
    assert (out / "red" / "gen-1.png").read_bytes() == second_bytes
    assert not first.exists() and not second.exists()
    assert [r.state for r in journal.history()] == ["done", "done"]


def test_same_name_is_skipped(journal: Journal, src_dir: Path, out: Path) -> None:
    first = _image(src_dir / "a" / "gen.png", seed=1)
    second = _image(src_dir / "b" / "gen.png", seed=2)
    first_bytes, second_bytes = first.read_bytes(), second.read_bytes()
    router = _router(journal, out, on_conflict="skip")
    router.apply(_info(first), MOVE, CHECKPOINTS)
    second_info = _info(second)
    outcome = router.apply(second_info, MOVE, CHECKPOINTS)
    assert outcome.state == "skipped"
    assert "already exists" in outcome.note
    assert second.read_bytes() == second_bytes  # left where it was
    assert (out / "red" / "gen.png").read_bytes() == first_bytes
    assert sorted(p.name for p in (out / "red").iterdir()) == ["gen.png"]
    newest = journal.history()[0]
    assert newest.state == "skipped"
    assert newest.source == second
    assert journal.decided(second_info)  # not decided again on the next run


def test_dry_run_changes_nothing_but_plans_the_renames(
    journal: Journal, src_dir: Path, out: Path
) -> None:
    first = _image(src_dir / "a" / "gen.png", seed=1)
    second = _image(src_dir / "b" / "gen.png", seed=2)
    doomed = _image(src_dir / "doomed.png", seed=3)
    before = {p: p.read_bytes() for p in (first, second, doomed)}
    router = _router(journal, out, dry_run=True)
    planned = [
        router.apply(_info(first), MOVE, CHECKPOINTS),
        router.apply(_info(second), MOVE, CHECKPOINTS),
        router.apply(_info(doomed), Decision("delete", "reject", "reject", 0.99), CHECKPOINTS),
        router.apply(_info(doomed), Decision("quarantine", "corrupt"), CHECKPOINTS),
    ]
    assert [o.state for o in planned] == ["planned"] * 4
    assert [o.destination for o in planned] == [
        out / "red" / "gen.png",
        out / "red" / "gen-1.png",
        None,
        out / "_rejected" / "doomed.png",
    ]
    assert {p: p.read_bytes() for p in before} == before
    assert not out.exists()
    assert journal.history() == []


def test_trash_without_a_recycle_bin_quarantines(
    journal: Journal, src_dir: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_bin(path: object) -> None:
        raise send2trash.exceptions.TrashPermissionError(str(path))

    monkeypatch.setattr(send2trash, "send2trash", no_bin)
    src = _image(src_dir / "bad.png")
    data = src.read_bytes()
    decision = Decision("trash", "reject", "reject", 0.97)
    outcome = _router(journal, out, reject_action="trash").apply(_info(src), decision, CHECKPOINTS)
    dst = out / "_rejected" / "bad.png"
    assert outcome.state == "done"
    assert outcome.destination == dst
    assert "recycle bin" in outcome.note
    assert not src.exists()
    assert dst.read_bytes() == data
    done = [r for r in journal.history() if r.state == "done"]
    assert [(r.action, r.destination) for r in done] == [("quarantine", dst)]
    assert "recycle bin" in done[0].note


def test_trash_sends_to_the_recycle_bin(
    journal: Journal, src_dir: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binned: list[Path] = []

    def to_bin(path: os.PathLike[str]) -> None:
        binned.append(Path(path))
        Path(path).unlink()

    monkeypatch.setattr(send2trash, "send2trash", to_bin)
    src = _image(src_dir / "bad.png")
    outcome = _router(journal, out).apply(_info(src), Decision("trash", "blank"), CHECKPOINTS)
    assert outcome.state == "done"
    assert binned == [src]
    assert not out.exists()
    [row] = journal.history()
    assert (row.action, row.state, row.destination) == ("trash", "done", None)


def test_delete_removes_the_file(journal: Journal, src_dir: Path, out: Path) -> None:
    src = _image(src_dir / "bad.png")
    decision = Decision("delete", "reject", "reject", 0.99)
    outcome = _router(journal, out).apply(_info(src), decision, CHECKPOINTS)
    assert outcome.state == "done"
    assert not src.exists()
    assert not out.exists()
    [row] = journal.history()
    assert (row.action, row.reason, row.state, row.source) == ("delete", "reject", "done", src)


def test_leave_leaves_it_and_records_the_decision(
    journal: Journal, src_dir: Path, out: Path
) -> None:
    src = _image(src_dir / "fine.png")
    data, info = src.read_bytes(), _info(src)
    decision = Decision("leave", "keep", "keep", 0.9)
    outcome = _router(journal, out).apply(info, decision, CHECKPOINTS)
    assert outcome.state == "done"
    assert outcome.destination is None
    assert src.read_bytes() == data
    [row] = journal.history()
    assert (row.action, row.reason, row.state, row.destination) == ("leave", "keep", "done", None)
    assert journal.decided(info)


def test_review_goes_to_the_review_folder(journal: Journal, src_dir: Path, out: Path) -> None:
    src = _image(src_dir / "unsure.png")
    data = src.read_bytes()
    outcome = _router(journal, out).apply(
        _info(src), Decision("review", "uncertain", "red", 0.5), CHECKPOINTS
    )
    assert outcome.destination == out / "_review" / "unsure.png"
    assert (out / "_review" / "unsure.png").read_bytes() == data
    assert not src.exists()


@pytest.mark.parametrize("action", ["move", "delete", "leave"])
def test_a_file_changed_since_it_was_read_is_stale(
    journal: Journal, src_dir: Path, out: Path, action: str
) -> None:
    src = _image(src_dir / "gen.png", seed=1)
    old = _info(src)
    _image(src, seed=2)  # rewritten after it was read
    os.utime(src, ns=(old.mtime_ns + 10**9, old.mtime_ns + 10**9))
    data = src.read_bytes()
    decision = Decision(action, "class", "red", 0.9)  # type: ignore[arg-type]
    outcome = _router(journal, out).apply(old, decision, CHECKPOINTS)
    assert outcome.state == "stale"
    assert src.read_bytes() == data
    assert not out.exists()
    assert journal.history() == []


def test_a_class_that_escapes_the_root_moves_nothing(
    journal: Journal, src_dir: Path, out: Path
) -> None:
    src = _image(src_dir / "gen.png")
    data = src.read_bytes()
    with pytest.raises(UnsafeDestinationError):
        _router(journal, out).apply(_info(src), Decision("move", "class", ".."), CHECKPOINTS)
    assert src.read_bytes() == data
    assert journal.history() == []


def test_a_class_folder_linked_to_a_folder_of_ours_is_followed_and_restored(
    journal: Journal, src_dir: Path, out: Path, tmp_path: Path
) -> None:
    src = _image(src_dir / "gen.png")
    data = src.read_bytes()
    big = tmp_path / "big" / "red"
    big.mkdir(parents=True)
    out.mkdir()
    (out / "red").symlink_to(big, target_is_directory=True)
    outcome = _router(journal, out).apply(_info(src), MOVE, CHECKPOINTS)
    assert (outcome.state, outcome.destination) == ("done", out / "red" / "gen.png")
    assert (big / "gen.png").read_bytes() == data and not src.exists()
    [row] = journal.history()
    assert row.destination == out / "red" / "gen.png"  # as spelled under the root
    assert restore(journal, row, "undo-1").state == "done"
    assert src.read_bytes() == data and not list(big.iterdir())


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_a_refused_class_folder_leaves_the_file_and_the_journal_alone(
    journal: Journal, src_dir: Path, out: Path, tmp_path: Path, dry_run: bool
) -> None:
    src = _image(src_dir / "gen.png")
    data = src.read_bytes()
    out.mkdir()
    (out / "red").symlink_to(tmp_path / "not-mounted", target_is_directory=True)
    outcome = _router(journal, out, dry_run=dry_run).apply(_info(src), MOVE, CHECKPOINTS)
    assert (outcome.state, outcome.destination) == ("refused", out / "red")
    assert "does not exist" in outcome.note and str(out / "red") in outcome.note
    assert summary_label(outcome) == "refused: move to red/ (see the error above)"
    assert src.read_bytes() == data
    assert journal.history() == []  # not decided: the next run or rescan tries again
    assert not (tmp_path / "not-mounted").exists()


@pytest.mark.parametrize("force_copy", [False, True], ids=["link", "copy"])
def test_forced_copy_routes_the_same(
    journal: Journal, src_dir: Path, out: Path, force_copy: bool
) -> None:
    src = _image(src_dir / "gen.png")
    data = src.read_bytes()
    outcome = _router(journal, out, force_copy=force_copy).apply(_info(src), MOVE, CHECKPOINTS)
    assert outcome.state == "done"
    assert (out / "red" / "gen.png").read_bytes() == data
    assert not src.exists()
    assert not _temp_files(out)


# --- repair -----------------------------------------------------------------------------------


def _intent(journal: Journal, src: Path, dst: Path | None, action: str = "move") -> int:
    """The row a crash left: an intent for ``src`` (which must exist now) to ``dst``."""
    decision = Decision(action, "class" if action == "move" else "reject", "red", 0.9)  # type: ignore[arg-type]
    return journal.begin(RUN, _info(src), decision, dst, CHECKPOINTS)


@pytest.fixture
def crash(src_dir: Path, out: Path) -> tuple[Path, Path, bytes]:
    src = _image(src_dir / "gen.png", seed=11)
    dst = out / "red" / "gen.png"
    dst.parent.mkdir(parents=True)
    return src, dst, src.read_bytes()


def test_repair_source_only_is_abandoned(journal: Journal, crash) -> None:
    src, dst, data = crash
    entry_id = _intent(journal, src, dst)
    assert repair(journal) == 1
    assert src.read_bytes() == data
    assert not dst.exists()
    assert journal.get(entry_id).state == "abandoned"
    assert not journal.decided(_info(src))  # it will be decided again
    assert repair(journal) == 0


def test_repair_hard_linked_pair_keeps_the_destination(journal: Journal, crash) -> None:
    src, dst, data = crash
    entry_id = _intent(journal, src, dst)
    os.link(src, dst)
    repair(journal)
    assert not src.exists()
    assert dst.read_bytes() == data
    assert journal.get(entry_id).state == "done"


def test_repair_full_copy_keeps_the_destination(journal: Journal, crash) -> None:
    src, dst, data = crash
    entry_id = _intent(journal, src, dst)
    shutil.copy2(src, dst)
    repair(journal)
    assert not src.exists()
    assert dst.read_bytes() == data
    assert journal.get(entry_id).state == "done"


def test_repair_keeps_a_new_file_that_took_the_old_name(journal: Journal, crash) -> None:
    # the copy reached its destination; then the generator wrote a new file at the old name
    src, dst, data = crash
    entry_id = _intent(journal, src, dst)
    shutil.copy2(src, dst)
    src.write_bytes(b"a newer generation")
    repair(journal)
    assert dst.read_bytes() == data
    assert src.read_bytes() == b"a newer generation"
    assert journal.get(entry_id).state == "done"


def test_repair_removes_an_empty_placeholder(journal: Journal, crash) -> None:
    src, dst, data = crash
    entry_id = _intent(journal, src, dst)
    dst.touch()
    repair(journal)
    assert src.read_bytes() == data
    assert not dst.exists()
    assert journal.get(entry_id).state == "abandoned"


def test_repair_never_touches_someone_elses_file(journal: Journal, crash) -> None:
    src, dst, data = crash
    entry_id = _intent(journal, src, dst)
    _image(dst, seed=12)
    theirs = dst.read_bytes()
    assert theirs != data
    repair(journal)
    assert src.read_bytes() == data
    assert dst.read_bytes() == theirs
    entry = journal.get(entry_id)
    assert entry.state == "abandoned"
    assert "another file" in entry.note


def test_repair_destination_only_is_done(journal: Journal, crash) -> None:
    src, dst, data = crash
    entry_id = _intent(journal, src, dst)
    src.rename(dst)
    repair(journal)
    assert not src.exists()
    assert dst.read_bytes() == data
    assert journal.get(entry_id).state == "done"


def test_repair_removes_a_staging_copy(journal: Journal, crash) -> None:
    src, dst, data = crash
    entry_id = _intent(journal, src, dst)
    staged = temp_path(dst, str(entry_id))
    staged.write_bytes(data[: len(data) // 2])  # a copy interrupted half way
    repair(journal)
    assert not staged.exists()
    assert src.read_bytes() == data
    assert not dst.exists()
    assert journal.get(entry_id).state == "abandoned"


def test_repair_staging_copy_placed_but_source_kept(journal: Journal, crash) -> None:
    # a cross-filesystem move that placed its copy (linked to the staging name) and then died
    src, dst, data = crash
    entry_id = _intent(journal, src, dst)
    staged = temp_path(dst, str(entry_id))
    shutil.copy2(src, staged)
    os.link(staged, dst)
    repair(journal)
    assert not staged.exists()
    assert not src.exists()
    assert dst.read_bytes() == data
    assert journal.get(entry_id).state == "done"


def test_repair_delete_intents(journal: Journal, src_dir: Path) -> None:
    kept = _image(src_dir / "kept.png", seed=1)
    gone = _image(src_dir / "gone.png", seed=2)
    kept_id = _intent(journal, kept, None, action="delete")
    gone_id = _intent(journal, gone, None, action="trash")
    gone.unlink()
    assert repair(journal) == 2
    assert kept.exists()
    assert journal.get(kept_id).state == "abandoned"
    assert journal.get(gone_id).state == "done"


def test_repair_file_in_neither_place_is_failed(journal: Journal, crash) -> None:
    src, dst, _ = crash
    entry_id = _intent(journal, src, dst)
    src.unlink()
    repair(journal)
    assert journal.get(entry_id).state == "failed"


def test_decided_counts_only_finished_rows(journal: Journal, src_dir: Path) -> None:
    decided = {}
    for state in ("intent", "done", "skipped", "failed", "abandoned", "undone"):
        path = _image(src_dir / f"{state}.png")
        info = _info(path)
        journal.begin(RUN, info, MOVE, None, CHECKPOINTS, state=state)
        decided[state] = journal.decided(info)
    assert decided == {
        "intent": False,
        "done": True,
        "skipped": True,
        "failed": False,
        "abandoned": False,
        "undone": True,
    }
    # the same path with other content is a new file
    path = src_dir / "done.png"
    _image(path, seed=9)
    os.utime(path, (OLD + 5, OLD + 5))
    assert not journal.decided(_info(path))


# --- restore (undo's step) --------------------------------------------------------------------


def test_restore_moves_it_back(journal: Journal, src_dir: Path, out: Path) -> None:
    src = _image(src_dir / "gen.png")
    data, info = src.read_bytes(), _info(src)
    _router(journal, out).apply(info, MOVE, CHECKPOINTS)
    [entry] = journal.finished(run=RUN)
    outcome = restore(journal, entry, "undo-1")
    assert outcome.state == "done"
    assert src.read_bytes() == data
    assert src.stat().st_mtime_ns == info.mtime_ns
    assert not (out / "red" / "gen.png").exists()
    assert journal.get(entry.id).state == "undone"
    newest = journal.history()[0]
    assert (newest.action, newest.state, newest.undoes) == ("restore", "done", entry.id)
    assert (newest.source, newest.destination) == (out / "red" / "gen.png", src)
    assert journal.decided(info)  # an undone file is not sorted again
    assert journal.finished(run=RUN) == []


def test_restore_never_overwrites(journal: Journal, src_dir: Path, out: Path) -> None:
    src = _image(src_dir / "gen.png", seed=1)
    data, info = src.read_bytes(), _info(src)
    _router(journal, out).apply(info, MOVE, CHECKPOINTS)
    [entry] = journal.finished(run=RUN)
    _image(src, seed=2)  # a new image took the name
    newcomer = src.read_bytes()
    outcome = restore(journal, entry, "undo-1")
    assert outcome.state == "done"
    assert outcome.destination == src_dir / "gen-1.png"  # next to it, under a new name
    assert outcome.note == "gen.png is taken; restored as gen-1.png"
    assert src.read_bytes() == newcomer
    assert (src_dir / "gen-1.png").read_bytes() == data
    assert not (out / "red" / "gen.png").exists()
    assert journal.get(entry.id).state == "undone"
    # where it came back counts as decided: a later sort does not move it again
    assert journal.decided(FileInfo(src_dir / "gen-1.png", info.size, info.mtime_ns))


def test_restore_dry_run_changes_nothing(journal: Journal, src_dir: Path, out: Path) -> None:
    src = _image(src_dir / "gen.png")
    _router(journal, out).apply(_info(src), MOVE, CHECKPOINTS)
    [entry] = journal.finished(run=RUN)
    outcome = restore(journal, entry, "undo-1", dry_run=True)
    assert outcome.state == "planned"
    assert outcome.destination == src
    assert not src.exists()
    assert (out / "red" / "gen.png").exists()
    assert journal.get(entry.id).state == "done"
    assert len(journal.history()) == 1


@pytest.mark.parametrize("copy", [False, True])
def test_a_source_that_cannot_be_removed_stays_the_only_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copy: bool
) -> None:
    # Root ignores folder permissions, so a read-only source folder is simulated.
    src = tmp_path / "in" / "gen.png"
    src.parent.mkdir()
    src.write_bytes(b"png bytes" * 100)
    dst = tmp_path / "out" / "gen.png"
    dst.parent.mkdir()
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self == src:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(PermissionError):
        transfer(src, dst, "7", copy=copy)
    assert src.read_bytes() == b"png bytes" * 100
    assert list(dst.parent.iterdir()) == []


@pytest.mark.parametrize(
    ("path", "kind", "keeps"),
    [
        ("C:\\Users\\me\\out\\a.png", 3, True),  # a local disk
        ("\\\\nas\\share\\a.png", 4, False),  # a network share
        ("E:\\a.png", 2, False),  # a USB stick
    ],
)
def test_on_windows_only_fixed_disks_count_as_having_a_recycle_bin(
    path: str, kind: int, keeps: bool
) -> None:
    asked: list[str] = []

    def drive_type(root: str) -> int:
        asked.append(root)
        return kind

    assert trash_keeps_files(Path(path), platform="win32", drive_type=drive_type) is keeps
    assert asked == [ntpath.splitdrive(path)[0] + "\\"]
    assert trash_keeps_files(Path("/home/me/a.png"), platform="linux") is True


def test_trash_where_it_would_delete_for_good_quarantines_instead(
    journal: Journal, src_dir: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(router_module, "trash_keeps_files", lambda path: False)
    src = _image(src_dir / "on-a-share.png")
    decision = Decision("trash", "reject", "reject", 0.97)
    outcome = _router(journal, out, reject_action="trash").apply(_info(src), decision, CHECKPOINTS)
    assert outcome.state == "done" and outcome.decision is not None
    assert outcome.decision.action == "quarantine" and "no recycle bin" in outcome.note
    assert outcome.destination == out / "_rejected" / "on-a-share.png"
    assert outcome.destination.exists() and not src.exists()


# --- names, placeholders and sources that change -------------------------------------------


def test_a_free_name_among_ten_thousand_takes_few_probes(
    journal: Journal, src_dir: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = out / "red"
    folder.mkdir(parents=True)
    taken = ["gen.png", *(f"gen-{n}.png" for n in range(1, 10_000))]
    for name in taken:
        os.close(os.open(folder / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    src = _image(src_dir / "gen.png")
    data = src.read_bytes()
    probes: list[str] = []
    real_stat, real_lstat = os.stat, os.lstat

    def counted(real: Callable[..., os.stat_result]) -> Callable[..., os.stat_result]:
        """``real``, counting the calls that ask about a name in ``folder``."""

        def probe(path: str | os.PathLike[str], *args: object, **kwargs: object) -> os.stat_result:
            if Path(os.fsdecode(path)).parent == folder:
                probes.append(Path(os.fsdecode(path)).name)
            return real(path, *args, **kwargs)

        return probe

    monkeypatch.setattr(os, "stat", counted(real_stat))
    monkeypatch.setattr(os, "lstat", counted(real_lstat))
    outcome = _router(journal, out).apply(_info(src), MOVE, CHECKPOINTS)
    monkeypatch.undo()
    assert outcome.state == "done"
    assert outcome.destination == folder / "gen-10000.png"
    assert outcome.destination.read_bytes() == data
    assert len(probes) < 60, f"{len(probes)} probes for one name"
    assert all((folder / name).stat().st_size == 0 for name in taken)  # none overwritten


def test_free_name_fills_from_the_lowest_few_then_jumps(tmp_path: Path) -> None:
    assert free_name(tmp_path, "gen.v2.png") == tmp_path / "gen.v2.png"
    (tmp_path / "gen.v2.png").touch()
    assert free_name(tmp_path, "gen.v2.png") == tmp_path / "gen.v2-1.png"
    for n in (1, 2, 4):
        (tmp_path / f"gen.v2-{n}.png").touch()
    assert free_name(tmp_path, "gen.v2.png") == tmp_path / "gen.v2-3.png"
    asked: list[str] = []

    def taken(path: Path) -> bool:  # gen-1 ... gen-999 exist
        asked.append(path.name)
        number = path.stem.rpartition("-")[2]
        return path.name == "gen.png" or (number.isdigit() and int(number) < 1000)

    assert free_name(tmp_path, "gen.png", taken) == tmp_path / "gen-1000.png"
    assert len(asked) < 30


@pytest.mark.usefixtures("no_hard_links")
def test_a_source_that_vanished_leaves_no_placeholder(tmp_path: Path) -> None:
    src = tmp_path / "a" / "gen.png"  # deleted by the user after it was decided
    src.parent.mkdir()
    dst = tmp_path / "b" / "gen.png"
    dst.parent.mkdir()
    with pytest.raises(FileNotFoundError):
        transfer(src, dst, "7")
    assert list(dst.parent.iterdir()) == []


def _grows_while_copied(src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The generator still writes ``src`` while gensift copies it: it appends once the copy
    has read what was there (a timing no test could hit reliably with a real writer)."""
    real = shutil.copyfileobj

    def copy_then_append(reader: BinaryIO, writer: BinaryIO, length: int = 0) -> None:
        real(reader, writer, length)
        with src.open("ab") as late:
            late.write(b"the tail of the image")

    monkeypatch.setattr(shutil, "copyfileobj", copy_then_append)


@pytest.fixture
def other_filesystem(tmp_path: Path) -> Iterator[Path]:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no writable /dev/shm")
    if shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("/dev/shm is on the same filesystem as tmp_path")
    other = Path(tempfile.mkdtemp(prefix="gensift-test-", dir=shm))
    yield other
    shutil.rmtree(other)


@pytest.mark.parametrize("where", ["forced-copy", "other-filesystem"])
def test_a_source_that_grows_during_the_copy_is_left_in_place(
    journal: Journal,
    src_dir: Path,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    out = request.getfixturevalue("other_filesystem") if where != "forced-copy" else tmp_path / "o"
    src = _image(src_dir / "gen.png")
    info = _info(src)
    _grows_while_copied(src, monkeypatch)
    router = _router(journal, out, force_copy=where == "forced-copy")
    outcome = router.apply(info, MOVE, CHECKPOINTS)
    assert outcome.state == "stale"
    assert "changed while it was copied" in outcome.note and "decided again" in outcome.note
    assert src.read_bytes().endswith(b"the tail of the image")  # nothing lost
    assert not (out / "red" / "gen.png").exists()
    assert not _temp_files(out)
    [row] = journal.history()
    assert row.state == "abandoned" and "changed while it was copied" in row.note
    assert not journal.decided(info)
    assert summary_label(outcome) == "not decided: stale (tried again next run)"


def test_a_copy_refuses_a_source_unlike_the_journal_says(tmp_path: Path) -> None:
    src = _image(tmp_path / "a" / "gen.png")
    recorded = (src.stat().st_size - 100, src.stat().st_mtime_ns)  # read when it was shorter
    dst = tmp_path / "b" / "gen.png"
    dst.parent.mkdir()
    data = src.read_bytes()
    with pytest.raises(SourceChangedError, match="changed"):
        transfer(src, dst, "7", copy=True, expect=recorded)
    assert src.read_bytes() == data
    assert list(dst.parent.iterdir()) == []


def test_staging_copies_are_removed_unless_an_unsettled_row_needs_them(
    journal: Journal, crash: tuple[Path, Path, bytes], src_dir: Path, out: Path
) -> None:
    src, dst, data = crash
    held = _intent(journal, src, dst)  # a cross-filesystem copy interrupted half way
    needed = temp_path(dst, str(held))
    stale = [temp_path(dst.with_name("old.png"), "12"), temp_path(out / "_rejected" / "b.png", "3")]
    theirs = [dst.with_name(".gensift-tmp-notes.png"), dst.with_name("mine.png")]
    theirs.append(src_dir / stale[0].name)  # not under the output root
    for path in [needed, *stale, *theirs]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[:100])
    assert remove_temporaries(journal, out) == 2
    assert needed.exists()  # its row is not settled yet
    assert not [p for p in stale if p.exists()]
    assert all(p.exists() for p in theirs)
    assert repair(journal, out) == 1  # settles the row, which drops its copy
    assert not needed.exists()
    assert journal.get(held).state == "abandoned"
    assert src.read_bytes() == data
    assert all(p.exists() for p in theirs)


def test_staging_copies_in_a_linked_class_folder_are_removed_but_not_below_it(
    journal: Journal, out: Path, tmp_path: Path
) -> None:
    big = tmp_path / "big" / "red"  # a class folder on another disk, say
    (big / "deeper").mkdir(parents=True)
    foreign = tmp_path / "nowhere"
    out.mkdir()
    (out / "red").symlink_to(big, target_is_directory=True)
    (out / "gone").symlink_to(foreign, target_is_directory=True)  # refused: not followed
    stale = temp_path(big / "gen.png", "12")
    kept = [temp_path(big / "deeper" / "gen.png", "13"), big / "gen.png"]
    for path in [stale, *kept]:
        path.write_bytes(b"partial copy")
    assert remove_temporaries(journal, out) == 1
    assert not stale.exists() and all(p.exists() for p in kept)
