"""Unusual images become the RGB the network and the blank rule expect: 16-bit, palette with
transparency, grey with alpha, CMYK JPEG and EXIF-rotated files, each drawn here beside an
ordinary 8-bit twin that must come out the same."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import draw
from PIL import Image, ImageChops

from gensift.daemon.runtime.decode import is_blank
from gensift.models.data import ImageDataset, Sample
from gensift.models.presets import IMAGENET, EvalPreset, TrainPreset, open_rgb

SIZE = 64  # open_rgb's size: large enough that JPEG draft mode never scales these images down


def _pixels(img: Image.Image) -> np.ndarray:
    assert img.mode == "RGB"
    return np.asarray(img).astype(np.int32)


def _grey8(seed: int = 0) -> np.ndarray:
    """A drawn image in grey: a gradient with a shape, 8 bits."""
    return np.asarray(draw("keep", np.random.default_rng(seed), size=48).convert("L"))


def _widen(eight: np.ndarray, seed: int = 0) -> np.ndarray:
    """The 16-bit twin of 8-bit samples: v * 257 (0 -> 0, 255 -> 65535) give or take 100
    in the low bits, as a real 16-bit render of the same picture would have."""
    jitter = np.random.default_rng(seed).integers(-100, 101, eight.shape)
    return np.clip(eight.astype(np.int64) * 257 + jitter, 0, 65535).astype(np.uint16)


def _png16(width: int, height: int, color_type: int, samples: np.ndarray) -> bytes:
    """A 16-bit PNG written by hand (Pillow writes 16 bits only for greyscale):
    ``samples`` is (height, width * channels) of uint16."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in samples)
    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """What an RGBA image looks like on a white page: the reference for every alpha case."""
    colour, alpha = rgba[..., :3].astype(np.float64), rgba[..., 3:].astype(np.float64) / 255
    return np.rint(colour * alpha + 255 * (1 - alpha)).astype(np.int32)


# --- 16-bit -----------------------------------------------------------------------------------


def test_a_16bit_grey_png_is_scaled_to_its_8bit_twin_not_clipped(tmp_path: Path) -> None:
    eight = _grey8()
    Image.fromarray(eight).save(tmp_path / "eight.png")
    sixteen = Image.fromarray(_widen(eight))
    assert sixteen.mode == "I;16"
    sixteen.save(tmp_path / "sixteen.png")
    with Image.open(tmp_path / "sixteen.png") as check:
        assert check.mode.startswith("I")  # I;16 here; I in older Pillow

    got = open_rgb(tmp_path / "sixteen.png", SIZE)
    want = open_rgb(tmp_path / "eight.png", SIZE)

    assert not is_blank(got)
    assert np.abs(_pixels(got) - _pixels(want)).max() <= 1


@pytest.mark.parametrize("dtype", ["<u2", ">u2", "<i4"], ids=["I;16", "I;16B", "I"])
def test_16bit_grey_in_memory_goes_through_the_presets_scaled(dtype: str) -> None:
    eight = _grey8(seed=3)
    sixteen = Image.fromarray(_widen(eight, seed=3).astype(dtype))
    assert sixteen.mode == {"<u2": "I;16", ">u2": "I;16B", "<i4": "I"}[dtype]
    twin = Image.fromarray(eight)
    preset = EvalPreset(32, IMAGENET)

    got, want = preset.resize(sixteen).int(), preset.resize(twin).int()

    assert int((got - want).abs().max()) <= 1
    trained = TrainPreset(32, IMAGENET, "quality")(sixteen)
    assert float(trained.std()) > 0.1  # not the flat white a clip to 255 gives


def test_mode_I_values_outside_16_bits_are_clamped_not_wrapped() -> None:
    values = np.array([[-5, 0, 32768, 65535, 70000]], dtype=np.int32)
    rgb = EvalPreset(5, IMAGENET).resize(Image.fromarray(values)).int()
    # squashed to 5x5 without cropping: one column per value
    assert rgb[0, 0].tolist() == [0, 0, 128, 255, 255]


@pytest.mark.parametrize(("color_type", "channels"), [(2, 3), (6, 4)], ids=["RGB", "RGBA"])
def test_a_16bit_colour_png_matches_its_8bit_twin(
    tmp_path: Path, color_type: int, channels: int
) -> None:
    rgb = np.asarray(draw("red", np.random.default_rng(4)))
    alpha = np.linspace(40, 255, 48).astype(np.uint8)[None, :].repeat(48, 0)
    eight = rgb if channels == 3 else np.dstack([rgb, alpha])
    Image.fromarray(eight).save(tmp_path / "eight.png")
    sixteen = _widen(eight)
    if channels == 4:
        sixteen[..., 3] = alpha.astype(np.uint16) * 257  # jitter in alpha too would add 1 more
    (tmp_path / "sixteen.png").write_bytes(
        _png16(48, 48, color_type, sixteen.reshape(48, 48 * channels))
    )

    got = open_rgb(tmp_path / "sixteen.png", SIZE)
    want = open_rgb(tmp_path / "eight.png", SIZE)

    assert np.abs(_pixels(got) - _pixels(want)).max() <= 1


def test_a_16bit_grey_png_with_alpha_is_composited_over_white(tmp_path: Path) -> None:
    grey = _grey8(seed=5)
    alpha = np.linspace(0, 255, 48).astype(np.uint8)[None, :].repeat(48, 0)
    samples = np.dstack([_widen(grey), alpha.astype(np.uint16) * 257]).reshape(48, 96)
    (tmp_path / "la16.png").write_bytes(_png16(48, 48, 4, samples))

    got = open_rgb(tmp_path / "la16.png", SIZE)

    want = _over_white(np.dstack([grey, grey, grey, alpha]))
    assert np.abs(_pixels(got) - want).max() <= 1


def test_a_16bit_grey_png_with_a_transparent_grey_turns_that_grey_white(tmp_path: Path) -> None:
    eight = _grey8(seed=6)
    sixteen = _widen(eight)
    sixteen[:10, :10] = 12345  # a key colour no other pixel has
    sixteen[sixteen == 12346] = 12344
    Image.fromarray(sixteen).save(tmp_path / "keyed.png", transparency=12345)

    got = _pixels(open_rgb(tmp_path / "keyed.png", SIZE))

    assert (got[:10, :10] == 255).all()
    rest = np.ones(eight.shape, bool)
    rest[:10, :10] = False
    assert np.abs(got[rest] - eight[rest][:, None]).max() <= 1


# --- alpha and palettes -------------------------------------------------------------------------


def test_a_palette_png_with_transparency_is_composited_over_white_like_rgba(
    tmp_path: Path,
) -> None:
    palette = draw("stripes", np.random.default_rng(7)).quantize(16)
    palette.info["transparency"] = 0  # palette entry 0 is see-through
    palette.save(tmp_path / "p.png", transparency=0)
    rgba = np.asarray(palette.convert("RGBA"))
    assert (rgba[..., 3] == 0).any() and (rgba[..., 3] == 255).any()

    got = open_rgb(tmp_path / "p.png", SIZE)

    assert np.array_equal(_pixels(got), _over_white(rgba))


def test_an_la_png_is_composited_over_white(tmp_path: Path) -> None:
    grey = _grey8(seed=8)
    alpha = np.linspace(0, 255, 48).astype(np.uint8)[:, None].repeat(48, 1)
    Image.fromarray(np.dstack([grey, alpha])).save(tmp_path / "la.png")

    got = open_rgb(tmp_path / "la.png", SIZE)

    assert np.abs(_pixels(got) - _over_white(np.dstack([grey, grey, grey, alpha]))).max() <= 1


# --- CMYK JPEG ---------------------------------------------------------------------------------


def _without_adobe_marker(jpeg: bytes) -> bytes:
    """Drop the APP14 "Adobe" segment: readers then take CMYK samples as stored, not inverted."""
    start = jpeg.find(b"Adobe") - 4  # the marker (FF EE) and a two-byte length come first
    assert start > 0 and jpeg[start : start + 2] == b"\xff\xee", "Pillow wrote no Adobe marker"
    length = struct.unpack(">H", jpeg[start + 2 : start + 4])[0]
    return jpeg[:start] + jpeg[start + 2 + length :]


@pytest.mark.parametrize("adobe", [True, False], ids=["adobe-inverted", "plain"])
def test_a_cmyk_jpeg_has_the_colours_of_its_rgb_twin(tmp_path: Path, adobe: bool) -> None:
    rgb = draw("blue", np.random.default_rng(9), size=64)
    cmyk = rgb.convert("CMYK")
    path = tmp_path / "cmyk.jpg"
    if adobe:
        cmyk.save(path, quality=95)  # Photoshop's way: Adobe marker, inverted samples
    else:
        # Pillow always writes inverted CMYK with the marker; invert first and drop the marker
        # to get the other convention on disk: plain samples and no marker.
        ImageChops.invert(cmyk).save(path, quality=95)
        path.write_bytes(_without_adobe_marker(path.read_bytes()))
    with Image.open(path) as check:
        assert check.mode == "CMYK" and ("adobe" in check.info) == adobe

    got = open_rgb(path, SIZE)

    assert np.abs(_pixels(got) - np.asarray(rgb).astype(np.int32)).mean() < 4


# --- EXIF orientation ----------------------------------------------------------------------------

#: orientation tag -> how to store an upright picture so that a viewer shows it upright
STORED = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", sorted(STORED))
@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_an_exif_rotated_image_comes_out_upright(
    tmp_path: Path, orientation: int, suffix: str
) -> None:
    # red grows to the right, green downwards: every flip and turn changes the picture
    x, y = np.meshgrid(np.linspace(20, 235, 64), np.linspace(30, 225, 40))
    upright = Image.fromarray(np.dstack([x, y, np.full_like(x, 90)]).astype(np.uint8))
    upright.save(tmp_path / f"upright{suffix}", quality=95)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"rotated{suffix}"
    upright.transpose(STORED[orientation]).save(path, exif=exif, quality=95)

    got = open_rgb(path, SIZE)
    want = open_rgb(tmp_path / f"upright{suffix}", SIZE)

    assert got.size == want.size == (64, 40)
    assert np.abs(_pixels(got) - _pixels(want)).mean() < 3


# --- one conversion for training too ------------------------------------------------------------


def test_training_reads_a_16bit_png_like_its_8bit_twin(tmp_path: Path) -> None:
    eight = _grey8(seed=11)
    Image.fromarray(eight).save(tmp_path / "eight.png")
    Image.fromarray(_widen(eight, seed=11)).save(tmp_path / "sixteen.png")
    preset = EvalPreset(32, IMAGENET)
    data = ImageDataset(
        [Sample(tmp_path / "eight.png", 0), Sample(tmp_path / "sixteen.png", 0)], preset, 32
    )

    (want, _), (got, _) = data[0], data[1]

    assert torch.allclose(got, want, atol=1.5 / 255 / min(IMAGENET.std))
