"""The command line: help texts, config errors and exit codes."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from gensift.daemon.cli import build_parser, main


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


@pytest.mark.parametrize("command", ["train", "evaluate", "watch", "sort", "undo", "history"])
def test_every_option_is_explained(command: str) -> None:
    parser = _subparser(command)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and len(action.help) > 10, f"{command} {action.option_strings}"
    text = parser.format_help()
    for action in parser._actions:
        for option in action.option_strings:
            assert option in text


def test_config_check_prints_effective_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[inference]\nbatch_size = 4\n")
    monkeypatch.setenv("GENSIFT_INFERENCE__BATCH_SIZE", "8")  # environment beats the file
    assert main(["config", "check", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "batch_size = 8" in out
    assert "[stages.quality]" in out


def test_config_check_unknown_key_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[watch]\nrecursiv = true\n")
    assert main(["config", "check", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert "recursiv" in err and str(config) in err
    assert "Traceback" not in err


def test_train_with_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[inference]\nbatch_size = 0\n")
    rc = main(["train", "feature", "--data", str(tmp_path), "-c", str(config)])
    assert rc == 2
    assert "batch_size" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "quality"])  # --data missing
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["train", "sideways", "--data", "x"])
    assert info.value.code == 2


def _watch_config(tmp_path: Path, watched: Path, checkpoint: str = "") -> Path:
    config = tmp_path / "watch.toml"
    config.write_text(
        f"""[watch]
paths = ["{watched}"]
[output]
root = "{tmp_path / "out"}"
[journal]
path = "{tmp_path / "journal.sqlite3"}"
[stages.quality]
checkpoint = "{checkpoint}"
[stages.feature]
checkpoint = ""
"""
    )
    return config


def test_watch_refuses_a_watched_folder_inside_the_output_root(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["watch", "-c", str(_watch_config(tmp_path, tmp_path / "out" / "in"))]) == 2
    err = capsys.readouterr().err
    assert "watch.paths" in err and "inside output.root" in err


def test_watch_with_a_missing_checkpoint_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = _watch_config(tmp_path, tmp_path / "in", str(tmp_path / "gone.safetensors"))
    assert main(["watch", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert "stages.quality.checkpoint" in err and "gone.safetensors" in err
