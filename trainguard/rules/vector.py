"""Batch evaluation of conditions: many step records of one rank at once, with numpy.

Every evaluator a compiled condition builds (:mod:`trainguard.rules.dsl`) is a closure that
takes one record's metrics, and, for the built-in language, carries a second entry point,
``evaluator.many(batch)``, that takes a :class:`Batch` (consecutive records of one rank) and
returns two arrays: the value on each record and whether it is known there (three-valued logic:
an unknown result neither fires nor resets a pending alert). Both entry points read and update
the same state (a window's last values, a baseline...), so a series fed in batches of any size,
mixed with single records, gives the results that single records alone give, up to
floating-point rounding (batch sums are prefix sums, not add-and-subtract).
``tests/test_vector.py`` holds every built-in rule's condition to that on random series cut at
random points.

Why: the engine evaluates a rule once per step, and at a million one-metric events a second
the Python call per rule and step, not the arithmetic, is the cost. Over a large batch a rule
costs a few array operations; the alert life cycle (``for``, ``keep_firing_for``...) still steps
record by record, but only through the records where the condition is true or the rule is
firing, which on a healthy run is none.

This module holds the batch side: :class:`Batch`, the operators, and the window kernels the
functions of :mod:`trainguard.rules.functions` call with their state. It imports numpy, which
costs a tenth of a second: it is imported when a rule is first instantiated, not at start-up.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from itertools import repeat
from typing import Any


def _import_numpy_with_one_blas_thread() -> None:
    """Import numpy with its OpenBLAS on one thread, unless the user chose a number.

    At import OpenBLAS starts a thread per core, and they spin: 0.14 s of CPU on a 2-core
    machine, and a hundred spinning threads on a GPU node, in a monitor whose BLAS work is a
    small matrix-vector product per batch. The variable is read once, when the library loads,
    so the environment is put back at once: a trainer that ``trainguard run`` starts later
    gets its own default. (numpy already imported, as in a trainer's process: no effect.)
    """
    chosen = "OPENBLAS_NUM_THREADS" in os.environ
    if not chosen:
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        import numpy  # noqa: F401
    finally:
        if not chosen:
            os.environ.pop("OPENBLAS_NUM_THREADS", None)


_import_numpy_with_one_blas_thread()
import numpy as np  # noqa: E402  # imported above, with the thread count set

__all__ = ["Batch", "Many", "binary", "bottleneck", "const", "extremes", "finite", "frac_window",
           "logical", "metric", "moments", "negate", "rolling_mean", "slopes", "window_bounds"]

F64 = np.float64
_NAN = math.nan
Arr = np.ndarray

#: The batch entry point of an evaluator: a batch in, (values, known) out.
Many = Callable[["Batch"], tuple[Arr, Arr]]


class Batch:
    """Consecutive step records of one rank, as columns built on demand.

    ``baseline`` is written by functions that compare against one (a spike's rolling mean,
    the last time a stale metric was seen), NaN where none; the engine resets it to ``None``
    before each rule and reads it for the alert message.
    """

    __slots__ = ("n", "steps", "_times", "time_list", "metrics", "_columns", "baseline",
                 "_keys")

    def __init__(self, steps: Sequence[int], times: Sequence[float | None],
                 metrics: Sequence[Mapping[str, float]], keys: set[str] | None = None) -> None:
        self.n = len(metrics)
        self.steps = np.array(steps, dtype=F64)
        self.time_list = times
        self._times: Arr | None = None
        self.metrics = metrics
        self._columns: dict[str, tuple[Arr, Arr]] = {}
        self.baseline: Arr | None = None
        self._keys = keys

    @classmethod
    def of_columns(cls, steps: Arr, times: Sequence[float | None], time_array: Arr,
                   metrics: Sequence[Mapping[str, float]],
                   columns: dict[str, tuple[Arr, Arr]]) -> Batch:
        """A batch of records the caller already holds as columns (one-metric lines read
        without a dict each): ``steps`` and ``time_array`` as float arrays (NaN: no time),
        ``columns`` the (values, present) of every key some record has; ``metrics`` is only
        read at the rows an alert names or a rule takes apart (it may build them then)."""
        batch = cls.__new__(cls)
        batch.n = len(steps)
        batch.steps = steps
        batch.time_list = times
        batch._times = time_array
        batch.metrics = metrics
        batch._columns = columns
        batch.baseline = None
        batch._keys = set(columns)
        return batch

    def keys(self) -> set[str]:
        """The keys some record has: a column of any other key needs no look at a record."""
        if self._keys is None:
            self._keys = set().union(*self.metrics)
        return self._keys

    @property
    def times(self) -> Arr:
        """Record times in seconds, NaN where a record has none."""
        if self._times is None:
            self._times = np.array([_NAN if t is None else t for t in self.time_list],
                                   dtype=F64)
        return self._times

    def column(self, name: str) -> tuple[Arr, Arr]:
        """(values, present) of metric ``name``; values are NaN where absent."""
        col = self._columns.get(name)
        if col is None:
            metrics = self.metrics
            if name not in self.keys():
                col = self._columns[name] = unknown(self.n)
                return col
            # dict.get through map: no bytecode per record (records' metrics are dicts).
            values = np.fromiter(map(dict.get, metrics, repeat(name), repeat(_NAN)),  # type: ignore[arg-type]
                                 F64, count=self.n)
            nan = np.isnan(values)
            if nan.any():  # absent, or a NaN value: only those rows need a look
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
        sub.time_list = [self.time_list[i] for i in listed]
        sub._times = None if self._times is None else self._times[rows]
        sub.metrics = [self.metrics[i] for i in listed]
        sub._columns = {k: (v[rows], p[rows]) for k, (v, p) in self._columns.items()}
        sub.baseline = None
        sub._keys = None
        return sub

    def set_baseline(self, rows: Arr, values: Arr) -> None:
        """Note the baseline a function compared against at ``rows`` (the last writer wins, as
        the closures' ``ctx.baseline`` does)."""
        if self.baseline is None:
            self.baseline = np.full(self.n, _NAN)
        self.baseline[rows] = values


def unknown(n: int) -> tuple[Arr, Arr]:
    """An all-unknown result, to fill in."""
    return np.full(n, _NAN), np.zeros(n, dtype=bool)


# -- leaves and operators ------------------------------------------------------------------------


def const(value: float) -> Many:
    """A literal: known everywhere."""
    return lambda b: (np.full(b.n, value, dtype=F64), np.ones(b.n, dtype=bool))


def metric(name: str) -> Many:
    """A metric's column: unknown where the record lacks it."""
    return lambda b: b.column(name)


def _divide(a: Arr, b: Arr) -> Arr:
    """``a / b`` as the closures define it: x/0 is +-inf by the signs, 0/0 is NaN."""
    zero = b == 0
    if not zero.any():
        quotient: Arr = a / b
        return quotient
    out = np.where(a == 0, _NAN, np.copysign(math.inf, a) * np.copysign(1.0, b))
    ok = ~zero
    out[ok] = a[ok] / b[ok]
    return out


def _cmp(fn: Callable[[Arr, Arr], Arr]) -> Callable[[Arr, Arr], Arr]:
    return lambda a, b: fn(a, b).astype(F64)


_OPS: dict[str, Callable[[Arr, Arr], Arr]] = {
    "+": np.add, "-": np.subtract, "*": np.multiply, "/": _divide,
    "<": _cmp(np.less), "<=": _cmp(np.less_equal), ">": _cmp(np.greater),
    ">=": _cmp(np.greater_equal), "==": _cmp(np.equal), "!=": _cmp(np.not_equal),
}


def binary(op: str, left: Many, right: Many) -> Many:
    """Arithmetic or a comparison: known where both sides are (both always evaluated, so a
    window on either side sees every record)."""
    fn = _OPS[op]

    def many(b: Batch) -> tuple[Arr, Arr]:
        av, ak = left(b)
        bv, bk = right(b)
        with np.errstate(all="ignore"):
            return fn(av, bv), ak & bk
    return many


def logical(op: str, left: Many, right: Many) -> Many:
    """``and`` / ``or`` in three-valued logic (a known false side decides ``and``)."""
    def many(b: Batch) -> tuple[Arr, Arr]:
        av, ak = left(b)
        bv, bk = right(b)
        if op == "and":
            decided = (ak & (av == 0)) | (bk & (bv == 0))
            return np.where(decided, 0.0, 1.0), decided | (ak & bk)
        true = (ak & (av != 0)) | (bk & (bv != 0))
        return true.astype(F64), true | (ak & bk)
    return many


def negate(inner: Many, arithmetic: bool) -> Many:
    """``-x`` or ``not x``."""
    def many(b: Batch) -> tuple[Arr, Arr]:
        v, k = inner(b)
        return (-v if arithmetic else (v == 0).astype(F64)), k
    return many


# -- window kernels: history (oldest first) + new values in, per-new-value results out -----------


def finite(v: Arr, k: Arr) -> tuple[Arr, Arr]:
    """The rows whose value is known and finite, and those values in order."""
    rows = np.flatnonzero(k & np.isfinite(v))
    return rows, v[rows]


_BOTTLENECK: list[Any] = []


def bottleneck() -> Any:
    """bottleneck (``trainguard[fast]``), whose C moving windows the kernels use where it is
    installed, or None: numpy gives the same results."""
    if not _BOTTLENECK:
        try:
            import bottleneck as module
        except ImportError:
            module = None
        _BOTTLENECK.append(module)
    return _BOTTLENECK[0]


def window_bounds(h: int, k: int, window: int, previous: bool) -> tuple[Arr, Arr]:
    """For k new values at positions h..h+k-1 of history+new: each one's window
    ``[start, end)`` (the value itself included unless ``previous``)."""
    end = np.arange(h, h + k) + (0 if previous else 1)
    return np.maximum(end - window, 0), end


def _cumsum(values: Arr) -> Arr:
    out = np.zeros(len(values) + 1)
    np.cumsum(values, out=out[1:])
    return out


def _join(history: Sequence[float], x: Arr) -> Arr:
    return np.concatenate((np.array(history, dtype=F64), x)) if len(history) else x


def rolling_mean(history: Sequence[float], x: Arr, window: int,
                 previous: bool) -> tuple[Arr, Arr]:
    """(window length, mean) for each new value."""
    full = _join(history, x)
    start, end = window_bounds(len(history), len(x), window, previous)
    count = end - start
    c1 = _cumsum(full)
    with np.errstate(all="ignore"):
        return count, (c1[end] - c1[start]) / count


def moments(history: Sequence[float], x: Arr, window: int, previous: bool,
            shift: float) -> tuple[Arr, Arr, Arr]:
    """(window length, mean, population std) for each new value; sums are taken around
    ``shift`` (a value near the metric's level) so that squares do not cancel."""
    full = _join(history, x)
    start, end = window_bounds(len(history), len(x), window, previous)
    count = end - start
    d = full - shift
    c1, c2 = _cumsum(d), _cumsum(d * d)
    with np.errstate(all="ignore"):
        dm = (c1[end] - c1[start]) / count
        sd = np.sqrt(np.maximum((c2[end] - c2[start]) / count - dm * dm, 0.0))
    return count, shift + dm, sd


def extremes(history: Sequence[float], x: Arr, window: int, previous: bool,
             smallest: bool) -> tuple[Arr, Arr]:
    """(window length, min or max) for each new value: bottleneck's moving min/max (O(n),
    ten times cheaper over a window of 1000), else in O(n log window) a sparse table of
    powers of two, two overlapping lookups per value. ``history`` may hold +inf (min) or
    -inf (max) where a value can no longer be the extreme of any window; no value is NaN
    (which bottleneck would skip and numpy propagate)."""
    fn = np.minimum if smallest else np.maximum
    fill = math.inf if smallest else -math.inf
    full = _join(history, x)
    start, end = window_bounds(len(history), len(x), window, previous)
    bn = bottleneck()
    if bn is not None and len(full):
        move = bn.move_min if smallest else bn.move_max
        # table[e] = extreme of full[e - window + 1 : e + 1]: the window that ends at e.
        table = move(full, min(window, len(full)), min_count=1)
        return end - start, np.where(end > 0, table[end - 1], fill)
    # Padded in front so that every window is exactly `window` long: g[i + window] = full[i].
    g = np.concatenate((np.full(window, fill), full))
    level, span = g, 1
    while span * 2 <= window:
        level = fn(level[:-span], level[span:])
        span *= 2
    # level[i] = extreme of g[i : i + span]; full[end - window : end] is g[end : end + window].
    return end - start, fn(level[end], level[end + window - span])


def slopes(history: Sequence[float], x: Arr, window: int) -> tuple[Arr, Arr]:
    """(window length n, least-squares slope over x = 0..n-1) for each new value."""
    full = _join(history, x)
    k = len(x)
    ends = np.arange(len(history), len(history) + k) + 1
    n = np.minimum(ends, window).astype(F64)
    sy, sxy = np.empty(k), np.empty(k)
    weights = np.arange(window, dtype=F64)
    whole = ends >= window
    if whole.any():
        first = int(np.argmax(whole))  # whole windows are a suffix of the values
        views = np.lib.stride_tricks.sliding_window_view(full, window)[ends[first:] - window]
        sy[first:] = views.sum(axis=1)
        sxy[first:] = views @ weights
    for j in range(k):  # the first window-1 values a rank ever has: partial windows
        if whole[j]:
            break
        seg = full[:ends[j]]
        sy[j], sxy[j] = seg.sum(), seg @ weights[:len(seg)]
    sx = n * (n - 1) / 2.0
    sxx = (n - 1) * n * (2 * n - 1) / 6.0
    with np.errstate(all="ignore"):
        return n, (n * sxy - sx * sy) / (n * sxx - sx * sx)


def frac_window(history: Sequence[float], bits: Arr, window: int) -> tuple[Arr, Arr]:
    """(window length, fraction of ones) over the last ``window`` bits, for each new bit."""
    full = _join(history, bits)
    start, end = window_bounds(len(history), len(bits), window, previous=False)
    c1 = _cumsum(full)
    count = end - start
    return count, np.rint(c1[end] - c1[start]) / count


def tail(history: Sequence[float], x: Arr, keep: int) -> list[float]:
    """The last ``keep`` values of history + x, as a list (to refill a closure's deque)."""
    new: list[float] = x[max(len(x) - keep, 0):].tolist()
    if len(new) >= keep:
        return new
    return (list(history) + new)[-keep:]


def known_rows(k: Arr) -> Arr:
    """Positions where ``k`` is true."""
    rows: Arr = np.flatnonzero(k)
    return rows


def truth(v: Arr) -> Arr:
    """1.0 where a value is true (non-zero; NaN is true), else 0.0."""
    bits: Arr = (v != 0).astype(F64)
    return bits


def nonfinite(v: Arr, k: Arr) -> tuple[Arr, Arr]:
    """1.0 where a known value is NaN or infinite."""
    return (~np.isfinite(v)).astype(F64), k


def outside(v: Arr, k: Arr, low: float, high: float) -> tuple[Arr, Arr]:
    """1.0 where a finite value is outside [low, high]; unknown where not finite."""
    with np.errstate(invalid="ignore"):
        return ((v < low) | (v > high)).astype(F64), k & np.isfinite(v)


def zscores(x: Arr, mean: Arr, sd: Arr) -> Arr:
    """(x - mean) / sd, and on a flat history (sd 0) 0 for no move, +-inf for any."""
    with np.errstate(all="ignore"):
        return np.where(sd > 0, (x - mean) / sd,
                        np.where(x == mean, 0.0, np.copysign(math.inf, x - mean)))


def relative_change(x: Arr, base: Arr, direction: float, frac: float) -> tuple[Arr, Arr]:
    """(1.0 where the change from ``base`` is at least ``frac``, known where base is a
    number other than 0)."""
    ok = ~np.isnan(base) & (base != 0)
    with np.errstate(all="ignore"):
        change = (x - base) / np.abs(base) * direction
    return (change >= frac).astype(F64), ok


def stale_marks(now: Arr, present: Arr, last: float | None, seen: float | None,
                limit: float) -> tuple[Arr, Arr, Arr, Arr, float | None, float | None]:
    """``stale``'s batch: (values, known, rows with a baseline, those baselines, last, seen).

    ``now`` is each record's step or time (NaN: none, the record is skipped); ``present``
    whether it carries the metric; ``last`` the step/time the metric was last seen and
    ``seen`` the previous evaluated record's, carried between batches.
    """
    out, known = unknown(len(now))
    valid = np.flatnonzero(~np.isnan(now))
    if not len(valid):
        return out, known, valid, np.empty(0), last, seen
    nv, kv = now[valid], present[valid]
    # The step/time the metric was last seen at each record, carried forward.
    idx = np.where(kv, np.arange(len(nv)), -1)
    np.maximum.accumulate(idx, out=idx)
    since = np.where(idx >= 0, nv[np.maximum(idx, 0)], _NAN if last is None else last)
    # Once the metric has been seen, every record with a step/time is evaluated, so the
    # previous evaluated one is simply the previous record.
    prev = np.empty(len(nv))
    prev[1:] = nv[:-1]
    prev[0] = _NAN if seen is None else seen
    have = ~np.isnan(since)
    evaluated = ~kv & have & (nv != prev)
    out[valid[kv]] = 0.0
    known[valid[kv]] = True
    rows = valid[evaluated]
    out[rows] = (nv[evaluated] - since[evaluated] >= limit).astype(F64)
    known[rows] = True
    if have[-1]:
        last, seen = float(since[-1]), float(nv[-1])
    return out, known, rows, since[evaluated], last, seen


def extreme_history(mono: Sequence[tuple[int, float]], index: int, window: int,
                    smallest: bool) -> list[float]:
    """The last ``min(index, window)`` values of a min/max window as the batch kernel takes
    them, from the closure's monotonic deque of ``(index, value)`` candidates: a value no
    longer in it can never again be a window's extreme (a later value beats it), so it is
    replaced by the neutral +inf (min) or -inf (max)."""
    h = min(index, window)
    out = [math.inf if smallest else -math.inf] * h
    base = index - h
    for i, v in mono:
        if i >= base:
            out[i - base] = v
    return out


def monotonic(values: Sequence[float], first_index: int,
              smallest: bool) -> list[tuple[int, float]]:
    """The monotonic deque of ``(index, value)`` candidates of ``values`` (indices from
    ``first_index``), as the min/max closure keeps it: the values strictly below (min) or above
    (max) every later one, and the last value. With arrays, not a Python loop per value: a
    window of 1000 values is rebuilt at the end of every batch."""
    arr = np.asarray(values, dtype=F64)
    n = len(arr)
    if not n:
        return []
    later = np.empty(n)  # the extreme of the values after each one
    if smallest:
        later[:-1] = np.minimum.accumulate(arr[:0:-1])[::-1]
        keep = arr < later
    else:
        later[:-1] = np.maximum.accumulate(arr[:0:-1])[::-1]
        keep = arr > later
    keep[-1] = True  # the newest value is always a candidate
    rows = np.flatnonzero(keep)
    return list(zip((rows + first_index).tolist(), arr[rows].tolist(), strict=True))
