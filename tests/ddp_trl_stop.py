"""A real TRL SFTTrainer with TrainGuardCallback on every rank of a torchrun group (gloo, CPU),
for tests/test_stop_sync.py: rank 0 is slower at each step end, so a stop request can land
between the ranks' checks. Each rank writes the step it ended at, the callback's stop step and
whether the group still answered a collective after training to ``RUN_DIR/ended.rank{R}``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

from trainguard.emitters.trl import TrainGuardCallback

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.tiny_trl import sft_dataset  # noqa: E402


class _SlowRank0(TrainerCallback):
    """Rank 0 ends each step later than the others (and every step takes a while)."""

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(0.4 if args.process_index == 0 else 0.05)


def main() -> None:
    from trl import SFTConfig, SFTTrainer

    model, out, run_dir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    callback = TrainGuardCallback(run_dir)
    args = SFTConfig(output_dir=str(out), max_steps=30, logging_steps=1, save_strategy="no",
                     report_to=[], use_cpu=True, per_device_train_batch_size=2, max_length=32,
                     disable_tqdm=True, seed=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=sft_dataset(),
                         callbacks=[_SlowRank0(), callback])
    trainer.train()
    import torch
    import torch.distributed as dist

    probe = torch.ones(1)
    dist.all_reduce(probe)  # the group is still usable after the stop
    rank = dist.get_rank()
    (run_dir / f"ended.rank{rank}").write_text(json.dumps({
        "global_step": trainer.state.global_step, "stopped_at": callback.stopped_at_step,
        "all_reduce": probe.item()}))


if __name__ == "__main__":
    main()
