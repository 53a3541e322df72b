"""A real (tiny) PyTorch training loop that reports to trainguard and obeys its stop requests.

    python examples/minimal_streaming_loop.py --run-dir runs/demo --steps 60 --blowup-at 25

It fits a small MLP to a synthetic regression task, logs ``loss``, ``grad_norm`` and
``learning_rate`` each step through :class:`trainguard.EventWriter`, and checks ``should_stop``
after each step. ``--blowup-at N`` multiplies the learning rate by 1e12 from step N on: the
weights overflow and the loss goes to inf, then NaN, as a diverging run's does.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from torch import nn

from trainguard import EventWriter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--run-dir", default=None,
                        help="run directory (default: $TRAINGUARD_RUN_DIR, else runs/trainguard)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--blowup-at", type=int, default=None,
                        help="step at which the learning rate is blown up (inject a failure)")
    parser.add_argument("--step-time", type=float, default=0.2,
                        help="seconds each step takes at least (a stand-in for a real step)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    inputs = torch.randn(512, 16)
    targets = inputs @ torch.randn(16, 1) + 0.1 * torch.randn(512, 1)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)

    last_step = 0
    stopped_by: str | None = None
    with EventWriter(args.run_dir) as events:
        for step in range(1, args.steps + 1):
            started = time.monotonic()
            if args.blowup_at is not None and step == args.blowup_at:
                for group in optimizer.param_groups:
                    group["lr"] *= 1e12
            batch = torch.randint(0, len(inputs), (64,))
            loss = nn.functional.mse_loss(model(inputs[batch]), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
            optimizer.step()
            events.log_metrics(step, {
                "loss": loss.item(),
                "grad_norm": grad_norm.item(),
                "learning_rate": optimizer.param_groups[0]["lr"],
            })
            last_step = step
            if events.should_stop:
                stopped_by = events.stop_reason
                print(f"step {step}: stopping at the monitor's request: {stopped_by}", flush=True)
                break
            print(f"step {step}: loss={loss.item():.4g} grad_norm={grad_norm.item():.4g}",
                  flush=True)
            time.sleep(max(0.0, args.step_time - (time.monotonic() - started)))
    summary = {"last_step": last_step, "stopped_by_monitor": stopped_by is not None,
               "reason": stopped_by}
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
