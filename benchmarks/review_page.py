"""How fast the review page is with 10,000 journal rows and images.

    python benchmarks/review_page.py [--files 10000] [--dir DIR] [--actions 30]

Builds an output root the way the daemon does (each file through the real Router and
journal: a quarter uncertain in ``_review/``, most moved into three classes, some
quarantined), serves it with the real page server on a loopback port, and measures in
Debian's Chromium (Playwright):

* **first grid**: from navigation to the review queue until every thumbnail in view is
  drawn (the rest of the page's 60 load lazily as you scroll), with cold thumbnails (made
  on request) and again warm (cached);
* **server start**: until the server answers, having read the journal (before the URL
  is printed, so the first page does not pay for it);
* **keypress**: from pressing a class key until the page shows the file moved (the
  move, its journal rows and the label are done by then), over ``--actions`` presses.

Beside them, in the same run, the floor: a GET of the page's stylesheet, which does no
work at all. Not run by CI (the 10,000 files take a few minutes to route on two cores).
Targets (issue 18): first grid under 1 s, a keypress under 200 ms, on two CPU cores.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from gensift.daemon.config import load_config
from gensift.daemon.review.server import PageServer, build_review
from gensift.daemon.routing.journal import Journal, new_run_id
from gensift.daemon.routing.records import Decision, FileInfo
from gensift.daemon.routing.router import Router

CLASSES = ("cat", "dog", "fox")


def build(folder: Path, files: int) -> Path:
    inbox, root = folder / "inbox", folder / "out"
    inbox.mkdir(parents=True)
    config = folder / "config.toml"
    config.write_text(
        f'[watch]\npaths = ["{inbox}"]\n[output]\nroot = "{root}"\nuncertain_action = "review"\n'
        f'[journal]\npath = "{folder / "journal.sqlite3"}"\n'
        f'[stages.feature]\ncheckpoint = "{folder / "feature.safetensors"}"\n',
        encoding="utf-8",
    )
    settings = load_config(config)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    with Journal.open(settings.journal.path) as journal:
        router = Router(settings.output, journal, new_run_id("sort"))
        for i in range(files):
            path = inbox / f"{i:05d}.png"
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).resize((128, 128), Image.Resampling.NEAREST).save(path)
            top = CLASSES[i % 3]
            p = float(rng.uniform(0.34, 1.0))
            probs = {"feature": {c: (p if c == top else (1 - p) / 2) for c in CLASSES}}
            kind = i % 20
            if kind < 5:
                decision = Decision("review", "uncertain", top, p, probs)
            elif kind < 7:
                decision = Decision("quarantine", "reject", "reject", 0.99, {})
            else:
                decision = Decision("move", "class", top, p, probs)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            st = path.stat()
            info = FileInfo(path, st.st_size, st.st_mtime_ns, digest)
            router.apply(info, decision, {"feature": "feature@bench"})
    print(f"# routed {files} files through the router and journal in "
          f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
    return config


def measure(config: Path, actions: int) -> dict[str, list[float]]:
    from playwright.sync_api import sync_playwright

    settings = load_config(config)
    started = time.perf_counter()
    server = PageServer(build_review(settings)).start()  # reads the journal before serving
    start = time.perf_counter() - started
    secrets = server.review.secrets
    base = f"http://127.0.0.1:{secrets.port}"
    times: dict[str, list[float]] = {
        "server start (journal read)": [start],
        "floor": [],
        "cold": [],
        "warm": [],
        "keypress": [],
    }
    chromium = shutil.which("chromium") or "/usr/lib/chromium/chromium"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{base}/static/page.css?token={secrets.token}")  # sets the cookie
            for _ in range(5):
                t = time.perf_counter()
                page.goto(f"{base}/static/page.css")
                times["floor"].append(time.perf_counter() - t)
            for label in ("cold", "warm", "warm", "warm"):
                t = time.perf_counter()
                page.goto(f"{base}/queue/review")
                page.wait_for_function(
                    "Array.from(document.querySelectorAll('.tile img'))"
                    ".filter(i => i.getBoundingClientRect().top < innerHeight)"
                    ".every(i => i.complete && i.naturalWidth > 0)",
                    timeout=60_000,
                )
                times[label].append(time.perf_counter() - t)
            page.goto(f"{base}/queue/review")
            page.wait_for_function("window.gensift && window.gensift.ready")
            for n in range(1, actions + 1):
                t = time.perf_counter()
                page.keyboard.press(str(1 + n % 3))
                page.wait_for_function(f"document.querySelectorAll('.tile.acted').length >= {n}")
                times["keypress"].append(time.perf_counter() - t)
            browser.close()
    finally:
        server.stop()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--actions", type=int, default=30)
    parser.add_argument("--dir", type=Path, help="work folder (default: a new temporary one)")
    args = parser.parse_args(argv)
    folder = args.dir or Path(tempfile.mkdtemp(prefix="gensift-review-bench-"))
    print(f"# review page: {args.files} files, {platform.processor() or platform.machine()}, "
          f"python {sys.version.split()[0]}; work folder {folder}", flush=True)  # fmt: skip
    config = build(folder, args.files)
    times = measure(config, args.actions)
    floor = statistics.median(times["floor"])
    print("| what | median | p95 | × floor | n |\n|---|---|---|---|---|")
    for name, values in times.items():
        values = sorted(values)
        p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
        med = statistics.median(values)
        print(f"| {name} | {med * 1000:.0f} ms | {p95 * 1000:.0f} ms | {med / floor:.1f} "
              f"| {len(values)} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
