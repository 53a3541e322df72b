"""Batch evaluation of conditions: many step records of one rank at once, with numpy.

Every node of a compiled condition (:mod:`trainguard.rules.dsl`) has two factories: ``make()``
builds a closure that takes one record's metrics at a time, and ``vmake()`` (this module) builds
a *batch evaluator* that takes a :class:`Batch` (consecutive records of one rank) and returns two
arrays: the value of the condition on each record and whether it is known there (three-valued
logic: an unknown result neither fires nor resets a pending alert). A batch evaluator keeps its
rolling state between calls, so feeding a series in batches of any size gives the results that
the per-record closure gives, record by record, up to floating-point rounding (running sums
here are prefix sums, not add-and-subtract). ``tests/test_vector.py`` holds every built-in
rule's condition to that on random series cut at random points.

Why: the engine evaluates a rule once per step, and at a million one-metric events a second
the Python call per rule and step, not the arithmetic, is the cost. A rule whose condition
has a batch form is evaluated once per batch instead; the alert life cycle (``for``,
``keep_firing_for``...) still steps record by record, but only through the records of a
batch where the condition is true or the rule is firing, which on a healthy run is none.

Semantics shared with the closures: only finite values enter a window or a baseline; a
window function is unknown until it holds ``min_count`` values; NaN as a truth value is true.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["Batch", "VEvaluator", "binary", "const", "extreme", "frac_true", "logical",
           "metric", "moment", "negate", "nonfinite", "range_", "relative", "slope", "spike",
           "stale", "zscore"]

F64 = np.float64
_NAN = math.nan
Arr = np.ndarray

#: A batch evaluator: a batch in, (values, known) out, both of the batch's length.
VEvaluator = Callable[["Batch"], tuple[Arr, Arr]]
#: Builds a fresh batch evaluator with its own state (one per rule and rank).
VFactory = Callable[[], VEvaluator]


class Batch:
    """Consecutive step records of one rank, as columns built on demand.

    ``baseline`` is written by functions that compare against one (a spike's rolling mean,
    the last time a stale metric was seen), NaN where none; the engine resets it to ``None``
    before each rule and reads it for the alert message.
    """

    __slots__ = ("n", "steps", "_times", "_time_list", "metrics", "_columns", "baseline")

    def __init__(self, steps: Sequence[int], times: Sequence[float | None],
                 metrics: Sequence[Mapping[str, float]]) -> None:
        self.n = len(metrics)
        self.steps = np.array(steps, dtype=F64)
        self._time_list = times
        self._times: Arr | None = None
        self.metrics = metrics
        self._columns: dict[str, tuple[Arr, Arr]] = {}
        self.baseline: Arr | None = None

    @property
    def times(self) -> Arr:
        """Record times in seconds, NaN where a record has none."""
        if self._times is None:
            self._times = np.array([_NAN if t is None else t for t in self._time_list],
                                   dtype=F64)
        return self._times

    def column(self, name: str) -> tuple[Arr, Arr]:
        """(values, present) of metric ``name``; values are NaN where absent."""
        col = self._columns.get(name)
        if col is None:
            metrics = self.metrics
            values = np.array([m.get(name, _NAN) for m in metrics], dtype=F64)
            nan = np.isnan(values)
            if nan.any():  # absent, or a NaN value: only those rows need the slower look
                present = ~nan
                rows = np.flatnonzero(nan)
                present[rows] = [name in metrics[i] for i in rows.tolist()]
            else:
                present = np.ones(self.n, dtype=bool)
            col = self._columns[name] = (values, present)
        return col

    def present_any(self, names: frozenset[str]) -> Arr:
        """Rows that carry at least one of ``names``."""
        out = np.zeros(self.n, dtype=bool)
        for name in names:
            out |= self.column(name)[1]
        return out

    def take(self, rows: Arr) -> Batch:
        """The records at ``rows`` (sorted positions), as a batch of their own."""
        listed = rows.tolist()
        sub = Batch.__new__(Batch)
        sub.n = len(listed)
        sub.steps = self.steps[rows]
        sub._time_list = [self._time_list[i] for i in listed]
        sub._times = None if self._times is None else self._times[rows]
        sub.metrics = [self.metrics[i] for i in listed]
        sub._columns = {k: (v[rows], p[rows]) for k, (v, p) in self._columns.items()}
        sub.baseline = None
        return sub

    def set_baseline(self, rows: Arr, values: Arr) -> None:
        """Note the baseline a function compared against at ``rows`` (the last writer wins, as
        the closures' ``ctx.baseline`` does)."""
        if self.baseline is None:
            self.baseline = np.full(self.n, _NAN)
        self.baseline[rows] = values


def _known_all(n: int) -> Arr:
    return np.ones(n, dtype=bool)


# -- leaves and operators ------------------------------------------------------------------------


def const(value: float) -> VFactory:
    """A literal: known everywhere."""
    def make() -> VEvaluator:
        return lambda b: (np.full(b.n, value, dtype=F64), _known_all(b.n))
    return make


def metric(name: str) -> VFactory:
    """A metric's column: unknown where the record lacks it."""
    def make() -> VEvaluator:
        return lambda b: b.column(name)
    return make


def _divide(a: Arr, b: Arr) -> Arr:
    """``a / b`` as the closures define it: x/0 is +-inf by the signs, 0/0 is NaN."""
    zero = b == 0
    if not zero.any():
        return a / b
    out = np.where(a == 0, _NAN, np.copysign(math.inf, a) * np.copysign(1.0, b))
    ok = ~zero
    out[ok] = a[ok] / b[ok]
    return out


_OPS: dict[str, Callable[[Arr, Arr], Arr]] = {
    "+": np.add, "-": np.subtract, "*": np.multiply, "/": _divide,
    "<": lambda a, b: np.less(a, b).astype(F64), "<=": lambda a, b: np.less_equal(a, b).astype(F64),
    ">": lambda a, b: np.greater(a, b).astype(F64),
    ">=": lambda a, b: np.greater_equal(a, b).astype(F64),
    "==": lambda a, b: np.equal(a, b).astype(F64),
    "!=": lambda a, b: np.not_equal(a, b).astype(F64),
}


def binary(op: str, left: VFactory, right: VFactory) -> VFactory:
    """Arithmetic or a comparison: known where both sides are (both always evaluated, so a
    window on either side sees every record)."""
    fn = _OPS[op]

    def make() -> VEvaluator:
        lf, rf = left(), right()

        def evaluate(b: Batch) -> tuple[Arr, Arr]:
            av, ak = lf(b)
            bv, bk = rf(b)
            with np.errstate(all="ignore"):
                return fn(av, bv), ak & bk
        return evaluate
    return make


def logical(op: str, left: VFactory, right: VFactory) -> VFactory:
    """``and`` / ``or`` in three-valued logic (a known false side decides ``and``)."""
    def make() -> VEvaluator:
        lf, rf = left(), right()

        def evaluate(b: Batch) -> tuple[Arr, Arr]:
            av, ak = lf(b)
            bv, bk = rf(b)
            if op == "and":
                decided = (ak & (av == 0)) | (bk & (bv == 0))
                known = decided | (ak & bk)
                return np.where(decided, 0.0, 1.0), known
            true = (ak & (av != 0)) | (bk & (bv != 0))
            known = true | (ak & bk)
            return true.astype(F64), known
        return evaluate
    return make


def negate(inner: VFactory, arithmetic: bool) -> VFactory:
    """``-x`` or ``not x``."""
    def make() -> VEvaluator:
        f = inner()

        def evaluate(b: Batch) -> tuple[Arr, Arr]:
            v, k = f(b)
            return (-v if arithmetic else (v == 0).astype(F64)), k
        return evaluate
    return make


# -- window machinery ----------------------------------------------------------------------------


def _finite(f: VEvaluator, b: Batch) -> tuple[Arr, Arr]:
    """The rows whose operand is known and finite, and those values in order."""
    v, k = f(b)
    rows = np.flatnonzero(k & np.isfinite(v))
    return rows, v[rows]


class _History:
    """The last ``keep`` finite values a function has seen, and how many it has seen in all."""

    __slots__ = ("values", "keep", "count")

    def __init__(self, keep: int) -> None:
        self.values = np.empty(0, dtype=F64)
        self.keep = keep
        self.count = 0

    def extend(self, x: Arr) -> tuple[Arr, int]:
        """Append ``x``; return (history + x, the length of the history before x)."""
        full = np.concatenate((self.values, x)) if len(self.values) else x
        h = len(self.values)
        self.values = full[-self.keep:].copy()
        self.count += len(x)
        return full, h


def _prefix(full: Arr, shift: float) -> tuple[Arr, Arr]:
    """Prefix sums of ``full - shift`` and of its square, with a leading 0."""
    d = full - shift
    c1 = np.zeros(len(full) + 1)
    np.cumsum(d, out=c1[1:])
    c2 = np.zeros(len(full) + 1)
    np.cumsum(d * d, out=c2[1:])
    return c1, c2


def _cumsum(full: Arr) -> Arr:
    """Prefix sums of ``full`` with a leading 0."""
    c1 = np.zeros(len(full) + 1)
    np.cumsum(full, out=c1[1:])
    return c1


def _window_bounds(h: int, k: int, window: int, previous: bool) -> tuple[Arr, Arr]:
    """For the k new values at positions h..h+k-1 of the history+batch array: the start and
    end (exclusive) of each one's window (the value itself included unless ``previous``)."""
    end = np.arange(h, h + k) + (0 if previous else 1)
    start = np.maximum(end - window, 0)
    return start, end


def _rolling_extreme(full: Arr, window: int, start: Arr, end: Arr, smallest: bool) -> Arr:
    """min/max of ``full[start:end]`` per row (non-empty windows of at most ``window``), in
    O(n log window): a sparse table of powers of two, two overlapping lookups per row."""
    fn = np.minimum if smallest else np.maximum
    fill = math.inf if smallest else -math.inf
    # Pad in front so that every window is exactly `window` long: g[i + window] = full[i].
    g = np.concatenate((np.full(window, fill), full))
    level, span = g, 1
    while span * 2 <= window:
        level = fn(level[:-span], level[span:])
        span *= 2
    # level[i] = extreme of g[i : i + span]; the window of full[start:end] is g[end : end+window].
    lo = end
    hi = end + window - span
    return fn(level[lo], level[hi])


# -- functions -----------------------------------------------------------------------------------


def nonfinite(operand: VFactory) -> VFactory:
    """1 where the value is NaN or infinite."""
    def make() -> VEvaluator:
        f = operand()

        def evaluate(b: Batch) -> tuple[Arr, Arr]:
            v, k = f(b)
            return (~np.isfinite(v)).astype(F64), k
        return evaluate
    return make


def range_(operand: VFactory, low: float, high: float) -> VFactory:
    """1 where a finite value is outside [low, high]; unknown where not finite."""
    def make() -> VEvaluator:
        f = operand()

        def evaluate(b: Batch) -> tuple[Arr, Arr]:
            v, k = f(b)
            ok = k & np.isfinite(v)
            with np.errstate(invalid="ignore"):
                return ((v < low) | (v > high)).astype(F64), ok
        return evaluate
    return make


def _out(n: int) -> tuple[Arr, Arr]:
    return np.full(n, _NAN), np.zeros(n, dtype=bool)


def spike(operand: VFactory, factor: float, window: int, min_count: int) -> VFactory:
    """1 where the value is at least ``factor`` x the mean of the previous finite values."""
    def make() -> VEvaluator:
        f, hist = operand(), _History(window)

        def evaluate(b: Batch) -> tuple[Arr, Arr]:
            out, known = _out(b.n)
            rows, x = _finite(f, b)
            if not len(rows):
                return out, known
            full, h = hist.extend(x)
            start, end = _window_bounds(h, len(x), window, previous=True)
            count = end - start
            ready = count >= min_count
            c1 = _cumsum(full)
            with np.errstate(all="ignore"):
                mean = (c1[end] - c1[start]) / count
            r = rows[ready]
            m = mean[ready]
            out[r] = ((m > 0) & (x[ready] >= factor * m)).astype(F64)
            known[r] = True
            b.set_baseline(r, m)
            return out, known
        return evaluate
    return make


def stale(operand: VFactory, limit: float, seconds: bool) -> VFactory:
    """1 where the metric has had no value for ``limit`` steps (or seconds of record time);
    evaluated on every record of the rank (see functions.stale for the rules)."""
    def make() -> VEvaluator:
        f = operand()
        state: dict[str, float | None] = {"last": None, "seen": None}

        def evaluate(b: Batch) -> tuple[Arr, Arr]:
            out, known = _out(b.n)
            _, present = f(b)
            now = b.times if seconds else b.steps
            valid = np.flatnonzero(~np.isnan(now))
            if not len(valid):
                return out, known
            nv, kv = now[valid], present[valid]
            # The time of the last record with the metric, carried forward (NaN before any).
            marks = np.where(kv, nv, _NAN)
            last0 = state["last"]
            idx = np.where(kv, np.arange(len(nv)), -1)
            np.maximum.accumulate(idx, out=idx)
            last = np.where(idx >= 0, marks[np.maximum(idx, 0)],
                            _NAN if last0 is None else last0)
            # The previous evaluated record's time: every valid record once one was seen.
            prev = np.empty(len(nv))
            prev[1:] = nv[:-1]
            prev[0] = _NAN if state["seen"] is None else state["seen"]
            have_last = ~np.isnan(last)
            evaluated = ~kv & have_last & (nv != prev)
            out[valid[kv]] = 0.0
            known[valid[kv]] = True
            e_rows = valid[evaluated]
            out[e_rows] = (nv[evaluated] - last[evaluated] >= limit).astype(F64)
            known[e_rows] = True
            b.set_baseline(e_rows, last[evaluated])
            if have_last[-1]:
                state["last"] = float(last[-1])
                state["seen"] = float(nv[-1])
            return out, known
        return evaluate
    return make


def moment(operand: VFactory, window: int, min_count: int, previous: bool,
           kind: str) -> VFactory:
    """``mean`` or ``std`` (population) of the last ``window`` finite values."""
    def make() -> VEvaluator:
        f, hist = operand(), _History(window)
        shift_box: list[float] = []

        def evaluate(b: Batch) -> tuple[Arr, Arr]:
            out, known = _out(b.n)
            rows, x = _finite(f, b)
            if not len(rows):
                return out, known
            full, h = hist.extend(x)
            if not shift_box:
                shift_box.append(float(full[0]))
            shift = shift_box[0]
            start, end = _window_bounds(h, len(x), window, previous)
            count = end - start
            ready = count >= min_count
            start, end, count = start[ready], end[ready], count[ready]
            c1, c2 = _prefix(full, shift)
            mean = (c1[end] - c1[start]) / count
            if kind == "mean":
                value = shift + mean
            else:
                value = np.sqrt(np.maximum((c2[end] - c2[start]) / count - mean * mean, 0.0))
            r = rows[ready]
            out[r] = value
            known[r] = True
            # Keep the shift near the level of the metric, as the closures' running sums do.
            if hist.count % max(window, 1) < len(x):
                shift_box[0] = float(hist.values.mean())
            return out, known
        return evaluate
    return make


def extreme(operand: VFactory, window: int, min_count: int, previous: bool,
            smallest: bool) -> VFactory:
    """``min`` / ``max`` of the last ``window`` finite values."""
    def make() -> VEvaluator:
        f, hist = operand(), _History(window)

        def evaluate(b: Batch) -> tuple[Arr, Arr]:
            out, known = _out(b.n)
            rows, x = _finite(f, b)
            if not len(rows):
                return out, known
            full, h = hist.extend(x)
            start, end = _window_bounds(h, len(x), window, previous)
            ready = (end - start >= min_count) & (end > start)
            value = _rolling_extreme(full, window, start[ready], end[ready], smallest)
            r = rows[ready]
            out[r] = value
            known[r] = True
            return out, known
        return evaluate
    return make


def slope(operand: VFactory, window: int, min_count: int) -> VFactory:
    """Least-squares slope per evaluation over the last ``window`` finite values."""
    weights = np.arange(window, dtype=F64)

    def make() -> VEvaluator:
        f, hist = operand(), _History(window)

        def evaluate(b: Batch) -> tuple[Arr, Arr]:
            out, known = _out(b.n)
            rows, x = _finite(f, b)
            if not len(rows):
                return out, known
            full, h = hist.extend(x)
            k = len(x)
            ends = np.arange(h, h + k) + 1
            n = np.minimum(ends, window).astype(F64)
            sy = np.empty(k)
            sxy = np.empty(k)
            whole = ends >= window
            if whole.any():
                first = int(np.argmax(whole))  # whole windows are a suffix of the rows
                views = np.lib.stride_tricks.sliding_window_view(full, window)
                rows_w = views[ends[first:] - window]
                sy[first:] = rows_w.sum(axis=1)
                sxy[first:] = rows_w @ weights
            for j in range(k):  # the first window-1 values a rank ever has: partial windows
                if whole[j]:
                    break
                seg = full[:ends[j]]
                sy[j] = seg.sum()
                sxy[j] = seg @ weights[:len(seg)]
            sx = n * (n - 1) / 2.0
            sxx = (n - 1) * n * (2 * n - 1) / 6.0
            ready = n >= min_count
            with np.errstate(all="ignore"):
                value = (n * sxy - sx * sy) / (n * sxx - sx * sx)
            r = rows[ready]
            out[r] = value[ready]
            known[r] = True
            return out, known
        return evaluate
    return make


def zscore(operand: VFactory, window: int, min_count: int) -> VFactory:
    """(value - mean of the previous ``window``) / their std; +-inf on a flat history."""
    def make() -> VEvaluator:
        f, hist = operand(), _History(window)
        shift_box: list[float] = []

        def evaluate(b: Batch) -> tuple[Arr, Arr]:
            out, known = _out(b.n)
            rows, x = _finite(f, b)
            if not len(rows):
                return out, known
            full, h = hist.extend(x)
            if not shift_box:
                shift_box.append(float(full[0]))
            shift = shift_box[0]
            start, end = _window_bounds(h, len(x), window, previous=True)
            count = end - start
            ready = (count >= min_count) & (count > 0)
            start, end, count = start[ready], end[ready], count[ready]
            c1, c2 = _prefix(full, shift)
            dm = (c1[end] - c1[start]) / count
            sd = np.sqrt(np.maximum((c2[end] - c2[start]) / count - dm * dm, 0.0))
            mean = shift + dm
            v = x[ready]
            with np.errstate(all="ignore"):
                z = np.where(sd > 0, (v - mean) / sd,
                             np.where(v == mean, 0.0, np.copysign(math.inf, v - mean)))
            r = rows[ready]
            out[r] = z
            known[r] = True
            if hist.count % max(window, 1) < len(x):
                shift_box[0] = float(hist.values.mean())
            return out, known
        return evaluate
    return make


def frac_true(cond: VFactory, window: int, min_count: int) -> VFactory:
    """The fraction of the last ``window`` known evaluations of ``cond`` that were true."""
    def make() -> VEvaluator:
        f, hist = cond(), _History(window)

        def evaluate(b: Batch) -> tuple[Arr, Arr]:
            out, known = _out(b.n)
            v, k = f(b)
            rows = np.flatnonzero(k)
            if not len(rows):
                return out, known
            bits = (v[rows] != 0).astype(F64)
            full, h = hist.extend(bits)
            start, end = _window_bounds(h, len(bits), window, previous=False)
            count = end - start
            c1 = _cumsum(full)
            ready = count >= min_count
            r = rows[ready]
            out[r] = np.rint(c1[end] - c1[start])[ready] / count[ready]
            known[r] = True
            return out, known
        return evaluate
    return make


def relative(operand: VFactory, frac: float, n: int, rolling: bool,
             direction: float) -> VFactory:
    """``drop`` / ``rise``: the relative change from a baseline is at least ``frac``."""
    def make() -> VEvaluator:
        f, hist = operand(), _History(n)
        state: dict[str, Any] = {"fixed": None, "collected": []}

        def evaluate(b: Batch) -> tuple[Arr, Arr]:
            out, known = _out(b.n)
            rows, x = _finite(f, b)
            if not len(rows):
                return out, known
            if rolling:
                full, h = hist.extend(x)
                start, end = _window_bounds(h, len(x), n, previous=True)
                ready = end - start >= n
                c1 = _cumsum(full)
                base = np.full(len(x), _NAN)
                base[ready] = (c1[end[ready]] - c1[start[ready]]) / n
            else:
                base = np.full(len(x), _NAN)
                skip = 0
                if state["fixed"] is None:
                    collected: list[float] = state["collected"]
                    skip = min(n - len(collected), len(x))
                    collected.extend(x[:skip].tolist())
                    if len(collected) >= n:
                        first = collected[0]
                        state["fixed"] = first + sum(v - first for v in collected) / n
                        state["collected"] = []
                if state["fixed"] is not None:
                    base[skip:] = state["fixed"]
            ready = ~np.isnan(base) & (base != 0)
            with np.errstate(all="ignore"):
                change = (x - base) / np.abs(base) * direction
            r = rows[ready]
            out[r] = (change[ready] >= frac).astype(F64)
            known[r] = True
            return out, known
        return evaluate
    return make
