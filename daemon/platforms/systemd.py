"""``gensift service install|uninstall|start|stop`` on Linux: the systemd unit, installed.

The unit text is :mod:`gensift.daemon.platforms.systemd_unit`'s; a system install is
checked first by :mod:`gensift.daemon.platforms.systemd_checks`. Everything with a side
effect outside the unit file (creating the user and folders, ``systemctl``) goes through
one ``runner`` callable, so ``--dry-run`` prints exactly the commands a real install runs,
and tests record them instead of running them.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal, TextIO

from gensift.daemon.config import Settings
from gensift.daemon.platforms.servicepaths import account_dependent_paths, environment_warning
from gensift.daemon.platforms.systemd_checks import (
    GPU_GROUPS,
    SERVICE_HOME,
    check_system_install,
    existing_gids,
)
from gensift.daemon.platforms.systemd_unit import (
    SERVICE_USER,
    UNIT_NAME,
    Scope,
    render_unit,
    write_examples,
)
from gensift.models.errors import InputError, RuntimeProblem
from gensift.models.fsutil import publish

__all__ = ["control", "install", "render_unit", "uninstall", "unit_path", "write_examples"]

Runner = Callable[[Sequence[str]], None]

SYSTEM_UNIT_DIR = Path("/etc/systemd/system")


def unit_path(scope: Scope, environ: Mapping[str, str] = os.environ) -> Path:
    """Where the unit goes: ``/etc/systemd/system`` or the user's ``systemd/user`` folder."""
    if scope == "system":
        return SYSTEM_UNIT_DIR / UNIT_NAME
    config_home = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME", "~")) / ".config")
    return Path(config_home).expanduser() / "systemd" / "user" / UNIT_NAME


def _target(scope: Scope, unit_dir: Path | None, environ: Mapping[str, str]) -> Path:
    return (unit_dir / UNIT_NAME) if unit_dir is not None else unit_path(scope, environ)


# --- running commands ----------------------------------------------------------------------------


def run_command(argv: Sequence[str]) -> None:
    """Run ``argv``; a failure raises RuntimeProblem naming the command and its stderr."""
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise RuntimeProblem(f"{argv[0]}: command not found (running: {_shell(argv)})") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip() or "no output"
        raise RuntimeProblem(f"'{_shell(argv)}' failed (exit {result.returncode}): {detail}")


def require_systemd() -> None:
    """Refuse early, before anything is written, on a machine that does not run systemd."""
    if shutil.which("systemctl") is None or not Path("/run/systemd/system").is_dir():
        raise InputError(
            "this system does not run systemd; run `gensift watch` under your own supervisor "
            "instead (it exits 0 on SIGTERM and reloads on SIGHUP)"
        )


def _shell(argv: Sequence[str]) -> str:
    return shlex.join(argv)


def _systemctl(scope: Scope, *args: str) -> list[str]:
    return ["systemctl", *(["--user"] if scope == "user" else []), *args]


def _gensift_command() -> str:
    """The full path of this ``gensift`` (sudo's PATH rarely holds the venv's bin)."""
    script = Path(sys.executable).with_name("gensift")
    if script.exists():
        return str(script)
    return f"{sys.executable} -m gensift.daemon.cli"


def _nologin() -> str:
    for shell in ("/usr/sbin/nologin", "/sbin/nologin", "/usr/bin/nologin"):
        if Path(shell).exists():
            return shell
    return "/bin/false"


def useradd_command(user: str) -> list[str]:
    """A system account with no login and no home folder of its own (StateDirectory= makes
    /var/lib/gensift), in the GPU groups that exist here."""
    groups = [g for g in GPU_GROUPS if existing_gids([g])]
    argv = ["useradd", "--system", "--user-group", "--no-create-home"]
    argv += ["--home-dir", str(SERVICE_HOME), "--shell", _nologin()]
    if groups:
        argv += ["--groups", ",".join(groups)]
    return [*argv, user]


def _user_exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


def _live_runner(scope: Scope, action: str, runner: Runner | None) -> Runner:
    """``runner``, or this machine's (systemd must run here); a system scope needs root."""
    if scope == "system" and os.geteuid() != 0:
        raise InputError(
            f"'gensift service {action} --system' needs root: run "
            f"sudo {_gensift_command()} service {action} --system ... "
            f"(the full path, since sudo's PATH usually lacks the virtual environment), or "
            f"use --user to run it as yourself"
        )
    if runner is None:
        require_systemd()
        return run_command
    return runner


# --- install, uninstall, start, stop ----------------------------------------------------------


def _install_commands(scope: Scope, user: str, to_create: Sequence[Path]) -> list[list[str]]:
    commands: list[list[str]] = []
    if scope == "system":
        if not _user_exists(user):
            commands.append(useradd_command(user))
        commands += [
            ["install", "-d", "-o", user, "-g", user, "-m", "0750", str(f)] for f in to_create
        ]
    commands.append(_systemctl(scope, "daemon-reload"))
    commands.append(_systemctl(scope, "enable", UNIT_NAME))
    # a re-install after fixing what made the service fail must not hit the start limit
    commands.append(_systemctl(scope, "reset-failed", UNIT_NAME))
    # restart, not start: a re-install must replace a running daemon with the new unit
    commands.append(_systemctl(scope, "restart", UNIT_NAME))
    return commands


def _hints(scope: Scope, config: Path, environ: Mapping[str, str]) -> list[str]:
    """What to do next, and what the service will not see."""
    flag = "--user " if scope == "user" else ""
    journal = "--user-unit gensift" if scope == "user" else "-u gensift"
    hints = [f"status: systemctl {flag}status gensift; logs: journalctl {journal} -f"]
    if scope == "user":
        user = environ.get("USER") or pwd.getpwuid(os.getuid()).pw_name
        if not Path("/var/lib/systemd/linger", user).exists():
            hints.append(
                "a user service stops when you log out: to keep it running (and start it at "
                "boot), run: loginctl enable-linger $USER"
            )
        problems = account_dependent_paths(config)
        variables = list(dict.fromkeys(p.key for p in problems if p.kind == "variable"))
        if variables:
            hints.append(
                f"note: {', '.join(variables)} use environment variables, which the service "
                f"sees only if your user manager has them (see `systemctl --user "
                f"show-environment`)"
            )
    warning = environment_warning(environ, config)
    if warning:
        hints.append(f"warning: {warning}")
    return hints


def install(
    scope: Scope,
    settings: Settings,
    config: Path,
    *,
    dry_run: bool,
    out: TextIO,
    runner: Runner | None = None,
    python: Path | None = None,
    user: str = SERVICE_USER,
    unit_dir: Path | None = None,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """Write the unit, create what it needs, reload systemd, enable and (re)start the service.

    ``settings`` is ``config`` loaded (the caller has checked it). A system install is
    checked for what would break only under the service user first. With ``dry_run`` the unit
    path, exactly the unit text and the commands are printed, every line but the unit's as a
    ``#`` comment (so the output is itself a valid unit file), and nothing is touched.
    ``runner`` None means this machine: systemd must be running; tests pass a recorder.
    """
    python = Path(sys.executable) if python is None else python
    for path in (config, python):
        if not path.is_absolute():
            raise InputError(f"{path}: the service needs an absolute path")
    to_create = check_system_install(settings, config, python, user) if scope == "system" else []
    text = render_unit(scope, settings, config, python=python, user=user)
    target = _target(scope, unit_dir, environ)
    commands = _install_commands(scope, user, to_create)
    if dry_run:
        out.write(f"# gensift service install --{scope} --dry-run: would write {target}:\n")
        out.write(text)
        out.write("# and run:\n")
        out.writelines(f"#   {_shell(c)}\n" for c in commands)
        out.writelines(f"# {h}\n" for h in _hints(scope, config, environ))
        return
    runner = _live_runner(scope, "install", runner)
    publish(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    out.write(f"wrote {target}\n")
    for command in commands:
        out.write(f"$ {_shell(command)}\n")
        runner(command)
    out.write(f"gensift is running as a {scope} service.\n")
    out.writelines(f"{h}\n" for h in _hints(scope, config, environ))


def uninstall(
    scope: Scope,
    *,
    dry_run: bool,
    out: TextIO,
    runner: Runner | None = None,
    unit_dir: Path | None = None,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """Stop and disable the service, remove the unit, reload systemd. Idempotent: with no
    unit there is nothing to do. The service user and every data folder stay."""
    target = _target(scope, unit_dir, environ)
    if not target.exists():
        out.write(f"no gensift {scope} service is installed ({target} does not exist)\n")
        return
    disable = _systemctl(scope, "disable", "--now", UNIT_NAME)
    reload = _systemctl(scope, "daemon-reload")
    if dry_run:
        out.write(f"# would run:   {_shell(disable)}\n# would remove {target}\n")
        out.write(f"# would run:   {_shell(reload)}\n")
        return
    runner = _live_runner(scope, "uninstall", runner)
    out.write(f"$ {_shell(disable)}\n")
    runner(disable)
    target.unlink(missing_ok=True)
    out.write(f"removed {target}\n$ {_shell(reload)}\n")
    runner(reload)
    if scope == "system":
        out.write(
            f"The '{SERVICE_USER}' user, the journal and the output folders are kept "
            f"(remove the user with: userdel {SERVICE_USER}).\n"
        )


def control(
    action: Literal["start", "stop"],
    scope: Scope,
    *,
    out: TextIO,
    dry_run: bool = False,
    runner: Runner | None = None,
) -> None:
    """``systemctl [--user] start|stop gensift.service`` (stop finishes the batch in flight)."""
    command = _systemctl(scope, action, UNIT_NAME)
    if dry_run:
        out.write(f"would run: {_shell(command)}\n")
        return
    runner = _live_runner(scope, action, runner)
    out.write(f"$ {_shell(command)}\n")
    runner(command)


if __name__ == "__main__":  # python -m gensift.daemon.platforms.systemd systemd/
    for written in write_examples(Path(sys.argv[1] if len(sys.argv) > 1 else "systemd")):
        print(f"wrote {written}")
