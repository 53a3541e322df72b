"""A real data-parallel (DDP) loop whose ranks report their step time, with an optional straggler.

    torchrun --standalone --nproc-per-node 2 examples/ddp_straggler.py --run-dir runs/ddp
    torchrun --standalone --nproc-per-node 2 examples/ddp_straggler.py --run-dir runs/ddp \\
        --slow-rank 1 --slow-factor 3
    trainguard monitor runs/ddp --gpu          # in another shell: common.straggler names rank 1

NCCL on GPUs (one per process, ``LOCAL_RANK``), gloo on CPU. Each rank writes its events with
:class:`trainguard.EventWriter` to ``RUN_DIR/events.rank{R}.jsonl``.

What ``step_time`` measures, and why: in DDP the gradient all-reduce runs inside ``backward()``
and waits for the slowest rank, so every rank's *whole* step takes as long as the straggler's;
a whole-step time would make all ranks look equally slow. Like nvidia-resiliency-ext's straggler
detector, which times each rank's own compute sections and not the collectives, each rank logs
as ``step_time`` the time of its own section *before the first collective*: fetching the batch
and the forward pass (synchronized on the GPU so the kernels are counted). The whole step,
collective wait included, is logged as ``step_wall_s`` for comparison; it is about equal on every
rank. ``--slow-rank R --slow-factor F`` makes rank R run its forward pass F times (real extra
compute, as a GPU held at a lower clock would), so its own section takes about F times as long.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainguard import EventWriter


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default=None,
                        help="run directory (default: $TRAINGUARD_RUN_DIR, else runs/trainguard)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--width", type=int, default=None,
                        help="hidden width (default: 8192 on GPU, 512 on CPU)")
    parser.add_argument("--depth", type=int, default=4, help="linear layers")
    parser.add_argument("--batch", type=int, default=None,
                        help="rows per rank and step (default: 16384 on GPU, 128 on CPU)")
    parser.add_argument("--slow-rank", type=int, default=None,
                        help="this rank runs its forward pass --slow-factor times (a straggler)")
    parser.add_argument("--slow-factor", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        torch.set_num_threads(1)  # two ranks on one CPU: no oversubscription, steadier timings
        device = torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    width = args.width or (8192 if cuda else 512)
    batch = args.batch or (16384 if cuda else 128)
    dtype = torch.bfloat16 if cuda else torch.float32

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    layers: list[nn.Module] = []
    for _ in range(args.depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    model = nn.Sequential(*layers).to(device=device, dtype=dtype)
    ddp = DistributedDataParallel(model, device_ids=[local_rank] if cuda else None)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=1e-4)
    generator = torch.Generator(device=device).manual_seed(args.seed + rank)
    repeats = args.slow_factor if rank == args.slow_rank else 1

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    with EventWriter(args.run_dir) as events:
        for step in range(1, args.steps + 1):
            sync()
            started = time.perf_counter()
            # The rank's own section: no collective in it (DDP's forward has none here).
            inputs = torch.randn(batch, width, device=device, dtype=dtype, generator=generator)
            for _ in range(repeats - 1):
                with torch.no_grad():
                    model(inputs)
            loss = ddp(inputs).float().pow(2).mean()
            sync()
            own = time.perf_counter() - started
            # The collective section: backward() all-reduces the gradients across ranks.
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sync()
            wall = time.perf_counter() - started
            events.log_metrics(step, {"loss": loss.item(), "step_time": own,
                                      "step_wall_s": wall})
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
