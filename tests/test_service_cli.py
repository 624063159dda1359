"""``gensift service``: the shared checks before anything is installed, and the dispatch."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sortkit import write_config

from gensift.daemon.cli import main
from gensift.daemon.config import load_config
from gensift.daemon.platforms.install import run_service
from gensift.daemon.platforms.systemd import render_unit
from gensift.models.errors import InputError


@pytest.fixture
def config(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    for stage in ("quality", "feature"):
        (models / f"{stage}.safetensors").write_bytes(b"only its existence is checked here")
    (tmp_path / "inbox").mkdir()
    return write_config(tmp_path, models / "quality.safetensors", models / "feature.safetensors")


def test_install_dry_run_prints_exactly_the_rendered_unit_and_writes_nothing(
    config: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert main(["service", "install", "--user", "--dry-run", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    unit = render_unit("user", load_config(config), config.resolve())
    assert unit in out
    assert f"-c {config.resolve()}" in unit
    assert not (tmp_path / "xdg").exists()


def test_an_invalid_config_stops_the_install_with_the_config_error(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config.write_text(config.read_text().replace("batch_size = 4", "batch_size = 0"))
    assert main(["service", "install", "--user", "--dry-run", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert "inference.batch_size" in err
    assert str(config) in err


def test_a_missing_config_file_or_checkpoint_is_refused_before_anything_is_written(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["service", "install", "--user", "-c", str(tmp_path / "nope.toml")]) == 2
    assert "no config file at" in capsys.readouterr().err
    (tmp_path / "models" / "feature.safetensors").unlink()
    assert main(["service", "install", "--user", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert "stages.feature.checkpoint" in err
    assert "gensift train" in err


def test_a_watched_folder_inside_the_output_root_is_refused_at_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "out" / "inbox").mkdir(parents=True)
    config = write_config(tmp_path, None, None, inbox=tmp_path / "out" / "inbox")
    assert main(["service", "install", "--user", "--dry-run", "-c", str(config)]) == 2
    assert "is inside output.root" in capsys.readouterr().err


def test_scope_options_are_for_systemd_and_other_platforms_are_named(config: Path) -> None:
    with pytest.raises(InputError, match="machine-wide"):
        run_service(
            "install",
            scope="user",
            config=config,
            dry_run=True,
            out=io.StringIO(),
            platform="win32",
        )
    with pytest.raises(InputError, match="launchd"):
        run_service(
            "install", scope=None, config=config, dry_run=True, out=io.StringIO(), platform="darwin"
        )


def test_start_and_stop_dry_runs_name_the_systemctl_command_and_need_no_root(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["service", "start", "--user", "--dry-run"]) == 0
    assert "would run: systemctl --user start gensift.service" in capsys.readouterr().out
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert main(["service", "stop", "--system", "--dry-run"]) == 0
    assert "would run: systemctl stop gensift.service" in capsys.readouterr().out
    assert main(["service", "stop", "--system"]) == 2
    assert "needs root" in capsys.readouterr().err
