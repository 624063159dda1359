"""Helpers for the sort, undo and crash tests: inboxes of drawn and broken files, configs,
and the ledger check that every file is in exactly one place."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
from conftest import draw
from PIL import Image

from gensift.daemon.routing.journal import MOVING_ACTIONS, Entry, Journal
from gensift.models.backbones import build_classifier
from gensift.models.checkpoint import CheckpointMeta, save_checkpoint
from gensift.models.presets import IMAGENET

KINDS = {"keep": 6, "reject": 6, "red": 3, "blue": 3, "stripes": 3}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A few hundred bytes of PNG that claim ``width`` x ``height`` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 1000)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def fill_inbox(
    inbox: Path, *, seed: int = 0, broken: bool = True, scale: int = 1
) -> dict[Path, str]:
    """Drawn images of every kind (and, with ``broken``, one file of each broken kind);
    returns {path: sha256} of the files ``gensift sort`` should decide."""
    inbox.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for kind, n in KINDS.items():
        for i in range(n * scale):
            draw(kind, rng).save(inbox / f"{kind}_{i:03d}.png")
    if broken:
        (inbox / "zero.png").write_bytes(b"")
        (inbox / "text.png").write_text("not an image\n")
        whole = (inbox / "keep_000.png").read_bytes()
        (inbox / "truncated.png").write_bytes(whole[: len(whole) // 2])
        (inbox / "bomb.png").write_bytes(png_bomb())
        Image.new("RGB", (48, 48)).save(inbox / "black.png")
    return {p.absolute(): sha(p) for p in sorted(inbox.glob("*.png"))}


BROKEN = {"zero.png": "corrupt", "text.png": "corrupt", "truncated.png": "corrupt",
          "bomb.png": "corrupt", "black.png": "blank"}  # fmt: skip


def tiny_checkpoint(folder: Path, *, favour: str | None = None) -> Path:
    """An untrained feature checkpoint (classes ``a`` and ``b``), saved in a moment: with a
    feature threshold of 0.5 or less every image it sees is moved to one of its classes
    (which one depends on the random weights; with ``favour``, always that one)."""
    path = folder / "tiny.safetensors"
    model = build_classifier("resnet18", 2, "none")
    if favour is not None:  # a head that ignores the image: p(favour) = 0.9997 for all
        head = model.get_submodule("head")
        with torch.no_grad():
            head.weight.zero_()
            head.bias.copy_(torch.tensor([4.0, -4.0] if favour == "a" else [-4.0, 4.0]))
    meta = CheckpointMeta(
        stage="feature",
        arch="resnet18",
        classes=["a", "b"],
        image_size=32,
        normalization=IMAGENET,
        temperature=1.0,
        thresholds={"threshold": 0.9, "reached": True},
    )
    save_checkpoint(path, model.state_dict(), meta)
    return path


def write_config(
    folder: Path,
    quality: Path | None,
    feature: Path | None,
    *,
    quality_threshold: float | str = 0.6,
    feature_threshold: float | str = 0.5,
    reject_action: str = "quarantine",
    uncertain_action: str = "leave",
    on_conflict: str = "rename",
    batch_size: int = 4,
    inbox: Path | None = None,
    root: Path | None = None,
    settle_seconds: float = 0.0,
    rescan_seconds: float = 300.0,
    idle_unload_seconds: float = 0.0,
) -> Path:
    """A config for tests: CPU, output (unless ``root``) and journal under ``folder``;
    ``inbox`` is the folder ``gensift watch`` watches."""
    text = f"""
[watch]
paths = [{json.dumps(str(inbox or folder / "inbox"))}]
patterns = ["*.png", "*.jpg"]
settle_seconds = {settle_seconds}
rescan_seconds = {rescan_seconds}
[output]
root = {json.dumps(str(root or folder / "out"))}
reject_action = "{reject_action}"
uncertain_action = "{uncertain_action}"
on_conflict = "{on_conflict}"
[inference]
device = "cpu"
batch_size = {batch_size}
idle_unload_seconds = {idle_unload_seconds}
[stages.quality]
checkpoint = {json.dumps(str(quality or ""))}
reject_classes = ["reject"]
threshold = {json.dumps(quality_threshold)}
[stages.feature]
checkpoint = {json.dumps(str(feature or ""))}
threshold = {json.dumps(feature_threshold)}
[journal]
path = {json.dumps(str(folder / "journal.sqlite3"))}
[log]
level = "INFO"
"""
    path = folder / "gensift.toml"
    path.write_text(text)
    return path


def decisions(journal: Path) -> list[Entry]:
    """Every decision row (not undo's restore rows), oldest first."""
    with Journal.open_readonly(journal) as j:
        return [e for e in j.entries() if e.action != "restore"]


def check_ledger(
    originals: dict[Path, str],
    journal: Path,
    out_root: Path,
    preexisting: frozenset[Path] = frozenset(),
) -> dict[Path, Entry]:
    """Every file has exactly one final decision and is exactly where that decision says,
    byte-identical; no file under the output root is unaccounted for; no intent is left."""
    rows = decisions(journal)
    assert not [e for e in rows if e.state == "intent"], "unrepaired intent rows"
    final: dict[Path, Entry] = {}
    for e in rows:
        if e.state in ("done", "skipped"):
            assert e.source not in final, f"{e.source} decided twice"
            final[e.source] = e
    placed = set()
    for path, digest in originals.items():
        assert path in final, f"{path} has no decision"
        e = final[path]
        if e.state == "done" and e.action in MOVING_ACTIONS:
            assert e.destination is not None
            assert not path.exists(), f"{path} is both at its source and at {e.destination}"
            assert sha(e.destination) == digest
            assert e.destination.is_relative_to(out_root)
            placed.add(e.destination)
        elif e.state == "done" and e.action in ("delete", "trash"):
            assert not path.exists()
        else:
            assert sha(path) == digest, f"{path} should be untouched ({e.action}, {e.state})"
    if out_root.exists():
        on_disk = {p for p in out_root.rglob("*") if p.is_file()}
        extra = on_disk - placed - preexisting
        assert not extra, f"unaccounted files under the output root: {sorted(extra)}"
    return final


def run_harness(script: Path, *args: object, timeout: float = 1800) -> list[dict]:
    """Run a kill-and-restart harness script; its JSON lines, after checking it succeeded."""
    proc = subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]
