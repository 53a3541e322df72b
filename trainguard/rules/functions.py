"""The built-in functions of the condition language: window, baseline, spike and staleness.

Each function is registered with :func:`trainguard.rules.dsl.function`, reads its constant
arguments once at compile time and returns a :class:`~trainguard.rules.dsl.Node` whose
``make()`` builds a closure with its own state. Rolling statistics are incremental (running
sums, monotonic deques), never recomputed over the window, so a step costs O(1) amortised.

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

__all__: list[str] = []

# Running sums drift by rounding; rebuild them from the window every so many updates.
_REBUILD_EVERY = 4096


def _window_args(call: Call, what: str = "window N",
                 extra: frozenset[str] = frozenset()) -> tuple[Node, int, int, bool]:
    operand, rest = call.operand(2)
    if len(rest) != 1:
        raise call.error("expected (metric, N), or (N) for the rule's own metric")
    n = call.constant(rest[0], what)
    if n != int(n) or n < 1:
        raise call.error("N must be a whole number >= 1")
    window = int(n)
    min_count = int(call.constant(call.kwargs.get("min_count"), "min_count", window))
    if not 1 <= min_count <= window:
        raise call.error("min_count must be between 1 and N")
    known = {"min_count", "previous"} | extra
    unknown = set(call.kwargs) - known
    if unknown:
        raise call.error(f"unknown keyword {sorted(unknown)[0]!r} (known: "
                         f"{', '.join(sorted(known))})")
    previous = bool(call.constant(call.kwargs.get("previous"), "previous", 0))
    return operand, window, min_count, previous


class _Moments:
    """Running sum and sum of squares over a sliding window (shifted for stability)."""

    __slots__ = ("values", "window", "total", "squares", "shift", "updates", "every")

    def __init__(self, window: int) -> None:
        self.values: deque[float] = deque()
        self.window = window
        self.total = 0.0
        self.squares = 0.0
        self.shift: float | None = None  # first value seen: keeps sums of squares small
        self.updates = 0
        self.every = min(window, _REBUILD_EVERY)

    def push(self, v: float) -> None:
        if self.shift is None:
            self.shift = v
        d = v - self.shift
        if len(self.values) == self.window:
            old = self.values.popleft() - self.shift
            self.total -= old
            self.squares -= old * old
        self.values.append(v)
        self.total += d
        self.squares += d * d
        self.updates += 1
        # Re-centre on the window's mean once per window turnover (amortised O(1)): keeps the
        # sum of squares free of cancellation after the level of the metric moves.
        if self.updates % self.every == 0:
            self.shift = sum(self.values) / len(self.values)
            ds = [x - self.shift for x in self.values]
            self.total = sum(ds)
            self.squares = sum(x * x for x in ds)

    def absorb(self, history: list[float], pushed: int) -> None:
        """Take the state a batch left: the window's values now (oldest first) after
        ``pushed`` more values; the sums are rebuilt around the window's mean."""
        self.values = deque(history)
        self.updates += pushed
        self.shift = sum(history) / len(history)
        ds = [x - self.shift for x in history]
        self.total = sum(ds)
        self.squares = sum(x * x for x in ds)

    def mean(self) -> float:
        assert self.shift is not None
        return self.shift + self.total / len(self.values)

    def std(self) -> float:
        n = len(self.values)
        m = self.total / n
        return math.sqrt(max(self.squares / n - m * m, 0.0))


@function("nonfinite")
def _nonfinite(call: Call) -> Node:
    operand, rest = call.operand(1)
    if rest:
        raise call.error("takes one metric")

    def make() -> Evaluator:
        f = operand.make()
        name, isfinite = operand.name, math.isfinite  # read inline: no call per step

        def evaluate(m: Mapping[str, float]) -> float | None:
            v = m.get(name) if name is not None else f(m)
            if v is None:
                return None
            return 0.0 if isfinite(v) else 1.0
        if operand.batched:
            fm, nonfinite = many_of(f), vector().nonfinite
            with_many(evaluate, lambda b: nonfinite(*fm(b)))
        return evaluate
    return Node(make, operand.metrics, batched=operand.batched)


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
        name, isfinite = operand.name, math.isfinite
        ctx = current_context()
        values: deque[float] = deque(maxlen=window)
        total = 0.0

        def evaluate(m: Mapping[str, float]) -> float | None:
            nonlocal total
            v = m.get(name) if name is not None else f(m)
            if v is None or not isfinite(v):
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
            V, fm = vector(), many_of(f)
            with_many(evaluate, many)
        return evaluate
    return Node(make, operand.metrics, batched=operand.batched)


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
            out, known, rows, bases, last, seen = V.stale_marks(
                b.times if seconds else b.steps, fm(b)[1], last, seen, limit)
            if len(rows):
                b.set_baseline(rows, bases)
            return out, known
        if operand.batched:
            V, fm = vector(), many_of(f)
            with_many(evaluate, many)
        return evaluate
    return Node(make, operand.metrics, always=True, batched=operand.batched)


@function("mean")
def _mean(call: Call) -> Node:
    """``mean(m, N)``: the mean of the last N finite values (``previous=1``: before this one)."""
    operand, window, min_count, previous = _window_args(call)

    def make() -> Evaluator:
        f, mom = operand.make(), _Moments(window)
        name, isfinite = operand.name, math.isfinite  # read inline: no call

        def evaluate(m: Mapping[str, float]) -> float | None:
            v = m.get(name) if name is not None else f(m)
            if v is None or not isfinite(v):
                return None
            if previous:
                result = mom.mean() if len(mom.values) >= min_count else None
                mom.push(v)
                return result
            mom.push(v)
            return mom.mean() if len(mom.values) >= min_count else None
        if operand.batched:
            with_many(evaluate, _moment_many(many_of(f), mom, min_count, previous, std=False))
        return evaluate
    return Node(make, operand.metrics, batched=operand.batched)


def _moment_many(fm: Any, mom: _Moments, min_count: int, previous: bool, std: bool) -> Any:
    """The batch entry point of ``mean`` / ``std``, sharing the closure's window ``mom``."""
    V = vector()

    def many(b: Any) -> tuple[Any, Any]:
        out, known = V.unknown(b.n)
        rows, x = V.finite(*fm(b))
        if len(rows):
            shift = mom.shift if mom.shift is not None else float(x[0])
            count, mean, sd = V.moments(mom.values, x, mom.window, previous, shift)
            ready = count >= min_count
            out[rows[ready]] = (sd if std else mean)[ready]
            known[rows[ready]] = True
            mom.absorb(V.tail(mom.values, x, mom.window), len(x))
        return out, known
    return many


@function("std")
def _std(call: Call) -> Node:
    """``std(m, N)``: the population standard deviation of the last N finite values."""
    operand, window, min_count, previous = _window_args(call)

    def make() -> Evaluator:
        f, mom = operand.make(), _Moments(window)
        name, isfinite = operand.name, math.isfinite

        def evaluate(m: Mapping[str, float]) -> float | None:
            v = m.get(name) if name is not None else f(m)
            if v is None or not isfinite(v):
                return None
            if previous:
                result = mom.std() if len(mom.values) >= min_count else None
                mom.push(v)
                return result
            mom.push(v)
            return mom.std() if len(mom.values) >= min_count else None
        if operand.batched:
            with_many(evaluate, _moment_many(many_of(f), mom, min_count, previous, std=True))
        return evaluate
    return Node(make, operand.metrics, batched=operand.batched)


def _extreme(call: Call, smallest: bool) -> Node:
    operand, window, min_count, previous = _window_args(call)

    def make() -> Evaluator:
        f = operand.make()
        name, isfinite = operand.name, math.isfinite
        # Monotonic deque of (index, value): the front is the window's extreme.
        mono: deque[tuple[int, float]] = deque()
        index = 0

        def evaluate(m: Mapping[str, float]) -> float | None:
            nonlocal index
            v = m.get(name) if name is not None else f(m)
            if v is None or not isfinite(v):
                return None
            if mono and mono[0][0] < index - window:
                mono.popleft()
            before = mono[0][1] if mono and index >= min_count else None
            if smallest:
                while mono and mono[-1][1] >= v:
                    mono.pop()
            else:
                while mono and mono[-1][1] <= v:
                    mono.pop()
            mono.append((index, v))
            if mono[0][0] <= index - window:
                mono.popleft()
            index += 1
            if previous:
                return before
            return mono[0][1] if index >= min_count else None

        def many(b: Any) -> tuple[Any, Any]:
            nonlocal index, mono
            out, known = V.unknown(b.n)
            rows, x = V.finite(*fm(b))
            if len(rows):
                history = V.extreme_history(mono, index, window, smallest)
                count, value = V.extremes(history, x, window, previous, smallest)
                ready = (count >= min_count) & (count > 0)
                out[rows[ready]] = value[ready]
                known[rows[ready]] = True
                kept = V.tail(history, x, window)
                index += len(x)
                mono = deque(V.monotonic(kept, index - len(kept), smallest))
            return out, known
        if operand.batched:
            V, fm = vector(), many_of(f)
            with_many(evaluate, many)
        return evaluate
    return Node(make, operand.metrics, batched=operand.batched)


@function("min")
def _min(call: Call) -> Node:
    """``min(m, N)``: the smallest of the last N finite values."""
    return _extreme(call, smallest=True)


@function("max")
def _max(call: Call) -> Node:
    """``max(m, N)``: the largest of the last N finite values."""
    return _extreme(call, smallest=False)


@function("slope")
def _slope(call: Call) -> Node:
    """``slope(m, N)``: least-squares slope per evaluation over the last N finite values."""
    operand, window, min_count, _ = _window_args(call)
    if min_count < 2:
        raise call.error("a slope needs min_count >= 2")

    def make() -> Evaluator:
        f = operand.make()
        name, isfinite = operand.name, math.isfinite
        values: deque[float] = deque()
        sy = 0.0   # sum of y
        sxy = 0.0  # sum of x*y with x = 0..n-1 (oldest first)
        updates = 0

        def evaluate(m: Mapping[str, float]) -> float | None:
            nonlocal sy, sxy, updates
            v = m.get(name) if name is not None else f(m)
            if v is None or not isfinite(v):
                return None
            if len(values) == window:
                old = values.popleft()
                sy -= old
                sxy -= sy  # every remaining x drops by one
            sxy += len(values) * v
            sy += v
            values.append(v)
            updates += 1
            if updates % _REBUILD_EVERY == 0:
                sy = sum(values)
                sxy = sum(i * y for i, y in enumerate(values))
            n = len(values)
            if n < min_count:
                return None
            sx = n * (n - 1) / 2.0
            sxx = (n - 1) * n * (2 * n - 1) / 6.0
            return (n * sxy - sx * sy) / (n * sxx - sx * sx)

        def many(b: Any) -> tuple[Any, Any]:
            nonlocal values, sy, sxy, updates
            out, known = V.unknown(b.n)
            rows, x = V.finite(*fm(b))
            if len(rows):
                count, value = V.slopes(values, x, window)
                ready = count >= min_count
                out[rows[ready]] = value[ready]
                known[rows[ready]] = True
                values = deque(V.tail(values, x, window))
                sy = sum(values)
                sxy = sum(i * y for i, y in enumerate(values))
                updates += len(x)
            return out, known
        if operand.batched:
            V, fm = vector(), many_of(f)
            with_many(evaluate, many)
        return evaluate
    return Node(make, operand.metrics, batched=operand.batched)


@function("zscore")
def _zscore(call: Call) -> Node:
    """``zscore(m, N)``: how many standard deviations the value is from the previous N values."""
    operand, window, min_count, _ = _window_args(call)

    def make() -> Evaluator:
        f, mom = operand.make(), _Moments(window)
        name, isfinite = operand.name, math.isfinite

        def evaluate(m: Mapping[str, float]) -> float | None:
            v = m.get(name) if name is not None else f(m)
            if v is None or not isfinite(v):
                return None
            result = None
            if len(mom.values) >= min_count:
                mean, sd = mom.mean(), mom.std()
                if sd > 0:
                    result = (v - mean) / sd
                else:  # a flat history: any move is infinitely surprising, none is 0
                    result = 0.0 if v == mean else math.copysign(math.inf, v - mean)
            mom.push(v)
            return result

        def many(b: Any) -> tuple[Any, Any]:
            out, known = V.unknown(b.n)
            rows, x = V.finite(*fm(b))
            if len(rows):
                shift = mom.shift if mom.shift is not None else float(x[0])
                count, mean, sd = V.moments(mom.values, x, window, True, shift)
                ready = count >= min_count
                out[rows[ready]] = V.zscores(x[ready], mean[ready], sd[ready])
                known[rows[ready]] = True
                mom.absorb(V.tail(mom.values, x, window), len(x))
            return out, known
        if operand.batched:
            V, fm = vector(), many_of(f)
            with_many(evaluate, many)
        return evaluate
    return Node(make, operand.metrics, batched=operand.batched)


@function("frac_true")
def _frac_true(call: Call) -> Node:
    """``frac_true(cond, N)``: the fraction of the last N known evaluations where cond held."""
    if len(call.args) != 2:
        raise call.error("expected (condition, N)")
    cond = call.args[0]
    n = call.constant(call.args[1], "N")
    if n != int(n) or n < 1:
        raise call.error("N must be a whole number >= 1")
    window = int(n)
    min_count = int(call.constant(call.kwargs.get("min_count"), "min_count", window))

    def make() -> Evaluator:
        f = cond.make()
        bits: deque[int] = deque()
        count = 0

        def evaluate(m: Mapping[str, float]) -> float | None:
            nonlocal count
            v = f(m)
            if v is None:
                return None
            bit = 1 if v else 0  # NaN is truthy, as everywhere in the language
            if len(bits) == window:
                count -= bits.popleft()
            bits.append(bit)
            count += bit
            return count / len(bits) if len(bits) >= min_count else None

        def many(b: Any) -> tuple[Any, Any]:
            nonlocal bits, count
            out, known = V.unknown(b.n)
            v, k = fm(b)
            rows = V.known_rows(k)
            if len(rows):
                new = V.truth(v[rows])
                n, frac = V.frac_window(bits, new, window)
                ready = n >= min_count
                out[rows[ready]] = frac[ready]
                known[rows[ready]] = True
                bits = deque(int(x) for x in V.tail(bits, new, window))
                count = sum(bits)
            return out, known
        if cond.batched:
            V, fm = vector(), many_of(f)
            with_many(evaluate, many)
        return evaluate
    return Node(make, cond.metrics, batched=cond.batched)


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
        name, isfinite = operand.name, math.isfinite
        mom = _Moments(n)
        fixed: float | None = None

        def evaluate(m: Mapping[str, float]) -> float | None:
            nonlocal fixed
            v = m.get(name) if name is not None else f(m)
            if v is None or not isfinite(v):
                return None
            if rolling:
                base = mom.mean() if len(mom.values) >= n else None
                mom.push(v)
            else:
                if fixed is None:
                    mom.push(v)
                    if len(mom.values) >= n:
                        fixed = mom.mean()
                    return None
                base = fixed
            if base is None or base == 0:
                return None
            change = (v - base) / abs(base) * direction
            return 1.0 if change >= frac else 0.0

        def many(b: Any) -> tuple[Any, Any]:
            nonlocal fixed
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
                if fixed is not None:
                    base[skip:] = fixed
            value, ok = V.relative_change(x, base, direction, frac)
            out[rows[ok]] = value[ok]
            known[rows[ok]] = True
            return out, known
        if operand.batched:
            V, fm = vector(), many_of(f)
            with_many(evaluate, many)
        return evaluate
    return Node(make, operand.metrics, batched=operand.batched)


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
        name, isfinite = operand.name, math.isfinite

        def evaluate(m: Mapping[str, float]) -> float | None:
            v = m.get(name) if name is not None else f(m)
            if v is None or not isfinite(v):
                return None
            return 0.0 if low <= v <= high else 1.0
        if operand.batched:
            fm, outside = many_of(f), vector().outside
            with_many(evaluate, lambda b: outside(*fm(b), low, high))
        return evaluate
    return Node(make, operand.metrics, batched=operand.batched)
