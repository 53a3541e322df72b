"""Trainer detection from metric keys (keys from the TRL 1.16 / verl / OpenRLHF tables)."""

from __future__ import annotations

import pytest

from trainguard.rules.detect import DEFAULT_PACKS, detect_trainer
from trainguard.rules.loader import builtin_pack_names

BASE = ["loss", "grad_norm", "learning_rate", "epoch"]
GRPO = ["clip_ratio/high_max", "clip_ratio/high_mean", "clip_ratio/low_mean", "clip_ratio/low_min",
        "clip_ratio/region_mean", "completions/clipped_ratio", "completions/mean_length",
        "entropy", "frac_reward_zero_std", "num_tokens", "reward", "reward_std", "step_time"]

CASES = {
    "sft": ["entropy", "mean_token_accuracy", "num_tokens"],
    "dpo": ["entropy", "logits/chosen", "logits/rejected", "logps/chosen", "logps/rejected",
            "mean_token_accuracy", "num_tokens", "rewards/accuracies", "rewards/chosen",
            "rewards/margins", "rewards/rejected"],
    "kto": ["entropy", "kl", "logits/chosen", "logits/rejected", "logps/chosen",
            "logps/rejected", "num_tokens", "rewards/chosen", "rewards/margins",
            "rewards/rejected"],
    "reward": ["accuracy", "margin", "max_reward", "mean_reward", "min_reward", "num_tokens"],
    "grpo": GRPO,
    "online_dpo": ["beta", "logps/chosen", "logps/rejected", "objective/entropy", "objective/kl",
                   "objective/non_score_reward", "objective/rlhf_reward", "objective/scores",
                   "objective/scores_margin", "rewards/accuracies", "rewards/chosen",
                   "rewards/margins", "rewards/rejected", "val/contain_eos_token"],
    "orpo": ["log_odds_chosen", "log_odds_ratio", "logits/chosen", "logits/rejected",
             "logps/chosen", "logps/rejected", "nll_loss", "rewards/accuracies",
             "rewards/chosen", "rewards/margins", "rewards/rejected"],
    "cpo": ["logits/chosen", "logits/rejected", "logps/chosen", "logps/rejected", "nll_loss",
            "rewards/accuracies", "rewards/chosen", "rewards/margins", "rewards/rejected"],
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_detects_each_trl_trainer_from_its_keys(kind: str) -> None:
    """The keys a TRL trainer logs identify its kind."""
    assert kind == detect_trainer(BASE + CASES[kind])


def test_grpo_with_kl_and_rloo_detect_as_grpo() -> None:
    """RLOO and GRPO with beta > 0 log the same keys: both read as grpo."""
    assert "grpo" == detect_trainer(BASE + GRPO + ["kl"])


def test_wandb_prefixed_keys_are_detected() -> None:
    """train/ prefixes added by rewrite_logs do not hide the trainer."""
    assert "dpo" == detect_trainer(["train/" + k for k in BASE + CASES["dpo"]])


def test_verl_and_openrlhf_detect_as_ppo() -> None:
    """verl and OpenRLHF PPO keys read as ppo."""
    assert "ppo" == detect_trainer(["actor/pg_loss", "actor/entropy", "critic/vf_loss"])
    assert "ppo" == detect_trainer(["policy_loss", "actor_lr", "kl", "reward"])


def test_plain_loss_is_not_a_known_trainer() -> None:
    """A GKD or plain loop log (loss, grad_norm, lr) matches no trainer."""
    assert None is detect_trainer(BASE)


def test_every_default_pack_exists() -> None:
    """Every default pack is a built-in pack."""
    assert set() == set(DEFAULT_PACKS.values()) - set(builtin_pack_names())
