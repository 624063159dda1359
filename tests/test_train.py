"""``gensift train`` and ``gensift evaluate`` end to end, on images the tests draw."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, make_dataset, train_cli
from PIL import Image

from gensift.daemon.cli import main
from gensift.models.checkpoint import read_checkpoint

PLOTS = {"confusion_matrix.png", "curves.png", "reliability.png", "confident_errors.png"}


def _metrics(report: Path) -> dict:
    return json.loads((report / "metrics.json").read_text())


def test_training_learns_and_writes_checkpoint_and_report(trained_quality: Path) -> None:
    _tensors, meta = read_checkpoint(trained_quality, stage="quality")
    report = trained_quality.with_name("quality.report")
    metrics = _metrics(report)

    # Clearly better than chance (0.5) on held-out images it never chose on.
    assert metrics["val_accuracy"] >= 0.8
    # The epoch kept is the one with the lowest loss on the selection images.
    best = min(h["val_loss"] for h in metrics["history"])
    assert metrics["history"][metrics["best_epoch"] - 1]["val_loss"] == pytest.approx(best)
    assert meta.classes == ["keep", "reject"] == metrics["classes"]
    assert meta.thresholds["target_classes"] == ["reject"]
    assert meta.thresholds["target_precision"] == 0.99
    assert set(metrics["per_class"]) == {"keep", "reject"}
    for row in metrics["per_class"].values():
        assert set(row) >= {"precision", "recall", "f1", "support"}
    cm = metrics["confusion_matrix"]
    # 20 % of 2 x 40 held out: 8 a class, half of them for calibration
    assert sum(map(sum, cm)) == metrics["count"] == 8 == metrics["split"]["calibration"]
    assert metrics["split"]["selection"] == 8 and metrics["split"]["groups"] > 60
    # every precision says how many images it rests on, and its bound
    for row in metrics["thresholds"]["table"]:
        assert {"count", "precision_lower"} <= set(row)
    assert metrics["val_accuracy_interval"]["count"] == 8
    assert metrics["gate"]["passed"] and meta.calibration["split"]["calibration"] == 8
    # 8 calibration images: too few for a temperature or a threshold
    assert meta.temperature == 1.0 and not metrics["calibration"]["temperature"]["fitted"]
    assert not meta.thresholds["reached"]
    assert metrics["temperature"] == meta.temperature > 0
    assert {"threshold", "precision", "coverage", "table"} <= set(metrics["thresholds"])
    assert metrics["checkpoint_id"] == meta.id
    assert len(metrics["history"]) == 3
    assert metrics["recipe"]["regime"] == "scratch" and metrics["recipe"]["min_steps"] == 60
    for name in PLOTS:
        with Image.open(report / name) as img:
            assert img.format == "PNG" and img.width > 100


def test_calibration_did_not_raise_nll(trained_quality: Path) -> None:
    _, meta = read_checkpoint(trained_quality)
    assert meta.calibration["nll"] <= meta.calibration["nll_uncalibrated"] + 1e-9


def test_stored_threshold_bound_meets_target(trained_quality: Path) -> None:
    _, meta = read_checkpoint(trained_quality)
    t = meta.thresholds
    if t["reached"]:
        assert t["precision_lower"] >= t["target_precision"] and t["count"] >= t["min_count"]
    else:  # the stage must then never act on anything short of certainty
        assert t["threshold"] == 1.0 and t["why"]


def test_train_prints_the_per_class_table(
    tmp_path: Path, quality_data: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "q.safetensors"
    rc = train_cli(
        "quality", str(quality_data), str(out), "--epochs", "1", "--report", str(tmp_path / "rep")
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "keep" in printed and "reject" in printed and "precision" in printed
    assert "bound" in printed and "gate: accuracy" in printed
    assert f"published: {out}" in printed and str(tmp_path / "rep") in printed
    assert (tmp_path / "rep" / "metrics.json").is_file()


def test_out_defaults_to_the_configured_checkpoint(tmp_path: Path, quality_data: Path) -> None:
    target = tmp_path / "models" / "quality.safetensors"
    config = tmp_path / "config.toml"
    config.write_text(f'[stages.quality]\ncheckpoint = "{target.as_posix()}"\n')
    rc = train_cli("quality", str(quality_data), None, "-c", str(config), "--epochs", "1")
    assert rc == 0
    assert read_checkpoint(target)[1].stage == "quality"
    assert (tmp_path / "models" / "quality.report" / "metrics.json").is_file()
    leftovers = [p.name for p in target.parent.iterdir() if p.name.startswith(".gensift-tmp")]
    assert leftovers == []


def test_evaluate_writes_a_report_that_counts_every_image(
    tmp_path: Path, trained_quality: Path, capsys: pytest.CaptureFixture
) -> None:
    data = make_dataset(tmp_path / "held-out", {"keep": 7, "reject": 5}, seed=42)
    (data / "keep" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    report = tmp_path / "eval"

    rc = main(
        [
            "evaluate",
            str(trained_quality),
            "--data",
            str(data),
            "--report",
            str(report),
            "--device",
            "cpu",
        ]
    )

    assert rc == 0
    metrics = _metrics(report)
    assert sum(map(sum, metrics["confusion_matrix"])) == 12 == metrics["count"]
    assert metrics["accuracy"] >= 0.8
    assert [s["path"] for s in metrics["skipped_files"]] == [str(data / "keep" / "broken.png")]
    assert "at_checkpoint_threshold" in metrics["thresholds"]
    for name in PLOTS - {"curves.png"}:
        assert (report / name).is_file()
    assert "precision" in capsys.readouterr().out


def test_evaluate_names_the_folders_the_checkpoint_lacks_and_its_classes(
    tmp_path: Path, trained_quality: Path, capsys: pytest.CaptureFixture
) -> None:
    # two of the checkpoint's classes and two folders it has never heard of
    data = make_dataset(tmp_path / "other", {"keep": 2, "reject": 2, "red": 2, "blue": 2})
    report = tmp_path / "report"
    rc = main(
        ["evaluate", str(trained_quality), "--data", str(data), "--report", str(report),
         "--device", "cpu"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "folders blue, red are not classes of" in err
    assert f"checkpoint {trained_quality}, whose classes are keep, reject" in err
    assert str(data) in err
    assert not report.exists()


def test_freeze_backbone_trains_the_head_and_init_from_keeps_the_backbone(
    tmp_path: Path, quality_data: Path, trained_quality: Path
) -> None:
    feature_data = make_dataset(tmp_path / "feature", {"red": 30, "blue": 30, "stripes": 30})
    out = tmp_path / "feature.safetensors"

    rc = train_cli(
        "feature",
        str(feature_data),
        str(out),
        "--init-from",
        str(trained_quality),
        "--freeze-backbone",
        "--epochs",
        "30",
        "--val-split",
        "0.4",
    )

    assert rc == 0
    q_tensors, q_meta = read_checkpoint(trained_quality)
    f_tensors, f_meta = read_checkpoint(out, stage="feature")
    # --init-from started from the given backbone, and freezing kept it exactly.
    assert f_meta.backbone_digest == q_meta.backbone_digest
    for name, tensor in q_tensors.items():
        if name.startswith("backbone."):
            assert torch.equal(tensor, f_tensors[name])
    assert f_meta.frozen_backbone and f_meta.classes == ["blue", "red", "stripes"]
    assert f_meta.metrics["val_accuracy"] > 0.5  # chance is 1/3


def test_init_from_fine_tuning_starts_from_the_checkpoint(
    tmp_path: Path, quality_data: Path, trained_quality: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "q2.safetensors"
    rc = train_cli(
        "quality",
        str(quality_data),
        str(out),
        "--init-from",
        str(trained_quality),
        "--epochs",
        "1",
        "--warmup-epochs",
        "1",
    )
    assert rc == 0
    # One warm-up epoch trains only the head: the backbone is the earlier checkpoint's.
    assert (
        read_checkpoint(out)[1].backbone_digest
        == read_checkpoint(trained_quality)[1].backbone_digest
    )
    assert "backbone and head from quality.safetensors" in capsys.readouterr().err


def test_init_from_a_different_architecture_is_refused(
    tmp_path: Path, quality_data: Path, trained_quality: Path, capsys: pytest.CaptureFixture
) -> None:
    rc = train_cli(
        "quality",
        str(quality_data),
        str(tmp_path / "x"),
        "--init-from",
        str(trained_quality),
        "--arch",
        "mobilenet_v3_large",
        "--weights",
        "none",
    )
    assert rc == 2
    assert "resnet18 checkpoint, but --arch is mobilenet_v3_large" in capsys.readouterr().err


def test_quality_stage_needs_its_reject_class_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = make_dataset(tmp_path / "d", {"keep": 3, "stripes": 3})
    rc = train_cli("quality", str(data), str(tmp_path / "q"))
    assert rc == 2
    assert "stages.quality.reject_classes" in capsys.readouterr().err


def test_unsafe_class_folder_is_refused_by_train(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = make_dataset(tmp_path / "d", {"keep": 3, "reject": 3})
    (data / "CON").mkdir()
    rc = train_cli("quality", str(data), str(tmp_path / "q"))
    assert rc == 2
    assert "'CON'" in capsys.readouterr().err


def test_missing_device_is_a_clear_usage_error(
    tmp_path: Path, quality_data: Path, capsys: pytest.CaptureFixture
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    rc = train_cli("quality", str(quality_data), str(tmp_path / "q"), "--device", "cuda")
    assert rc == 2
    assert "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--epochs", "0"], "--epochs"),
        (["--arch", "convnext_tiny", "--image-size", "16"], "too small for convnext_tiny"),
        (["--image-size", "4"], "--image-size 4"),
    ],
)
def test_options_that_cannot_train_exit_2_at_once_without_a_traceback(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    # the installed command in a fresh process; "at once" means before any image is read:
    # the data holds a broken file and too few images, which reading would have reported
    data = make_dataset(tmp_path / "d", {"keep": 4, "reject": 4})
    (data / "keep" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "q.safetensors"
    args = ["train", "quality", "--data", str(data), "--out", str(out), *TINY, *extra]
    proc = subprocess.run(
        [sys.executable, "-m", "gensift.daemon.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert "broken.png" not in proc.stderr and "fewer than" not in proc.stderr
    assert not out.exists() and not list(tmp_path.glob("q.*"))


def test_the_warnings_before_training_are_in_the_train_log(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # a small class, a file in both classes, images smaller than --image-size, from scratch
    data = make_dataset(tmp_path / "d", {"keep": 30, "reject": 12})
    shutil.copy(data / "keep" / "keep_000.png", data / "reject" / "also_keep.png")
    train_cli("quality", data, tmp_path / "q", "--image-size", "64", "--epochs", "1")
    log = capsys.readouterr().err  # train logs to stderr
    assert "fewer than 30 images in reject (13)" in log and "--freeze-backbone" in log
    assert "1 file(s) are in more than one class (keep and reject)" in log
    assert "smaller than --image-size 64 (the smallest 48x48)" in log
    assert "training from scratch (--weights none) on 43 images" in log


# --- training on the daemon's own folders ---------------------------------------------------


def _daemon_config(tmp_path: Path, *, recursive: bool = True) -> tuple[Path, Path, Path]:
    """A config whose daemon watches ``tmp_path/generator/outputs`` and sorts into
    ``tmp_path/sorted``."""
    watched, root = tmp_path / "generator" / "outputs", tmp_path / "sorted"
    watched.mkdir(parents=True)
    config = tmp_path / "gensift.toml"
    config.write_text(
        f"[watch]\npaths = [{json.dumps(str(watched))}]\nrecursive = {str(recursive).lower()}\n"
        f"[output]\nroot = {json.dumps(str(root))}\n"
    )
    return config, watched, root


def _train_with(config: Path, data: Path, out: Path, *extra: str) -> int:
    return train_cli("quality", data, out, "-c", str(config), *extra)


@pytest.mark.parametrize("where", ["the watched folder", "inside it", "around it", "a symlink"])
def test_train_refuses_examples_in_a_watched_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture, where: str
) -> None:
    config, watched, _ = _daemon_config(tmp_path)
    data = {
        "the watched folder": watched,
        "inside it": watched / "labelled",
        "around it": watched.parent,  # the watched folder would be one of its "classes"
        "a symlink": tmp_path / "shortcut" / "labelled",  # another spelling of "inside it"
    }[where]
    (tmp_path / "shortcut").symlink_to(watched, target_is_directory=True)
    make_dataset(data, {"keep": 3, "reject": 3})
    out = tmp_path / "q.safetensors"

    rc = _train_with(config, data, out)

    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "watch.paths" in err and str(config) in err and str(watched) in err
    assert str(data) in err and "--allow-watched-data" in err
    assert not out.exists() and not list(tmp_path.glob("q.*"))


def test_train_refuses_held_out_examples_in_a_watched_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config, watched, _ = _daemon_config(tmp_path)
    data = make_dataset(tmp_path / "examples", {"keep": 3, "reject": 3})
    held_out = make_dataset(watched / "held-out", {"keep": 3, "reject": 3})
    rc = _train_with(config, data, tmp_path / "q.safetensors", "--val-data", str(held_out))
    err = capsys.readouterr().err
    assert rc == 2
    assert "--val-data" in err and str(held_out) in err and "watch.paths" in err


def test_class_folders_below_a_folder_watched_without_recursion_are_not_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # the daemon sorts only the files directly in the watched folder: class folders are safe
    config, watched, _ = _daemon_config(tmp_path, recursive=False)
    make_dataset(watched, {"keep": 3, "reject": 3})
    # train itself refuses --image-size 4 before it reads an image: reaching that error
    # shows the folder check let the data through
    rc = _train_with(config, watched, tmp_path / "q.safetensors", "--image-size", "4")
    err = capsys.readouterr().err
    assert rc == 2 and "--image-size 4" in err and "watch.paths" not in err


def test_train_on_the_output_root_needs_allow_sorted_data_and_skips_gensifts_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config, _, root = _daemon_config(tmp_path)
    make_dataset(root, {"keep": 12, "reject": 12})  # as the daemon sorted them
    for folder in ("_rejected", "_review"):  # gensift's own, beside the classes
        (root / folder).mkdir()
        shutil.copy(root / "reject" / "reject_000.png", root / folder / "gen_001.png")
    out = tmp_path / "q.safetensors"

    rc = _train_with(config, root, out)

    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "output.root" in err and str(config) in err and str(root) in err
    assert "--allow-sorted-data" in err
    assert not out.exists()

    rc = _train_with(config, root, out, "--allow-sorted-data", "--epochs", "1", "--force")

    assert rc == 0
    assert read_checkpoint(out)[1].classes == ["keep", "reject"]
    err = capsys.readouterr().err
    assert "_rejected" in err and "_review" in err  # said why they were left out
