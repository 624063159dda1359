"""The publish gate, versions and rollback, through the installed command's entry point."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_dataset, train_cli
from loguru import logger
from sortkit import decisions, write_config
from watchkit import daemon_thread, drawn_files, wait_decided, wait_for

from gensift.daemon.cli import main
from gensift.models.checkpoint import read_checkpoint
from gensift.models.publish import candidate_for, versions_dir

#: head-only training on one random backbone: seconds, and the gate is the same for every recipe
FAST = ["--freeze-backbone", "--epochs", "20", "--val-split", "0.4", "--seed", "3"]


@pytest.fixture(scope="module")
def good_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("good"), {"keep": 60, "reject": 60}, seed=5)


@pytest.fixture(scope="module")
def shuffled_data(tmp_path_factory: pytest.TempPathFactory, good_data: Path) -> Path:
    """The same images with their labels shuffled: nothing to learn."""
    root = tmp_path_factory.mktemp("shuffled")
    files = sorted(good_data.glob("*/*.png"))
    labels = ["keep", "reject"] * (len(files) // 2)
    random.Random(0).shuffle(labels)
    for path, label in zip(files, labels, strict=True):
        (root / label).mkdir(exist_ok=True)
        shutil.copyfile(path, root / label / path.name)
    return root


@pytest.fixture
def live(tmp_path: Path, good_data: Path) -> Path:
    out = tmp_path / "models" / "quality.safetensors"
    assert train_cli("quality", good_data, out, *FAST) == 0
    return out


def test_a_chance_level_candidate_is_refused_and_the_live_file_is_untouched(
    live: Path, shuffled_data: Path, capsys: pytest.CaptureFixture
) -> None:
    before = live.read_bytes()
    capsys.readouterr()

    rc = train_cli("quality", shuffled_data, live, *FAST)

    assert rc == 1
    assert live.read_bytes() == before
    candidate = candidate_for(live)
    assert read_checkpoint(candidate)[1].stage == "quality"
    err = capsys.readouterr().err
    assert f"not published: the candidate was left at {candidate}" in err
    assert "--force" in err
    assert not versions_dir(live).exists()  # nothing was replaced, so nothing was kept


def test_a_refused_candidate_without_a_live_file_says_why(
    tmp_path: Path, shuffled_data: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "q.safetensors"
    assert train_cli("quality", shuffled_data, out, *FAST) == 1
    printed = capsys.readouterr().out
    assert "cannot be told from the" in printed
    assert "of always answering the commonest class" in printed
    assert not out.exists() and candidate_for(out).is_file()


def test_force_publishes_a_refused_candidate(
    live: Path, shuffled_data: Path, capsys: pytest.CaptureFixture
) -> None:
    old_id = read_checkpoint(live)[1].id
    rc = train_cli("quality", shuffled_data, live, *FAST, "--force")
    assert rc == 0
    assert read_checkpoint(live)[1].id != old_id
    assert "forced past the gate" in capsys.readouterr().out
    assert not candidate_for(live).exists()
    kept = list(versions_dir(live).glob("*.safetensors"))
    assert [read_checkpoint(p)[1].id for p in kept] == [old_id]


def test_a_better_candidate_replaces_the_live_one_which_is_kept_and_listed(
    tmp_path: Path, good_data: Path, shuffled_data: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "models" / "quality.safetensors"
    assert train_cli("quality", shuffled_data, out, *FAST, "--force") == 0  # a bad live model
    weak_id = read_checkpoint(out)[1].id
    capsys.readouterr()

    assert train_cli("quality", good_data, out, *FAST) == 0

    printed = capsys.readouterr().out
    assert f"against the live checkpoint {weak_id}" in printed
    assert "decisions that would change on these images" in printed
    good_id = read_checkpoint(out)[1].id
    assert good_id != weak_id
    assert (out.with_name("quality.report") / "metrics.json").is_file()

    assert main(["models", "list", "quality", "--checkpoint", str(out)]) == 0
    listing = capsys.readouterr().out
    lines = [line for line in listing.splitlines() if weak_id in line or good_id in line]
    assert len(lines) == 2
    assert lines[0].split()[1] == weak_id  # the kept version, oldest first
    assert lines[1].startswith("live") and good_id in lines[1]
    assert "on 24" in lines[1]  # the accuracy says how many images it rests on


def test_rollback_restores_the_old_file_and_a_running_daemon_decides_with_it(
    tmp_path: Path, good_data: Path, shuffled_data: Path
) -> None:
    models = tmp_path / "models"
    out = models / "quality.safetensors"
    assert train_cli("quality", good_data, out, *FAST) == 0
    first = out.read_bytes()
    first_id = read_checkpoint(out)[1].id
    assert train_cli("quality", shuffled_data, out, *FAST, "--force") == 0
    second_id = read_checkpoint(out)[1].id

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = write_config(tmp_path, out, None, quality_threshold=0.5)
    journal = tmp_path / "journal.sqlite3"
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="INFO", format="{message}")
    try:
        with daemon_thread(config):
            drawn_files(inbox, 2, prefix="before")
            wait_decided(journal, 2)
            # the installed command, in its own process, as a user would run it beside the daemon
            done = subprocess.run(
                [sys.executable, "-m", "gensift.daemon.cli", "models", "rollback", "quality",
                 "-c", str(config)],
                capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert f"rolled back {out}" in done.stdout
            wait_for(lambda: any("now serving" in line for line in lines), what="the reload")
            time.sleep(0.1)
            drawn_files(inbox, 2, prefix="after", seed=1)
            wait_decided(journal, 4)
    finally:
        logger.remove(sink)

    assert out.read_bytes() == first
    used = [e.checkpoints["quality"] for e in decisions(journal)]
    assert used == [second_id, second_id, first_id, first_id]
    # the rolled-back file is itself kept, so the rollback can be undone
    kept = {read_checkpoint(p)[1].id for p in versions_dir(out).glob("*.safetensors")}
    assert kept == {first_id, second_id}
    assert main(["models", "rollback", "quality", second_id[:8], "--checkpoint", str(out)]) == 0
    assert read_checkpoint(out)[1].id == second_id


def test_rollback_with_nothing_to_roll_back_to_is_a_clear_error(
    live: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["models", "rollback", "quality", "--checkpoint", str(live)]) == 2
    assert "no earlier version to roll back to" in capsys.readouterr().err
    assert main(["models", "rollback", "quality", "nope", "--checkpoint", str(live)]) == 2
