"""Class folders that are symlinks (``<root>/a -> /mnt/big/a``): followed when they lead to a
folder of ours outside the watched folders, else refused for that class's files only, with one
error per folder; every other class keeps routing, in ``gensift sort`` and in the daemon.

Real ``gensift sort`` and a real daemon on ``tmp_path``; a tiny checkpoint sends every
image to class ``a``, and the broken files go to ``_rejected`` by rule.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from loguru import logger
from sortkit import BROKEN, check_ledger, decisions, fill_inbox, sha, tiny_checkpoint, write_config
from watchkit import daemon_thread, final_rows, wait_for

from gensift.daemon.cli import main

NOBODY = 65534  # the uid of "nobody": a user other than the one the tests run as


def _sort(config: Path, *args: str) -> int:
    return main(["sort", *args, "-c", str(config), "--no-progress"])


def _foreign_folder(path: Path) -> Path:
    """A folder owned by another user (needs root to give away)."""
    if os.name == "nt":
        pytest.skip("Windows has no owner check: a link there is followed whoever owns it")
    path.mkdir(parents=True)
    try:
        os.chown(path, NOBODY, NOBODY)
    except PermissionError:
        pytest.skip("giving a folder to another user needs root")
    return path


def _relink(link: Path, target: Path) -> None:
    """Point ``link`` at ``target``, as a user fixing it would (``ln -sfn``)."""
    link.unlink()
    link.symlink_to(target, target_is_directory=True)


def _errors_about(text: str, folder: Path) -> list[str]:
    return [line for line in text.splitlines() if "| ERROR" in line and str(folder) in line]


def _setup(
    tmp_path: Path, *, rescan_seconds: float = 300.0, batch_size: int = 4
) -> tuple[Path, dict[Path, str], Path, Path]:
    """A config, an inbox of drawn and broken files, and the output root (made, empty)."""
    inbox = tmp_path / "inbox"
    originals = fill_inbox(inbox)
    out = tmp_path / "out"
    out.mkdir()
    checkpoint = tiny_checkpoint(tmp_path, favour="a")
    config = write_config(tmp_path, None, checkpoint, rescan_seconds=rescan_seconds,
                          batch_size=batch_size)  # fmt: skip
    return config, originals, inbox, out


def test_sort_follows_a_symlinked_class_folder_we_own_and_undo_brings_files_back(
    tmp_path: Path,
) -> None:
    config, originals, inbox, out = _setup(tmp_path)
    big = tmp_path / "big" / "a"
    big.mkdir(parents=True)
    (out / "a").symlink_to(big, target_is_directory=True)

    assert _sort(config, str(inbox)) == 0

    journal = tmp_path / "journal.sqlite3"
    final = check_ledger(originals, journal, out)
    moved = [e for e in final.values() if e.label == "a" and e.state == "done"]
    assert len(moved) == len(originals) - len(BROKEN)
    for entry in moved:
        assert entry.destination == out / "a" / entry.source.name  # the root as spelled
        assert sha(big / entry.source.name) == originals[entry.source]  # the bytes: the target
    assert (out / "a").is_symlink()

    assert main(["undo", "-c", str(config)]) == 0
    assert all(sha(path) == digest for path, digest in originals.items())
    assert not list(big.iterdir())


def test_sort_refuses_a_class_folder_linked_to_another_users_folder_for_that_class_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, originals, inbox, out = _setup(tmp_path)
    foreign = _foreign_folder(tmp_path / "shared" / "a")
    (out / "a").symlink_to(foreign, target_is_directory=True)
    images = {p for p in originals if p.name not in BROKEN}

    assert _sort(config, str(inbox)) == 1  # files left unsorted: exit 1, as for a failed move

    err = capsys.readouterr().err
    [error] = _errors_about(err, out / "a")  # one error for the folder, not one per file
    assert "owned by uid 65534" in error and str(foreign) in error
    assert "Traceback" not in err
    assert not list(foreign.iterdir())
    assert all(sha(p) == originals[p] for p in images)  # left in place, untouched
    rejected = [e for e in decisions(tmp_path / "journal.sqlite3") if e.state == "done"]
    assert {e.source.name for e in rejected} == set(BROKEN)  # the other class kept routing
    assert all(e.destination is not None and e.destination.parent == out / "_rejected"
               for e in rejected)  # fmt: skip

    # the user points the link at a folder of their own: the next run routes the files
    mine = tmp_path / "mine" / "a"
    mine.mkdir(parents=True)
    _relink(out / "a", mine)
    assert _sort(config, str(inbox)) == 0
    check_ledger(originals, tmp_path / "journal.sqlite3", out)
    assert {p.name for p in mine.iterdir()} == {p.name for p in images}


def test_sort_refuses_a_rejected_folder_linked_into_the_watched_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, originals, inbox, out = _setup(tmp_path)
    inside = inbox / "keepers"  # watch.paths = [inbox], recursive: a rescan would find them
    inside.mkdir()
    (out / "_rejected").symlink_to(inside, target_is_directory=True)

    assert _sort(config, str(inbox)) == 1

    err = capsys.readouterr().err
    [error] = _errors_about(err, out / "_rejected")
    assert "inside the watched folder" in error
    assert not list(inside.iterdir())
    broken = {p for p in originals if p.name in BROKEN}
    assert all(sha(p) == originals[p] for p in broken)
    moved = [e for e in decisions(tmp_path / "journal.sqlite3") if e.state == "done"]
    assert {e.source for e in moved} == set(originals) - broken  # class a kept routing


@pytest.mark.parametrize("kind", ["missing", "file", "root"])
def test_sort_refuses_a_class_folder_link_that_leads_to_no_folder_of_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    config, originals, inbox, out = _setup(tmp_path)
    target = {"missing": tmp_path / "unmounted" / "a", "file": tmp_path / "a.txt", "root": out}
    if kind == "file":
        target[kind].write_text("not a folder")
    (out / "a").symlink_to(target[kind], target_is_directory=True)

    assert _sort(config, str(inbox)) == 1

    err = capsys.readouterr().err
    assert len(_errors_about(err, out / "a")) == 1
    broken = {p for p in originals if p.name in BROKEN}
    assert all(sha(p) == originals[p] for p in set(originals) - broken)
    assert not any(p.exists() for p in broken)  # quarantined to _rejected


def test_a_class_name_that_escapes_the_root_is_still_refused(tmp_path: Path) -> None:
    from gensift.daemon.routing.fileops import UnsafeDestinationError, confined

    root = tmp_path / "out"
    for name in ("..", ".", "", "a/b", "/etc", "../x", "a/../.."):
        with pytest.raises(UnsafeDestinationError):
            confined(root, name)
    assert confined(root, "a") == root / "a"


# --- the daemon -------------------------------------------------------------------------------


def test_the_daemon_refuses_a_linked_rejected_folder_once_routes_the_rest_and_retries(
    tmp_path: Path,
) -> None:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(f"{m.record['level'].name} {m}"), level="DEBUG",
                      format="{message}")  # fmt: skip
    config, originals, _, out = _setup(tmp_path, rescan_seconds=0.5, batch_size=8)
    foreign = _foreign_folder(tmp_path / "shared" / "_rejected")
    (out / "_rejected").symlink_to(foreign, target_is_directory=True)
    broken = {p for p in originals if p.name in BROKEN}
    journal = tmp_path / "journal.sqlite3"
    try:
        with daemon_thread(config):
            # the images, in the same batches as the broken files, are routed to class a
            wait_for(lambda: len(final_rows(journal)) >= len(originals) - len(broken),
                     what="every image routed")  # fmt: skip
            rescans = re.compile(r"INFO rescan: \d+ undecided")
            wait_for(lambda: len([x for x in lines if rescans.match(x)]) >= 3, what="3 rescans")
            assert all(sha(p) == originals[p] for p in broken)  # left in place each time
            assert not list(foreign.iterdir())
            (tmp_path / "mine").mkdir()
            _relink(out / "_rejected", tmp_path / "mine")  # fixed: the next rescan routes them
            wait_for(lambda: len(final_rows(journal)) >= len(originals), what="all routed")
    finally:
        logger.remove(sink)

    check_ledger(originals, journal, out)
    assert {p.name for p in (tmp_path / "mine").iterdir()} == {p.name for p in broken}
    errors = [x for x in lines if x.startswith(("ERROR", "CRITICAL"))]
    assert len(errors) == 1 and str(out / "_rejected") in errors[0], errors
    assert not [x for x in lines if "batch of" in x and "failed" in x]
