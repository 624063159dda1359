"""SIGKILL ``gensift watch`` at random moments of a burst, restart it, repeat (for
test_watch_process.py).

    python watch_harness.py CONFIG INBOX STAGED JOURNAL ROUNDS SEED

Each round forks a daemon (``gensift watch -c CONFIG``) with ``NOTIFY_SOCKET``
pointing at this harness, waits for READY, copies the next share of the files in
STAGED into INBOX, and kills the daemon with SIGKILL after a random delay (0 to 1 s)
drawn from SEED. A last daemon gets the remaining files, runs until the journal has a
final decision for every file, and is stopped with SIGTERM. One JSON line per
daemon goes to stdout. Daemons are forked after gensift and torch are imported
but before any torch operation has run, so each starts in a moment.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from crash_harness import final_count

import gensift.daemon.runtime.service  # noqa: F401 - import torch once, before forking
from gensift.daemon.cli import main

DEADLINE_SECONDS = 600


def _daemon(config: Path, notify: str) -> int:
    pid = os.fork()
    if pid == 0:
        os.dup2(2, 1)
        os.environ["NOTIFY_SOCKET"] = notify
        code = 1
        try:
            code = main(["watch", "-c", str(config)])
        finally:
            os._exit(code)
    return pid


def _wait_ready(sock: socket.socket, pid: int) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        try:
            if b"READY=1" in sock.recv(4096):
                return
        except TimeoutError:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                raise SystemExit(f"daemon {pid} exited before READY") from None
    raise SystemExit(f"daemon {pid} not READY within {DEADLINE_SECONDS} s")


def run(config: Path, inbox: Path, staged: Path, journal: Path, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    files = sorted(staged.iterdir())
    share = len(files) // (rounds + 1)
    with tempfile.TemporaryDirectory() as tmp:
        address = str(Path(tmp) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(address)
        sock.settimeout(0.5)
        for i in range(rounds + 1):
            last = i == rounds
            pid = _daemon(config, address)
            _wait_ready(sock, pid)
            for path in files[i * share : None if last else (i + 1) * share]:
                shutil.copyfile(path, inbox / path.name)
            if not last:
                time.sleep(rng.uniform(0.0, 1.0))
                before = final_count(journal)
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                copied = (i + 1) * share
                result = {"round": i, "killed": True, "decided": before, "copied": copied}
                print(json.dumps(result), flush=True)
                continue
            deadline = time.monotonic() + DEADLINE_SECONDS
            while final_count(journal) < len(files) and time.monotonic() < deadline:
                time.sleep(0.2)
            os.kill(pid, signal.SIGTERM)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            result = {"round": i, "killed": False, "exit": code, "decided": final_count(journal)}
            print(json.dumps(result), flush=True)
        sock.close()


if __name__ == "__main__":
    config, inbox, staged, journal = map(Path, sys.argv[1:5])
    run(config, inbox, staged, journal, int(sys.argv[5]), int(sys.argv[6]))
