"""Shared fixtures: images the tests draw, tiny trained checkpoints, and hygiene checks."""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from loguru import logger
from PIL import Image, ImageDraw

#: the tiny-model settings every training test uses: fast on two CPU cores, no downloads
# --min-steps: the scratch recipe's 1000 steps would take minutes; these images need far fewer
TINY = ["--arch", "resnet18", "--weights", "none", "--image-size", "32", "--batch-size", "16",
        "--min-steps", "60"]  # fmt: skip


def draw(kind: str, rng: np.random.Generator, size: int = 48) -> Image.Image:
    """An image of a visually distinct kind.

    keep:    a smooth gradient with a solid ellipse (a clean "generation")
    reject:  coarse random noise (a broken one)
    red / blue / stripes: three feature classes (stripes over a dark box)
    """
    if kind == "reject":
        noise = rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)
        return Image.fromarray(noise).resize((size, size), Image.Resampling.NEAREST)
    base = np.linspace(0, 1, size)[None, :, None] * rng.uniform(60, 160, 3)
    img = Image.fromarray(np.broadcast_to(base + 40, (size, size, 3)).astype(np.uint8))
    pen = ImageDraw.Draw(img)
    a, b = rng.integers(4, size // 3, 2)
    box = (a, b, a + rng.integers(size // 3, size // 2), b + rng.integers(size // 3, size // 2))
    if kind == "keep":
        pen.ellipse(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    elif kind == "red":
        pen.ellipse(box, fill=(230, int(rng.integers(0, 60)), 30))
    elif kind == "blue":
        pen.rectangle(box, fill=(20, int(rng.integers(0, 60)), 230))
    elif kind == "stripes":
        pen.rectangle(box, fill=tuple(int(c) for c in rng.integers(0, 90, 3)))
        step = int(rng.integers(4, 10))
        for x in range(int(rng.integers(0, step)), size, step):
            pen.line((x, 0, x, size), fill=(250, 250, 250), width=int(rng.integers(1, 3)))
    else:
        raise ValueError(kind)
    return img


def make_dataset(root: Path, counts: dict[str, int], seed: int = 0, suffix: str = ".png") -> Path:
    """Write ``root/<class>/<class>_<i><suffix>`` images of each drawn kind."""
    rng = np.random.default_rng(seed)
    for kind, n in counts.items():
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            draw(kind, rng).save(folder / f"{kind}_{i:03d}{suffix}")
    return root


def train_cli(stage: str, data: Path | str, out: Path | str | None, *extra: str) -> int:
    """``gensift train`` in-process on the CPU with the tiny settings; ``extra`` comes last,
    so it overrides them. ``out=None`` leaves the checkpoint path to the config."""
    from gensift.daemon.cli import main

    args = ["train", stage, "--data", str(data), "--device", "cpu", *TINY]
    if out is not None:
        args += ["--out", str(out)]
    return main([*args, *extra])


@pytest.fixture(scope="session")
def quality_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("quality"), {"keep": 40, "reject": 40})


@pytest.fixture(scope="session")
def trained_quality(tmp_path_factory: pytest.TempPathFactory, quality_data: Path) -> Path:
    """A tiny quality checkpoint trained once for the whole session (fine-tuning path)."""
    out = tmp_path_factory.mktemp("models") / "quality.safetensors"
    rc = train_cli("quality", str(quality_data), str(out), "--epochs", "3")
    assert rc == 0
    return out


@pytest.fixture(scope="session")
def feature_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("feature"), {"red": 24, "blue": 24, "stripes": 24})


@pytest.fixture(scope="session")
def frozen_pair(
    tmp_path_factory: pytest.TempPathFactory, quality_data: Path, feature_data: Path
) -> tuple[Path, Path]:
    """Quality and feature checkpoints trained head-only on one shared (random) backbone:
    the feature stage starts ``--init-from`` the quality checkpoint, as a user would.
    They serve the runtime's tests, so they are published whatever the gate says
    (``--force``); tests/test_gate.py tests the gate."""
    folder = tmp_path_factory.mktemp("frozen")
    quality, feature = folder / "quality.safetensors", folder / "feature.safetensors"
    frozen = ["--freeze-backbone", "--epochs", "15", "--seed", "1", "--force"]
    assert train_cli("quality", quality_data, quality, *frozen) == 0
    assert train_cli("feature", feature_data, feature, *frozen, "--init-from", str(quality)) == 0
    return quality, feature


@pytest.fixture(autouse=True)
def _reset_loguru() -> Iterator[None]:
    """Each test starts and ends with one loguru sink writing to the current stderr."""

    def restore() -> None:
        logger.remove()
        logger.add(lambda message: sys.stderr.write(message), level="INFO")

    restore()
    yield
    restore()


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread running (after a short grace period)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    while True:
        # tqdm's monitor wakes every 10 s and ends itself once the last bar is closed
        leaked = [
            t
            for t in threading.enumerate()
            if t not in before and t.is_alive() and t.name != "tqdm_monitor"
        ]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"test leaked threads: {[t.name for t in leaked]}"


@pytest.fixture
def models(tmp_path: Path, frozen_pair: tuple[Path, Path]) -> tuple[Path, Path]:
    """Copies of the session's frozen pair that a test may replace or break."""
    folder = tmp_path / "models"
    folder.mkdir()
    return (
        Path(shutil.copy(frozen_pair[0], folder)),
        Path(shutil.copy(frozen_pair[1], folder)),
    )


@pytest.fixture
def log_lines() -> list[str]:
    """Every message logged during the test, DEBUG and up (see ``watchkit.logged``)."""
    lines: list[str] = []
    logger.add(lambda message: lines.append(str(message)), level="DEBUG", format="{message}")
    return lines


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "/usr/lib/chromium/chromium"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture
def browser() -> Iterator[object]:
    """Debian's Chromium through Playwright: skipped with the reason where there is none,
    unless GENSIFT_REQUIRE_BROWSER=1 (``.ci/run`` sets it once it installed one)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    executable = _chromium()
    if executable is None:
        if os.environ.get("GENSIFT_REQUIRE_BROWSER") == "1":
            pytest.fail("GENSIFT_REQUIRE_BROWSER=1 but no chromium is installed")
        pytest.skip("no Chromium here: apt-get install chromium (see .ci/run)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield b
        b.close()
