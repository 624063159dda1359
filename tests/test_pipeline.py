"""The pipeline ``sort`` and ``watch`` share (Sifter, discover), on real files: what it
says about files it cannot handle and folders it cannot list. The daemon tries them again
at every rescan for as long as it runs, so the log must say so once, not every few
minutes for weeks."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import draw
from loguru import logger
from sortkit import write_config
from watchkit import too_deep

from gensift.daemon.config import Settings, load_config
from gensift.daemon.routing.journal import Journal
from gensift.daemon.routing.router import Outcome, Router
from gensift.daemon.runtime.paths import Reported, discover
from gensift.daemon.runtime.sifter import Cascade, Sifter, load_cascade


@pytest.fixture
def log_lines() -> Iterator[list[tuple[str, str]]]:
    """(level, message) of every log line, DEBUG included."""
    lines: list[tuple[str, str]] = []
    sink = logger.add(
        lambda m: lines.append((m.record["level"].name, m.record["message"])), level="DEBUG"
    )
    yield lines
    logger.remove(sink)


def _levels(lines: list[tuple[str, str]], name: str) -> list[str]:
    return [level for level, message in lines if name in message]


def _tries(
    settings: Settings, cascade: Cascade, journal: Journal, reported: Reported, path: Path, n: int
) -> list[Outcome]:
    """``n`` tries at ``path`` with one Sifter, as the worker does between two reloads."""
    sifter = Sifter(settings, cascade, Router(settings.output, journal, "test"), reported=reported)
    return [outcome for _ in range(n) for outcome in sifter.sift([path])]


def test_a_file_that_stays_unreadable_is_an_error_once_then_debug(
    tmp_path: Path, frozen_pair: tuple[Path, Path], log_lines: list[tuple[str, str]]
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    fifo = inbox / "pipe.png"  # a FIFO: opening it to read would wait for a writer forever
    os.mkfifo(fifo)
    settings = load_config(write_config(tmp_path, *frozen_pair))
    cascade = load_cascade(settings)
    reported = Reported()  # the worker's: it outlives each Sifter
    with Journal.open(settings.journal.path) as journal:
        outcomes = _tries(settings, cascade, journal, reported, fifo, 2)
        outcomes += _tries(settings, cascade, journal, reported, fifo, 2)  # after a reload

    assert [(o.state, o.note) for o in outcomes] == [("unreadable", "not a regular file")] * 4
    assert _levels(log_lines, "pipe.png") == ["ERROR", "DEBUG", "DEBUG", "DEBUG"]
    assert fifo.exists()


def test_a_failed_move_is_an_error_once_and_again_after_the_file_is_decided(
    tmp_path: Path, frozen_pair: tuple[Path, Path], log_lines: list[tuple[str, str]]
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    image = inbox / "a.png"
    draw("keep", np.random.default_rng(0), size=64).save(image)
    out = tmp_path / "out"
    out.write_text("a file where the output folder should be")  # no folder can go under it
    # every decision moves the file somewhere under the output root
    config = write_config(tmp_path, *frozen_pair, quality_threshold=0.5, feature_threshold=0.01)
    settings = load_config(config)
    cascade = load_cascade(settings)
    reported = Reported()
    with Journal.open(settings.journal.path) as journal:
        failed = _tries(settings, cascade, journal, reported, image, 2)
        out.unlink()
        [moved] = _tries(settings, cascade, journal, reported, image, 1)

    assert [o.state for o in failed] == ["failed", "failed"]
    assert "cannot create" in failed[0].note
    assert moved.state == "done" and moved.destination is not None
    assert moved.destination.is_relative_to(out) and not image.exists()
    assert _levels(log_lines, "a.png") == ["ERROR", "DEBUG", "INFO"]
    # decided, so forgotten: the same failure on the same path is news again
    assert reported.level(image, failed[0].note) == "ERROR"


def test_a_folder_that_stays_unlistable_is_a_warning_once_per_failure(
    tmp_path: Path, log_lines: list[tuple[str, str]]
) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "sub").mkdir(parents=True)
    draw("keep", np.random.default_rng(0)).save(inbox / "sub" / "a.png")
    deep = too_deep(inbox)
    with pytest.raises(OSError) as listing:
        os.scandir(deep)
    assert listing.value.errno == errno.ENAMETOOLONG

    reported = Reported()  # the daemon's: it outlives each rescan
    scans = [discover([inbox], ["*.png"], recursive=True, exclude=[], reported=reported)]
    scans.append(discover([inbox], ["*.png"], recursive=True, exclude=[], reported=reported))
    assert scans == [[inbox / "sub" / "a.png"]] * 2  # the rest of the tree is still found
    unlisted = [(lvl, msg) for lvl, msg in log_lines if "cannot list this folder" in msg]
    assert [lvl for lvl, _ in unlisted] == ["WARNING", "DEBUG"]
    assert unlisted[0][1].startswith(f"{deep}: cannot list this folder (File name too long)")

    # gensift sort keeps no memory across runs: each run says it once
    log_lines.clear()
    discover([inbox], ["*.png"], recursive=True, exclude=[])
    assert [lvl for lvl, m in log_lines if "cannot list this folder" in m] == ["WARNING"]
    shutil.rmtree(inbox)  # walks by directory handle: no path is too long for it
