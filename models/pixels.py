"""Files -> upright 8-bit RGB pixels: the one way gensift reads an image (no torch).

Every path that looks at pixels goes through :func:`open_rgb`: training, evaluation,
``sort`` and ``watch`` (through :mod:`presets`, which turns its images into tensors),
and the review page's thumbnails, which must not wait for torch to load.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageChops, ImageOps


def open_rgb(
    source: Path | IO[bytes], image_size: int, formats: Sequence[str] | None = None
) -> Image.Image:
    """Decode ``source`` (a path or a binary file object) fully into an upright RGB image.

    ``formats`` limits which decoders Pillow may try (None = all). Images over
    Pillow's ``Image.MAX_IMAGE_PIXELS`` are refused with ``DecompressionBombError``
    before any pixel is decoded. JPEGs are decoded in draft mode at no less than
    twice ``image_size``, which is several times faster for large files and
    loses nothing at the size the network sees. The EXIF orientation is applied,
    so a photo stored on its side is seen as it is shown. Raises ``OSError`` (or
    a Pillow subclass) for unreadable files.

    This is the one way gensift turns a file into pixels: training, evaluation,
    ``sort`` and ``watch`` (and its blank rule) all see what it returns.
    """
    with Image.open(source, formats=formats) as img:
        limit = Image.MAX_IMAGE_PIXELS
        if limit and img.width * img.height > limit:
            raise Image.DecompressionBombError(
                f"{img.width}x{img.height} pixels is over the decompression-bomb limit "
                f"of {limit} pixels"
            )
        if img.format == "JPEG":
            img.draft("RGB", (2 * image_size, 2 * image_size))
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
        if img.mode == "CMYK" and img.format == "JPEG" and "adobe" not in img.info:
            # Pillow reads every CMYK JPEG as Adobe's inverted samples; without Adobe's
            # APP14 marker the file holds plain ones (what libjpeg-based readers assume).
            return to_rgb(ImageChops.invert(img))
        return to_rgb(img)


#: Greyscale modes with more than 8 bits a sample. Pillow reads a 16-bit greyscale PNG as
#: I;16 (as I, 32-bit, in older Pillow); its convert() clips these at 255 instead of scaling.
WIDE_GREY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
#: Modes with an alpha channel, composited over white.
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


def to_rgb(img: Image.Image) -> Image.Image:
    """Any decoded mode -> 8-bit RGB: wide grey scaled down, transparency over white."""
    if img.mode in WIDE_GREY_MODES:
        img = _grey_to_8bit(img)
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        # Composite transparency (an alpha channel, or a palette entry or key colour marked
        # transparent) over white rather than letting it turn black.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _grey_to_8bit(img: Image.Image) -> Image.Image:
    """16-bit grey -> L, rounding v * 255 / 65535 (v / 257): scaled, never clipped.

    16 bits is the depth of every sample here: PNG stores 16-bit samples scaled to the
    full 0..65535 range even when its sBIT chunk says fewer bits are significant, and
    Pillow's I images from PNG hold 16-bit samples (other values are clamped to that
    range). A key grey marked transparent (PNG tRNS) becomes an alpha channel, matched
    at full depth so that neighbouring greys stay opaque.
    """
    wide = np.asarray(img)  # uint16 in the file's byte order, or int32 for mode I
    clamped = np.clip(wide, 0, 65535).astype(np.uint32)
    grey = Image.fromarray(((clamped + 128) // 257).astype(np.uint8))
    key = img.info.get("transparency")
    if isinstance(key, int):
        alpha = np.where(wide == key, 0, 255).astype(np.uint8)
        return Image.merge("LA", (grey, Image.fromarray(alpha)))
    return grey
