from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import make_dataset
from PIL import Image

from gensift.daemon.demo.samples import TEXTURES, texture, write_class_folders
from gensift.models.data import (
    DatasetError,
    class_name_problem,
    class_weights,
    data_warnings,
    group_split,
    scan_folder,
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
    (tmp_path / "_misc").mkdir()
    with pytest.raises(DatasetError, match="_misc"):
        scan_folder(tmp_path)


def test_scan_leaves_out_gensifts_own_folders_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_dataset(tmp_path, {"keep": 2, "reject": 2})
    for folder in ("_rejected", "_review"):  # as in a sorted output root
        make_dataset(tmp_path / folder, {"keep": 1})
    scan = scan_folder(tmp_path)
    assert scan.classes == ["keep", "reject"] and len(scan.samples) == 4
    err = capsys.readouterr().err
    assert f"{tmp_path / '_rejected'}: left out" in err and f"{tmp_path / '_review'}:" in err


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


def _textures(root: Path, per_class: int, seed: int = 0) -> Path:
    return write_class_folders(root, TEXTURES, per_class, texture, seed=seed, size=48)


def test_warnings_before_training_name_the_fix(tmp_path: Path) -> None:
    data = write_class_folders(tmp_path, ("dots", "stripes"), 40, texture, size=48)
    write_class_folders(tmp_path, ("checks",), 3, texture, seed=1, size=48)
    duplicate = (data / "dots" / "dots_000.png").read_bytes()
    (data / "stripes" / "copied.png").write_bytes(duplicate)

    warnings = "\n".join(data_warnings(scan_folder(data), 64, from_scratch=True))

    assert "fewer than 30 images in checks (3)" in warnings and "--freeze-backbone" in warnings
    assert "imbalanced beyond 10:1" in warnings
    assert "1 file(s) are in more than one class (dots and stripes)" in warnings
    assert "smaller than --image-size 64 (the smallest 48x48)" in warnings
    assert "from scratch (--weights none) on 84 images" in warnings
    quiet = data_warnings(scan_folder(_textures(tmp_path / "ok", 30)), 48, from_scratch=False)
    assert quiet == []


def test_split_is_stratified_seeded_and_has_three_disjoint_parts(tmp_path: Path) -> None:
    scan = scan_folder(_textures(tmp_path, 40))

    split = group_split(scan, 0.2, seed=7)

    parts = (split.train, split.selection, split.calibration)
    for part, share in zip(parts, (32, 4, 4), strict=True):
        assert Counter(scan.classes[s.label] for s in part) == dict.fromkeys(TEXTURES, share)
    paths = [{s.path for s in part} for part in parts]
    assert sum(map(len, paths)) == 120 == len(set().union(*paths))
    assert split.groups == 120
    assert group_split(scan, 0.2, seed=7) == split
    assert group_split(scan, 0.2, seed=8).calibration != split.calibration


def test_a_group_of_variants_never_straddles_the_split(tmp_path: Path) -> None:
    data = _textures(tmp_path, 30)
    # six variants of one picture (upscaled, recompressed, re-saved): near-duplicates
    original = Image.open(data / "dots" / "dots_000.png")
    for i in range(5):
        variant = original.resize((96 + 16 * i, 96 + 16 * i))
        variant.save(data / "dots" / f"variant_{i}.jpg" if i % 2 else data / "dots" / f"v{i}.png")
    variants = {p for p in (data / "dots").iterdir() if p.name.startswith("v")}
    variants.add(data / "dots" / "dots_000.png")
    scan = scan_folder(data)
    for seed in range(12):
        split = group_split(scan, 0.3, seed)
        sides = [
            bool(variants & {s.path for s in part})
            for part in (split.train, split.selection, split.calibration)
        ]
        assert sum(sides) == 1, f"seed {seed}: the variants are on {sides.count(True)} sides"
        assert split.groups == 90


def test_split_needs_three_distinct_pictures_per_class(tmp_path: Path) -> None:
    data = _textures(tmp_path, 5)
    for extra in ("a", "b", "c"):  # one picture saved four times is still one picture
        (data / "dots" / f"{extra}.png").write_bytes((data / "dots" / "dots_000.png").read_bytes())
    for name in ("dots_001", "dots_002", "dots_003"):
        (data / "dots" / f"{name}.png").unlink()
    with pytest.raises(DatasetError, match="2 group"):
        group_split(scan_folder(data), 0.2, seed=0)


def test_class_weights_balance_the_loss(tmp_path: Path) -> None:
    make_dataset(tmp_path, {"keep": 30, "reject": 10})
    scan = scan_folder(tmp_path)
    w = class_weights(scan.samples, 2)
    # Each class contributes equally: weight x count is the same.
    assert float(w[0] * 30) == pytest.approx(float(w[1] * 10))
