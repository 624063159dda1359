"""``gensift train`` under ``torchrun`` with two CPU processes (gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import TINY

from gensift.models.checkpoint import read_checkpoint


def test_two_process_torchrun_writes_one_checkpoint(tmp_path: Path, quality_data: Path) -> None:
    # Fine-tuning is the DistributedDataParallel path. (--freeze-backbone's all-gather of
    # features passes too, but each torchrun costs three torch imports: kept out of CI.)
    out = tmp_path / "quality.safetensors"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "gensift.daemon.cli",
        "train",
        "quality",
        "--data",
        str(quality_data),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--device",
        "cpu",
        *TINY,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    _, meta = read_checkpoint(out, stage="quality")
    # rank 0 calibrated on the whole calibration half of the held-out set
    assert meta.metrics["val_count"] == 8 == meta.calibration["split"]["calibration"]
    assert (tmp_path / "quality.report" / "metrics.json").is_file()
    assert "2 processes" in done.stderr
    assert done.stdout.count("published:") == 1  # only rank 0 reports
