from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import make_dataset

from gensift.models.data import (
    DatasetError,
    class_name_problem,
    class_weights,
    scan_folder,
    stratified_split,
)


def test_scan_finds_classes_and_images_of_every_supported_format(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"keep": 3}, suffix=".png")
    make_dataset(tmp_path, {"keep": 2}, seed=1, suffix=".jpg")
    make_dataset(tmp_path, {"reject": 2}, suffix=".webp")
    make_dataset(tmp_path, {"reject": 1}, seed=2, suffix=".JPEG")
    (tmp_path / "keep" / "notes.txt").write_text("not an image")
    (tmp_path / ".thumbnails").mkdir()  # hidden folders are not classes

    scan = scan_folder(tmp_path)

    assert scan.classes == ["keep", "reject"]
    assert scan.counts() == {"keep": 5, "reject": 3}
    assert scan.skipped == []


def test_corrupt_truncated_and_fake_images_are_skipped_and_listed(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"keep": 4, "reject": 4})
    good = (tmp_path / "keep" / "keep_000.png").read_bytes()
    (tmp_path / "keep" / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "reject" / "text.jpg").write_text("this is not a jpeg")
    (tmp_path / "reject" / "empty.webp").write_bytes(b"")

    scan = scan_folder(tmp_path)

    assert scan.counts() == {"keep": 4, "reject": 4}
    skipped = {p.name: why for p, why in scan.skipped}
    assert set(skipped) == {"truncated.png", "text.jpg", "empty.webp"}
    assert all(skipped.values())  # each comes with a reason


@pytest.mark.parametrize(
    "name",
    [
        "",
        " ",
        "..",
        ".",
        "a/b",
        "a\\b",
        "_rejected",
        "_review",
        ".hidden",
        "CON",
        "nul.txt",
        "COM1",
        "trailing.",
        " lead",
        "a:b",
        "x" * 101,
        "tab\there",
    ],
)
def test_unsafe_class_names_are_refused(name: str) -> None:
    assert class_name_problem(name) is not None


@pytest.mark.parametrize("name", ["A", "keep", "reject", "portrait 2", "cats-and_dogs", "Ünïcode"])
def test_ordinary_class_names_are_accepted(name: str) -> None:
    assert class_name_problem(name) is None


def test_scan_refuses_an_unsafe_class_folder(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"keep": 2, "reject": 2})
    (tmp_path / "_rejected").mkdir()
    with pytest.raises(DatasetError, match="_rejected"):
        scan_folder(tmp_path)


def test_scan_needs_two_classes_and_some_images(tmp_path: Path) -> None:
    make_dataset(tmp_path / "one", {"keep": 3})
    with pytest.raises(DatasetError, match="at least 2"):
        scan_folder(tmp_path / "one")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "b").mkdir()
    with pytest.raises(DatasetError, match="no readable images"):
        scan_folder(tmp_path / "empty")
    with pytest.raises(DatasetError, match="not a folder"):
        scan_folder(tmp_path / "missing")


def test_scan_with_fixed_classes_refuses_unknown_folders(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"keep": 2, "stripes": 2})
    with pytest.raises(DatasetError, match="stripes"):
        scan_folder(tmp_path, ["keep", "reject"])
    make_dataset(tmp_path / "sub", {"reject": 2})
    assert scan_folder(tmp_path / "sub", ["keep", "reject"]).counts() == {"keep": 0, "reject": 2}


def test_strong_imbalance_is_warned_about(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_dataset(tmp_path, {"keep": 20, "reject": 2})
    scan_folder(tmp_path)
    assert "imbalanced" in capsys.readouterr().err


def test_stratified_split_keeps_each_class_share_and_is_seeded(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"keep": 30, "reject": 10, "red": 5})
    scan = scan_folder(tmp_path)

    train, val = stratified_split(scan, 0.2, seed=7)

    val_counts = Counter(scan.classes[s.label] for s in val)
    assert val_counts == {"keep": 6, "reject": 2, "red": 1}
    assert len(train) + len(val) == 45
    assert not {s.path for s in train} & {s.path for s in val}
    assert stratified_split(scan, 0.2, seed=7) == (train, val)
    assert stratified_split(scan, 0.2, seed=8)[1] != val


def test_split_needs_two_images_per_class(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"keep": 5, "reject": 1})
    with pytest.raises(DatasetError, match="at least 2"):
        stratified_split(scan_folder(tmp_path), 0.2, seed=0)


def test_class_weights_balance_the_loss(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"keep": 30, "reject": 10})
    scan = scan_folder(tmp_path)
    w = class_weights(scan.samples, 2)
    # Each class contributes equally: weight x count is the same.
    assert float(w[0] * 30) == pytest.approx(float(w[1] * 10))
