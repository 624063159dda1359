"""Compiled forward passes (``inference.compile``): the same probabilities as the eager
models for every batch size, the eager models kept when the check fails, and ``sort``
compiling only when asked or when the sort is long enough."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import draw
from sortkit import decisions, fill_inbox, write_config

import gensift.models.predictor as predictor_module
from gensift.daemon.cli import main
from gensift.daemon.config import load_config
from gensift.daemon.runtime.sifter import AUTO_COMPILE_IMAGES, compiled_cascade, load_cascade
from gensift.models.predictor import Predictor


@pytest.fixture(scope="module", autouse=True)
def _compiler_threads() -> None:
    """inductor compiles kernels in a pool of threads that it starts with the process's first
    compile and keeps for the process's life: start all of them before the leaked-thread
    check looks (the pool is inductor's own, reached through its private module)."""
    from torch._inductor.async_compile import AsyncCompile, get_compile_threads

    threads = get_compile_threads()
    if threads > 1:
        barrier = threading.Barrier(threads)  # each task waits for the others: all threads run
        pool = AsyncCompile.pool()
        for future in [pool.submit(barrier.wait, 30) for _ in range(threads)]:
            future.result()


def _inputs(predictor: Predictor, n: int) -> dict:
    rng = np.random.default_rng(n)
    kinds = ["keep", "reject", "red", "blue", "stripes"]
    images = [draw(kinds[i % len(kinds)], rng) for i in range(n)]
    return {
        key: preset.normalize(torch.stack([preset.resize(img) for img in images]))
        for key, preset in predictor.presets.items()
    }


def _close(a: list[dict], b: list[dict], atol: float) -> bool:
    return all(
        x.keys() == y.keys()
        and all(np.allclose(list(x[s].values()), list(y[s].values()), atol=atol) for s in x)
        for x, y in zip(a, b, strict=True)
    )


def test_compiled_models_give_the_eager_probabilities_padded_exact_and_split(
    frozen_pair: tuple[Path, Path],
) -> None:
    quality, feature = frozen_pair
    # two full models (no shared backbone), so both stages are compiled
    eager = Predictor.load(
        {"quality": quality, "feature": feature}, device="cpu", share_backbone=False
    )
    compiled = eager.compiled((1, 4))
    assert compiled is not eager and compiled.is_compiled
    assert "compiled" in compiled.describe() and "compiled" not in eager.describe()
    for n in (1, 3, 4, 9):  # a compiled size, padded up, exact, split into 4 + 4 + 1
        inputs = _inputs(eager, n)
        keep_some = lambda probs: probs["keep"] >= 0.5  # noqa: E731 - feature on a subset
        assert _close(eager.predict(inputs, keep_some), compiled.predict(inputs, keep_some), 1e-4)


def test_models_that_do_not_pass_the_check_stay_uncompiled_with_a_warning(
    frozen_pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, log_lines: list[str]
) -> None:
    quality, feature = frozen_pair
    eager = Predictor.load({"quality": quality, "feature": feature}, device="cpu")
    # no compiled model can be closer than a negative tolerance: the check must refuse it
    monkeypatch.setattr(predictor_module, "TOLERANCE", -1.0)
    assert eager.compiled((2,)) is eager
    assert any("running them uncompiled" in line for line in log_lines), log_lines


def test_auto_compiles_only_a_long_sort_on_the_cpu_and_on_always(
    tmp_path: Path, frozen_pair: tuple[Path, Path], log_lines: list[str]
) -> None:
    config = write_config(tmp_path, *frozen_pair)
    settings = load_config(config)
    cascade = load_cascade(settings)
    short = compiled_cascade(settings, cascade, images=AUTO_COMPILE_IMAGES - 1)
    assert short is cascade and not short.predictor.is_compiled
    watching = compiled_cascade(settings, cascade, images=None)  # watch: auto is off
    assert not watching.predictor.is_compiled
    off = settings.model_copy(
        update={"inference": settings.inference.model_copy(update={"compile": "off"})}
    )
    assert compiled_cascade(off, cascade, images=10**6) is cascade
    # a long sort compiles (only the shared backbone runs through a compiled module)
    assert compiled_cascade(settings, cascade, images=AUTO_COMPILE_IMAGES).predictor.is_compiled


def test_sort_with_compile_on_moves_every_file_where_the_eager_models_do(
    tmp_path: Path, frozen_pair: tuple[Path, Path]
) -> None:
    places = {}
    for mode in ("off", "on"):
        work = tmp_path / mode
        inbox = work / "inbox"
        fill_inbox(inbox)
        config = write_config(work, *frozen_pair, quality_threshold=0.5, feature_threshold=0.4)
        text = config.read_text().replace("[inference]\n", f'[inference]\ncompile = "{mode}"\n')
        config.write_text(text)
        assert main(["sort", str(inbox), "-c", str(config)]) == 0
        rows = decisions(work / "journal.sqlite3")
        places[mode] = sorted(
            (e.source.name, e.action, e.label, round(e.probability or 0, 3)) for e in rows
        )
    assert places["on"] == places["off"]
    assert len(places["on"]) > 10
