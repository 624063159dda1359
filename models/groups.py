"""Which example images are variants of one generation, so a split keeps them together.

A user's example folders are full of near-copies: the four images of one batch with
consecutive seeds are different generations, but a hires-fix pass, an img2img touch-up
or an upscale of one seed is the same picture again. With one copy on each side of a
split, validation measures memory, not skill. Two images are in one group when

* the generator wrote the same generation parameters into them: AUTOMATIC1111 / Forge
  ``parameters`` (prompt, negative prompt and seed; in a PNG text chunk or the EXIF
  UserComment of a JPEG or WebP) or ComfyUI's ``prompt`` graph (which holds the seed); or
* their perceptual hashes (imagehash's DCT hash, 64 bits) differ in at most
  :data:`NEAR_DUPLICATE_BITS` bits.

Groups are the connected components of both relations together.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence

import imagehash
from PIL import Image

from gensift.models.genparams import raw_parameters, split_a1111

#: perceptual hashes at most this many bits apart are the same picture
NEAR_DUPLICATE_BITS = 4
_HASH_BITS = 64
_SEED = re.compile(r"(?:^|,\s*)Seed:\s*(-?\d+)")


def perceptual_hash(img: Image.Image) -> int:
    """The 64-bit DCT perceptual hash of ``img`` as an integer."""
    return int(str(imagehash.phash(img)), 16)


def generation_key(img: Image.Image) -> str | None:
    """A key equal for images of one generation, from the parameters the generator wrote."""
    raw = raw_parameters(img)
    if raw is None:
        return None
    kind, text = raw
    return _a1111_key(text) if kind == "a1111" else _comfyui_key(text)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _a1111_key(text: str) -> str | None:
    """``<prompt>\\nNegative prompt: <neg>\\nSteps: 20, ..., Seed: 42, ...`` -> prompts and seed."""
    prompt, negative, settings = split_a1111(text)
    seed = _SEED.search(settings)
    if not (prompt or negative) and seed is None:
        return None
    return "a1111:" + _digest(prompt, negative, seed.group(1) if seed else "")


def _comfyui_key(text: str) -> str | None:
    try:
        graph = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(graph, dict) or not graph:
        return None
    return "comfyui:" + _digest(json.dumps(graph, sort_keys=True, separators=(",", ":")))


class _Components:
    """Union-find over 0..n-1."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def group_ids(
    keys: Sequence[str | None],
    hashes: Sequence[int | None],
    max_bits: int = NEAR_DUPLICATE_BITS,
) -> list[int]:
    """Group number of each image: equal generation keys or hashes within ``max_bits``.

    Near pairs are found by pigeonhole: two 64-bit hashes at most ``max_bits`` apart agree
    exactly on at least one of ``max_bits + 1`` bands, so only images sharing a band value
    are compared (fast for tens of thousands of images, not quadratic).
    """
    n = len(keys)
    if len(hashes) != n:
        raise ValueError("one key and one hash per image")
    parts = _Components(n)
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key is not None:
            parts.join(first.setdefault(key, i), i)
    # equal hashes (a folder of black frames) are joined at once and compared as one
    by_hash: dict[int, int] = {}
    for i, h in enumerate(hashes):
        if h is not None:
            parts.join(by_hash.setdefault(h, i), i)
    unique = list(by_hash)
    bands = max_bits + 1
    width = -(-_HASH_BITS // bands)
    for band in range(bands):
        shift, mask = band * width, (1 << width) - 1
        buckets: dict[int, list[int]] = {}
        for h in unique:
            buckets.setdefault((h >> shift) & mask, []).append(h)
        for members in buckets.values():
            for pos, a in enumerate(members):
                for b in members[pos + 1 :]:
                    if (a ^ b).bit_count() <= max_bits:
                        parts.join(by_hash[a], by_hash[b])
    roots: dict[int, int] = {}
    return [roots.setdefault(parts.find(i), len(roots)) for i in range(n)]
