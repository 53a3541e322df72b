"""One-test rules (``metric CMP constant``, ``f(...) CMP constant``, ``nonfinite``) are fused with the life cycle's quiet
path (monitor/engine/fused.py): they raise exactly the alerts the compiled closure does, over
NaN, infinities, gaps, for/keep_firing_for/cooldown/repeat_interval, and scopes rank and any."""

from __future__ import annotations

import math
import random

import pytest

from trainguard.monitor.engine.engine import Engine
from trainguard.monitor.engine.fused import HANDLED
from trainguard.monitor.engine.rulestate import new_state
from trainguard.rules.loader import CompiledRule, compile_rule
from trainguard.rules.models import Rule


def _rules(scope: str) -> list[CompiledRule]:
    """Every fused shape (and == / !=, which stay unfused), with life-cycle settings that
    exercise each quiet path."""
    shapes = ["> 1.5", ">= 1.5", "< 0.5", "<= 0.5", "nonfinite", "nonfinite(x)", "x > 1.5",
              "== 1.0", "!= 1.0", "max(x, 3) > 1.9", "mean(x, 2) <= 0.3", "-x < -1.5"]
    return [compile_rule(Rule.model_validate({
        "id": f"t.r{i}", "metric": "x", "condition": condition, "scope": scope,
        "for": 1 + i % 3, "keep_firing_for": i % 2, "cooldown": 2 * (i % 2),
        "repeat_interval": 5 if i % 3 == 0 else 0, "warmup": i % 4,
        "message": "{rule} {value} {baseline} {rank}"})) for i, condition in enumerate(shapes)]


def _series(seed: int, n: int = 400) -> list[tuple[int, int, dict[str, float], float]]:
    """Stretches of a few records each: x missing, non-finite, exactly 1, or a mix of levels
    around the thresholds, so every rule fires, stays firing, flaps and resolves."""
    rng = random.Random(seed)
    out = []
    regime = "mixed"
    for step in range(1, n + 1):
        if step % 6 == 0:
            regime = rng.choice(["missing", "nonfinite", "one", "mixed", "mixed", "high", "low"])
        for rank in (0, 1):
            x = {"missing": None, "nonfinite": rng.choice([math.nan, math.inf, -math.inf]),
                 "one": 1.0, "high": 2.0 + rng.random(), "low": 0.1 * rng.random(),
                 "mixed": rng.choice([0.2, 0.5, 1.0, 1.5, 2.0]) + 0.01 * rng.random()}[regime]
            metrics = {"y": 1.0} if x is None else {"x": x}
            out.append((rank, step, metrics, float(step)))
    return out


def _unfused(engine: Engine) -> None:
    """The reference: every state with the compiled closure in place of the fused one."""
    for entry in engine._entries:
        for rank in (0, 1):
            state = entry.states[rank] = new_state(entry, rank)
            state.evaluator = entry.compiled.condition.instantiate(rank)[0]
    engine._reindex()  # the per-rank lists of states are rebuilt from these


@pytest.mark.parametrize("scope", ["rank", "any"])
@pytest.mark.parametrize("seed", range(6))
def test_fused_rules_raise_the_alerts_of_the_compiled_closures(scope: str, seed: int) -> None:
    """Same alerts, in the same order, and the same counters, fused or not."""
    records = _series(seed)
    fused, plain = Engine(_rules(scope)), Engine(_rules(scope))
    _unfused(plain)
    got = [a.to_json() for r in records for a in fused.evaluate(*r)]
    want = [a.to_json() for r in records for a in plain.evaluate(*r)]
    assert want == got
    fired = {a["rule"] for a in got if a["state"] == "firing"}
    assert {r.rule.id for r in _rules(scope)} == fired  # every shape fires (and resolves)
    assert "fused" in fused._entries[0].states[0].evaluator.__qualname__  # what is tested
    for a, b in zip(plain._entries, fused._entries, strict=True):
        for rank in (0, 1):
            sa, sb = a.states[rank], b.states[rank]
            assert ((sa.evaluations, sa.unknown, sa.consecutive, sa.firing)
                    == (sb.evaluations, sb.unknown, sb.consecutive, sb.firing))


def test_only_the_engine_sees_the_handled_marker() -> None:
    """A condition's own evaluator never returns the engine's marker, fused rule or not."""
    for compiled in _rules("rank"):
        evaluate = compiled.condition.new_evaluator()
        assert evaluate({"x": 0.2}) is not HANDLED
        assert evaluate({"x": 2.0}) is not HANDLED


@pytest.mark.parametrize("seed", range(3))
def test_fused_rules_raise_the_alerts_of_the_batch_form(seed: int) -> None:
    """Record by record (fused) and in large batches (the compiled ``.many`` and the batch
    life cycle) give the same alerts."""
    records = [r for r in _series(seed) if r[0] == 0]
    one, batched = Engine(_rules("rank")), Engine(_rules("rank"))
    got = [a.to_json() for r in records for a in one.evaluate(*r)]
    assert got == [a.to_json() for a in batched.evaluate_many(records)]
