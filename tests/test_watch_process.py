"""``gensift watch`` as a separate process: signals, systemd's notify socket, SIGKILL."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sortkit import check_ledger, decisions, run_harness, sha, write_config
from watchkit import (
    NotifySocket,
    drawn_files,
    final_count,
    wait_decided,
    wait_for,
    write_renamed,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and sockets")

GENSIFT = Path(sys.executable).with_name("gensift")
HARNESS = Path(__file__).with_name("watch_harness.py")
START = 600.0  # seconds a cold start (importing torch) may take on a loaded machine


def start(config: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(
            [str(GENSIFT), "watch", "-c", str(config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    """SIGTERM; the exit code and the seconds it took to exit."""
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    return code, time.monotonic() - began


def sha_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def slow_write(data: bytes, target: Path, seconds: float = 3.0, chunks: int = 10) -> None:
    """Write ``data`` through one open handle in ``chunks`` over ``seconds``."""
    step = -(-len(data) // chunks)
    with target.open("wb") as handle:
        for i in range(chunks):
            handle.write(data[i * step : (i + 1) * step])
            handle.flush()
            time.sleep(seconds / chunks)


def test_the_daemon_end_to_end_under_a_stand_in_for_systemd(
    tmp_path: Path, frozen_pair: tuple[Path, Path]
) -> None:
    inbox = tmp_path / "inbox"
    root = inbox / "sorted"  # the output root inside the watched folder: it is skipped
    config = write_config(tmp_path, *frozen_pair, quality_threshold=0.5, feature_threshold=0.4,
                          uncertain_action="review", root=root, settle_seconds=1.0)  # fmt: skip
    journal = tmp_path / "journal.sqlite3"
    log = tmp_path / "watch.log"
    pre = drawn_files(inbox, 5, prefix="pre")
    originals = {p: sha(p) for p in pre}  # before the daemon moves them
    staged = drawn_files(tmp_path / "staged", 64, prefix="burst", seed=1)
    big = drawn_files(tmp_path / "big", 1, prefix="slow", seed=2)[0].read_bytes()
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        proc = start(config, log, NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="2000000")
        wait_for(lambda: "READY=1" in notify.lines() or proc.poll() is not None, START, "READY")
        assert proc.poll() is None, log.read_text()[-3000:]
        lines = notify.lines()
        ready_at = lines.index("READY=1")
        assert "STATUS=start-up scan found 5 undecided file(s); watching" in lines[ready_at:]
        assert not any(line.startswith("WATCHDOG=1") for line in lines[:ready_at])

        writer = threading.Thread(target=slow_write, args=(big, inbox / "slow.png"))
        writer.start()
        write_renamed(staged[0], inbox / "renamed.png")
        (inbox / "day2").mkdir()
        shutil.copyfile(staged[1], inbox / "day2" / "nested.png")
        (inbox / "notes.txt").write_text("not an image")
        shutil.copyfile(staged[2], inbox / "picture.gif")
        writer.join()
        rows = wait_decided(journal, 8)
        by_name = {e.source.name: e for e in rows}
        assert set(by_name) == {p.name for p in pre} | {"slow.png", "renamed.png", "nested.png"}
        slow = by_name["slow.png"]
        assert (slow.size, slow.sha256) == (len(big), sha_bytes(big))  # after it was complete

        for path in staged[3:]:
            shutil.copyfile(path, inbox / path.name)
        wait_decided(journal, 12)  # well into the burst
        code, seconds = stop(proc)
        assert code == 0, log.read_text()[-3000:]
        assert seconds < 10, f"took {seconds:.1f} s to stop"
        assert not [e for e in decisions(journal) if e.state == "intent"]
        assert final_count(journal) < 8 + 61, "the burst should still have been running"
        lines = notify.lines()
        assert "STOPPING=1" in lines
        assert lines.count("WATCHDOG=1") >= 2
    finally:
        notify.close()

    proc = start(config, log)  # the next start finishes the rest
    try:
        wait_decided(journal, 8 + 61, timeout=START)
    finally:
        code, _ = stop(proc)
    assert code == 0, log.read_text()[-3000:]
    originals |= {inbox / p.name: sha(p) for p in staged[3:]}
    originals |= {inbox / "renamed.png": sha(staged[0]), inbox / "slow.png": sha_bytes(big)}
    originals[inbox / "day2" / "nested.png"] = sha(staged[1])
    check_ledger(originals, journal, root)
    assert not [e for e in decisions(journal) if e.source.is_relative_to(root)]
    assert (inbox / "notes.txt").exists() and (inbox / "picture.gif").exists()
    text = log.read_text()
    assert "watching " in text and "run watch-" in text  # the start-up line
    assert "slow.png: " in text and " p=" in text  # a decision line with its probability


def test_sigkill_at_random_moments_then_restart_accounts_for_every_file(
    tmp_path: Path, frozen_pair: tuple[Path, Path]
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, *frozen_pair, quality_threshold=0.5, feature_threshold=0.4,
                          batch_size=2, settle_seconds=0.2)  # fmt: skip
    staged = drawn_files(tmp_path / "staged", 60, prefix="k")
    journal = tmp_path / "journal.sqlite3"
    rounds = 4
    staged_dir = tmp_path / "staged"
    runs = run_harness(HARNESS, config, inbox, staged_dir, journal, rounds, 7)
    assert [r["killed"] for r in runs] == [True] * rounds + [False]
    assert sum(r["decided"] < r["copied"] for r in runs[:-1]) >= 2, runs  # kills mid-burst
    assert runs[-1]["exit"] == 0, runs
    originals = {inbox / p.name: sha(p) for p in staged}
    final = check_ledger(originals, journal, tmp_path / "out")
    assert len(final) == len(staged)
    assert all(e.state in ("done", "skipped", "abandoned") for e in decisions(journal))
