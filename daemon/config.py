"""The settings tree: one TOML file, overridden by ``GENSIFT_*`` environment variables.

Precedence is built-in defaults < the TOML file < the environment. Every key can be set from
the environment as ``GENSIFT_<SECTION>__<KEY>`` (``GENSIFT_STAGES__QUALITY__THRESHOLD=0.9``;
lists as JSON, ``GENSIFT_WATCH__PATHS='["/a", "/b"]'``). ``~``, ``$VAR`` and ``${VAR}`` expand
in paths (``$$`` is a literal ``$``). Nothing is built at import time: the entry point calls
:func:`load_config` and passes the result down. Any mistake becomes one :class:`ConfigError`
whose message names the file or environment variable, the key and the problem.
"""

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import platformdirs
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

ENV_PREFIX = "GENSIFT_"
ENV_DELIMITER = "__"
CONFIG_ENV_VAR = "GENSIFT_CONFIG"


class ConfigError(Exception):
    """A configuration mistake, as one readable paragraph.

    ``path`` is the config file concerned (None when no file was read), ``key`` the dotted key
    at fault (the first one when several are) and ``env_var`` the environment variable that
    set it, when one did.
    """

    def __init__(
        self,
        message: str,
        *,
        path: Path | None = None,
        key: str | None = None,
        env_var: str | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.key = key
        self.env_var = env_var


# --- path expansion ---------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$(?:(?P<dollar>\$)|\{(?P<braced>[^}]*)(?P<close>\}?)|(?P<name>\w+))")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def expand_path(text: str, environ: Mapping[str, str]) -> Path:
    """Expand ``$VAR``, ``${VAR}`` (``$$`` = ``$``) and a leading ``~`` using ``environ``.

    Raises ValueError naming a variable that is not set: a path is never left holding ``$VAR``.
    """

    def substitute(match: re.Match[str]) -> str:
        if match["dollar"]:
            return "$"
        if match["braced"] is not None and not match["close"]:
            raise ValueError("unterminated '${'")
        name = match["braced"] if match["braced"] is not None else match["name"]
        if not _NAME.fullmatch(name):
            raise ValueError(f"invalid variable reference {match[0]!r}")
        if name not in environ:
            raise ValueError(f"environment variable ${name} is not set")
        return environ[name]

    return _expand_user(_VARIABLE.sub(substitute, text), environ)


def _expand_user(text: str, environ: Mapping[str, str]) -> Path:
    """Expand a leading ``~`` to ``environ``'s home, and ``~user`` to that user's home."""
    if text == "~" or text.startswith(("~/", "~" + os.sep)):
        return Path(_home(environ)) / text[2:]
    try:
        return Path(text).expanduser()
    except RuntimeError as exc:  # ~user with an unknown user
        raise ValueError(f"cannot expand '~': {exc}") from None


def _home(environ: Mapping[str, str]) -> str:
    """HOME (USERPROFILE on Windows) from ``environ``, else the account's home directory."""
    home = environ.get("HOME") or environ.get("USERPROFILE")
    if home:
        return home
    try:
        import pwd  # POSIX only

        return pwd.getpwuid(os.getuid()).pw_dir
    except (ImportError, KeyError):
        raise ValueError("cannot expand '~': HOME is not set") from None


def _environ_of(info: ValidationInfo) -> Mapping[str, str]:
    """The environment that load_config passed as validation context, else os.environ."""
    context = info.context
    if isinstance(context, Mapping) and isinstance(context.get("environ"), Mapping):
        return context["environ"]
    return os.environ


def _to_path(value: Any, info: ValidationInfo) -> Path:
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError("must be a path (a string)")
    if not value.strip():
        raise ValueError("must not be empty")
    return expand_path(value, _environ_of(info))


def _to_optional_path(value: Any, info: ValidationInfo) -> Path | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _to_path(value, info)


def _to_threshold(value: Any) -> Any:
    problem = 'must be "auto" or a number in (0, 1]'
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return "auto"
        try:
            value = float(value)
        except ValueError:
            raise ValueError(problem) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(problem)
    if not 0.0 < float(value) <= 1.0:
        raise ValueError(problem)
    return float(value)


_DEVICE = re.compile(r"auto|cpu|mps|cuda(?::\d+)?")


def _check_device(value: str) -> str:
    device = value.strip().lower()
    if not _DEVICE.fullmatch(device):
        raise ValueError("must be auto, cpu, cuda, cuda:N or mps")
    return device


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


ExpandedPath = Annotated[Path, BeforeValidator(_to_path)]
OptionalPath = Annotated[Path | None, BeforeValidator(_to_optional_path)]
Threshold = Annotated[Literal["auto"] | float, BeforeValidator(_to_threshold)]
Device = Annotated[str, AfterValidator(_check_device)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
NonEmptyStr = Annotated[str, Field(min_length=1)]
LogLevel = Annotated[
    Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"],
    BeforeValidator(_upper),
]


# --- the settings tree ------------------------------------------------------------------------


class _Section(BaseModel):
    """A TOML table: unknown keys are errors, defaults go through the same validation."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


#: The least ``watch.settle_seconds``: a file must be seen unchanged this long before it
#: counts as complete. Writers pause between chunks (a network copy stalls for hundreds of
#: milliseconds, an encoder flushes row by row), and below half a second such a pause would
#: pass for the end of the file; above it the wait is still well under the seconds a
#: generator spends on one image. A lower value is raised to this with a warning.
MIN_SETTLE_SECONDS = 0.5


class WatchSettings(_Section):
    paths: list[ExpandedPath] = Field(
        default_factory=lambda: [Path("~/stable-diffusion-webui/outputs")], min_length=1
    )
    recursive: bool = True
    patterns: list[NonEmptyStr] = Field(
        default_factory=lambda: ["*.png", "*.jpg", "*.jpeg", "*.webp"], min_length=1
    )
    settle_seconds: NonNegative = 2.0
    polling: bool = False
    rescan_seconds: NonNegative = 300.0

    _settle_asked: float | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _settle_floor(self) -> Self:
        """Raise a settle time below the safe minimum to it (:func:`config_warnings` says so)."""
        if self.settle_seconds < MIN_SETTLE_SECONDS:
            self._settle_asked = self.settle_seconds
            self.settle_seconds = MIN_SETTLE_SECONDS
        return self


class OutputSettings(_Section):
    root: ExpandedPath = Path("~/stable-diffusion-webui/sorted")
    reject_action: Literal["quarantine", "trash", "delete"] = "quarantine"
    uncertain_action: Literal["leave", "review"] = "leave"
    on_conflict: Literal["rename", "skip"] = "rename"
    sidecars: Literal["none", "xmp"] = "none"


class InferenceSettings(_Section):
    device: Device = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    batch_size: int = Field(default=16, ge=1)
    #: No longer used (batches start at once when the worker is idle and grow under load):
    #: accepted so that existing configs still load, named by a warning, never written out.
    max_wait_ms: NonNegative | None = Field(default=None, exclude=True)
    idle_unload_seconds: NonNegative = 0.0
    oom_fallback: Literal["wait", "cpu"] = "wait"
    compile: Literal["auto", "on", "off"] = "auto"


class QualityStageSettings(_Section):
    checkpoint: OptionalPath = Path("~/.local/share/gensift/models/quality.safetensors")
    reject_classes: list[NonEmptyStr] = Field(default_factory=lambda: ["reject"], min_length=1)
    threshold: Threshold = "auto"


class FeatureStageSettings(_Section):
    checkpoint: OptionalPath = Path("~/.local/share/gensift/models/feature.safetensors")
    threshold: Threshold = "auto"


class StagesSettings(_Section):
    quality: QualityStageSettings = Field(default_factory=QualityStageSettings)
    feature: FeatureStageSettings = Field(default_factory=FeatureStageSettings)


class JournalSettings(_Section):
    path: ExpandedPath = Path("~/.local/share/gensift/journal.sqlite3")


class LogSettings(_Section):
    level: LogLevel = "INFO"
    file: OptionalPath = None
    # `json` would shadow BaseModel.json(); the TOML key and the attribute are still `json`.
    json_: bool = Field(default=False, alias="json")

    @property
    def json(self) -> bool:  # type: ignore[override]
        """One JSON object per log line."""
        return self.json_


class Settings(BaseSettings):
    """Everything in config.toml. Build it with :func:`load_config`, never at import time.

    Two settings compare equal when their values are equal, whichever file they came from.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_DELIMITER,
        case_sensitive=False,
        extra="forbid",
        validate_default=True,
    )

    watch: WatchSettings = Field(default_factory=WatchSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    stages: StagesSettings = Field(default_factory=StagesSettings)
    journal: JournalSettings = Field(default_factory=JournalSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    _source: Path | None = PrivateAttr(default=None)

    @property
    def source(self) -> Path | None:
        """The config file that was read, or None when there was none (defaults and env)."""
        return self._source

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only what the constructor is given: load_config gathers the file and environment.

        That keeps the environment explicit (tests pass their own mapping) and lets one load
        report the problems of every section together.
        """
        return (init_settings,)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Settings):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]


def config_warnings(settings: Settings) -> list[str]:
    """What was accepted but changed or is risky, one line each (the key named first)."""
    notes = []
    asked = settings.watch._settle_asked
    if asked is not None:
        notes.append(
            f"watch.settle_seconds = {asked:g} is below the safe minimum of "
            f"{MIN_SETTLE_SECONDS:g} s (a file still being written could be read as complete); "
            f"using {MIN_SETTLE_SECONDS:g}"
        )
    if settings.inference.max_wait_ms is not None:
        notes.append(
            "inference.max_wait_ms is no longer used and can be removed: a file that finds "
            "the worker idle is decided at once, and batches grow from the queue under load"
        )
    return notes


# --- locating and reading the file ------------------------------------------------------------


def default_config_path() -> Path:
    """The platform's user config file: ``~/.config/gensift/config.toml`` on Linux."""
    return platformdirs.user_config_path("gensift", appauthor=False) / "config.toml"


def resolve_config_path(cli_path: Path | None, environ: Mapping[str, str]) -> tuple[Path, bool]:
    """``-c`` path, else ``$GENSIFT_CONFIG``, else the default; the bool: explicitly asked for."""
    if cli_path is not None:
        return _expand_user(str(cli_path), environ), True
    value = environ.get(CONFIG_ENV_VAR, "")
    if value.strip():
        try:
            return expand_path(value, environ), True
        except ValueError as exc:
            raise ConfigError(
                f"environment variable {CONFIG_ENV_VAR}={value!r}: {exc}", env_var=CONFIG_ENV_VAR
            ) from None
    return default_config_path(), False


def read_toml(path: Path, how: str | None) -> dict[str, Any] | None:
    """The file's tables, or None when the default file does not exist.

    ``how`` says how an explicitly requested file was named (for the error), None for the
    default file, which may be absent.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if how is None:
            return None
        raise ConfigError(f"{path}: config file not found (named by {how})", path=path) from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file", path=path) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"{path}: cannot read config file: {reason}", path=path) from None
    if path.is_dir():  # Windows reports reading a directory as PermissionError
        raise ConfigError(f"{path}: is a directory, not a config file", path=path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not valid UTF-8 text (byte {exc.start}); a config file is TOML", path=path
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        reason = str(exc)
        if "line" not in reason:  # "(at end of document)": name the last line
            reason += f" (line {max(len(text.splitlines()), 1)})"
        raise ConfigError(f"{path}: not valid TOML: {reason}", path=path) from None


# --- the environment --------------------------------------------------------------------------


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        # Replace what the base class read from os.environ; only `environ` counts.
        self.env_vars = {
            (name if self.case_sensitive else name.lower()): value
            for name, value in environ.items()
        }


def settings_env_names(environ: Mapping[str, str]) -> list[str]:
    """The GENSIFT_<SECTION>__<KEY> names in environ (GENSIFT_CONFIG and the like excluded)."""
    prefix = ENV_PREFIX.lower()
    sections = {name.lower() for name in Settings.model_fields}
    names = []
    for name in environ:
        lowered = name.lower()
        if lowered.startswith(prefix) and (
            ENV_DELIMITER in lowered or lowered[len(prefix) :] in sections
        ):
            names.append(name)
    return sorted(names)


def _environment_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """The nested values the GENSIFT_* variables set; lists and tables are JSON."""
    names = settings_env_names(environ)
    sections = set(Settings.model_fields)
    for name in names:
        section = name[len(ENV_PREFIX) :].split(ENV_DELIMITER)[0].lower()
        if section not in sections:
            raise ConfigError(
                f"environment variable {name}: unknown section '{section}' "
                f"(sections are {', '.join(Settings.model_fields)})",
                key=section,
                env_var=name,
            )
    try:
        return _MappingEnvSource(Settings, environ)()
    except SettingsError as exc:
        for name in names:  # find the culprit: the one that fails on its own
            try:
                _MappingEnvSource(Settings, {name: environ[name]})()
            except SettingsError:
                key = ".".join(name[len(ENV_PREFIX) :].lower().split(ENV_DELIMITER))
                raise ConfigError(
                    f"environment variable {name}: cannot parse {environ[name]!r} for {key}: "
                    'lists and tables are written as JSON, e.g. \'["/a", "/b"]\'',
                    key=key,
                    env_var=name,
                ) from None
        raise ConfigError(f"environment: {exc}") from None


# --- loading ----------------------------------------------------------------------------------


def load_config(path: Path | None = None, *, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the config file (``path``, else ``$GENSIFT_CONFIG``, else the default) and the env.

    An explicitly named file must exist; a missing default file means all defaults. When
    ``environ`` is given it is the only environment consulted (for overrides and expansion).
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    config_path, explicit = resolve_config_path(path, env)
    how = None
    if explicit:
        how = "-c" if path is not None else f"environment variable {CONFIG_ENV_VAR}"
    file_values = read_toml(config_path, how)
    source = config_path if file_values is not None else None
    env_values = _environment_values(env)
    merged = _merge(_merge(_skeleton(Settings), file_values or {}), env_values)
    settings = _validate(merged, env, source, env_values)
    settings._source = source
    return settings


def _validate(
    merged: dict[str, Any],
    environ: Mapping[str, str],
    source: Path | None,
    env_values: Mapping[str, Any],
) -> Settings:
    """Validate every section (expanding paths with ``environ``), then build Settings.

    Sections are validated one by one because BaseSettings' constructor drops the validation
    context that carries ``environ``; all problems are collected into one ConfigError.
    """
    sections: dict[str, BaseModel] = {}
    errors: list[ErrorDetails] = []
    for key, value in merged.items():
        model = _section_model(key)
        if model is None:
            errors.append(
                ErrorDetails(type="extra_forbidden", loc=(key,), msg="unknown key", input=value)
            )
            continue
        try:
            sections[key] = model.model_validate(value, context={"environ": environ})
        except ValidationError as exc:
            errors += [ErrorDetails(**{**e, "loc": (key, *e["loc"])}) for e in exc.errors()]
    if errors:
        raise _config_error(errors, source, env_values, environ)
    return Settings(**sections)


def _section_model(key: str) -> type[BaseModel] | None:
    field = Settings.model_fields.get(key)
    if field is None or not isinstance(field.annotation, type):
        return None
    return field.annotation if issubclass(field.annotation, BaseModel) else None


def _skeleton(model: type[BaseModel]) -> dict[str, Any]:
    """An empty table for every section, so each one is validated with the load's context."""
    tables = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            tables[field.alias or name] = _skeleton(annotation)
    return tables


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override``, tables merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# --- errors -----------------------------------------------------------------------------------


def _dotted(loc: Iterable[int | str]) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _came_from(values: Any, loc: tuple[int | str, ...]) -> bool:
    """Whether the value at ``loc`` (or a table or list holding it) is in ``values``."""
    for part in loc:
        if not isinstance(values, dict):
            return True
        if part not in values:
            return False
        values = values[part]
    return True


def _env_name_for(loc: tuple[int | str, ...], environ: Mapping[str, str]) -> str | None:
    """The GENSIFT_ variable that set ``loc``: the exact one, one below it, or one above it."""
    keys = [part for part in loc if isinstance(part, str)]
    lowered = {name.lower(): name for name in environ}
    exact = (ENV_PREFIX + ENV_DELIMITER.join(keys)).lower()
    if exact in lowered:
        return lowered[exact]
    below = sorted(name for low, name in lowered.items() if low.startswith(exact + ENV_DELIMITER))
    if below:
        return below[0]
    for end in range(len(keys) - 1, 0, -1):
        above = (ENV_PREFIX + ENV_DELIMITER.join(keys[:end])).lower()
        if above in lowered:
            return lowered[above]
    return None


def _problem(error: ErrorDetails) -> str:
    key = _dotted(error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}' (extra keys are not allowed; see config.example.toml)"
    message = error["msg"].removeprefix("Value error, ")
    shown = repr(error["input"])
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"invalid value {shown} for '{key}': {message}"


def _config_error(
    errors: list[ErrorDetails],
    source: Path | None,
    env_values: Mapping[str, Any],
    environ: Mapping[str, str],
) -> ConfigError:
    """One ConfigError listing every problem, each under the file or variable it came from."""
    file_origin = str(source) if source is not None else "defaults"
    lines: list[tuple[str, str]] = []
    env_names: list[str | None] = []
    for error in errors:
        origin, name = file_origin, None
        if _came_from(env_values, error["loc"]):
            name = _env_name_for(error["loc"], environ)
            origin = f"environment variable {name}" if name else "environment"
        lines.append((origin, _problem(error)))
        env_names.append(name)
    origins = {origin for origin, _ in lines}
    if len(lines) == 1:
        message = f"{lines[0][0]}: {lines[0][1]}"
    elif len(origins) == 1:
        message = f"{lines[0][0]}: {len(lines)} problems: " + "; ".join(p for _, p in lines)
    else:
        message = f"{len(lines)} configuration problems: " + "; ".join(
            f"{origin}: {problem}" for origin, problem in lines
        )
    return ConfigError(
        message, path=source, key=_dotted(errors[0]["loc"]) or None, env_var=env_names[0]
    )


# --- rendering --------------------------------------------------------------------------------


def render_settings(settings: Settings) -> str:
    """The effective settings as TOML that loads back to equal settings."""
    if settings.source is not None:
        header = f"# gensift effective settings, read from {settings.source} and the environment"
    else:
        header = "# gensift effective settings: no config file; defaults and environment"
    lines = [header]
    _emit_table(lines, (), settings)
    return "\n".join(lines) + "\n"


def _emit_table(lines: list[str], prefix: tuple[str, ...], model: BaseModel) -> None:
    scalars: list[tuple[str, Any]] = []
    tables: list[tuple[str, BaseModel]] = []
    for name, field in type(model).model_fields.items():
        if field.exclude:  # accepted for old configs only
            continue
        value = getattr(model, name)
        key = field.alias or name
        if isinstance(value, BaseModel):
            tables.append((key, value))
        else:
            scalars.append((key, value))
    if scalars:
        if prefix:
            lines += ["", f"[{'.'.join(prefix)}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in scalars]
    for key, table in tables:
        _emit_table(lines, (*prefix, key), table)


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f"}
_ESCAPES["\r"] = "\\r"


def _toml_string(text: str) -> str:
    escaped = "".join(
        _ESCAPES.get(char)
        or (f"\\u{ord(char):04X}" if ord(char) < 0x20 or ord(char) == 0x7F else char)
        for char in text
    )
    return f'"{escaped}"'


def _toml_value(value: Any) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Path):
        return _toml_string(str(value).replace("$", "$$"))
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML: {value!r}")
