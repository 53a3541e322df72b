"""Robust window statistics of the condition language: ``median`` and ``jump``.

A rolling mean is dragged by what it should ignore: a GRPO run logs many steps of exactly
zero gradient (batches whose advantages are all zero), which pull the mean of ``grad_norm``
toward 0 until an ordinary step looks like a 10x spike; one huge value lifts the mean for a
whole window. A median is moved by neither a minority of zeros nor a single outlier, and
``floor=`` keeps values below an absolute level out of the window altogether and is the
smallest baseline a ratio is ever taken against.

=========================================  ===================================================
``median(m, N)``                           median of the last N finite values (``previous=1``:
                                           the N before the current one; ``floor=F``: only
                                           values >= F enter the window)
``jump(m, 10x, window=50, floor=F)``       true when the value is at least 10x the median of
                                           the previous values >= F, and at least 10x F
=========================================  ===================================================

Both keep their window as a sorted list (O(log N) search, O(N) memmove: N <= a few hundred)
and have a batch form (:func:`_medians`) on the same state: bottleneck's moving median when
``trainguard[fast]`` is installed, else numpy sliding windows (the same medians).
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from collections.abc import Mapping
from typing import Any

from trainguard.rules.dormant import replayer
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

__all__ = ["RollingMedian"]


class RollingMedian:
    """The median of the last ``window`` values pushed (values below ``floor`` are not)."""

    __slots__ = ("order", "sorted", "window", "floor")

    def __init__(self, window: int, floor: float) -> None:
        self.order: deque[float] = deque()
        self.sorted: list[float] = []
        self.window = window
        self.floor = floor

    def push(self, v: float) -> None:
        if v < self.floor:
            return
        if len(self.order) == self.window:
            old = self.order.popleft()
            del self.sorted[bisect_left(self.sorted, old)]
        self.order.append(v)
        insort(self.sorted, v)

    def count(self) -> int:
        return len(self.order)

    def median(self) -> float:
        s, n = self.sorted, len(self.sorted)
        half = n // 2
        return s[half] if n % 2 else 0.5 * (s[half - 1] + s[half])

    def absorb(self, kept: list[float]) -> None:
        """Take the window a batch left (oldest first); in place, since the closures hold
        the containers."""
        self.order.clear()
        self.order.extend(kept)
        self.sorted[:] = sorted(kept)


def _medians(np: Any, history: list[float], x: Any, window: int, previous: bool,
             floor: float) -> tuple[Any, Any, list[float]]:
    """For each new value of ``x``: (count, median) of its window of values >= ``floor``
    (the value itself included unless ``previous``), and the window left at the end."""
    keep = x >= floor
    every = bool(keep.all())  # the common case: no value under the floor, no mask to apply
    kept_new = x if every else x[keep]
    full = np.concatenate((np.array(history, dtype=float), kept_new))
    # Values kept before row i, then the window's end (exclusive) in `full`'s positions.
    if every:
        end = np.arange(len(history), len(history) + len(x)) + (0 if previous else 1)
    else:
        before = len(history) + np.cumsum(keep) - keep
        end = before if previous else before + keep
    count = np.minimum(end, window)
    bn = _bottleneck()
    if bn is not None and len(full):
        # C moving median (O(log N) a value): table[e] = median of full[e - N + 1 : e + 1]
        table = bn.move_median(full, min(window, len(full)), min_count=1)
        if end[0] > 0:  # every row has a window (``end`` never falls)
            return count, table[end - 1], full[-window:].tolist()
        med = np.full(len(x), math.nan)
        ready = end > 0
        med[ready] = table[end[ready] - 1]
        return count, med, full[-window:].tolist()
    med = np.full(len(x), math.nan)
    whole = end >= window
    if whole.any() and len(full) >= window:
        views = np.lib.stride_tricks.sliding_window_view(full, window)
        table = np.median(views, axis=1)  # table[s] = median of full[s : s + window]
        med[whole] = table[end[whole] - window]
    filling = np.flatnonzero(~whole & (end > 0)).tolist()
    if filling:  # windows still filling (the first `window` values of a stream): a sorted
        # prefix grown value by value, as the closure does, is cheaper than a median per row
        prefix = full[:window].tolist()
        ordered: list[float] = []
        grown = 0
        for i in filling:
            stop = int(end[i])
            while grown < stop:
                insort(ordered, prefix[grown])
                grown += 1
            half = stop // 2
            med[i] = ordered[half] if stop % 2 else 0.5 * (ordered[half - 1] + ordered[half])
    return count, med, full[-window:].tolist()


def _bottleneck() -> Any:
    """bottleneck (``trainguard[fast]``), whose C moving median makes the batch form ~30x
    cheaper, or None: numpy's sliding windows give the same medians."""
    return vector().bottleneck()


def _floor_arg(call: Call) -> float:
    floor = call.constant(call.kwargs.get("floor"), "floor", -math.inf)
    if floor != floor:
        raise call.error("floor must be a number")
    return floor


@function("median")
def _median(call: Call) -> Node:
    """``median(m, N, min_count=K, previous=1, floor=F)``: a baseline zeros and outliers
    cannot drag."""
    operand, rest = call.operand(2)
    if len(rest) != 1:
        raise call.error("expected (metric, N), or (N) for the rule's own metric")
    n = call.constant(rest[0], "window N")
    if n != int(n) or n < 1:
        raise call.error("N must be a whole number >= 1")
    window = int(n)
    min_count = int(call.constant(call.kwargs.get("min_count"), "min_count", window))
    if not 1 <= min_count <= window:
        raise call.error("min_count must be between 1 and N")
    unknown = set(call.kwargs) - {"min_count", "previous", "floor"}
    if unknown:
        raise call.error(f"unknown keyword {sorted(unknown)[0]!r} "
                         "(known: floor, min_count, previous)")
    previous = bool(call.constant(call.kwargs.get("previous"), "previous", 0))
    floor = _floor_arg(call)

    def make() -> Evaluator:
        f, med = operand.make(), RollingMedian(window, floor)
        name = operand.name
        order, ordered = med.order, med.sorted  # absorb() refills them in place
        evaluate: Evaluator
        # RollingMedian's push and median, inlined: this runs on every step.
        if previous:
            def evaluate(m: Mapping[str, float]) -> float | None:
                v = m.get(name) if name is not None else f(m)
                if v is None or v - v != 0:  # absent, or not finite (inf - inf is NaN)
                    return None
                n = len(ordered)
                result = None
                if n >= min_count:
                    half = n >> 1
                    result = ordered[half] if n & 1 else 0.5 * (ordered[half - 1]
                                                                + ordered[half])
                if v >= floor:
                    if n == window:
                        del ordered[bisect_left(ordered, order.popleft())]
                    order.append(v)
                    insort(ordered, v)
                return result
        else:
            def evaluate(m: Mapping[str, float]) -> float | None:
                v = m.get(name) if name is not None else f(m)
                if v is None or v - v != 0:
                    return None
                if v >= floor:
                    if len(ordered) == window:
                        del ordered[bisect_left(ordered, order.popleft())]
                    order.append(v)
                    insort(ordered, v)
                n = len(ordered)
                if n < min_count:
                    return None
                half = n >> 1
                return ordered[half] if n & 1 else 0.5 * (ordered[half - 1] + ordered[half])

        def many(b: Any) -> tuple[Any, Any]:
            V = vector()
            out, known = V.unknown(b.n)
            rows, x = V.finite(*fm(b))
            if len(rows):
                count, value, kept = _medians(V.np, list(med.order), x, window, previous,
                                              floor)
                ready = count >= min_count
                out[rows[ready]] = value[ready]
                known[rows[ready]] = True
                med.absorb(kept)
            return out, known
        if operand.batched:
            fm = many_of(f)
            with_many(evaluate, many)
        if name is not None:
            def reset(skipped: int) -> None:
                order.clear()
                ordered.clear()
            evaluate.replay = replayer(evaluate, name, window, reset,  # type: ignore[attr-defined]
                                       floor)
        return evaluate
    return Node(make, operand.metrics, batched=operand.batched,
                fill=operand.fill + min_count - 1 + (1 if previous else 0),
                reaction=1 if previous else window)


@function("jump")
def _jump(call: Call) -> Node:
    """``jump(m, 10x, window=50, min_count=5, floor=F)``: the value is at least ``factor``
    times the median of the previous values (those >= F), and at least ``factor`` x F."""
    operand, rest = call.operand(2)
    factor = call.constant(rest[0] if rest else None, "factor (e.g. 10x)", 10.0)
    window = int(call.constant(call.kwargs.get("window"), "window", 50))
    min_count = int(call.constant(call.kwargs.get("min_count"), "min_count", 5))
    if window < 1 or not 1 <= min_count <= window:
        raise call.error("window must be >= 1 and min_count between 1 and window")
    unknown = set(call.kwargs) - {"window", "min_count", "floor"}
    if unknown:
        raise call.error(f"unknown keyword {sorted(unknown)[0]!r} "
                         "(known: floor, min_count, window)")
    floor = _floor_arg(call)
    lowest = max(floor, 0.0)

    def make() -> Evaluator:
        f, med = operand.make(), RollingMedian(window, floor)
        name = operand.name
        order, ordered = med.order, med.sorted  # absorb() refills them in place
        ctx = current_context()

        def evaluate(m: Mapping[str, float]) -> float | None:
            # RollingMedian's push and median, inlined: this runs on every step.
            v = m.get(name) if name is not None else f(m)
            if v is None or v - v != 0:  # absent, or not finite (inf - inf is NaN)
                return None
            fired = None
            n = len(ordered)
            if n >= min_count:
                half = n >> 1
                base = ordered[half] if n & 1 else 0.5 * (ordered[half - 1] + ordered[half])
                if base < lowest:
                    base = lowest
                ctx.baseline = base
                fired = 1.0 if base > 0 and v >= factor * base else 0.0
            if v >= floor:
                if n == window:
                    del ordered[bisect_left(ordered, order.popleft())]
                order.append(v)
                insort(ordered, v)
            return fired

        def many(b: Any) -> tuple[Any, Any]:
            V = vector()
            np = V.np
            out, known = V.unknown(b.n)
            rows, x = V.finite(*fm(b))
            if len(rows):
                count, value, kept = _medians(np, list(med.order), x, window, True, floor)
                ready = count >= min_count
                r = rows[ready]
                base = np.maximum(value[ready], lowest)
                out[r] = (base > 0) & (x[ready] >= factor * base)
                known[r] = True
                b.set_baseline(r, base)
                med.absorb(kept)
            return out, known
        if operand.batched:
            fm = many_of(f)
            with_many(evaluate, many)
        return evaluate
    return Node(make, operand.metrics, batched=operand.batched,
                fill=operand.fill + min_count, reaction=1)
