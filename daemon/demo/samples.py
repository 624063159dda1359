"""Example images for ``gensift demo``: drawn at run time, so nothing is downloaded or shipped.

Three *scenes* stand in for a user's own feature classes, and four kinds of broken
output stand in for what generators really produce when they fail:

- ``black``: the all-black frame a safety filter returns;
- ``noise``: sampling gone wrong (too few steps, a broken VAE);
- ``washed``: washed-out colour (wrong VAE, too high CFG);
- ``blur``: heavy blur (a wrong upscaler, a low-resolution latent).

A clean image is any scene; the quality stage learns clean against the four failures,
the feature stage learns the three scenes apart. The simulated generator also writes
``mixed`` images (two scenes side by side), which no training set contains.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

SCENES = ("sunset", "ocean", "forest")
FAILURES = ("black", "noise", "washed", "blur")
#: three texture classes told apart by pattern alone (colours are random in each image)
TEXTURES = ("stripes", "checks", "dots")
#: three classes told apart by colour alone (the shapes are random in each image)
COLOURS = ("red", "green", "blue")

Rng = np.random.Generator


def _gradient(size: int, top: np.ndarray, bottom: np.ndarray) -> Image.Image:
    """A vertical gradient from ``top`` to ``bottom`` (RGB, 0-255)."""
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    rows = top[None, None, :] * (1 - t) + bottom[None, None, :] * t
    return Image.fromarray(np.broadcast_to(rows, (size, size, 3)).astype(np.uint8))


def _jitter(rng: Rng, rgb: tuple[int, int, int], spread: int = 25) -> np.ndarray:
    return np.clip(np.array(rgb) + rng.integers(-spread, spread + 1, 3), 0, 255).astype(float)


def _sunset(rng: Rng, size: int) -> Image.Image:
    """Warm sky, a sun low over a dark horizon."""
    img = _gradient(size, _jitter(rng, (250, 140, 40)), _jitter(rng, (170, 40, 60)))
    pen = ImageDraw.Draw(img)
    horizon = int(size * rng.uniform(0.6, 0.75))
    r = int(size * rng.uniform(0.1, 0.18))
    cx = int(size * rng.uniform(0.25, 0.75))
    pen.ellipse((cx - r, horizon - r, cx + r, horizon + r), fill=(255, 230, 120))
    pen.rectangle((0, horizon, size, size), fill=tuple(int(c) for c in _jitter(rng, (50, 25, 35))))
    return img


def _ocean(rng: Rng, size: int) -> Image.Image:
    """Pale sky over a blue sea with white wave crests."""
    img = _gradient(size, _jitter(rng, (170, 210, 245)), _jitter(rng, (20, 60, 150)))
    pen = ImageDraw.Draw(img)
    horizon = int(size * rng.uniform(0.3, 0.45))
    pen.rectangle((0, horizon, size, size), fill=tuple(int(c) for c in _jitter(rng, (25, 80, 170))))
    step = max(4, size // 10)
    for y in range(horizon + step // 2, size, step):
        phase = rng.uniform(0, 2 * np.pi)
        xs = np.arange(0, size + 1, 2)
        ys = y + np.sin(xs / size * 4 * np.pi + phase) * step / 4
        pen.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=(235, 245, 255), width=1)
    return img


def _forest(rng: Rng, size: int) -> Image.Image:
    """Dark green conifers against a grey-green sky."""
    img = _gradient(size, _jitter(rng, (190, 215, 190)), _jitter(rng, (60, 110, 60)))
    pen = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(5, 9))):
        x = int(rng.integers(0, size))
        top = int(size * rng.uniform(0.15, 0.5))
        half = int(size * rng.uniform(0.08, 0.15))
        green = tuple(int(c) for c in _jitter(rng, (20, 80, 30), 15))
        pen.polygon([(x, top), (x - half, size), (x + half, size)], fill=green)
    return img


_SCENES: dict[str, Callable[[Rng, int], Image.Image]] = {
    "sunset": _sunset,
    "ocean": _ocean,
    "forest": _forest,
}


def scene(kind: str, rng: Rng, size: int = 96) -> Image.Image:
    """A clean image of one of :data:`SCENES`."""
    return _SCENES[kind](rng, size)


def failure(kind: str, rng: Rng, size: int = 96) -> Image.Image:
    """A broken generation of one of :data:`FAILURES` (the blur and wash spoil a real scene)."""
    if kind == "black":
        level = int(rng.integers(0, 4))
        return Image.new("RGB", (size, size), (level, level, level))
    if kind == "noise":
        cell = int(rng.choice([1, 2, 3]))
        noise = rng.integers(0, 256, (size // cell, size // cell, 3), dtype=np.uint8)
        return Image.fromarray(noise).resize((size, size), Image.Resampling.NEAREST)
    clean = scene(str(rng.choice(SCENES)), rng, size)
    if kind == "blur":
        return clean.filter(ImageFilter.GaussianBlur(radius=size * rng.uniform(0.06, 0.1)))
    if kind == "washed":
        faded = ImageEnhance.Contrast(clean).enhance(rng.uniform(0.15, 0.3))
        faded = ImageEnhance.Color(faded).enhance(rng.uniform(0.1, 0.3))
        return ImageEnhance.Brightness(faded).enhance(rng.uniform(1.3, 1.6))
    raise ValueError(f"unknown failure kind {kind!r}; expected one of {FAILURES}")


def mixed(rng: Rng, size: int = 96) -> Image.Image:
    """Two different scenes side by side: a clean image that belongs to no one class, the
    kind a calibrated model should be unsure about (and gensift then leaves alone)."""
    left, right = rng.choice(len(SCENES), 2, replace=False)
    pixels = np.array(scene(SCENES[left], rng, size))
    cut = int(size * rng.uniform(0.4, 0.6))
    pixels[:, cut:] = np.array(scene(SCENES[right], rng, size))[:, cut:]
    return Image.fromarray(pixels)


def draw(kind: str, rng: Rng, size: int = 96) -> Image.Image:
    """A scene, a failure, or ``mixed``, by name."""
    if kind == "mixed":
        return mixed(rng, size)
    return scene(kind, rng, size) if kind in _SCENES else failure(kind, rng, size)


def _two_colours(rng: Rng) -> tuple[np.ndarray, np.ndarray]:
    a = rng.uniform(0, 255, 3)
    b = rng.uniform(0, 255, 3)
    while np.abs(a - b).sum() < 150:  # keep the pattern visible
        b = rng.uniform(0, 255, 3)
    return a, b


def _pattern(kind: str, rng: Rng, size: int) -> np.ndarray:
    """A 0..1 mask of the texture ``kind``, at a random scale, angle and phase."""
    y, x = np.mgrid[0:size, 0:size].astype(float) / size
    if kind == "stripes":
        angle, cycles = rng.uniform(0, np.pi), rng.uniform(3, 8)
        u = x * np.cos(angle) + y * np.sin(angle)
        return 0.5 + 0.5 * np.sin(2 * np.pi * cycles * u + rng.uniform(0, 2 * np.pi))
    if kind == "checks":
        angle, cells = rng.uniform(0, np.pi / 2), rng.uniform(3, 7)
        u = x * np.cos(angle) + y * np.sin(angle)
        v = -x * np.sin(angle) + y * np.cos(angle)
        du, dv = rng.uniform(0, 1, 2)
        return ((np.floor(u * cells + du) + np.floor(v * cells + dv)) % 2).astype(float)
    if kind == "dots":
        mask = np.zeros((size, size))
        radius = rng.uniform(0.03, 0.07)
        for _ in range(int(rng.integers(10, 25))):
            cx, cy = rng.uniform(0, 1, 2)
            mask[(x - cx) ** 2 + (y - cy) ** 2 < radius**2] = 1.0
        return mask
    raise ValueError(f"unknown texture {kind!r}; expected one of {TEXTURES}")


def texture(kind: str, rng: Rng, size: int = 64, noise: float = 12.0) -> Image.Image:
    """One of :data:`TEXTURES` in two random colours, with pixel noise."""
    mask = _pattern(kind, rng, size)[..., None]
    a, b = _two_colours(rng)
    pixels = mask * a + (1 - mask) * b + rng.normal(0, noise, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


_HUES = {"red": (200, 30, 30), "green": (30, 170, 40), "blue": (30, 50, 210)}


def colour(kind: str, rng: Rng, size: int = 64) -> Image.Image:
    """One of :data:`COLOURS`: random grey shapes on a background of that colour (jittered)."""
    background = tuple(int(c) for c in _jitter(rng, _HUES[kind], 35))
    img = Image.new("RGB", (size, size), background)
    pen = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = (int(v) for v in rng.integers(0, size, 2))
        x1, y1 = x0 + int(rng.integers(4, size // 2)), y0 + int(rng.integers(4, size // 2))
        grey = int(rng.integers(40, 220))
        shape = pen.ellipse if rng.random() < 0.5 else pen.rectangle
        shape((x0, y0, x1, y1), fill=(grey, grey, grey))
    return img


def write_class_folders(
    root: Path,
    kinds: tuple[str, ...],
    per_class: int,
    drawer: Callable[[str, Rng, int], Image.Image],
    *,
    seed: int = 0,
    size: int = 64,
) -> Path:
    """``root/<kind>/<kind>_<i>.png``: ``per_class`` images of each kind; returns ``root``."""
    rng = np.random.default_rng(seed)
    for kind in kinds:
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            drawer(kind, rng, size).save(folder / f"{kind}_{i:03d}.png")
    return root


def write_training_sets(
    root: Path, per_class: int, *, seed: int = 0, size: int = 96
) -> tuple[Path, Path]:
    """Write ``root/quality/{keep,reject}/`` and ``root/feature/<scene>/``; returns both roots.

    ``keep`` holds scenes of every kind and ``reject`` every failure in equal shares, so
    the quality stage learns "broken" rather than "not a sunset".
    """
    rng = np.random.default_rng(seed)
    quality, feature = root / "quality", root / "feature"
    shares = {
        "keep": [SCENES[i % len(SCENES)] for i in range(per_class)],
        "reject": [FAILURES[i % len(FAILURES)] for i in range(per_class)],
    }
    for label, kinds in shares.items():
        folder = quality / label
        folder.mkdir(parents=True, exist_ok=True)
        for i, kind in enumerate(kinds):
            draw(kind, rng, size).save(folder / f"{kind}_{i:03d}.png")
    for kind in SCENES:
        folder = feature / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            scene(kind, rng, size).save(folder / f"{kind}_{i:03d}.png")
    return quality, feature
