"""How ``tests/data/gpu_*.jsonl`` were recorded: a GPU load with an idle stall and full memory.

    trainguard monitor RUN_DIR --gpu --gpu-interval 0.5 --poll --record REC.jsonl &   # then:
    python tests/data/gpu_load.py --run-dir RUN_DIR        # and SIGTERM the monitor 4 s later

``gpu_h200_load.jsonl`` is that REC.jsonl from a 2 x H200 machine (GPU 1 stayed idle); the
``gpu_ddp_h200_*`` folders are the rank files of ``examples/ddp_straggler.py --steps 300`` on
the same machine, healthy and with ``--slow-rank 1 --slow-factor 3``.

Steps of bf16 matrix products on GPU 0 for ``--busy`` seconds (logged through EventWriter), then
a stall of ``--stall`` seconds with the GPU idle and the process alive (as a hung data loader or
a long checkpoint save leaves it), then nearly all free GPU memory allocated and ``--busy``
seconds of steps again. The monitor's ``--record`` file holds the training records and the GPU
samples (``kind: gpu``) as the rules saw them.
"""

from __future__ import annotations

import argparse
import time

import torch

from trainguard import EventWriter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--busy", type=float, default=6.0)
    parser.add_argument("--stall", type=float, default=9.0)
    parser.add_argument("--leave-free-gib", type=float, default=0.5)
    args = parser.parse_args()
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    step = 0
    with EventWriter(args.run_dir, rank=0, world_size=1) as events:
        def busy(seconds: float) -> None:
            nonlocal step
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                started = time.perf_counter()
                for _ in range(20):
                    b = a @ a
                torch.cuda.synchronize()
                step += 1
                events.log_metrics(step, {"loss": float(b[0, 0].abs().log1p()),
                                          "step_time": time.perf_counter() - started})

        busy(args.busy)
        time.sleep(args.stall)
        free, total = torch.cuda.mem_get_info()
        filler = torch.empty(int(free - args.leave_free_gib * 2**30), dtype=torch.uint8,
                             device="cuda")
        print(f"filled: {torch.cuda.mem_get_info()[0] / 2**30:.2f} GiB free of "
              f"{total / 2**30:.1f}", flush=True)
        busy(args.busy)
        del filler


if __name__ == "__main__":
    main()
