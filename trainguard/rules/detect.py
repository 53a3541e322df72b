"""Which trainer wrote these metrics? Detection from metric keys, and the default pack per kind.

The fingerprints come from the keys TRL 1.16 trainers log (see the TRL reference tables) and the
keys verl and OpenRLHF log. Detection is by the most specific fingerprint first. Limits: RLOO and
GRPO with beta > 0 log exactly the same keys, so both are detected as ``grpo`` (the TRL callback
knows the class and can say ``rloo``); TPO logs DPO's keys and is detected as ``dpo``.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["DEFAULT_PACKS", "TRAINER_KINDS", "detect_trainer"]

#: Trainer kind -> the pack applied (with ``common``) when no ``--rules`` is given.
DEFAULT_PACKS: dict[str, str] = {
    "sft": "sft_basic",
    "dpo": "dpo_basic",
    "kto": "kto_basic",
    "orpo": "orpo_cpo",
    "cpo": "orpo_cpo",
    "reward": "reward_model",
    "grpo": "grpo_safe",
    "rloo": "rloo_basic",
    "online_dpo": "online_dpo",
    "ppo": "ppo_safe",
}

TRAINER_KINDS: tuple[str, ...] = tuple(DEFAULT_PACKS)

# (kind, keys that must all be present, keys that must all be absent), most specific first.
_FINGERPRINTS: tuple[tuple[str, frozenset[str], frozenset[str]], ...] = (
    ("online_dpo", frozenset({"objective/kl"}), frozenset()),
    ("online_dpo", frozenset({"objective/scores"}), frozenset()),
    # verl logs critic/score/mean and actor/pg_loss whatever the algorithm; only a run with a
    # critic (PPO/GAE) logs the critic's values, so a verl run without them is critic-free
    # (GRPO, or RLOO/REINFORCE++, whose group-reward failures grpo_safe watches).
    ("ppo", frozenset({"critic/values/mean"}), frozenset()),       # verl with a critic
    ("ppo", frozenset({"critic/vf_loss"}), frozenset()),           # verl with a critic
    ("grpo", frozenset({"critic/score/mean"}), frozenset()),       # verl, critic-free
    ("grpo", frozenset({"actor/pg_loss"}), frozenset()),           # verl, critic-free
    ("ppo", frozenset({"policy_loss", "actor_lr"}), frozenset()),  # OpenRLHF
    ("ppo", frozenset({"ppo_clip_ratio"}), frozenset()),           # OpenRLHF
    ("orpo", frozenset({"log_odds_ratio"}), frozenset()),
    ("orpo", frozenset({"log_odds_chosen"}), frozenset()),
    ("cpo", frozenset({"nll_loss", "rewards/margins"}), frozenset()),
    ("grpo", frozenset({"frac_reward_zero_std"}), frozenset()),
    ("grpo", frozenset({"clip_ratio/region_mean", "reward"}), frozenset()),
    ("kto", frozenset({"kl", "rewards/chosen"}), frozenset({"rewards/accuracies"})),
    ("dpo", frozenset({"rewards/accuracies", "logps/chosen"}), frozenset()),
    ("dpo", frozenset({"rewards/margins", "logps/rejected"}), frozenset({"kl"})),
    ("reward", frozenset({"accuracy", "margin"}), frozenset()),
    ("reward", frozenset({"mean_reward", "min_reward", "max_reward"}), frozenset()),
    ("sft", frozenset({"mean_token_accuracy"}), frozenset({"rewards/chosen"})),
)


def _strip(key: str) -> str:
    """Fold the W&B/TensorBoard prefixes (``train/x``) back to TRL's own name."""
    for prefix in ("train/", "eval/"):
        if key.startswith(prefix):
            return key[len(prefix):]
    if key.startswith("eval_"):
        return key[5:]
    return key


def detect_trainer(keys: Iterable[str]) -> str | None:
    """The trainer kind (a key of :data:`DEFAULT_PACKS`) that logs these metric keys, or None.

    ``None`` means the keys match no known trainer (plain loss/grad_norm, GKD, distillation):
    apply ``common`` alone.
    """
    seen = {_strip(k) for k in keys}
    for kind, required, forbidden in _FINGERPRINTS:
        if required <= seen and not (forbidden & seen):
            return kind
    return None
