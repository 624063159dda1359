"""Variants of one generation are found, from the parameters the generator wrote or the pixels."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from gensift.daemon.demo.samples import TEXTURES, texture
from gensift.models.groups import generation_key, group_ids, perceptual_hash

A1111 = (
    "a castle on a hill, golden hour\nNegative prompt: blurry, lowres\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: {seed}, Size: 512x512, Model: sdxl"
)


def _png(img: Image.Image, **text: str) -> Image.Image:
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", pnginfo=info)
    buffer.seek(0)
    return Image.open(buffer)


def _picture(seed: int) -> Image.Image:
    return texture(TEXTURES[seed % 3], np.random.default_rng(seed))


def test_a1111_parameters_key_on_prompt_and_seed() -> None:
    first = generation_key(_png(_picture(0), parameters=A1111.format(seed=42)))
    hires = A1111.format(seed=42).replace("Steps: 20", "Steps: 30, Hires upscale: 2")
    assert first is not None and first.startswith("a1111:")
    assert generation_key(_png(_picture(1), parameters=hires)) == first  # same seed and prompt
    assert generation_key(_png(_picture(2), parameters=A1111.format(seed=43))) != first
    other = A1111.format(seed=42).replace("castle", "cottage")
    assert generation_key(_png(_picture(3), parameters=other)) != first


def test_comfyui_prompt_graph_key_ignores_key_order() -> None:
    graph = {"3": {"class_type": "KSampler", "inputs": {"seed": 7, "steps": 20}}}
    reordered = {"3": {"inputs": {"steps": 20, "seed": 7}, "class_type": "KSampler"}}
    a = generation_key(_png(_picture(0), prompt=json.dumps(graph)))
    b = generation_key(_png(_picture(1), prompt=json.dumps(reordered)))
    assert a is not None and a == b
    graph["3"]["inputs"]["seed"] = 8
    assert generation_key(_png(_picture(2), prompt=json.dumps(graph))) != a
    assert generation_key(_png(_picture(3), prompt="{not json")) is None


def test_a1111_jpeg_exif_user_comment() -> None:
    text = A1111.format(seed=5)
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + text.encode("utf-16-be")
    buffer = io.BytesIO()
    _picture(0).save(buffer, format="JPEG", exif=exif.tobytes())
    buffer.seek(0)
    png = _png(_picture(1), parameters=text)
    assert generation_key(Image.open(buffer)) == generation_key(png) is not None


def test_no_parameters_no_key() -> None:
    assert generation_key(_png(_picture(0))) is None


def test_near_duplicates_share_a_group_and_distinct_pictures_do_not(tmp_path: Path) -> None:
    pictures = [_picture(seed) for seed in range(30)]
    copies = [
        pictures[0].resize((128, 128)),  # an upscale
        pictures[1].convert("L").convert("RGB"),  # a greyscale copy
    ]
    buffer = io.BytesIO()
    pictures[2].save(buffer, format="JPEG", quality=60)  # recompressed
    copies.append(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    hashes = [perceptual_hash(p) for p in pictures + copies]
    ids = group_ids([None] * len(hashes), hashes)
    assert ids[30] == ids[0] and ids[31] == ids[1] and ids[32] == ids[2]
    assert len(set(ids[:30])) == 30  # thirty different textures are thirty groups


def test_keys_and_hashes_join_transitively() -> None:
    # 0 and 1 share parameters, 1 and 2 share pixels: one group of three
    ids = group_ids(
        ["k", "k", None, None], [0b0, 0xFFFF_0000_0000_0000, 0xFFFF_0000_0000_0001, 0xFF]
    )
    assert ids[0] == ids[1] == ids[2] != ids[3]


@pytest.mark.parametrize("bits", [0, 4])
def test_band_search_finds_every_pair_a_full_comparison_finds(bits: int) -> None:
    rng = np.random.default_rng(bits)
    base = [int(x) for x in rng.integers(0, 2**63, 200, dtype=np.int64)]
    # flip up to `bits` random bits of some hashes
    near = [h ^ sum(1 << int(b) for b in rng.choice(64, bits, replace=False)) for h in base[:50]]
    hashes = base + near + [base[0]] * 5
    ids = group_ids([None] * len(hashes), hashes, max_bits=bits)
    for i in range(len(hashes)):
        for j in range(i + 1, len(hashes)):
            if (hashes[i] ^ hashes[j]).bit_count() <= bits:
                assert ids[i] == ids[j]
