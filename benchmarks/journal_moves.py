"""How many journalled moves a second the router makes: one file at a time, or grouped.

    python benchmarks/journal_moves.py [--files 2000] [--batch-size 16] [--rounds 3]
        [--copy] [--dir DIR]

Every file is a small file in an inbox, moved by the real
:class:`~gensift.daemon.routing.router.Router` into one of three class folders under a
real journal (WAL, ``synchronous = FULL``), in the folder given (default: a new
temporary one, on the disk the journal would be on). Two ways, on the same disk in
the same run:

* **per file**: ``Router.apply`` for each file: its intent committed, the move, its
  folders synced, its completion committed (two journal commits, so two disk syncs,
  per file);
* **grouped**: ``Router.apply_many`` over batches of ``--batch-size``: the batch's
  intents in one commit, the moves, each folder synced once, the completions in one
  commit.

The two alternate over ``--rounds`` rounds (a shared disk changes speed over a run;
alternating makes that drift hit both alike) and the best round of each is printed,
with their ratio. ``--copy`` forces the cross-filesystem path (a verified, fsynced copy
per file). The files are decided and moved only: no decoding, no model, so this is the
ceiling the journal and the disk put on ``gensift sort``
(:func:`measure_journal_moves` is what ``benchmarks/sort_throughput.py`` imports).

Not run by CI. A measurement, not a test: exits 0 unless something fails.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from gensift.daemon.config import OutputSettings
from gensift.daemon.routing.journal import Journal, new_run_id
from gensift.daemon.routing.records import Decision, FileInfo
from gensift.daemon.routing.router import Job, Router

CLASSES = ("a", "b", "c")


def _inbox(folder: Path, files: int) -> list[FileInfo]:
    """``files`` small files of distinct content in ``folder``, as the decoder records them."""
    folder.mkdir(parents=True)
    infos = []
    for i in range(files):
        path = folder / f"{i:06d}.png"
        data = f"image {i}\n".encode()
        path.write_bytes(data)
        st = path.stat()
        infos.append(FileInfo(path, st.st_size, st.st_mtime_ns, hashlib.sha256(data).hexdigest()))
    return infos


def measure_journal_moves(
    work: Path, files: int, grouped: bool, batch_size: int, *, copy: bool = False
) -> float:
    """Journalled moves per second of ``files`` small files through the router, in a new
    folder under ``work`` (removed afterwards): one ``apply`` per file, or (``grouped``)
    ``apply_many`` over batches of ``batch_size``. ``copy`` forces verified copies."""
    work.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="journal-moves-", dir=work))
    try:
        infos = _inbox(folder / "inbox", files)
        jobs = [
            Job(info, Decision("move", "class", CLASSES[i % len(CLASSES)], 0.9), {"feature": "x"})
            for i, info in enumerate(infos)
        ]
        with Journal.open(folder / "journal.sqlite3") as journal:
            output = OutputSettings(root=folder / "out")
            router = Router(output, journal, new_run_id("bench"), force_copy=copy)
            started = time.perf_counter()
            if grouped:
                for at in range(0, len(jobs), batch_size):
                    router.apply_many(jobs[at : at + batch_size])
            else:
                for job in jobs:
                    router.apply(*job)
            seconds = time.perf_counter() - started
        moved = sum(1 for _ in (folder / "out").rglob("*.png"))
        if moved != files:
            raise RuntimeError(f"{moved} of {files} files were moved")
        return files / seconds
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--copy", action="store_true", help="force the cross-filesystem copy")
    parser.add_argument("--dir", type=Path, help="work folder (default: a new temporary one)")
    args = parser.parse_args(argv)
    work = args.dir or Path(tempfile.mkdtemp(prefix="gensift-journal-bench-"))
    how = "verified copies" if args.copy else "moves"
    print(f"# journal + {how}: {args.files} files, batches of {args.batch_size}, "
          f"{args.rounds} rounds, {platform.machine()}, python {sys.version.split()[0]}; "
          f"work folder {work}", flush=True)  # fmt: skip
    best = {False: 0.0, True: 0.0}
    for n in range(1, args.rounds + 1):
        for grouped in (False, True):
            rate = measure_journal_moves(work, args.files, grouped, args.batch_size, copy=args.copy)
            best[grouped] = max(best[grouped], rate)
            name = "grouped" if grouped else "per file"
            print(f"round {n}: {name}: {rate:,.0f} files/s", flush=True)
    print(f"per file: {best[False]:,.0f} files/s")
    print(f"grouped:  {best[True]:,.0f} files/s (batches of {args.batch_size})")
    print(f"ratio:    {best[True] / best[False]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
