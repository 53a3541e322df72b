"""Which trainer wrote these metrics? Detection from metric keys, and the default pack per kind.

The fingerprints come from the keys TRL 1.16 trainers log (see the TRL reference tables) and the
keys verl and OpenRLHF log. Detection is by the most specific fingerprint first. Limits: RLOO and
GRPO with beta > 0 log exactly the same keys, so both are detected as ``grpo`` (the TRL callback
knows the class and can say ``rloo``); TPO logs DPO's keys and is detected as ``dpo``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["DEFAULT_PACKS", "PackChoice", "TRAINER_KINDS", "choose_packs", "detect_trainer"]

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
    ("ppo", frozenset({"critic/grad_norm"}), frozenset()),         # verl with a critic
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


@dataclass(frozen=True, slots=True)
class PackChoice:
    """What the monitor applies once it knows what is training: the trainer kind the rules are
    filtered by, the packs to add, and one line for the terminal saying which and why."""

    trainer: str | None
    #: Where the kind comes from: ``"run_metadata.json"``, ``"metric keys"`` or ``None``.
    source: str | None
    packs: tuple[str, ...]
    reason: str


def choose_packs(explicit: Sequence[str], recorded: str | None,
                 keys: Iterable[str] = (), commanded: str | None = None) -> PackChoice:
    """The one place packs are chosen (``monitor``, ``trainguard run``, every source).

    ``explicit``: the ``--rules`` given (empty: automatic); ``recorded``: the trainer kind the
    TRL callback wrote in ``run_metadata.json`` (wins over the keys: RLOO and GRPO log the same
    keys); ``commanded``: the kind the trainer's command line names (``trl rloo ...``), which
    stands in for a recorded one; ``keys``: the metric keys seen so far. Without ``--rules`` the
    trainer's default pack
    is added to ``common``; with them nothing is added, but the kind still filters every rule
    scoped to other trainers (an SFT loss-spike rule has nothing to say about GRPO's loss).
    """
    detected = detect_trainer(keys)
    kind: str | None
    source: str | None
    if recorded in DEFAULT_PACKS:
        kind, source = recorded, "run_metadata.json"
        why = "recorded by the trainer's callback in run_metadata.json"
    elif commanded in DEFAULT_PACKS:
        kind, source = commanded, "command line"
        why = f"named by the trainer's command line: trl {commanded}"
    else:
        kind, source = detected, "metric keys" if detected else None
        why = "detected from the metric keys"
    if kind is None:
        return PackChoice(None, None, (), "no trainer recognised yet: every rule applies")
    if source != "metric keys" and detected not in (None, kind):
        why += f"; the keys alone would say {detected}"
    if explicit:
        return PackChoice(kind, source, (), f"trainer {kind} ({why}); --rules given, so no "
                          f"pack is added; rules scoped to other trainers are skipped")
    pack = DEFAULT_PACKS[kind]
    return PackChoice(kind, source, (pack,), f"trainer {kind} ({why}); adds pack {pack}")
