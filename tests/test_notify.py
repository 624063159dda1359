"""systemd notify: real datagram sockets, as systemd listens on them."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gensift.daemon.runtime.notify import SystemdNotifier

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="AF_UNIX datagrams")


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def test_states_reach_systemd_as_key_value_lines(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.ready("watching 2 folders")
    assert sock.recv(4096) == b"READY=1\nSTATUS=watching 2 folders"
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.status("120 sorted\n3 queued")
    assert sock.recv(4096) == b"STATUS=120 sorted 3 queued"
    notifier.stopping("finishing the batch in flight")
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=finishing the batch in flight"
    notifier.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux's")
def test_abstract_namespace_socket() -> None:
    name = f"gensift-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        notifier.ready()
        assert sock.recv(4096) == b"READY=1"
        notifier.close()
    finally:
        sock.close()


def test_without_systemd_every_call_is_a_no_op(tmp_path: Path) -> None:
    notifier = SystemdNotifier({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    notifier.ready("x")
    notifier.watchdog()
    notifier.stopping()
    # a socket that is gone does not stop the service either
    gone = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    gone.ready("still fine")
    gone.close()


def test_watchdog_pings_at_half_the_timeout_for_this_process_only() -> None:
    me = str(os.getpid())
    assert SystemdNotifier({"WATCHDOG_USEC": "10000000"}).watchdog_interval == 5.0
    mine = {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": me}
    assert SystemdNotifier(mine).watchdog_interval == 1.5
    other = {"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert SystemdNotifier(other).watchdog_interval is None
    assert SystemdNotifier({"WATCHDOG_USEC": "junk"}).watchdog_interval is None
