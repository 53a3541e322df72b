"""EventWriter serialization: microseconds per 10-metric step, next to its floor.

    python benchmarks/bench_writer.py [--steps 200000]

Three figures in CPU time (``time.process_time``), best of 3:

* ``event_writer``: ``EventWriter.log_metrics(step, ten_floats)`` (one flushed line a step, to a
  real file), as a training loop calls it;
* ``floor_orjson_os_write``: ``orjson.dumps`` of the same line plus ``os.write``: no checks, no
  NaN handling, the least any writer does;
* ``stdlib_json``: the same line through ``json.dumps`` + a text file (what the writer did).

Target: ``event_writer`` within 2x of the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import orjson

from trainguard import EventWriter

METRICS = {f"metric_{i}": 0.1 * i + 0.123456789 for i in range(10)}


def _best(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    n = args.steps

    def writer() -> None:
        with EventWriter(tmp / "w", rank=0, world_size=1) as events:
            for step in range(n):
                events.log_metrics(step, METRICS)

    def floor() -> None:
        fd = os.open(tmp / "floor.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for step in range(n):
                os.write(fd, orjson.dumps({"time": round(time.time(), 6), "step": step,
                                           "metrics": METRICS},
                                          option=orjson.OPT_APPEND_NEWLINE))
        finally:
            os.close(fd)

    def stdlib() -> None:
        with open(tmp / "json.jsonl", "a", buffering=1 << 16) as handle:
            for step in range(n):
                handle.write(json.dumps({"time": round(time.time(), 6), "step": step,
                                         "metrics": METRICS}, separators=(",", ":")) + "\n")
                handle.flush()

    us = {name: _best(fn) / n * 1e6 for name, fn in
          (("event_writer", writer), ("floor_orjson_os_write", floor), ("stdlib_json", stdlib))}
    print(json.dumps({"us_per_10_metric_step": {k: round(v, 2) for k, v in us.items()},
                      "writer_vs_floor": round(us["event_writer"] / us["floor_orjson_os_write"],
                                               2),
                      "target_ratio": 2.0}, indent=2))


if __name__ == "__main__":
    main()
