"""A run directory on a shared filesystem: thousands of rank files in per-node folders, polled.

    python benchmarks/bench_shared_fs.py [--files 1024,4096] [--intervals 0.05,0.25,1.0]

On NFS, Lustre or GPFS, inotify sees only what this host wrote, so the monitor runs with
``--poll``: every ``--poll-interval`` seconds it lists the folders whose mtime changed and
checks every file (``fstat`` and the first bytes, to catch a rewrite of the same size). For each
number of files (8 ranks a node folder: ``RUN_DIR/node{k}/events.rank{r}.jsonl``) and each
poll interval, a real ``trainguard monitor RUN_DIR --poll --record REC`` process with an
inline rule ``probe > 0`` (an info alert into ``--alerts OUT``, flushed per alert) is measured:

* ``first_read_s``: wall time from start until every file's first line is in the record (which
  is flushed with each checkpoint, once a second: up to a second of it is that);
* ``idle_cpu_percent`` and ``rss_mb``: its CPU time over wall time (psutil) and resident memory
  while every file is idle, over ``--seconds``;
* ``seen_ms`` p50/p99/max: a line with ``probe`` appended to a random file, from the write
  until its alert is in the alerts file (this script reads it every 2 ms: up to 2 ms more).

Measured on a local disk (ext4 or tmpfs): an NFS client adds its attribute cache on top (see
the README's "Shared filesystems" section), which this machine cannot mount.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _line(step: int, rank: int, at: float, probe: bool = False) -> bytes:
    metrics = {"loss": 1.0, "grad_norm": 1.0, "probe": 1.0 if probe else 0.0}
    return json.dumps({"time": at, "step": step, "rank": rank, "host": f"node{rank // 8}",
                       "local_rank": rank % 8, "metrics": metrics},
                      separators=(",", ":")).encode() + b"\n"


def _paths(root: Path, files: int) -> list[Path]:
    out = []
    for rank in range(files):
        folder = root / f"node{rank // 8}"
        folder.mkdir(exist_ok=True)
        out.append(folder / f"events.rank{rank}.jsonl")
    return out


class _AlertTail:
    """Reads the monitor's alerts file as it grows; notes (rank, step) of each alert."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, b""
        self.lines = 0
        self.seen: set[tuple[int, int]] = set()

    def read(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        data = self.partial + data
        *complete, self.partial = data.split(b"\n")
        for raw in complete:
            self.lines += 1
            obj = json.loads(raw)
            if obj["rule"].startswith("inline") and obj["state"] == "firing":
                self.seen.add((obj["rank"], obj["step"]))


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def measure(files: int, interval: float, seconds: float, samples: int) -> dict[str, Any]:
    """One monitor over ``files`` rank files polled every ``interval`` s (see the module)."""
    tmp = Path(tempfile.mkdtemp(prefix="tg-sharedfs-"))
    run_dir, alerts, record = tmp / "run", tmp / "alerts.jsonl", tmp / "record.jsonl"
    run_dir.mkdir()
    paths = _paths(run_dir, files)
    now = time.time()
    for rank, path in enumerate(paths):
        path.write_bytes(_line(1, rank, now))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "trainguard", "monitor", str(run_dir), "--poll",
                             "--poll-interval", str(interval), "--alerts", str(alerts), "-q",
                             "--record", str(record), "--alert", "probe > 0 -> info: seen"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    tail = _AlertTail(alerts)
    try:
        ps = psutil.Process(proc.pid)
        while _lines(record) < files:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.01)
        first_read = time.monotonic() - started
        time.sleep(1.0)  # settle: the folders' listings are cached once 2 s old
        cpu0, t0 = ps.cpu_times(), time.monotonic()
        time.sleep(seconds)
        cpu1, t1 = ps.cpu_times(), time.monotonic()
        rss = ps.memory_info().rss
        seen: list[float] = []
        rng = random.Random(files)
        for i, rank in enumerate(rng.sample(range(files), samples)):
            step = 1000 + i
            with open(paths[rank], "ab") as handle:
                written = time.time()
                handle.write(_line(step, rank, written, probe=True))
            deadline = time.monotonic() + 10 + 4 * interval
            while (rank, step) not in tail.seen and time.monotonic() < deadline:
                time.sleep(0.002)
                tail.read()
            seen.append((time.time() - written) * 1000)
            # A pause of any phase of the poll cycle: a fixed one would lock onto it.
            time.sleep(rng.uniform(0.02, 0.02 + interval))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()
        shutil.rmtree(tmp, ignore_errors=True)
    used = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {"files": files, "folders": (files + 7) // 8, "poll_interval_s": interval,
            "first_read_s": round(first_read, 2),
            "idle_cpu_percent": round(100 * used / (t1 - t0), 1),
            "rss_mb": round(rss / 2**20, 1),
            "seen_ms_p50": round(_percentile(seen, 0.5), 1),
            "seen_ms_p99": round(_percentile(seen, 0.99), 1),
            "seen_ms_max": round(max(seen), 1), "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", default="1024,4096")
    parser.add_argument("--intervals", default="0.05,0.25,1.0")
    parser.add_argument("--seconds", type=float, default=6.0, help="idle measurement")
    parser.add_argument("--samples", type=int, default=20, help="appended lines timed")
    args = parser.parse_args()
    for files in (int(x) for x in args.files.split(",")):
        for interval in (float(x) for x in args.intervals.split(",")):
            print(json.dumps(measure(files, interval, args.seconds, args.samples)), flush=True)


if __name__ == "__main__":
    main()
