"""A tiny real TRL trainer that prints its logs as TRL does (tqdm on), for stdout capture tests.

    python tests/trl_stdout_trainer.py {sft,grpo} MODEL_DIR OUT_DIR [--run-dir DIR]
        [--max-steps N] [--logging-steps N] [--eval-steps N] [--lr X] [--pace S]

With ``--run-dir`` the TrainGuardCallback writes the same logs as events there, so a test can
compare what was printed with what the callback saw. Without it the trainer knows nothing of
trainguard (what ``trainguard run`` must cope with). ``--pace`` sleeps S seconds per step (real
steps take seconds; a tiny CPU step can be shorter than a monitor's reaction).

tests/data/trl_sft_merged.txt was made with it (see tests/data/README.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.tiny_model import (  # noqa: E402
    build_tiny_model,
    prompt_dataset,
    reward_len,
    sft_dataset,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["sft", "grpo"])
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--run-dir")
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--logging-steps", type=int, default=1)
    parser.add_argument("--eval-steps", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--pace", type=float, default=0.0)
    opts = parser.parse_args()

    from transformers import TrainerCallback

    class Pace(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            time.sleep(opts.pace)

    callbacks: list[Any] = [Pace()] if opts.pace else []
    if opts.run_dir:
        from trainguard.emitters.trl import TrainGuardCallback
        callbacks.append(TrainGuardCallback(opts.run_dir))
    model = build_tiny_model(opts.model)
    common: dict[str, Any] = dict(
        output_dir=opts.out, max_steps=opts.max_steps, per_device_train_batch_size=2,
        logging_steps=opts.logging_steps, use_cpu=True, report_to=[], save_strategy="no",
        disable_tqdm=False, learning_rate=opts.lr, seed=0)
    if opts.eval_steps:
        common.update(eval_strategy="steps", eval_steps=opts.eval_steps,
                      per_device_eval_batch_size=2)
    if opts.kind == "sft":
        from trl import SFTConfig, SFTTrainer
        trainer = SFTTrainer(model=model, args=SFTConfig(max_length=32, **common),
                             train_dataset=sft_dataset(16),
                             eval_dataset=sft_dataset(4) if opts.eval_steps else None,
                             callbacks=callbacks)
    else:
        from trl import GRPOConfig, GRPOTrainer
        trainer = GRPOTrainer(model=model, reward_funcs=reward_len,
                              args=GRPOConfig(num_generations=2, max_completion_length=6,
                                              **common),
                              train_dataset=prompt_dataset(16), callbacks=callbacks)
    trainer.train()


if __name__ == "__main__":
    main()
