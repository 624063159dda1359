"""Out of GPU memory is not a crash: a real daemon, real files and journal; only the error
is injected (there is no GPU here), by wrapping the model's forward pass and its move to
the device. Every file must end with exactly one decision, where the journal says."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from sortkit import check_ledger, decisions, sha, write_config
from watchkit import daemon_thread, drawn_files, logged, recalibrated, wait_decided, wait_for

from gensift.daemon.runtime import sifter as sifter_module
from gensift.daemon.runtime import worker as worker_module
from gensift.models import predictor as predictor_module

WAIT = 90.0  # bounded waits for what should happen within seconds
REAL_FORWARD = predictor_module.forward
REAL_PREPARE = predictor_module.prepare_for_inference
REAL_RESOLVE = predictor_module.resolve_device
REAL_TO = torch.nn.Module.to
REAL_UPLOAD = sifter_module.upload


def out_of_memory() -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity; "
        "the generator holds the rest) [injected by the test]"
    )


@dataclass
class FakeGpu:
    """What the tests make the "GPU" do.

    ``forward_fails(images, device)`` says whether a forward pass runs out of memory;
    ``placements_failing`` how many of the next moves of a model to CUDA do.
    """

    forward_fails: Callable[[torch.Tensor, torch.device], bool] = lambda images, device: False
    placements_failing: int = 0
    batches: list[tuple[str, int]] = field(default_factory=list)  # (device type, size) run


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> FakeGpu:
    """A CUDA device that is not there: ``cuda`` resolves, moving a module or a batch to it
    leaves it on the CPU, and a forward pass "on" it runs on the CPU, unless the test says
    it runs out of memory. The daemon's code runs as it would on a GPU."""
    fake = FakeGpu()

    def resolve(spec: str = "auto", local_rank: int = 0) -> torch.device:
        return torch.device("cuda", 0) if spec.startswith("cuda") else REAL_RESOLVE(spec)

    def to(self: torch.nn.Module, *args: object, **kwargs: object) -> torch.nn.Module:
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None and device.type == "cuda":
            return self
        return REAL_TO(self, *args, **kwargs)

    def prepare(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        if device.type == "cuda" and fake.placements_failing > 0:
            fake.placements_failing -= 1
            raise out_of_memory()
        return REAL_PREPARE(model, device)

    def forward(
        module: torch.nn.Module, images: torch.Tensor, device: torch.device, amp: object
    ) -> torch.Tensor:
        if fake.forward_fails(images, device):
            raise out_of_memory()
        fake.batches.append((device.type, len(images)))
        runs_on = torch.device("cpu") if device.type == "cuda" else device
        return REAL_FORWARD(module, images, runs_on, amp)

    def upload(images: list[torch.Tensor], device: torch.device) -> torch.Tensor:
        return REAL_UPLOAD(images, torch.device("cpu") if device.type == "cuda" else device)

    monkeypatch.setattr(predictor_module, "resolve_device", resolve)
    monkeypatch.setattr(worker_module, "resolve_device", resolve)
    monkeypatch.setattr(torch.nn.Module, "to", to)
    monkeypatch.setattr(predictor_module, "prepare_for_inference", prepare)
    monkeypatch.setattr(predictor_module, "forward", forward)
    monkeypatch.setattr(sifter_module, "upload", upload)  # a batch "uploaded" stays here
    return fake


def config_for(tmp_path: Path, models: tuple[Path, Path], **inference: str) -> Path:
    """A 4-image-batch config; ``inference`` keys are added to its [inference] table."""
    config = write_config(tmp_path, *models, quality_threshold=0.5, feature_threshold=0.4,
                          batch_size=4)  # fmt: skip
    if inference:
        extra = "".join(f'{key} = "{value}"\n' for key, value in inference.items())
        text = config.read_text().replace('device = "cpu"\n', extra)
        config.write_text(text)
    return config


def check_each_file_decided_once(tmp_path: Path, originals: dict[Path, str]) -> None:
    journal = tmp_path / "journal.sqlite3"
    check_ledger(originals, journal, tmp_path / "out")  # one final row each, files in place
    rows = decisions(journal)
    assert len(rows) == len(originals), "a file was decided more than once, or failed"
    assert {e.state for e in rows} <= {"done", "skipped"}


def test_a_batch_that_does_not_fit_is_halved_down_to_one(
    tmp_path: Path, models: tuple[Path, Path], log_lines: list[str], gpu: FakeGpu
) -> None:
    tried: list[int] = []

    def only_one_fits(images: torch.Tensor, device: torch.device) -> bool:
        tried.append(len(images))
        return len(images) > 1

    gpu.forward_fails = only_one_fits
    inbox = tmp_path / "inbox"
    originals = {p: sha(p) for p in drawn_files(inbox, 10)}  # found together by the scan
    config = config_for(tmp_path, models)
    with daemon_thread(config):
        wait_decided(tmp_path / "journal.sqlite3", 10, timeout=WAIT)
    check_each_file_decided_once(tmp_path, originals)
    # halved down to one image (the first batch may be short: files arrive as the scan finds them)
    size = max(tried)
    assert size > 1, tried
    while size > 1:
        assert logged(log_lines, f"out of memory on cpu with a batch of {size}",
                      f"batches of {size // 2}"), (size, tried)  # fmt: skip
        size //= 2
    assert {size for _, size in gpu.batches} == {1}  # what ran, ran one at a time


def test_when_not_even_one_image_fits_files_wait_and_are_tried_again(
    tmp_path: Path, models: tuple[Path, Path], log_lines: list[str], gpu: FakeGpu
) -> None:
    calls: list[int] = []

    def first_four_fail(images: torch.Tensor, device: torch.device) -> bool:
        calls.append(len(images))
        return len(calls) <= 4  # the generator holds the memory for a while, then frees it

    gpu.forward_fails = first_four_fail
    inbox = tmp_path / "inbox"
    originals = {p: sha(p) for p in drawn_files(inbox, 8)}
    config = config_for(tmp_path, models)  # oom_fallback = "wait", the default
    with daemon_thread(config):
        wait_decided(tmp_path / "journal.sqlite3", 8, timeout=WAIT)
    check_each_file_decided_once(tmp_path, originals)
    # halved down to one image (the first batch may be short: files arrive as the scan finds them)
    halving = [calls[0]]
    while halving[-1] > 1:
        halving.append(halving[-1] // 2)
    assert calls[: len(halving)] == halving, calls
    assert logged(log_lines, "even with one image", "files wait, trying again in 1 s",
                  'oom_fallback = "wait"')  # fmt: skip
    assert logged(log_lines, "files wait, trying again in 2 s")  # the backoff grows


def test_with_the_cpu_fallback_the_models_move_to_the_cpu_and_say_so(
    tmp_path: Path, models: tuple[Path, Path], log_lines: list[str], gpu: FakeGpu
) -> None:
    """Out of memory at start-up too: the daemon starts (on the CPU), tries the GPU before
    its first batch, runs out there, halves to one image, then falls back to the CPU."""
    gpu.placements_failing = 1  # the start-up load
    gpu.forward_fails = lambda images, device: device.type == "cuda"
    inbox = tmp_path / "inbox"
    originals = {p: sha(p) for p in drawn_files(inbox, 6)}
    config = config_for(tmp_path, models, device="cuda", precision="fp32", oom_fallback="cpu")
    with daemon_thread(config) as daemon:
        wait_decided(tmp_path / "journal.sqlite3", 6, timeout=WAIT)
        assert daemon.worker is not None and daemon.worker.cascade is not None
        assert daemon.worker.cascade.predictor.device.type == "cpu"
    check_each_file_decided_once(tmp_path, originals)
    assert logged(log_lines, "out of GPU memory loading the models", "on the CPU for now")
    assert logged(log_lines, "the models run on cuda:0 again")
    assert logged(log_lines, "out of memory on cuda:0 even with one image",
                  'running on the CPU (inference.oom_fallback = "cpu")')  # fmt: skip
    assert {device for device, _ in gpu.batches} == {"cpu"}


def test_a_reload_that_runs_out_of_memory_is_swapped_in_once_memory_frees(
    tmp_path: Path, models: tuple[Path, Path], log_lines: list[str], gpu: FakeGpu
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = config_for(tmp_path, models, device="cuda", precision="fp32")  # "wait"
    journal = tmp_path / "journal.sqlite3"
    feature = models[1]
    replacement = tmp_path / "replacement.safetensors"
    new_id = recalibrated(feature, 1.5, replacement)
    staged = drawn_files(tmp_path / "staged", 10)
    originals = {inbox / p.name: sha(p) for p in staged}
    with daemon_thread(config):
        for path in staged[:5]:
            shutil.copyfile(path, inbox / path.name)
        wait_decided(journal, 5, timeout=WAIT)
        # the generator grabs the GPU: the background load and the first move after the
        # swap run out of memory; the second move fits
        gpu.placements_failing = 2
        replacement.replace(feature)
        wait_for(lambda: logged(log_lines, "now serving", new_id), WAIT, "the swap")
        for path in staged[5:]:
            shutil.copyfile(path, inbox / path.name)
        wait_decided(journal, 10, timeout=WAIT)
    check_each_file_decided_once(tmp_path, originals)
    assert logged(log_lines, "out of GPU memory loading the models")
    assert logged(log_lines, "out of memory moving the models to cuda:0", "files wait")
    assert logged(log_lines, "the models run on cuda:0 again")
    later = [e for e in decisions(journal) if e.source.name in {p.name for p in staged[5:]}]
    used = {e.checkpoints["feature"] for e in later if "feature" in e.checkpoints}
    assert used == {new_id}
    assert {device for device, _ in gpu.batches} == {"cuda"}  # never ran on the CPU
