"""``gensift watch`` in a thread of the test process: real observers, real journal, real files.

The daemon-as-a-subprocess tests (signals, systemd, SIGKILL) are in test_watch_process.py.
"""

from __future__ import annotations

import gc
import hashlib
import os
import shutil
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest
from loguru import logger
from sortkit import check_ledger, decisions, sha, write_config
from watchkit import (
    WAIT,
    NotifySocket,
    daemon_thread,
    drawn_files,
    final_rows,
    recalibrated,
    too_deep,
    wait_decided,
    wait_for,
    write_renamed,
)

from gensift.daemon.commands.sort import run_sort
from gensift.daemon.config import Settings, load_config
from gensift.daemon.routing.lock import JournalBusy, JournalLock
from gensift.daemon.runtime import worker as worker_module
from gensift.daemon.runtime.notify import SystemdNotifier
from gensift.daemon.runtime.service import Daemon, tracking_capacity
from gensift.daemon.runtime.sifter import Cascade, load_cascade
from gensift.models.checkpoint import read_checkpoint
from gensift.models.predictor import Predictor


def sha_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_replacing_the_feature_checkpoint_while_files_stream_in(
    tmp_path: Path, models: tuple[Path, Path], log_lines: list[str]
) -> None:
    quality, feature = models
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, quality, feature, quality_threshold=0.5,
                          feature_threshold=0.4, settle_seconds=0.5)  # fmt: skip
    staged = drawn_files(tmp_path / "staged", 45)
    originals = {inbox / p.name: sha(p) for p in staged}
    old_id = read_checkpoint(feature)[1].id
    new_checkpoint = tmp_path / "recalibrated.safetensors"
    new_id = recalibrated(feature, 1.5, new_checkpoint)
    assert new_id != old_id

    def stream(files: list[Path]) -> None:
        for path in files:
            shutil.copyfile(path, inbox / path.name)
            time.sleep(0.05)

    journal = tmp_path / "journal.sqlite3"
    with daemon_thread(config):
        stream(staged[:15])
        wait_decided(journal, 15)
        writer = threading.Thread(target=stream, args=(staged[15:30],))
        writer.start()
        new_checkpoint.replace(feature)  # published atomically, as `gensift train` does
        wait_for(lambda: any("now serving" in line for line in log_lines), what="the swap")
        writer.join()
        wait_decided(journal, 30)
        feature.write_bytes(b"half a checkpoint")  # a broken copy, in place
        wait_for(lambda: any("reload refused" in line for line in log_lines), what="refusal")
        stream(staged[30:])
        wait_decided(journal, 45)

    final = check_ledger(originals, journal, tmp_path / "out")
    assert len(final) == len(originals)
    ids = [e.checkpoints.get("feature") for e in decisions(journal) if "feature" in e.checkpoints]
    assert set(ids) == {old_id, new_id}
    first_new = ids.index(new_id)
    assert ids[:first_new] == [old_id] * first_new and set(ids[first_new:]) == {new_id}
    refused = next(line for line in log_lines if "reload refused" in line)
    assert str(feature) in refused and new_id in refused  # names the file and what still serves


@pytest.mark.timeout(1800)  # a few minutes on two cores; a slow machine gets the time it needs
def test_two_thousand_files_at_once_are_each_decided_once_within_the_bounds(
    tmp_path: Path, models: tuple[Path, Path], log_lines: list[str]
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, *models, quality_threshold=0.5, feature_threshold=0.4,
                          batch_size=8)  # fmt: skip
    seeds = drawn_files(tmp_path / "seeds", 20)
    folder = tmp_path / "folder"
    folder.mkdir()
    originals = {}
    for i in range(2000):
        name = f"burst_{i:04d}.png"
        seed = seeds[i % len(seeds)]
        # 1,500 arrive as one folder moved in (one event, more files than the daemon tracks
        # at once); 500 are copied in one by one right after (an event each)
        originals[(inbox / "folder" / name) if i < 1500 else (inbox / name)] = sha(seed)
        if i < 1500:
            shutil.copyfile(seed, folder / name)
    journal = tmp_path / "journal.sqlite3"
    with daemon_thread(config) as daemon:
        folder.rename(inbox / "folder")
        for i in range(1500, 2000):
            shutil.copyfile(seeds[i % len(seeds)], inbox / f"burst_{i:04d}.png")
        wait_decided(journal, 2000, timeout=1800)
        assert daemon.worker is not None
        capacity = tracking_capacity(daemon.settings)
        assert daemon.worker.inbox.maxsize < capacity
    assert daemon.arrivals.peak == capacity  # the flood reached the bound and never passed it
    assert any("catch-up scan" in line for line in log_lines)  # what was not tracked came later
    check_ledger(originals, journal, tmp_path / "out")


def test_a_file_the_observer_never_reported_is_found_by_the_periodic_rescan(
    tmp_path: Path, models: tuple[Path, Path], log_lines: list[str]
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, *models, rescan_seconds=1.0)
    journal = tmp_path / "journal.sqlite3"
    with daemon_thread(config) as daemon:
        assert daemon.watcher is not None and daemon.watcher.observer is not None
        daemon.watcher.observer.unschedule_all()  # alive, but blind: the silent failure mode
        drawn_files(inbox, 1)
        rows = wait_decided(journal, 1)
    assert rows[0].source.parent == inbox
    assert any("rescan: 1 undecided file" in line for line in log_lines)


def test_a_folder_no_rescan_can_list_is_a_warning_once_for_the_daemons_life(
    tmp_path: Path, models: tuple[Path, Path]
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    deep = too_deep(inbox)  # its path is over PATH_MAX: listing it fails, even for root
    config = write_config(tmp_path, *models, rescan_seconds=0.5)
    seen: list[tuple[str, str]] = []
    sink = logger.add(
        lambda m: seen.append((m.record["level"].name, m.record["message"])), level="DEBUG"
    )
    try:
        with daemon_thread(config):
            drawn_files(inbox, 1)  # the rest of the folder is still sifted
            wait_decided(tmp_path / "journal.sqlite3", 1)

            def unlisted() -> list[str]:
                return [lvl for lvl, msg in seen if msg.startswith(f"{deep}: cannot list")]

            wait_for(lambda: len(unlisted()) >= 3, what="the start-up scan and two rescans")
    finally:
        logger.remove(sink)
        shutil.rmtree(inbox)  # walks by directory handle: no path is too long for it
    assert unlisted()[0] == "WARNING"
    assert set(unlisted()[1:]) == {"DEBUG"}


def test_a_watched_folder_reached_through_a_symlink_is_watched(
    tmp_path: Path, models: tuple[Path, Path]
) -> None:
    real = tmp_path / "generations"
    real.mkdir()
    (tmp_path / "inbox").symlink_to(real)  # the config names the link; rescans are 5 min off
    config = write_config(tmp_path, *models)
    journal = tmp_path / "journal.sqlite3"
    with daemon_thread(config):
        drawn_files(tmp_path / "inbox", 2)
        rows = wait_decided(journal, 2)
    assert {e.source.parent for e in rows} == {real}  # events and scans name files alike


def test_files_already_there_are_decided_by_the_start_up_scan_and_only_once(
    tmp_path: Path, models: tuple[Path, Path]
) -> None:
    inbox = tmp_path / "inbox"
    # near-uniform probabilities under high thresholds: every file is uncertain and stays
    for checkpoint in models:
        recalibrated(checkpoint, 1000.0, checkpoint)
    config = write_config(tmp_path, *models, quality_threshold=0.9, feature_threshold=0.9)
    drawn_files(inbox, 10)
    journal = tmp_path / "journal.sqlite3"
    with daemon_thread(config):
        wait_decided(journal, 10)
    assert {e.action for e in decisions(journal)} == {"leave"}
    with daemon_thread(config):  # a restart does not decide the files left in place again
        drawn_files(inbox, 1, prefix="late", seed=5)
        wait_decided(journal, 11)
    sources = [e.source for e in decisions(journal)]
    assert len(sources) == len(set(sources)) == 11


def test_a_lone_file_that_finds_the_worker_idle_is_decided_without_waiting_for_company(
    tmp_path: Path, models: tuple[Path, Path]
) -> None:
    # An old config still sets max_wait_ms: the worker used to hold a lone file that long
    # for company. A bound on the event, not a timing: decided well before a minute.
    config = write_config(tmp_path, *models, batch_size=16)
    text = config.read_text().replace("[inference]\n", "[inference]\nmax_wait_ms = 60000\n")
    config.write_text(text)
    [source] = drawn_files(tmp_path / "drawn", 1)
    journal = tmp_path / "journal.sqlite3"
    (tmp_path / "inbox").mkdir()
    with daemon_thread(config):
        write_renamed(source, tmp_path / "inbox" / source.name)
        [row] = wait_decided(journal, 1, timeout=30)
    assert row.source == tmp_path / "inbox" / source.name


def test_idle_models_are_unloaded_freed_and_loaded_again_for_the_next_file(
    tmp_path: Path,
    models: tuple[Path, Path],
    log_lines: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[weakref.ref[Predictor]] = []

    def load_and_watch(settings: Settings) -> Cascade:
        cascade = load_cascade(settings)
        started.append(weakref.ref(cascade.predictor))
        return cascade

    # the start-up load (and the one after the unload, once the test has looked)
    monkeypatch.setattr(worker_module, "load_cascade", load_and_watch)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, *models, idle_unload_seconds=0.5)
    journal = tmp_path / "journal.sqlite3"
    with daemon_thread(config) as daemon:
        assert daemon.worker is not None
        wait_for(lambda: not daemon.worker.loaded, what="the idle unload")  # type: ignore[union-attr]
        # Unloaded means freed: nothing may still hold the models (on a GPU, their memory).
        [predictor] = started
        wait_for(lambda: gc.collect() >= 0 and predictor() is None, what="the models freed")
        drawn_files(inbox, 2)
        wait_decided(journal, 2)
    assert any("models loaded again" in line for line in log_lines)


def test_sighup_applies_a_new_config_and_refuses_a_broken_one(
    tmp_path: Path, models: tuple[Path, Path], log_lines: list[str]
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, *models, uncertain_action="review")
    journal = tmp_path / "journal.sqlite3"
    new_root = tmp_path / "elsewhere"
    with daemon_thread(config) as daemon:
        drawn_files(inbox, 5, prefix="before")
        wait_decided(journal, 5)
        good = config.read_text()
        config.write_text(good + "\n[bogus]\n")
        daemon.request_reload()  # what the SIGHUP handler does
        wait_for(lambda: any("keeping the running configuration" in x for x in log_lines))
        config.write_text(good.replace(str(tmp_path / "out"), str(new_root)))
        daemon.request_reload()
        wait_for(lambda: any("now serving" in line for line in log_lines), what="the swap")
        drawn_files(inbox, 5, prefix="after", seed=1)
        rows = wait_decided(journal, 10)
    # with uncertain_action = "review" every decision has a destination
    for e in rows:
        root = new_root if e.source.name.startswith("after") else tmp_path / "out"
        assert e.destination is not None and e.destination.is_relative_to(root), e


def test_one_process_at_a_time_moves_files_under_a_journal(
    tmp_path: Path, models: tuple[Path, Path]
) -> None:
    config = write_config(tmp_path, *models)
    settings = load_config(config)
    drawn_files(tmp_path / "inbox", 2)
    with JournalLock(settings.journal.path, "watch"), pytest.raises(JournalBusy) as err:
        run_sort(settings, [tmp_path / "inbox"], progress=False)
    assert "gensift watch" in str(err.value) and str(os.getpid()) in str(err.value)
    with pytest.raises(JournalBusy), JournalLock(settings.journal.path, "sort"):
        Daemon(settings).run()
    assert run_sort(settings, [tmp_path / "inbox"], progress=False).decided == 2  # free again


# -- finished files: settling by gensift's own clock ---------------------------------------------


def _write_in_chunks(
    data: bytes, target: Path, journal: Path, *, pause: float, chunks: int = 12, age: float = 0.0
) -> None:
    """Write ``data`` through one open handle, pausing between chunks; after each chunk the
    file must still be undecided. ``age``: stamp the file that many seconds in the past after
    each chunk, as a share whose clock is off does."""
    step = -(-len(data) // chunks)
    with target.open("wb") as handle:
        for i in range(chunks):
            handle.write(data[i * step : (i + 1) * step])
            handle.flush()
            if age:
                stamp = time.time() - age
                os.utime(target, (stamp, stamp))
            time.sleep(pause)
            early = [e for e in final_rows(journal) if e.source.name == target.name]
            assert not early, f"decided after {i + 1} of {chunks} chunks: {early}"


def test_settle_seconds_zero_no_longer_decides_a_file_still_being_written(
    tmp_path: Path, models: tuple[Path, Path], log_lines: list[str]
) -> None:
    """The issue's case: settle_seconds = 0 let the daemon quarantine a PNG as corrupt
    after 120 of its 392 bytes. Now the floor (0.5 s) holds it until the writer is done."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, *models, settle_seconds=0.0)
    data = drawn_files(tmp_path / "staged", 2)[1].read_bytes()  # the noisy kind: larger
    journal = tmp_path / "journal.sqlite3"
    with daemon_thread(config) as daemon:
        assert daemon.settings.watch.settle_seconds == 0.5
        # 4 s of writing (past the old loop's 2 s sleep), pauses well under the 0.5 s floor
        _write_in_chunks(data, inbox / "slow.png", journal, pause=0.25, chunks=16)
        [row] = wait_decided(journal, 1)
    assert (row.size, row.sha256, row.state) == (len(data), sha_bytes(data), "done")
    assert row.reason != "corrupt", row
    assert any("watch.settle_seconds = 0 is below the safe minimum" in x for x in log_lines)


def test_a_share_whose_clock_is_off_still_settles_by_the_local_clock(
    tmp_path: Path, models: tuple[Path, Path]
) -> None:
    """mtimes a day in the past (a writer's clock behind ours) do not make a file being
    written look finished; a day in the future does not keep a broken file waiting forever."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, *models, settle_seconds=1.0)
    data = drawn_files(tmp_path / "staged", 2)[1].read_bytes()
    journal = tmp_path / "journal.sqlite3"
    with daemon_thread(config):
        ahead = inbox / "ahead.png"
        ahead.write_bytes(data[: len(data) // 2])  # truncated for good
        stamp = time.time() + 86_400
        os.utime(ahead, (stamp, stamp))
        _write_in_chunks(data, inbox / "behind.png", journal, pause=0.25, age=86_400)
        rows = wait_decided(journal, 2, timeout=60)
    by_name = {e.source.name: e for e in rows}
    assert (by_name["ahead.png"].reason, by_name["ahead.png"].action) == ("corrupt", "quarantine")
    behind = by_name["behind.png"]
    assert (behind.size, behind.sha256) == (len(data), sha_bytes(data))
    assert behind.reason != "corrupt", behind


# -- long rescans and the systemd watchdog --------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="AF_UNIX datagrams")
def test_watchdog_pings_and_decisions_go_on_while_a_rescan_is_stuck_listing_a_slow_share(
    tmp_path: Path, models: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    inbox = tmp_path / "inbox"
    share = inbox / "share"  # a folder on a share that answers slowly, here: not at all
    drawn_files(share, 1)
    config = write_config(tmp_path, *models, rescan_seconds=1.0)
    journal = tmp_path / "journal.sqlite3"
    armed, listing, release = threading.Event(), threading.Event(), threading.Event()
    real_scandir = os.scandir

    def slow_scandir(path: str | os.PathLike[str] = ".") -> object:
        if armed.is_set() and Path(path) == share:
            listing.set()
            release.wait(WAIT)  # bounded: a test that fails must still end
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", slow_scandir)
    notify = NotifySocket(tmp_path / "notify.sock")
    # WatchdogSec=2s: systemd kills a service whose pings stop for 2 s
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"})
    try:
        with daemon_thread(config, notifier=notifier):
            wait_decided(journal, 1)  # the start-up scan listed the share at full speed
            armed.set()
            wait_for(listing.is_set, what="a rescan stuck listing the share")
            pings = notify.lines().count("WATCHDOG=1")
            # at least 5 more pings, i.e. well past the 2 s in which systemd would have
            # killed a daemon whose service thread was stuck in the scan
            wait_for(lambda: notify.lines().count("WATCHDOG=1") >= pings + 5, what="pings")
            drawn_files(inbox, 1, prefix="meanwhile", seed=3)
            rows = wait_decided(journal, 2)  # and files are still decided meanwhile
            assert not release.is_set() and listing.is_set()  # the rescan is still running
            release.set()
    finally:
        release.set()
        notify.close()
    assert rows[-1].source.name.startswith("meanwhile")
