"""The systemd unit text for ``gensift watch``, and the example units in ``systemd/``.

Two units. The system unit runs the daemon as a dedicated ``gensift`` user in a hardened
sandbox, for a machine that generates around the clock; the user unit runs it under
``systemctl --user`` for a desktop user whose images live in their home. The unit text lives
here and nowhere else: ``systemd/gensift.service`` and ``systemd/gensift-user.service`` are
what :func:`render_unit` writes for the example paths of :func:`example_settings` (a test keeps
them in step; ``python -m gensift.daemon.platforms.systemd systemd/`` rewrites them), and
``systemd/README.md`` explains every directive.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from gensift.daemon.config import (
    FeatureStageSettings,
    JournalSettings,
    OutputSettings,
    QualityStageSettings,
    Settings,
    StagesSettings,
    WatchSettings,
)
from gensift.models.errors import InputError

Scope = Literal["user", "system"]

UNIT_NAME = "gensift.service"
SERVICE_USER = "gensift"

_COMMON_HEAD = """\
# Written by `gensift service install`; every directive is explained in systemd/README.md.
# Change it with a drop-in (`systemctl {user_flag}edit gensift`): a re-install rewrites this file.

[Unit]
Description=gensift: sift new images from an image generator's output folders
"""

_COMMON_SERVICE = """\
StartLimitIntervalSec=10min
StartLimitBurst=5

[Service]
Type=notify
{identity}ExecStart={exec_start}
ExecReload=/bin/kill -HUP $MAINPID
WatchdogSec=60s
TimeoutStartSec=5min
TimeoutStopSec=30s
KillMode=mixed
Restart=on-failure
RestartSec=10s
RestartPreventExitStatus=2
Environment=PYTHONUNBUFFERED=1
SyslogIdentifier=gensift
"""

_SECCOMP = """\
NoNewPrivileges=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictNamespaces=yes
RestrictSUIDSGID=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallErrorNumber=EPERM
# Only AF_UNIX: systemd's notify socket. gensift and torch need no network.
RestrictAddressFamilies=AF_UNIX
# Not MemoryDenyWriteExecute=yes: CUDA, ROCm and torch's compilers need memory that is
# writable and executable.
"""

SYSTEM_TEMPLATE = (
    _COMMON_HEAD
    + "{requires_mounts_for}"
    + _COMMON_SERVICE
    + """\
StateDirectory=gensift
UMask=0027

# The sandbox: everything read-only but the folders gensift moves files in and out of.
ProtectSystem=strict
ProtectHome=read-only
{read_write_paths}PrivateTmp=yes
PrivateMounts=yes
CapabilityBoundingSet=
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RemoveIPC=yes
PrivateNetwork=yes
IPAddressDeny=any

"""
    + _SECCOMP
    + """\

# The GPU: PrivateDevices=yes would hide /dev/nvidia*, so it stays off. Instead only these
# device groups of /proc/devices are allowed (besides /dev/null, /dev/urandom and the like).
DevicePolicy=closed
# NVIDIA: /dev/nvidia0..N, /dev/nvidiactl, /dev/nvidia-modeset (major 195, named
# nvidia-frontend by older drivers and nvidia by newer ones), /dev/nvidia-uvm, MIG caps.
DeviceAllow=char-nvidia-frontend rw
DeviceAllow=char-nvidia rw
DeviceAllow=char-nvidia-uvm rw
DeviceAllow=char-nvidia-caps rw
# AMD ROCm and Intel: /dev/dri/renderD*, /dev/kfd.
DeviceAllow=char-drm rw
DeviceAllow=char-kfd rw

[Install]
WantedBy=multi-user.target
"""
)

USER_TEMPLATE = (
    _COMMON_HEAD
    + _COMMON_SERVICE
    + """\

# What a user manager enforces without privileges (seccomp filters). The namespace options
# of the system unit would need unprivileged user namespaces here; see systemd/README.md.
"""
    + _SECCOMP
    + """\

[Install]
WantedBy=default.target
"""
)


# --- rendering ---------------------------------------------------------------------------------

#: Characters that need no quoting in a unit file value (after % and $ are doubled).
_PLAIN = re.compile(r"[A-Za-z0-9_./,:@=+%$-]+")
#: Characters a path may not hold here: systemd would read them as quotes or escapes.
_UNQUOTABLE = re.compile(r'["\\\x00-\x1f\x7f]')


def _quote(text: str, *, expand_dollar: bool) -> str:
    """``text`` as one word of a unit file value.

    ``%`` starts a specifier everywhere, so it is doubled; ``$`` is doubled only where systemd
    expands environment variables (ExecStart=). A word with spaces or quotes is wrapped in
    double quotes. Double quotes, backslashes and control characters are refused rather than
    escaped: no real folder needs them, and an escape mistake would point the service
    elsewhere.
    """
    if _UNQUOTABLE.search(text):
        raise InputError(
            f"{text!r}: a path for a systemd unit cannot hold double quotes, backslashes or "
            f"control characters; rename the folder or use a symbolic link without them"
        )
    word = text.replace("%", "%%")
    if expand_dollar:
        word = word.replace("$", "$$")
    return word if _PLAIN.fullmatch(word) else f'"{word}"'


def exec_arg(text: str) -> str:
    """One ExecStart= argument: ``%`` and ``$`` doubled, quoted when it has spaces."""
    return _quote(text, expand_dollar=True)


def path_arg(path: Path) -> str:
    """One path of ReadWritePaths= or RequiresMountsFor=: absolute, ``%`` doubled, quoted."""
    if not path.is_absolute():
        raise InputError(f"{path}: the service needs an absolute path")
    return _quote(str(path), expand_dollar=False)


def exec_start(python: Path, config: Path) -> str:
    """``python -P -m gensift.daemon.cli watch -c config``; ``-P`` keeps the working
    directory off sys.path, so a folder named ``gensift`` there cannot shadow the package.

    systemd expands ``$VAR`` in the arguments but not in the program's path, where ``$$``
    would stay two characters; a ``$`` there is refused rather than guessed at.
    """
    for path in (python, config):
        if not path.is_absolute():
            raise InputError(f"{path}: the service needs an absolute path")
    if "$" in str(python):
        raise InputError(f"{python}: the interpreter's path cannot hold '$' in a systemd unit")
    program = _quote(str(python), expand_dollar=False)
    return f"{program} -P -m gensift.daemon.cli watch -c {exec_arg(str(config))}"


def read_write_paths(settings: Settings) -> list[Path]:
    """What the system unit may write: the watched folders (files move out of them), the
    output root, the journal's folder and the log file's folder; no path twice, none inside
    another. The model folders are not here: the daemon only reads checkpoints, and a
    read-only view still shows a checkpoint that ``gensift train`` renames into place."""
    wanted = [*settings.watch.paths, settings.output.root, settings.journal.path.parent]
    if settings.log.file is not None:
        wanted.append(settings.log.file.parent)
    kept: list[Path] = []
    for path in wanted:
        if not any(path.is_relative_to(k) for k in kept):
            kept = [k for k in kept if not k.is_relative_to(path)] + [path]
    return kept


def _lines(key: str, paths: Iterable[Path]) -> str:
    return "".join(f"{key}={path_arg(p)}\n" for p in paths)


def render_unit(
    scope: Scope,
    settings: Settings,
    config: Path,
    *,
    python: Path | None = None,
    user: str = SERVICE_USER,
) -> str:
    """The unit file text for ``scope``: runs ``python -m gensift.daemon.cli watch -c config``.

    ``python`` defaults to this interpreter, unresolved: a virtual environment's
    ``bin/python`` is a symlink, and only the link path puts the venv on sys.path.
    """
    python = Path(sys.executable) if python is None else python
    if scope == "user":
        return USER_TEMPLATE.format(
            user_flag="--user ", identity="", exec_start=exec_start(python, config)
        )
    paths = read_write_paths(settings)
    return SYSTEM_TEMPLATE.format(
        user_flag="",
        identity=f"User={user}\nGroup={user}\n",
        exec_start=exec_start(python, config),
        requires_mounts_for=_lines("RequiresMountsFor", paths),
        read_write_paths=_lines("ReadWritePaths", paths),
    )


# --- the examples in systemd/ ---------------------------------------------------------------

EXAMPLE_FILES: dict[Scope, str] = {"system": "gensift.service", "user": "gensift-user.service"}
EXAMPLE_PYTHON: dict[Scope, Path] = {
    "system": Path("/opt/gensift/venv/bin/python"),
    "user": Path("/home/alice/gensift/.venv/bin/python"),
}
EXAMPLE_CONFIG: dict[Scope, Path] = {
    "system": Path("/etc/gensift/config.toml"),
    "user": Path("/home/alice/.config/gensift/config.toml"),
}


def example_settings() -> Settings:
    """The settings the example units in ``systemd/`` are rendered for."""
    models = Path("/var/lib/gensift/models")
    return Settings(
        watch=WatchSettings(paths=[Path("/srv/stable-diffusion-webui/outputs")]),
        output=OutputSettings(root=Path("/srv/stable-diffusion-webui/sorted")),
        stages=StagesSettings(
            quality=QualityStageSettings(checkpoint=models / "quality.safetensors"),
            feature=FeatureStageSettings(checkpoint=models / "feature.safetensors"),
        ),
        journal=JournalSettings(path=Path("/var/lib/gensift/journal.sqlite3")),
    )


def render_example(scope: Scope) -> str:
    return render_unit(
        scope, example_settings(), EXAMPLE_CONFIG[scope], python=EXAMPLE_PYTHON[scope]
    )


def write_examples(folder: Path) -> list[Path]:
    """(Re)write the example units into ``folder`` (the repository's ``systemd/``)."""
    written = []
    for scope, name in EXAMPLE_FILES.items():
        path = folder / name
        path.write_text(render_example(scope), encoding="utf-8")
        written.append(path)
    return written
