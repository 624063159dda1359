"""The Windows service manager, behind :class:`ServiceControl`, and its pywin32 implementation.

Everything else about the service (what to create, update, stop, wait for, and what to tell
the user) is plain Python in :mod:`gensift.daemon.platforms.winservice`, tested on Linux with a fake
``ServiceControl``. pywin32 is imported only when a :class:`Pywin32Control` method runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Any, Literal, Protocol

from loguru import logger

from gensift.models.errors import RuntimeProblem

StartType = Literal["delayed", "auto", "manual"]

# Windows error codes the logic reacts to.
ERROR_ACCESS_DENIED = 5
ERROR_SERVICE_ALREADY_RUNNING = 1056
ERROR_SERVICE_DOES_NOT_EXIST = 1060
ERROR_SERVICE_NOT_ACTIVE = 1062
ERROR_FAILED_SERVICE_CONTROLLER_CONNECT = 1063
ERROR_SERVICE_SPECIFIC_ERROR = 1066
ERROR_SERVICE_MARKED_FOR_DELETE = 1072
# Service-manager constants written out: not every pywin32 release exports them.
DELETE_ACCESS = 0x00010000
SERVICE_ACCEPT_PARAMCHANGE = 0x00000008
SERVICE_CONTROL_PARAMCHANGE = 0x00000006
SERVICE_CONFIG_FAILURE_ACTIONS_FLAG = 4


class ServiceError(Exception):
    """A service-manager call failed; ``winerror`` is the Windows error code."""

    def __init__(self, winerror: int, message: str) -> None:
        super().__init__(message)
        self.winerror = winerror


@dataclass(frozen=True)
class ServiceSpec:
    """Everything gensift registers about its service."""

    name: str
    display_name: str
    description: str
    command_line: str
    start: StartType
    restart_delays_ms: tuple[int, ...]  # restart after each failure in turn
    failure_reset_s: int  # the failure count resets after this long


@dataclass(frozen=True)
class ServiceState:
    """What the service manager says about an installed service."""

    state: str  # stopped | start pending | stop pending | running | paused | ...
    command_line: str
    account: str
    win32_exit_code: int = 0
    service_exit_code: int = 0
    pid: int = 0


class ServiceControl(Protocol):
    """The Windows service manager calls gensift needs; the one platform-specific part."""

    def query(self, name: str) -> ServiceState | None:
        """The service's state and configuration, or None when it is not installed."""

    def create(self, spec: ServiceSpec) -> None:
        """Register a new service (as LocalSystem) with its recovery settings."""

    def update(self, spec: ServiceSpec) -> None:
        """Change an existing service to ``spec`` (its account is left as it is)."""

    def delete(self, name: str) -> None:
        """Mark the service for deletion (gone once no handle to it is open)."""

    def start(self, name: str) -> None:
        """Ask the service manager to start the service; returns at once."""

    def stop(self, name: str) -> None:
        """Send the stop control; returns at once (a stopped service is not an error)."""

    def is_remote_drive(self, path: Path) -> bool:
        """Whether ``path`` is on a drive letter mapped to a network share."""


_STATES = {
    1: "stopped",
    2: "start pending",
    3: "stop pending",
    4: "running",
    5: "continue pending",
    6: "pause pending",
    7: "paused",
}
_DRIVE_REMOTE = 4


class Pywin32Control:
    """:class:`ServiceControl` through pywin32; pywin32 is imported only when a method runs."""

    def query(self, name: str) -> ServiceState | None:
        ws = _win32service()
        try:
            with _service(ws, name, ws.SERVICE_QUERY_STATUS | ws.SERVICE_QUERY_CONFIG) as handle:
                status = ws.QueryServiceStatusEx(handle)
                config = ws.QueryServiceConfig(handle)
        except ServiceError as exc:
            if exc.winerror == ERROR_SERVICE_DOES_NOT_EXIST:
                return None
            raise
        return ServiceState(
            state=_STATES.get(status["CurrentState"], "unknown"),
            command_line=config[3],
            account=config[7],
            win32_exit_code=status["Win32ExitCode"],
            service_exit_code=status["ServiceSpecificExitCode"],
            pid=status["ProcessId"],
        )

    def create(self, spec: ServiceSpec) -> None:
        ws = _win32service()
        with _win32_errors(), _scm(ws, ws.SC_MANAGER_ALL_ACCESS) as scm:
            handle = ws.CreateService(
                scm,
                spec.name,
                spec.display_name,
                ws.SERVICE_ALL_ACCESS,
                ws.SERVICE_WIN32_OWN_PROCESS,
                _start_code(ws, spec.start),
                ws.SERVICE_ERROR_NORMAL,
                spec.command_line,
                None,
                False,
                None,
                None,  # account: LocalSystem
                None,
            )
            try:
                self._configure(ws, handle, spec)
            finally:
                ws.CloseServiceHandle(handle)
        _register_event_source(spec.name)

    def update(self, spec: ServiceSpec) -> None:
        ws = _win32service()
        with _service(ws, spec.name, ws.SERVICE_ALL_ACCESS) as handle:
            ws.ChangeServiceConfig(
                handle,
                ws.SERVICE_NO_CHANGE,
                _start_code(ws, spec.start),
                ws.SERVICE_NO_CHANGE,
                spec.command_line,
                None,
                False,
                None,
                None,  # account and password unchanged: keep a Log On the user chose
                None,
                spec.display_name,
            )
            self._configure(ws, handle, spec)
        _register_event_source(spec.name)

    @staticmethod
    def _configure(ws: Any, handle: Any, spec: ServiceSpec) -> None:
        """Description, delayed start, recovery (after a non-zero exit too, not only a crash)."""
        ws.ChangeServiceConfig2(handle, ws.SERVICE_CONFIG_DESCRIPTION, spec.description)
        ws.ChangeServiceConfig2(
            handle, ws.SERVICE_CONFIG_DELAYED_AUTO_START_INFO, spec.start == "delayed"
        )
        actions = [(ws.SC_ACTION_RESTART, delay) for delay in spec.restart_delays_ms]
        ws.ChangeServiceConfig2(
            handle,
            ws.SERVICE_CONFIG_FAILURE_ACTIONS,
            {
                "ResetPeriod": spec.failure_reset_s,
                "RebootMsg": None,
                "Command": None,
                "Actions": actions,
            },
        )
        ws.ChangeServiceConfig2(handle, SERVICE_CONFIG_FAILURE_ACTIONS_FLAG, True)

    def delete(self, name: str) -> None:
        ws = _win32service()
        with _service(ws, name, DELETE_ACCESS) as handle:
            ws.DeleteService(handle)
        try:
            import win32evtlogutil

            win32evtlogutil.RemoveSourceFromRegistry(name)
        except (ImportError, _pywintypes().error) as exc:
            logger.debug("event source {} not removed: {}", name, exc)

    def start(self, name: str) -> None:
        ws = _win32service()
        with _service(ws, name, ws.SERVICE_START) as handle:
            ws.StartService(handle, None)

    def stop(self, name: str) -> None:
        ws = _win32service()
        with _service(ws, name, ws.SERVICE_STOP) as handle:
            try:
                ws.ControlService(handle, ws.SERVICE_CONTROL_STOP)
            except _pywintypes().error as exc:
                if exc.winerror != ERROR_SERVICE_NOT_ACTIVE:
                    raise

    def is_remote_drive(self, path: Path) -> bool:
        import ctypes

        drive = PureWindowsPath(path).drive
        if not re.fullmatch(r"[A-Za-z]:", drive):
            return False
        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        return kernel32.GetDriveTypeW(drive + "\\") == _DRIVE_REMOTE


def _pywintypes() -> Any:
    import pywintypes

    return pywintypes


def _win32service() -> Any:
    """win32service, after pywintypes (which loads the pywintypes3XX.dll it needs)."""
    try:
        import pywintypes  # noqa: F401
        import win32service
    except ImportError as exc:
        raise RuntimeProblem(
            f"pywin32 is not usable here ({exc}); install it into this environment with "
            "'python -m pip install pywin32'"
        ) from None
    return win32service


@contextmanager
def _win32_errors() -> Iterator[None]:
    """pywin32's errors as :class:`ServiceError` (code plus the API call and its message)."""
    pywintypes = _pywintypes()
    try:
        yield
    except pywintypes.error as exc:
        raise ServiceError(exc.winerror, f"{exc.funcname}: {exc.strerror}") from None


@contextmanager
def _scm(ws: Any, access: int) -> Iterator[Any]:
    handle = ws.OpenSCManager(None, None, access)
    try:
        yield handle
    finally:
        ws.CloseServiceHandle(handle)


@contextmanager
def _service(ws: Any, name: str, access: int) -> Iterator[Any]:
    """A handle to the service ``name``, opened for ``access``; errors as ServiceError."""
    with _win32_errors(), _scm(ws, ws.SC_MANAGER_CONNECT) as scm:
        handle = ws.OpenService(scm, name, access)
        try:
            yield handle
        finally:
            ws.CloseServiceHandle(handle)


def _start_code(ws: Any, start: StartType) -> int:
    return ws.SERVICE_DEMAND_START if start == "manual" else ws.SERVICE_AUTO_START


def _register_event_source(name: str) -> None:
    """Register the event-log source now, while elevated, so the service's entries read well."""
    try:
        import servicemanager

        servicemanager.SetEventSourceName(name, True)
    except (ImportError, _pywintypes().error) as exc:
        logger.debug("event source {} not registered: {}", name, exc)
