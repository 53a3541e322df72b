"""Event format: one metric per line vs one step per line, written and parsed, in CPU time.

    python benchmarks/bench_event_format.py [--steps 20000] [--metrics 30]

Writes with the real EventWriter (step per line) and with a one-metric-per-line writer of the same
shape, then parses both files with trainguard.events.parse_line. Figures are metric events per
CPU second (time.process_time), so a shared machine's load does not distort them.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from trainguard import EventWriter
from trainguard.events import encode_value, parse_line


def _cpu(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--metrics", type=int, default=30)
    args = parser.parse_args()
    names = [f"metric_{i}/mean" for i in range(args.metrics)]
    values = {n: 0.1 * i for i, n in enumerate(names)}
    events = args.steps * args.metrics
    tmp = Path(tempfile.mkdtemp())

    def write_steps() -> None:
        with EventWriter(tmp / "steps", rank=0, world_size=1) as writer:
            for step in range(args.steps):
                writer.log_metrics(step, values)

    def write_metrics() -> None:
        with open(tmp / "metrics.jsonl", "w", buffering=1 << 16) as handle:
            for step in range(args.steps):
                now = round(time.time(), 6)
                for name, value in values.items():
                    handle.write(json.dumps({"time": now, "step": step, "name": name,
                                             "value": encode_value(value)},
                                            separators=(",", ":")) + "\n")
                handle.flush()

    def parse(path: Path) -> None:
        with open(path, "rb") as handle:
            for line in handle:
                parse_line(line)

    results = {
        "write_step_per_line": events / _cpu(write_steps),
        "write_metric_per_line": events / _cpu(write_metrics),
        "parse_step_per_line": events / _cpu(lambda: parse(tmp / "steps" / "events.rank0.jsonl")),
        "parse_metric_per_line": events / _cpu(lambda: parse(tmp / "metrics.jsonl")),
    }
    sizes = {"bytes_per_event_step_per_line":
             os.path.getsize(tmp / "steps" / "events.rank0.jsonl") / events,
             "bytes_per_event_metric_per_line": os.path.getsize(tmp / "metrics.jsonl") / events}
    print(json.dumps({"steps": args.steps, "metrics_per_step": args.metrics,
                      **{k: round(v) for k, v in results.items()},
                      **{k: round(v, 1) for k, v in sizes.items()}}, indent=1))


if __name__ == "__main__":
    main()
