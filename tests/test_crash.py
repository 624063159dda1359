"""A ``gensift sort`` killed with SIGKILL at several points loses and duplicates nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from sortkit import check_ledger, decisions, fill_inbox, run_harness, write_config

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
