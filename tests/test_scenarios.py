"""Scenario suite: real TRL runs on the tiny offline model, healthy and broken, replayed
through the built-in packs. Each broken run must be caught by the named rule; a healthy run must
raise no high or critical alert.

The runs are captured as callback events: a small TrainerCallback writes each ``on_log`` dict
with :class:`trainguard.EventWriter` (independent of the real TrainGuardCallback), and the
file is replayed with :func:`trainguard.rules.testing.replay`. Steps and completions are kept
tiny so the suite runs in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from trainguard import EventWriter
from trainguard.monitor.alerts import Alert
from trainguard.rules.detect import DEFAULT_PACKS, detect_trainer
from trainguard.rules.testing import replay

pytestmark = [pytest.mark.slow, pytest.mark.trl]

#: Packs replayed per trainer kind: common + the default pack + the opt-in strict/KL packs, so a
#: healthy run shows that even the strict packs raise no high alert.
EXTRA_PACKS = {"grpo": ["grpo_strict", "kl_drift"], "dpo": [], "sft": []}
SERIOUS = {"high", "critical"}


@dataclass
class Outcome:
    """A captured run and the alerts its replay raised."""

    kind: str | None
    records: list[tuple[int, dict[str, float]]]
    alerts: list[Alert] = field(default_factory=list)

    def serious(self) -> list[str]:
        return [f"{a.rule}@{a.step}" for a in self.alerts if a.severity in SERIOUS]

    def first(self, rule: str) -> int | None:
        return next((a.step for a in self.alerts if a.rule == rule), None)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One tiny Llama for every scenario."""
    from tests.tiny_trl import build_tiny_model
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _capture_callback(writer: EventWriter, records: list[tuple[int, dict[str, float]]]) -> Any:
    from transformers import TrainerCallback

    class Capture(TrainerCallback):  # type: ignore[misc]
        """Writes every training on_log dict as one canonical event."""

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                   **kwargs: Any) -> None:
            if not logs or "train_runtime" in logs:
                return  # the end-of-run summary is not a training step
            metrics = {k: float(v) for k, v in logs.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            writer.log_metrics(state.global_step, metrics)
            records.append((state.global_step, metrics))

    return Capture()


def _train(tmp: Path, build: Callable[[Any, dict[str, Any]], Any]) -> Outcome:
    records: list[tuple[int, dict[str, float]]] = []
    run_dir = tmp / "run"
    common = dict(output_dir=str(tmp / "out"), use_cpu=True, report_to=[], save_strategy="no",
                  logging_steps=1, disable_tqdm=True, seed=0)
    with EventWriter(run_dir, rank=0, world_size=1) as writer:
        trainer = build(_capture_callback(writer, records), common)
        trainer.train()
    kind = detect_trainer(records[0][1]) if records else None
    packs = ["common"] + ([DEFAULT_PACKS[kind]] if kind else []) + EXTRA_PACKS.get(kind or "", [])
    events = sorted(run_dir.glob("events.rank*.jsonl"))
    assert 1 == len(events)
    return Outcome(kind, records, replay(events[0], packs, trainer=kind))


def _sft(model: str, lr: float, steps: int) -> Callable[[Any, dict[str, Any]], Any]:
    def build(cb: Any, common: dict[str, Any]) -> Any:
        from trl import SFTConfig, SFTTrainer

        from tests.tiny_trl import sft_dataset
        args = SFTConfig(per_device_train_batch_size=4, max_steps=steps, learning_rate=lr,
                         **common)
        return SFTTrainer(model=model, args=args, train_dataset=sft_dataset(64), callbacks=[cb])
    return build


def _dpo(model: str, lr: float, steps: int) -> Callable[[Any, dict[str, Any]], Any]:
    def build(cb: Any, common: dict[str, Any]) -> Any:
        from trl import DPOConfig, DPOTrainer

        from tests.tiny_trl import preference_dataset
        args = DPOConfig(per_device_train_batch_size=4, max_steps=steps, learning_rate=lr,
                         **common)
        return DPOTrainer(model=model, args=args, train_dataset=preference_dataset(64),
                          callbacks=[cb])
    return build


def _constant_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """A broken reward function: the same score for everything."""
    return [1.0] * len(completions)


def _grpo(model: str, *, lr: float, steps: int, max_len: int, beta: float = 0.0,
          reward: Any = None) -> Callable[[Any, dict[str, Any]], Any]:
    def build(cb: Any, common: dict[str, Any]) -> Any:
        from trl import GRPOConfig, GRPOTrainer

        from tests.tiny_trl import prompt_dataset, reward_len
        args = GRPOConfig(per_device_train_batch_size=4, num_generations=4,
                          max_completion_length=max_len, max_steps=steps, learning_rate=lr,
                          beta=beta, **common)
        return GRPOTrainer(model=model, reward_funcs=reward or reward_len, args=args,
                           train_dataset=prompt_dataset(64), callbacks=[cb])
    return build


# -- healthy runs: no high or critical alert ---------------------------------------------------


def test_healthy_sft_raises_no_serious_alert(tiny_model: str, tmp_path: Path) -> None:
    """A normal SFT run (lr 1e-3) is detected as sft and raises nothing high or critical."""
    out = _train(tmp_path, _sft(tiny_model, 1e-3, 25))
    assert ("sft", []) == (out.kind, out.serious())


def test_healthy_dpo_raises_no_serious_alert(tiny_model: str, tmp_path: Path) -> None:
    """A normal DPO run is detected as dpo and raises nothing high or critical."""
    out = _train(tmp_path, _dpo(tiny_model, 1e-3, 20))
    assert ("dpo", []) == (out.kind, out.serious())


def test_healthy_grpo_raises_no_serious_alert(tiny_model: str, tmp_path: Path) -> None:
    """A normal GRPO run (room to finish completions) raises nothing high or critical."""
    out = _train(tmp_path, _grpo(tiny_model, lr=1e-4, steps=12, max_len=24))
    assert ("grpo", []) == (out.kind, out.serious())


# -- broken runs: caught by the named rule -----------------------------------------------------


def test_sft_learning_rate_zero_is_caught(tiny_model: str, tmp_path: Path) -> None:
    """lr = 0 fires common.learning_rate_zero after 5 logged steps."""
    out = _train(tmp_path, _sft(tiny_model, 0.0, 8))
    assert 5 == out.first("common.learning_rate_zero")


def test_dpo_learning_rate_zero_is_caught(tiny_model: str, tmp_path: Path) -> None:
    """lr = 0 in DPO fires common.learning_rate_zero after 5 logged steps."""
    out = _train(tmp_path, _dpo(tiny_model, 0.0, 8))
    assert ("dpo", 5) == (out.kind, out.first("common.learning_rate_zero"))


def test_sft_learning_rate_far_too_high_is_caught(tiny_model: str, tmp_path: Path) -> None:
    """lr = 5 makes the loss jump 60x at step 2: Megatron's spiky-loss rule and the
    worse-than-uniform rule both fire within a few steps."""
    out = _train(tmp_path, _sft(tiny_model, 5.0, 8))
    fired = {a.rule for a in out.alerts if a.severity in SERIOUS}
    assert {"common.loss_spike_megatron", "sft.loss_worse_than_uniform"} <= fired


def test_grpo_constant_rewards_are_caught(tiny_model: str, tmp_path: Path) -> None:
    """A reward function that returns a constant leaves no learning signal."""
    out = _train(tmp_path, _grpo(tiny_model, lr=1e-3, steps=12, max_len=4,
                                 reward=_constant_reward))
    assert (10, 10) == (out.first("grpo.no_learning_signal"), out.first("grpo.reward_std_zero"))


def test_grpo_completions_cut_at_the_limit_are_caught(tiny_model: str, tmp_path: Path) -> None:
    """max_completion_length=2 truncates every completion: grpo_strict.truncated_most fires."""
    out = _train(tmp_path, _grpo(tiny_model, lr=1e-4, steps=9, max_len=2))
    assert 8 == out.first("grpo_strict.truncated_most")


def test_grpo_overwhelmed_kl_penalty_is_caught(tiny_model: str, tmp_path: Path) -> None:
    """beta = 0.04 against lr = 0.5: KL leaves the reference within two steps and
    grpo.kl_blowup fires after five steps above 1."""
    out = _train(tmp_path, _grpo(tiny_model, lr=0.5, steps=8, max_len=4, beta=0.04))
    onset = next(s for s, m in out.records if m.get("kl", 0.0) > 1.0)
    fired = out.first("grpo.kl_blowup")
    assert fired is not None and onset + 4 == fired and not math.isnan(onset)
