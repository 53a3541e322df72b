"""The detection evidence's cases: real TRL 1.16 trainers on the tiny offline model, healthy and
broken, as plain data (so a cache can name them) plus the code that builds each trainer.

A :class:`Case` says which trainer, which seed and hyperparameters, which failure it carries
(``None`` for a healthy run), how to find the step where that failure first shows in the logged
metrics (its onset, computed from the callback's full-precision events) and which metrics an
alert must name to count as having named the failure. The cases were chosen to be other seeds,
hyperparameters and failure kinds than the scenario suite's (``tests/scenario_runs.py``).

Imports of torch, transformers and TRL happen inside :func:`build_trainer`, so listing cases is
cheap. Used by ``benchmarks/detection_generate.py`` (trains and caches) and
``benchmarks/detection_score.py`` (scores the cache through the real CLI).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CASES", "FAILURE_FAMILIES", "HOLDOUT", "ONSETS", "TRAINERS", "Case", "build_trainer",
           "case_by_name", "find_onset"]

TRAINERS = ("sft", "dpo", "kto", "orpo", "cpo", "reward", "grpo", "rloo")

#: failure kind -> the family the issue names it under.
FAILURE_FAMILIES: dict[str, str] = {
    "lr_zero": "optimizer", "lr_negligible": "optimizer", "lr_far_too_high": "optimizer",
    "warmup_stuck": "optimizer", "clipping_off": "optimizer",
    "identical_pairs": "no signal", "zero_reward_variance": "no signal",
    "frozen_model": "no signal",
    "truncation": "generation", "length_hacking": "generation",
    "empty_completions": "generation", "entropy_collapse": "generation",
    "kl_blowup": "divergence", "nan": "divergence",
    "reward_none": "reward model", "reward_model_blowup": "reward model",
}

Records = Sequence[tuple[int, Mapping[str, float]]]


@dataclass(frozen=True)
class Case:
    """One training run and what a monitor should say about it.

    ``config``: keyword arguments of the trainer's config class on top of the defaults below.
    ``variant``: what else differs (``identical`` preference pairs, a ``frozen`` model, a
    GRPO/RLOO ``reward`` function by name). ``metrics``: an alert counts as naming the failure
    when its metric is one of these. ``onset``: a key of :data:`ONSETS`.
    """

    trainer: str
    failure: str | None
    seed: int
    steps: int
    config: Mapping[str, Any] = field(default_factory=dict)
    variant: Mapping[str, Any] = field(default_factory=dict)
    metrics: tuple[str, ...] = ()
    onset: str = "first"
    note: str = ""

    @property
    def name(self) -> str:
        """``trainer-failure-sSEED`` (``healthy`` for a healthy run): the cache folder's name."""
        return f"{self.trainer}-{self.failure or 'healthy'}-s{self.seed}"

    @property
    def healthy(self) -> bool:
        """A run without a fault."""
        return self.failure is None


# -- onsets: the first logged step whose metrics show the failure ------------------------------


def _first(records: Records, test: Callable[[Mapping[str, float]], bool]) -> int | None:
    return next((s for s, m in records if test(m)), None)


def _series(records: Records, key: str) -> list[tuple[int, float]]:
    return [(s, m[key]) for s, m in records if key in m]


def _jump(records: Records, key: str, factor: float) -> int | None:
    """First step whose |key| is over ``factor`` x the first step's (or is not finite)."""
    values = _series(records, key)
    if not values:
        return None
    base = abs(values[0][1])
    return next((s for s, v in values[1:] if not abs(v) <= factor * max(base, 1e-12)), None)


def _nonfinite(records: Records) -> int | None:
    return _first(records, lambda m: any(not math.isfinite(v) for k, v in m.items()
                                         if k in ("loss", "grad_norm")))


def _nonfinite_or_diverged(records: Records) -> int | None:
    """The first non-finite loss or gradient; where the run never goes non-finite (the same
    weights overflow to exact zeros instead of NaN on some CPUs' floating point), the loss
    jump that began the divergence."""
    found = _nonfinite(records)
    return found if found is not None else _jump(records, "loss", 2.0)


def _entropy_gone(records: Records) -> int | None:
    """Under a tenth of the first step's entropy, or under 0.5 nats at all: the untrained tiny
    model samples from ~3.6 nats (its 38-token vocabulary), so a run that starts collapsed
    (a near-zero temperature) shows it from step 1."""
    values = _series(records, "entropy")
    if not values:
        return None
    return next((s for s, v in values if v < 0.1 * values[0][1] or v < 0.5), None)


def _length_at_cap(records: Records) -> int | None:
    """Length hacking: the first step at which nearly every completion runs to the cap."""
    return _first(records, lambda m: m.get("completions/clipped_ratio", 0.0) >= 0.9)


ONSETS: dict[str, Callable[[Records], int | None]] = {
    "first": lambda r: r[0][0] if r else None,
    "lr_tiny": lambda r: _first(r, lambda m: m.get("learning_rate", 1.0) < 1e-7),
    "loss_jump": lambda r: _jump(r, "loss", 2.0),
    "grad_jump": lambda r: _jump(r, "grad_norm", 10.0),
    "nonfinite": _nonfinite,
    "nonfinite_or_diverged": _nonfinite_or_diverged,
    "entropy_gone": _entropy_gone,
    "clipped": lambda r: _first(r, lambda m: m.get("completions/clipped_ratio", 0.0) > 0.5),
    "length_at_cap": _length_at_cap,
    "length_zero": lambda r: _first(r, lambda m: m.get("completions/mean_length", 9.0) <= 1.5),
    "kl_high": lambda r: _first(r, lambda m: m.get("kl", 0.0) > 1.0),
    "reward_flat": lambda r: _first(r, lambda m: m.get("frac_reward_zero_std", 0.0) >= 0.99),
    "grad_zero": lambda r: _first(r, lambda m: m.get("grad_norm", 1.0) < 1e-6),
    "margin_jump": lambda r: _first(r, lambda m: abs(m.get("rewards/margins", 0.0)) > 5.0),
}


def find_onset(case: Case, records: Records) -> int | None:
    """The step where ``case``'s failure first shows in ``records`` (None for healthy runs)."""
    if case.healthy:
        return None
    return ONSETS[case.onset](records)


# -- the cases ---------------------------------------------------------------------------------

_PREF_DIVERGE = ("loss", "grad_norm", "rewards/margins", "rewards/chosen", "rewards/rejected",
                 "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected")
_LR = ("learning_rate",)
_FLAT_GROUPS = ("reward_std", "frac_reward_zero_std", "grad_norm", "loss")
#: TRL prints "All reward functions returned None" on stderr; trainguard reads it as this metric.
_REWARD_NONE = (*_FLAT_GROUPS, "reward", "stdout/reward_functions_none")


def _healthy() -> list[Case]:
    """3 seeds per trainer, each with its own sane hyperparameters."""
    sched = ("linear", "cosine", "constant")
    out: list[Case] = []
    for i, (lr, bs) in enumerate(((1e-3, 4), (5e-4, 8), (2e-3, 4))):
        out.append(Case("sft", None, i, 30, {"learning_rate": lr, "per_device_train_batch_size": bs,
                                            "lr_scheduler_type": sched[i], "warmup_steps": 3 * i}))
    for trainer in ("dpo", "kto", "orpo", "cpo", "reward"):
        for i, lr in enumerate((5e-4, 1e-3, 2e-4)):
            cfg: dict[str, Any] = {"learning_rate": lr, "lr_scheduler_type": sched[i]}
            if trainer in ("dpo", "kto", "orpo", "cpo"):
                cfg["beta"] = (0.1, 0.2, 0.05)[i]
            out.append(Case(trainer, None, i, 30, cfg))
    for trainer in ("grpo", "rloo"):
        for i, (lr, beta) in enumerate(((1e-4, 0.04), (5e-5, 0.0), (2e-4, 0.04))):
            # max_completion_length 64: the untrained tiny model rarely ends a completion, so
            # a shorter cap truncates 25-60% of a healthy run's completions.
            out.append(Case(trainer, None, i, 24, {"learning_rate": lr, "beta": beta,
                                                  "lr_scheduler_type": sched[i],
                                                  "max_completion_length": 64}))
    return out


def _broken() -> list[Case]:
    c = Case
    return [
        # -- optimizer misconfiguration
        c("sft", "lr_zero", 3, 20, {"learning_rate": 0.0}, metrics=_LR),
        c("kto", "lr_zero", 4, 20, {"learning_rate": 0.0}, metrics=_LR),
        c("reward", "lr_zero", 5, 20, {"learning_rate": 0.0}, metrics=_LR),
        c("grpo", "lr_zero", 6, 16, {"learning_rate": 0.0}, metrics=_LR),
        c("sft", "lr_negligible", 7, 20, {"learning_rate": 1e-9}, metrics=_LR),
        c("kto", "lr_negligible", 8, 20, {"learning_rate": 3e-10}, metrics=_LR),
        c("cpo", "lr_negligible", 9, 20, {"learning_rate": 1e-9}, metrics=_LR),
        c("rloo", "lr_negligible", 10, 16, {"learning_rate": 1e-10}, metrics=_LR),
        c("sft", "warmup_stuck", 11, 20, {"learning_rate": 1e-3, "warmup_steps": 100_000},
          metrics=_LR, onset="lr_tiny", note="warmup_steps 100000 against max_steps 20"),
        c("dpo", "warmup_stuck", 12, 20, {"learning_rate": 5e-4, "warmup_steps": 100_000},
          metrics=_LR, onset="lr_tiny"),
        c("kto", "warmup_stuck", 13, 20, {"learning_rate": 1e-3, "warmup_steps": 50_000},
          metrics=_LR, onset="lr_tiny"),
        c("sft", "lr_far_too_high", 14, 20, {"learning_rate": 3.0},
          metrics=("loss", "grad_norm", "entropy", "mean_token_accuracy"), onset="loss_jump"),
        c("dpo", "lr_far_too_high", 15, 20, {"learning_rate": 3.0}, metrics=_PREF_DIVERGE,
          onset="loss_jump"),
        c("kto", "lr_far_too_high", 16, 20, {"learning_rate": 5.0},
          metrics=(*_PREF_DIVERGE, "kl"), onset="margin_jump",
          note="the loss stays at 0.5 and the gradient at 0 while the margins swing by 100s"),
        c("orpo", "lr_far_too_high", 17, 20, {"learning_rate": 5.0},
          metrics=(*_PREF_DIVERGE, "nll_loss", "log_odds_ratio", "log_odds_chosen"),
          onset="loss_jump"),
        c("cpo", "lr_far_too_high", 18, 20, {"learning_rate": 5.0},
          metrics=(*_PREF_DIVERGE, "nll_loss"), onset="loss_jump"),
        c("sft", "clipping_off", 19, 20, {"learning_rate": 30.0, "optim": "sgd",
                                          "max_grad_norm": 0.0},
          metrics=("loss", "grad_norm"), onset="grad_jump",
          note="plain SGD, lr 30, max_grad_norm 0 (no clipping)"),
        c("dpo", "clipping_off", 20, 20, {"learning_rate": 50.0, "optim": "sgd",
                                          "max_grad_norm": 0.0},
          metrics=_PREF_DIVERGE, onset="grad_jump"),
        # -- no learning signal
        c("dpo", "identical_pairs", 21, 20, {"learning_rate": 1e-3}, {"identical": True},
          metrics=("loss", "grad_norm", "rewards/margins", "rewards/accuracies")),
        c("orpo", "identical_pairs", 22, 20, {"learning_rate": 1e-3}, {"identical": True},
          metrics=("log_odds_ratio", "log_odds_chosen", "rewards/margins",
                   "rewards/accuracies")),
        c("cpo", "identical_pairs", 23, 20, {"learning_rate": 1e-3}, {"identical": True},
          metrics=("rewards/margins", "rewards/accuracies", "loss")),
        c("reward", "identical_pairs", 24, 20, {"learning_rate": 1e-3}, {"identical": True},
          metrics=("loss", "grad_norm", "margin", "accuracy")),
        c("grpo", "zero_reward_variance", 25, 16, {"learning_rate": 1e-4},
          {"reward": "constant"}, metrics=_FLAT_GROUPS, onset="reward_flat"),
        c("rloo", "zero_reward_variance", 26, 16, {"learning_rate": 1e-4},
          {"reward": "constant"}, metrics=_FLAT_GROUPS, onset="reward_flat"),
        c("sft", "frozen_model", 27, 20, {"learning_rate": 1e-3}, {"frozen": True},
          metrics=("grad_norm", "loss"), onset="grad_zero",
          note="every weight requires_grad=False (a PEFT mistake); loss still computed"),
        c("dpo", "frozen_model", 28, 20, {"learning_rate": 1e-3}, {"frozen": True},
          metrics=("grad_norm", "loss", "rewards/margins"), onset="grad_zero"),
        # -- generation failures
        c("grpo", "truncation", 29, 16, {"learning_rate": 1e-4, "max_completion_length": 3},
          metrics=("completions/clipped_ratio",), onset="clipped"),
        c("rloo", "truncation", 30, 16, {"learning_rate": 1e-4, "max_completion_length": 3},
          metrics=("completions/clipped_ratio",), onset="clipped"),
        c("grpo", "length_hacking", 31, 24, {"learning_rate": 3e-2, "max_completion_length": 24,
                                             "lr_scheduler_type": "constant"},
          {"reward": "long"}, onset="length_at_cap",
          metrics=("completions/clipped_ratio", "completions/mean_length",
                   "completions/max_length", "completions/mean_terminated_length"),
          note="a reward that pays for length; lengths run to max_completion_length"),
        c("rloo", "length_hacking", 32, 24, {"learning_rate": 3e-2, "max_completion_length": 24,
                                             "lr_scheduler_type": "constant"},
          {"reward": "long"}, onset="length_at_cap",
          metrics=("completions/clipped_ratio", "completions/mean_length",
                   "completions/max_length", "completions/mean_terminated_length")),
        c("grpo", "empty_completions", 33, 24, {"learning_rate": 3e-2,
                                                "lr_scheduler_type": "constant"},
          {"reward": "short"}, onset="length_zero",
          metrics=("completions/mean_length", "completions/max_length",
                   "completions/mean_terminated_length", "entropy"),
          note="a reward that pays for brevity; completions collapse to end-of-sequence"),
        c("grpo", "entropy_collapse", 34, 16, {"learning_rate": 1e-4, "temperature": 0.02},
          metrics=("entropy", "reward_std", "frac_reward_zero_std"), onset="entropy_gone",
          note="sampling temperature 0.02"),
        c("rloo", "entropy_collapse", 35, 16, {"learning_rate": 1e-4, "temperature": 0.02},
          metrics=("entropy", "reward_std", "frac_reward_zero_std"), onset="entropy_gone"),
        # -- divergence
        c("grpo", "kl_blowup", 36, 16, {"learning_rate": 0.3, "beta": 0.04,
                                        "lr_scheduler_type": "constant"},
          metrics=("kl",), onset="kl_high"),
        c("rloo", "kl_blowup", 37, 16, {"learning_rate": 0.3, "beta": 0.05,
                                        "lr_scheduler_type": "constant"},
          metrics=("kl",), onset="kl_high"),
        c("sft", "nan", 38, 20, {"learning_rate": 100.0, "optim": "sgd", "max_grad_norm": 0.0},
          metrics=("loss", "grad_norm"), onset="nonfinite_or_diverged",
          note="plain SGD at lr 100 without clipping: the weights overflow within a few steps"),
        c("reward", "nan", 39, 20, {"learning_rate": 300.0, "optim": "sgd",
                                    "max_grad_norm": 0.0},
          metrics=("loss", "grad_norm", "margin", "max_reward", "min_reward", "mean_reward"),
          onset="nonfinite_or_diverged"),
        # -- reward-model failures
        c("grpo", "reward_none", 40, 16, {"learning_rate": 1e-4}, {"reward": "none"},
          metrics=_REWARD_NONE, onset="first",
          note="the reward function returns None for every completion"),
        c("rloo", "reward_none", 41, 16, {"learning_rate": 1e-4}, {"reward": "none"},
          metrics=_REWARD_NONE, onset="first"),
        c("reward", "reward_model_blowup", 42, 20, {"learning_rate": 3.0},
          metrics=("loss", "grad_norm", "margin", "max_reward", "min_reward", "mean_reward"),
          onset="loss_jump", note="RewardTrainer at lr 3: scores and loss run away"),
        c("reward", "clipping_off", 43, 20, {"learning_rate": 50.0, "optim": "sgd",
                                             "max_grad_norm": 0.0},
          metrics=("loss", "grad_norm", "margin", "max_reward", "min_reward", "mean_reward"),
          onset="grad_jump"),
    ]


def _holdout() -> list[Case]:
    """Other seeds and values for the same trainers and failure kinds, made after the rules
    were first tuned on :data:`CASES`: a check that the rules generalize. Their per-case
    findings were not handed to the rule authors."""
    c = Case
    sched = ("cosine", "linear")
    healthy = [
        c("sft", None, 100, 30, {"learning_rate": 3e-4, "per_device_train_batch_size": 2,
                                 "lr_scheduler_type": "cosine", "warmup_steps": 3}),
        c("sft", None, 101, 30, {"learning_rate": 4e-3, "weight_decay": 0.1}),
    ]
    for trainer, lrs in (("dpo", (1e-4, 3e-3)), ("kto", (3e-4, 2e-3)), ("orpo", (1e-4, 2e-3)),
                         ("cpo", (3e-4, 2e-3)), ("reward", (5e-4, 3e-3))):
        for i, lr in enumerate(lrs):
            cfg: dict[str, Any] = {"learning_rate": lr, "lr_scheduler_type": sched[i],
                                   "warmup_steps": 2 * i}
            if trainer != "reward":
                cfg["beta"] = (0.3, 0.02)[i]
            healthy.append(c(trainer, None, 100 + i, 30, cfg))
    for trainer in ("grpo", "rloo"):
        for i, (lr, beta) in enumerate(((3e-5, 0.1), (3e-4, 0.02))):
            healthy.append(c(trainer, None, 100 + i, 24, {
                "learning_rate": lr, "beta": beta, "lr_scheduler_type": sched[i],
                "max_completion_length": 64, "temperature": (1.0, 0.8)[i]}))
    broken = [
        c("dpo", "lr_zero", 200, 20, {"learning_rate": 0.0}, metrics=_LR),
        c("orpo", "lr_zero", 201, 20, {"learning_rate": 0.0}, metrics=_LR),
        c("dpo", "lr_negligible", 202, 20, {"learning_rate": 5e-9}, metrics=_LR),
        c("grpo", "lr_negligible", 203, 16, {"learning_rate": 2e-9}, metrics=_LR),
        c("orpo", "warmup_stuck", 204, 20, {"learning_rate": 5e-4, "warmup_steps": 30_000},
          metrics=_LR, onset="lr_tiny"),
        c("grpo", "warmup_stuck", 205, 16, {"learning_rate": 1e-4, "warmup_steps": 100_000},
          metrics=_LR, onset="lr_tiny"),
        c("sft", "lr_far_too_high", 206, 20, {"learning_rate": 10.0},
          metrics=("loss", "grad_norm", "entropy", "mean_token_accuracy"), onset="loss_jump"),
        c("cpo", "clipping_off", 207, 20, {"learning_rate": 50.0, "optim": "sgd",
                                           "max_grad_norm": 0.0},
          metrics=(*_PREF_DIVERGE, "nll_loss"), onset="grad_jump"),
        c("dpo", "identical_pairs", 208, 20, {"learning_rate": 3e-3, "beta": 0.5},
          {"identical": True},
          metrics=("loss", "grad_norm", "rewards/margins", "rewards/accuracies")),
        c("orpo", "frozen_model", 209, 20, {"learning_rate": 1e-3}, {"frozen": True},
          metrics=("grad_norm", "loss"), onset="grad_zero"),
        c("rloo", "zero_reward_variance", 210, 16, {"learning_rate": 3e-4, "beta": 0.0},
          {"reward": "constant"}, metrics=_FLAT_GROUPS, onset="reward_flat"),
        c("grpo", "truncation", 211, 16, {"learning_rate": 1e-4, "max_completion_length": 5},
          metrics=("completions/clipped_ratio",), onset="clipped"),
        c("rloo", "truncation", 212, 16, {"learning_rate": 1e-4, "max_completion_length": 4},
          metrics=("completions/clipped_ratio",), onset="clipped"),
        c("grpo", "length_hacking", 213, 24, {"learning_rate": 2e-2, "max_completion_length": 32,
                                              "lr_scheduler_type": "constant"},
          {"reward": "long"}, onset="length_at_cap",
          metrics=("completions/clipped_ratio", "completions/mean_length",
                   "completions/max_length", "completions/mean_terminated_length")),
        c("rloo", "empty_completions", 214, 24, {"learning_rate": 3e-2,
                                                 "lr_scheduler_type": "constant"},
          {"reward": "short"}, onset="length_zero",
          metrics=("completions/mean_length", "completions/max_length",
                   "completions/mean_terminated_length", "entropy")),
        c("grpo", "entropy_collapse", 215, 16, {"learning_rate": 1e-4, "temperature": 0.05},
          metrics=("entropy", "reward_std", "frac_reward_zero_std"), onset="entropy_gone"),
        c("grpo", "kl_blowup", 216, 16, {"learning_rate": 0.2, "beta": 0.1,
                                         "lr_scheduler_type": "constant"},
          metrics=("kl",), onset="kl_high"),
        c("dpo", "nan", 217, 20, {"learning_rate": 300.0, "optim": "sgd", "max_grad_norm": 0.0},
          metrics=("loss", "grad_norm", *_PREF_DIVERGE), onset="nonfinite_or_diverged"),
        c("grpo", "reward_none", 218, 16, {"learning_rate": 3e-4, "beta": 0.04},
          {"reward": "none"}, metrics=_REWARD_NONE, onset="first"),
        c("kto", "lr_far_too_high", 220, 20, {"learning_rate": 8.0, "beta": 0.2},
          metrics=(*_PREF_DIVERGE, "kl"), onset="margin_jump"),
        c("reward", "reward_model_blowup", 219, 20, {"learning_rate": 5.0},
          metrics=("loss", "grad_norm", "margin", "max_reward", "min_reward", "mean_reward"),
          onset="loss_jump"),
    ]
    return [*healthy, *broken]


CASES: tuple[Case, ...] = (*_healthy(), *_broken())
HOLDOUT: tuple[Case, ...] = tuple(_holdout())


def case_by_name(name: str) -> Case:
    """The case called ``name`` (main or held-out set); KeyError names the known ones."""
    for case in (*CASES, *HOLDOUT):
        if case.name == name:
            return case
    raise KeyError(f"no case {name!r}; known: {', '.join(c.name for c in (*CASES, *HOLDOUT))}")


# -- datasets and reward functions -------------------------------------------------------------


def _corpus(seed: int, n: int) -> list[str]:
    from examples.tiny_model import WORDS
    rng = random.Random(1000 + seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def _dataset(case: Case, n: int = 64) -> Any:
    from datasets import Dataset
    texts = _corpus(case.seed, 3 * n)
    if case.trainer == "sft":
        return Dataset.from_dict({"text": texts[:n]})
    if case.trainer == "kto":
        return Dataset.from_dict({"prompt": texts[:n], "completion": texts[n:2 * n],
                                  "label": [i % 2 == 0 for i in range(n)]})
    if case.trainer in ("grpo", "rloo"):
        return Dataset.from_dict({"prompt": texts[:n]})
    chosen, rejected = texts[n:2 * n], texts[2 * n:]
    if case.variant.get("identical"):
        rejected = chosen
    return Dataset.from_dict({"prompt": texts[:n], "chosen": chosen, "rejected": rejected})


def reward_short(completions: list[Any], **kwargs: Any) -> list[float]:
    """Shorter completions score higher, with a small bonus for distinct words (no ties)."""
    return [-len(c) / 20.0 + 0.01 * len(set(str(c).split())) for c in completions]


def reward_long(completions: list[Any], **kwargs: Any) -> list[float]:
    """Longer completions score higher: a reward a policy can hack by never stopping."""
    return [len(str(c).split()) / 4.0 for c in completions]


def reward_constant(completions: list[Any], **kwargs: Any) -> list[float]:
    """A broken reward: the same score for everything."""
    return [1.0] * len(completions)


def reward_none(completions: list[Any], **kwargs: Any) -> list[float | None]:
    """A broken reward: None for every completion (a scorer that failed silently)."""
    return [None] * len(completions)


def reward_healthy(completions: list[Any], **kwargs: Any) -> list[float]:
    """The healthy runs' reward: prefer short, varied answers."""
    return [-len(str(c)) / 40.0 + 0.1 * len(set(str(c).split())) for c in completions]


_REWARDS: dict[str, Callable[..., list[Any]]] = {
    "healthy": reward_healthy, "short": reward_short, "long": reward_long,
    "constant": reward_constant, "none": reward_none,
}


# -- trainers ----------------------------------------------------------------------------------


def _frozen(model_path: str) -> Any:
    """The model with every weight frozen (requires_grad False), as a PEFT mistake leaves it;
    the input embeddings still require grad so the loss can be back-propagated, and one unused
    parameter keeps the optimizer's parameter list non-empty."""
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_path)
    model.requires_grad_(False)
    model.enable_input_require_grads()
    model.register_parameter("unused_adapter", torch.nn.Parameter(torch.zeros(1)))
    return model


def build_trainer(case: Case, model_path: str, output_dir: str, callbacks: list[Any]) -> Any:
    """The TRL trainer for ``case`` on the tiny model at ``model_path``."""
    common: dict[str, Any] = dict(
        output_dir=output_dir, use_cpu=True, report_to=[], save_strategy="no", logging_steps=1,
        seed=case.seed, max_steps=case.steps, per_device_train_batch_size=4)
    common.update(case.config)
    data = _dataset(case)
    model: Any = _frozen(model_path) if case.variant.get("frozen") else model_path
    kind = case.trainer
    if kind == "sft":
        from trl import SFTConfig, SFTTrainer
        return SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=data,
                          callbacks=callbacks)
    if kind == "dpo":
        from trl import DPOConfig, DPOTrainer
        return DPOTrainer(model=model, args=DPOConfig(**common), train_dataset=data,
                          callbacks=callbacks)
    if kind == "kto":
        from trl import KTOConfig, KTOTrainer
        return KTOTrainer(model=model, args=KTOConfig(**common), train_dataset=data,
                          callbacks=callbacks)
    if kind == "reward":
        from trl import RewardConfig, RewardTrainer
        return RewardTrainer(model=model, args=RewardConfig(**common), train_dataset=data,
                             callbacks=callbacks)
    if kind in ("orpo", "cpo"):
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        if kind == "orpo":
            from trl.experimental.orpo import ORPOConfig, ORPOTrainer
            return ORPOTrainer(model=model, args=ORPOConfig(**common), train_dataset=data,
                               processing_class=tokenizer, callbacks=callbacks)
        from trl.experimental.cpo import CPOConfig, CPOTrainer
        return CPOTrainer(model=model, args=CPOConfig(**common), train_dataset=data,
                          processing_class=tokenizer, callbacks=callbacks)
    reward = _REWARDS[str(case.variant.get("reward", "healthy"))]
    common.setdefault("num_generations", 4)
    common.setdefault("max_completion_length", 32)
    common["per_device_train_batch_size"] = 8
    if kind == "grpo":
        from trl import GRPOConfig, GRPOTrainer
        return GRPOTrainer(model=model, reward_funcs=reward, args=GRPOConfig(**common),
                           train_dataset=data, callbacks=callbacks)
    if kind == "rloo":
        from trl import RLOOConfig, RLOOTrainer
        return RLOOTrainer(model=model, reward_funcs=reward, args=RLOOConfig(**common),
                           train_dataset=data, callbacks=callbacks)
    raise ValueError(f"unknown trainer {kind!r}")
