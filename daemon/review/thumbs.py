"""Thumbnails for the review page, made on request and cached by content hash.

The page's server makes them in its own process (never on the daemon's inference
path), with the one image reader every other path uses (``models.pixels.open_rgb``:
16-bit, CMYK, palette and EXIF-rotated images come out right), and keeps them as
``<cache>/<sha256[:2]>/<sha256>.jpg``: a file that moves or is renamed keeps its
thumbnail, and a thumbnail is never stale because its name is its content.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from PIL import Image

from gensift.models.pixels import open_rgb

THUMB_SIDE = 256


class Thumbnails:
    def __init__(self, cache: Path, side: int = THUMB_SIDE) -> None:
        self.cache = cache
        self.side = side

    def path_for(self, sha256: str) -> Path:
        return self.cache / sha256[:2] / f"{sha256}.jpg"

    def get(self, source: Path, sha256: str) -> Path:
        """The thumbnail of ``source`` (whose content hash is ``sha256``), made if missing.

        Raises ``OSError`` (or PIL's errors) when the image cannot be read.
        """
        target = self.path_for(sha256)
        if target.exists():
            return target
        img = open_rgb(source, self.side)
        img.thumbnail((self.side, self.side), Image.Resampling.LANCZOS)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".thumb-", suffix=".jpg")
        try:
            with os.fdopen(fd, "wb") as out:
                img.save(out, "JPEG", quality=85)
            Path(tmp).replace(target)  # two requests for one thumbnail both succeed
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target
