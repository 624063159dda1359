"""Files -> network inputs, off the inference thread; the rules that need no model.

Each file is read once: its bytes are hashed (the journal's content hash) and
decoded from memory by the presets' ``open_rgb`` (the same decode training uses:
upright, 16-bit scaled to 8, transparency over white), limited to the formats
the watch patterns name and to Pillow's decompression-bomb limit, then resized
by the eval preset of each stage (uint8; normalising is one batched op on the
inference thread). The blank rule looks at that converted image.

A file that cannot be decoded is ``corrupt`` only once it has settled: its
size and mtime unchanged across two observations at least ``settle_seconds``
apart on gensift's own monotonic clock (never the file's mtime against the
local clock: a network share stamps files with another machine's clock). In
the daemon the first observation is the watcher's (:class:`Observation`); a
file not settled yet is ``unsettled`` and comes back once it is. ``sort`` has
no watcher, so the decoder looks again itself ``settle_seconds`` later. A file
that changed while it was read is ``unsettled`` too. A settled file is read
and decoded once more before it is given up on. A decoded image whose pixels
are near-constant (the black square a safety filter returns) is ``blank``.

:class:`DecodePool` runs this in a bounded pool of threads (Pillow and hashlib
release the GIL) and yields results in input order with at most ``window``
files in flight, so memory stays bounded whatever the folder size.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from PIL import Image, ImageStat, UnidentifiedImageError

from gensift.daemon.routing.records import FileInfo, FileState
from gensift.daemon.runtime.watcher import Observation
from gensift.models.predictor import PresetKey
from gensift.models.presets import EvalPreset, open_rgb

SUFFIX_FORMATS: Mapping[str, str] = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
}
#: Largest per-channel standard deviation (0..255) of an image that counts as blank.
BLANK_STDDEV = 2.0

Status = Literal[
    "ok", "blank", "corrupt", FileState.UNSETTLED, FileState.UNREADABLE, FileState.GONE
]


@dataclass(frozen=True)
class Decoded:
    """One file after decoding: ``inputs`` (uint8, per preset) only when ``status`` is ok."""

    file: FileInfo
    status: Status
    note: str = ""
    inputs: Mapping[PresetKey, torch.Tensor] = field(default_factory=dict)


def formats_for(patterns: Sequence[str]) -> tuple[str, ...]:
    """The Pillow formats the watch patterns allow (all supported ones if none is recognised)."""
    found = {
        fmt
        for pattern in patterns
        for suffix, fmt in SUFFIX_FORMATS.items()
        if pattern.lower().endswith(suffix)
    }
    return tuple(sorted(found or set(SUFFIX_FORMATS.values())))


def is_blank(img: Image.Image) -> bool:
    """Near-constant pixels in every channel, measured at full resolution (a thumbnail
    would average a thin line on a plain background away)."""
    return max(ImageStat.Stat(img).stddev) <= BLANK_STDDEV


@dataclass(frozen=True)
class Decoder:
    """Decode one path into a :class:`Decoded`; safe to call from several threads.

    ``observed`` gives the watcher's observation of a path (the daemon); without it
    (``sort``) an undecodable file is looked at again ``settle_seconds`` later, in the
    calling thread.
    """

    presets: Mapping[PresetKey, EvalPreset]
    formats: tuple[str, ...]
    settle_seconds: float = 2.0
    observed: Callable[[Path], Observation | None] | None = None
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], object] = time.sleep

    def __call__(self, path: Path) -> Decoded:
        try:
            began = self.clock()
            first = self._attempt(path)
            if first.status != "corrupt":
                return first
            if not self._settled(path, first.file, began):
                return Decoded(first.file, FileState.UNSETTLED, f"not decodable yet ({first.note})")
            second = self._attempt(path)  # a settled file gets a second read
            if second.status == "corrupt" and not _same(second.file, first.file):
                return Decoded(
                    second.file, FileState.UNSETTLED, "the file changed since it was read"
                )
            return second
        except Exception as exc:  # noqa: BLE001 - one odd file must not stop the run
            return Decoded(FileInfo(path), FileState.UNREADABLE, f"{type(exc).__name__}: {exc}")

    def _settled(self, path: Path, read: FileInfo, began: float) -> bool:
        """Whether ``path``, as ``read``, was seen unchanged ``settle_seconds`` apart."""
        if self.observed is not None:
            seen = self.observed(path)
            return (
                seen is not None
                and (seen.size, seen.mtime_ns) == (read.size, read.mtime_ns)
                and self.clock() - seen.since >= self.settle_seconds
            )
        left = began + self.settle_seconds - self.clock()
        if left > 0:
            self.sleep(left)
        try:
            st = path.stat()
        except OSError:
            return False
        return (st.st_size, st.st_mtime_ns) == (read.size, read.mtime_ns)

    def _attempt(self, path: Path) -> Decoded:
        try:
            before = path.stat()
            if not stat.S_ISREG(before.st_mode):  # opening a FIFO would wait for a writer
                return Decoded(FileInfo(path), FileState.UNREADABLE, "not a regular file")
            data = path.read_bytes()
            after = path.stat()
        except FileNotFoundError:
            return Decoded(
                FileInfo(path), FileState.GONE, "the file disappeared before it was read"
            )
        except OSError as exc:
            return Decoded(
                FileInfo(path), FileState.UNREADABLE, f"cannot read: {exc.strerror or exc}"
            )
        info = FileInfo(path, len(data), after.st_mtime_ns, hashlib.sha256(data).hexdigest())
        changed = (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns)
        if changed or len(data) != after.st_size:
            return Decoded(info, FileState.UNSETTLED, "the file changed while it was read")
        size = max(p.image_size for p in self.presets.values())
        try:
            img = open_rgb(io.BytesIO(data), size, self.formats)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            return Decoded(info, "corrupt", self._problem(data, exc))
        if is_blank(img):
            return Decoded(info, "blank", f"near-constant pixels ({img.width}x{img.height})")
        inputs = {key: preset.resize(img) for key, preset in self.presets.items()}
        return Decoded(info, "ok", inputs=inputs)

    def _problem(self, data: bytes, exc: Exception) -> str:
        if not data:
            return "empty file (0 bytes)"
        if isinstance(exc, UnidentifiedImageError):
            return f"not a {'/'.join(self.formats)} image"
        return f"{type(exc).__name__}: {exc}"


def _same(a: FileInfo, b: FileInfo) -> bool:
    return (a.size, a.mtime_ns) == (b.size, b.mtime_ns)


def default_workers(device: torch.device) -> int:
    """Decoder threads. With a GPU, the cores the model does not need: all but two (the
    thread that launches the forward passes and the one that journals and moves files),
    since decoding, not the GPU, sets the pace there. On the CPU the model is the
    bottleneck and uses every core, so half of them decode."""
    cpus = os.cpu_count() or 1
    return max(1, cpus - 2) if device.type == "cuda" else max(1, cpus // 2)


class DecodePool:
    """Decode paths in a bounded thread pool; results come back in input order."""

    def __init__(self, decode: Callable[[Path], Decoded], workers: int, window: int) -> None:
        self._decode = decode
        self._workers = max(1, workers)
        self._window = max(self._workers, window)

    def map(self, paths: Iterable[Path]) -> Iterator[Decoded]:
        pool = ThreadPoolExecutor(self._workers, thread_name_prefix="gensift-decode")
        pending: deque[Future[Decoded]] = deque()
        try:
            for path in paths:
                pending.append(pool.submit(self._decode, path))
                if len(pending) >= self._window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
