"""The generation parameters an image generator wrote into its files.

AUTOMATIC1111 and Forge write one ``parameters`` text: the prompt, a ``Negative
prompt:`` line, and a last line of ``Key: value`` settings (``Steps: 20, Sampler:
Euler a, Seed: 42, Model: sdxl, ...``); in a PNG text chunk, or the EXIF
UserComment of a JPEG or WebP. ComfyUI writes its graph as ``prompt`` JSON (and the
editor's ``workflow``): node ids mapping to ``{"class_type", "inputs"}``.

:func:`raw_parameters` finds the text (the split in :mod:`groups` keys on it);
:func:`read_parameters` reads it for a person (the review page).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
#: ``Key: value`` pairs of A1111's settings line; a value may be quoted and hold commas
_SETTING = re.compile(r'\s*([\w][\w ./()-]*):\s*("(?:[^"\\]|\\.)*"|[^,]*)(?:,|$)')

Kind = Literal["a1111", "comfyui"]


@dataclass(frozen=True)
class GenParams:
    """What a person wants to see of how an image was made."""

    kind: Kind
    prompt: str = ""
    negative: str = ""
    settings: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "prompt": self.prompt,
            "negative": self.negative,
            "settings": self.settings,
        }


def raw_parameters(img: Image.Image) -> tuple[Kind, str] | None:
    """The generator's own text about ``img`` and whose format it is, if it wrote any."""
    info = getattr(img, "text", None) or img.info
    if isinstance(info.get("parameters"), str):
        return "a1111", info["parameters"]
    if isinstance(info.get("prompt"), str):
        return "comfyui", info["prompt"]
    comment = exif_user_comment(img)
    return ("a1111", comment) if comment else None


def read_parameters(img: Image.Image) -> GenParams | None:
    """Prompt, negative prompt and settings (seed, sampler, model, ...), where written."""
    raw = raw_parameters(img)
    if raw is None:
        return None
    kind, text = raw
    return a1111_parameters(text) if kind == "a1111" else comfyui_parameters(text)


def split_a1111(text: str) -> tuple[str, str, str]:
    """``parameters`` -> (prompt, negative prompt, settings line)."""
    lines = text.strip().splitlines()
    settings = ""
    if lines and (lines[-1].startswith("Steps:") or "Seed:" in lines[-1]):
        settings = lines.pop()
    prompt, negative = [], []
    target = prompt
    for line in lines:
        if line.startswith("Negative prompt:"):
            target = negative
            line = line.removeprefix("Negative prompt:").strip()
        target.append(line)
    return "\n".join(prompt).strip(), "\n".join(negative).strip(), settings


def a1111_parameters(text: str) -> GenParams | None:
    prompt, negative, line = split_a1111(text)
    settings = {m.group(1).strip(): m.group(2).strip().strip('"') for m in _SETTING.finditer(line)}
    settings = {k: v for k, v in settings.items() if k}
    if not (prompt or negative or settings):
        return None
    return GenParams("a1111", prompt, negative, settings)


#: ComfyUI node inputs worth showing, by the name they have in most graphs
_COMFY_SETTINGS = {
    "seed": "Seed",
    "noise_seed": "Seed",
    "steps": "Steps",
    "cfg": "CFG scale",
    "sampler_name": "Sampler",
    "scheduler": "Schedule type",
    "ckpt_name": "Model",
    "unet_name": "Model",
    "width": "Width",
    "height": "Height",
}


def comfyui_parameters(text: str) -> GenParams | None:
    """The sampler's settings and the prompts wired to it, from a ComfyUI ``prompt`` graph."""
    try:
        graph = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(graph, dict):
        return None
    nodes = {k: v for k, v in graph.items() if isinstance(v, dict)}
    settings: dict[str, str] = {}
    prompt = negative = ""
    for node in nodes.values():
        inputs = node.get("inputs")
        if not isinstance(inputs, dict):
            continue
        for key, name in _COMFY_SETTINGS.items():
            value = inputs.get(key)
            if isinstance(value, str | int | float) and name not in settings:
                settings[name] = str(value)
        if "positive" in inputs or "negative" in inputs:  # a sampler: follow its prompt links
            prompt = prompt or _linked_text(nodes, inputs.get("positive"))
            negative = negative or _linked_text(nodes, inputs.get("negative"))
    if not (prompt or negative or settings):
        return None
    return GenParams("comfyui", prompt, negative, settings)


def _linked_text(nodes: dict[str, Any], link: object) -> str:
    """The ``text`` of the node a ``[node_id, output]`` link points at, if it has one."""
    if not (isinstance(link, list) and link):
        return ""
    node = nodes.get(str(link[0]))
    inputs = node.get("inputs") if isinstance(node, dict) else None
    text = inputs.get("text") if isinstance(inputs, dict) else None
    return text if isinstance(text, str) else ""


def exif_user_comment(img: Image.Image) -> str | None:
    """The EXIF UserComment, where A1111 writes the parameters of a JPEG or WebP."""
    try:
        raw = img.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except Exception:  # noqa: BLE001 - damaged EXIF is only a missing key
        return None
    if isinstance(raw, str):
        return raw.strip("\0 ") or None
    if not isinstance(raw, bytes) or len(raw) <= 8:
        return None
    prefix, body = raw[:8], raw[8:]
    if prefix.startswith(b"UNICODE"):
        # piexif (A1111) writes UTF-16 big-endian; some tools write little-endian
        encoding = "utf-16-be" if body[:1] == b"\0" else "utf-16-le"
        text = body.decode(encoding, errors="replace")
    else:
        text = body.decode("utf-8", errors="replace")
    return text.strip("\0 ") or None
