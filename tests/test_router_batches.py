"""A batch through the router: its journal rows in two commits, every file faring as it would
alone, and repair of a batch cut between its two commits.

Real files in ``tmp_path`` and a real SQLite journal, read back through a second connection
(what a crash would leave is what another connection sees). The one fake is a read-only
folder for root, who ignores permissions: there the folder is made immutable.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gensift.daemon.config import OutputSettings
from gensift.daemon.routing import router as router_module
from gensift.daemon.routing.fileops import temp_path, transfer
from gensift.daemon.routing.journal import Journal
from gensift.daemon.routing.records import Decision, FileInfo, FileState
from gensift.daemon.routing.recovery import repair
from gensift.daemon.routing.router import Job, Router
from gensift.models.fsutil import TEMP_PREFIX

RUN = "run-1"
CHECKPOINTS = {"feature": "bbbbbbbbbbbb"}
RED = Decision("move", "class", "red", 0.93)
BLUE = Decision("move", "class", "blue", 0.91)


def _file(path: Path, text: str | None = None) -> FileInfo:
    """A small file at ``path``, and what the decoder would have recorded about it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (text or f"bytes of {path}").encode()
    path.write_bytes(data)
    return FileInfo(path, len(data), path.stat().st_mtime_ns, hashlib.sha256(data).hexdigest())


def _committed(path: Path) -> list[tuple[Path, str]]:
    """(source, state) of every row another connection sees: what is on disk."""
    with Journal.open_readonly(path) as reader:
        return [(e.source, e.state) for e in reader.entries()]


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal.open(tmp_path / "j.sqlite3") as opened:
        yield opened


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


def _router(journal: Journal, out: Path, **kwargs: object) -> Router:
    settings = {k: kwargs.pop(k) for k in ("on_conflict", "sidecars") if k in kwargs}
    return Router(OutputSettings(root=out, **settings), journal, RUN, **kwargs)  # type: ignore[arg-type]


# --- the journal's transaction ----------------------------------------------------------------


def test_rows_written_in_a_transaction_are_committed_together(
    journal: Journal, tmp_path: Path
) -> None:
    assert journal.path is not None
    a, b = _file(tmp_path / "in" / "a.png"), _file(tmp_path / "in" / "b.png")
    with journal.transaction():
        first = journal.begin(RUN, a, RED, tmp_path / "out" / "a.png", CHECKPOINTS)
        journal.begin(RUN, b, RED, tmp_path / "out" / "b.png", CHECKPOINTS)
        journal.finish(first, FileState.DONE)  # inside: part of the same commit
        assert _committed(journal.path) == []
    assert _committed(journal.path) == [(a.path, "done"), (b.path, "intent")]


def test_an_error_in_a_transaction_commits_none_of_it(journal: Journal, tmp_path: Path) -> None:
    assert journal.path is not None
    a = _file(tmp_path / "in" / "a.png")
    with pytest.raises(RuntimeError), journal.transaction():
        journal.begin(RUN, a, RED, tmp_path / "out" / "a.png", CHECKPOINTS)
        raise RuntimeError("the disk is full, say")
    assert _committed(journal.path) == []
    journal.begin(RUN, a, RED, tmp_path / "out" / "a.png", CHECKPOINTS)  # still usable
    assert _committed(journal.path) == [(a.path, "intent")]


def test_a_restore_finished_in_a_transaction_marks_the_row_it_undoes(
    journal: Journal, tmp_path: Path
) -> None:
    a = _file(tmp_path / "out" / "red" / "a.png")
    moved = journal.begin(RUN, a, RED, a.path, CHECKPOINTS, state=FileState.DONE)
    with journal.transaction():
        back = journal.begin(
            "undo-1", a, RED, tmp_path / "in" / "a.png", {}, action="restore", undoes=moved
        )
        journal.finish(back, FileState.DONE)
    assert journal.get(moved).state == "undone"
    assert journal.get(back).state == "done"


# --- Router.apply_many ------------------------------------------------------------------------


def test_a_batch_is_carried_out_with_its_outcomes_in_the_order_given(
    journal: Journal, tmp_path: Path, out: Path
) -> None:
    inbox = tmp_path / "in"
    jobs = [
        Job(_file(inbox / "1.png"), RED, CHECKPOINTS),
        Job(_file(inbox / "2.png"), Decision("leave", "uncertain", "red", 0.5), CHECKPOINTS),
        Job(_file(inbox / "3.png"), Decision("delete", "reject", "reject", 0.99), CHECKPOINTS),
        Job(_file(inbox / "4.png"), Decision("quarantine", "corrupt"), {}),
        Job(_file(inbox / "5.png"), Decision("review", "uncertain", "blue", 0.6), CHECKPOINTS),
        Job(_file(inbox / "6.png"), BLUE, CHECKPOINTS),
    ]
    outcomes = _router(journal, out).apply_many(jobs)
    assert [o.file for o in outcomes] == [job.file for job in jobs]
    assert [o.state for o in outcomes] == ["done"] * 6
    assert [o.destination for o in outcomes] == [
        out / "red" / "1.png",
        None,
        None,
        out / "_rejected" / "4.png",
        out / "_review" / "5.png",
        out / "blue" / "6.png",
    ]
    assert sorted(p.name for p in inbox.iterdir()) == ["2.png"]  # only the one left alone
    rows = list(journal.entries())
    assert [(r.source, r.action, r.state) for r in rows] == [
        (job.file.path, job.decision.action, "done") for job in jobs
    ]


def test_every_intent_is_on_disk_before_the_first_move_and_no_completion_before_the_last(
    journal: Journal, tmp_path: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert journal.path is not None
    inbox = tmp_path / "in"
    moving = [_file(inbox / f"{i}.png") for i in range(4)]
    left = _file(inbox / "left.png")
    jobs = [Job(info, RED, CHECKPOINTS) for info in moving[:2]]
    jobs.append(Job(left, Decision("leave", "uncertain", "red", 0.5), CHECKPOINTS))
    jobs += [Job(info, BLUE, CHECKPOINTS) for info in moving[2:]]
    seen: list[list[tuple[Path, str]]] = []

    def looking(src: Path, dst: Path, tag: str, **kwargs: object) -> None:
        seen.append(_committed(journal.path))  # type: ignore[arg-type]
        transfer(src, dst, tag, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(router_module, "transfer", looking)
    outcomes = _router(journal, out).apply_many(jobs)
    assert [o.state for o in outcomes] == ["done"] * 5
    # at every move, the whole batch's rows were committed and none of its moves recorded
    expected = [(job.file.path, "done" if job.file == left else "intent") for job in jobs]
    assert seen == [expected] * len(moving)
    assert _committed(journal.path) == [(job.file.path, "done") for job in jobs]


@pytest.mark.parametrize("on_conflict", ["rename", "skip"])
def test_two_files_of_one_batch_with_one_name_never_get_the_same_destination(
    journal: Journal, tmp_path: Path, out: Path, on_conflict: str
) -> None:
    first = _file(tmp_path / "a" / "gen.png", "first")
    second = _file(tmp_path / "b" / "gen.png", "second")
    outcomes = _router(journal, out, on_conflict=on_conflict).apply_many(
        [Job(first, RED, CHECKPOINTS), Job(second, RED, CHECKPOINTS)]
    )
    assert (out / "red" / "gen.png").read_text() == "first"
    assert outcomes[0].destination == out / "red" / "gen.png"
    if on_conflict == "rename":
        assert [o.state for o in outcomes] == ["done", "done"]
        assert outcomes[1].destination == out / "red" / "gen-1.png"
        assert (out / "red" / "gen-1.png").read_text() == "second"
        assert not second.path.exists()
    else:
        assert [o.state for o in outcomes] == ["done", "skipped"]
        assert "already exists" in outcomes[1].note
        assert second.path.read_text() == "second"
        assert sorted(p.name for p in (out / "red").iterdir()) == ["gen.png"]
    assert [r.state for r in journal.entries()] == ["done", outcomes[1].state]


def test_a_stale_file_in_the_middle_of_a_batch_does_not_stop_the_others(
    journal: Journal, tmp_path: Path, out: Path
) -> None:
    infos = [_file(tmp_path / "in" / f"{i}.png") for i in range(3)]
    infos[1].path.write_text("rewritten since it was read, and longer")
    outcomes = _router(journal, out).apply_many([Job(i, RED, CHECKPOINTS) for i in infos])
    assert [o.state for o in outcomes] == ["done", "stale", "done"]
    assert infos[1].path.read_text() == "rewritten since it was read, and longer"
    assert sorted(p.name for p in (out / "red").iterdir()) == ["0.png", "2.png"]
    assert [r.source for r in journal.entries()] == [infos[0].path, infos[2].path]


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """``folder`` refuses new names: read-only, and immutable for root (who ignores modes)."""
    folder.mkdir(parents=True)
    folder.chmod(0o555)
    immutable = os.geteuid() == 0
    if immutable:
        chattr = shutil.which("chattr")
        made = chattr and subprocess.run([chattr, "+i", str(folder)], check=False).returncode
        if made != 0:
            folder.chmod(0o755)
            pytest.skip("running as root, and chattr +i cannot make a folder read-only here")
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_a_failed_move_in_the_middle_of_a_batch_fails_alone(
    journal: Journal, tmp_path: Path, out: Path
) -> None:
    infos = [_file(tmp_path / "in" / f"{i}.png") for i in range(3)]
    jobs = [Job(infos[0], RED, CHECKPOINTS), Job(infos[1], BLUE, CHECKPOINTS)]
    jobs.append(Job(infos[2], RED, CHECKPOINTS))
    with _read_only(out / "blue"):
        outcomes = _router(journal, out).apply_many(jobs)
        assert list((out / "blue").iterdir()) == []
    assert [o.state for o in outcomes] == ["done", "failed", "done"]
    assert "move failed" in outcomes[1].note
    assert infos[1].path.exists()
    assert sorted(p.name for p in (out / "red").iterdir()) == ["0.png", "2.png"]
    assert [r.state for r in journal.entries()] == ["done", "failed", "done"]


def test_a_name_taken_during_the_batch_is_tried_again_under_another(
    journal: Journal, tmp_path: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    infos = [_file(tmp_path / "in" / f"{i}.png") for i in range(3)]
    taken = out / "red" / "1.png"

    def racing(src: Path, dst: Path, tag: str, **kwargs: object) -> None:
        if dst == taken and not taken.exists():  # another program takes the name first
            taken.write_text("not ours")
        transfer(src, dst, tag, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(router_module, "transfer", racing)
    outcomes = _router(journal, out).apply_many([Job(i, RED, CHECKPOINTS) for i in infos])
    assert [o.state for o in outcomes] == ["done"] * 3
    assert [o.file for o in outcomes] == infos
    assert outcomes[1].destination == out / "red" / "1-1.png"
    assert taken.read_text() == "not ours"
    rows = [(r.source.name, r.state) for r in journal.entries()]
    assert rows == [("0.png", "done"), ("1.png", "abandoned"), ("2.png", "done"), ("1.png", "done")]


def test_a_dry_run_batch_writes_nothing_and_plans_distinct_names(
    journal: Journal, tmp_path: Path, out: Path
) -> None:
    first = _file(tmp_path / "a" / "gen.png")
    second = _file(tmp_path / "b" / "gen.png")
    outcomes = _router(journal, out, dry_run=True).apply_many(
        [Job(first, RED, CHECKPOINTS), Job(second, RED, CHECKPOINTS)]
    )
    assert [o.state for o in outcomes] == ["planned", "planned"]
    assert [o.destination for o in outcomes] == [out / "red" / "gen.png", out / "red" / "gen-1.png"]
    assert first.path.exists() and second.path.exists()
    assert not out.exists()
    assert list(journal.entries()) == []


def test_sidecars_are_written_once_a_batch_is_recorded(
    journal: Journal, tmp_path: Path, out: Path
) -> None:
    infos = [_file(tmp_path / "in" / f"{i}.png") for i in range(2)]
    jobs = [Job(infos[0], RED, CHECKPOINTS), Job(infos[1], Decision("leave", "keep"), {})]
    _router(journal, out, sidecars="xmp").apply_many(jobs)
    assert "gensift/red" in (out / "red" / "0.png.xmp").read_text()
    assert not (tmp_path / "in" / "1.png.xmp").exists()  # left alone: no sidecar


class _Stopper:
    """The daemon's file-operation lock, as a stopper sees it: whenever the router lets go,
    what the journal has on disk is noted."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pending_at_release: list[int] = []

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        states = [state for _, state in _committed(self.path)]
        self.pending_at_release.append(states.count("intent"))


def test_a_stopper_that_takes_the_lock_between_rounds_finds_the_journal_settled(
    journal: Journal, tmp_path: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert journal.path is not None
    infos = [_file(tmp_path / "in" / f"{i}.png") for i in range(3)]
    taken = out / "red" / "1.png"

    def racing(src: Path, dst: Path, tag: str, **kwargs: object) -> None:
        if dst == taken and not taken.exists():
            taken.write_text("not ours")
        transfer(src, dst, tag, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(router_module, "transfer", racing)
    stopper = _Stopper(journal.path)
    router = _router(journal, out, guard=stopper)
    outcomes = router.apply_many([Job(i, RED, CHECKPOINTS) for i in infos])
    assert [o.state for o in outcomes] == ["done"] * 3
    assert stopper.pending_at_release == [0, 0]  # two rounds (one retry), each settled


# --- repair of a batch cut between its two commits --------------------------------------------


def test_repair_settles_a_batch_cut_between_its_intents_and_its_completions(
    journal: Journal, tmp_path: Path, out: Path
) -> None:
    """The rows of one batch, committed together, and the files as a crash left them part-way
    through its operations: three files named ``gen.png`` among them."""
    inbox = tmp_path / "in"
    names = ["a/gen.png", "b/gen.png", "c/gen.png", "x.png", "y.png", "d.png", "e.png"]
    infos = {name: _file(inbox / name, f"content of {name}") for name in names}
    targets = {
        "a/gen.png": out / "red" / "gen.png",
        "b/gen.png": out / "red" / "gen-1.png",
        "c/gen.png": out / "red" / "gen-2.png",
        "x.png": out / "blue" / "x.png",
        "y.png": out / "blue" / "y.png",
    }
    remove = Decision("delete", "reject", "reject", 0.99)
    ids: dict[str, int] = {}
    with journal.transaction():
        for name, info in infos.items():
            dst = targets.get(name)
            ids[name] = journal.begin(RUN, info, RED if dst else remove, dst, CHECKPOINTS)
    for folder in ("red", "blue"):
        (out / folder).mkdir(parents=True)
    transfer(infos["a/gen.png"].path, targets["a/gen.png"], str(ids["a/gen.png"]))  # moved
    os.link(infos["b/gen.png"].path, targets["b/gen.png"])  # linked, old name not yet gone
    # c/gen.png: not started
    staged = temp_path(targets["x.png"], str(ids["x.png"]))  # a copy half made
    staged.write_text("content of")
    shutil.copy2(infos["y.png"].path, targets["y.png"])  # copied, source not yet removed
    infos["d.png"].path.unlink()  # deleted
    # e.png: not deleted yet

    assert repair(journal, out) == len(names)
    states = {name: journal.get(entry_id).state for name, entry_id in ids.items()}
    assert states == {
        "a/gen.png": "done",
        "b/gen.png": "done",
        "c/gen.png": "abandoned",
        "x.png": "abandoned",
        "y.png": "done",
        "d.png": "done",
        "e.png": "abandoned",
    }
    for name, state in states.items():  # each file in exactly one place, intact
        dst = targets.get(name)
        at_source = infos[name].path.exists()
        if state == "abandoned":
            assert at_source and infos[name].path.read_text() == f"content of {name}"
            assert dst is None or not dst.exists()
        else:
            assert not at_source
            assert dst is None or dst.read_text() == f"content of {name}"
    assert not [p for p in out.rglob("*") if p.name.startswith(TEMP_PREFIX)]
    assert journal.pending() == []
