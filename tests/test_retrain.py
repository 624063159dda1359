"""gensift retrain: the user's corrections fix a systematic error, shuffled ones are refused.

The live feature model is trained on examples of two classes, ``warm`` (red discs) and
``cool`` (blue discs). The user's generator then makes violet discs, which the user files
under ``warm``: a kind of image the examples never showed, which the live model puts
anywhere. The user labels 90 of them on the review page (through the same Reviewer the
page uses); retrain must learn them, judged on labels it held out.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from PIL import Image, ImageDraw
from sortkit import write_config
from watchkit import daemon_thread, final_rows, logged, wait_for

from gensift.daemon.cli import main
from gensift.daemon.commands.retrain import retrain
from gensift.daemon.config import load_config
from gensift.daemon.review.server import PageServer, build_review
from gensift.daemon.routing.journal import Journal, new_run_id
from gensift.daemon.routing.records import Decision, FileInfo
from gensift.daemon.routing.router import Router
from gensift.models.checkpoint import read_checkpoint

COLOURS = {"red": (220, 40, 30), "blue": (30, 60, 220), "violet": (150, 40, 230)}


def disc(colour: str, rng: np.random.Generator, size: int = 48) -> Image.Image:
    grey = int(rng.integers(90, 170))
    img = Image.new("RGB", (size, size), (grey, grey, grey))
    r = int(rng.integers(size // 5, size // 3))
    x, y = (int(v) for v in rng.integers(r, size - r, 2))
    jitter = rng.integers(-25, 26, 3)
    fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[colour], jitter, strict=True))
    ImageDraw.Draw(img).ellipse((x - r, y - r, x + r, y + r), fill=fill)
    return img


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    """Examples, a live feature model trained on them, and a config pointing at both."""
    rng = np.random.default_rng(0)
    examples = tmp_path / "examples"
    for cls, colour in (("warm", "red"), ("cool", "blue")):
        (examples / cls).mkdir(parents=True)
        for i in range(30):
            disc(colour, rng).save(examples / cls / f"{colour}_{i:03d}.png")
    live = tmp_path / "models" / "feature.safetensors"
    assert main(["train", "feature", "--data", str(examples), "--out", str(live), *TINY,
                 "--epochs", "6"]) == 0  # fmt: skip
    config = write_config(tmp_path, None, live, feature_threshold="auto",
                          uncertain_action="review")  # fmt: skip
    return config, live


def label_violet(config: Path, n: int, *, shuffled: bool = False) -> None:
    """``n`` violet discs placed in _review/ (as the daemon would), then labelled on the
    page: all ``warm``, or (``shuffled``) each class at random."""
    settings = load_config(config)
    inbox = settings.watch.paths[0]
    inbox.mkdir(exist_ok=True)
    rng = np.random.default_rng(1)
    with Journal.open(settings.journal.path) as journal:
        router = Router(settings.output, journal, new_run_id("sort"))
        for i in range(n):
            path = inbox / f"violet_{i:03d}.png"
            disc("violet", rng).save(path)
            st = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            decision = Decision("review", "uncertain", None, 0.5,
                                {"feature": {"warm": 0.5, "cool": 0.5}})  # fmt: skip
            outcome = router.apply(FileInfo(path, st.st_size, st.st_mtime_ns, digest), decision, {})
            assert outcome.state == "done"
    review = build_review(settings)
    with Journal.open(settings.journal.path) as journal:
        rows = [e for e in journal.placed() if e.action == "review"]
    for e in rows:
        cls = str(rng.choice(["warm", "cool"])) if shuffled else "warm"
        review.reviewer.act(e.id, "class", "review", cls)


@pytest.mark.timeout(1200)
def test_corrections_fix_a_systematic_error_and_a_running_daemon_uses_the_new_model(
    tmp_path: Path, setup: tuple[Path, Path], log_lines: list[str]
) -> None:
    config, live = setup
    old_id = read_checkpoint(live)[1].id
    label_violet(config, 90)
    settings = load_config(config)
    with daemon_thread(config):
        result = retrain(settings, "feature")
        assert result.published, result.verdict
        wait_for(lambda: logged(log_lines, "now serving"), what="the reload")
        new_id = read_checkpoint(live)[1].id
        assert new_id != old_id
        # on the held-out violet labels the live model was systematically wrong; the new
        # one gets them right
        before, after = result.accuracy_before, result.accuracy_after
        assert before is not None and after is not None and after.count >= 20
        assert (before.value or 0) <= 0.3, before
        assert (after.value or 0) >= 0.8, after
        # the next file is decided by the new version
        disc("violet", np.random.default_rng(7)).save(settings.watch.paths[0] / "next.png")

        def next_decided() -> list:
            return [e for e in final_rows(settings.journal.path) if e.source.name == "next.png"]

        wait_for(next_decided, what="next.png decided")
    (decided,) = next_decided()
    assert decided.checkpoints["feature"] == new_id
    # the new checkpoint records the example folder, so the next retrain finds it again
    assert read_checkpoint(live)[1].metrics["data"] == str((tmp_path / "examples").resolve())


@pytest.mark.timeout(1200)
def test_shuffled_labels_are_refused_and_the_live_model_stays_byte_identical(
    tmp_path: Path, setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, live = setup
    before = live.read_bytes()
    label_violet(config, 90, shuffled=True)
    assert main(["retrain", "feature", "-c", str(config)]) == 1
    out = capsys.readouterr().out
    assert "gate: refused" in out and "stays (unchanged)" in out
    assert "cannot be told from" in out  # no better than always answering one class
    assert live.read_bytes() == before


def test_dry_run_publishes_nothing_and_no_labels_is_a_clear_error(
    tmp_path: Path, setup: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, live = setup
    before = live.read_bytes()
    assert main(["retrain", "feature", "-c", str(config)]) == 2  # nothing labelled yet
    assert "no feature labels to learn from yet" in capsys.readouterr().err
    label_violet(config, 12)
    main(["retrain", "feature", "-c", str(config), "--dry-run"])
    assert "dry run: nothing was published" in capsys.readouterr().out
    assert live.read_bytes() == before
    assert not list(live.parent.glob("*.candidate*"))


@pytest.mark.timeout(1200)
def test_the_pages_retrain_button_runs_retrain_and_shows_its_progress(
    tmp_path: Path, setup: tuple[Path, Path], browser: object
) -> None:
    config, live = setup
    old_id = read_checkpoint(live)[1].id
    label_violet(config, 90)
    server = PageServer(build_review(load_config(config))).start()
    try:
        secrets = server.review.secrets
        page = browser.new_page()  # type: ignore[attr-defined]
        page.goto(f"http://127.0.0.1:{secrets.port}/queue/review?token={secrets.token}")
        page.wait_for_function("window.gensift && window.gensift.ready")
        page.click("#retrain")
        page.wait_for_selector("#progress-result.ok", timeout=600_000)
        assert "published" in page.inner_text("#progress-result")
        lines = page.inner_text("#progress-lines")
        assert "retrain: 90 labelled file(s)" in lines and "gate: passed" in lines
        assert "training feature stage" in lines  # the training log, as it ran
        page.screenshot(path=str(tmp_path / "retrain.png"))
        assert server.review.retraining.status()["running"] is False
    finally:
        server.review.retraining.join(600)
        server.stop()
    assert read_checkpoint(live)[1].id != old_id
