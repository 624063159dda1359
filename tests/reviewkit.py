"""A sorted output root for the review page tests, made by the real router and journal.

No model is needed to test the page: the decisions below are what a cascade would
have decided (uncertain files with feature probabilities of known margins, automatic
moves, rejects), carried out by :class:`Router` in a ``sort-…`` run exactly as the
daemon carries out its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from conftest import draw
from PIL.PngImagePlugin import PngInfo

from gensift.daemon.config import Settings, load_config
from gensift.daemon.routing.journal import Journal, new_run_id
from gensift.daemon.routing.records import Decision, FileInfo
from gensift.daemon.routing.router import Router

CLASSES = ("cat", "dog", "fox")
PARAMETERS = (
    "a fox in the snow, watercolour\nNegative prompt: blurry\n"
    'Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Model: "sdxl, base"'
)


@dataclass
class Scene:
    root: Path
    inbox: Path
    journal: Path
    config: Path
    settings: Settings
    #: name -> sha256 of every file placed
    files: dict[str, str] = field(default_factory=dict)

    def where(self, name: str) -> list[Path]:
        """Every file under the output root or the inbox with this name (after renames too)."""
        stem = Path(name).stem
        return sorted(p for p in [*self.root.rglob("*"), *self.inbox.rglob("*")]
                      if p.is_file() and p.name.startswith(stem))  # fmt: skip


def write_scene_config(tmp_path: Path) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[watch]\npaths = ["{tmp_path / "inbox"}"]\n'
        f'[output]\nroot = "{tmp_path / "out"}"\nuncertain_action = "review"\n'
        f'[journal]\npath = "{tmp_path / "journal.sqlite3"}"\n'
        f'[stages.quality]\ncheckpoint = "{tmp_path / "quality.safetensors"}"\n'
        f'[stages.feature]\ncheckpoint = "{tmp_path / "feature.safetensors"}"\n',
        encoding="utf-8",
    )
    return config


#: what each file looks like (conftest.draw's kinds): a class per look, noise for rejects
LOOKS = {"cat": "red", "dog": "blue", "fox": "stripes", "uncertain": "keep", "broken": "reject"}


def _image(path: Path, seed: int, parameters: str | None = None) -> str:
    img = draw(LOOKS[path.name.split("_")[0]], np.random.default_rng(seed), size=96)
    info = None
    if parameters is not None:
        info = PngInfo()
        info.add_text("parameters", parameters)
    img.save(path, pnginfo=info)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def probabilities(top: str, p: float) -> dict[str, dict[str, float]]:
    rest = [c for c in CLASSES if c != top]
    feature = {top: p, rest[0]: (1 - p) * 0.75, rest[1]: (1 - p) * 0.25}
    return {"quality": {"keep": 0.97, "reject": 0.03}, "feature": feature}


def make_scene(
    tmp_path: Path,
    *,
    review: int = 4,
    moved: int = 3,
    rejected: int = 2,
    config_ready: bool = False,
) -> Scene:
    """``review`` uncertain files (margins growing with their number), ``moved`` automatic
    moves into each class, ``rejected`` quarantined files; class folders for every class.
    ``config_ready``: the test wrote (and changed) ``config.toml`` itself."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = tmp_path / "config.toml" if config_ready else write_scene_config(tmp_path)
    settings = load_config(config)
    scene = Scene(settings.output.root, inbox, settings.journal.path, config, settings)
    plan: list[tuple[str, Decision]] = []
    for i in range(review):
        top = CLASSES[i % len(CLASSES)]
        p = 0.50 + 0.05 * i  # the first has the smallest margin
        plan.append((f"uncertain_{i}.png", Decision("review", "uncertain", top, p,
                                                    probabilities(top, p))))  # fmt: skip
    for c in CLASSES:
        for i in range(moved):
            plan.append((f"{c}_{i}.png", Decision("move", "class", c, 0.99,
                                                  probabilities(c, 0.99))))  # fmt: skip
    for i in range(rejected):
        probs = {"quality": {"keep": 0.02, "reject": 0.98}}
        plan.append((f"broken_{i}.png", Decision("quarantine", "reject", "reject", 0.98, probs)))
    for c in CLASSES:
        (scene.root / c).mkdir(parents=True, exist_ok=True)
    with Journal.open(scene.journal) as journal:
        router = Router(settings.output, journal, new_run_id("sort"))
        for seed, (name, decision) in enumerate(plan):
            path = inbox / name
            params = PARAMETERS if name == "uncertain_0.png" else None
            digest = _image(path, seed, params)
            st = path.stat()
            outcome = router.apply(
                FileInfo(path, st.st_size, st.st_mtime_ns, digest),
                decision,
                {"feature": "feature@v3", "quality": "quality@v1"},
            )
            assert outcome.state == "done", outcome.describe()
            scene.files[name] = digest
    return scene
