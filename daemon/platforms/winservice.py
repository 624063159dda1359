"""``gensift service install|uninstall|start|stop|status`` on Windows.

What to register, create, update, stop and wait for, and what to tell the user. The service
manager sits behind :class:`ServiceControl`
(:mod:`gensift.daemon.platforms.win32control`), so this is tested on Linux with a fake; the
service process is :mod:`gensift.daemon.platforms.winhost`.

The service runs as LocalSystem: it can read and write the user's folders, but ``~``, the
user's environment variables, mapped drive letters and the Recycle Bin are per-account, so
the config must use absolute paths (UNC paths for network folders).
"""

from __future__ import annotations

import ntpath
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path, PureWindowsPath
from typing import TextIO

from gensift.daemon.config import LogSettings, Settings
from gensift.daemon.platforms.servicepaths import environment_warning, refuse_account_paths
from gensift.daemon.platforms.win32control import (
    ERROR_ACCESS_DENIED,
    ERROR_SERVICE_ALREADY_RUNNING,
    ERROR_SERVICE_MARKED_FOR_DELETE,
    ERROR_SERVICE_SPECIFIC_ERROR,
    Pywin32Control,
    ServiceControl,
    ServiceError,
    ServiceSpec,
    ServiceState,
    StartType,
)
from gensift.models.errors import InputError, RuntimeProblem

SERVICE_NAME = "gensift"
DISPLAY_NAME = "gensift image sorter"
DESCRIPTION = (
    "Watches an image generator's output folder and sorts every new image through the "
    "quality -> feature classifier cascade (gensift watch)."
)
#: The module the registered command line runs: the service process.
SERVICE_MODULE = "gensift.daemon.platforms.winhost"
ACCOUNT = "LocalSystem"
#: Delayed automatic start: after boot has settled, when network shares and the GPU driver are up.
DEFAULT_START: StartType = "delayed"
#: Recovery: restart 10 s, 1 min, 5 min after a failure; the count resets after a day.
RESTART_DELAYS_MS = (10_000, 60_000, 300_000)
FAILURE_RESET_S = 86_400
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
POLL_S = 0.25


def check_config_paths(config: Path) -> None:
    """Refuse a config whose paths depend on the account (install, and each service start)."""
    refuse_account_paths(
        config,
        runs_as=f"the Windows service runs as {ACCOUNT}",
        advice=(
            " (C:\\Users\\you\\..., and \\\\server\\share\\... for network folders), then run "
            "the command again"
        ),
    )


# --- what the service runs ---------------------------------------------------------------------


def python_for_service(executable: str, base_executable: str) -> str:
    """The interpreter to register: this environment's ``python.exe`` (never ``pythonw.exe``).

    ``pythonw.exe`` has no standard streams; the Microsoft Store's Python lives in a per-user
    app package that LocalSystem cannot start.
    """
    if not executable:
        raise RuntimeProblem("cannot tell which python.exe runs gensift (sys.executable is empty)")
    for path in (executable, base_executable):
        if "windowsapps" in path.lower():
            raise InputError(
                f"{path} is the Microsoft Store's Python, which a Windows service cannot run. "
                "Install Python from python.org, make a virtual environment with it, install "
                "gensift there and run this command from that environment"
            )
    folder, name = ntpath.split(executable)
    if name.lower() == "pythonw.exe":
        return ntpath.join(folder, "python.exe")
    return executable


def service_command(config: Path, python: str) -> list[str]:
    """The argv the service manager starts: the module below, told which config to read."""
    return [python, "-I", "-m", SERVICE_MODULE, "--config", str(config)]


def format_command_line(argv: Sequence[str]) -> str:
    """One Windows command line (the C runtime's quoting rules, which Python's argv follows).

    The program is always quoted, spaces or not: an unquoted path with a space is the
    "unquoted service path" weakness (``C:\\Program.exe`` would run first).
    """
    program, *args = argv
    return f'"{program}" {subprocess.list2cmdline(args)}'.rstrip()


def default_log_file(environ: Mapping[str, str]) -> Path:
    r"""Where a service logs when ``log.file`` is empty: it has no console to write to.

    ``%ProgramData%\gensift\gensift.log`` (C:\ProgramData for LocalSystem): readable by every
    user, writable by the service, and not inside anyone's profile.
    """
    root = environ.get("PROGRAMDATA") or environ.get("ProgramData") or r"C:\ProgramData"
    return Path(root) / "gensift" / "gensift.log"


def service_log(log: LogSettings, environ: Mapping[str, str]) -> LogSettings:
    """``log`` with a file always set (the default one when the config leaves it empty)."""
    if log.file is not None:
        return log
    return log.model_copy(update={"file": default_log_file(environ)})


# --- install, remove, start, stop --------------------------------------------------------------


def _control(control: ServiceControl | None) -> ServiceControl:
    return control if control is not None else Pywin32Control()


def _query(control: ServiceControl) -> ServiceState | None:
    with _doing(f"looking up the '{SERVICE_NAME}' service"):
        return control.query(SERVICE_NAME)


def _service_problem(exc: ServiceError, doing: str) -> Exception:
    """The user-facing error for a failed service-manager call."""
    if exc.winerror == ERROR_ACCESS_DENIED:
        return InputError(
            f"{doing}: access denied. Managing Windows services needs administrator rights: "
            "run this from an elevated prompt (Run as administrator)"
        )
    if exc.winerror == ERROR_SERVICE_MARKED_FOR_DELETE:
        return RuntimeProblem(
            f"{doing}: Windows still has the old '{SERVICE_NAME}' service marked for deletion. "
            "Close the Services console (services.msc), Event Viewer and Task Manager, then "
            "run the command again (or restart Windows)"
        )
    return RuntimeProblem(f"{doing} failed: {exc} (Windows error {exc.winerror})")


@contextmanager
def _doing(what: str) -> Iterator[None]:
    try:
        yield
    except ServiceError as exc:
        raise _service_problem(exc, what) from None


def _wait_while(control: ServiceControl, pending: set[str], timeout: float) -> ServiceState | None:
    """Poll until the service leaves the ``pending`` states (or the timeout passes)."""
    deadline = time.monotonic() + timeout
    while True:
        state = control.query(SERVICE_NAME)
        if state is None or state.state not in pending or time.monotonic() >= deadline:
            return state
        time.sleep(POLL_S)


def _describe_exit(state: ServiceState) -> str:
    if state.win32_exit_code == ERROR_SERVICE_SPECIFIC_ERROR:
        return f"service-specific exit code {state.service_exit_code:#x}"
    return f"exit code {state.win32_exit_code}"


def _where_to_look(settings: Settings | None, environ: Mapping[str, str]) -> str:
    if settings is None:
        log = f"{default_log_file(environ)} unless the service's config names another [log] file"
    else:
        log = str(service_log(settings.log, environ).file)
    return (
        f"its log is {log}; errors also go to Event Viewer -> Windows Logs -> Application, "
        f"source '{SERVICE_NAME}'"
    )


def _start_and_wait(
    control: ServiceControl, settings: Settings | None, out: TextIO, environ: Mapping[str, str]
) -> None:
    with _doing(f"starting the '{SERVICE_NAME}' service"):
        try:
            control.start(SERVICE_NAME)
        except ServiceError as exc:
            if exc.winerror != ERROR_SERVICE_ALREADY_RUNNING:
                raise
        state = _wait_while(control, {"start pending"}, START_TIMEOUT_S)
    where = _where_to_look(settings, environ)
    if state is not None and state.state == "running":
        out.write(f"started: the service is running (PID {state.pid}); {where}\n")
        return
    how = "did not finish starting" if state is None else f"is {state.state}"
    detail = f" ({_describe_exit(state)})" if state is not None and state.state == "stopped" else ""
    raise RuntimeProblem(f"the '{SERVICE_NAME}' service {how}{detail}; {where}")


def _stop_and_wait(control: ServiceControl, out: TextIO) -> None:
    out.write(f"stopping the '{SERVICE_NAME}' service (it finishes the batch in flight)\n")
    with _doing(f"stopping the '{SERVICE_NAME}' service"):
        control.stop(SERVICE_NAME)
        pending = {"running", "stop pending", "start pending"}
        state = _wait_while(control, pending, STOP_TIMEOUT_S)
    if state is not None and state.state != "stopped":
        raise RuntimeProblem(
            f"the '{SERVICE_NAME}' service is still {state.state} after {STOP_TIMEOUT_S:.0f} s; "
            f"stop it from services.msc or with 'sc stop {SERVICE_NAME}', then try again"
        )
    out.write("stopped\n")


def _watched_and_written(settings: Settings) -> list[Path]:
    paths = [*settings.watch.paths, settings.output.root, settings.journal.path]
    for stage in (settings.stages.quality, settings.stages.feature):
        if stage.checkpoint is not None:
            paths.append(stage.checkpoint)
    if settings.log.file is not None:
        paths.append(settings.log.file)
    return paths


def service_warnings(
    settings: Settings, config: Path, environ: Mapping[str, str], control: ServiceControl
) -> list[str]:
    """Things that work in your terminal but not in a LocalSystem service (not refusals)."""
    warning = environment_warning(environ, config)
    warnings = [warning] if warning else []
    if settings.output.reject_action == "trash":
        warnings.append(
            f'output.reject_action = "trash" sends rejects to {ACCOUNT}\'s Recycle Bin, which '
            'you will not see in yours; "quarantine" keeps them under output.root/_rejected'
        )
    for path in _watched_and_written(settings):
        if control.is_remote_drive(path):
            warnings.append(
                f"{path} is on a drive letter mapped to a network share; the service does not "
                "see your drive mappings: use the UNC path (\\\\server\\share\\...)"
            )
    if not settings.watch.polling and any(
        PureWindowsPath(path).drive.startswith("\\\\") for path in settings.watch.paths
    ):
        warnings.append(
            "a watched folder is a network share: set watch.polling = true, change events from "
            "shares are unreliable"
        )
    return warnings


def install(
    settings: Settings,
    config: Path,
    *,
    dry_run: bool,
    out: TextIO,
    control: ServiceControl | None = None,
    python: str | None = None,
    environ: Mapping[str, str] | None = None,
    start_now: bool = True,
) -> int:
    """Create or update the ``gensift`` service for ``config`` and start it.

    ``config`` must be an absolute path to a config that :func:`load_config` accepted.
    Installing over an existing service stops it if it runs, updates its configuration
    (keeping the account it logs on as) and starts it again, which also clears a failed state.
    """
    env = os.environ if environ is None else environ
    control = _control(control)
    if not config.is_absolute():
        raise InputError(f"{config}: the service needs the config's absolute path")
    check_config_paths(config)
    python = python_for_service(python or sys.executable, getattr(sys, "_base_executable", ""))
    spec = ServiceSpec(
        SERVICE_NAME,
        DISPLAY_NAME,
        DESCRIPTION,
        format_command_line(service_command(config, python)),
        DEFAULT_START,
        RESTART_DELAYS_MS,
        FAILURE_RESET_S,
    )
    existing = _query(control)
    _print_plan(spec, existing, settings, env, out, dry_run=dry_run, start=start_now)
    for warning in service_warnings(settings, config, env, control):
        out.write(f"warning: {warning}\n")
    if dry_run:
        return 0
    if existing is None:
        with _doing(f"creating the '{SERVICE_NAME}' service"):
            control.create(spec)
        out.write(f"created the '{SERVICE_NAME}' service\n")
    else:
        if existing.state != "stopped":
            _stop_and_wait(control, out)
        with _doing(f"updating the '{SERVICE_NAME}' service"):
            control.update(spec)
        out.write(f"updated the '{SERVICE_NAME}' service\n")
    if start_now:
        _start_and_wait(control, settings, out, env)
    return 0


_START_WORDS = {
    "delayed": "automatically at boot (delayed start)",
    "auto": "automatically at boot",
    "manual": "when started",
}


def _print_plan(
    spec: ServiceSpec,
    existing: ServiceState | None,
    settings: Settings,
    environ: Mapping[str, str],
    out: TextIO,
    *,
    dry_run: bool,
    start: bool,
) -> None:
    """What install does, step by step (the whole output of a dry run)."""
    prefix = "would " if dry_run else ""
    starts = _START_WORDS[spec.start]
    restarts = ", ".join(f"{delay // 1000} s" for delay in spec.restart_delays_ms)
    account = existing.account if existing is not None else ACCOUNT
    lines = [
        f"gensift service install{' (dry run: nothing is changed)' if dry_run else ''}",
        f"  service:      {spec.name} ({spec.display_name}), runs as {account}, starts {starts}",
        f"  command line: {spec.command_line}",
        f"  log file:     {service_log(settings.log, environ).file}",
        f"  recovery:     restart after {restarts}; the count resets after a day",
    ]
    if existing is None:
        lines.append(f"  {prefix}create the service")
    else:
        lines.append(f"  the service exists ({existing.state})")
        if existing.command_line != spec.command_line:
            lines.append(f"    registered command line: {existing.command_line}")
        if existing.state != "stopped":
            lines.append(f"  {prefix}stop it (it finishes the batch in flight)")
        lines.append(f"  {prefix}update its configuration")
    if start:
        lines.append(f"  {prefix}start it and wait until it runs")
    out.write("\n".join(lines) + "\n")


def remove(
    settings: Settings | None,
    config: Path | None,
    *,
    dry_run: bool,
    out: TextIO,
    control: ServiceControl | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Stop (gracefully) and delete the service; absent already is fine. Data is kept.

    The config is only used to say which files are kept: a deleted or broken config must
    not stand between a user and removing the service.
    """
    env = os.environ if environ is None else environ
    control = _control(control)
    existing = _query(control)
    if existing is None:
        out.write(f"the '{SERVICE_NAME}' service is not installed; nothing to remove\n")
        return 0
    if dry_run:
        out.write("gensift service uninstall (dry run: nothing is changed)\n")
        out.write(f"  the service exists ({existing.state}): {existing.command_line}\n")
        if existing.state != "stopped":
            out.write("  would stop it (it finishes the batch in flight)\n")
        out.write(f"  would delete the '{SERVICE_NAME}' service\n")
        return 0
    if existing.state != "stopped":
        _stop_and_wait(control, out)
    with _doing(f"removing the '{SERVICE_NAME}' service"):
        control.delete(SERVICE_NAME)
        after = control.query(SERVICE_NAME)
    if after is None:
        out.write(f"removed the '{SERVICE_NAME}' service\n")
    else:
        out.write(
            f"the '{SERVICE_NAME}' service is marked for deletion; Windows removes it once the "
            "Services console (services.msc) and Event Viewer are closed\n"
        )
    if settings is None or config is None:
        out.write("kept: the config, the journal and the log (uninstalling deletes no files)\n")
    else:
        log = service_log(settings.log, env).file
        out.write(f"kept: config {config}, journal {settings.journal.path}, log {log}\n")
    return 0


def start(
    settings: Settings | None,
    *,
    dry_run: bool,
    out: TextIO,
    control: ServiceControl | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Start the installed service and wait until it runs (or report why it did not).

    ``settings`` (None when the config cannot be read here) only names the log to look at.
    """
    env = os.environ if environ is None else environ
    control = _control(control)
    state = _installed(control, "start")
    if state.state == "running":
        out.write(f"the '{SERVICE_NAME}' service is already running (PID {state.pid})\n")
        return 0
    if dry_run:
        out.write(f"would start the '{SERVICE_NAME}' service (now {state.state})\n")
        return 0
    _start_and_wait(control, settings, out, env)
    return 0


def stop(
    *,
    dry_run: bool,
    out: TextIO,
    control: ServiceControl | None = None,
) -> int:
    """Stop the service gracefully and wait until it has stopped; stopped already is fine."""
    control = _control(control)
    state = _query(control)
    if state is None:
        out.write(f"the '{SERVICE_NAME}' service is not installed; nothing to stop\n")
        return 0
    if state.state == "stopped":
        out.write(f"the '{SERVICE_NAME}' service is already stopped\n")
        return 0
    if dry_run:
        out.write(f"would stop the '{SERVICE_NAME}' service (now {state.state})\n")
        return 0
    _stop_and_wait(control, out)
    return 0


def status(settings: Settings, *, out: TextIO, control: ServiceControl | None = None) -> int:
    """Print the service's state and command line; 0 when running, 3 otherwise (like sc)."""
    control = _control(control)
    state = _query(control)
    if state is None:
        out.write(f"the '{SERVICE_NAME}' service is not installed\n")
        return 3
    pid = f" (PID {state.pid})" if state.state == "running" else ""
    out.write(f"{SERVICE_NAME}: {state.state}{pid}, runs as {state.account}\n")
    out.write(f"  command line: {state.command_line}\n")
    if state.state == "stopped" and state.win32_exit_code:
        out.write(f"  last stop: {_describe_exit(state)}\n")
    return 0 if state.state == "running" else 3


def _installed(control: ServiceControl, verb: str) -> ServiceState:
    state = _query(control)
    if state is None:
        raise InputError(
            f"cannot {verb} the '{SERVICE_NAME}' service: it is not installed (run "
            "'gensift service install' from an elevated prompt first)"
        )
    return state
