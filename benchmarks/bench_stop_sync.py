"""``EventWriter.should_stop`` with a process group: the cost of stopping every rank together.

    python benchmarks/bench_stop_sync.py [--calls 2000]

Starts two ranks under torchrun (gloo, CPU, this host) and times ``should_stop``, which with a
process group is one broadcast of one int32 from rank 0 per call (rank 0 also stats the control
file), against the writer without a group (``sync_stop=False``: a stat per logged step). CPU
time per call from ``time.process_time()``, and wall time, which includes waiting for the other
rank. Compare with a training step (hundreds of milliseconds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _rank(run_dir: str, calls: int) -> None:
    import torch.distributed as dist

    from trainguard import EventWriter

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    synced = EventWriter(run_dir)
    for _ in range(50):
        _ = synced.should_stop
    dist.barrier()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        _ = synced.should_stop
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    alone = EventWriter(Path(run_dir) / f"alone{rank}", rank=rank, world_size=1, sync_stop=False)
    solo = time.process_time()
    for step in range(calls):
        alone.log_metrics(step, {"loss": 1.0})
        _ = alone.should_stop
    solo = time.process_time() - solo
    print(json.dumps({"rank": rank, "synced_should_stop_us_cpu": round(cpu / calls * 1e6, 1),
                      "synced_should_stop_us_wall": round(wall / calls * 1e6, 1),
                      "unsynced_log_and_should_stop_us_cpu": round(solo / calls * 1e6, 1)}))
    synced.close()
    alone.close()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rank-of", default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.rank_of is not None:
        _rank(opts.rank_of, opts.calls)
        return
    try:
        import torch  # noqa: F401
    except ImportError:
        print(json.dumps({"skipped": "torch is not installed"}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        done = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
             "2", __file__, "--calls", str(opts.calls), "--rank-of", tmp],
            env=env, capture_output=True, text=True, timeout=300, check=False)
        for line in done.stdout.splitlines():
            if line.startswith("{"):
                print(line)
        if done.returncode:
            print(done.stderr[-2000:], file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
