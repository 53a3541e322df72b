"""The window functions of the condition language: ``mean``, ``std``, ``min``, ``max``,
``slope``, ``zscore`` and ``frac_true`` over the last N finite values (or known results).

Registered like the rest of :mod:`trainguard.rules.functions` (which imports this module), with
the same semantics: only finite values enter a window; a window function is unknown until it
holds ``min_count`` values (default: the whole window). Each closure keeps its window
incrementally (running sums, monotonic deques: O(1) a step) and carries a batch entry point,
``.many``, over the same state (:mod:`trainguard.rules.vector`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

from trainguard.rules.dormant import replayer
from trainguard.rules.dsl import (
    Call,
    Evaluator,
    Node,
    function,
    lazy_many,
    many_of,
    vector,
    with_many,
)

__all__ = ["Moments", "REBUILD_EVERY"]

# Running sums drift by rounding; rebuild them from the window every so many updates.
REBUILD_EVERY = 4096


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


def _timing(operand: Node, min_count: int, previous: bool, window: int) -> tuple[int, int]:
    """A window's ``fill`` and ``reaction`` (see :class:`~trainguard.rules.nodes.Node`): known
    from its ``min_count``-th value (one more with ``previous=1``); a window of the values
    before the current one is a baseline, the current value's comparison shows a change."""
    return operand.fill + min_count - 1 + (1 if previous else 0), 1 if previous else window


class Moments:
    """Running sum and sum of squares over a sliding window (shifted for stability)."""

    __slots__ = ("values", "window", "total", "squares", "shift", "updates", "every")

    def __init__(self, window: int) -> None:
        self.values: deque[float] = deque()
        self.window = window
        self.total = 0.0
        self.squares = 0.0
        self.shift: float | None = None  # first value seen: keeps sums of squares small
        self.updates = 0
        self.every = min(window, REBUILD_EVERY)

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
        if self.updates % self.every == 0:
            self.recentre()

    def recentre(self) -> None:
        """Re-centre on the window's mean; :meth:`push` does it once per window turnover
        (amortised O(1)): keeps the sum of squares free of cancellation after the level of
        the metric moves. (The closures of ``mean``, ``std`` and ``zscore`` inline ``push``
        and call this at the same updates.)"""
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


def _moment(call: Call, std: bool) -> Node:
    operand, window, min_count, previous = _window_args(call)

    def make() -> Evaluator:
        f, mom = operand.make(), Moments(window)
        name, sqrt = operand.name, math.sqrt
        every = mom.every

        # Moments.push, .mean() and .std() inlined (the same arithmetic, in the same order):
        # three method calls a record were most of a window's cost.
        def evaluate(m: Mapping[str, float]) -> float | None:
            v = m.get(name) if name is not None else f(m)
            if v is None or v - v != 0:  # absent, or not finite (inf - inf and NaN are NaN)
                return None
            values = mom.values
            result = None
            if previous and len(values) >= min_count:
                n = len(values)
                if std:
                    mm = mom.total / n
                    var = mom.squares / n - mm * mm
                    result = sqrt(0.0 if var < 0.0 else var)  # max(var, 0.0), NaN kept
                else:
                    result = mom.shift + mom.total / n  # type: ignore[operator]
            shift = mom.shift
            if shift is None:
                shift = mom.shift = v
            d = v - shift
            if len(values) == window:
                old = values.popleft() - shift
                mom.total = mom.total - old + d
                if std:  # a mean never reads the squares (recentre and absorb rebuild them)
                    mom.squares = mom.squares - old * old + d * d
            else:
                mom.total += d
                if std:
                    mom.squares += d * d
            values.append(v)
            mom.updates += 1
            if mom.updates % every == 0:
                mom.recentre()
            if previous:
                return result
            n = len(values)
            if n < min_count:
                return None
            if std:
                mm = mom.total / n
                var = mom.squares / n - mm * mm
                return sqrt(0.0 if var < 0.0 else var)
            return mom.shift + mom.total / n  # type: ignore[operator]
        if operand.batched:
            with_many(evaluate, lazy_many(
                lambda: _moment_many(many_of(f), mom, min_count, previous, std)))
        if name is not None:
            def reset(skipped: int) -> None:
                mom.values.clear()
                mom.shift, mom.total, mom.squares = None, 0.0, 0.0
                mom.updates += skipped
            evaluate.replay = replayer(evaluate, name, window, reset)  # type: ignore[attr-defined]
        return evaluate
    fill, reaction = _timing(operand, min_count, previous, window)
    return Node(make, operand.metrics, batched=operand.batched, fill=fill, reaction=reaction)


def _moment_many(fm: Any, mom: Moments, min_count: int, previous: bool, std: bool) -> Any:
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


@function("mean")
def _mean(call: Call) -> Node:
    """``mean(m, N)``: the mean of the last N finite values (``previous=1``: before this one)."""
    return _moment(call, std=False)


@function("std")
def _std(call: Call) -> Node:
    """``std(m, N)``: the population standard deviation of the last N finite values."""
    return _moment(call, std=True)


def _extreme(call: Call, smallest: bool) -> Node:
    operand, window, min_count, previous = _window_args(call)

    def make() -> Evaluator:
        f = operand.make()
        name = operand.name
        # Monotonic deque of (index, value): the front is the window's extreme.
        mono: deque[tuple[int, float]] = deque()
        index = 0

        def evaluate(m: Mapping[str, float]) -> float | None:
            nonlocal index
            v = m.get(name) if name is not None else f(m)
            if v is None or v - v != 0:  # absent, or not finite (inf - inf is NaN)
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
            V = vector()
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
            fm = many_of(f)
            with_many(evaluate, many)
        if name is not None:
            def reset(skipped: int) -> None:
                nonlocal index
                mono.clear()  # every value in it is older than the last `window` to come
                index += skipped
            evaluate.replay = replayer(evaluate, name, window, reset)  # type: ignore[attr-defined]
        return evaluate
    fill, reaction = _timing(operand, min_count, previous, window)
    return Node(make, operand.metrics, batched=operand.batched, fill=fill, reaction=reaction)


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
    # By window length n: sum of x and the denominator of the least-squares slope over
    # x = 0..n-1, the same floats the formula gives, looked up instead of computed a record.
    sxs = [n * (n - 1) / 2.0 for n in range(window + 1)]
    dens = [n * ((n - 1) * n * (2 * n - 1) / 6.0) - sx * sx for n, sx in enumerate(sxs)]

    def make() -> Evaluator:
        f = operand.make()
        name = operand.name
        values: deque[float] = deque()
        sy = 0.0   # sum of y
        sxy = 0.0  # sum of x*y with x = 0..n-1 (oldest first)
        updates = 0

        def evaluate(m: Mapping[str, float]) -> float | None:
            nonlocal sy, sxy, updates
            v = m.get(name) if name is not None else f(m)
            if v is None or v - v != 0:  # absent, or not finite
                return None
            if len(values) == window:
                old = values.popleft()
                sy -= old
                sxy -= sy  # every remaining x drops by one
            sxy += len(values) * v
            sy += v
            values.append(v)
            updates += 1
            if updates % REBUILD_EVERY == 0:
                sy = sum(values)
                sxy = sum(i * y for i, y in enumerate(values))
            n = len(values)
            if n < min_count:
                return None
            return (n * sxy - sxs[n] * sy) / dens[n]

        def many(b: Any) -> tuple[Any, Any]:
            nonlocal values, sy, sxy, updates
            V = vector()
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
            fm = many_of(f)
            with_many(evaluate, many)
        if name is not None:
            def reset(skipped: int) -> None:
                nonlocal sy, sxy, updates
                values.clear()
                sy = sxy = 0.0
                updates += skipped
            evaluate.replay = replayer(evaluate, name, window, reset)  # type: ignore[attr-defined]
        return evaluate
    fill, reaction = _timing(operand, min_count, False, window)
    return Node(make, operand.metrics, batched=operand.batched, fill=fill, reaction=reaction)


@function("zscore")
def _zscore(call: Call) -> Node:
    """``zscore(m, N)``: how many standard deviations the value is from the previous N values."""
    operand, window, min_count, _ = _window_args(call)

    def make() -> Evaluator:
        f, mom = operand.make(), Moments(window)
        name, sqrt = operand.name, math.sqrt
        every = mom.every

        def evaluate(m: Mapping[str, float]) -> float | None:
            v = m.get(name) if name is not None else f(m)
            if v is None or v - v != 0:  # absent, or not finite
                return None
            # Moments.mean(), .std() and .push() inlined, as in mean() and std().
            values = mom.values
            n = len(values)
            result = None
            shift = mom.shift
            if n >= min_count:
                mm = mom.total / n
                mean = shift + mm  # type: ignore[operator]
                var = mom.squares / n - mm * mm
                sd = sqrt(0.0 if var < 0.0 else var)  # max(var, 0.0), NaN kept
                if sd > 0:
                    result = (v - mean) / sd
                else:  # a flat history: any move is infinitely surprising, none is 0
                    result = 0.0 if v == mean else math.copysign(math.inf, v - mean)
            if shift is None:
                shift = mom.shift = v
            d = v - shift
            if n == window:
                old = values.popleft() - shift
                mom.total = mom.total - old + d
                mom.squares = mom.squares - old * old + d * d
            else:
                mom.total += d
                mom.squares += d * d
            values.append(v)
            mom.updates += 1
            if mom.updates % every == 0:
                mom.recentre()
            return result

        def many(b: Any) -> tuple[Any, Any]:
            V = vector()
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
            fm = many_of(f)
            with_many(evaluate, many)
        return evaluate
    # The current value against the previous N: it shows a change at once.
    return Node(make, operand.metrics, batched=operand.batched,
                fill=operand.fill + min_count, reaction=1)


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
            V = vector()
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
            fm = many_of(f)
            with_many(evaluate, many)
        return evaluate
    return Node(make, cond.metrics, batched=cond.batched,
                fill=cond.fill + min_count - 1, reaction=window)
