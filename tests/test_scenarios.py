"""Scenario suite: real TRL runs on the tiny offline model, healthy and broken, replayed
through the built-in packs. Each broken run must be caught by the rules its scenario names; a
healthy run must raise no high or critical alert.

The runs and their expected verdicts live in :mod:`tests.scenario_runs` (shared with
``benchmarks/scenario_report.py``). Each scenario trains once per session, captured as callback
events and as the Trainer's plain stdout; the tests below read the cached outcome, so a
pinned-step test or the stdout replay costs no extra training.
"""

from __future__ import annotations

import pytest

from tests.scenario_runs import (
    SCENARIOS,
    Outcome,
    packs_for,
    run_scenario,
    stdout_verdict,
)

pytestmark = [pytest.mark.slow, pytest.mark.trl]

BY_NAME = {s.name: s for s in SCENARIOS}
HEALTHY = [s.name for s in SCENARIOS if s.healthy]
BROKEN = [s.name for s in SCENARIOS if not s.healthy]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One tiny Llama for every scenario."""
    from tests.tiny_trl import build_tiny_model
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def outcomes(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Scenario name -> its outcome, trained on first use and kept for the session."""

    class Lazy(dict[str, Outcome]):
        def __missing__(self, name: str) -> Outcome:
            out = self[name] = run_scenario(BY_NAME[name], tiny_model,
                                            tmp_path_factory.mktemp(name))
            return out
    return Lazy()


# -- the verdicts every scenario declares ------------------------------------------------------


@pytest.mark.parametrize("name", HEALTHY)
def test_healthy_run_raises_no_serious_alert(outcomes: dict[str, Outcome], name: str) -> None:
    """A healthy run is detected as its trainer and raises nothing high or critical."""
    out = outcomes[name]
    assert (BY_NAME[name].trainer, []) == (out.kind, out.serious())


@pytest.mark.parametrize("name", BROKEN)
def test_broken_run_is_caught_by_the_rules_it_names(outcomes: dict[str, Outcome],
                                                    name: str) -> None:
    """A broken run is detected as its trainer and every rule its scenario names fires."""
    scenario, out = BY_NAME[name], outcomes[name]
    expected = {r for rules in scenario.catches.values() for r in rules}
    assert (scenario.trainer, expected) == (out.kind, expected & out.fired())


@pytest.mark.parametrize("name", BROKEN)
def test_every_named_rule_belongs_to_a_replayed_pack(name: str) -> None:
    """A scenario only names packs its trainer's replay loads (else it could never pass)."""
    scenario = BY_NAME[name]
    assert set(scenario.catches) <= set(packs_for(scenario.trainer))


# -- pinned steps, where the run makes the step deterministic ----------------------------------


@pytest.mark.parametrize("name", ["sft_lr_zero", "dpo_lr_zero", "grpo_lr_zero"])
def test_learning_rate_zero_fires_at_the_second_logged_step(outcomes: dict[str, Outcome],
                                                          name: str) -> None:
    """lr = 0 is logged from step 1: common.learning_rate_zero (for: 2, an exact signature)
    fires at step 2."""
    assert 2 == outcomes[name].first("common.learning_rate_zero")


def test_sft_learning_rate_far_too_high_is_caught_at_the_jump(
        outcomes: dict[str, Outcome]) -> None:
    """lr = 5 makes the SFT loss jump 60x at step 2: Megatron's spiky-loss rule fires on it."""
    out = outcomes["sft_lr_far_too_high"]
    assert (2, 2) == (BY_NAME["sft_lr_far_too_high"].onset(out.records),
                      out.first("common.loss_spike_megatron"))


def test_grpo_constant_rewards_fire_after_three_flat_steps(outcomes: dict[str, Outcome]) -> None:
    """Every group has zero reward variance from step 1: both exact-signature rules (for: 3)
    fire at step 3."""
    out = outcomes["grpo_constant_rewards"]
    assert (3, 3) == (out.first("grpo.no_learning_signal"), out.first("grpo.reward_std_zero"))


def test_grpo_completions_cut_at_the_limit_are_caught(outcomes: dict[str, Outcome]) -> None:
    """max_completion_length=2 cuts 75-100% of each step's 4 completions: the 3-step mean of
    completions/clipped_ratio passes 0.8 from step 3, so grpo_strict.truncated_most fires at
    step 5 even though single steps log 0.75; grpo.completions_truncated (half or more for 4
    steps) is high at step 4."""
    out = outcomes["grpo_completions_cut"]
    ratios = [m["completions/clipped_ratio"] for _, m in out.records]
    assert (True, 5, 4) == (min(ratios) >= 0.75, out.first("grpo_strict.truncated_most"),
                            out.first("grpo.completions_truncated"))


def test_grpo_overwhelmed_kl_penalty_is_caught(outcomes: dict[str, Outcome]) -> None:
    """beta = 0.04 against lr = 0.5: KL passes 1 within two steps and grpo.kl_blowup fires
    after three steps above it."""
    out = outcomes["grpo_kl_overwhelmed"]
    onset = BY_NAME["grpo_kl_overwhelmed"].onset(out.records)
    assert onset is not None
    assert onset + 2 == out.first("grpo.kl_blowup")


# -- the same runs from plain stdout -----------------------------------------------------------


@pytest.mark.parametrize("name", [s.name for s in SCENARIOS])
def test_plain_stdout_capture_reaches_the_same_verdict(outcomes: dict[str, Outcome],
                                                       name: str) -> None:
    """The Trainer's printed log dicts (no callback) give the same verdict as the events:
    no serious alert on a healthy run, every named rule on a broken one."""
    scenario = BY_NAME[name]
    expected = sorted({r for rules in scenario.catches.values() for r in rules})
    assert expected == stdout_verdict(scenario, outcomes[name])
