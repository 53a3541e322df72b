"""The detection evidence's scoring rules, on made-up monitor outputs (no training)."""

from __future__ import annotations

from benchmarks.detection_cases import CASES, FAILURE_FAMILIES, HOLDOUT, TRAINERS, case_by_name
from benchmarks.detection_score import CaseScore, ModeResult, Said, table_rows
from benchmarks.detection_unseen import UNSEEN


def _score(name: str, onset: int | None, alerts: list[Said], hit: Said | None = None) -> CaseScore:
    case = case_by_name(name)
    return CaseScore(name, case.trainer, case.failure, onset, "stdout", ModeResult(0, alerts),
                     hit)


def test_a_naming_alert_five_steps_after_onset_is_caught_six_is_not() -> None:
    """Caught means the catching alert fires no later than 5 logged steps after the onset."""
    at = {s: Said("high", "r", s, "learning_rate", "") for s in (6, 7)}
    assert _score("sft-lr_zero-s3", 1, [at[6]], at[6]).caught
    late = _score("sft-lr_zero-s3", 1, [at[7]], at[7])
    assert (late.caught, late.delay) == (False, 6)


def test_only_high_and_critical_alerts_are_false_alarms_on_healthy_runs() -> None:
    """A medium alert on a healthy run is no false alarm; a high one is."""
    medium = Said("medium", "m", 3, "loss", "")
    high = Said("high", "h", 4, "loss", "")
    assert _score("sft-healthy-s0", None, [medium]).false_alarms == []
    assert _score("sft-healthy-s0", None, [medium, high]).false_alarms == [high]


def test_table_counts_runs_per_trainer_and_in_all() -> None:
    """The table counts each broken run once in its trainer's row and once in ``all``."""
    hit = Said("critical", "r", 2, "loss", "")
    scores = [_score("sft-nan-s38", 2, [hit], hit), _score("sft-lr_negligible-s7", 1, []),
              _score("sft-healthy-s0", None, [Said("high", "x", 9, "loss", "")])]
    rows = {r.trainer: r for r in table_rows(scores, TRAINERS)}
    assert (rows["sft"].broken, rows["sft"].caught, rows["sft"].false_runs) == (2, 1, 1)
    assert (rows["all"].broken, rows["all"].caught, rows["all"].median_delay) == (2, 1, 0)
    assert rows["grpo"].broken == 0


def test_the_case_sets_cover_what_the_issue_asks() -> None:
    """Every trainer has 3+ healthy seeds; 30+ broken runs over 15+ kinds; names are unique."""
    for trainer in TRAINERS:
        assert len({c.seed for c in CASES if c.trainer == trainer and c.healthy}) >= 3
    broken = [c for c in CASES if not c.healthy]
    assert len(broken) >= 30
    assert len({c.failure for c in broken}) >= 15
    assert {c.failure for c in broken} <= set(FAILURE_FAMILIES)
    names = [c.name for c in (*CASES, *HOLDOUT, *UNSEEN)]
    assert len(names) == len(set(names))
    assert all(c.metrics for c in broken)


def test_a_nan_case_that_stays_finite_has_its_onset_at_the_divergence() -> None:
    """Where the weights overflow to exact zeros instead of NaN (another CPU's floating point),
    the NaN case's onset is the loss jump that began the divergence; a NaN still wins."""
    from benchmarks.detection_cases import find_onset

    finite = [(1, {"loss": 0.69, "grad_norm": 0.8}), (2, {"loss": 16.5, "grad_norm": 32.0}),
              (3, {"loss": 1e4, "grad_norm": 5e6}), (4, {"loss": 0.70, "grad_norm": 0.0})]
    assert find_onset(case_by_name("dpo-nan-s217"), finite) == 2
    with_nan = [*finite[:3], (4, {"loss": 0.7, "grad_norm": float("nan")})]
    assert find_onset(case_by_name("dpo-nan-s217"), with_nan) == 4
