"""systemd's notify protocol (``Type=notify``), without a dependency.

systemd passes ``NOTIFY_SOCKET`` (a datagram socket path, or ``@name`` for the
abstract namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` (and maybe
``WATCHDOG_PID``). The service sends newline-separated ``KEY=value`` lines:
``READY=1`` once it serves, ``WATCHDOG=1`` at least every ``WATCHDOG_USEC``
(we ping at half of it), ``STATUS=...`` for ``systemctl status``, and
``STOPPING=1`` when it shuts down. Without ``NOTIFY_SOCKET`` every call is a
no-op, so the same code runs in a terminal, under Windows or in tests.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from loguru import logger


class SystemdNotifier:
    """Sends state changes to systemd when it is listening; never raises."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        self.watchdog_interval = _watchdog_interval(env)

    @property
    def enabled(self) -> bool:
        return bool(self._address) and hasattr(socket, "AF_UNIX")

    def ready(self, status: str = "") -> None:
        self._send("READY=1", status)

    def status(self, status: str) -> None:
        self._send("", status)

    def watchdog(self) -> None:
        self._send("WATCHDOG=1", "")

    def stopping(self, status: str = "") -> None:
        self._send("STOPPING=1", status)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _send(self, state: str, status: str) -> None:
        if not self.enabled:
            return
        lines = [state] if state else []
        if status:
            lines.append("STATUS=" + status.replace("\n", " "))
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._socket.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:  # systemd gone or the socket not ours: keep serving
            logger.debug("systemd notify to {!r} failed: {}", self._address, exc)


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half the timeout), or None when not asked."""
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
        pid = int(env.get("WATCHDOG_PID", str(os.getpid())))
    except ValueError:
        return None
    if usec <= 0 or pid != os.getpid():
        return None
    return usec / 1e6 / 2
