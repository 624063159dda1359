"""Files -> decoded inputs: real files on disk through daemon/runtime/decode.py."""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import draw
from PIL import Image

from gensift.daemon.runtime.decode import (
    SUFFIX_FORMATS,
    Decoded,
    DecodePool,
    Decoder,
    formats_for,
    is_blank,
)
from gensift.daemon.runtime.watcher import Observation
from gensift.models.presets import IMAGENET, EvalPreset

KEY = (32, IMAGENET)


def _decoder(
    settle_seconds: float = 0.0, patterns: tuple[str, ...] = ("*.png", "*.jpg")
) -> Decoder:
    return Decoder(
        presets={KEY: EvalPreset(32, IMAGENET)},
        formats=formats_for(list(patterns)),
        settle_seconds=settle_seconds,
    )


def _drawn(path: Path, seed: int = 0, kind: str = "keep") -> Path:
    draw(kind, np.random.default_rng(seed)).save(path)
    return path


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def _bomb_png(width: int, height: int) -> bytes:
    """A valid-looking PNG header that claims ``width`` x ``height`` pixels in a few bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" + b"\x00" * 3 * 16)  # one short row: never reached
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _age(path: Path, seconds: float = 3600.0) -> None:
    """Make ``path`` look as if it was last written ``seconds`` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))


# --- decoding ---------------------------------------------------------------------------------


def test_a_drawn_png_decodes_with_its_content_hash(tmp_path: Path) -> None:
    path = _drawn(tmp_path / "gen.png")
    data = path.read_bytes()
    result = _decoder()(path)
    assert result.status == "ok", result.note
    assert result.file.path == path
    assert result.file.size == len(data)
    assert result.file.sha256 == hashlib.sha256(data).hexdigest()
    assert result.file.mtime_ns == path.stat().st_mtime_ns
    tensor = result.inputs[KEY]
    assert tensor.dtype == torch.uint8
    assert tuple(tensor.shape) == (3, 32, 32)
    assert int(tensor.max()) > int(tensor.min())  # real pixels, not a blank canvas


def test_each_preset_gets_its_own_input(tmp_path: Path) -> None:
    path = _drawn(tmp_path / "gen.png")
    other = (48, IMAGENET)
    decoder = Decoder(
        presets={KEY: EvalPreset(32, IMAGENET), other: EvalPreset(48, IMAGENET)},
        formats=("PNG",),
        settle_seconds=0,
    )
    result = decoder(path)
    assert result.status == "ok"
    assert tuple(result.inputs[KEY].shape) == (3, 32, 32)
    assert tuple(result.inputs[other].shape) == (3, 48, 48)


def _noise(rng: np.random.Generator) -> Image.Image:
    pixels = 128 + rng.integers(-1, 2, (96, 96, 3))
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.mark.parametrize("kind", ["black", "white", "near-constant noise"])
def test_near_constant_images_are_blank(tmp_path: Path, kind: str) -> None:
    if kind == "black":
        img = Image.new("RGB", (64, 64), (0, 0, 0))
    elif kind == "white":
        img = Image.new("RGB", (80, 50), (255, 255, 255))
    else:
        img = _noise(np.random.default_rng(1))
    assert is_blank(img)
    path = tmp_path / "blank.png"
    img.save(path)
    result = _decoder()(path)
    assert result.status == "blank"
    assert "near-constant" in result.note
    assert not result.inputs
    assert result.file.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", ["keep", "reject", "red", "blue", "stripes"])
def test_drawn_images_are_not_blank(kind: str) -> None:
    assert not is_blank(draw(kind, np.random.default_rng(2)))


def test_a_dark_image_with_a_little_detail_is_not_blank(tmp_path: Path) -> None:
    img = Image.new("RGB", (64, 64), (0, 0, 0))
    img.paste((200, 200, 200), (8, 8, 40, 40))
    path = tmp_path / "dark.png"
    img.save(path)
    assert _decoder()(path).status == "ok"


def test_a_thin_line_on_a_plain_background_is_not_blank() -> None:
    # a 64x64 thumbnail would average the line away; the rule looks at every pixel
    img = Image.new("RGB", (1024, 1024), (255, 255, 255))
    img.paste((0, 0, 0), (0, 500, 1024, 501))
    assert not is_blank(img)


def _grey16(path: Path, eight: np.ndarray) -> Path:
    """Save the full-range 16-bit twin (v * 257) of 8-bit grey pixels as a PNG (mode I;16)."""
    Image.fromarray(eight.astype(np.uint16) * 257).save(path)
    return path


def test_a_16bit_grey_png_is_decoded_like_its_8bit_twin_not_blank(tmp_path: Path) -> None:
    # Pillow's convert("RGB") clips I;16 at 255: every pixel above 255/65535 turned white
    eight = np.asarray(draw("keep", np.random.default_rng(3)).convert("L"))
    Image.fromarray(eight).save(tmp_path / "eight.png")
    decoder = _decoder()

    sixteen = decoder(_grey16(tmp_path / "sixteen.png", eight))
    twin = decoder(tmp_path / "eight.png")

    assert sixteen.status == "ok", sixteen.note
    assert twin.status == "ok"
    difference = sixteen.inputs[KEY].int() - twin.inputs[KEY].int()
    assert int(difference.abs().max()) <= 1


def test_a_near_constant_16bit_grey_png_is_still_blank(tmp_path: Path) -> None:
    # 16-bit noise of +-200 is under one 8-bit grey level: still a blank render
    flat = 30000 + np.random.default_rng(4).integers(-200, 201, (64, 64))
    Image.fromarray(flat.astype(np.uint16)).save(tmp_path / "flat.png")
    result = _decoder()(tmp_path / "flat.png")
    assert result.status == "blank"
    assert "near-constant" in result.note


def _write_zero(path: Path) -> None:
    path.write_bytes(b"")


def _write_text(path: Path) -> None:
    path.write_text("this is not an image\n")


def _write_truncated(path: Path) -> None:
    _drawn(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("write", "expected"),
    [
        (_write_zero, "empty file (0 bytes)"),
        (_write_text, "not a jpeg/png image"),
        (_write_truncated, "truncated"),
    ],
    ids=["zero-bytes", "text", "truncated"],
)
def test_undecodable_settled_files_are_corrupt(tmp_path: Path, write, expected: str) -> None:
    path = tmp_path / "broken.png"
    write(path)
    _age(path)
    result = _decoder(settle_seconds=0.2)(path)
    assert result.status == "corrupt"
    assert expected in result.note.lower()
    assert not result.inputs
    assert path.exists()  # decoding never touches the file
    assert result.file.size == path.stat().st_size


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [20000, 10000])
def test_a_decompression_bomb_is_corrupt_without_decoding_it(tmp_path: Path, side: int) -> None:
    # 20000^2 is over twice Pillow's limit (Pillow refuses it on open); 10000^2 is between the
    # limit and twice it (Pillow only warns; open_rgb must refuse it itself).
    assert side * side > Image.MAX_IMAGE_PIXELS
    path = tmp_path / "bomb.png"
    path.write_bytes(_bomb_png(side, side))
    assert path.stat().st_size < 200
    result = _decoder()(path)
    assert result.status == "corrupt"
    assert "DecompressionBomb" in result.note or "limit" in result.note, result.note
    assert f"{side}x{side}" in result.note or str(side * side) in result.note, result.note


def test_an_undecodable_file_still_growing_when_looked_at_again_is_unsettled(
    tmp_path: Path,
) -> None:
    path = tmp_path / "writing.png"
    whole = _drawn(tmp_path / "whole.png").read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    waits: list[float] = []

    def writer_goes_on(seconds: float) -> None:  # what happens while sort's decoder waits
        waits.append(seconds)
        with path.open("ab") as handle:
            handle.write(whole[len(whole) // 2 :])

    decoder = replace(_decoder(settle_seconds=60), sleep=writer_goes_on)
    result = decoder(path)
    assert result.status == "unsettled" and "not decodable yet" in result.note
    assert len(waits) == 1 and 59 < waits[0] <= 60  # looked again a settle time later
    assert _decoder(settle_seconds=60)(path).status == "ok"  # complete now: no wait at all


@pytest.mark.parametrize("age", [86_400.0, -86_400.0], ids=["a-day-old", "a-day-ahead"])
def test_an_unchanged_undecodable_file_is_corrupt_whatever_its_mtime_says(
    tmp_path: Path, age: float
) -> None:
    """The file's mtime (another machine's clock on a share) plays no part: a truncated
    file that stays the same across settle_seconds of our clock is corrupt."""
    path = tmp_path / "truncated.png"
    _write_truncated(path)
    _age(path, age)
    result = _decoder(settle_seconds=0.2)(path)
    assert result.status == "corrupt", result  # a day ahead: "unsettled" forever before
    assert "truncated" in result.note.lower()


def test_the_daemon_decoder_judges_by_the_watchers_look_and_never_waits(tmp_path: Path) -> None:
    path = tmp_path / "truncated.png"
    _write_truncated(path)
    st = path.stat()
    now = time.monotonic()

    def decoder(seen: Observation | None) -> Decoder:
        def no_sleep(seconds: float) -> None:
            raise AssertionError("the daemon's decoder must not wait")

        return replace(_decoder(settle_seconds=2.0), observed=lambda p: seen, sleep=no_sleep)

    settled = Observation(st.st_size, st.st_mtime_ns, now - 5)
    assert decoder(settled)(path).status == "corrupt"
    assert decoder(replace(settled, since=now))(path).status == "unsettled"  # seen just now
    assert decoder(replace(settled, size=st.st_size - 1))(path).status == "unsettled"
    assert decoder(None)(path).status == "unsettled"


def test_a_young_complete_file_decodes_at_once(tmp_path: Path) -> None:
    path = _drawn(tmp_path / "fresh.png")
    assert _decoder(settle_seconds=60)(path).status == "ok"


def test_a_missing_file_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "nothing.png"
    result = _decoder()(path)
    assert result.status == "gone"
    assert result.file.path == path
    assert not result.inputs


@pytest.mark.timeout(60)  # the bug this guards against is a read that never returns
def test_a_fifo_or_a_folder_named_like_an_image_is_unreadable_without_opening_it(
    tmp_path: Path,
) -> None:
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it would block until something writes to it
    folder = tmp_path / "folder.png"
    folder.mkdir()
    for path in (fifo, folder):
        result = _decoder()(path)
        assert (result.status, result.note) == ("unreadable", "not a regular file")


def test_formats_limit_what_decodes_whatever_the_name(tmp_path: Path) -> None:
    path = tmp_path / "actually_a.png"
    draw("keep", np.random.default_rng(3)).save(path, format="JPEG")
    _age(path)
    png_only = _decoder(patterns=("*.png",))
    assert png_only.formats == ("PNG",)
    result = png_only(path)
    assert result.status == "corrupt"
    assert "not a PNG image" in result.note
    with_jpeg = _decoder(patterns=("*.png", "*.jpg"))
    assert with_jpeg(path).status == "ok"


def test_formats_for_patterns() -> None:
    assert formats_for(["*.PNG"]) == ("PNG",)
    assert formats_for(["*.png", "*.jpg", "*.jpeg"]) == ("JPEG", "PNG")
    assert formats_for(["img_*.webp"]) == ("WEBP",)
    everything = tuple(sorted(set(SUFFIX_FORMATS.values())))
    assert formats_for(["*.tiff"]) == everything
    assert formats_for(["*"]) == everything


# --- the pool ---------------------------------------------------------------------------------


def _folder(tmp_path: Path, n: int) -> list[Path]:
    """``n`` files: mostly drawn images, with a blank, a corrupt and a missing one mixed in."""
    paths = []
    for i in range(n):
        path = tmp_path / f"img_{i:02d}.png"
        if i % 7 == 3:
            Image.new("RGB", (40, 40), (0, 0, 0)).save(path)
        elif i % 7 == 5:
            path.write_bytes(b"garbage")
        elif i % 7 != 6:
            _drawn(path, seed=i)
        paths.append(path)
    return paths


def test_pool_results_come_back_in_input_order(tmp_path: Path) -> None:
    paths = _folder(tmp_path, 20)
    pool = DecodePool(_decoder(), workers=3, window=6)
    results = list(pool.map(paths))
    assert [r.file.path for r in results] == paths
    statuses = {p.name: r.status for p, r in zip(paths, results, strict=True)}
    assert statuses["img_03.png"] == "blank"
    assert statuses["img_05.png"] == "corrupt"
    assert statuses["img_06.png"] == "gone"
    assert statuses["img_00.png"] == "ok"
    # each result is that file's own content
    for path, result in zip(paths, results, strict=True):
        if path.exists():
            assert result.file.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_pool_keeps_at_most_window_paths_ahead(tmp_path: Path) -> None:
    paths = _folder(tmp_path, 20)
    window = 4
    pulled = 0

    def feed() -> Iterator[Path]:
        nonlocal pulled
        for path in paths:
            pulled += 1
            yield path

    pool = DecodePool(_decoder(), workers=2, window=window)
    yielded = 0
    ahead = []
    for result in pool.map(feed()):
        yielded += 1
        ahead.append(pulled - yielded)
        assert pulled - yielded <= window, (pulled, yielded)
        assert result.file.path == paths[yielded - 1]
        time.sleep(0.01)  # a slow consumer: the pool must not run ahead of it
    assert yielded == len(paths)
    assert max(ahead) <= window


def _gensift_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("gensift-decode")]


def test_breaking_out_of_the_pool_stops_its_threads(tmp_path: Path) -> None:
    paths = _folder(tmp_path, 20)
    pool = DecodePool(_decoder(), workers=3, window=6)
    seen: list[Decoded] = []
    for result in pool.map(paths):
        seen.append(result)
        if len(seen) == 2:
            break
    assert [r.file.path for r in seen] == paths[:2]
    assert not _gensift_threads()  # the autouse fixture checks every other thread too


def test_closing_the_pool_iterator_early_stops_its_threads(tmp_path: Path) -> None:
    paths = _folder(tmp_path, 20)
    pool = DecodePool(_decoder(), workers=3, window=6)
    with closing(pool.map(iter(paths))) as results:
        first = next(results)
        assert _gensift_threads()
    assert first.file.path == paths[0]
    assert not _gensift_threads()
