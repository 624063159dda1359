"""The settings tree: file, environment, expansion, errors, rendering, logging."""

import io
import json
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from pydantic import BaseModel

from gensift.daemon import config as config_module
from gensift.daemon.config import (
    ConfigError,
    LogSettings,
    Settings,
    default_config_path,
    load_config,
    render_settings,
    resolve_config_path,
)
from gensift.daemon.logs import setup_logging

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    """A minimal, explicit environment: nothing leaks in from the test runner."""
    return {"HOME": str(home)}


@pytest.fixture
def no_default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the default config path at a file that does not exist."""
    missing = tmp_path / "no-such-dir" / "config.toml"
    monkeypatch.setattr(config_module, "default_config_path", lambda: missing)
    return missing


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path | None, environ: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ)
    return info.value


# --- defaults, file, environment ----------------------------------------------------------------


def test_defaults_without_a_file(no_default_file: Path, env: dict[str, str], home: Path) -> None:
    settings = load_config(environ=env)
    assert settings.source is None
    assert settings.watch.paths == [home / "stable-diffusion-webui/outputs"]
    assert settings.watch.recursive is True
    assert settings.watch.patterns == ["*.png", "*.jpg", "*.jpeg", "*.webp"]
    assert settings.watch.settle_seconds == 2.0
    assert settings.watch.rescan_seconds == 300
    assert settings.output.root == home / "stable-diffusion-webui/sorted"
    assert settings.output.reject_action == "quarantine"
    assert settings.inference.device == "auto"
    assert settings.inference.batch_size == 16
    assert settings.stages.quality.checkpoint == (
        home / ".local/share/gensift/models/quality.safetensors"
    )
    assert settings.stages.quality.reject_classes == ["reject"]
    assert settings.stages.quality.threshold == "auto"
    assert settings.stages.feature.threshold == "auto"
    assert settings.journal.path == home / ".local/share/gensift/journal.sqlite3"
    assert (settings.log.level, settings.log.file, settings.log.json) == ("INFO", None, False)


def test_file_values_are_read(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(
        tmp_path,
        """
        [watch]
        paths = ["/srv/a", "/srv/b"]
        recursive = false
        [inference]
        device = "CUDA:1"
        batch_size = 4
        [stages.quality]
        threshold = 0.97
        reject_classes = ["broken", "blurry"]
        [stages.feature]
        checkpoint = ""
        [log]
        level = "debug"
        json = true
        """,
    )
    settings = load_config(path, environ=env)
    assert settings.source == path
    assert settings.watch.paths == [Path("/srv/a"), Path("/srv/b")]
    assert settings.watch.recursive is False
    assert settings.watch.settle_seconds == 2.0  # untouched keys keep their defaults
    assert settings.inference.device == "cuda:1"
    assert settings.inference.batch_size == 4
    assert settings.stages.quality.threshold == 0.97
    assert settings.stages.quality.reject_classes == ["broken", "blurry"]
    assert settings.stages.feature.checkpoint is None  # empty = stage off
    assert settings.log.level == "DEBUG"
    assert settings.log.json is True


def test_environment_overrides_the_file(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(
        tmp_path,
        """
        [watch]
        paths = ["/from/file"]
        recursive = true
        [stages.quality]
        threshold = 0.5
        """,
    )
    env |= {
        "GENSIFT_WATCH__RECURSIVE": "false",
        "GENSIFT_STAGES__QUALITY__THRESHOLD": "0.9",
        "GENSIFT_WATCH__PATHS": '["/a", "/b"]',
        "gensift_log__level": "warning",  # names are case-insensitive
    }
    settings = load_config(path, environ=env)
    assert settings.watch.recursive is False
    assert settings.stages.quality.threshold == 0.9
    assert settings.watch.paths == [Path("/a"), Path("/b")]
    assert settings.log.level == "WARNING"


def test_explicit_environ_ignores_os_environ(
    no_default_file: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENSIFT_WATCH__RECURSIVE", "false")
    monkeypatch.setenv("GENSIFT_CONFIG", "/nonexistent/config.toml")
    assert load_config(environ=env).watch.recursive is True


def test_environment_can_switch_a_stage_off(no_default_file: Path, env: dict[str, str]) -> None:
    env["GENSIFT_STAGES__QUALITY__CHECKPOINT"] = ""
    assert load_config(environ=env).stages.quality.checkpoint is None


# --- errors -----------------------------------------------------------------------------------


def test_unknown_key_in_file_names_key_and_file(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, "[watch]\nfoo = 1\n")
    error = config_error(path, env)
    assert str(error).startswith(f"{path}: unknown key 'watch.foo'")
    assert (error.path, error.key) == (path, "watch.foo")
    assert "\n" not in str(error)


def test_unknown_section_in_file(tmp_path: Path, env: dict[str, str]) -> None:
    error = config_error(write(tmp_path, "[wacth]\nrecursive = true\n"), env)
    assert "unknown key 'wacth'" in str(error)


def test_bad_value_from_environment_names_the_variable(
    no_default_file: Path, env: dict[str, str]
) -> None:
    env["GENSIFT_INFERENCE__BATCH_SIZE"] = "many"
    error = config_error(None, env)
    assert "GENSIFT_INFERENCE__BATCH_SIZE" in str(error)
    assert "inference.batch_size" in str(error)
    assert error.env_var == "GENSIFT_INFERENCE__BATCH_SIZE"


def test_unknown_key_from_environment_names_the_variable(
    no_default_file: Path, env: dict[str, str]
) -> None:
    env["GENSIFT_WATCH__RECURSIV"] = "false"
    error = config_error(None, env)
    assert "GENSIFT_WATCH__RECURSIV" in str(error)
    assert "unknown key 'watch.recursiv'" in str(error)


def test_unknown_section_from_environment(no_default_file: Path, env: dict[str, str]) -> None:
    env["GENSIFT_WACTH__RECURSIVE"] = "false"
    assert "GENSIFT_WACTH__RECURSIVE" in str(config_error(None, env))


def test_list_from_environment_must_be_json(no_default_file: Path, env: dict[str, str]) -> None:
    env["GENSIFT_WATCH__PATHS"] = "/not/json"
    error = config_error(None, env)
    assert "GENSIFT_WATCH__PATHS" in str(error)
    assert "JSON" in str(error)


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[output]\nreject_action = "shred"\n', "output.reject_action"),
        ('[output]\non_conflict = "overwrite"\n', "output.on_conflict"),
        ('[inference]\ndevice = "tpu"\n', "inference.device"),
        ('[inference]\nprecision = "int8"\n', "inference.precision"),
        ("[inference]\nbatch_size = 0\n", "inference.batch_size"),
        ('[inference]\nbatch_size = "lots"\n', "inference.batch_size"),
        ("[watch]\nsettle_seconds = -1\n", "watch.settle_seconds"),
        ("[watch]\npaths = []\n", "watch.paths"),
        ('[watch]\nrecursive = "sometimes"\n', "watch.recursive"),
        ('[log]\nlevel = "LOUD"\n', "log.level"),
        ("[stages.quality]\nthreshold = 0\n", "stages.quality.threshold"),
        ("[stages.quality]\nthreshold = 1.5\n", "stages.quality.threshold"),
        ('[stages.feature]\nthreshold = "high"\n', "stages.feature.threshold"),
        ("[stages.quality]\nreject_classes = []\n", "stages.quality.reject_classes"),
        ('[output]\nroot = ""\n', "output.root"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, env: dict[str, str], toml: str, key: str) -> None:
    path = write(tmp_path, toml)
    error = config_error(path, env)
    assert error.key == key
    assert str(error).startswith(f"{path}: invalid value")
    assert f"'{key}'" in str(error)


def test_several_problems_in_one_message(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, '[watch]\nfoo = 1\n[inference]\nbatch_size = 0\ndevice = "tpu"\n')
    env["GENSIFT_LOG__LEVEL"] = "LOUD"
    message = str(config_error(path, env))
    assert message.startswith("4 configuration problems:")
    for part in ("watch.foo", "inference.batch_size", "inference.device", "GENSIFT_LOG__LEVEL"):
        assert part in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("value", "expected"), [("auto", "auto"), ("AUTO", "auto"), (1, 1.0), (0.25, 0.25)]
)
def test_threshold_auto_or_number(
    tmp_path: Path, env: dict[str, str], value: Any, expected: Any
) -> None:
    rendered = f'"{value}"' if isinstance(value, str) else str(value)
    path = write(tmp_path, f"[stages.feature]\nthreshold = {rendered}\n")
    assert load_config(path, environ=env).stages.feature.threshold == expected


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("[watch]\nrecursive = true\nrecursive false\n[log]\n", 3),
        ('[watch]\nrecursive = true\npaths = ["/a"\n', 3),  # error "at end of document"
    ],
)
def test_toml_syntax_error_names_file_and_line(
    tmp_path: Path, env: dict[str, str], text: str, line: int
) -> None:
    path = write(tmp_path, text)
    error = config_error(path, env)
    assert str(error).startswith(f"{path}: not valid TOML")
    assert f"line {line}" in str(error)


def test_explicit_missing_file_is_an_error(tmp_path: Path, env: dict[str, str]) -> None:
    missing = tmp_path / "nope.toml"
    assert "not found" in str(config_error(missing, env))
    env["GENSIFT_CONFIG"] = str(missing)
    error = config_error(None, env)
    assert str(missing) in str(error) and "GENSIFT_CONFIG" in str(error)


def test_missing_default_file_means_defaults(
    tmp_path: Path, no_default_file: Path, env: dict[str, str]
) -> None:
    defaults = load_config(environ=env)
    assert defaults.source is None
    assert defaults == load_config(write(tmp_path, ""), environ=env)  # equality ignores source


def test_unreadable_file_is_a_config_error(tmp_path: Path, env: dict[str, str]) -> None:
    error = config_error(tmp_path, env)  # a directory
    assert str(tmp_path) in str(error)


# --- paths ------------------------------------------------------------------------------------


def test_paths_expand_home_and_variables(tmp_path: Path, env: dict[str, str], home: Path) -> None:
    env |= {"DATA": "/data", "GENSIFT_OUTPUT__ROOT": "${DATA}/sorted"}
    path = write(
        tmp_path,
        """
        [watch]
        paths = ["~/out", "$DATA/more", "/cost/$$5"]
        [journal]
        path = "${HOME}/j.sqlite3"
        [log]
        file = "~/logs/gensift.log"
        """,
    )
    settings = load_config(path, environ=env)
    assert settings.watch.paths == [home / "out", Path("/data/more"), Path("/cost/$5")]
    assert settings.output.root == Path("/data/sorted")
    assert settings.journal.path == home / "j.sqlite3"
    assert settings.log.file == home / "logs/gensift.log"


def test_unset_variable_is_an_error_naming_it(tmp_path: Path, env: dict[str, str]) -> None:
    path = write(tmp_path, '[journal]\npath = "$NOT_SET_ANYWHERE/j.sqlite3"\n')
    error = config_error(path, env)
    assert "NOT_SET_ANYWHERE" in str(error)
    assert error.key == "journal.path"


def test_config_path_lookup_order(tmp_path: Path, home: Path) -> None:
    assert resolve_config_path(tmp_path / "a.toml", {"GENSIFT_CONFIG": "/b.toml"}) == (
        tmp_path / "a.toml",
        True,
    )
    assert resolve_config_path(None, {"GENSIFT_CONFIG": "~/b.toml", "HOME": str(home)}) == (
        home / "b.toml",
        True,
    )
    assert resolve_config_path(None, {}) == (default_config_path(), False)
    assert default_config_path().parts[-2:] == ("gensift", "config.toml")


# --- config.example.toml and rendering --------------------------------------------------------


def toml_keys(table: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in table.items():
        if isinstance(value, dict):
            keys |= toml_keys(value, f"{prefix}{key}.")
        else:
            keys.add(prefix + key)
    return keys


def model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        if field.exclude:  # a key kept only so that old configs load (a warning names it)
            continue
        key = field.alias or name
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= model_keys(annotation, f"{prefix}{key}.")
        else:
            keys.add(prefix + key)
    return keys


def test_example_documents_exactly_the_model() -> None:
    example = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert toml_keys(example) == model_keys(Settings)
    assert list(example) == ["watch", "output", "inference", "stages", "journal", "log"]


def test_example_loads_to_the_defaults(no_default_file: Path, env: dict[str, str]) -> None:
    assert load_config(EXAMPLE, environ=env) == load_config(environ=env)


def test_render_round_trips(tmp_path: Path, env: dict[str, str]) -> None:
    env |= {"DOLLARS": "/x/$y"}
    path = write(
        tmp_path,
        """
        [watch]
        paths = ["~/a \\"quoted\\"", "$DOLLARS"]
        settle_seconds = 0.125
        [stages.quality]
        checkpoint = ""
        threshold = 0.995
        [log]
        file = "/var/log/gensift.log"
        json = true
        """,
    )
    settings = load_config(path, environ=env)
    text = render_settings(settings)
    assert text.startswith(f"# gensift effective settings, read from {path}")
    assert [line for line in text.splitlines() if line.startswith("[")] == [
        "[watch]",
        "[output]",
        "[inference]",
        "[stages.quality]",
        "[stages.feature]",
        "[journal]",
        "[log]",
    ]
    again = load_config(write(tmp_path, text, "rendered.toml"), environ=env)
    assert again == settings
    assert again.source != settings.source


def test_render_without_a_file(no_default_file: Path, env: dict[str, str]) -> None:
    text = render_settings(load_config(environ=env))
    assert text.splitlines()[0].endswith("no config file; defaults and environment")
    assert 'threshold = "auto"' in text
    assert 'file = ""' in text


# --- logging ----------------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    yield
    logger.remove()
    logger.add(sys.stderr)


@pytest.mark.usefixtures("restore_logging")
def test_json_logging_writes_one_object_per_line() -> None:
    sink = io.StringIO()
    setup_logging(LogSettings(level="debug", json=True), sink=sink)
    logger.debug("decided {}", "/x/a.png")
    logger.trace("below the level")
    lines = sink.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])["record"]
    assert record["message"] == "decided /x/a.png"
    assert record["level"]["name"] == "DEBUG"


@pytest.mark.usefixtures("restore_logging")
def test_human_logging_and_file_sink(tmp_path: Path) -> None:
    sink = io.StringIO()
    log_file = tmp_path / "logs" / "nested" / "gensift.log"
    setup_logging(LogSettings(level="INFO", file=log_file), sink=sink)
    logger.info("moved {}", "a.png")
    logger.debug("hidden")
    assert "| INFO     | moved a.png" in sink.getvalue()
    logger.remove()  # closes the file
    assert log_file.read_text(encoding="utf-8").count("moved a.png") == 1


@pytest.mark.usefixtures("restore_logging")
def test_unopenable_log_file_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(ConfigError) as info:
        setup_logging(LogSettings(file=blocker / "gensift.log"), sink=io.StringIO())
    assert info.value.key == "log.file"
    assert "log.file" in str(info.value) and str(blocker) in str(info.value)


# --- watch.settle_seconds: a floor, not an error ------------------------------------------------


@pytest.mark.parametrize("asked", ["0", "0.1", "0.49"])
def test_a_settle_time_below_the_safe_minimum_is_raised_to_it_with_a_warning(
    tmp_path: Path, env: dict[str, str], asked: str
) -> None:
    from gensift.daemon.config import MIN_SETTLE_SECONDS, config_warnings

    settings = load_config(write(tmp_path, f"[watch]\nsettle_seconds = {asked}\n"), environ=env)
    assert MIN_SETTLE_SECONDS == 0.5
    assert settings.watch.settle_seconds == MIN_SETTLE_SECONDS
    [note] = config_warnings(settings)
    assert note.startswith("watch.settle_seconds = ") and "0.5" in note
    # the same from the environment, and a value at or above the floor is left alone
    env["GENSIFT_WATCH__SETTLE_SECONDS"] = asked
    assert load_config(environ=env).watch.settle_seconds == MIN_SETTLE_SECONDS
    env["GENSIFT_WATCH__SETTLE_SECONDS"] = "0.5"
    assert config_warnings(load_config(environ=env)) == []


def test_max_wait_ms_still_loads_but_is_named_as_unused(
    tmp_path: Path, env: dict[str, str]
) -> None:
    from gensift.daemon.config import config_warnings

    assert config_warnings(load_config(write(tmp_path, "[inference]\n"), environ=env)) == []
    settings = load_config(write(tmp_path, "[inference]\nmax_wait_ms = 50\n"), environ=env)
    [note] = config_warnings(settings)
    assert note.startswith("inference.max_wait_ms is no longer used")


def test_config_check_warns_about_a_raised_settle_time(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from gensift.daemon.cli import main

    config = write(tmp_path, "[watch]\nsettle_seconds = 0\n")
    assert main(["config", "check", "-c", str(config)]) == 0
    captured = capsys.readouterr()
    assert "settle_seconds = 0.5" in captured.out  # what runs
    [line] = [x for x in captured.err.splitlines() if "settle_seconds" in x]
    assert line.startswith("gensift: warning: watch.settle_seconds = 0 is below")
