"""The README's loop on every rank of a real process group (torchrun, gloo), for
tests/test_stop_sync.py: one all-reduce a step as DDP does, rank 0 slower than the others so a
stop request can land between the ranks' checks, and after the loop a barrier and a checkpoint
(the group must still be usable). Each rank writes the step it stopped after to
``RUN_DIR/stopped.rank{R}``."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from trainguard import EventWriter

run_dir = Path(sys.argv[1])
blow_up_at = int(sys.argv[2])
dist.init_process_group("gloo")
rank = dist.get_rank()
stopped = 0
with EventWriter(run_dir) as events:
    for step in range(1, 2001):
        grad = torch.ones(1)
        dist.all_reduce(grad)  # the gradient all-reduce of a DDP step
        time.sleep(0.03 if rank == 0 else 0.005)  # rank 0 is slower: ranks out of step
        loss = 10.0 if step >= blow_up_at else 1.0
        events.log_metrics(step, {"loss": loss})
        if events.should_stop:
            stopped = step
            break
dist.barrier()
if rank == 0:
    torch.save({"step": stopped, "weights": torch.zeros(3)}, run_dir / "final_checkpoint.pt")
dist.barrier()
(run_dir / f"stopped.rank{rank}").write_text(str(stopped))
dist.destroy_process_group()
