"""The GPU paths: mixed-precision training, half-precision inference, `gensift sort` on CUDA.

CI has no GPU, so these tests are skipped there; they run wherever torch sees a CUDA
device (``pytest tests/test_cuda.py`` on a GPU machine). What they guard is what no
CPU run exercises: autocast and the gradient scaler in training, channels_last and
half precision in inference, and checkpoints that do not depend on where they were
trained.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import draw, train_cli
from sortkit import decisions, write_config
from watchkit import daemon_thread, drawn_files, wait_decided, wait_for

from gensift.daemon.cli import main
from gensift.models.predictor import Predictor

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

KINDS = ["keep", "reject", "keep", "reject", "keep", "reject", "keep", "reject"]


def _on(device: str, config: Path) -> Path:
    """``config`` (a sortkit one, CPU) set to run on ``device``."""
    config.write_text(config.read_text().replace('device = "cpu"', f'device = "{device}"'))
    return config


def _inputs(predictor: Predictor) -> dict:
    rng = np.random.default_rng(5)
    images = [draw(kind, rng) for kind in KINDS]
    return {
        key: preset.normalize(torch.stack([preset.resize(img) for img in images]))
        for key, preset in predictor.presets.items()
    }


@pytest.fixture(scope="module")
def cuda_quality(tmp_path_factory: pytest.TempPathFactory, quality_data: Path) -> Path:
    """A tiny quality checkpoint trained on the GPU (autocast; the last --device wins)."""
    out = tmp_path_factory.mktemp("cuda") / "quality.safetensors"
    assert train_cli("quality", quality_data, out, "--epochs", "3", "--device", "cuda") == 0
    return out


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_a_checkpoint_trained_on_the_gpu_gives_the_cpu_answers_at_each_precision(
    cuda_quality: Path, precision: str
) -> None:
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    cpu = Predictor.load({"quality": cuda_quality}, device="cpu")
    gpu = Predictor.load({"quality": cuda_quality}, device="cuda", precision=precision)
    assert cpu.amp is None
    assert gpu.amp == {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    assert gpu.device.type == "cuda" and "cuda" in gpu.describe()

    inputs = _inputs(cpu)
    want = cpu.predict(inputs, lambda probs: True)
    got = gpu.predict(inputs, lambda probs: True)
    # fp32 on the GPU may use TF32 convolutions; bf16 keeps about 3 significant digits
    tolerance = {"fp32": 0.01, "fp16": 0.02, "bf16": 0.05}[precision]
    for row_cpu, row_gpu in zip(want, got, strict=True):
        a, b = row_cpu["quality"], row_gpu["quality"]
        assert a.keys() == b.keys()
        assert max(abs(a[k] - b[k]) for k in a) <= tolerance, (a, b)
        assert abs(sum(b.values()) - 1.0) < 1e-3


def test_gensift_sort_on_cuda_routes_every_file_like_the_cpu(
    tmp_path: Path, cuda_quality: Path, capfd: pytest.CaptureFixture
) -> None:
    rng = np.random.default_rng(11)
    originals = tmp_path / "originals"
    originals.mkdir()
    for i, kind in enumerate(KINDS * 2):
        draw(kind, rng, size=96).save(originals / f"{i:02d}-{kind}.png")

    routes = {}
    for device in ("cpu", "cuda"):
        folder = tmp_path / device
        inbox = folder / "inbox"
        shutil.copytree(originals, inbox)
        config = _on(
            device, write_config(folder, cuda_quality, None, inbox=inbox, quality_threshold=0.5)
        )
        assert main(["sort", str(inbox), "-c", str(config)]) == 0
        rows = decisions(folder / "journal.sqlite3")
        assert len(rows) == len(KINDS) * 2
        routes[device] = {
            e.source.name: (e.action, e.probabilities["quality"]["reject"]) for e in rows
        }
    assert "device cuda" in capfd.readouterr().err

    assert routes["cpu"].keys() == routes["cuda"].keys()
    for name, (action, p_reject) in routes["cpu"].items():
        gpu_action, gpu_p_reject = routes["cuda"][name]
        assert abs(p_reject - gpu_p_reject) <= 0.05, name
        if abs(p_reject - 0.5) > 0.05:  # far from the threshold, the decision must agree
            assert action == gpu_action, name


def test_an_idle_unload_gives_the_gpu_memory_back(tmp_path: Path, cuda_quality: Path) -> None:
    """Not only are the models dropped: the memory torch's allocator cached for them goes
    back to the driver, for the generator sharing the GPU. (What stays allocated is the
    CUDA libraries' per-thread workspaces, a few MiB, not the models.)"""
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = _on("cuda", write_config(tmp_path, cuda_quality, None, idle_unload_seconds=1.0))
    with daemon_thread(config) as daemon:
        assert daemon.worker is not None
        drawn_files(inbox, 3)
        wait_decided(tmp_path / "journal.sqlite3", 3)
        assert torch.cuda.memory_reserved() > before  # the model and its working memory
        wait_for(lambda: not daemon.worker.loaded, what="the idle unload")  # type: ignore[union-attr]
        cached = lambda: torch.cuda.memory_reserved() - torch.cuda.memory_allocated()  # noqa: E731
        wait_for(lambda: cached() < 4 * 2**20, what="the cached memory given back")
        assert torch.cuda.memory_allocated() - before < 64 * 2**20
