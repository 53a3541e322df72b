"""The third set of detection cases, ``unseen``: made on 2026-12-02, after the rule changes of
that day (a near-greedy-sampling rule for GRPO/RLOO) were written against the main and
held-out findings. Other seeds (300+), values and trainer/failure pairings than either set;
scored once and published as it came out, so it says how the rules do on runs nobody looked
at before the rules were written. Same trainers, kinds, onset finders and metric lists as
:mod:`benchmarks.detection_cases`.
"""

from __future__ import annotations

from typing import Any

from benchmarks.detection_cases import _FLAT_GROUPS, _LR, _PREF_DIVERGE, _REWARD_NONE, Case

__all__ = ["UNSEEN"]

_LENGTHS = ("completions/clipped_ratio", "completions/mean_length", "completions/max_length",
            "completions/mean_terminated_length")
_REWARD_MODEL = ("loss", "grad_norm", "margin", "max_reward", "min_reward", "mean_reward")


def _unseen() -> list[Case]:
    c = Case
    healthy: list[Case] = [
        c("sft", None, 300, 30, {"learning_rate": 2e-4, "lr_scheduler_type": "cosine",
                                 "warmup_steps": 5}),
        c("sft", None, 301, 30, {"learning_rate": 1e-3, "per_device_train_batch_size": 2}),
        c("dpo", None, 300, 30, {"learning_rate": 7e-4, "beta": 0.15}),
        c("kto", None, 300, 30, {"learning_rate": 5e-4, "beta": 0.1,
                                 "lr_scheduler_type": "cosine"}),
        c("orpo", None, 300, 30, {"learning_rate": 5e-4, "beta": 0.1}),
        c("cpo", None, 300, 30, {"learning_rate": 1e-3, "beta": 0.1, "warmup_steps": 3}),
        c("reward", None, 300, 30, {"learning_rate": 1e-3, "lr_scheduler_type": "constant"}),
    ]
    for trainer, runs in (("grpo", ((1e-4, 0.04, 0.7), (5e-5, 0.04, 1.2), (2e-4, 0.0, 1.0))),
                          ("rloo", ((1e-4, 0.05, 0.7), (3e-4, 0.0, 1.0)))):
        for i, (lr, beta, temperature) in enumerate(runs):
            healthy.append(c(trainer, None, 300 + i, 24, {
                "learning_rate": lr, "beta": beta, "temperature": temperature,
                "max_completion_length": 64}))
    divergence: dict[str, Any] = {"optim": "sgd", "max_grad_norm": 0.0}
    broken = [
        c("cpo", "lr_zero", 301, 20, {"learning_rate": 0.0}, metrics=_LR),
        c("rloo", "lr_zero", 302, 16, {"learning_rate": 0.0}, metrics=_LR),
        c("kto", "lr_negligible", 303, 20, {"learning_rate": 5e-10}, metrics=_LR),
        c("reward", "lr_negligible", 304, 20, {"learning_rate": 1e-9}, metrics=_LR),
        c("grpo", "warmup_stuck", 305, 16, {"learning_rate": 3e-4, "warmup_steps": 200_000},
          metrics=_LR, onset="lr_tiny"),
        c("cpo", "warmup_stuck", 306, 20, {"learning_rate": 1e-3, "warmup_steps": 80_000},
          metrics=_LR, onset="lr_tiny"),
        c("dpo", "lr_far_too_high", 307, 20, {"learning_rate": 5.0}, metrics=_PREF_DIVERGE,
          onset="loss_jump"),
        c("orpo", "clipping_off", 308, 20, {"learning_rate": 50.0, **divergence},
          metrics=(*_PREF_DIVERGE, "nll_loss", "log_odds_ratio", "log_odds_chosen"),
          onset="grad_jump"),
        c("cpo", "identical_pairs", 309, 20, {"learning_rate": 2e-3}, {"identical": True},
          metrics=("rewards/margins", "rewards/accuracies", "loss")),
        c("sft", "frozen_model", 310, 20, {"learning_rate": 3e-4}, {"frozen": True},
          metrics=("grad_norm", "loss"), onset="grad_zero"),
        c("kto", "frozen_model", 311, 20, {"learning_rate": 1e-3}, {"frozen": True},
          metrics=("grad_norm", "loss", "rewards/margins", "kl"), onset="grad_zero"),
        c("grpo", "zero_reward_variance", 312, 16, {"learning_rate": 3e-4, "beta": 0.0},
          {"reward": "constant"}, metrics=_FLAT_GROUPS, onset="reward_flat"),
        c("rloo", "truncation", 313, 16, {"learning_rate": 1e-4, "max_completion_length": 6},
          metrics=("completions/clipped_ratio",), onset="clipped"),
        c("grpo", "empty_completions", 314, 24, {"learning_rate": 2e-2,
                                                 "lr_scheduler_type": "constant"},
          {"reward": "short"}, onset="length_zero", metrics=(*_LENGTHS, "entropy")),
        c("rloo", "length_hacking", 315, 24, {"learning_rate": 2e-2, "max_completion_length": 28,
                                              "lr_scheduler_type": "constant"},
          {"reward": "long"}, onset="length_at_cap", metrics=_LENGTHS),
        c("rloo", "entropy_collapse", 316, 16, {"learning_rate": 1e-4, "temperature": 0.1},
          metrics=("entropy", "reward_std", "frac_reward_zero_std"), onset="entropy_gone"),
        c("grpo", "entropy_collapse", 317, 16, {"learning_rate": 2e-4, "temperature": 0.08},
          metrics=("entropy", "reward_std", "frac_reward_zero_std"), onset="entropy_gone"),
        c("rloo", "kl_blowup", 318, 16, {"learning_rate": 0.25, "beta": 0.1,
                                         "lr_scheduler_type": "constant"},
          metrics=("kl",), onset="kl_high"),
        c("sft", "nan", 319, 20, {"learning_rate": 150.0, **divergence},
          metrics=("loss", "grad_norm"), onset="nonfinite_or_diverged"),
        c("grpo", "reward_none", 320, 16, {"learning_rate": 1e-4, "beta": 0.0},
          {"reward": "none"}, metrics=_REWARD_NONE, onset="first"),
        c("reward", "reward_model_blowup", 321, 20, {"learning_rate": 4.0},
          metrics=_REWARD_MODEL, onset="loss_jump"),
    ]
    return [*healthy, *broken]


UNSEEN: tuple[Case, ...] = tuple(_unseen())
