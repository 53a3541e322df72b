"""The scenario suite's runs: real TRL trainers on the tiny offline model, healthy and broken.

Shared by ``tests/test_scenarios.py`` (which asserts the verdicts) and
``benchmarks/scenario_report.py`` (which prints caught / false alerts / delay per pack); this
module imports no pytest.

A run is captured twice, independently of the real TrainGuardCallback: a small TrainerCallback
writes each ``on_log`` dict with :class:`trainguard.EventWriter` (the callback events), and the
Trainer's own printed log dicts are kept as ``stdout.txt`` (the plain-stdout form, for a stdout
parser to replay). The events file is replayed with :func:`trainguard.monitor.engine.testing.replay`
through ``common``, the detected trainer's default pack and, for GRPO, the opt-in strict and KL
packs, so a healthy run shows that even the strict packs stay quiet.

Each :class:`Scenario` names the rules of each pack that must catch it, and how to find the
step where the fault first shows in the logged metrics (its onset), from which the report counts
the steps until the alert. Steps and completions are kept tiny, on one torch thread: the whole
suite trains in about 25 s of CPU.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainguard import EventWriter
from trainguard.monitor.engine.alerts import Alert
from trainguard.monitor.engine.testing import replay
from trainguard.rules.detect import DEFAULT_PACKS, detect_trainer
from trainguard.rules.loader import load_rules

__all__ = ["EXTRA_PACKS", "SCENARIOS", "SERIOUS", "Outcome", "PackRow", "Scenario",
           "pack_rows", "packs_for", "run_scenario", "stdout_verdict"]

#: Opt-in packs replayed per trainer kind on top of ``common`` and the default pack.
EXTRA_PACKS: dict[str, list[str]] = {"grpo": ["grpo_strict", "kl_drift"]}
SERIOUS = frozenset({"high", "critical"})

Records = list[tuple[int, dict[str, float]]]
#: Builds a trainer from (capture callback, common TrainingArguments keywords).
Builder = Callable[[Any, dict[str, Any]], Any]


def packs_for(kind: str | None) -> list[str]:
    """The packs a run of this trainer kind is replayed through."""
    if kind is None:
        return ["common"]
    return ["common", DEFAULT_PACKS[kind], *EXTRA_PACKS.get(kind, [])]


@dataclass
class Outcome:
    """A captured run and the alerts its replay raised."""

    kind: str | None
    records: Records
    alerts: list[Alert] = field(default_factory=list)
    events_path: Path | None = None
    stdout_path: Path | None = None

    def serious(self) -> list[str]:
        """``rule@step`` of every high or critical alert."""
        return [f"{a.rule}@{a.step}" for a in self.alerts if a.severity in SERIOUS]

    def first(self, rule: str) -> int | None:
        """The step at which ``rule`` first fired, or None."""
        return next((a.step for a in self.alerts if a.rule == rule), None)

    def fired(self) -> set[str]:
        """The ids of every rule that fired."""
        return {a.rule for a in self.alerts}


def _capture_callback(writer: EventWriter, records: Records) -> Any:
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


def train(tmp: Path, build: Builder) -> Outcome:
    """Train in ``tmp`` (run dir, stdout capture) and replay the events through the packs."""
    records: Records = []
    run_dir = tmp / "run"
    # disable_tqdm makes the Trainer print each log dict on stdout, as a plain console shows it.
    common = dict(output_dir=str(tmp / "out"), use_cpu=True, report_to=[], save_strategy="no",
                  logging_steps=1, disable_tqdm=True, seed=0)
    stdout_path = tmp / "stdout.txt"
    import torch

    # One thread: the tiny model gains nothing from more, and on a loaded CI machine idle
    # OpenMP workers spin and burn CPU for nothing.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with EventWriter(run_dir, rank=0, world_size=1) as writer, \
                open(stdout_path, "w", encoding="utf-8") as out, contextlib.redirect_stdout(out):
            trainer = build(_capture_callback(writer, records), common)
            trainer.train()
    finally:
        torch.set_num_threads(threads)
    kind = detect_trainer(records[0][1]) if records else None
    events = sorted(run_dir.glob("events.rank*.jsonl"))
    if len(events) != 1:
        raise RuntimeError(f"expected one events file in {run_dir}, found {len(events)}")
    alerts = replay(events[0], packs_for(kind), trainer=kind)
    return Outcome(kind, records, alerts, events[0], stdout_path)


# -- trainer builders --------------------------------------------------------------------------


def sft(model: str, lr: float, steps: int) -> Builder:
    """An SFTTrainer on plain text."""
    def build(cb: Any, common: dict[str, Any]) -> Any:
        from trl import SFTConfig, SFTTrainer

        from tests.tiny_trl import sft_dataset
        args = SFTConfig(per_device_train_batch_size=4, max_steps=steps, learning_rate=lr,
                         **common)
        return SFTTrainer(model=model, args=args, train_dataset=sft_dataset(64), callbacks=[cb])
    return build


def _identical_pairs(n: int) -> Any:
    """Preference rows whose chosen and rejected answers are the same text: no preference."""
    from datasets import Dataset

    from tests.tiny_trl import preference_dataset
    rows = preference_dataset(n)
    return Dataset.from_dict({"prompt": rows["prompt"], "chosen": rows["chosen"],
                              "rejected": rows["chosen"]})


def dpo(model: str, lr: float, steps: int, *, identical: bool = False) -> Builder:
    """A DPOTrainer; ``identical``: chosen == rejected, a preference signal that is constant."""
    def build(cb: Any, common: dict[str, Any]) -> Any:
        from trl import DPOConfig, DPOTrainer

        from tests.tiny_trl import preference_dataset
        args = DPOConfig(per_device_train_batch_size=4, max_steps=steps, learning_rate=lr,
                         **common)
        data = _identical_pairs(64) if identical else preference_dataset(64)
        return DPOTrainer(model=model, args=args, train_dataset=data, callbacks=[cb])
    return build


def constant_reward(completions: list[Any], **kwargs: Any) -> list[float]:
    """A broken reward function: the same score for everything."""
    return [1.0] * len(completions)


def grpo(model: str, *, lr: float, steps: int, max_len: int, beta: float = 0.0,
         reward: Any = None, scheduler: str = "linear") -> Builder:
    """A GRPOTrainer, 4 completions per prompt, 4 per step."""
    def build(cb: Any, common: dict[str, Any]) -> Any:
        from trl import GRPOConfig, GRPOTrainer

        from tests.tiny_trl import prompt_dataset, reward_len
        args = GRPOConfig(per_device_train_batch_size=4, num_generations=4,
                          max_completion_length=max_len, max_steps=steps, learning_rate=lr,
                          beta=beta, lr_scheduler_type=scheduler, **common)
        return GRPOTrainer(model=model, reward_funcs=reward or reward_len, args=args,
                           train_dataset=prompt_dataset(64), callbacks=[cb])
    return build


# -- the scenarios -----------------------------------------------------------------------------


def first_step(test: Callable[[Mapping[str, float]], bool]) -> Callable[[Records], int | None]:
    """An onset finder: the first logged step whose metrics pass ``test``."""
    def onset(records: Records) -> int | None:
        return next((s for s, m in records if test(m)), None)
    return onset


def _loss_jump(records: Records) -> int | None:
    """The first step whose loss is over twice the first step's (a diverging run)."""
    losses = [(s, m["loss"]) for s, m in records if "loss" in m]
    if not losses:
        return None
    base = abs(losses[0][1])
    return next((s for s, v in losses[1:] if not v <= 2 * base), None)


def _entropy_gone(records: Records) -> int | None:
    """The first step whose entropy is under a tenth of the first step's (a collapsed policy)."""
    values = [(s, m["entropy"]) for s, m in records if "entropy" in m]
    if not values:
        return None
    return next((s for s, v in values[1:] if v < 0.1 * values[0][1]), None)


@dataclass(frozen=True)
class Scenario:
    """One run and its expected verdict.

    ``catches``: pack -> the rules of that pack that must fire (a pack with several rules
    catches the scenario when all of them fire). Empty for a healthy run, which must raise no
    high or critical alert at all.
    """

    name: str
    trainer: str
    build: Callable[[str], Builder]
    catches: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    onset: Callable[[Records], int | None] = first_step(lambda m: True)
    doc: str = ""

    @property
    def healthy(self) -> bool:
        """A run without a fault."""
        return not self.catches


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("sft_healthy", "sft", lambda m: sft(m, 1e-3, 25),
             doc="SFT, lr 1e-3"),
    Scenario("dpo_healthy", "dpo", lambda m: dpo(m, 1e-3, 20),
             doc="DPO, lr 1e-3"),
    Scenario("grpo_healthy", "grpo", lambda m: grpo(m, lr=1e-4, steps=12, max_len=64, beta=0.04),
             doc="GRPO, lr 1e-4, beta 0.04, max_completion_length 64 (at 24 the untrained "
                 "model runs to it on 25-100% of a step's completions: half or more cut for 4 "
                 "steps is grpo.completions_truncated, high, since their rewards judge "
                 "unfinished answers)"),
    Scenario("sft_lr_zero", "sft", lambda m: sft(m, 0.0, 8),
             {"common": ("common.learning_rate_zero",)},
             first_step(lambda m: m.get("learning_rate") == 0.0), "SFT, lr 0"),
    Scenario("dpo_lr_zero", "dpo", lambda m: dpo(m, 0.0, 8),
             {"common": ("common.learning_rate_zero",)},
             first_step(lambda m: m.get("learning_rate") == 0.0), "DPO, lr 0"),
    Scenario("grpo_lr_zero", "grpo", lambda m: grpo(m, lr=0.0, steps=8, max_len=4),
             {"common": ("common.learning_rate_zero",)},
             first_step(lambda m: m.get("learning_rate") == 0.0), "GRPO, lr 0"),
    Scenario("sft_lr_far_too_high", "sft", lambda m: sft(m, 5.0, 8),
             {"common": ("common.loss_spike_megatron",),
              "sft_basic": ("sft.loss_worse_than_uniform",)},
             _loss_jump, "SFT, lr 5: the loss jumps 60x at step 2"),
    Scenario("dpo_lr_far_too_high", "dpo", lambda m: dpo(m, 5.0, 8),
             {"common": ("common.loss_spike_megatron",),
              "dpo_basic": ("dpo.loss_explosion", "dpo.reward_blowup")},
             _loss_jump, "DPO, lr 5: the loss leaves ln 2 for tens"),
    Scenario("dpo_constant_preference", "dpo", lambda m: dpo(m, 1e-3, 50, identical=True),
             {"common": ("common.grad_norm_zero",), "dpo_basic": ("dpo.loss_stuck_ln2",)},
             first_step(lambda m: abs(m.get("loss", 0.0) - 0.6931) < 0.005),
             "DPO, chosen == rejected: no gradient, the loss cannot leave ln 2"),
    # A constant lr of 3 makes the collapse immediate and absorbing (identical completions ->
    # zero advantages -> zero gradient), so the run does not depend on sampling luck; at lr 1
    # with a decaying schedule the policy sometimes escapes for a step and resets `for`.
    Scenario("grpo_lr_far_too_high", "grpo",
             lambda m: grpo(m, lr=3.0, steps=16, max_len=8, scheduler="constant"),
             {"common": ("common.grad_norm_zero_rl",),
              "grpo_safe": ("grpo.no_learning_signal", "grpo.reward_std_zero")},
             _entropy_gone,
             "GRPO, lr 3, beta 0: the policy turns deterministic at step 2, groups go flat"),
    Scenario("grpo_constant_rewards", "grpo",
             lambda m: grpo(m, lr=1e-3, steps=12, max_len=4, reward=constant_reward),
             {"grpo_safe": ("grpo.no_learning_signal", "grpo.reward_std_zero")},
             first_step(lambda m: m.get("frac_reward_zero_std", 0.0) >= 0.99),
             "GRPO, a reward function that returns 1.0 for everything"),
    Scenario("grpo_completions_cut", "grpo", lambda m: grpo(m, lr=1e-4, steps=16, max_len=2),
             {"grpo_safe": ("grpo.completions_truncated",),
              "grpo_strict": ("grpo_strict.truncated_most",)},
             first_step(lambda m: m.get("completions/clipped_ratio", 0.0) > 0.5),
             "GRPO, max_completion_length 2: 75-100% of completions cut"),
    Scenario("grpo_kl_overwhelmed", "grpo",
             lambda m: grpo(m, lr=0.5, steps=8, max_len=4, beta=0.04),
             {"grpo_safe": ("grpo.kl_blowup",), "grpo_strict": ("grpo_strict.kl_high",)},
             first_step(lambda m: m.get("kl", 0.0) > 1.0),
             "GRPO, beta 0.04 against lr 0.5: KL leaves the reference"),
)


def run_scenario(scenario: Scenario, model: str, tmp: Path) -> Outcome:
    """Train one scenario on the tiny model at path ``model``, in the empty folder ``tmp``."""
    return train(tmp, scenario.build(model))


def stdout_verdict(scenario: Scenario, out: Outcome) -> list[str]:
    """The verdict from the Trainer's printed log dicts alone (no callback), read by the
    ``trl`` stdout parser through the real monitor: the named rules that fired on a broken
    run, the high/critical rules that fired on a healthy one (sorted ids; [] = quiet)."""
    from trainguard.monitor.daemon import Monitor
    from trainguard.monitor.engine.testing import select_rules
    from trainguard.monitor.ingest.sources import FileSource
    from trainguard.monitor.ingest.stdout import make_line_parser

    if out.stdout_path is None:
        raise ValueError(f"{scenario.name}: the run kept no stdout capture")
    rules = select_rules(load_rules(packs_for(scenario.trainer)), scenario.trainer)
    source = FileSource(out.stdout_path)
    try:
        monitor = Monitor(source, rules, parser=make_line_parser(None, auto=True))
        verdict = monitor.run(once=True)
    finally:
        source.close()
    named = {r for rules in scenario.catches.values() for r in rules}
    return sorted({a.rule for a in verdict.alerts if a.state == "firing"
                   and (a.severity in SERIOUS if scenario.healthy else a.rule in named)})


# -- the per-pack summary ----------------------------------------------------------------------


@dataclass
class PackRow:
    """One pack's line of the scenario report."""

    pack: str
    expected: int = 0
    caught: int = 0
    false_serious: int = 0
    delays: list[int] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)

    @property
    def median_delay(self) -> float | None:
        """Median steps from onset to the pack's first alert, over caught scenarios."""
        return statistics.median(self.delays) if self.delays else None


def rule_packs(packs: Iterable[str]) -> dict[str, str]:
    """Rule id -> the built-in pack that defines it."""
    return {r.rule.id: pack for pack in packs for r in load_rules([pack])}


def pack_rows(results: Sequence[tuple[Scenario, Outcome]]) -> list[PackRow]:
    """Per pack: broken scenarios caught (every rule named for the pack fired) of those
    expected, high/critical alerts its rules raised on healthy runs, and the steps from each
    caught scenario's onset to the first of those alerts."""
    packs = sorted({p for s, o in results for p in packs_for(o.kind or s.trainer)})
    owner = rule_packs(packs)
    rows = {p: PackRow(p) for p in packs}
    for scenario, out in results:
        if scenario.healthy:
            for alert in out.alerts:
                if alert.severity in SERIOUS and alert.rule in owner:
                    rows[owner[alert.rule]].false_serious += 1
            continue
        onset = scenario.onset(out.records)
        for pack, rules in scenario.catches.items():
            row = rows.setdefault(pack, PackRow(pack))
            row.expected += 1
            steps = [out.first(r) for r in rules]
            if any(s is None for s in steps):
                row.missed.append(scenario.name)
                continue
            row.caught += 1
            if onset is not None:
                row.delays.append(min(s for s in steps if s is not None) - onset)
    return [rows[p] for p in sorted(rows)]
