"""How fast ``gensift watch`` routes a finished file, its idle cost, its memory in a flood.

The script writes two random-initialised checkpoints of ``--arch`` (heads
biased so that every image takes the full path through both stages, as in
``sort_throughput.py``), starts the real daemon (``gensift watch``) as a
subprocess, and measures three things in one run:

1. **Latency** at a steady ``--rate`` images/s for ``--seconds``: a generator
   writes ``--size`` px PNGs the way the WebUI does (a temporary name, then a
   rename); the latency of a file is from the moment its rename returned to the
   journal's record of its move (written just before the move itself). Reported
   as p50 / p95 / max, against the **baseline** measured in this process on the
   same images: the bare work for one file the naive way (decode, then both full
   models at batch 1). p50 / baseline is the daemon's overhead factor.
2. **Idle CPU**: the daemon's user + system CPU time over ``--idle-seconds`` with
   nothing arriving, as a percentage of one core, against the baseline of a
   Python process beside it that does nothing but wait once a second (some
   virtual machines charge several percent to a process that only sleeps), and
   the wake-ups per second of each (voluntary context switches), the daemon's
   also per thread: the figure that does not depend on the machine.
3. **Memory in a flood**: ``--flood`` images appear at once (hard links to a
   few drawn images: they really do arrive at the same moment); the daemon's
   peak RSS (``VmHWM``) once it has worked through them, or after
   ``--flood-seconds``, whichever comes first. On CUDA the daemon's own stats
   line also reports its peak GPU memory.

Targets (ResNet-50 stages on this CPU): latency p50 <= 300 ms, idle CPU < 1 % of
one core, peak RSS <= 2 GiB; on a GPU, p50 <= 20 ms at 5 images/s.

    python benchmarks/watch_latency.py [--device cpu] [--precision auto] [--rate 5] [--seconds 60]
        [--idle-seconds 60] [--flood 10000] [--dir DIR] [--json FILE]

Linux only (it reads /proc). Not run by CI. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from sort_throughput import load_pair, naive, sort_command, write_checkpoints, write_images

from gensift.models.presets import IMAGENET, EvalPreset


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224, help="network input side")
    parser.add_argument("--size", type=int, default=512, help="generated image side")
    parser.add_argument("--images", type=int, default=40, help="distinct images to draw")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "fp16", "bf16"],
        help="inference.precision for the daemon; the baseline is always fp32 (default auto)",
    )
    parser.add_argument("--scenario", choices=["finetuned", "frozen"], default="finetuned")
    parser.add_argument("--rate", type=float, default=5.0, help="images per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the steady run")
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--flood", type=int, default=10_000, help="images arriving at once")
    parser.add_argument("--flood-seconds", type=float, default=600.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--compile", choices=["auto", "on", "off"], default="auto", help="inference.compile"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, help="work folder (default: a new temporary one)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return parser.parse_args(argv)


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    log: Path

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime

    def wakeups(self) -> dict[str, int]:
        return thread_wakeups(self.proc.pid)

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc/PID/status")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


def write_config(work: Path, checkpoints: tuple[Path, Path], args: argparse.Namespace) -> Path:
    config = work / "gensift.toml"
    config.write_text(
        f"""[watch]
paths = [{json.dumps(str(work / "inbox"))}]
rescan_seconds = 300
[output]
root = {json.dumps(str(work / "sorted"))}
[inference]
device = {json.dumps(args.device)}
precision = {json.dumps(args.precision)}
batch_size = {args.batch_size}
compile = {json.dumps(args.compile)}
[stages.quality]
checkpoint = {json.dumps(str(checkpoints[0]))}
[stages.feature]
checkpoint = {json.dumps(str(checkpoints[1]))}
[journal]
path = {json.dumps(str(work / "journal.sqlite3"))}
[log]
file = {json.dumps(str(work / "watch.log"))}
"""
    )
    return config


def start_daemon(config: Path, work: Path) -> Daemon:
    log = work / "watch.out"
    sink = log.open("ab")
    proc = subprocess.Popen(
        [*sort_command(), "watch", "-c", str(config)], stdout=sink, stderr=subprocess.STDOUT
    )
    daemon = Daemon(proc, log)
    deadline = time.monotonic() + 900
    while "watching " not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the daemon did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return daemon


def routed_times(journal: Path) -> dict[str, float]:
    """Source file name -> when its move was recorded (epoch seconds), for finished moves."""
    with sqlite3.connect(f"{journal.as_uri()}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT source, time FROM decisions WHERE state = 'done'").fetchall()
    return {Path(source).name: datetime.fromisoformat(when).timestamp() for source, when in rows}


def wait_routed(journal: Path, names: set[str], timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        times = routed_times(journal) if journal.exists() else {}
        if names <= times.keys() or time.monotonic() > deadline:
            return times
        time.sleep(0.5)


def steady_latency(daemon_dir: Path, images: list[Path], args: argparse.Namespace) -> dict:
    inbox = daemon_dir / "inbox"
    written: dict[str, float] = {}
    count = int(args.rate * args.seconds)
    began = time.monotonic()
    for i in range(count):
        source = images[i % len(images)]
        name = f"steady-{i:05d}.png"
        temporary = inbox / f"{name}.tmp"
        shutil.copyfile(source, temporary)
        temporary.rename(inbox / name)
        written[name] = time.time()
        pause = began + (i + 1) / args.rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    times = wait_routed(daemon_dir / "journal.sqlite3", set(written), timeout=300)
    latencies = sorted(
        (times[name] - when) * 1000 for name, when in written.items() if name in times
    )
    if not latencies:
        raise SystemExit("no file was routed during the steady run")
    if len(latencies) > 1:
        quantiles = statistics.quantiles(latencies, n=20, method="inclusive")
    else:
        quantiles = latencies * 19
    return {
        "files": count,
        "routed": len(latencies),
        "p50_ms": statistics.median(latencies),
        "p95_ms": quantiles[18],
        "max_ms": latencies[-1],
    }


#: The baseline for idle CPU: a Python process that does nothing but wait, once a second.
SLEEPER = "import threading\ne = threading.Event()\nwhile True:\n    e.wait(1.0)\n"


def thread_wakeups(pid: int) -> dict[str, int]:
    """Wake-ups so far of each thread of ``pid``, by ``"TID name"``.

    A thread's voluntary context switches: each is a time it blocked (on a timer, a
    lock, a read), so each is followed by one wake-up. Preemptions are not counted.
    The name is the kernel's (``comm``): Python threads carry the program's name,
    threads started by native libraries (CUDA's, torch's) their own.
    """
    counts = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            status = (task / "status").read_text().splitlines()
        except FileNotFoundError:  # the thread ended while we read
            continue
        fields = dict(line.partition(":")[::2] for line in status)
        if "voluntary_ctxt_switches" in fields:
            label = f"{task.name} {fields.get('Name', '?').strip()}"
            counts[label] = int(fields["voluntary_ctxt_switches"])
    return counts


def idle_cpu(daemon: Daemon, seconds: float) -> dict[str, Any]:
    """The daemon's idle cost over ``seconds``, beside a do-nothing Python process.

    CPU % of one core for each, and wake-ups per second: the daemon's in all and per
    thread (by thread id and kernel name; ``py-spy dump --pid PID`` tells the Python ones
    apart). Wake-ups are the figure that does not depend on the machine: some virtual
    machines charge each wake-up of a sleeping process tens of milliseconds, so there the
    CPU % mostly counts wake-ups.
    """
    sleeper = Daemon(subprocess.Popen([sys.executable, "-c", SLEEPER]), daemon.log)
    try:
        time.sleep(2.0)
        before = daemon.cpu_seconds(), sleeper.cpu_seconds()
        switches = daemon.wakeups(), sleeper.wakeups()
        time.sleep(seconds)
        after = daemon.cpu_seconds(), sleeper.cpu_seconds()
        switched = daemon.wakeups(), sleeper.wakeups()
    finally:
        sleeper.proc.kill()
        sleeper.proc.wait()
    per_thread = wakeup_rates(switches[0], switched[0], seconds)
    return {
        "cpu_percent": (after[0] - before[0]) / seconds * 100,
        "sleeper_cpu_percent": (after[1] - before[1]) / seconds * 100,
        "wakeups_per_s": sum(per_thread.values()),
        "sleeper_wakeups_per_s": sum(wakeup_rates(switches[1], switched[1], seconds).values()),
        "wakeups_per_s_by_thread": dict(sorted(per_thread.items(), key=lambda kv: -kv[1])),
    }


def wakeup_rates(before: dict[str, int], after: dict[str, int], seconds: float) -> dict[str, float]:
    """Wake-ups per second of each thread that woke between two :func:`thread_wakeups`."""
    rates = {tid: (count - before.get(tid, 0)) / seconds for tid, count in after.items()}
    return {tid: rate for tid, rate in rates.items() if rate}


def flood(daemon: Daemon, work: Path, images: list[Path], args: argparse.Namespace) -> dict:
    inbox = work / "inbox" / "flood"
    staging = work / "flood-staging"
    staging.mkdir()
    for i in range(args.flood):
        os.link(images[i % len(images)], staging / f"flood-{i:05d}.png")
    began = time.monotonic()
    staging.rename(inbox)  # every file appears at the same moment
    names = {f"flood-{i:05d}.png" for i in range(args.flood)}
    peak = 0.0
    routed = 0
    deadline = began + args.flood_seconds
    while time.monotonic() < deadline:
        peak = max(peak, daemon.peak_rss_mib())
        routed = len(names & routed_times(work / "journal.sqlite3").keys())
        if routed == len(names):
            break
        time.sleep(2.0)
    return {
        "files": args.flood,
        "routed": routed,
        "seconds": time.monotonic() - began,
        "peak_rss_mib": max(peak, daemon.peak_rss_mib()),
    }


def baseline_ms(
    checkpoints: tuple[Path, Path], images: list[Path], args: argparse.Namespace
) -> float:
    """The naive work for one file (decode, both full models at batch 1), median of a few."""
    device = torch.device(args.device)
    models = load_pair(checkpoints, device)
    preset = EvalPreset(args.image_size, IMAGENET)
    naive(images[:1], models, preset)  # warm-up
    times = []
    for path in images[:10]:
        started = time.perf_counter()
        naive([path], models, preset)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - started) * 1000)
    del models
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.dir or Path(tempfile.mkdtemp(prefix="gensift-watch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    for leftover in ("inbox", "sorted", "flood-staging"):
        shutil.rmtree(work / leftover, ignore_errors=True)
    for leftover in work.glob("journal.sqlite3*"):
        leftover.unlink()
    (work / "inbox").mkdir()
    images = write_images(work / "images", args.images, args.size, args.seed)
    ckpt_args = argparse.Namespace(arch=args.arch, image_size=args.image_size, seed=args.seed)
    checkpoints = write_checkpoints(work / "models", args.scenario, ckpt_args)
    print(f"work folder: {work}", flush=True)
    baseline = baseline_ms(checkpoints, images, args)
    print(f"baseline (naive, one file): {baseline:.0f} ms", flush=True)

    daemon = start_daemon(write_config(work, checkpoints, args), work)
    try:
        steady = steady_latency(work, images, args)
        print(f"steady {args.rate:g}/s: {steady}", flush=True)
        time.sleep(5.0)  # let the last batch and the log settle
        idle = idle_cpu(daemon, args.idle_seconds)
        print(
            f"idle: {idle['cpu_percent']:.2f} % of one core, {idle['wakeups_per_s']:.1f} "
            f"wake-ups/s (a Python process that only waits: {idle['sleeper_cpu_percent']:.2f} %, "
            f"{idle['sleeper_wakeups_per_s']:.1f} wake-ups/s); by thread: "
            f"{idle['wakeups_per_s_by_thread']}",
            flush=True,
        )
        flooded = flood(daemon, work, images, args) if args.flood else {}
        print(f"flood: {flooded}", flush=True)
    finally:
        code = daemon.stop()
    stats = [line for line in (work / "watch.log").read_text().splitlines() if "stopped:" in line]
    result: dict[str, Any] = {
        "device": args.device,
        "arch": args.arch,
        "scenario": args.scenario,
        "precision": args.precision,
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "baseline_naive_ms": baseline,
        "steady": steady,
        "p50_over_baseline": steady["p50_ms"] / baseline,
        "idle": idle,
        "flood": flooded,
        "daemon_exit": code,
        "daemon_final_stats": stats[-1] if stats else "",
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
