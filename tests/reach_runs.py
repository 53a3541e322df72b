"""Runs for the reaching-people tests (check, report, diff, live, /metrics, notify), written by
the real EventWriter: a GRPO-like run on two ranks whose KL blows up and whose loss turns NaN."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from trainguard import EventWriter

#: Where the bad things happen in :func:`grpo_run`.
KL_FROM = 180
NAN_STEP = 240


def grpo_metrics(step: int, rank: int, *, kl_from: int | None = KL_FROM,
                 nan_step: int | None = NAN_STEP) -> dict[str, float]:
    """One step's metrics, TRL GRPO names."""
    kl = 0.02 + 0.0001 * step
    if kl_from is not None and step >= kl_from:
        kl = 1.5 + 0.01 * (step - kl_from)
    loss = 0.5 / math.sqrt(step) + 0.01 * rank
    if nan_step is not None and step == nan_step and rank == 1:
        loss = math.nan
    return {"loss": loss, "reward": 0.2 + 0.002 * step + 0.05 * math.sin(step / 7),
            "reward_std": 0.3 + 0.05 * math.cos(step / 5), "kl": kl,
            "entropy": 1.2 - 0.001 * step, "grad_norm": 0.8 + 0.1 * math.sin(step + rank),
            "frac_reward_zero_std": 0.05, "completions/mean_length": 180.0 + step * 0.1}


def grpo_run(run_dir: Path, steps: int = 300, ranks: int = 2, config: dict[str, Any] | None = None,
             **bad: Any) -> Path:
    """Write a run directory: ``events.rank{R}.jsonl`` and ``run_metadata.json``."""
    for rank in range(ranks):
        with EventWriter(run_dir, rank=rank, world_size=ranks,
                         metadata={"trainer": "GRPOTrainer",
                                   "config": config or {"learning_rate": 1e-6, "beta": 0.04}}
                         ) as writer:
            for step in range(1, steps + 1):
                writer.log_metrics(step, grpo_metrics(step, rank, **bad))
    return run_dir
