"""An ``and`` whose guard term is false only keeps its windows' values (rules/dormant.py):
on every record it gives the result of evaluating every term, and its windows, once the guard
holds, are those that saw every record: through long quiet stretches (past the replay bound),
absent and non-finite values, floors, ``previous=1``, and batches between single records."""

from __future__ import annotations

import math
import random
import zlib

import pytest

from trainguard.monitor.engine.engine import Engine
from trainguard.rules import dormant, nodes
from trainguard.rules.dsl import compile_condition
from trainguard.rules.loader import load_rules

#: Conditions of the shape the dormant path takes: a stateless guard, windows over one metric.
_CONDITIONS = [
    "g < 0.5 and max(x, 7, previous=1, min_count=2) > 0.9 and slope(x, 3) < 0",
    "g < 0.5 and min(x, 5) < 0.1",
    "x < 0.3 and median(x, 3) < 0.5 and max(x, 1000, previous=1, min_count=1) < 0.9995",
    "g > 0.7 and median(x, 6, previous=1, min_count=2, floor=0.4) < 0.6",
    "g < 0.5 and mean(x, 4, min_count=2) > 0.5 and std(x, 9, previous=1) > 0.25",
    "g < 0.5 and x > 0.5 * median(x, 5, previous=1, min_count=1)",
    "g < 0.2 and g * x < 0.1 and slope(x, 2) > 0",
]


def _values(rng: random.Random, n: int) -> list[dict[str, float]]:
    """Records whose guard ``g`` is false (0.9) for stretches of ~500 records (some longer than
    the replay bound) and low for stretches of ~50, with ``x`` sometimes absent, NaN or
    infinite."""
    rows: list[dict[str, float]] = []
    hold = False
    for _ in range(n):
        if rng.random() < (0.02 if hold else 0.002):
            hold = not hold
        row = {"g": 0.45 * rng.random() if hold else 0.9}
        r = rng.random()
        if r < 0.9:
            row["x"] = rng.random()
        elif r < 0.94:
            row["x"] = math.nan
        elif r < 0.96:
            row["x"] = math.inf
        rows.append(row)
    return rows


def _eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """Build ``and`` evaluators that run every term on every record (the dormant path off)."""
    monkeypatch.setattr(nodes, "dormant_for", lambda terms, fs: None)


@pytest.mark.parametrize("condition", _CONDITIONS)
def test_a_dormant_and_gives_the_results_of_evaluating_every_term(
        condition: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(zlib.crc32(condition.encode()))
    rows = _values(rng, 8000)
    # then a guard that flips every few records (under and over SETTLE in a row)
    rows += [{"g": rng.random(), "x": rng.random()} for _ in range(3000)]
    dormant_eval, _ = compile_condition(condition).instantiate(0)
    assert "dormant_and" in dormant_eval.__qualname__  # the shape this test is about
    with monkeypatch.context() as patch:
        _eager(patch)
        eager_eval, _ = compile_condition(condition).instantiate(0)
    assert "dormant_and" not in eager_eval.__qualname__
    got = [dormant_eval(row) for row in rows]
    want = [eager_eval(row) for row in rows]
    assert got == want
    assert {None, 0.0, 1.0} <= set(want)  # the stream reaches every outcome


@pytest.mark.parametrize("condition", _CONDITIONS)
def test_batches_between_single_records_give_the_same_results(
        condition: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch the guard decides on every record is kept like single records; any other
    replays what was kept first."""
    from trainguard.rules.vector import Batch

    rng = random.Random(zlib.crc32(condition.encode()) + 1)
    rows = _values(rng, 8000)
    dormant_eval, _ = compile_condition(condition).instantiate(0)
    with monkeypatch.context() as patch:
        _eager(patch)
        eager_eval, _ = compile_condition(condition).instantiate(0)
    want = [eager_eval(row) for row in rows]
    got: list[float | None] = []
    i = 0
    while i < len(rows):
        size = rng.choice([1, 1, 3, 40, 200, 1500])
        chunk = rows[i:i + size]
        if size == 1:
            got.append(dormant_eval(chunk[0]))
        else:
            steps = list(range(i, i + len(chunk)))
            values, known = dormant_eval.many(Batch(steps, [None] * len(chunk), chunk))
            got.extend(float(v) if k else None for v, k in zip(values, known, strict=True))
        i += size
    assert got == want


def test_a_guard_false_for_longer_than_the_bound_keeps_memory_bounded_and_windows_exact(
        monkeypatch: pytest.MonkeyPatch) -> None:
    condition = "g < 0.5 and max(x, 10, previous=1) > 0.95 and slope(x, 4) > 0"
    dormant_eval, _ = compile_condition(condition).instantiate(0)
    with monkeypatch.context() as patch:
        _eager(patch)
        eager_eval, _ = compile_condition(condition).instantiate(0)
    rng = random.Random(3)
    quiet = [{"g": 1.0, "x": rng.random()} for _ in range(3 * dormant.MIN_PENDING + 17)]
    for row in quiet:
        assert dormant_eval(row) == eager_eval(row) == 0.0
    pending = [c.cell_contents for c in dormant_eval.__closure__ or ()
               if isinstance(c.cell_contents, dormant.array)]
    assert len(pending) == 1 and len(pending[0]) < dormant.MIN_PENDING
    rising = [{"g": 0.0, "x": 0.5 + 0.05 * i} for i in range(12)]
    assert [dormant_eval(r) for r in rising] == [eager_eval(r) for r in rising]
    assert 1.0 in [eager_eval({"g": 0.0, "x": 2.0})]


def test_the_engine_raises_the_same_alerts_with_batches_between_single_records(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped learning-rate and entropy rules, on a run that starts with a negligible
    learning rate and near-greedy sampling, recovers, then collapses and warms up again from
    nothing, fed record by record and in batches mixed."""
    rng = random.Random(11)
    records = []
    for step in range(1, 1601):
        lr = 1e-9 if step < 300 else (1e-5 if step < 1100 else 1e-10 * (step - 1000))
        entropy = 0.1 * rng.random() if step < 200 else (
            0.9 + 0.1 * rng.random() if step < 900 else 0.05 * rng.random())
        metrics = {"learning_rate": lr * (1 + 0.01 * rng.random()), "entropy": entropy,
                   "loss": 1.0 + rng.random()}
        records.append((0, step, metrics, float(step)))
    rules = load_rules(["common", "grpo_safe"])

    def alerts(engine: Engine) -> list[tuple[str, int, str, str]]:
        got, i = [], 0
        while i < len(records):
            size = rng.choice([1, 1, 1, 5, 40, 300])
            chunk = records[i:i + size]
            got.extend(engine.evaluate(*chunk[0]) if size == 1 else engine.evaluate_many(chunk))
            i += size
        return [(a.rule, a.step, a.state, a.message) for a in got]

    rng.seed(5)
    dormant_alerts = alerts(Engine(rules, "grpo"))
    with monkeypatch.context() as patch:
        _eager(patch)
        rng.seed(5)
        eager_alerts = alerts(Engine(load_rules(["common", "grpo_safe"]), "grpo"))
    assert dormant_alerts == eager_alerts
    fired = {rule for rule, _, state, _ in eager_alerts if state == "firing"}
    assert {"common.learning_rate_negligible", "grpo.entropy_low_from_start",
            "common.learning_rate_tiny_in_warmup"} <= fired


def test_an_and_whose_windows_cannot_wait_is_not_dormant() -> None:
    """Not an ``or``; not with no stateless term, or one whose other terms have state beyond
    windows (``rise`` keeps a baseline); not a window over a computed operand (no replay); not
    calls shared between terms (their state is common to both)."""
    for condition in ("g < 0.5 or max(x, 5) > 1",
                      "slope(x, 5) > 0 and mean(x, 5) > 0.5",
                      "g < 0.5 and rise(x, 50%, baseline=3) and max(x, 5) > 1",
                      "max(x * g, 5) > 1 and g < 0.5",
                      "median(x, 3) > 0 and x < 0.5 * median(x, 3)"):
        evaluate, _ = compile_condition(condition).instantiate(0)
        assert "dormant_and" not in evaluate.__qualname__, condition
