"""The Windows service process: ``python -I -m gensift.daemon.platforms.winhost --config CONFIG``.

Why pywin32, and why hosted by ``python.exe`` rather than ``pythonservice.exe``:

- pywin32's service framework gives a real service: the service manager's stop, shutdown and
  parameter-change requests arrive as method calls, so a stop is ``Daemon.request_stop()`` —
  the same graceful path as SIGTERM on Linux — with no console Ctrl+C emulation (what NSSM
  and WinSW do for a console program) and no third-party binary to download and ship.
- pywin32's default host, ``pythonservice.exe``, is what breaks in virtual environments: it
  embeds the interpreter without knowing the venv, needs ``python3XX.dll`` and
  ``pywintypes3XX.dll`` on the service account's DLL path, and fails with error 1053 when
  they are not (mhammond/pywin32 issues 1450, 1451, 1455; 2660 for the copy into the venv
  failing across drives). Registering the venv's own ``python.exe`` running this module
  instead lets Python find the venv the usual way (``pyvenv.cfg``), and ``pywin32.pth`` (run
  by ``site``) puts ``pywin32_system32`` on the DLL path, so nothing is copied anywhere.
  ``-I`` keeps a machine-wide ``PYTHONHOME`` or ``PYTHONPATH`` and the service's working
  folder (System32) out of the interpreter.
- On Windows a venv's ``Scripts\\python.exe`` is a small launcher that starts the base
  interpreter as a child process (in a job object, so killing the launcher kills both). The
  child calls ``StartServiceCtrlDispatcher``, as a PyInstaller one-file service does; the
  service manager's process id is the launcher's. See docs/windows.md.

The service body is :class:`ServiceHost`, plain Python tested anywhere; :func:`service_class`
wraps it in a ``win32serviceutil.ServiceFramework`` subclass, built only when pywin32 is
importable.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from loguru import logger

from gensift.daemon.config import ConfigError, LogSettings, Settings
from gensift.daemon.config import load_config as _load_config
from gensift.daemon.logs import setup_logging
from gensift.daemon.platforms.win32control import (
    ERROR_FAILED_SERVICE_CONTROLLER_CONNECT,
    SERVICE_ACCEPT_PARAMCHANGE,
    SERVICE_CONTROL_PARAMCHANGE,
)
from gensift.daemon.platforms.winservice import (
    DESCRIPTION,
    DISPLAY_NAME,
    SERVICE_MODULE,
    SERVICE_NAME,
    check_config_paths,
    default_log_file,
    service_log,
)
from gensift.models.errors import InputError, RuntimeProblem

#: What a stop tells the service manager to allow: the daemon's 8 s grace plus teardown.
STOP_WAIT_HINT_MS = 15_000
START_WAIT_HINT_MS = 30_000
EXIT_USAGE = 2


class DaemonLike(Protocol):
    """What the host needs of :class:`gensift.daemon.runtime.service.Daemon`."""

    def run(self) -> int: ...

    def request_stop(self) -> None: ...

    def request_reload(self) -> None: ...


DaemonFactory = Callable[[Settings, Path, Mapping[str, str] | None], DaemonLike]


def _make_daemon(settings: Settings, config: Path, environ: Mapping[str, str] | None) -> DaemonLike:
    """The real daemon; imported here because it brings torch (tens of seconds to import)."""
    from gensift.daemon.runtime.service import Daemon

    return Daemon(settings, config_path=config, environ=None if environ is None else dict(environ))


class _Discard:
    """A sink for a process with no console (``pythonw``): the log file has everything."""

    def write(self, message: str) -> None:
        pass


class EventLogSink:
    """A loguru sink that copies ERROR and CRITICAL lines to the Windows event log.

    Event Viewer is where Windows users and admins look when a service misbehaves; the log file
    keeps every line. ``log_error`` is ``servicemanager.LogErrorMsg`` in the service.
    """

    ERROR_LEVEL = 40

    def __init__(self, log_error: Callable[[str], None]) -> None:
        self._log_error = log_error

    def write(self, message: str) -> None:
        record = getattr(message, "record", None)
        if record is None or record["level"].no < self.ERROR_LEVEL:
            return
        try:
            self._log_error(f"{record['level'].name}: {record['message']}")
        except Exception:  # noqa: BLE001 - a log sink must not raise; the file has the line
            return


class ServiceHost:
    """The body of the Windows service, free of pywin32 so it is tested anywhere.

    :meth:`prepare` reads the config and opens the log (fast: a service must answer the
    service manager within 30 s, and torch is not imported yet); :meth:`run` builds the daemon
    and runs it until :meth:`stop`. ``stop`` and ``reload`` may come from the service manager's
    thread at any time: before the daemon exists, while it runs, or after it finished.
    """

    def __init__(
        self,
        config: Path,
        *,
        make_daemon: DaemonFactory | None = None,
        environ: Mapping[str, str] | None = None,
        sink: Any = None,
    ) -> None:
        """``sink``: where log lines go besides the log file (anything with ``write(str)``);
        the service passes an :class:`EventLogSink`, the default is stderr."""
        self.config = config
        self.environ = environ
        self._make_daemon = make_daemon or _make_daemon
        self._sink = sink
        self._lock = threading.Lock()
        self._stopping = False
        self._daemon: DaemonLike | None = None
        self.settings: Settings | None = None
        self.failure: str | None = None  # why the last run failed, for the event log
        self.log_file: Path | None = None

    @property
    def _env(self) -> Mapping[str, str]:
        return os.environ if self.environ is None else self.environ

    def _console(self) -> Any:
        if self._sink is not None:
            return self._sink
        return sys.stderr if sys.stderr is not None else _Discard()

    def prepare(self) -> Settings:
        """Load and check the config and set up logging; raises ConfigError or InputError.

        A config that cannot be used is also written to the default log file, so the reason is
        somewhere a user can read even though the config never said where to log.
        """
        setup_logging(LogSettings(), sink=self._console())
        logger.info("gensift service starting: config {}", self.config)
        try:
            settings = _load_config(self.config, environ=self.environ)
            check_config_paths(self.config)
            log = service_log(settings.log, self._env)
            setup_logging(log, sink=self._console())
        except (ConfigError, InputError) as exc:
            self._log_to_default_file()
            self._fail(exc)
            raise
        self.log_file = log.file
        self.settings = settings
        return settings

    def _log_to_default_file(self) -> None:
        path = default_log_file(self._env)
        try:
            setup_logging(LogSettings(file=path), sink=self._console())
        except ConfigError as exc:
            logger.error("cannot write the default log file either: {}", exc)
            return
        self.log_file = path

    def run(self) -> int:
        """Run the daemon until stopped; the exit code a ``gensift watch`` would return."""
        if self.settings is None:
            try:
                self.prepare()
            except (ConfigError, InputError):
                return EXIT_USAGE  # prepare logged it
        assert self.settings is not None
        try:
            code = self._run_daemon(self.settings)
        except (ConfigError, InputError) as exc:
            self._fail(exc)
            return EXIT_USAGE
        except RuntimeProblem as exc:
            self._fail(exc)
            return 1
        except Exception:  # noqa: BLE001 - a service must report, not vanish
            logger.exception("gensift service failed")
            self.failure = f"gensift failed unexpectedly; the traceback is in {self.log_file}"
            return 1
        if code != 0 and self.failure is None:
            self.failure = f"gensift stopped with exit code {code}; see {self.log_file}"
            logger.error(self.failure)
        return code

    def _run_daemon(self, settings: Settings) -> int:
        """Build the daemon (importing torch) unless a stop came first, then run it."""
        with self._lock:
            if self._stopping:
                logger.info("stopped before the daemon started")
                return 0
        daemon = self._make_daemon(settings, self.config, self.environ)
        with self._lock:
            if self._stopping:
                logger.info("stopped before the daemon started")
                return 0
            self._daemon = daemon
        return daemon.run()

    def _fail(self, exc: Exception) -> None:
        logger.error("gensift: {}", exc)
        self.failure = f"gensift: {exc}"

    def stop(self) -> None:
        """Stop taking files, finish the batch in flight, return from :meth:`run` (thread-safe)."""
        with self._lock:
            self._stopping = True
            daemon = self._daemon
        if daemon is not None:
            daemon.request_stop()

    def reload(self) -> None:
        """Read the config and checkpoints again: the service's SIGHUP (``sc control gensift
        paramchange``)."""
        with self._lock:
            daemon = self._daemon
        if daemon is not None:
            daemon.request_reload()


class ServiceFailed(Exception):
    """Raised out of ``SvcRun`` so pywin32 reports SERVICE_STOPPED with an error code.

    pywin32's host reports a clean stop when ``SvcRun`` returns, and when it raises, logs the
    traceback to the event log and reports a service-specific error (0x20000001); that error
    is what triggers the recovery actions.
    """


def service_class(config: Path, *, make_host: Callable[[], ServiceHost] | None = None) -> type:
    """The ``win32serviceutil.ServiceFramework`` subclass that hosts ``config``'s daemon.

    Built on demand because pywin32 exists only on Windows; ``make_host`` is for tests.
    """
    import servicemanager
    import win32service
    import win32serviceutil

    def new_host() -> ServiceHost:
        if make_host is not None:
            return make_host()
        return ServiceHost(config, sink=EventLogSink(servicemanager.LogErrorMsg))

    class GensiftService(win32serviceutil.ServiceFramework):  # type: ignore[misc]
        _svc_name_ = SERVICE_NAME
        _svc_display_name_ = DISPLAY_NAME
        _svc_description_ = DESCRIPTION

        def __init__(self, args: Sequence[str]) -> None:
            super().__init__(args)
            self.host = new_host()

        def GetAcceptedControls(self) -> int:
            """Stop, shutdown (from SvcStop/SvcShutdown) and parameter change (reload)."""
            return super().GetAcceptedControls() | SERVICE_ACCEPT_PARAMCHANGE

        def SvcRun(self) -> None:
            """Report RUNNING only once the config is good, so a bad one fails the start."""
            self.ReportServiceStatus(win32service.SERVICE_START_PENDING, START_WAIT_HINT_MS)
            try:
                self.host.prepare()
            except (ConfigError, InputError) as exc:
                self._failed(self.host.failure or f"gensift: {exc}")
            self.ReportServiceStatus(win32service.SERVICE_RUNNING)
            self.SvcDoRun()
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, STOP_WAIT_HINT_MS)

        def SvcDoRun(self) -> None:
            if self.host.run() != 0:
                self._failed(self.host.failure or "gensift stopped with an error")

        def SvcStop(self) -> None:
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING, STOP_WAIT_HINT_MS)
            self.host.stop()

        def SvcShutdown(self) -> None:
            """Windows is shutting down: stop the same way (the journal repairs a cut-off move)."""
            self.SvcStop()

        def SvcOtherEx(self, control: int, event_type: int, data: object) -> None:
            if control == SERVICE_CONTROL_PARAMCHANGE:
                logger.info("parameter change from the service manager: reloading")
                self.host.reload()

        def _failed(self, message: str) -> None:
            """The host logged why (to the file and, through EventLogSink, the event log)."""
            raise ServiceFailed(message)

    return GensiftService


def main(argv: Sequence[str] | None = None) -> int:
    """The service process: hand the class to the service manager's dispatcher.

    Started by the service manager only; run by hand it says what to do instead.
    """
    parser = argparse.ArgumentParser(
        prog=f"python -m {SERVICE_MODULE}",
        description="The gensift Windows service process (started by the service manager).",
    )
    parser.add_argument("--config", type=Path, required=True, help="the config file to serve")
    args = parser.parse_args(argv)
    import pywintypes
    import servicemanager

    servicemanager.Initialize()
    servicemanager.PrepareToHostSingle(service_class(args.config))
    try:
        servicemanager.StartServiceCtrlDispatcher()
    except pywintypes.error as exc:
        if exc.winerror != ERROR_FAILED_SERVICE_CONTROLLER_CONNECT:
            raise
        sys.stderr.write(
            "gensift: this is the Windows service process; the service manager starts it. "
            f"To run in this window use 'gensift watch -c {args.config}'; to control the service "
            "use 'gensift service start' / 'gensift service stop'.\n"
        )
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    exit_code = main()
    # The service manager already has SERVICE_STOPPED; tearing torch down can take long and
    # keeps the process (and the next start's journal lock check) waiting, so end it now.
    logger.remove()  # closes (and so flushes) the log file
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    os._exit(exit_code)
