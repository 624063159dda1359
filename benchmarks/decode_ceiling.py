"""The decode ceiling of ``benchmarks/sort_throughput.py``: files -> network inputs, no model.

How fast can the files be turned into uint8 network inputs with every core at it?
Four ways, each a function that does the work and returns how many images came
out (the caller times it):

- :func:`gensift_threads`: gensift's own :class:`~gensift.daemon.runtime.decode.Decoder`
  (read, hash, Pillow decode, blank rule, resize) in its own ``DecodePool`` with
  ``workers`` threads: what ``sort`` would get from more decoder threads.
- :func:`gensift_processes`: the same ``Decoder`` in a ``ProcessPoolExecutor``,
  each result sent back as uint8 arrays (pickled: the copy is part of the cost).
- :func:`pillow_threads` and :func:`pyspng_threads`: read and decode with Pillow
  (gensift's ``open_rgb``) or with pyspng (libspng), then the same
  ``EvalPreset.resize``, in threads; no hash, no blank rule. Their ratio is what a
  faster PNG decoder could win; pyspng is optional and not a gensift dependency.
  pyspng 0.1.4 holds the GIL while libspng decodes (its binding has no
  ``gil_scoped_release``), so in threads only the resize runs in parallel;
  Pillow releases the GIL in its decoders.

:func:`pyspng_difference` says whether pyspng's pixels are Pillow's for the same files.
The pyspng path here is a measurement, not a reader gensift could ship as is: it
ignores EXIF orientation and 16-bit samples, which ``open_rgb`` handles.
"""

from __future__ import annotations

import importlib
import io
import itertools
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from functools import cache
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from PIL import Image

from gensift.daemon.config import WatchSettings
from gensift.daemon.runtime.decode import DecodePool, Decoder, formats_for
from gensift.models.presets import IMAGENET, EvalPreset, open_rgb


def optional(name: str) -> ModuleType | None:
    """``import name``, or None where it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def version_of(name: str) -> str:
    """The installed version of an optional module, or ``not installed``."""
    module = optional(name)
    return getattr(module, "__version__", "installed") if module else "not installed"


def decoder_for(image_size: int) -> Decoder:
    """The decoder ``sort`` builds for two stages at ``image_size`` with ImageNet statistics."""
    preset = EvalPreset(image_size, IMAGENET)
    formats = formats_for(WatchSettings().patterns)
    return Decoder(presets={(image_size, IMAGENET): preset}, formats=formats)


def _check(paths: Sequence[Path], ok: int, how: str) -> int:
    if ok != len(paths):
        raise RuntimeError(f"{how}: {len(paths) - ok} of {len(paths)} images did not decode")
    return ok


# -- gensift's Decoder: threads and processes ----------------------------------------------


def gensift_threads(paths: Sequence[Path], decoder: Decoder, workers: int) -> int:
    """Every path through ``decoder`` in gensift's ``DecodePool`` of ``workers`` threads."""
    pool = DecodePool(decoder, workers, window=2 * workers)
    return _check(paths, sum(d.status == "ok" for d in pool.map(paths)), "Decoder in threads")


@cache
def _worker_decoder(image_size: int) -> Decoder:
    """One per worker process, built on its first file. One torch thread each, as in a
    DataLoader worker: the processes are the parallelism (and a forked child must not
    reuse the parent's OpenMP pool)."""
    torch.set_num_threads(1)
    return decoder_for(image_size)


def decode_to_arrays(path: Path, image_size: int) -> tuple[str, list[np.ndarray]]:
    """In a worker process: decode ``path``; the status and the uint8 inputs as arrays."""
    decoded = _worker_decoder(image_size)(path)
    return decoded.status, [t.numpy() for t in decoded.inputs.values()]


def start_processes(workers: int, image_size: int, warm: Sequence[Path]) -> ProcessPoolExecutor:
    """A process pool whose workers have imported gensift and decoded a file (untimed)."""
    pool = ProcessPoolExecutor(workers)
    probe = list(warm[:1]) * (2 * workers)
    list(pool.map(decode_to_arrays, probe, itertools.repeat(image_size)))
    return pool


def gensift_processes(paths: Sequence[Path], pool: ProcessPoolExecutor, image_size: int) -> int:
    """Every path through gensift's ``Decoder`` in ``pool``; results back as uint8 tensors."""
    ok = 0
    for status, arrays in pool.map(decode_to_arrays, paths, itertools.repeat(image_size)):
        tensors = [torch.from_numpy(a) for a in arrays]  # what the inference thread batches
        ok += status == "ok" and len(tensors) > 0
    return _check(paths, ok, "Decoder in processes")


# -- Pillow against pyspng -----------------------------------------------------------------


def pillow_reader(preset: EvalPreset) -> Callable[[Path], torch.Tensor]:
    """Read, decode with Pillow (``open_rgb``), resize: gensift's decode without its rules."""

    def read(path: Path) -> torch.Tensor:
        data = path.read_bytes()
        return preset.resize(open_rgb(io.BytesIO(data), preset.image_size, ("PNG",)))

    return read


def pyspng_reader(preset: EvalPreset) -> Callable[[Path], torch.Tensor] | None:
    """Read, decode with pyspng, resize as Pillow's path does; None without pyspng."""
    pyspng = optional("pyspng")
    if pyspng is None:
        return None

    def read(path: Path) -> torch.Tensor:
        return preset.resize(Image.fromarray(pyspng.load(path.read_bytes())))

    return read


def threaded(paths: Sequence[Path], read: Callable[[Path], object], workers: int) -> int:
    """``read`` every path in a pool of ``workers`` threads; returns how many were read."""
    with ThreadPoolExecutor(workers, thread_name_prefix="bench-decode") as pool:
        return sum(1 for _ in pool.map(read, paths))


def pyspng_difference(paths: Sequence[Path], image_size: int) -> int | None:
    """Largest absolute difference between pyspng's and Pillow's pixels over ``paths``.

    None without pyspng; -1 where the two disagree on an image's shape.
    """
    pyspng = optional("pyspng")
    if pyspng is None:
        return None
    worst = 0
    for path in paths:
        data = path.read_bytes()
        theirs = pyspng.load(data)
        ours = np.asarray(open_rgb(io.BytesIO(data), image_size, ("PNG",)))
        if theirs.shape != ours.shape:
            return -1
        worst = max(worst, int(np.abs(theirs.astype(np.int16) - ours).max()))
    return worst
