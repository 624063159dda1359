"""A ``gensift sort`` killed with SIGKILL at several points loses and duplicates nothing, and
what a crash left behind is cleaned up at the next start."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from sortkit import (
    check_ledger,
    decisions,
    fill_inbox,
    run_harness,
    tiny_checkpoint,
    write_config,
)
from watchkit import daemon_thread

from gensift.daemon.cli import main
from gensift.daemon.routing.fileops import temp_path

HARNESS = Path(__file__).with_name("crash_harness.py")


@pytest.mark.skipif(sys.platform == "win32", reason="fork and SIGKILL")
def test_sort_killed_part_way_then_run_again_accounts_for_every_file(
    tmp_path: Path, frozen_pair: tuple[Path, Path]
) -> None:
    inbox = tmp_path / "inbox"
    originals = fill_inbox(inbox, scale=2)
    # batches of two: many small batches, so the kills land at different stages
    config = write_config(
        tmp_path, *frozen_pair, quality_threshold=0.5, feature_threshold=0.4, batch_size=2
    )
    journal = tmp_path / "journal.sqlite3"
    kill_points = ["1", "4", "9", "15", "22"]
    runs = run_harness(HARNESS, config, inbox, journal, *kill_points, timeout=900)
    assert len(runs) == len(kill_points) + 1
    assert sum(r["killed"] for r in runs) >= 3, runs  # the kills really landed mid-run
    assert runs[-1] == {"k": None, "killed": False, "exit": 0}

    final = check_ledger(originals, journal, tmp_path / "out")
    assert len(final) == len(originals)
    # every interrupted operation was settled by a later run's repair, none left half-done
    rows = decisions(journal)
    assert all(e.state in ("done", "skipped", "abandoned") for e in rows)


def _crash_leftovers(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    """Staging copies a crash left under the output root (no journal row needs them), and
    files with similar names that are not gensift's or are outside the output root."""
    out = tmp_path / "out"
    stale = [temp_path(out / "a" / "gen.png", "12"), temp_path(out / "_rejected" / "x.png", "3")]
    kept = [out / "a" / ".gensift-tmp-notes.png", out / "a" / "mine.png"]
    kept.append(tmp_path / "elsewhere" / stale[0].name)
    for path in [*stale, *kept]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a copy")
    return stale, kept


def test_sort_removes_staging_copies_a_crash_left(tmp_path: Path) -> None:
    stale, kept = _crash_leftovers(tmp_path)
    inbox = tmp_path / "inbox"
    fill_inbox(inbox, broken=False, scale=1)
    config = write_config(tmp_path, None, tiny_checkpoint(tmp_path), feature_threshold=0.1)
    assert main(["sort", str(inbox), "-c", str(config), "--no-progress"]) == 0
    assert not [p for p in stale if p.exists()]
    assert all(p.exists() for p in kept)


def test_watch_removes_staging_copies_a_crash_left_before_ready(tmp_path: Path) -> None:
    stale, kept = _crash_leftovers(tmp_path)
    (tmp_path / "inbox").mkdir()
    config = write_config(tmp_path, None, tiny_checkpoint(tmp_path), feature_threshold=0.1)
    with daemon_thread(config):
        assert not [p for p in stale if p.exists()]
    assert all(p.exists() for p in kept)


@pytest.mark.skipif(sys.platform == "win32", reason="fork and SIGKILL")
def test_sort_killed_inside_grouped_batches_accounts_for_every_file(
    tmp_path: Path, frozen_pair: tuple[Path, Path]
) -> None:
    inbox = tmp_path / "inbox"
    originals = fill_inbox(inbox, scale=2)
    # batches of eight: each batch's intents are one commit and its completions another;
    # "op:K" kills a run as its K-th file operation starts, between those two commits, with
    # the batch's earlier operations done and unrecorded, its later ones not started
    config = write_config(
        tmp_path, *frozen_pair, quality_threshold=0.5, feature_threshold=0.4, batch_size=8
    )
    journal = tmp_path / "journal.sqlite3"
    kill_points = ["op:3", "op:1", "op:6", "op:10", "12"]
    runs = run_harness(HARNESS, config, inbox, journal, *kill_points, timeout=900)
    assert [r["killed"] for r in runs] == [True] * len(kill_points) + [False], runs
    assert runs[-1] == {"k": None, "killed": False, "exit": 0}

    final = check_ledger(originals, journal, tmp_path / "out")
    assert len(final) == len(originals)
    rows = decisions(journal)
    assert all(e.state in ("done", "skipped", "abandoned") for e in rows)
    # repair found both kinds of file in the batches the kills cut: moved but not recorded,
    # and recorded as intended but never moved
    notes = [e.note for e in rows]
    assert any("completed before the interruption" in note for note in notes), notes
    assert any("interrupted before the file moved" in note for note in notes), notes
