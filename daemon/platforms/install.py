"""``gensift service ACTION``: the checks every platform shares, then systemd or Windows.

A service runs unattended, so a mistake must surface now, at the prompt, rather than
as a restart loop in a log nobody reads: the config must be a real file (the service
gets its absolute path), it must validate, no watched folder may lie inside the output
root, and the checkpoints it names must exist.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal, TextIO

from gensift.daemon.config import ConfigError, Settings, load_config, resolve_config_path
from gensift.daemon.runtime.layout import check_layout
from gensift.models.errors import InputError

Action = Literal["install", "uninstall", "start", "stop"]
Scope = Literal["user", "system"]


def checked_config(cli_path: Path | None, *, for_install: bool) -> tuple[Path, Settings]:
    """The absolute config path and its settings; raises InputError or ConfigError."""
    path, _ = resolve_config_path(cli_path, os.environ)
    if not path.is_file():
        raise InputError(
            f"no config file at {path}. A service needs one: copy config.example.toml "
            f"there, set watch.paths, output.root and the stages' checkpoints, check it with "
            f"`gensift config check -c {path}`, then run this again"
        )
    path = path.resolve()
    settings = load_config(path)
    if for_install:
        check_layout(settings)
        missing = [
            f"stages.{name}.checkpoint = {stage.checkpoint}"
            for name, stage in (
                ("quality", settings.stages.quality),
                ("feature", settings.stages.feature),
            )
            if stage.checkpoint is not None and not stage.checkpoint.is_file()
        ]
        if missing:
            raise InputError(
                f"{path}: the service would fail at start, these checkpoints do not exist: "
                + "; ".join(missing)
                + ". Train them first (`gensift train quality --data DIR`), or set the key "
                'to "" to switch that stage off'
            )
    return path, settings


def default_scope(geteuid: object = getattr(os, "geteuid", None)) -> Scope:
    """A user unit unless we are root (root's user manager is rarely what anyone wants)."""
    return "system" if callable(geteuid) and geteuid() == 0 else "user"


def run_service(
    action: Action,
    *,
    scope: Scope | None,
    config: Path | None,
    dry_run: bool,
    out: TextIO,
    platform: str = sys.platform,
) -> int:
    if platform == "win32":
        if scope is not None:
            raise InputError(
                f"--{scope} is for systemd; a Windows service is machine-wide (drop the option)"
            )
        return _windows(action, config, dry_run, out)
    if platform.startswith("linux"):
        _systemd(action, scope or default_scope(), config, dry_run, out)
        return 0
    raise InputError(
        f"gensift service supports Linux (systemd) and Windows, not {platform}; run "
        "`gensift watch -c CONFIG` under your own supervisor (launchd on macOS)"
    )


def _systemd(action: Action, scope: Scope, config: Path | None, dry_run: bool, out: TextIO) -> None:
    from gensift.daemon.platforms import systemd

    if action == "install":
        path, settings = checked_config(config, for_install=True)
        systemd.install(scope, settings, path, dry_run=dry_run, out=out)
    elif action == "uninstall":
        systemd.uninstall(scope, dry_run=dry_run, out=out)
    else:
        systemd.control(action, scope, out=out, dry_run=dry_run)


def _windows(action: Action, config: Path | None, dry_run: bool, out: TextIO) -> int:
    from gensift.daemon.platforms import winservice

    if action == "install":
        path, settings = checked_config(config, for_install=True)
        return winservice.install(settings, path, dry_run=dry_run, out=out)
    if action == "stop":
        return winservice.stop(dry_run=dry_run, out=out)
    known = readable_config(config, action, out)
    if action == "uninstall":
        return winservice.remove(*known, dry_run=dry_run, out=out)
    return winservice.start(known[1], dry_run=dry_run, out=out)


def readable_config(
    cli_path: Path | None, action: Action, out: TextIO
) -> tuple[Path, Settings] | tuple[None, None]:
    """The config for messages only: uninstall and start must work without a loadable one.

    A missing default config is silent; one the user named, or one that fails to load, gets
    a note so that nobody wonders why the message leaves out the file names.
    """
    try:
        return checked_config(cli_path, for_install=False)
    except (InputError, ConfigError) as exc:
        if cli_path is not None or isinstance(exc, ConfigError):
            out.write(f"note: {action} goes on without the config: {exc}\n")
        return None, None
