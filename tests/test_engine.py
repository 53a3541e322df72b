"""Alert life cycle (T17-T18), scopes across ranks, trainer filtering and message templates."""

from __future__ import annotations

from typing import Any

from trainguard.monitor.engine.engine import Engine
from trainguard.rules.loader import CompiledRule, compile_rule
from trainguard.rules.models import Rule


def _rule(**fields: Any) -> CompiledRule:
    data: dict[str, Any] = {"id": "t.r", "metric": "x", "condition": "x > 1",
                            "severity": "high"}
    data.update(fields)
    return compile_rule(Rule.model_validate(data))


def _run(engine: Engine, values: list[float | None], rank: int = 0) -> list[tuple[str, int]]:
    """Feed one value per step (None: the step lacks the metric); (state, step) of each alert."""
    out = []
    for step, value in enumerate(values, 1):
        metrics = {} if value is None else {"x": value}
        metrics["other"] = 0.0
        out += [(a.state, a.step) for a in engine.evaluate(rank, step, metrics, float(step))]
    return out


def test_for_fires_after_n_consecutive_true_evaluations():
    """T17: for=3 fires on the third true evaluation in a row."""
    assert [("firing", 3)] == _run(Engine([_rule(**{"for": 3})]), [2, 2, 2, 2])


def test_one_false_evaluation_resets_pending():
    """T17: a false evaluation between true ones restarts the count."""
    assert [("firing", 6)] == _run(Engine([_rule(**{"for": 3})]), [2, 2, 0, 2, 2, 2])


def test_unknown_evaluations_neither_fire_nor_reset():
    """A step without the metric does not reset a pending alert."""
    assert [("firing", 4)] == _run(Engine([_rule(**{"for": 3})]), [2, 2, None, 2])


def test_warmup_ignores_the_first_evaluations():
    """warmup=3: nothing fires in the first three evaluations; `for` counts through them, so
    warmup 3 and for 2 fire at the 4th (not the 5th: the two overlap instead of adding up)."""
    assert [("firing", 4)] == _run(Engine([_rule(warmup=3, **{"for": 2})]), [2, 2, 2, 2, 2])


def test_a_false_result_in_the_warmup_still_resets_for():
    """`for` counted during the warmup is still consecutive: a false result resets it."""
    assert [("firing", 5)] == _run(Engine([_rule(warmup=3, **{"for": 2})]), [2, 2, 0, 2, 2])


def test_warmup_counts_records_whose_window_is_still_filling():
    """A window that is not yet known still uses up the warmup: mean(x, 5) (known from record
    5) with warmup 5 fires at record 6, just past the warmup, not at record 10."""
    rule = _rule(condition="mean(x, 5) > 1", warmup=5)
    assert [("firing", 6)] == _run(Engine([rule]), [2.0] * 12)


def test_resolved_is_delivered_once_per_episode():
    """A firing alert resolves once when the condition goes false, and can fire again."""
    assert [("firing", 1), ("resolved", 3), ("firing", 5)] == _run(
        Engine([_rule()]), [2, 2, 0, 0, 2, 2])


def test_flapping_metric_fires_at_most_once_per_hysteresis_window():
    """T18: alternating around the threshold with keep_firing_for=2: one fire, no resolve."""
    flapping = [2.0, 0.0] * 50
    assert [("firing", 1)] == _run(Engine([_rule(keep_firing_for=2)]), flapping)


def test_keep_firing_for_resolves_after_n_plus_one_false():
    """keep_firing_for=2 tolerates two false evaluations; the third resolves."""
    assert [("firing", 1), ("resolved", 4)] == _run(Engine([_rule(keep_firing_for=2)]),
                                                    [2, 0, 0, 0, 0])


def test_cooldown_keeps_a_resolved_rule_quiet():
    """cooldown=5 after a resolve at step 2: the rule cannot fire again before step 8."""
    assert [("firing", 1), ("resolved", 2), ("firing", 8)] == _run(
        Engine([_rule(cooldown=5)]), [2, 0, 2, 2, 2, 2, 2, 2])


def test_repeat_interval_renotifies_while_firing():
    """repeat_interval=3 re-sends the firing alert every 3 steps while it stays true."""
    out = _run(Engine([_rule(repeat_interval=3)]), [2] * 7)
    assert [("firing", 1), ("firing", 4), ("firing", 7)] == out


def test_each_rank_has_its_own_state_in_rank_scope():
    """scope rank: rank 1 firing does not make rank 0 fire."""
    engine = Engine([_rule()])
    alerts = engine.evaluate(1, 1, {"x": 2.0}) + engine.evaluate(0, 1, {"x": 0.0})
    assert [("firing", 1)] == [(a.state, a.rank) for a in alerts]


def _ranks(engine: Engine, steps: list[dict[int, float]]) -> list[tuple[str, int, int | None]]:
    out = []
    for step, by_rank in enumerate(steps, 1):
        for rank, value in by_rank.items():
            out += [(a.state, a.step, a.rank) for a in engine.evaluate(rank, step, {"x": value})]
    out += [(a.state, a.step, a.rank) for a in engine.finish()]
    return out


def test_any_scope_fires_one_alert_when_any_rank_crosses():
    """scope any: the first crossing rank fires one alert; it resolves when none is firing."""
    engine = Engine([_rule(scope="any")])
    assert [("firing", 2, 1), ("resolved", 4, 0)] == _ranks(engine, [
        {0: 0, 1: 0}, {0: 0, 1: 2}, {0: 2, 1: 0}, {0: 0, 1: 0}])


def test_all_scope_fires_only_when_every_reporting_rank_fires():
    """scope all: one alert, only once every rank that reported is firing."""
    engine = Engine([_rule(scope="all")])
    assert [("firing", 3, None), ("resolved", 4, None)] == _ranks(engine, [
        {0: 2, 1: 0}, {0: 0, 1: 2}, {0: 2, 1: 2}, {0: 0, 1: 2}])


def test_mean_scope_evaluates_the_mean_of_the_ranks():
    """scope mean: ranks at 0.5 and 2.0 average 1.25 > 1, one alert with no rank."""
    engine = Engine([_rule(scope="mean")])
    alerts = _ranks(engine, [{0: 0.5, 1: 1.0}, {0: 0.5, 1: 2.0}, {0: 0.0, 1: 0.0}])
    assert [("firing", 2, None), ("resolved", 3, None)] == alerts


def test_mean_scope_waits_for_a_late_step_or_finish():
    """A step is evaluated when a later one arrives or at finish, with the ranks that reported."""
    engine = Engine([_rule(scope="mean")])
    engine.evaluate(0, 1, {"x": 0.0})
    engine.evaluate(1, 1, {"x": 0.0})
    assert [] == engine.evaluate(0, 2, {"x": 4.0})
    assert [("firing", 2)] == [(a.state, a.step) for a in engine.finish()]


def test_trainer_filter_applies_only_matching_rules():
    """A dpo rule is skipped once the trainer is known to be grpo, and runs for dpo."""
    rules = [_rule(id="t.dpo", trainers=["dpo"]), _rule(id="t.any")]
    engine = Engine(rules, trainer="grpo")
    assert ["t.any"] == [a.rule for a in engine.evaluate(0, 1, {"x": 2.0})]
    engine.set_trainer("dpo")
    assert ["t.dpo"] == [a.rule for a in engine.evaluate(0, 2, {"x": 2.0})]


def test_add_rules_extends_a_running_engine():
    """Rules added after the first records run from the next record on."""
    engine = Engine([_rule(id="t.a")])
    engine.evaluate(0, 1, {"x": 0.0})
    engine.add_rules([_rule(id="t.b", metric="y", condition="y > 1")])
    assert ["t.b"] == [a.rule for a in engine.evaluate(0, 2, {"y": 2.0})]


def test_stale_rule_runs_on_records_without_its_metric():
    """stale(2) fires on a record that lacks the metric, two steps after its last value."""
    engine = Engine([_rule(condition="stale(2)")])
    alerts = []
    for step, metrics in enumerate([{"x": 1.0}, {"y": 1.0}, {"y": 1.0}], 1):
        alerts += engine.evaluate(0, step, metrics)
    assert [("firing", 3)] == [(a.state, a.step) for a in alerts]


def test_message_template_fills_value_step_rank_metric_rule_and_baseline():
    """Every placeholder of a message template is filled, baseline from the spike's mean."""
    engine = Engine([_rule(condition="spike(3x, window=10, min_count=2)",
                           message="{rule} {metric}={value} step {step} rank {rank} "
                                   "mean {baseline}")])
    alerts = []
    for step, v in enumerate([1.0, 1.0, 9.0], 1):
        alerts += engine.evaluate(2, step, {"x": v})
    assert ["t.r x=9 step 3 rank 2 mean 1"] == [a.message for a in alerts]


def test_all_scope_fires_later_when_every_rank_fired_on_the_first_step():
    """scope all: ranks firing from the first step on fire the group on the next step."""
    engine = Engine([_rule(scope="all")])
    assert [("firing", 2, None)] == _ranks(engine, [{0: 2, 1: 2}, {0: 2, 1: 2}])


def test_restart_mid_fire_does_not_renotify_and_resolves_once():
    """T19: a firing alert restored after a restart stays quiet, then resolves exactly once."""
    import json

    first = Engine([_rule(repeat_interval=10)])
    assert [("firing", 1)] == _run(first, [2, 2, 2])
    saved = json.loads(json.dumps(first.snapshot()))  # as a checkpoint file would hold it
    second = Engine([_rule(repeat_interval=10)])
    second.restore(saved)
    out = []
    for step, value in [(3, 2.0), (4, 2.0), (5, 0.0), (6, 0.0)]:  # step 3 re-read: at least once
        out += [(a.state, a.step) for a in second.evaluate(0, step, {"x": value})]
    assert [("resolved", 5)] == out


def test_restore_keeps_a_cooldown_running():
    """A rule resolved just before the restart still honours its cooldown afterwards."""
    first = Engine([_rule(cooldown=5)])
    _run(first, [2, 0])
    second = Engine([_rule(cooldown=5)])
    second.restore(first.snapshot())
    out = [(a.state, a.step) for s in range(3, 9) for a in second.evaluate(0, s, {"x": 2.0})]
    assert [("firing", 8)] == out


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.sampled_from([0.0, 2.0, None]), max_size=60),
       keep=st.integers(0, 4), cooldown=st.integers(0, 6), for_=st.integers(1, 3))
def test_alerts_alternate_and_respect_hysteresis(values: list[float | None], keep: int,
                                                 cooldown: int, for_: int):
    """Any series: firing and resolved alternate, starting with firing; a resolve needs keep+1
    false evaluations after the last true one; a re-fire waits out the cooldown."""
    engine = Engine([_rule(keep_firing_for=keep, cooldown=cooldown, **{"for": for_})])
    out = _run(engine, values)
    assert [s for s, _ in out] == ["firing", "resolved"] * (len(out) // 2) + (
        ["firing"] if len(out) % 2 else [])
    known = [(step, v) for step, v in enumerate(values, 1) if v is not None]
    for (state, step), nxt in zip(out, out[1:] + [None]):
        if state == "resolved":
            falses = [s for s, v in known if s <= step][-(keep + 1):]
            assert all(v == 0.0 for s, v in known if s in falses)
            if nxt is not None:
                assert nxt[1] > step + cooldown


def test_tick_fires_a_stale_seconds_rule_on_a_silent_stream():
    """No record after the last loss: a tick 600 s later fires stale(loss, 600s); one at 599
    s does not."""
    engine = Engine([_rule(metric="loss", condition="stale(loss, 600s)")])
    assert [] == engine.evaluate(0, 5, {"loss": 1.0}, 1000.0)
    assert [] == engine.tick(0, 5, 1599.0)
    assert [("firing", 5)] == [(a.state, a.step) for a in engine.tick(0, 5, 1600.0)]


def test_tick_does_not_count_towards_for_of_a_stale_steps_rule():
    """stale(2) for 2 counts new steps only: ticks at the same step add nothing."""
    engine = Engine([_rule(metric="loss", condition="stale(loss, 2)", **{"for": 2})])
    engine.evaluate(0, 1, {"loss": 1.0}, 1.0)
    engine.evaluate(0, 3, {"other": 0.0}, 3.0)  # stale, first true evaluation
    assert [] == engine.tick(0, 3, 4.0) + engine.tick(0, 3, 5.0)
    assert ["firing"] == [a.state for a in engine.evaluate(0, 4, {"other": 0.0}, 6.0)]


def test_tick_of_a_rank_never_seen_does_nothing():
    """A tick for a rank without records evaluates nothing."""
    engine = Engine([_rule(metric="loss", condition="stale(loss, 1s)")])
    assert [] == engine.tick(3, 1, 100.0)
