"""TrainGuardCallback overhead: CPU time per ``on_log`` and per ``on_step_end`` call.

    python benchmarks/bench_callback.py [--calls 20000]

Calls the real callback directly (real TrainingArguments/TrainerState, real EventWriter writing
to a temporary directory) with a realistic GRPO log dict of 25 keys, as TRL 1.16 logs it, and
measures CPU time with ``time.process_time()`` so that a loaded machine does not distort it.
Compare with a GRPO step, which takes seconds on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GRPO_LOG = {
    "loss": 0.0123, "grad_norm": 1.291, "learning_rate": 1e-06, "num_tokens": 56.0,
    "completions/mean_length": 8.0, "completions/min_length": 8.0,
    "completions/max_length": 8.0, "completions/clipped_ratio": 1.0,
    "completions/mean_terminated_length": 0.0, "completions/min_terminated_length": 0.0,
    "completions/max_terminated_length": 0.0, "rewards/reward_len/mean": 0.1125,
    "rewards/reward_len/std": 0.5053, "reward": 0.683, "reward_std": 0.4794,
    "frac_reward_zero_std": 0.0, "kl": 0.0021, "entropy": 5.944, "clip_ratio/low_mean": 0.0,
    "clip_ratio/high_mean": 0.0, "clip_ratio/region_mean": 0.0, "clip_ratio/low_min": 0.0,
    "clip_ratio/high_max": 0.0, "step_time": 0.3488, "epoch": 0.0625,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20_000)
    opts = parser.parse_args()

    from transformers import TrainerControl, TrainerState, TrainingArguments

    from trainguard.emitters.trl import TrainGuardCallback

    tmp = Path(tempfile.mkdtemp())
    try:
        args = TrainingArguments(output_dir=str(tmp / "out"), use_cpu=True, report_to=[])
        state, control = TrainerState(), TrainerControl()
        callback = TrainGuardCallback(run_dir=tmp / "run")
        callback.on_train_begin(args, state, control)
        logs = [dict(GRPO_LOG, loss=0.01 * i) for i in range(opts.calls)]

        start = time.process_time()
        for i, log in enumerate(logs, 1):
            state.global_step = i
            callback.on_log(args, state, control, logs=log)
        log_cpu = time.process_time() - start

        # Step ends: the control file is absent (the common case); the stat is rate-limited.
        start = time.process_time()
        for _ in range(opts.calls):
            callback.on_step_end(args, state, control)
        step_cpu = time.process_time() - start

        callback._stop_check_interval = 0.0  # the worst case: a stat at every step end
        if callback.writer is not None:
            callback.writer._stop_check_interval = 0.0
        start = time.process_time()
        for _ in range(opts.calls):
            callback.on_step_end(args, state, control)
        step_stat_cpu = time.process_time() - start
        callback.on_train_end(args, state, control)
        lines = len((tmp / "run" / "events.rank0.jsonl").read_text().splitlines())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(json.dumps({
        "benchmark": "trl_callback",
        "calls": opts.calls,
        "keys_per_log": len(GRPO_LOG),
        "events_lines": lines,
        "on_log_us_cpu": round(1e6 * log_cpu / opts.calls, 2),
        "on_step_end_us_cpu": round(1e6 * step_cpu / opts.calls, 3),
        "on_step_end_with_stat_us_cpu": round(1e6 * step_stat_cpu / opts.calls, 3),
    }))


if __name__ == "__main__":
    main()
