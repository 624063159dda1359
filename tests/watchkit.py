"""Helpers for the ``gensift watch`` tests: bounded waits, the daemon in a thread, a stand-in
for systemd's notify socket, drawn images written the ways generators write them, and a
folder no scan can list."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
from conftest import draw
from crash_harness import FINAL_STATES, final_count
from sortkit import decisions

from gensift.daemon.config import load_config
from gensift.daemon.routing.journal import Entry
from gensift.daemon.runtime.notify import SystemdNotifier
from gensift.daemon.runtime.service import Daemon
from gensift.models.checkpoint import read_checkpoint, save_checkpoint

WAIT = 120.0  # seconds; generous for a loaded two-core machine, never a timing assertion

KINDS = ("keep", "reject", "red", "blue", "stripes")


def wait_for(condition: Callable[[], object], timeout: float = WAIT, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or condition}")
        time.sleep(0.05)


def final_rows(journal: Path) -> list[Entry]:
    """Decision rows that ended a file's story (done or skipped), oldest first."""
    if not journal.exists():
        return []
    return [e for e in decisions(journal) if e.state in FINAL_STATES]


def wait_decided(journal: Path, count: int, timeout: float = WAIT) -> list[Entry]:
    """The final rows, once there are at least ``count``.

    Polls a count, not the rows: parsing every row 20 times a second held the GIL so long
    that a daemon thread in the same process ran at half speed (the 2,000-file test).
    """
    wait_for(lambda: final_count(journal) >= count, timeout, f"{count} decisions in {journal}")
    return final_rows(journal)


def drawn_files(folder: Path, count: int, *, prefix: str = "img", seed: int = 0) -> list[Path]:
    """``count`` drawn PNGs of every kind, written in place (the way ComfyUI writes)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        path = folder / f"{prefix}_{i:04d}_{kind}.png"
        draw(kind, rng).save(path)
        paths.append(path)
    return paths


def recalibrated(checkpoint: Path, factor: float, out: Path) -> str:
    """A valid copy of ``checkpoint`` at ``out`` with its temperature times ``factor``
    (a new checkpoint id; a large factor makes every probability close to uniform)."""
    tensors, meta = read_checkpoint(checkpoint)
    new = replace(meta, temperature=meta.temperature * factor, created="")
    return save_checkpoint(out, tensors, new).id


def write_renamed(source: Path, target: Path) -> Path:
    """Copy ``source`` to ``target`` the way the WebUI writes: a temporary name, then rename."""
    temporary = target.with_name(target.name + ".tmp")
    shutil.copyfile(source, temporary)
    temporary.rename(target)
    return target


@contextlib.contextmanager
def daemon_thread(config: Path, notifier: SystemdNotifier | None = None) -> Iterator[Daemon]:
    """``gensift watch`` in a thread of this process (signals are the subprocess tests' job)."""
    daemon = Daemon(load_config(config), config_path=config, notifier=notifier)
    codes: list[int] = []
    errors: list[BaseException] = []

    def main() -> None:
        try:
            codes.append(daemon.run())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=main, name="test-daemon")
    thread.start()
    try:
        wait_for(lambda: daemon.ready.is_set() or not thread.is_alive(), what="READY")
        assert not errors, errors
        yield daemon
    finally:
        daemon.request_stop()
        thread.join(60)
    assert not errors, errors
    assert codes == [0]


def too_deep(parent: Path, name_length: int = 250) -> Path:
    """A real folder under ``parent`` whose path is longer than the system may pass
    (PATH_MAX): listing it fails with ENAMETOOLONG, even for root, for whom no permission
    bit makes a folder unlistable. Built one level at a time through directory handles."""
    name = "d" * name_length
    path, fd = parent, os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        while len(os.fsencode(path)) < os.pathconf(parent, "PC_PATH_MAX"):
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd, path = child, path / name
    finally:
        os.close(fd)
    return path


class NotifySocket:
    """A unix datagram socket standing in for systemd's ``NOTIFY_SOCKET``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[str] = []
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="test-notify")
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._socket.recv(4096)
            except TimeoutError:
                continue
            self.messages.append(data.decode())

    def lines(self) -> list[str]:
        return [line for message in list(self.messages) for line in message.splitlines()]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._socket.close()


def logged(lines: list[str], *parts: str) -> int:
    """How many log lines hold every one of ``parts``."""
    return sum(all(part in line for part in parts) for line in list(lines))
