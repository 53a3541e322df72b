"""The built-in functions of the condition language: window, baseline, spike and staleness.

Each function is registered with :func:`trainguard.rules.dsl.function`, reads its constant
arguments once at compile time and returns a :class:`~trainguard.rules.dsl.Node` whose
``make()`` builds a closure with its own state. Rolling statistics are incremental (running
sums, monotonic deques), never recomputed over the window, so a step costs O(1) amortised.
Each closure also carries a batch entry point, ``.many``, over the same state
(:mod:`trainguard.rules.vector`). The window functions live in :mod:`trainguard.rules.windows`.

Semantics shared by all of them:

* Only finite values enter a window or a baseline. On a step where the operand is missing or
  non-finite the function returns ``None`` (unknown: it neither fires nor resets a pending
  alert); non-finite values are :func:`nonfinite`'s finding.
* A window function returns ``None`` until it has seen ``min_count`` values (default: the whole
  window ``N``), so a rule never judges a half-empty window.

=======================  ==========================================================================
``nonfinite(m)``         true when the value is NaN or infinite
``spike(m, 3x)``         the value is at least 3x the rolling mean of the previous values
``stale(N)``             no new value of the metric for N steps (``stale(30s)``: seconds)
``mean(m, N)``           mean of the last N values (current included; ``previous=1``: the N
                         values before the current one, for mean/std/min/max)
``std(m, N)``            population standard deviation of the last N values
``min(m, N)``            smallest of the last N values
``max(m, N)``            largest of the last N values
``slope(m, N)``          least-squares slope per evaluation over the last N values
``zscore(m, N)``         (current - mean of the previous N) / std of the previous N
``frac_true(c, N)``      fraction of the last N known evaluations of condition ``c`` that were true
``drop(m, 50%)``         true when the value is at least 50% below the baseline
``rise(m, 50%)``         true when the value is at least 50% above the baseline
``range(m, a, b)``       true when the value is OUTSIDE [a, b] (the metric left its expected range)
=======================  ==========================================================================

``drop``/``rise`` baseline: by default the mean of the first ``baseline=N`` finite values
(N = 10), fixed once formed; with ``window=N`` it is instead the mean of the previous N values
(rolling, current excluded). The relative change is ``(value - base) / |base|``; with a zero
baseline it is undefined and the function returns ``None``.

Shorthand: when the first argument is a constant, the rule's own metric is the operand, so in a
rule with ``metric: loss``, ``mean(20) > 1`` means ``mean(loss, 20) > 1``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

from trainguard.rules.dsl import (
    Call,
    Evaluator,
    Node,
    current_context,
    function,
    many_of,
    vector,
    with_many,
)
from trainguard.rules.windows import Moments

__all__: list[str] = []


@function("nonfinite")
def _nonfinite(call: Call) -> Node:
    operand, rest = call.operand(1)
    if rest:
        raise call.error("takes one metric")

    def make() -> Evaluator:
        f = operand.make()
        name = operand.name  # read inline: no call per step

        def evaluate(m: Mapping[str, float]) -> float | None:
            v = m.get(name) if name is not None else f(m)
            if v is None:
                return None
            return 0.0 if v - v == 0 else 1.0  # math.isfinite without a call
        if operand.batched:
            fm = many_of(f)
            with_many(evaluate, lambda b: vector().nonfinite(*fm(b)))
        return evaluate
    return Node(make, operand.metrics, batched=operand.batched, fill=operand.fill,
                test=None if operand.name is None else (operand.name, "nonfinite", 0.0))


@function("spike")
def _spike(call: Call) -> Node:
    """``spike(metric, 3x, window=100, min_count=10)``: value >= factor x rolling mean of the
    previous finite values (llm-foundry's KillLossSpike uses 2x over 100 steps)."""
    operand, rest = call.operand(2)
    factor = call.constant(rest[0] if rest else None, "factor (e.g. 3x)", 3.0)
    window = int(call.constant(call.kwargs.get("window"), "window", 100))
    min_count = int(call.constant(call.kwargs.get("min_count"), "min_count", 10))
    if window < 1 or min_count < 1:
        raise call.error("window and min_count must be at least 1")

    def make() -> Evaluator:
        f = operand.make()
        name = operand.name
        ctx = current_context()
        values: deque[float] = deque(maxlen=window)
        total = 0.0

        def evaluate(m: Mapping[str, float]) -> float | None:
            nonlocal total
            v = m.get(name) if name is not None else f(m)
            if v is None or v - v != 0:  # absent, or not finite (inf - inf is NaN)
                return None  # non-finite values are nonfinite()'s finding, not a spike's
            fired = None
            if len(values) >= min_count:
                mean = total / len(values)
                ctx.baseline = mean
                fired = 1.0 if mean > 0 and v >= factor * mean else 0.0
            if len(values) == window:
                total -= values[0]
            values.append(v)
            total += v
            return fired

        def many(b: Any) -> tuple[Any, Any]:
            nonlocal total
            V = vector()
            out, known = V.unknown(b.n)
            rows, x = V.finite(*fm(b))
            if len(rows):
                count, mean = V.rolling_mean(values, x, window, previous=True)
                ready = count >= min_count
                r, base = rows[ready], mean[ready]
                out[r] = (base > 0) & (x[ready] >= factor * base)
                known[r] = True
                b.set_baseline(r, base)
                values.extend(x[-window:].tolist())  # a deque of maxlen window
                total = sum(values)
            return out, known
        if operand.batched:
            fm = many_of(f)
            with_many(evaluate, many)
        return evaluate
    return Node(make, operand.metrics, batched=operand.batched, fill=operand.fill + min_count)


@function("stale")
def _stale(call: Call) -> Node:
    """``stale(N)`` / ``stale(metric, N)``: no new value of the metric for N steps;
    ``stale(30s)`` or ``stale(30 s)``: for 30 seconds of record time.

    Unknown until the metric has been seen once (a metric a trainer never logs is not stale), and
    unknown in seconds mode for records without a time. It runs on every step record of its rank,
    since the steps it is about are the ones that lack its metric.
    """
    operand, rest = call.operand(2)
    if len(rest) != 1:
        raise call.error("takes a count of steps (stale(20)) or seconds (stale(30s))")
    limit_node = rest[0]
    limit = call.constant(limit_node, "N (steps, or seconds with 's')")
    if limit <= 0:
        raise call.error("N must be positive")
    if limit_node.unit not in (None, "s"):
        raise call.error("N is a number of steps (stale(20)) or seconds (stale(30s))")
    seconds = limit_node.unit == "s"

    def make() -> Evaluator:
        f = operand.make()
        ctx = current_context()
        last: float | None = None
        seen: float | None = None  # the step or time of the previous evaluation

        def evaluate(m: Mapping[str, float]) -> float | None:
            nonlocal last, seen
            now = ctx.time if seconds else ctx.step
            if now is None:
                return None
            if f(m) is not None:
                last = seen = now
                return 0.0
            if last is None or now == seen:
                return None  # no new step (or second): no new evidence, no extra `for` count
            seen = now
            ctx.baseline = last
            return 1.0 if now - last >= limit else 0.0

        def many(b: Any) -> tuple[Any, Any]:
            nonlocal last, seen
            V = vector()
            out, known, rows, bases, last, seen = V.stale_marks(
                b.times if seconds else b.steps, fm(b)[1], last, seen, limit)
            if len(rows):
                b.set_baseline(rows, bases)
            return out, known
        if operand.batched:
            fm = many_of(f)
            with_many(evaluate, many)
        return evaluate
    # In steps: seen once, then missing for N records; in seconds: the next record or tick.
    return Node(make, operand.metrics, always=True, batched=operand.batched,
                fill=1 + (1 if seconds else int(math.ceil(limit))))


def _relative(call: Call, direction: float) -> Node:
    operand, rest = call.operand(2)
    if len(rest) != 1:
        raise call.error("expected (metric, fraction) or (fraction), e.g. drop(50%)")
    node = rest[0]
    frac = call.constant(node, "fraction (e.g. 50%)")
    if not node.percent and frac > 1 and call.name == "drop":
        raise call.error("a drop is a fraction: write 50% or 0.5")
    unknown = set(call.kwargs) - {"baseline", "window"}
    if unknown:
        raise call.error(f"unknown keyword {sorted(unknown)[0]!r} (known: baseline, window)")
    if "baseline" in call.kwargs and "window" in call.kwargs:
        raise call.error("give baseline=N (first N values) or window=N (rolling), not both")
    rolling = "window" in call.kwargs
    n = int(call.constant(call.kwargs.get("window" if rolling else "baseline"), "N", 10))
    if n < 1:
        raise call.error("baseline/window must be >= 1")

    def make() -> Evaluator:
        f = operand.make()
        name = operand.name
        mom = Moments(n)
        fixed: float | None = None
        scale = 1.0  # abs(fixed) once fixed is known (taken once, not a call per record)

        evaluate: Evaluator
        if rolling:
            def evaluate(m: Mapping[str, float]) -> float | None:
                v = m.get(name) if name is not None else f(m)
                if v is None or v - v != 0:  # absent, or not finite (inf - inf is NaN)
                    return None
                base = mom.mean() if len(mom.values) >= n else None
                mom.push(v)
                if base is None or base == 0:
                    return None
                change = (v - base) / abs(base) * direction
                return 1.0 if change >= frac else 0.0
        else:
            def evaluate(m: Mapping[str, float]) -> float | None:
                nonlocal fixed, scale
                v = m.get(name) if name is not None else f(m)
                if v is None or v - v != 0:
                    return None
                if fixed is None:
                    mom.push(v)
                    if len(mom.values) >= n:
                        fixed = mom.mean()
                        scale = abs(fixed)
                    return None
                if fixed == 0:
                    return None
                change = (v - fixed) / scale * direction
                return 1.0 if change >= frac else 0.0

        def many(b: Any) -> tuple[Any, Any]:
            nonlocal fixed, scale
            V = vector()
            out, known = V.unknown(b.n)
            rows, x = V.finite(*fm(b))
            if not len(rows):
                return out, known
            base = V.unknown(len(x))[0]
            if rolling:
                shift = mom.shift if mom.shift is not None else float(x[0])
                count, mean, _ = V.moments(mom.values, x, n, True, shift)
                full = count >= n
                base[full] = mean[full]
                mom.absorb(V.tail(mom.values, x, n), len(x))
            else:
                skip = 0
                while fixed is None and skip < len(x):  # the first n values form the baseline
                    mom.push(float(x[skip]))
                    skip += 1
                    if len(mom.values) >= n:
                        fixed = mom.mean()
                        scale = abs(fixed)
                if fixed is not None:
                    base[skip:] = fixed
            value, ok = V.relative_change(x, base, direction, frac)
            out[rows[ok]] = value[ok]
            known[rows[ok]] = True
            return out, known
        if operand.batched:
            fm = many_of(f)
            with_many(evaluate, many)
        return evaluate
    # The first value after the baseline's N: a fixed baseline also absorbs whatever happened
    # in its N values, which is why exact signatures get rules of their own.
    return Node(make, operand.metrics, batched=operand.batched, fill=operand.fill + n)


@function("drop")
def _drop(call: Call) -> Node:
    """``drop(m, 50%, baseline=10)``: the value is >= 50% below its baseline."""
    return _relative(call, -1.0)


@function("rise")
def _rise(call: Call) -> Node:
    """``rise(m, 100%, baseline=10)``: the value is >= 100% above its baseline."""
    return _relative(call, 1.0)


@function("range")
def _range(call: Call) -> Node:
    """``range(m, a, b)``: true when the value is outside [a, b] (it left its expected range)."""
    operand, rest = call.operand(3)
    if len(rest) != 2:
        raise call.error("expected (metric, low, high) or (low, high)")
    low = call.constant(rest[0], "low bound")
    high = call.constant(rest[1], "high bound")
    if low > high:
        raise call.error("low bound is above high bound")

    def make() -> Evaluator:
        f = operand.make()
        name = operand.name

        def evaluate(m: Mapping[str, float]) -> float | None:
            v = m.get(name) if name is not None else f(m)
            if v is None or v - v != 0:  # absent, or not finite (inf - inf is NaN)
                return None
            return 0.0 if low <= v <= high else 1.0
        if operand.batched:
            fm = many_of(f)
            with_many(evaluate, lambda b: vector().outside(*fm(b), low, high))
        return evaluate
    return Node(make, operand.metrics, batched=operand.batched, fill=operand.fill)
