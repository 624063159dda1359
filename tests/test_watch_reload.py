"""Reloads that converge: a SIGHUP applies the watcher's and the worker's settings together or
neither, a refused checkpoint is tried again when it changes and at the next SIGHUP, and one
replaced while the models are idle-unloaded is checked at once. Real daemon, real files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sortkit import decisions, write_config
from watchkit import daemon_thread, drawn_files, logged, recalibrated, wait_decided, wait_for

from gensift.models.checkpoint import read_checkpoint

WAIT = 90.0  # bounded waits for what should happen within seconds


def test_a_sighup_whose_checkpoint_does_not_load_applies_nothing_until_it_does(
    tmp_path: Path, models: tuple[Path, Path], log_lines: list[str]
) -> None:
    quality, feature = models
    inbox, new_inbox = tmp_path / "inbox", tmp_path / "new-inbox"
    inbox.mkdir()
    new_inbox.mkdir()
    out, new_out = tmp_path / "out", tmp_path / "new-out"
    # with uncertain_action = "review" every decision has a destination under the root
    config = write_config(tmp_path, quality, feature, uncertain_action="review")
    journal = tmp_path / "journal.sqlite3"
    broken = tmp_path / "next-feature.safetensors"
    broken.write_bytes(b"half a checkpoint")
    with daemon_thread(config) as daemon:
        drawn_files(inbox, 2, prefix="before")
        wait_decided(journal, 2)
        text = config.read_text()
        for old, new in ((inbox, new_inbox), (out, new_out), (feature, broken)):
            text = text.replace(f'"{old}"', f'"{new}"')
        config.write_text(text)
        daemon.request_reload()  # what the SIGHUP handler does
        wait_for(lambda: logged(log_lines, "reload refused", str(broken)), WAIT, "the refusal")
        assert logged(log_lines, "Keeping the running configuration")
        # neither half of the new configuration runs: the old folder is watched, the old
        # root used; the new folder is not watched yet
        drawn_files(new_inbox, 1, prefix="new")
        drawn_files(inbox, 1, prefix="old", seed=1)
        rows = wait_decided(journal, 3, timeout=WAIT)
        assert [e.source.name for e in rows[2:]] == ["old_0000_keep.png"], rows
        assert rows[2].destination is not None and rows[2].destination.is_relative_to(out)
        assert daemon.settings.watch.paths == [inbox]
        # the checkpoint the new configuration names is fixed: all of it applies at once
        shutil.copyfile(feature, broken)
        wait_for(lambda: logged(log_lines, "now serving", str(broken)), WAIT, "the swap")
        rows = wait_decided(journal, 4, timeout=WAIT)  # the new folder's file, by its scan
        assert daemon.settings.watch.paths == [new_inbox]
        drawn_files(new_inbox, 1, prefix="later", seed=2)
        rows = wait_decided(journal, 5, timeout=WAIT)
    by_name = {e.source.name: e for e in rows}
    for name in ("new_0000_keep.png", "later_0000_keep.png"):
        entry = by_name[name]
        assert entry.destination is not None and entry.destination.is_relative_to(new_out)


def test_a_refused_checkpoint_is_tried_again_when_it_changes_and_at_each_sighup(
    tmp_path: Path, models: tuple[Path, Path], log_lines: list[str]
) -> None:
    """The fix keeps the size, the mtime and the inode of the broken copy (an in-place copy
    that preserves the mtime, as ``cp -p`` or ``rsync -t --inplace`` make)."""
    quality, feature = models
    (tmp_path / "inbox").mkdir()
    config = write_config(tmp_path, quality, feature)
    journal = tmp_path / "journal.sqlite3"
    fixed = tmp_path / "fixed.safetensors"
    new_id = recalibrated(feature, 1.5, fixed)
    good = fixed.read_bytes()
    damaged = good[:8] + b"\0" * 16 + good[24:]  # same size, unreadable header
    with daemon_thread(config) as daemon:
        with feature.open("r+b") as handle:  # in place: the inode stays
            handle.write(damaged)
            handle.truncate()
        stamp = feature.stat().st_mtime_ns
        wait_for(lambda: logged(log_lines, "reload refused", str(feature)), WAIT, "the refusal")
        daemon.request_reload()  # a SIGHUP tries it again (and it is still broken)
        wait_for(lambda: logged(log_lines, "reload refused", str(feature)) >= 2, WAIT, "retry")
        before = feature.stat()
        with feature.open("r+b") as handle:
            handle.write(good)
        os.utime(feature, ns=(stamp, stamp))
        after = feature.stat()
        same = (after.st_size, after.st_mtime_ns, after.st_ino)
        assert same == (before.st_size, before.st_mtime_ns, before.st_ino)
        wait_for(lambda: logged(log_lines, "now serving", new_id), WAIT, "the fixed checkpoint")
        drawn_files(tmp_path / "inbox", 2)
        rows = wait_decided(journal, 2, timeout=WAIT)
    assert {e.checkpoints.get("feature") for e in rows if "feature" in e.checkpoints} == {new_id}


def test_a_checkpoint_replaced_while_the_models_are_idle_unloaded_is_checked_at_once(
    tmp_path: Path, models: tuple[Path, Path], log_lines: list[str]
) -> None:
    quality, feature = models
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, quality, feature, quality_threshold=0.5,
                          feature_threshold=0.4, idle_unload_seconds=0.5)  # fmt: skip
    journal = tmp_path / "journal.sqlite3"
    replacement = tmp_path / "replacement.safetensors"
    new_id = recalibrated(feature, 1.5, replacement)
    with daemon_thread(config) as daemon:
        worker = daemon.worker
        assert worker is not None
        wait_for(lambda: not worker.loaded, WAIT, "the idle unload")
        feature.write_bytes(b"half a checkpoint")
        # reported now, with no file waiting for it; the models stay unloaded
        wait_for(lambda: logged(log_lines, "reload refused", str(feature)), WAIT, "the check")
        assert logged(log_lines, "reload refused", "files wait until they load")
        assert not worker.loaded
        replacement.replace(feature)
        wait_for(lambda: logged(log_lines, "checked", new_id, "it loads"), WAIT, "a check")
        assert not worker.loaded
        drawn_files(inbox, 5)
        rows = wait_decided(journal, 5, timeout=WAIT)
    assert read_checkpoint(feature)[1].id == new_id
    assert len(rows) == 5
    used = {e.checkpoints["feature"] for e in decisions(journal) if "feature" in e.checkpoints}
    assert used == {new_id}
