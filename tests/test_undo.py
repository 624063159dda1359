"""``gensift undo`` is exact: each journal row goes back to its own source, never over a file,
and every file it could not restore is named, with exit code 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import draw
from sortkit import decisions, sha, tiny_checkpoint, write_config

from gensift.daemon.cli import main
from gensift.daemon.routing.journal import Journal


def _drawn(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    draw("red", np.random.default_rng(seed)).save(path)
    return path


def _config(tmp_path: Path) -> Path:
    # an untrained two-class feature stage at threshold 0.1: every image is moved to a class
    return write_config(tmp_path, None, tiny_checkpoint(tmp_path), feature_threshold=0.1)


def _sort(config: Path, inbox: Path) -> int:
    return main(["sort", str(inbox), "-c", str(config), "--no-progress"])


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_undo_restores_each_row_of_a_reused_name_to_its_own_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # ComfyUI writes ComfyUI_00001_.png again after its counter is reset
    inbox = tmp_path / "inbox"
    config = _config(tmp_path)
    name = inbox / "ComfyUI_00001_.png"
    first = sha(_drawn(name, 1))
    assert _sort(config, inbox) == 0
    second = sha(_drawn(name, 2))
    assert _sort(config, inbox) == 0
    journal = tmp_path / "journal.sqlite3"
    moves = [e for e in decisions(journal) if e.action == "move"]
    assert [e.source for e in moves] == [name, name]
    assert len({e.destination for e in moves}) == 2
    capsys.readouterr()

    assert main(["undo", "--since", "1h", "-c", str(config)]) == 0
    said = capsys.readouterr().out
    assert "restored 2 of 2" in said
    renamed = inbox / "ComfyUI_00001_-1.png"
    assert sha(name) == first  # the first row to the original name
    assert sha(renamed) == second  # the second next to it, nothing overwritten
    assert "restored as ComfyUI_00001_-1.png" in said
    assert _files(tmp_path / "out") == []
    assert [e.state for e in decisions(journal) if e.action == "move"] == ["undone", "undone"]
    with Journal.open_readonly(journal) as j:
        restores = [e for e in j.entries() if e.action == "restore"]
    assert [(e.undoes, e.destination, e.state) for e in restores] == [
        (moves[0].id, name, "done"),
        (moves[1].id, renamed, "done"),
    ]

    # both count as decided: a later sort leaves them where undo put them
    assert _sort(config, inbox) == 0
    assert "sorted 0 file(s)" in capsys.readouterr().out
    assert sha(name) == first and sha(renamed) == second


def test_undo_names_every_file_it_did_not_restore_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox = tmp_path / "inbox"
    config = _config(tmp_path)
    originals = {p: sha(p) for p in (_drawn(inbox / f"gen_{i}.png", i) for i in range(4))}
    assert _sort(config, inbox) == 0
    moved = {e.source: e.destination for e in decisions(tmp_path / "journal.sqlite3")}
    deleted, edited = moved[inbox / "gen_1.png"], moved[inbox / "gen_2.png"]
    assert deleted is not None and edited is not None
    deleted.unlink()  # the user deleted one sorted file
    edited.write_bytes(b"edited since")  # and changed another
    capsys.readouterr()

    assert main(["undo", "--dry-run", "-c", str(config)]) == 1
    planned = capsys.readouterr().out
    assert "would restore 2 of 4" in planned

    assert main(["undo", "-c", str(config)]) == 1
    said = capsys.readouterr().out
    assert "restored 2 of 4" in said
    lines = said.splitlines()
    assert f"not restored: {deleted} -> {inbox / 'gen_1.png'} (no longer at its destination)" in (
        lines
    )
    assert f"not restored: {edited} -> {inbox / 'gen_2.png'} (changed since it was sorted)" in (
        lines
    )
    for kept in ("gen_0.png", "gen_3.png"):
        assert sha(inbox / kept) == originals[inbox / kept]
    assert edited.read_bytes() == b"edited since"
