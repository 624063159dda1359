"""The systemd units: what they run, what they may write, and what install and uninstall do.

Installs run against temporary unit folders with a recording runner, so nothing here touches
the real systemd; ``systemd-analyze verify`` checks the rendered units where it is installed
(CI installs it and sets GENSIFT_REQUIRE_SYSTEMD=1, which turns a skip into a failure).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from gensift.daemon.config import Settings, load_config
from gensift.daemon.platforms import systemd, systemd_checks
from gensift.daemon.platforms.systemd import install, render_unit, uninstall, unit_path
from gensift.daemon.platforms.systemd_unit import (
    EXAMPLE_FILES,
    SERVICE_USER,
    UNIT_NAME,
    exec_arg,
    path_arg,
    read_write_paths,
    render_example,
)
from gensift.models.errors import InputError, RuntimeProblem

REPO = Path(__file__).resolve().parents[1]
PYTHON = Path(sys.executable)


class Recorder:
    """A runner that records each command instead of running it."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> None:
        self.commands.append(list(argv))


def write_config(folder: Path, **paths: object) -> Path:
    """A config naming every path key explicitly (absolute paths under ``folder``)."""
    values: dict[str, object] = {
        "watch": folder / "inbox",
        "root": folder / "out",
        "quality": folder / "models" / "quality.safetensors",
        "feature": "",
        "journal": folder / "state" / "journal.sqlite3",
        "log": "",
    }
    values.update(paths)
    text = "\n".join(
        [
            f"[watch]\npaths = [{json.dumps(str(values['watch']))}]",
            f"[output]\nroot = {json.dumps(str(values['root']))}",
            f"[stages.quality]\ncheckpoint = {json.dumps(str(values['quality']))}",
            f"[stages.feature]\ncheckpoint = {json.dumps(str(values['feature']))}",
            f"[journal]\npath = {json.dumps(str(values['journal']))}",
            f"[log]\nfile = {json.dumps(str(values['log']))}",
        ]
    )
    config = folder / "config.toml"
    config.write_text(text + "\n")
    return config


def load(config: Path, home: Path | None = None) -> Settings:
    return load_config(config, environ={"HOME": str(home or config.parent)})


def directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment of a unit file, in order."""
    section, found = "", []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.append((section, key, value))
    return found


def values(text: str, key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in directives(text) if s == section and k == key]


def one(text: str, key: str, section: str = "Service") -> str:
    found = values(text, key, section)
    assert len(found) == 1, f"{key}= appears {len(found)} times in [{section}]"
    return found[0]


def system_refusal(settings: Settings, config: Path, python: Path, unit_dir: Path) -> str:
    """The message of the InputError that a system install (a dry run) raises."""
    with pytest.raises(InputError) as caught:
        install(
            "system",
            settings,
            config,
            dry_run=True,
            out=io.StringIO(),
            python=python,
            unit_dir=unit_dir,
        )
    return str(caught.value)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder every user can reach (pytest's tmp_path sits in a 0700 folder), as the
    dedicated service user must reach the config, the interpreter and the data."""
    folder = Path(tempfile.mkdtemp(prefix="gensift-systemd-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


@pytest.fixture
def system_setup(open_dir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Settings]:
    """A config, a stand-in interpreter and an existing, shared watched folder: what a system
    install needs. The output root and the journal's folder do not exist yet. (They are under
    /tmp, which the real unit would replace with a private one: the check is off here.)"""
    monkeypatch.setattr(systemd_checks, "PRIVATE_TMP", ())
    python = open_dir / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n")
    python.chmod(0o755)
    inbox = open_dir / "inbox"
    inbox.mkdir()
    inbox.chmod(0o777)
    (open_dir / "models").mkdir()
    config = write_config(open_dir)
    config.chmod(0o644)
    return config, python, load(config)


# --- rendering ---------------------------------------------------------------------------------


def test_the_example_units_in_systemd_are_what_the_renderer_writes() -> None:
    for scope, name in EXAMPLE_FILES.items():
        shipped = (REPO / "systemd" / name).read_text(encoding="utf-8")
        assert shipped == render_example(scope), (
            f"systemd/{name} is out of date: run "
            ".venv/bin/python -m gensift.daemon.platforms.systemd systemd"
        )


def test_system_unit_runs_the_daemon_as_the_service_user_in_a_sandbox(tmp_path: Path) -> None:
    config = write_config(tmp_path, log=tmp_path / "logs" / "gensift.log")
    text = render_unit("system", load(config), config, python=PYTHON)

    assert one(text, "ExecStart") == f"{PYTHON} -P -m gensift.daemon.cli watch -c {config}"
    assert one(text, "User") == SERVICE_USER
    assert one(text, "Type") == "notify"
    assert one(text, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(text, "WatchdogSec") == "60s"
    assert one(text, "Restart") == "on-failure"
    assert one(text, "RestartPreventExitStatus") == "2"
    assert one(text, "StartLimitBurst", "Unit") == "5"
    assert one(text, "KillMode") == "mixed"
    assert one(text, "ProtectSystem") == "strict"
    assert one(text, "NoNewPrivileges") == "yes"
    assert one(text, "PrivateTmp") == "yes"
    assert one(text, "WantedBy", "Install") == "multi-user.target"
    # files move out of the watched folder into the output root; the journal and the log
    # are written; the models folder is only read
    assert values(text, "ReadWritePaths") == [
        str(tmp_path / "inbox"),
        str(tmp_path / "out"),
        str(tmp_path / "state"),
        str(tmp_path / "logs"),
    ]
    assert values(text, "RequiresMountsFor", "Unit") == values(text, "ReadWritePaths")
    # the GPU stays reachable: no private /dev, a device allow list instead
    assert not values(text, "PrivateDevices")
    assert one(text, "DevicePolicy") == "closed"
    assert {"char-nvidia-frontend rw", "char-nvidia-uvm rw", "char-drm rw"} <= set(
        values(text, "DeviceAllow")
    )
    assert not values(text, "MemoryDenyWriteExecute")


def test_user_unit_runs_the_daemon_unprivileged_without_namespaces(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    text = render_unit("user", load(config), config, python=PYTHON)

    assert one(text, "ExecStart") == f"{PYTHON} -P -m gensift.daemon.cli watch -c {config}"
    assert one(text, "Type") == "notify"
    assert one(text, "NoNewPrivileges") == "yes"
    assert one(text, "WantedBy", "Install") == "default.target"
    for absent in ("User", "ReadWritePaths", "ProtectSystem", "PrivateTmp", "DevicePolicy"):
        assert not values(text, absent), f"{absent}= needs privileges or user namespaces"


def test_paths_with_spaces_percent_and_dollar_are_quoted_for_systemd(tmp_path: Path) -> None:
    assert exec_arg("/srv/a b/100%/$HOME") == '"/srv/a b/100%%/$$HOME"'
    assert path_arg(Path("/srv/a b/100%/$HOME")) == '"/srv/a b/100%%/$HOME"'
    assert path_arg(Path("/srv/sd/outputs")) == "/srv/sd/outputs"
    for bad in ('/srv/a"b', "/srv/a\\b", "/srv/a\nb"):
        with pytest.raises(InputError, match="double quotes, backslashes"):
            path_arg(Path(bad))
    with pytest.raises(InputError, match="absolute"):
        path_arg(Path("relative/out"))

    odd = tmp_path / "my images" / "100%"
    config = write_config(tmp_path, root=odd)
    text = render_unit("system", load(config), odd / "gensift.toml", python=PYTHON)
    assert f'ReadWritePaths="{tmp_path}/my images/100%%"\n' in text
    assert f'-c "{tmp_path}/my images/100%%/gensift.toml"\n' in text


def test_read_write_paths_are_listed_once_and_never_inside_one_another(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        journal=tmp_path / "out" / "journal.sqlite3",
        log=tmp_path / "out" / "logs" / "gensift.log",
    )
    assert read_write_paths(load(config)) == [tmp_path / "inbox", tmp_path / "out"]


def test_unit_path_follows_xdg_config_home(tmp_path: Path) -> None:
    assert unit_path("system") == Path("/etc/systemd/system/gensift.service")
    xdg = {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "HOME": "/nowhere"}
    assert unit_path("user", xdg) == tmp_path / "cfg" / "systemd" / "user" / UNIT_NAME
    home = {"HOME": str(tmp_path)}
    assert unit_path("user", home) == tmp_path / ".config" / "systemd" / "user" / UNIT_NAME


# --- install and uninstall ---------------------------------------------------------------------


def user_environ(tmp_path: Path) -> dict[str, str]:
    return {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "USER": "nobody-here"}


def user_install(tmp_path: Path, *, dry_run: bool) -> tuple[Path, Settings, str, Recorder]:
    """``install --user`` for a config in ``tmp_path`` (units under ``tmp_path/cfg``): the
    config, its settings, what install printed and the commands it ran."""
    config = write_config(tmp_path)
    settings = load(config)
    out, runner = io.StringIO(), Recorder()
    environ = user_environ(tmp_path)
    install("user", settings, config, dry_run=dry_run, out=out, runner=runner, environ=environ)
    return config, settings, out.getvalue(), runner


def test_dry_run_prints_the_unit_exactly_and_the_commands_and_touches_nothing(
    tmp_path: Path,
) -> None:
    config, settings, printed, runner = user_install(tmp_path, dry_run=True)

    target = tmp_path / "cfg" / "systemd" / "user" / UNIT_NAME
    header = f"# gensift service install --user --dry-run: would write {target}:\n"
    unit = render_unit("user", settings, config)
    commands = [
        "# and run:",
        "#   systemctl --user daemon-reload",
        "#   systemctl --user enable gensift.service",
        "#   systemctl --user reset-failed gensift.service",
        "#   systemctl --user restart gensift.service",
    ]
    assert printed.startswith(header + unit + "\n".join(commands) + "\n")
    assert "loginctl enable-linger" in printed
    # every line that is not the unit's is a comment: the output is itself a unit file
    rest = printed[len(header + unit) :].splitlines()
    assert all(line.startswith("#") for line in rest)
    assert runner.commands == []
    assert not target.exists()


def test_user_install_writes_the_unit_atomically_then_reloads_enables_and_restarts(
    tmp_path: Path,
) -> None:
    config, settings, printed, runner = user_install(tmp_path, dry_run=False)

    folder = tmp_path / "cfg" / "systemd" / "user"
    assert [p.name for p in folder.iterdir()] == [UNIT_NAME]  # no temporary file left
    assert (folder / UNIT_NAME).read_text() == render_unit("user", settings, config)
    assert runner.commands == [
        ["systemctl", "--user", "daemon-reload"],
        ["systemctl", "--user", "enable", UNIT_NAME],
        ["systemctl", "--user", "reset-failed", UNIT_NAME],
        ["systemctl", "--user", "restart", UNIT_NAME],
    ]
    assert "loginctl enable-linger $USER" in printed
    assert "journalctl --user-unit gensift" in printed
    environ = user_environ(tmp_path)

    # uninstall: stop and disable, remove, reload; a second time there is nothing to do
    runner.commands.clear()
    out = io.StringIO()
    uninstall("user", dry_run=False, out=out, runner=runner, environ=environ)
    assert runner.commands == [
        ["systemctl", "--user", "disable", "--now", UNIT_NAME],
        ["systemctl", "--user", "daemon-reload"],
    ]
    assert not (folder / UNIT_NAME).exists()
    runner.commands.clear()
    out = io.StringIO()
    uninstall("user", dry_run=False, out=out, runner=runner, environ=environ)
    assert runner.commands == []
    assert "no gensift user service is installed" in out.getvalue()


def test_system_install_creates_the_user_and_its_folders_then_starts_the_unit(
    system_setup: tuple[Path, Path, Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, python, settings = system_setup
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    out, runner = io.StringIO(), Recorder()

    install(
        "system",
        settings,
        config,
        dry_run=False,
        out=out,
        runner=runner,
        python=python,
        unit_dir=tmp_path,
        environ={},
    )

    written = (tmp_path / UNIT_NAME).read_text()
    assert written == render_unit("system", settings, config, python=python)
    assert one(written, "ExecStart").startswith(f"{python} -P -m gensift.daemon.cli watch")
    folder = config.parent
    create = [
        ["install", "-d", "-o", SERVICE_USER, "-g", SERVICE_USER, "-m", "0750", str(f)]
        for f in (folder / "out", folder / "state")
    ]
    add_user = [] if systemd._user_exists(SERVICE_USER) else [systemd.useradd_command(SERVICE_USER)]
    assert runner.commands == [
        *add_user,
        *create,
        ["systemctl", "daemon-reload"],
        ["systemctl", "enable", UNIT_NAME],
        ["systemctl", "reset-failed", UNIT_NAME],
        ["systemctl", "restart", UNIT_NAME],
    ]
    assert "journalctl -u gensift" in out.getvalue()


def test_system_install_without_root_is_refused_with_the_full_sudo_command(
    system_setup: tuple[Path, Path, Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, python, settings = system_setup
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    runner = Recorder()
    with pytest.raises(InputError, match="needs root") as caught:
        install(
            "system",
            settings,
            config,
            dry_run=False,
            out=io.StringIO(),
            runner=runner,
            python=python,
            unit_dir=tmp_path,
        )
    assert f"sudo {systemd._gensift_command()} service install --system" in str(caught.value)
    assert runner.commands == []
    assert not (tmp_path / UNIT_NAME).exists()


def test_system_install_refuses_paths_that_expand_for_the_service_user(
    system_setup: tuple[Path, Path, Settings], tmp_path: Path
) -> None:
    _, python, _ = system_setup
    folder = python.parents[2]
    config = write_config(folder, watch="~/outputs", root="$DATA/sorted")
    config.chmod(0o644)
    (folder / "outputs").mkdir()
    settings = load_config(config, environ={"HOME": str(folder), "DATA": str(folder)})
    (folder / "config.toml").write_text(
        config.read_text().replace("[journal]\npath", "[journal]\n# path")
    )
    message = system_refusal(settings, config, python, tmp_path)
    assert f"runs as the '{SERVICE_USER}' user, whose home is /var/lib/gensift" in message
    assert 'watch.paths = "~/outputs" starts with ~' in message
    assert 'output.root = "$DATA/sorted" uses an environment variable' in message
    assert "journal.path is not set" in message
    assert "gensift service install --user" in message


def test_system_install_refuses_a_config_the_service_user_cannot_read(
    system_setup: tuple[Path, Path, Settings], tmp_path: Path
) -> None:
    _, python, _ = system_setup
    private = python.parents[2] / "home" / "alice"
    private.mkdir(parents=True)
    private.chmod(0o700)
    config = write_config(private, watch=python.parents[2] / "inbox")
    message = system_refusal(load(config), config, python, tmp_path)
    assert f"{private} ({stat.filemode(private.stat().st_mode)}" in message
    assert "keeps the gensift user out" in message


def test_system_install_refuses_a_missing_watched_folder(
    system_setup: tuple[Path, Path, Settings], tmp_path: Path
) -> None:
    config, python, settings = system_setup
    (config.parent / "inbox").rmdir()
    assert "watched folder does not exist" in system_refusal(settings, config, python, tmp_path)


def test_system_install_refuses_data_in_the_private_tmp(
    system_setup: tuple[Path, Path, Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, python, settings = system_setup
    monkeypatch.setattr(systemd_checks, "PRIVATE_TMP", (config.parent / "out",))
    message = system_refusal(settings, config, python, tmp_path)
    assert "out: the service has a private /tmp" in message


def test_user_install_warns_about_what_the_user_manager_may_not_have(tmp_path: Path) -> None:
    config = write_config(tmp_path, root="$PICTURES/sorted")
    settings = load_config(config, environ={"HOME": str(tmp_path), "PICTURES": str(tmp_path)})
    environ = {"XDG_CONFIG_HOME": str(tmp_path), "USER": "x", "GENSIFT_LOG__LEVEL": "DEBUG"}
    out = io.StringIO()
    install("user", settings, config, dry_run=True, out=out, environ=environ)
    assert "output.root use environment variables" in out.getvalue()
    assert "does not see GENSIFT_LOG__LEVEL from this shell" in out.getvalue()


def test_failed_commands_name_the_command_and_its_error() -> None:
    with pytest.raises(
        RuntimeProblem, match=r"'sh -c 'echo boom >&2; exit 3'' failed \(exit 3\): boom"
    ):
        systemd.run_command(["sh", "-c", "echo boom >&2; exit 3"])
    with pytest.raises(RuntimeProblem, match="not-a-command-here: command not found"):
        systemd.run_command(["not-a-command-here"])


def test_a_machine_without_systemd_is_told_to_use_its_own_supervisor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(InputError, match="does not run systemd; run `gensift watch`"):
        systemd.require_systemd()


# --- systemd itself reads the units ------------------------------------------------------------


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        if os.environ.get("GENSIFT_REQUIRE_SYSTEMD") == "1":
            pytest.fail("GENSIFT_REQUIRE_SYSTEMD=1 but systemd-analyze is not installed")
        pytest.skip("systemd-analyze is not installed")
    return found


def _verify(analyze: str, unit: Path, *, user: bool, runtime: Path) -> None:
    """``systemd-analyze verify``; it reports unknown keys and bad values on stderr but still
    exits 0, so any line naming the unit fails the test too."""
    argv = [analyze, "verify", "--man=no", *(["--user"] if user else []), str(unit)]
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}  # --user needs one, even offline
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    complaints = [
        line for line in (result.stdout + result.stderr).splitlines() if unit.name in line
    ]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_systemd_analyze_verify_accepts_both_units(tmp_path: Path) -> None:
    analyze = _systemd_analyze()
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    # an interpreter behind a path with a space and a '%h' (a specifier: systemd would put
    # the home folder there if the '%' were not doubled), as systemd must find it
    odd = tmp_path / "py env" / "100%h"
    odd.mkdir(parents=True)
    (odd / "python").symlink_to(PYTHON)
    config = write_config(tmp_path, root=tmp_path / "my images" / "100%")
    settings = load(config)
    for scope in ("system", "user"):
        folder = tmp_path / scope
        folder.mkdir()
        unit = folder / UNIT_NAME
        unit.write_text(render_unit(scope, settings, config, python=odd / "python"))
        _verify(analyze, unit, user=scope == "user", runtime=runtime)
    # the dry run's whole output is a unit file too
    out = io.StringIO()
    env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "USER": "nobody-here"}
    install("user", settings, config, dry_run=True, out=out, environ=env, python=PYTHON)
    dry = tmp_path / "dry" / UNIT_NAME
    dry.parent.mkdir()
    dry.write_text(out.getvalue())
    _verify(analyze, dry, user=True, runtime=runtime)
