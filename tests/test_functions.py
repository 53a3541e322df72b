"""The window and baseline functions of the condition language (trainguard.rules.functions)."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainguard.exceptions import RuleSyntaxError
from trainguard.rules.dsl import compile_condition


def _run(text: str, values: list[float | None], metric: str = "x") -> list[float | None]:
    evaluate = compile_condition(text, metric).new_evaluator()
    return [evaluate({} if v is None else {metric: v}) for v in values]


def test_mean_is_none_until_the_window_is_full_then_the_rolling_mean() -> None:
    """mean(x, 3) waits for 3 values, then averages the last 3."""
    assert [None, None, 2.0, 3.0, 4.0] == _run("mean(x, 3)", [1, 2, 3, 4, 5])


def test_min_count_lets_a_window_answer_early() -> None:
    """min_count=1 answers from the first value."""
    assert [1.0, 1.5, 2.0] == _run("mean(x, 3, min_count=1)", [1, 2, 3])


def test_previous_excludes_the_current_value() -> None:
    """max(x, 2, previous=1) is the largest of the two values before this one."""
    assert [None, None, 2.0, 3.0] == _run("max(x, 2, previous=1)", [1, 2, 3, 0])


def test_min_and_max_slide() -> None:
    """min and max follow the window as old values leave it."""
    values = [5.0, 1.0, 4.0, 3.0, 2.0, 6.0]
    assert [None, None, 1.0, 1.0, 2.0, 2.0] == _run("min(x, 3)", values)
    assert [None, None, 5.0, 4.0, 4.0, 6.0] == _run("max(x, 3)", values)


def test_slope_of_a_line_is_its_gradient() -> None:
    """slope(x, 4) of 0, 2, 4, 6, 8 is 2 per step."""
    assert [None, None, None, 2.0, 2.0] == _run("slope(x, 4)", [0, 2, 4, 6, 8])


def test_zscore_compares_with_the_previous_values() -> None:
    """zscore is (value - mean) / std of the previous N values."""
    out = _run("zscore(x, 4)", [1, 3, 1, 3, 5])
    assert [None, None, None, None, 3.0] == out


def test_zscore_of_a_move_away_from_a_flat_history_is_infinite() -> None:
    """A flat history gives inf for any change and 0 for none."""
    assert [None, None, 0.0, math.inf] == _run("zscore(x, 2)", [1, 1, 1, 2])


def test_frac_true_counts_known_evaluations() -> None:
    """frac_true(x > 0, 4) is the share of the last 4 known evaluations that were true."""
    out = _run("frac_true(x > 0, 4)", [1, None, 1, 1, -1, 1, -1])
    assert [None, None, None, None, 0.75, 0.75, 0.5] == out


def test_drop_against_the_first_values() -> None:
    """drop(50%, baseline=2) is true once the value is half the mean of the first 2."""
    assert [None, None, 0.0, 1.0, 1.0] == _run("drop(50%, baseline=2)", [4, 4, 3, 2, 1])


def test_rise_against_a_rolling_window() -> None:
    """rise(100%, window=2) compares with the mean of the 2 previous values."""
    assert [None, None, 0.0, 1.0] == _run("rise(100%, window=2)", [1, 1, 1.5, 3])


def test_drop_of_negative_values_uses_the_magnitude() -> None:
    """A reward going from -1 to -2 is a 100% drop."""
    assert [None, 1.0] == _run("drop(50%, baseline=1)", [-1, -2])


def test_range_is_true_outside_the_bounds() -> None:
    """range(a, b) fires when the value leaves [a, b]."""
    assert [1.0, 0.0, 0.0, 0.0, 1.0] == _run("range(0, 1)", [-0.5, 0, 0.5, 1, 1.5])


def test_non_finite_and_missing_values_are_unknown_and_skipped() -> None:
    """NaN and absent values give None and do not enter the window."""
    assert [None, None, None, 2.0] == _run("mean(x, 2)", [1, math.nan, None, 3])


def test_shorthand_uses_the_rules_metric() -> None:
    """mean(3) in a rule on loss is mean(loss, 3)."""
    assert [None, None, 2.0] == _run("mean(3)", [1, 2, 3], metric="loss")


@pytest.mark.parametrize("text", ["mean(x)", "mean(x, 0)", "mean(x, 2.5)", "drop(x, 150)",
                                  "range(x, 2, 1)", "mean(x, 3, bogus=1)", "frac_true(x)",
                                  "drop(x, 50%, baseline=3, window=3)"])
def test_bad_arguments_are_syntax_errors(text: str) -> None:
    """Wrong arity, bad N or unknown keywords are refused at compile time."""
    with pytest.raises(RuleSyntaxError):
        compile_condition(text, "x")


def test_each_evaluator_has_its_own_state() -> None:
    """Two evaluators of one condition do not share a window."""
    cond = compile_condition("mean(x, 2)", "x")
    a, b = cond.new_evaluator(), cond.new_evaluator()
    a({"x": 1.0})
    assert (None, 1.5) == (b({"x": 5.0}), a({"x": 2.0}))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=-1e6, max_value=1e6), min_size=1, max_size=80),
       st.integers(min_value=1, max_value=12))
def test_incremental_statistics_match_recomputation(values: list[float], n: int) -> None:
    """mean, std, min, max and slope equal a full recomputation over the window."""
    for name in ("mean", "std", "min", "max", "slope"):
        if name == "slope" and n < 2:
            continue
        got = _run(f"{name}(x, {n})", list(values))
        for i, value in enumerate(got):
            window = values[max(0, i + 1 - n):i + 1]
            if len(window) < n:
                assert value is None
                continue
            if name == "mean":
                want = statistics.fmean(window)
            elif name == "std":
                want = statistics.pstdev(window)
            elif name == "min":
                want = min(window)
            elif name == "max":
                want = max(window)
            else:
                xs = range(len(window))
                mx, my = statistics.fmean(xs), statistics.fmean(window)
                want = (sum((x - mx) * (y - my) for x, y in zip(xs, window))
                        / sum((x - mx) ** 2 for x in xs))
            scale = max(1.0, max(abs(v) for v in values))  # accuracy relative to the data's scale
            assert value == pytest.approx(want, rel=1e-6, abs=1e-6 * scale), (name, n, i)


def test_long_runs_stay_accurate() -> None:
    """After many updates (past the periodic rebuild) the rolling mean is still exact."""
    rng = random.Random(0)
    values = [rng.uniform(1e3, 1e3 + 1) for _ in range(10_000)]
    assert statistics.fmean(values[-50:]) == pytest.approx(_run("mean(x, 50)", values)[-1],
                                                           rel=1e-12)
