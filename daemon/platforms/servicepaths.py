"""What a config means to a service account that it does not mean to you.

A service (the systemd system unit's ``gensift`` user, the Windows service's LocalSystem)
reads the same config file, but ``~``, ``$VAR``, ``%VAR%`` and relative paths resolve for its
account, environment and working folder, and path keys left out fall back to defaults under
``~``. ``GENSIFT_*`` variables set in your shell do not reach it either. Both installers
refuse such paths and warn about such variables with the functions here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gensift.daemon.config import Settings, read_toml, settings_env_names
from gensift.models.errors import InputError

#: The config keys that hold paths (``watch.paths`` holds a list of them).
PATH_KEYS = (
    "watch.paths",
    "output.root",
    "stages.quality.checkpoint",
    "stages.feature.checkpoint",
    "journal.path",
    "log.file",
)

Kind = Literal["home", "variable", "percent", "relative"]
_REASONS: dict[Kind, str] = {
    "home": "starts with ~ (the home folder of whichever account runs gensift)",
    "variable": "uses an environment variable (the service does not have yours)",
    "percent": "uses a %VARIABLE%, which gensift never expands",
    "relative": (
        "is a relative path (a service starts in its own working folder: / under systemd, "
        "C:\\Windows\\System32 on Windows)"
    ),
}
_PERCENT_VARIABLE = re.compile(r"%[^%\s]+%")


@dataclass(frozen=True)
class PathProblem:
    """A path value that means something else when another account runs gensift."""

    key: str  # dotted, e.g. "watch.paths"
    value: str  # as the file writes it, or the built-in default
    kind: Kind
    default: bool  # True: the file leaves the key out and the default applies

    def describe(self) -> str:
        reason = _REASONS[self.kind]
        if self.default:
            return f'{self.key} is not set, so it defaults to "{self.value}", which {reason}'
        return f'{self.key} = "{self.value}" {reason}'


def _kind(value: str) -> Kind | None:
    if value.startswith("~"):
        return "home"
    if "$" in value.replace("$$", ""):
        return "variable"
    if _PERCENT_VARIABLE.search(value):
        return "percent"
    if not Path(value).is_absolute():
        return "relative"
    return None


def _field_default(key: str) -> Any:
    """The built-in default of a dotted key, unvalidated (so ``~`` is still there)."""
    model: Any = Settings
    *sections, name = key.split(".")
    for section in sections:
        model = model.model_fields[section].annotation
    return model.model_fields[name].get_default(call_default_factory=True)


def _raw_value(tables: Mapping[str, Any], key: str) -> tuple[Any, bool]:
    """The file's value for a dotted key, else the default; the bool: it is the default."""
    node: Any = tables
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _field_default(key), True
        node = node[part]
    return node, False


def account_dependent_paths(config: Path) -> list[PathProblem]:
    """Every path in ``config`` (or default it falls back on) that depends on who runs it.

    Reads the raw TOML, not loaded settings: by then ``~`` has become the installer's home.
    """
    tables = read_toml(config, "the service") or {}
    problems = []
    for key in PATH_KEYS:
        value, default = _raw_value(tables, key)
        for item in value if isinstance(value, list) else [value]:
            if item is None or not str(item).strip():
                continue  # an empty optional path switches the feature off
            kind = _kind(str(item))
            if kind is not None:
                problems.append(PathProblem(key, str(item), kind, default))
    return problems


def refuse_account_paths(config: Path, *, runs_as: str, advice: str = "") -> None:
    """Raise InputError naming every account-dependent path in ``config``.

    ``runs_as`` says who the service runs as ("the Windows service runs as LocalSystem");
    ``advice`` is appended to the request for absolute paths.
    """
    problems = account_dependent_paths(config)
    if not problems:
        return
    lines = "\n".join(f"  - {problem.describe()}" for problem in problems)
    raise InputError(
        f"{config}: {runs_as}, not as you, so these paths would point somewhere else:\n"
        f"{lines}\nWrite absolute paths in the config{advice}."
    )


def environment_warning(environ: Mapping[str, str], config: Path) -> str | None:
    """The warning for ``GENSIFT_*`` settings in ``environ``, which the service will not see."""
    names = settings_env_names(environ)
    if not names:
        return None
    what = "that setting" if len(names) == 1 else "those settings"
    return (
        f"the service does not see {', '.join(names)} from this shell: put {what} in "
        f"{config} instead"
    )
