"""GRPO on a tiny offline Llama, guarded by trainguard: the callback streams, the monitor stops.

    python examples/trl_grpo_guarded.py                # healthy: runs to the end, no alert
    python examples/trl_grpo_guarded.py --break rewards
        # a constant reward: every group has zero reward std, so GRPO learns nothing; a rule of
        # this example's own (RULES below, passed with --rules) stops the run

(A huge learning rate is shown by ``trl_dpo_guarded.py``: in GRPO, NaN weights make the next
step's generation raise inside ``torch.multinomial`` before any step end, so the run crashes
rather than stops; the monitor still raises the alert on the NaN step.)

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

from tiny_model import build_tiny_model, prompt_dataset, reward_len

#: A rule written for this example in trainguard's rule language: a GRPO group whose
#: completions all get the same reward has zero advantage and teaches the model nothing.
RULES = """\
pack: example_grpo
description: GRPO learns nothing when every group's rewards are equal.
rules:
  - id: example.grpo_zero_reward_std
    metric: frac_reward_zero_std
    condition: frac_reward_zero_std >= 1
    for: 2
    severity: high
    action: stop
    message: "every group had zero reward std for 2 steps (step {step}): no learning signal"
"""


def constant_reward(completions, **kwargs):  # type: ignore[no-untyped-def]
    """A broken reward function: the same score for everything."""
    return [1.0 for _ in completions]



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="GRPO guarded by trainguard")
    parser.add_argument("--out", default="artifacts/trl_grpo")
    parser.add_argument("--break", dest="broken", choices=["rewards"], default=None,
                        help="inject a failure: rewards = a constant reward")
    parser.add_argument("--steps", type=int, default=10)
    opts = parser.parse_args(argv)

    out = Path(opts.out)
    shutil.rmtree(out / "run", ignore_errors=True)
    shutil.rmtree(out / "trainer", ignore_errors=True)
    run_dir = out / "run"
    run_dir.mkdir(parents=True)
    model = build_tiny_model(out / "tiny_llama")
    os.environ["TRAINGUARD_RUN_DIR"] = str(run_dir)

    rules = out / "grpo_rules.yaml"
    rules.write_text(RULES)
    print(f"==> monitor: trainguard monitor {run_dir} --stop --rules common --rules {rules}",
          flush=True)
    monitor = subprocess.Popen([sys.executable, "-m", "trainguard", "monitor", str(run_dir),
                                "--stop", "--rules", "common", "--rules", str(rules)])
    try:
        reward = constant_reward if opts.broken == "rewards" else reward_len
        stopped_at = train(model, out / "trainer", opts.steps, 1e-3, reward)
    finally:
        monitor.send_signal(signal.SIGINT)
        monitor_code = monitor.wait(timeout=30)
    return report(run_dir, out / "trainer", stopped_at, monitor_code, broken=bool(opts.broken))


def train(model: str, output_dir: Path, steps: int, lr: float, reward) -> int | None:  # type: ignore[no-untyped-def]
    """Run GRPO with the callback; return the step the monitor stopped it at, if it did."""
    from trl import GRPOConfig, GRPOTrainer

    from trainguard.emitters.trl import TrainGuardCallback

    callback = TrainGuardCallback()
    args = GRPOConfig(output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=4,
                      num_generations=4, max_completion_length=8, learning_rate=lr,
                      logging_steps=1, use_cpu=True, report_to=[], save_strategy="no",
                      disable_tqdm=True)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args,
                          train_dataset=prompt_dataset(64), callbacks=[callback])
    print(f"==> trainer: GRPO, {steps} steps, learning rate {lr:g}, reward "
          f"{reward.__name__}", flush=True)
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
