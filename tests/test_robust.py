"""Robust window statistics (median, jump): what they compute, one record at a time and in
batches alike, and that exact zeros and single outliers do not drag them."""

from __future__ import annotations

import random
import statistics

import numpy as np
import pytest

from trainguard.monitor.engine.engine import Engine
from trainguard.rules import vector
from trainguard.rules.dsl import compile_condition
from trainguard.rules.loader import compile_rule
from trainguard.rules.models import Rule
from trainguard.rules.robust import _medians


@pytest.mark.parametrize("accelerated", [True, False], ids=["bottleneck", "numpy"])
def test_batch_medians_equal_a_plain_model(accelerated: bool,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch form (bottleneck's moving median, or numpy's sliding windows without it)
    gives each row the median of its window (history, floor, previous) and leaves the same
    window as a plain list model, on random inputs."""
    if accelerated:
        pytest.importorskip("bottleneck")
    else:
        monkeypatch.setattr(vector, "_BOTTLENECK", [None])
    rng = random.Random(1)
    for _ in range(300):
        window, n = rng.randint(1, 12), rng.randint(1, 30)
        floor = rng.choice([-np.inf, 0.5])
        history = [rng.random() + (0.5 if floor == 0.5 else 0.0)
                   for _ in range(rng.randint(0, window))]
        x = np.array([rng.choice([0.0, rng.random() * 2]) for _ in range(n)])
        previous = rng.random() < 0.5
        count, med, kept = _medians(np, history, x, window, previous, floor)
        seq = list(history)
        for i, v in enumerate(x.tolist()):
            if not previous and v >= floor:
                seq.append(v)
            win = seq[-window:]
            assert count[i] == len(win)
            if win:
                assert abs(med[i] - statistics.median(win)) < 1e-12
            if previous and v >= floor:
                seq.append(v)
        assert kept == seq[-window:]


def test_median_ignores_a_single_outlier_a_mean_does_not() -> None:
    """One 1000 among ten 1s: the median stays 1, the mean jumps to ~92."""
    med = compile_condition("median(x, 11)").new_evaluator()
    mean = compile_condition("mean(x, 11)").new_evaluator()
    values = [1.0] * 5 + [1000.0] + [1.0] * 5
    results = [(med({"x": v}), mean({"x": v})) for v in values]
    assert (1.0, True) == (results[-1][0], results[-1][1] > 90)  # type: ignore[operator]


def test_jump_floor_keeps_exact_zeros_out_of_the_baseline() -> None:
    """GRPO-like grad norms, mostly exact zeros: an ordinary 0.3 is no jump (the baseline is
    the median of the non-zero values), a 9 is."""
    jump = compile_condition("jump(g, 10x, window=50, min_count=3, floor=0.001)").new_evaluator()
    series = [0, 0, 0.3, 0, 0, 0.25, 0, 0.35, 0, 0, 0.3, 0, 9.0]
    out = [jump({"g": float(v)}) for v in series]
    assert [0.0, 1.0] == [out[10], out[12]]


def test_robust_rules_alert_the_same_per_record_and_in_batches() -> None:
    """A rule on median/jump raises the same alerts fed one record at a time or in one batch."""
    rule = compile_rule(Rule.model_validate({
        "id": "t.jump", "metric": "g", "severity": "high",
        "condition": "jump(g, 5x, window=20, min_count=3, floor=0.01) or "
                     "g < 0.5 * median(g, 20, previous=1, min_count=3)"}))
    rng = random.Random(3)
    records = [(0, i, {"g": rng.choice([0.0, 1.0 + rng.random(), 10.0, 0.2])}, None)
               for i in range(1, 400)]
    one = Engine([rule])
    per_record = [(a.step, a.state) for r in records for a in one.evaluate(*r)]
    batched = [(a.step, a.state) for a in Engine([rule]).evaluate_many(records)]
    assert per_record and per_record == batched


def test_robust_functions_take_only_literal_arguments() -> None:
    """The language stays safe: windows, factors and floors are literals checked at load;
    a metric or an unknown keyword where a literal belongs is refused with the column."""
    from trainguard.exceptions import RuleSyntaxError

    for text in ("median(x, y)", "median(x, 5, floor=y)", "median(x, 5, spam=1)",
                 "jump(x, 10x, window=y)", "jump(x, 10x, colour=1)", "median(x, 0)",
                 "jump(x, 10x, window=5, min_count=9)"):
        with pytest.raises(RuleSyntaxError):
            compile_condition(text)
