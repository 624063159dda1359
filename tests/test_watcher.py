"""Finished-file detection and the observer, with real files and a real watchdog observer."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gensift.daemon.runtime.watcher import Arrivals, EventHandler, Filter, Watcher

WAIT = 20.0  # seconds a test waits for something that should happen well within


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, data: bytes = b"x" * 100, *, age: float = 0.0) -> Path:
    path.write_bytes(data)
    if age:
        stamp = time.time() - age
        os.utime(path, (stamp, stamp))
    return path


# -- Arrivals: when a file counts as complete ----------------------------------------------


def test_a_closed_file_is_due_at_once_an_open_one_only_after_settling(tmp_path: Path) -> None:
    clock = Clock()
    arrivals = Arrivals(settle_seconds=2.0, capacity=10, clock=clock)
    closed, open_ = write(tmp_path / "closed.png"), write(tmp_path / "open.png")
    arrivals.saw(closed, finished=True)
    arrivals.saw(open_)
    assert arrivals.due(10) == [closed]
    clock.now += 1.9
    assert arrivals.due(10) == []
    clock.now += 0.2
    assert arrivals.due(10) == [open_]
    assert arrivals.waiting == 0 and len(arrivals) == 2  # both queued until done()


def test_a_file_that_keeps_changing_is_not_due(tmp_path: Path) -> None:
    clock = Clock()
    arrivals = Arrivals(settle_seconds=1.0, capacity=10, clock=clock)
    path = write(tmp_path / "slow.png", b"a")
    arrivals.saw(path)
    for size in range(2, 8):
        clock.now += 0.6
        with path.open("ab") as handle:
            handle.write(b"b")
        os.utime(path, ns=(0, size * 10**9))  # a new mtime each time, as a writer makes
        assert arrivals.due(10) == [], f"due while still growing ({size} bytes)"
    clock.now += 1.0
    assert arrivals.due(10) == [path]


def test_a_change_after_the_close_event_means_the_writer_came_back(tmp_path: Path) -> None:
    clock = Clock()
    arrivals = Arrivals(settle_seconds=1.0, capacity=10, clock=clock)
    path = write(tmp_path / "a.png", b"a")
    arrivals.saw(path, finished=True)
    path.write_bytes(b"ab")
    assert arrivals.due(10) == []  # changed since the close: wait again
    clock.now += 1.0
    assert arrivals.due(10) == [path]


@pytest.mark.parametrize("age", [86_400.0, -86_400.0], ids=["a-day-old", "a-day-ahead"])
def test_a_files_own_mtime_never_makes_it_due(tmp_path: Path, age: float) -> None:
    """A share's clock a day off either way: the file waits for settle_seconds by ours."""
    clock = Clock()
    arrivals = Arrivals(settle_seconds=2.0, capacity=10, clock=clock)
    path = write(tmp_path / "remote.png", age=age)
    arrivals.saw(path)
    assert arrivals.due(10) == []  # before: a day-old mtime made it due at once
    clock.now += 1.9
    assert arrivals.due(10) == []
    clock.now += 0.2
    assert arrivals.due(10) == [path]
    seen = arrivals.observation(path)
    assert seen is not None and seen.since == 1000.0 and seen.size == path.stat().st_size


def test_due_hands_out_no_more_than_the_inbox_takes(tmp_path: Path) -> None:
    arrivals = Arrivals(settle_seconds=0.0, capacity=10)
    paths = [write(tmp_path / f"{i}.png", age=10) for i in range(5)]
    for p in paths:
        arrivals.saw(p)
    first = arrivals.due(2)
    assert len(first) == 2
    assert sorted(first + arrivals.due(10)) == sorted(paths)


def test_capacity_bounds_the_files_tracked_and_flags_the_rest(tmp_path: Path) -> None:
    arrivals = Arrivals(settle_seconds=0.0, capacity=3)
    paths = [write(tmp_path / f"{i}.png") for i in range(5)]
    accepted = [arrivals.saw(p) for p in paths]
    assert accepted == [True, True, True, False, False]
    assert len(arrivals) == 3 and arrivals.peak == 3
    assert arrivals.take_missed() is True
    assert arrivals.take_missed() is False  # reported once
    for p in arrivals.due(3):
        arrivals.done(p)
    assert len(arrivals) == 0 and arrivals.saw(paths[3])


def test_a_queued_file_is_not_tracked_twice_and_retry_waits_again(tmp_path: Path) -> None:
    clock = Clock()
    arrivals = Arrivals(settle_seconds=1.0, capacity=10, clock=clock)
    path = write(tmp_path / "a.png")
    arrivals.saw(path, finished=True)
    assert arrivals.due(10) == [path]
    arrivals.saw(path, finished=True)  # a rescan or a late event while the worker has it
    assert arrivals.tracked(path) and arrivals.waiting == 0
    arrivals.retry(path)  # the worker found it still being written
    assert arrivals.due(10) == []
    clock.now += 1.0
    assert arrivals.due(10) == [path]


def test_a_file_that_vanished_is_dropped(tmp_path: Path) -> None:
    arrivals = Arrivals(settle_seconds=0.0, capacity=10)
    path = write(tmp_path / "a.png")
    arrivals.saw(path)
    path.unlink()
    assert arrivals.due(10) == [] and len(arrivals) == 0
    assert arrivals.saw(tmp_path / "never.png") is False


# -- the observer: which events count ------------------------------------------------------


class Observed:
    """A real observer over ``inbox`` feeding a real Arrivals; records folder callbacks."""

    def __init__(self, inbox: Path, out: Path, *, polling: bool = False) -> None:
        self.arrivals = Arrivals(settle_seconds=1.0, capacity=100)
        self.folders: list[Path] = []
        accept = Filter(["*.png", "*.jpg"], [out])
        handler = EventHandler(accept, self.arrivals, self.folders.append)
        self.watcher = Watcher([inbox], recursive=True, polling=polling, handler=handler)

    def collect(self, expected: int, timeout: float = WAIT) -> list[Path]:
        """Complete files, until ``expected`` of them came (or the time is up)."""
        got: list[Path] = []
        deadline = time.monotonic() + timeout
        while len(got) < expected and time.monotonic() < deadline:
            self.arrivals.wake.wait(0.05)
            self.arrivals.wake.clear()
            got += self.arrivals.due(100)
        return got


@pytest.fixture
def observed(tmp_path: Path) -> Iterator[Observed]:
    inbox, out = tmp_path / "inbox", tmp_path / "inbox" / "sorted"
    out.mkdir(parents=True)
    o = Observed(inbox, out)
    o.watcher.start()
    yield o
    o.watcher.stop()


def test_a_slowly_written_file_is_complete_only_after_its_last_chunk(
    observed: Observed, tmp_path: Path
) -> None:
    path = tmp_path / "inbox" / "slow.png"
    done = threading.Event()

    def writer() -> None:
        with path.open("wb") as handle:
            for _ in range(10):  # 3 s in chunks, one open handle, like a generator's encoder
                handle.write(b"\x89PNG" * 256)
                handle.flush()
                time.sleep(0.3)
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        got = observed.collect(1)
    finally:
        thread.join()
    assert got == [path]
    assert done.is_set(), "reported complete while the writer still had it open"
    assert path.stat().st_size == 10 * 4 * 256


def test_a_temporary_name_renamed_into_place_is_seen_under_its_final_name(
    observed: Observed, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    tmp = write(inbox / "x.png.tmp")
    tmp.rename(inbox / "x.png")
    assert observed.collect(1) == [inbox / "x.png"]


def test_subfolders_count_other_extensions_and_the_output_root_do_not(
    observed: Observed, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "day1").mkdir()
    write(inbox / "day1" / "a.png")
    write(inbox / "notes.txt")
    write(inbox / "b.PNG")
    (inbox / "sorted" / "red").mkdir()
    write(inbox / "sorted" / "red" / "routed.png")
    got = observed.collect(2, timeout=5.0)
    time.sleep(1.5)  # anything wrongly reported would have settled by now
    got += observed.arrivals.due(100)
    assert sorted(got) == [inbox / "b.PNG", inbox / "day1" / "a.png"]
    assert inbox / "day1" in observed.folders  # a new folder is scanned too


def test_the_polling_observer_sees_files_without_close_events(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    o = Observed(inbox, tmp_path / "out", polling=True)
    o.watcher.start()
    try:
        write(inbox / "a.png")
        assert o.collect(1) == [inbox / "a.png"]
    finally:
        o.watcher.stop()


def test_a_dead_observer_is_restarted_and_a_missing_folder_watched_once_it_appears(
    tmp_path: Path,
) -> None:
    inbox = tmp_path / "inbox"
    o = Observed(inbox, tmp_path / "out")
    o.watcher.start()  # the folder does not exist yet: a warning, no failure
    try:
        assert o.watcher.check() is False  # nothing appeared yet: no restart
        inbox.mkdir()
        assert o.watcher.check() is True  # now it is watched
        write(inbox / "a.png")
        assert o.collect(1) == [inbox / "a.png"]
        observer = o.watcher.observer
        assert observer is not None
        observer.stop()  # what a network error does to watchdog's polling thread
        observer.join()
        assert o.watcher.check() is True
        write(inbox / "b.png")
        assert o.collect(1) == [inbox / "b.png"]
    finally:
        o.watcher.stop()
