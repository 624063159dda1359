"""Reading the generation parameters A1111/Forge and ComfyUI write into their files."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from gensift.models.genparams import (
    a1111_parameters,
    comfyui_parameters,
    read_parameters,
)

A1111 = (
    "masterpiece, a castle\non a hill\n"
    "Negative prompt: lowres, bad hands\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3141592, "
    'Size: 832x1216, Model hash: 1a2b3c, Model: juggernautXL, Lora hashes: "a: 1, b: 2", '
    "Version: f2.0.1"
)


def test_a1111_prompt_negative_and_settings_with_quoted_commas() -> None:
    p = a1111_parameters(A1111)
    assert p is not None and p.kind == "a1111"
    assert p.prompt == "masterpiece, a castle\non a hill"
    assert p.negative == "lowres, bad hands"
    assert p.settings["Seed"] == "3141592"
    assert p.settings["Sampler"] == "DPM++ 2M"
    assert p.settings["Model"] == "juggernautXL"
    assert p.settings["Lora hashes"] == "a: 1, b: 2"  # a quoted value keeps its commas
    assert p.settings["Version"] == "f2.0.1"


def test_a1111_without_negative_prompt_or_settings() -> None:
    p = a1111_parameters("just a prompt")
    assert p is not None and (p.prompt, p.negative, p.settings) == ("just a prompt", "", {})
    assert a1111_parameters("   ") is None


def test_comfyui_prompt_graph_follows_the_sampler_links() -> None:
    graph = {
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 42, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["6", 0], "negative": ["7", 0], "model": ["4", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "watermark", "clip": ["4", 1]}},
    }  # fmt: skip
    p = comfyui_parameters(json.dumps(graph))
    assert p is not None and p.kind == "comfyui"
    assert (p.prompt, p.negative) == ("a red fox", "watermark")
    assert p.settings["Seed"] == "42" and p.settings["Model"] == "sd15.safetensors"
    assert comfyui_parameters("{not json") is None
    assert comfyui_parameters("[1, 2]") is None


def test_read_from_png_text_chunks(tmp_path: Path) -> None:
    for key, text in (("parameters", A1111), ("prompt", json.dumps({"1": {"inputs": {}}}))):
        info = PngInfo()
        info.add_text(key, text)
        Image.new("RGB", (8, 8)).save(tmp_path / f"{key}.png", pnginfo=info)
    with Image.open(tmp_path / "parameters.png") as img:
        p = read_parameters(img)
    assert p is not None and p.settings["Seed"] == "3141592"
    with Image.open(tmp_path / "prompt.png") as img:
        assert read_parameters(img) is None  # a graph with nothing to show
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with Image.open(tmp_path / "plain.png") as img:
        assert read_parameters(img) is None
