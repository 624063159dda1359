"""The Windows service, tested on Linux: the service manager is a fake behind ServiceControl,
and pywin32's modules are small fakes injected into sys.modules. No torch: every host gets a
fake daemon factory. Install, remove, start and stop are winservice's; the service process
(host, pywin32 class, main) is winhost's."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from gensift.daemon.config import ConfigError, Settings, load_config
from gensift.daemon.platforms import winhost as wh
from gensift.daemon.platforms import winservice as ws
from gensift.daemon.platforms.install import readable_config
from gensift.daemon.platforms.win32control import (
    ERROR_ACCESS_DENIED,
    ERROR_FAILED_SERVICE_CONTROLLER_CONNECT,
    ERROR_SERVICE_MARKED_FOR_DELETE,
    ERROR_SERVICE_SPECIFIC_ERROR,
    SERVICE_ACCEPT_PARAMCHANGE,
    SERVICE_CONTROL_PARAMCHANGE,
    ServiceError,
    ServiceSpec,
    ServiceState,
)
from gensift.models.errors import InputError, RuntimeProblem

WAIT = 5.0
PYTHON = r"C:\Program Files\gensift env\Scripts\python.exe"


# --- helpers ------------------------------------------------------------------------------------


def write_config(
    folder: Path, extra: str = "", *, values: dict[str, str | None] | None = None
) -> Path:
    """A config whose every path is absolute (so the account check passes) unless ``values``
    sets a key (as TOML text) or leaves it out (None)."""
    settings: dict[str, str | None] = {
        "watch.paths": json.dumps([str(folder / "generator out")]),
        "output.root": json.dumps(str(folder / "sorted")),
        "stages.quality.checkpoint": '""',
        "stages.feature.checkpoint": '""',
        "journal.path": json.dumps(str(folder / "journal.sqlite3")),
    }
    settings.update(values or {})
    tables: dict[str, list[str]] = {}
    for key, value in settings.items():
        if value is None:
            continue
        section, name = key.rsplit(".", 1)
        tables.setdefault(section, []).append(f"{name} = {value}")
    text = "".join(
        f"[{section}]\n" + "\n".join(lines) + "\n\n" for section, lines in tables.items()
    )
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "gensift.toml"
    config.write_text(text + extra, encoding="utf-8")
    return config


def settings_of(config: Path) -> Settings:
    return load_config(config, environ={})


class FakeControl:
    """The service manager as a dict: records calls, can fail a call or a start."""

    def __init__(self, existing: ServiceState | None = None) -> None:
        self.service = existing
        self.calls: list[str] = []
        self.specs: list[ServiceSpec] = []
        self.errors: dict[str, ServiceError] = {}
        self.start_ends_as: ServiceState | None = None  # None: running
        self.remote: set[Path] = set()

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name in self.errors:
            raise self.errors[name]

    def query(self, name: str) -> ServiceState | None:
        assert name == ws.SERVICE_NAME
        self._call("query")
        return self.service

    def create(self, spec: ServiceSpec) -> None:
        self._call("create")
        self.specs.append(spec)
        self.service = ServiceState("stopped", spec.command_line, ws.ACCOUNT)

    def update(self, spec: ServiceSpec) -> None:
        self._call("update")
        self.specs.append(spec)
        assert self.service is not None
        self.service = ServiceState("stopped", spec.command_line, self.service.account)

    def delete(self, name: str) -> None:
        self._call("delete")
        self.service = None

    def start(self, name: str) -> None:
        self._call("start")
        assert self.service is not None
        self.service = self.start_ends_as or ServiceState(
            "running", self.service.command_line, self.service.account, pid=4242
        )

    def stop(self, name: str) -> None:
        self._call("stop")
        assert self.service is not None
        self.service = ServiceState("stopped", self.service.command_line, self.service.account)

    def is_remote_drive(self, path: Path) -> bool:
        return path in self.remote


def running(command_line: str = '"C:\\old\\python.exe" -m old', account: str = "LocalSystem"):
    return ServiceState("running", command_line, account, pid=7)


def do_install(config: Path, control: FakeControl, *, dry_run: bool = False, **kw: Any) -> str:
    out = io.StringIO()
    kw.setdefault("environ", {"PROGRAMDATA": r"C:\ProgramData"})
    code = ws.install(
        settings_of(config), config, dry_run=dry_run, out=out, control=control, python=PYTHON, **kw
    )
    assert code == 0
    return out.getvalue()


# --- importing and the command line -------------------------------------------------------------


def test_modules_import_on_linux_without_pywin32_or_torch() -> None:
    probe = (
        "import sys, gensift.daemon.platforms.winservice, gensift.daemon.platforms.winhost; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'win32service', 'win32serviceutil', 'servicemanager', 'pywintypes')]; "
        "print(bad or 'clean')"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "clean"


def test_command_line_quotes_paths_with_spaces_for_windows() -> None:
    config = Path(r"C:\Users\Ada Lovelace\gensift\my config.toml")
    argv = ws.service_command(config, PYTHON)
    line = ws.format_command_line(argv)
    assert line == (
        r'"C:\Program Files\gensift env\Scripts\python.exe" -I -m gensift.daemon.platforms.winhost '
        r'--config "C:\Users\Ada Lovelace\gensift\my config.toml"'
    )
    assert line.split(" ", 1)[0] == '"C:\\Program' and line.endswith(
        subprocess.list2cmdline(argv[1:])
    )


def test_program_is_quoted_even_without_spaces() -> None:
    line = ws.format_command_line(ws.service_command(Path(r"C:\g\c.toml"), r"C:\venv\python.exe"))
    assert (
        line == r'"C:\venv\python.exe" -I -m gensift.daemon.platforms.winhost --config C:\g\c.toml'
    )


def test_pythonw_is_swapped_for_python_and_store_python_refused() -> None:
    assert ws.python_for_service(r"C:\v\Scripts\pythonw.exe", r"C:\Py\python.exe") == (
        r"C:\v\Scripts\python.exe"
    )
    store = r"C:\Users\a\AppData\Local\Microsoft\WindowsApps\python.exe"
    with pytest.raises(InputError, match="Microsoft Store"):
        ws.python_for_service(r"C:\v\Scripts\python.exe", store)


# --- the account check --------------------------------------------------------------------------


def test_install_refuses_a_home_relative_config_and_touches_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path, values={"watch.paths": '["~/sd/outputs"]'})
    control = FakeControl()
    with pytest.raises(InputError) as caught:
        ws.install(
            settings_of(config),
            config,
            dry_run=False,
            out=io.StringIO(),
            control=control,
            python=PYTHON,
        )
    message = str(caught.value)
    assert "watch.paths" in message and "~/sd/outputs" in message and "LocalSystem" in message
    assert control.calls == []


# --- install ------------------------------------------------------------------------------------


def test_dry_run_prints_the_command_line_and_steps_and_changes_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path / "my configs")
    control = FakeControl()
    text = do_install(config, control, dry_run=True)
    expected = ws.format_command_line(ws.service_command(config, PYTHON))
    assert f"command line: {expected}" in text
    assert "dry run" in text and "would create the service" in text
    assert "would start it" in text
    assert r"C:\ProgramData" in text and "gensift.log" in text
    assert control.calls == ["query"] and control.service is None


def test_install_creates_the_service_and_starts_it(tmp_path: Path) -> None:
    config = write_config(tmp_path / "my configs")
    control = FakeControl()
    text = do_install(config, control)
    assert control.calls[:3] == ["query", "create", "start"]
    (spec,) = control.specs
    assert spec.name == "gensift" and spec.start == "delayed"
    assert spec.command_line.endswith(f'--config "{config}"')
    assert "created the 'gensift' service" in text
    assert "running (PID 4242)" in text


def test_install_over_a_running_service_stops_updates_and_restarts(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    control = FakeControl(running(account=r".\ada"))
    text = do_install(config, control)
    assert control.calls == ["query", "stop", "query", "update", "start", "query"]
    assert 'registered command line: "C:\\old\\python.exe" -m old' in text
    assert "runs as .\\ada" in text  # a Log On account the user chose is kept
    assert control.service is not None and control.service.state == "running"


def test_install_over_a_failed_service_updates_and_starts_without_stopping(tmp_path: Path) -> None:
    failed = ServiceState("stopped", "x", "LocalSystem", ERROR_SERVICE_SPECIFIC_ERROR, 1)
    control = FakeControl(failed)
    do_install(write_config(tmp_path), control)
    assert "stop" not in control.calls
    assert control.calls[:3] == ["query", "update", "start"]


def test_install_without_admin_says_run_as_administrator(tmp_path: Path) -> None:
    control = FakeControl()
    control.errors["create"] = ServiceError(ERROR_ACCESS_DENIED, "OpenSCManager: denied")
    with pytest.raises(InputError, match=r"elevated prompt \(Run as administrator\)"):
        do_install(write_config(tmp_path), control)


def test_install_while_the_old_service_is_marked_for_deletion(tmp_path: Path) -> None:
    control = FakeControl()
    control.errors["create"] = ServiceError(ERROR_SERVICE_MARKED_FOR_DELETE, "x")
    with pytest.raises(RuntimeProblem, match=r"services\.msc"):
        do_install(write_config(tmp_path), control)


def test_a_service_that_fails_to_start_is_reported_with_its_log(tmp_path: Path) -> None:
    control = FakeControl()
    control.start_ends_as = ServiceState(
        "stopped", "x", "LocalSystem", ERROR_SERVICE_SPECIFIC_ERROR, 0x20000001
    )
    with pytest.raises(RuntimeProblem) as caught:
        do_install(write_config(tmp_path), control)
    message = str(caught.value)
    assert "0x20000001" in message and "gensift.log" in message and "Event Viewer" in message


def test_install_warns_about_what_a_service_cannot_see(tmp_path: Path) -> None:
    config = write_config(tmp_path, values={"output.reject_action": '"trash"'})
    control = FakeControl()
    control.remote.add(tmp_path / "journal.sqlite3")
    environ = {"GENSIFT_WATCH__POLLING": "true", "GENSIFT_CONFIG": "x"}
    text = do_install(config, control, dry_run=True, environ=environ)
    warnings = [line for line in text.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3
    assert "GENSIFT_WATCH__POLLING" in warnings[0] and str(config) in warnings[0]
    assert "Recycle Bin" in warnings[1]
    assert "UNC path" in warnings[2]


def test_install_needs_an_absolute_config_path(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    with pytest.raises(InputError, match="absolute"):
        ws.install(
            settings_of(config),
            Path("gensift.toml"),
            dry_run=True,
            out=io.StringIO(),
            control=FakeControl(),
            python=PYTHON,
        )


# --- remove, start, stop ------------------------------------------------------------------------


def test_remove_when_absent_says_so(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    out = io.StringIO()
    assert (
        ws.remove(settings_of(config), config, dry_run=False, out=out, control=FakeControl()) == 0
    )
    assert "not installed; nothing to remove" in out.getvalue()


def test_remove_stops_then_deletes_and_keeps_the_data(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    control, out = FakeControl(running()), io.StringIO()
    ws.remove(settings_of(config), config, dry_run=False, out=out, control=control, environ={})
    assert control.calls == ["query", "stop", "query", "delete", "query"]
    text = out.getvalue()
    assert "removed the 'gensift' service" in text
    assert str(tmp_path / "journal.sqlite3") in text and str(config) in text


def test_remove_dry_run_changes_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    control, out = FakeControl(running()), io.StringIO()
    ws.remove(settings_of(config), config, dry_run=True, out=out, control=control)
    assert control.calls == ["query"]
    assert "would stop it" in out.getvalue() and "would delete" in out.getvalue()


def test_remove_without_a_readable_config_still_removes(tmp_path: Path) -> None:
    control, out = FakeControl(running()), io.StringIO()
    assert ws.remove(None, None, dry_run=False, out=out, control=control, environ={}) == 0
    assert control.service is None
    assert "uninstalling deletes no files" in out.getvalue()


def test_uninstall_and_start_read_the_config_only_for_their_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = write_config(tmp_path)
    out = io.StringIO()
    assert readable_config(good, "uninstall", out) == (good.resolve(), settings_of(good))
    monkeypatch.setenv("GENSIFT_CONFIG", str(tmp_path / "deleted.toml"))
    assert readable_config(None, "uninstall", out) == (None, None)
    assert out.getvalue() == ""  # a config nobody named is not worth a note
    broken = tmp_path / "broken.toml"
    broken.write_text("[watch]\nno_such_key = 1\n")
    assert readable_config(broken, "start", out) == (None, None)
    assert "note: start goes on without the config" in out.getvalue()
    assert "no_such_key" in out.getvalue()


def test_start_and_stop_are_idempotent(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    settings = settings_of(config)
    control, out = FakeControl(running()), io.StringIO()
    ws.start(settings, dry_run=False, out=out, control=control)
    assert "already running" in out.getvalue() and control.calls == ["query"]
    ws.stop(dry_run=False, out=out, control=control)
    assert control.calls == ["query", "query", "stop", "query"]
    ws.stop(dry_run=False, out=out, control=control)
    assert "already stopped" in out.getvalue()
    ws.start(settings, dry_run=False, out=out, control=control, environ={})
    assert control.service is not None and control.service.state == "running"
    assert ws.status(settings, out=out, control=control) == 0


def test_start_without_a_config_names_the_default_log(tmp_path: Path) -> None:
    control = FakeControl(ServiceState("stopped", '"C:\\py.exe" -m x', ws.ACCOUNT))
    control.start_ends_as = ServiceState("stopped", "", ws.ACCOUNT, win32_exit_code=1)
    with pytest.raises(RuntimeProblem, match=r"gensift\.log unless the service's config"):
        ws.start(
            None,
            dry_run=False,
            out=io.StringIO(),
            control=control,
            environ={"PROGRAMDATA": "C:\\D"},
        )


def test_start_when_not_installed_is_a_usage_error(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    with pytest.raises(InputError, match="not installed"):
        ws.start(settings_of(config), dry_run=False, out=io.StringIO(), control=FakeControl())
    out = io.StringIO()
    ws.stop(dry_run=False, out=out, control=FakeControl())
    assert "not installed; nothing to stop" in out.getvalue()


# --- the host -----------------------------------------------------------------------------------


class FakeDaemon:
    """Blocks in run() until request_stop(), like Daemon; records reloads."""

    def __init__(self, code: int = 0, error: Exception | None = None) -> None:
        self.code, self.error = code, error
        self.running = threading.Event()
        self.stopped = threading.Event()
        self.reloads = 0

    def run(self) -> int:
        self.running.set()
        if self.error is not None:
            raise self.error
        if self.code:
            return self.code
        assert self.stopped.wait(WAIT)
        logger.info("fake daemon: finished the batch in flight")
        return 0

    def request_stop(self) -> None:
        self.stopped.set()

    def request_reload(self) -> None:
        self.reloads += 1


class Factory:
    """A daemon factory that records what it built (and can run a hook while building)."""

    def __init__(self, daemon: FakeDaemon | None = None, hook: Callable[[], None] | None = None):
        self.daemon = daemon or FakeDaemon()
        self.hook = hook
        self.calls: list[tuple[Settings, Path]] = []

    def __call__(self, settings: Settings, config: Path, environ: Any) -> FakeDaemon:
        self.calls.append((settings, config))
        if self.hook is not None:
            self.hook()
        return self.daemon


def make_host(config: Path, tmp_path: Path, factory: Factory, sink: Any = None) -> wh.ServiceHost:
    return wh.ServiceHost(
        config,
        make_daemon=factory,
        environ={"PROGRAMDATA": str(tmp_path / "pd")},
        sink=io.StringIO() if sink is None else sink,
    )


def run_in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(target()), name="scm-service-main")
    thread.start()
    return thread, result


def test_stop_from_another_thread_ends_run_with_0(tmp_path: Path) -> None:
    factory = Factory()
    host = make_host(write_config(tmp_path), tmp_path, factory)
    thread, result = run_in_thread(host.run)
    assert factory.daemon.running.wait(WAIT)
    host.stop()
    thread.join(WAIT)
    assert result == [0]
    log = (tmp_path / "pd" / "gensift" / "gensift.log").read_text()
    assert "finished the batch in flight" in log  # no log.file in the config: the default one
    host.stop()  # after it finished: harmless


def test_stop_before_run_never_builds_the_daemon(tmp_path: Path) -> None:
    factory = Factory()
    host = make_host(write_config(tmp_path), tmp_path, factory)
    host.stop()
    assert host.run() == 0
    assert factory.calls == []


def test_stop_while_the_daemon_is_being_built(tmp_path: Path) -> None:
    holder: list[wh.ServiceHost] = []
    factory = Factory(hook=lambda: holder[0].stop())
    holder.append(make_host(write_config(tmp_path), tmp_path, factory))
    assert holder[0].run() == 0
    assert not factory.daemon.running.is_set()


def test_a_config_error_at_start_names_the_key_and_reaches_the_default_log(tmp_path: Path) -> None:
    config = write_config(tmp_path, values={"watch.settle_secs": "1"})
    host = make_host(config, tmp_path, Factory())
    with pytest.raises(ConfigError):
        host.prepare()
    assert host.failure is not None and "settle_secs" in host.failure
    assert "settle_secs" in (tmp_path / "pd" / "gensift" / "gensift.log").read_text()
    assert host.run() == wh.EXIT_USAGE


def test_a_home_relative_path_at_start_is_refused(tmp_path: Path) -> None:
    host = make_host(write_config(tmp_path, values={"journal.path": None}), tmp_path, Factory())
    assert host.run() == wh.EXIT_USAGE
    assert host.failure is not None and "journal.path" in host.failure


def test_a_runtime_problem_becomes_exit_1_with_its_message(tmp_path: Path) -> None:
    factory = Factory(FakeDaemon(error=RuntimeProblem("journal is locked by gensift sort")))
    host = make_host(write_config(tmp_path), tmp_path, factory)
    assert host.run() == 1
    assert host.failure == "gensift: journal is locked by gensift sort"


def test_the_configured_log_file_is_used(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "svc.log"
    config = write_config(tmp_path, f"[log]\nfile = {json.dumps(str(log))}\n")
    host = make_host(config, tmp_path, Factory(FakeDaemon(code=1)))
    assert host.run() == 1
    assert host.log_file == log and log.exists()
    assert host.failure is not None and str(log) in host.failure


# --- the pywin32 class, with fake pywin32 modules -----------------------------------------------

STOP_PENDING, START_PENDING, RUNNING = 3, 2, 4


class FakeFramework:
    """Enough of win32serviceutil.ServiceFramework: records the statuses reported."""

    def __init__(self, args: Any) -> None:
        self.args = args
        self.statuses: list[tuple[int, int]] = []

    def ReportServiceStatus(self, status: int, waitHint: int = 5000, *rest: int) -> None:
        self.statuses.append((status, waitHint))

    def GetAcceptedControls(self) -> int:
        return (1 if hasattr(self, "SvcStop") else 0) | (4 if hasattr(self, "SvcShutdown") else 0)


@pytest.fixture
def pywin32(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Fake servicemanager / win32service / win32serviceutil / pywintypes modules."""
    fake = types.SimpleNamespace(errors=[], prepared=[], dispatch=None)

    class Win32Error(Exception):
        def __init__(self, winerror: int, funcname: str, strerror: str) -> None:
            super().__init__(winerror, funcname, strerror)
            self.winerror, self.funcname, self.strerror = winerror, funcname, strerror

    modules = {
        "pywintypes": types.SimpleNamespace(error=Win32Error),
        "win32service": types.SimpleNamespace(
            SERVICE_STOPPED=1,
            SERVICE_START_PENDING=START_PENDING,
            SERVICE_STOP_PENDING=STOP_PENDING,
            SERVICE_RUNNING=RUNNING,
        ),
        "win32serviceutil": types.SimpleNamespace(ServiceFramework=FakeFramework),
        "servicemanager": types.SimpleNamespace(
            LogErrorMsg=fake.errors.append,
            Initialize=lambda *a: None,
            PrepareToHostSingle=fake.prepared.append,
            StartServiceCtrlDispatcher=lambda: fake.dispatch(),
        ),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    fake.Win32Error = Win32Error
    fake.servicemanager = modules["servicemanager"]
    return fake


def service_cls(tmp_path: Path, fake: Any, factory: Factory, config: Path | None = None) -> type:
    """The pywin32 class (built on the fake modules) around a host with a fake daemon whose
    errors go to the fake event log, as in the service."""
    config = config or write_config(tmp_path)
    sink = wh.EventLogSink(fake.servicemanager.LogErrorMsg)
    return wh.service_class(config, make_host=lambda: make_host(config, tmp_path, factory, sink))


def test_svcstop_reports_stop_pending_and_stops_the_host(tmp_path: Path, pywin32) -> None:
    factory = Factory()
    cls = service_cls(tmp_path, pywin32, factory)
    service = cls(["gensift"])
    thread, result = run_in_thread(service.SvcRun)
    assert factory.daemon.running.wait(WAIT)
    service.SvcStop()
    thread.join(WAIT)
    assert result == [None]  # returned normally: pywin32 reports a clean SERVICE_STOPPED
    assert service.statuses == [
        (START_PENDING, wh.START_WAIT_HINT_MS),
        (RUNNING, 5000),
        (STOP_PENDING, wh.STOP_WAIT_HINT_MS),
        (STOP_PENDING, wh.STOP_WAIT_HINT_MS),
    ]
    assert pywin32.errors == []


def test_shutdown_and_paramchange(tmp_path: Path, pywin32) -> None:
    factory = Factory()
    cls = service_cls(tmp_path, pywin32, factory)
    service = cls(["gensift"])
    accepted = service.GetAcceptedControls()
    assert accepted & 1 and accepted & 4 and accepted & SERVICE_ACCEPT_PARAMCHANGE
    thread, _ = run_in_thread(service.SvcRun)
    assert factory.daemon.running.wait(WAIT)
    service.SvcOtherEx(SERVICE_CONTROL_PARAMCHANGE, 0, None)
    assert factory.daemon.reloads == 1
    service.SvcShutdown()
    thread.join(WAIT)
    assert not thread.is_alive()


def test_a_config_error_fails_the_start_into_the_event_log(tmp_path: Path, pywin32) -> None:
    config = write_config(tmp_path, values={"watch.settle_secs": "1"})
    cls = service_cls(tmp_path, pywin32, Factory(), config)
    service = cls(["gensift"])
    with pytest.raises(wh.ServiceFailed):
        service.SvcRun()  # pywin32 turns this into SERVICE_STOPPED with a service-specific code
    assert len(pywin32.errors) == 1 and "settle_secs" in pywin32.errors[0]
    assert RUNNING not in [status for status, _ in service.statuses]


def test_a_failing_daemon_fails_the_service(tmp_path: Path, pywin32) -> None:
    factory = Factory(FakeDaemon(code=1))
    cls = service_cls(tmp_path, pywin32, factory)
    with pytest.raises(wh.ServiceFailed, match="exit code 1"):
        cls(["gensift"]).SvcRun()
    assert "exit code 1" in pywin32.errors[0]


def test_main_hosts_the_service_under_the_dispatcher(
    tmp_path: Path, pywin32, monkeypatch: pytest.MonkeyPatch
) -> None:
    """main() as the service manager runs it, with the default host (event-log sink)."""
    factory = Factory()
    monkeypatch.setattr(wh, "_make_daemon", factory)
    monkeypatch.setenv("PROGRAMDATA", str(tmp_path / "pd"))
    config = write_config(tmp_path)

    def dispatch() -> None:  # what StartServiceCtrlDispatcher does: ServiceMain, then controls
        (cls,) = pywin32.prepared
        service = cls(["gensift"])
        thread, result = run_in_thread(service.SvcRun)
        assert factory.daemon.running.wait(WAIT)
        logger.error("a decision failed for C:\\x.png")  # reaches Event Viewer too
        service.SvcStop()
        thread.join(WAIT)
        assert result == [None]

    pywin32.dispatch = dispatch
    assert wh.main(["--config", str(config)]) == 0
    assert factory.calls[0][1] == config
    assert pywin32.errors == ["ERROR: a decision failed for C:\\x.png"]


def test_main_run_by_hand_explains_itself(
    tmp_path: Path, pywin32, capsys: pytest.CaptureFixture[str]
) -> None:
    def dispatch() -> None:
        raise pywin32.Win32Error(ERROR_FAILED_SERVICE_CONTROLLER_CONNECT, "Start", "no SCM")

    pywin32.dispatch = dispatch
    assert wh.main(["--config", str(tmp_path / "c.toml")]) == wh.EXIT_USAGE
    assert "gensift watch -c" in capsys.readouterr().err


def test_event_log_sink_forwards_only_errors() -> None:
    seen: list[str] = []
    logger.remove()
    logger.add(wh.EventLogSink(seen.append), level="INFO")
    logger.info("routine")
    logger.warning("odd")
    logger.error("broken {}", "C:\\a.png")
    assert seen == ["ERROR: broken C:\\a.png"]
