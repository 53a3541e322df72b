"""The condition language: operators, three-valued logic, stale(), baselines, errors, escapes."""

from __future__ import annotations

import math

import pytest

from trainguard.exceptions import RuleSyntaxError
from trainguard.rules.dsl import FUNCTIONS, Call, Node, compile_condition, current_context


def _eval(text: str, metrics: dict[str, float], metric: str | None = None) -> float | None:
    return compile_condition(text, metric).new_evaluator()(metrics)


@pytest.mark.parametrize(("text", "expected"), [
    ("a + b", 5.0), ("a - b", -1.0), ("a * b", 6.0), ("b / a", 1.5), ("-a", -2.0),
    ("a < b", 1.0), ("a <= 2", 1.0), ("a > b", 0.0), ("a >= 3", 0.0), ("a == 2", 1.0),
    ("a != 2", 0.0), ("a + b * 2", 8.0), ("(a + b) * 2", 10.0), ("50% * a", 1.0),
    ("a < b and b < 4", 1.0), ("a > b or b > 4", 0.0), ("not a > b", 1.0),
    ("`rewards/chosen` - rewards/rejected", 0.5),
])
def test_every_operator_computes_what_it_says(text: str, expected: float):
    """Arithmetic, comparisons, logic and metric-name forms give the expected value."""
    metrics = {"a": 2.0, "b": 3.0, "rewards/chosen": 1.0, "rewards/rejected": 0.5}
    assert expected == _eval(text, metrics)


def test_shorthand_comparisons_use_the_rules_metric():
    """'> 0.68 and < 0.70' compares the rule's own metric."""
    assert 1.0 == _eval("> 0.68 and < 0.70", {"loss": 0.693}, metric="loss")
    assert 0.0 == _eval("> 0.68 and < 0.70", {"loss": 0.5}, metric="loss")


@pytest.mark.parametrize(("text", "metrics", "expected"), [
    ("a > 1", {}, None),
    ("a > 1 and b > 1", {"a": 0.0}, 0.0),      # false and unknown = false
    ("a > 1 and b > 1", {"a": 2.0}, None),     # true and unknown = unknown
    ("a > 1 or b > 1", {"a": 2.0}, 1.0),       # true or unknown = true
    ("a > 1 or b > 1", {"a": 0.0}, None),      # false or unknown = unknown
    ("not a > 1", {}, None),
])
def test_logic_is_three_valued(text: str, metrics: dict[str, float], expected: float | None):
    """A missing metric makes a result unknown unless the other side decides it."""
    assert expected == _eval(text, metrics)


def test_division_by_zero_is_not_an_exception():
    """x/0 gives inf (or NaN for 0/0) instead of raising on the hot path."""
    assert math.inf == _eval("a / b", {"a": 1.0, "b": 0.0})
    assert math.isnan(_eval("a / b", {"a": 0.0, "b": 0.0}) or 0.0)


def test_nonfinite_fires_on_nan_and_inf_only():
    """nonfinite is true for NaN and ±inf, false for numbers."""
    cond = compile_condition("nonfinite", "loss")
    ev = cond.new_evaluator()
    assert [0.0, 1.0, 1.0, 1.0] == [ev({"loss": v}) for v in (1.0, math.nan, math.inf, -math.inf)]


def test_stale_counts_steps_without_a_new_value():
    """stale(3) is unknown before the first value, then true once 3 steps pass without one."""
    cond = compile_condition("stale(3)", "loss")
    assert cond.always
    ev, ctx = cond.instantiate()
    out = []
    for step, metrics in [(1, {"lr": 1.0}), (2, {"loss": 1.0}), (3, {}), (4, {}), (5, {}),
                          (6, {"loss": 1.0})]:
        ctx.step = step
        out.append(ev(metrics))
    assert [None, 0.0, 0.0, 0.0, 1.0, 0.0] == out


@pytest.mark.parametrize("text", ["stale(30s)", "stale(30 s)", "stale(loss, 30s)"])
def test_stale_in_seconds_uses_record_time(text: str):
    """stale(30s) compares record times, and is unknown for records without one."""
    ev, ctx = compile_condition(text, "loss").instantiate()
    out = []
    for t, metrics in [(100.0, {"loss": 1.0}), (120.0, {}), (None, {}), (131.0, {})]:
        ctx.time = t
        out.append(ev(metrics))
    assert [0.0, 0.0, None, 1.0] == out


def test_spike_exposes_its_rolling_mean_as_baseline():
    """A function comparing against a baseline writes it to the evaluator's context."""
    ev, ctx = compile_condition("spike(3x, window=4, min_count=2)", "loss").instantiate()
    results = [ev({"loss": v}) for v in (1.0, 1.0, 1.0, 5.0)]
    assert [None, None, 0.0, 1.0] == results
    assert 1.0 == ctx.baseline


def test_plugin_functions_get_the_context_while_being_made():
    """A function registered through FUNCTIONS reads step/time from current_context()."""
    def compile_step(call: Call) -> Node:
        def make():  # type: ignore[no-untyped-def]
            ctx = current_context()
            return lambda m: float(ctx.step)
        return Node(make, frozenset())
    FUNCTIONS["test_step_of"] = compile_step
    try:
        ev, ctx = compile_condition("test_step_of() > 2").instantiate()
        ctx.step = 3
        assert 1.0 == ev({})
    finally:
        del FUNCTIONS["test_step_of"]


@pytest.mark.parametrize(("text", "column", "fragment"), [
    ("loss >> 2", 7, "unexpected '>'"),
    ("loss > (1 + 2", 14, "expected ')'"),
    ("loss > 1 $ 2", 10, "unexpected character '$'"),
    ("nosuch(loss) > 1", 1, "unknown function 'nosuch'"),
    ("spike(loss, window=x)", 1, "window must be a number"),
    ("stale(loss)", 1, "stale(): takes a count"),
    ("", 1, "empty condition"),
])
def test_syntax_errors_point_at_the_column(text: str, column: int, fragment: str):
    """Each syntax error names the problem and the 1-based column, with a caret line."""
    with pytest.raises(RuleSyntaxError) as info:
        compile_condition(text, None)
    assert (column, True) == (info.value.column, fragment in str(info.value))
    assert "^" in str(info.value)


# T29: payloads from simpleeval#15/#138 and asteval#32/#86, refused when the rule is loaded.
@pytest.mark.parametrize("payload", [
    "__class__",
    "loss.__class__",
    "().__class__.__bases__[0].__subclasses__()",
    "x.__class__.__mro__",
    "`__import__`('os').system('id')",
    "__import__('os')",
    "(x for x in loss).gi_frame.f_back.f_globals",
    "lambda: 1",
    "loss.__reduce__()",
    "'abc' == loss",
    "\"abc\"",
    "loss[0] > 1",
    "{}.keys()",
    "eval('1')",
    "getattr(loss, 'x')",
    "loss if 1 else 2",
    "import os",
    "[c for c in ().__class__.__base__.__subclasses__()]",
])
def test_expression_escapes_are_rejected_at_load_time(payload: str):
    """Escape payloads are syntax errors at compile time, never evaluated."""
    with pytest.raises(RuleSyntaxError):
        compile_condition(payload, "loss")


def test_plugin_interface_is_pinned():
    """The names the function library builds on stay exported."""
    from trainguard.rules import dsl

    assert {"Call", "Node", "FUNCTIONS", "function", "EvalContext", "current_context",
            "compile_condition", "Condition", "Evaluator"} <= set(dsl.__all__)


def _three_valued_series(seed: int, n: int = 300) -> list[dict[str, float]]:
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        row = {}
        for key in ("a", "b", "c", "d"):
            if rng.random() < 0.8:
                row[key] = rng.choice([0.0, 1.0, 2.0, math.nan]) + rng.random()
        rows.append(row)
    return rows


@pytest.mark.parametrize("op", ["and", "or"])
@pytest.mark.parametrize("terms", [2, 3, 4])
def test_a_chain_of_and_or_gives_what_nesting_gives(op: str, terms: int):
    """``a and b and c`` (one closure) equals ``((a and b) and c)``, windows included, over
    unknown, false, true and NaN operands."""
    parts = ["a > 1", "mean(b, 3) > 1.2", "c < 2", "max(d, 4, previous=1) > 1.5"][:terms]
    flat = compile_condition(f" {op} ".join(parts)).new_evaluator()
    nested_text = parts[0]
    for part in parts[1:]:
        nested_text = f"({nested_text}) {op} {part}"
    nested = compile_condition(nested_text).new_evaluator()
    for row in _three_valued_series(terms):
        assert repr(nested(row)) == repr(flat(row))


def test_a_call_repeated_in_a_condition_gives_what_two_separate_calls_give():
    """``median(r, 5) > 1 and r < 0.9 * median(r, 5)`` evaluates the median once; the results
    are those of two calls with windows of their own (spelled differently, not shared)."""
    shared = compile_condition("median(a, 5, previous=1) > 1 and a < 0.9 * "
                               "median(a, 5, previous=1)").new_evaluator()
    separate = compile_condition("median(a, 5, previous=1) > 1 and a < 0.9 * "
                                 "median(a, 5.0, previous=1)").new_evaluator()
    rows = _three_valued_series(7)
    results = [separate(row) for row in rows]
    assert results == [shared(row) for row in rows]
    assert 0.0 in results and 1.0 in results and None in results


@pytest.mark.parametrize("op", ["<", "<=", ">", ">="])
def test_a_metric_against_a_scaled_window_gives_what_the_generic_form_gives(op: str):
    """``a > 1.2 * mean(b, 3)`` (one closure) equals ``a > mean(b, 3) * 1.2`` (the generic
    operators) on every record, unknowns and NaN included."""
    fused = compile_condition(f"a {op} 1.2 * mean(b, 3)").new_evaluator()
    generic = compile_condition(f"a {op} mean(b, 3) * 1.2").new_evaluator()
    rows = _three_valued_series(11)
    results = [generic(row) for row in rows]
    assert results == [fused(row) for row in rows]
    assert 0.0 in results and 1.0 in results and None in results
