"""The end-to-end demo behind ``make demo``: a real training loop goes wrong, the monitor stops it.

Starts ``trainguard monitor RUN_DIR --stop`` and ``minimal_streaming_loop.py --blowup-at N`` as
two separate processes, waits for the loop to end, stops the monitor, and checks that the loop
stopped within one step of the first non-finite value. Leaves events, alerts and the control
file under ``--out`` (default ``artifacts/``). Exits 0 when the monitor did its job.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def first_nonfinite_step(events_path: Path) -> int | None:
    """The first step whose loss or grad_norm is not finite, read back from the events file."""
    for raw in events_path.read_text().splitlines():
        event = json.loads(raw)
        for key in ("loss", "grad_norm"):
            value = event["metrics"].get(key)
            if isinstance(value, str) or (isinstance(value, float) and not math.isfinite(value)):
                return int(event["step"])
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="trainguard end-to-end demo")
    parser.add_argument("--out", default="artifacts")
    parser.add_argument("--blowup-at", type=int, default=25)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--step-time", type=float, default=0.25)
    args = parser.parse_args(argv)

    out = Path(args.out)
    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)

    print(f"==> monitor: trainguard monitor {run_dir} --stop", flush=True)
    monitor = subprocess.Popen(
        [sys.executable, "-m", "trainguard", "monitor", str(run_dir), "--stop"],
    )
    time.sleep(1.0)  # let the monitor start following before the first event
    print(f"==> trainer: learning rate blown up at step {args.blowup_at}", flush=True)
    trainer = subprocess.run(
        [sys.executable, str(HERE / "minimal_streaming_loop.py"), "--run-dir", str(run_dir),
         "--steps", str(args.steps), "--blowup-at", str(args.blowup_at),
         "--step-time", str(args.step_time)],
        capture_output=True, text=True, check=False, timeout=300,
    )
    sys.stdout.write("".join(trainer.stdout.splitlines(keepends=True)[-6:]))
    time.sleep(0.5)
    monitor.send_signal(signal.SIGINT)
    monitor_code = monitor.wait(timeout=30)

    summary = json.loads(trainer.stdout.strip().splitlines()[-1])
    failure = first_nonfinite_step(run_dir / "events.rank0.jsonl")
    control = run_dir / "control.json"
    print(f"\n==> first non-finite value at step {failure}; trainer stopped at step "
          f"{summary['last_step']} (stopped by monitor: {summary['stopped_by_monitor']}); "
          f"monitor exit code {monitor_code}")
    print(f"==> artifacts: {run_dir}/events.rank0.jsonl, alerts.jsonl, control.json")
    ok = (
        trainer.returncode == 0 and summary["stopped_by_monitor"] and failure is not None
        and 0 <= summary["last_step"] - failure <= 1 and control.exists() and monitor_code == 2
    )
    print("==> demo " + ("PASSED: the monitor stopped the run within one step of the failure"
                         if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
