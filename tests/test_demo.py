"""``gensift demo`` end to end, with smaller settings (the options its --help documents)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tqdm import tqdm

from gensift.daemon.cli import main
from gensift.daemon.demo.run import MARKER

SMALL = ["--examples", "16", "--images", "8", "--epochs", "2", "--image-size", "32"]


def parse_table(text: str) -> list[dict[str, str]]:
    """The closing table's rows, cut at the header's column starts."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("file "))
    header = lines[start]
    names = re.split(r"\s{2,}", header)
    offsets: list[int | None] = []
    for name in names:
        offsets.append(header.index(name, offsets[-1] if offsets else 0))
    offsets.append(None)
    rows = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        rows.append(
            {name: line[offsets[i] : offsets[i + 1]].strip() for i, name in enumerate(names)}
        )
    return rows


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest.mark.timeout(1200)
def test_demo_runs_the_loop_and_its_table_matches_the_disk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # tqdm's monitor thread outlives the bars by design; it is not ours to join
    monkeypatch.setattr(tqdm, "monitor_interval", 0)
    folder = tmp_path / "demo"
    assert main(["demo", "--dir", str(folder), "--device", "cpu", *SMALL]) == 0
    out = capsys.readouterr().out
    print(out)  # shown when the test fails
    rows = parse_table(out)
    folder = folder.resolve()

    assert len(rows) == 8
    # the mistakes the demo corrected afterwards, as a user would on the review page
    corrected = dict(re.findall(r"^  corrected (\S+): \S*/ -> (\S+)$", out, re.MULTILINE))
    for row in rows:
        if row["file"] in corrected:
            row["now at"] = corrected[row["file"]]
    where = {row["file"]: folder / row["now at"] for row in rows}
    for row in rows:
        assert (folder / row["now at"]).is_file(), row
    # every generated file is in exactly the place the table names, and nowhere else
    sorted_files = files_under(folder / "sorted")
    left = files_under(folder / "generator-output")
    assert sorted_files | left == set(where.values())
    assert not sorted_files & left
    for row in rows:
        moved = row["action"] != "leave"
        assert (folder / row["now at"] in sorted_files) == moved, row

    # the rules need no model: the black frame is culled as blank, the crashed write kept
    by_kind = {row["drawn as"]: row for row in rows}
    assert by_kind["black"]["action"] == "quarantine"
    assert by_kind["black"]["reason"] == "blank"
    assert by_kind["truncated"]["reason"] == "corrupt"
    assert by_kind["truncated"]["now at"].startswith("sorted/_rejected/")

    # the counts under the table add up to the rows, and the paths it names exist
    blocks = out[out.index("\nfile ") :].split("\n\n")  # the table, then the counts
    counted = sum(int(line.split()[0]) for line in blocks[1].splitlines())
    assert counted == len(rows)
    assert (folder / "journal.sqlite3").is_file()
    assert (folder / "models" / "quality.report" / "metrics.json").is_file()
    assert (folder / "models" / "feature.report" / "metrics.json").is_file()
    assert f"gensift history -c {folder / 'gensift.toml'}" in out
    assert f"gensift review -c {folder / 'gensift.toml'}" in out
    if any(r for r in corrected):  # the loop: corrections, a retrain, the gate's word
        assert "gensift retrain feature" in out or "a mistake" in out

    # the config it leaves works with the other commands
    assert main(["history", "-c", str(folder / "gensift.toml"), "--limit", "3"]) == 0


def test_demo_refuses_a_folder_it_did_not_make(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "precious.png").write_bytes(b"mine")
    assert main(["demo", "--dir", str(tmp_path), *SMALL]) == 2
    assert "not empty and was not made by gensift demo" in capsys.readouterr().err
    assert (tmp_path / "precious.png").read_bytes() == b"mine"
    assert not (tmp_path / MARKER).exists()
