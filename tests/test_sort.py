"""``gensift sort``, ``undo`` and ``history`` end to end, on drawn and broken files."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import draw
from PIL import Image
from sortkit import (
    BROKEN,
    check_ledger,
    decisions,
    fill_inbox,
    sha,
    tiny_checkpoint,
    write_config,
)

from gensift.daemon.cli import main
from gensift.daemon.runtime.decide import Policy, decide
from gensift.models.backbones import build_classifier
from gensift.models.checkpoint import read_checkpoint, save_checkpoint


def _sort(config: Path, *args: str) -> int:
    return main(["sort", *args, "-c", str(config), "--no-progress"])


def _snapshot(*roots: Path) -> dict[Path, str]:
    return {p: sha(p) for root in roots if root.exists() for p in root.rglob("*") if p.is_file()}


def _plan(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _mixed_thresholds(tmp_path: Path, pair: tuple[Path, Path]) -> tuple[float, float]:
    """Thresholds at the median of what the models say on this inbox, so a run both acts
    and leaves files alone whatever the tiny models learned."""
    config = write_config(tmp_path, *pair, quality_threshold=0.5, feature_threshold=0.5)
    plan = tmp_path / "p.csv"
    assert _sort(config, str(tmp_path / "inbox"), "--dry-run", "--plan", str(plan)) == 0
    rows = _plan(plan)
    rejects = sorted(json.loads(r["quality"])["reject"] for r in rows if r["quality"])
    tops = sorted(max(json.loads(r["feature"]).values()) for r in rows if r["feature"])
    return rejects[len(rejects) // 2], tops[len(tops) // 2]


def test_sort_puts_every_file_in_exactly_one_place_by_the_rules(
    tmp_path: Path, frozen_pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    inbox = tmp_path / "inbox"
    originals = fill_inbox(inbox)
    (inbox / "notes.txt").write_text("not an image pattern")
    (inbox / "sub").mkdir()
    (inbox / "sub" / "deeper.png").write_bytes((inbox / "keep_001.png").read_bytes())
    q_threshold, f_threshold = _mixed_thresholds(tmp_path, frozen_pair)
    # reject_action = delete: the strictest test of "nothing below a threshold is deleted"
    config = write_config(
        tmp_path,
        *frozen_pair,
        quality_threshold=q_threshold,
        feature_threshold=f_threshold,
        reject_action="delete",
    )
    capsys.readouterr()

    assert _sort(config, str(inbox)) == 0
    summary = capsys.readouterr().out
    assert f"sorted {len(originals)} file(s)" in summary

    out = tmp_path / "out"
    final = check_ledger(originals, tmp_path / "journal.sqlite3", out)
    policy = Policy("delete", "leave", frozenset({"reject"}), q_threshold, f_threshold)
    actions = {e.action for e in final.values()}
    assert {"move", "leave", "delete", "quarantine"} <= actions, actions
    for path, e in final.items():
        if path.name in BROKEN:
            assert e.reason == BROKEN[path.name], (path.name, e.note)
            assert e.action == ("quarantine" if e.reason == "corrupt" else "delete")
            assert e.note
            continue
        redo = decide(policy, e.probabilities.get("quality"), e.probabilities.get("feature"))
        assert (e.action, e.reason, e.label) == (redo.action, redo.reason, redo.label)
        assert set(e.checkpoints) == set(e.probabilities)
        if e.action == "delete":  # only a reject class at or above the quality threshold
            assert e.label == "reject" and e.probabilities["quality"]["reject"] >= q_threshold
        if e.action == "move":
            assert e.destination == out / e.label / path.name
            assert max(e.probabilities["feature"].values()) >= f_threshold
        if e.reason == "uncertain":  # below the thresholds: untouched, where it was
            assert e.action == "leave" and path.exists()
            assert max(e.probabilities["feature"].values()) < f_threshold
    assert (inbox / "notes.txt").exists() and (inbox / "sub" / "deeper.png").exists()

    # a second run finds everything decided and changes nothing
    before = _snapshot(inbox, out)
    assert _sort(config, str(inbox)) == 0
    assert "sorted 0 file(s)" in capsys.readouterr().out
    assert _snapshot(inbox, out) == before


def test_dry_run_touches_nothing_and_plans_what_the_real_run_does(
    tmp_path: Path, frozen_pair: tuple[Path, Path]
) -> None:
    inbox = tmp_path / "inbox"
    originals = fill_inbox(inbox)
    out = tmp_path / "out"
    # names already taken at the destinations: the plan must show the renames
    taken = {out / "_rejected" / "zero.png", out / "_rejected" / "bomb.png"}
    for path in taken:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"someone else's file")
    config = write_config(tmp_path, *frozen_pair, quality_threshold=0.5, feature_threshold=0.4)
    before = _snapshot(tmp_path)

    assert _sort(config, str(inbox), "--dry-run", "--plan", str(tmp_path / "plan.csv")) == 0
    plan = _plan(tmp_path / "plan.csv")
    before[tmp_path / "plan.csv"] = sha(tmp_path / "plan.csv")
    assert _snapshot(tmp_path) == before, "a dry run changed files"
    assert not (tmp_path / "journal.sqlite3").exists()
    assert len(plan) == len(originals) and {r["state"] for r in plan} == {"planned"}

    assert _sort(config, str(inbox), "--plan", str(tmp_path / "done.csv")) == 0
    done = _plan(tmp_path / "done.csv")
    keys = ("source", "action", "reason", "class", "destination")
    assert [tuple(r[k] for k in keys) for r in plan] == [tuple(r[k] for k in keys) for r in done]
    by_name = {Path(r["source"]).name: r for r in done}
    assert by_name["zero.png"]["destination"] == str(out / "_rejected" / "zero-1.png")
    for path in taken:  # never overwritten
        assert path.read_bytes() == b"someone else's file"
    check_ledger(originals, tmp_path / "journal.sqlite3", out, frozenset(taken))


def test_on_conflict_skip_leaves_the_file_and_does_not_retry(
    tmp_path: Path, frozen_pair: tuple[Path, Path]
) -> None:
    inbox = tmp_path / "inbox"
    originals = fill_inbox(inbox)
    taken = tmp_path / "out" / "_rejected" / "text.png"
    taken.parent.mkdir(parents=True)
    taken.write_bytes(b"mine")
    config = write_config(tmp_path, *frozen_pair, on_conflict="skip")
    assert _sort(config, str(inbox)) == 0
    final = check_ledger(originals, tmp_path / "journal.sqlite3", tmp_path / "out", {taken})
    skipped = final[(inbox / "text.png").absolute()]
    assert skipped.state == "skipped" and "already exists" in skipped.note
    assert taken.read_bytes() == b"mine" and (inbox / "text.png").exists()
    assert _sort(config, str(inbox)) == 0
    assert len(decisions(tmp_path / "journal.sqlite3")) == len(originals)


def test_undo_restores_every_moved_file_byte_identical(
    tmp_path: Path, frozen_pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    inbox = tmp_path / "inbox"
    originals = fill_inbox(inbox)
    config = write_config(tmp_path, *frozen_pair, quality_threshold=0.5, feature_threshold=0.4)
    assert _sort(config, str(inbox)) == 0
    moved = [p for p in originals if not p.exists()]
    assert moved

    assert main(["undo", "--dry-run", "-c", str(config)]) == 0
    assert f"would restore {len(moved)} of {len(moved)}" in capsys.readouterr().out
    assert all(not p.exists() for p in moved)

    assert main(["undo", "-c", str(config)]) == 0
    assert f"restored {len(moved)} of {len(moved)}" in capsys.readouterr().out
    for path, digest in originals.items():
        assert sha(path) == digest
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    rows = decisions(tmp_path / "journal.sqlite3")
    assert sum(e.state == "undone" for e in rows) == len(moved)

    # undone files count as decided: sorting again does not move them straight back
    assert _sort(config, str(inbox)) == 0
    assert all(p.exists() for p in originals)
    # nothing left to undo in that window
    assert main(["undo", "--since", "1h", "-c", str(config)]) == 0
    assert "restored 0 of 0" in capsys.readouterr().out


def test_history_json_lines_explain_each_decision(
    tmp_path: Path, frozen_pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    inbox = tmp_path / "inbox"
    fill_inbox(inbox)
    config = write_config(tmp_path, *frozen_pair)
    assert _sort(config, str(inbox)) == 0
    capsys.readouterr()
    assert main(["history", "--limit", "5", "--json", "-c", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5
    ids = {read_checkpoint(p)[1].id for p in frozen_pair}
    for line in lines:
        row = json.loads(line)
        for key in ("source", "destination", "action", "reason", "probabilities", "checkpoints"):
            assert key in row
        assert row["time"].startswith("20")
        assert set(row["checkpoints"].values()) <= ids
    assert main(["history", "-c", str(config)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 20


def test_a_class_that_would_escape_the_output_root_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evil = tmp_path / "evil.safetensors"
    model = build_classifier("resnet18", 2, "none")
    _, template = read_checkpoint(tiny_checkpoint(tmp_path))
    save_checkpoint(evil, model.state_dict(), replace(template, classes=["../../etc", "ok"]))
    inbox = tmp_path / "inbox"
    originals = fill_inbox(inbox, broken=False)
    config = write_config(tmp_path, None, evil)
    assert _sort(config, str(inbox)) == 2
    assert "../../etc" in capsys.readouterr().err
    assert all(sha(p) == d for p, d in originals.items())


def test_configuration_mistakes_are_exit_2_with_the_key(
    tmp_path: Path, frozen_pair: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    inbox = tmp_path / "inbox"
    fill_inbox(inbox, broken=False)
    missing = write_config(tmp_path, tmp_path / "nope.safetensors", None)
    assert _sort(missing, str(inbox)) == 2
    assert "stages.quality.checkpoint" in capsys.readouterr().err
    # a quality checkpoint trained as a feature stage is refused
    swapped = write_config(tmp_path, frozen_pair[1], None)
    assert _sort(swapped, str(inbox)) == 2
    assert "feature-stage checkpoint" in capsys.readouterr().err
    assert _sort(write_config(tmp_path, *frozen_pair), str(tmp_path / "absent")) == 2


def test_16bit_grey_pngs_are_sorted_like_their_8bit_twins_not_quarantined_as_blank(
    tmp_path: Path, frozen_pair: tuple[Path, Path]
) -> None:
    # twelve 16-bit renders (mode I;16, full range) beside their 8-bit twins
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rng = np.random.default_rng(16)
    kinds = ["keep", "reject", "red", "blue", "stripes", "keep"] * 2
    for i, kind in enumerate(kinds):
        grey = np.asarray(draw(kind, rng).convert("L"))
        Image.fromarray(grey).save(inbox / f"{kind}_{i:02d}_8bit.png")
        Image.fromarray(grey.astype(np.uint16) * 257).save(inbox / f"{kind}_{i:02d}_16bit.png")
    originals = {p.absolute(): sha(p) for p in sorted(inbox.iterdir())}
    config = write_config(tmp_path, *frozen_pair)

    assert _sort(config, str(inbox)) == 0

    final = check_ledger(originals, tmp_path / "journal.sqlite3", tmp_path / "out")
    by_name = {path.name: e for path, e in final.items()}
    sixteen = [name for name in by_name if name.endswith("_16bit.png")]
    assert len(sixteen) == 12
    assert not [n for n in sixteen if by_name[n].reason == "blank"], "16-bit PNGs judged blank"
    for name in sixteen:
        e, twin = by_name[name], by_name[name.replace("_16bit", "_8bit")]
        assert (e.action, e.reason, e.label) == (twin.action, twin.reason, twin.label), name
        assert e.probabilities.keys() == twin.probabilities.keys()
        for stage, probs in twin.probabilities.items():
            for label, p in probs.items():
                assert abs(e.probabilities[stage][label] - p) < 1e-3, (name, stage, label)
