"""The check both service installers share: config paths and GENSIFT_* variables that mean
something else (or nothing) to the account a service runs as."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gensift.daemon.platforms.servicepaths import (
    account_dependent_paths,
    environment_warning,
    refuse_account_paths,
)
from gensift.models.errors import InputError


def write_config(folder: Path, text: str) -> Path:
    config = folder / "config.toml"
    config.write_text(text, encoding="utf-8")
    return config


def absolute_config(folder: Path, **override: str) -> str:
    """TOML naming every path key with an absolute path, unless ``override`` sets a table's
    text (e.g. ``journal=""`` leaves the key out)."""
    tables = {
        "watch": f"paths = {json.dumps([str(folder / 'inbox')])}",
        "output": f"root = {json.dumps(str(folder / 'sorted'))}",
        "stages.quality": 'checkpoint = ""',
        "stages.feature": 'checkpoint = ""',
        "journal": f"path = {json.dumps(str(folder / 'journal.sqlite3'))}",
        "log": 'file = ""',
    }
    tables.update({name.replace("_", "."): text for name, text in override.items()})
    return "".join(f"[{name}]\n{text}\n\n" for name, text in tables.items())


def test_every_kind_of_account_dependent_path_is_named_with_its_key_and_value(
    tmp_path: Path,
) -> None:
    config = write_config(
        tmp_path,
        absolute_config(
            tmp_path,
            watch=f"paths = {json.dumps([str(tmp_path / 'ok'), '~/sd/outputs'])}",
            output='root = "$HOME/sorted"',
            stages_quality='checkpoint = "${MODELS}/quality.safetensors"',
            stages_feature='checkpoint = "models/feature.safetensors"',
            journal="",  # left out: the default is under ~
            log='file = "%USERPROFILE%\\\\gensift.log"',
        ),
    )
    found = [(p.key, p.value, p.kind, p.default) for p in account_dependent_paths(config)]
    assert found == [
        ("watch.paths", "~/sd/outputs", "home", False),
        ("output.root", "$HOME/sorted", "variable", False),
        ("stages.quality.checkpoint", "${MODELS}/quality.safetensors", "variable", False),
        ("stages.feature.checkpoint", "models/feature.safetensors", "relative", False),
        ("journal.path", "~/.local/share/gensift/journal.sqlite3", "home", True),
        ("log.file", "%USERPROFILE%\\gensift.log", "percent", False),
    ]


def test_absolute_paths_literal_dollars_and_switched_off_paths_pass(tmp_path: Path) -> None:
    text = absolute_config(tmp_path, output=f"root = {json.dumps(str(tmp_path / 'a$$b'))}")
    assert account_dependent_paths(write_config(tmp_path, text)) == []


def test_the_refusal_names_every_key_and_asks_for_absolute_paths(tmp_path: Path) -> None:
    config = write_config(
        tmp_path, absolute_config(tmp_path, watch='paths = ["~/sd/outputs"]', journal="")
    )
    with pytest.raises(InputError) as caught:
        refuse_account_paths(config, runs_as="the service runs as X", advice=", or else")
    message = str(caught.value)
    assert message.startswith(f"{config}: the service runs as X, not as you")
    assert 'watch.paths = "~/sd/outputs" starts with ~' in message
    assert 'journal.path is not set, so it defaults to "~/.local/share/' in message
    assert message.endswith("Write absolute paths in the config, or else.")

    fine = write_config(tmp_path, absolute_config(tmp_path))
    refuse_account_paths(fine, runs_as="the service runs as X")


def test_environment_warning_names_the_settings_variables_only(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    assert environment_warning({"GENSIFT_CONFIG": "x", "PATH": "/bin"}, config) is None
    one = environment_warning({"GENSIFT_LOG__LEVEL": "DEBUG"}, config)
    assert one == (
        f"the service does not see GENSIFT_LOG__LEVEL from this shell: put that setting in "
        f"{config} instead"
    )
    two = environment_warning({"GENSIFT_WATCH__POLLING": "1", "GENSIFT_OUTPUT": "{}"}, config)
    assert two is not None and "GENSIFT_OUTPUT, GENSIFT_WATCH__POLLING" in two
    assert "those settings" in two
