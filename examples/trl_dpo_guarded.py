"""DPO on a tiny offline Llama, guarded by trainguard: the callback streams, the monitor stops.

    python examples/trl_dpo_guarded.py                 # healthy: runs to the end, no alert
    python examples/trl_dpo_guarded.py --break lr      # learning rate 1e30: grad_norm goes NaN,
                                                       # the monitor stops the run with a checkpoint

Starts ``trainguard monitor RUN_DIR --stop`` as a separate process, trains with
``callbacks=[TrainGuardCallback()]`` (it finds RUN_DIR through ``TRAINGUARD_RUN_DIR``), then
prints what happened. CPU only, no network, about a minute. Exits 0 when the run went as
expected (healthy: no stop; broken: stopped within a step of the first alert, checkpoint saved).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tiny_model import build_tiny_model, preference_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="DPO guarded by trainguard")
    parser.add_argument("--out", default="artifacts/trl_dpo")
    parser.add_argument("--break", dest="broken", choices=["lr"], default=None,
                        help="inject a failure: lr = a learning rate of 1e30")
    parser.add_argument("--steps", type=int, default=16)
    opts = parser.parse_args(argv)

    out = Path(opts.out)
    shutil.rmtree(out / "run", ignore_errors=True)
    shutil.rmtree(out / "trainer", ignore_errors=True)
    run_dir = out / "run"
    run_dir.mkdir(parents=True)
    model = build_tiny_model(out / "tiny_llama")
    os.environ["TRAINGUARD_RUN_DIR"] = str(run_dir)

    print(f"==> monitor: trainguard monitor {run_dir} --stop", flush=True)
    monitor = subprocess.Popen([sys.executable, "-m", "trainguard", "monitor", str(run_dir),
                                "--stop"])
    try:
        stopped_at = train(model, out / "trainer", opts.steps, 1e30 if opts.broken else 1e-3)
    finally:
        monitor.send_signal(signal.SIGINT)
        monitor_code = monitor.wait(timeout=30)
    return report(run_dir, out / "trainer", stopped_at, monitor_code, broken=bool(opts.broken))


def train(model: str, output_dir: Path, steps: int, lr: float) -> int | None:
    """Run DPO with the callback; return the step the monitor stopped it at, if it did."""
    from trl import DPOConfig, DPOTrainer

    from trainguard.emitters.trl import TrainGuardCallback

    callback = TrainGuardCallback()
    args = DPOConfig(output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=2,
                     learning_rate=lr, logging_steps=1, max_length=32, use_cpu=True,
                     report_to=[], save_strategy="no", disable_tqdm=True)
    trainer = DPOTrainer(model=model, args=args, train_dataset=preference_dataset(32),
                         callbacks=[callback])
    print(f"==> trainer: DPO, {steps} steps, learning rate {lr:g}", flush=True)
    trainer.train()
    return callback.stopped_at_step


def report(run_dir: Path, output_dir: Path, stopped_at: int | None, monitor_code: int, *,
           broken: bool) -> int:
    """Print what the callback and the monitor left behind; 0 if it is what we expected."""
    meta = json.loads((run_dir / "run_metadata.json").read_text())
    alerts_path = run_dir / "alerts.jsonl"
    alerts = [json.loads(x) for x in alerts_path.read_text().splitlines()] \
        if alerts_path.exists() else []
    firing = [a for a in alerts if a.get("state") == "firing"]
    print(f"\n==> trainer kind detected: {meta['trainer']}; run id {meta['run_id']}; "
          f"final step {meta.get('final_step')}")
    for alert in firing:
        print(f"==> alert: {alert['rule']} at step {alert['step']}: {alert['message']}")
    checkpoints = sorted(p.name for p in output_dir.glob("checkpoint-*"))
    print(f"==> stopped by monitor at step: {stopped_at}; checkpoints: {checkpoints}; "
          f"monitor exit code {monitor_code}")
    print(f"==> files: {run_dir}/events.rank0.jsonl, run_metadata.json, alerts.jsonl"
          + (", stopped.json, control.json" if stopped_at else ""))
    if broken:
        ok = (stopped_at is not None and bool(firing)
              and stopped_at - firing[0]["step"] <= 1
              and f"checkpoint-{stopped_at}" in checkpoints)
    else:
        ok = stopped_at is None and not firing
    print("==> example " + ("PASSED" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
