"""One-metric steps taken as columns (:mod:`trainguard.monitor.ingest.metric_steps`), made into
the engine's batch without a record or a dict per step.

:func:`step_columns` reads the decoded lines' steps, names, values and times straight into
arrays, checks what makes the lines steps of their own (no two consecutive lines of one step),
and :meth:`StepColumns.batch` builds the :class:`~trainguard.rules.vector.Batch` the engine
evaluates (``Engine.evaluate_columns(..., batch=)``). The records' metrics and times, which
the engine reads only at the rows an alert names, are sequences that make each row's when it is
asked for (:class:`OneMetricRows`, :class:`TimeRows`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Any, overload

from trainguard.monitor.ingest.metric_steps import MetricSteps

if TYPE_CHECKING:
    from numpy import ndarray as Arr

    from trainguard.rules.vector import Batch

__all__ = ["MAX_COLUMN_NAMES", "OneMetricRows", "StepColumns", "StepRows", "TimeRows",
           "last_known", "step_columns"]

#: A block naming more metrics than this is gathered record by record: each name is a pass
#: over the block's rows.
MAX_COLUMN_NAMES = 16
_NAN = math.nan
_steps = attrgetter("step")
_names = attrgetter("name")
_values = attrgetter("value")
_times = attrgetter("time")


class OneMetricRows(Sequence[Mapping[str, float]]):
    """The metrics of steps that carry one each, as a sequence of dicts made when read."""

    __slots__ = ("_name", "_names", "_values")

    def __init__(self, name: str | None, names: Sequence[str], values: Arr) -> None:
        self._name = name  # every step's, or None: then ``names`` says each one's
        self._names = names
        self._values = values

    @overload
    def __getitem__(self, index: int) -> Mapping[str, float]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Mapping[str, float]]: ...

    def __getitem__(self, index: int | slice) -> Mapping[str, float] | Sequence[
            Mapping[str, float]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self._values)))]
        name = self._name if self._name is not None else self._names[index]
        return {name: float(self._values[index])}

    def __len__(self) -> int:
        return len(self._values)


class TimeRows(Sequence["float | None"]):
    """Record times from an array in which NaN stands for none (a JSON time is never NaN)."""

    __slots__ = ("_times",)

    def __init__(self, times: Arr) -> None:
        self._times = times

    @overload
    def __getitem__(self, index: int) -> float | None: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[float | None]: ...

    def __getitem__(self, index: int | slice) -> float | None | Sequence[float | None]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self._times)))]
        t = float(self._times[index])
        return None if t != t else t

    def __len__(self) -> int:
        return len(self._times)


def last_known(times: Arr) -> float | None:
    """The last of record times that is not none (NaN), or None."""
    import numpy as np

    last = float(times[-1]) if len(times) else _NAN
    if last == last:
        return last
    known = np.flatnonzero(~np.isnan(times))
    return float(times[known[-1]]) if len(known) else None


class StepRows(Sequence[int]):
    """Record steps from an array of them (the engine reads a few: the first, an alert's)."""

    __slots__ = ("_steps",)

    def __init__(self, steps: Arr) -> None:
        self._steps = steps

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[int]: ...

    def __getitem__(self, index: int | slice) -> int | Sequence[int]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self._steps)))]
        return int(self._steps[index])

    def __len__(self) -> int:
        return len(self._steps)


class StepColumns:
    """The columns of a block of one-metric steps (every line a step of its own)."""

    __slots__ = ("steps", "_lines")

    def __init__(self, steps: Arr, lines: Sequence[Any]) -> None:
        #: Every line's step, as floats (exact: steps are at most 2**53).
        self.steps = steps
        self._lines = lines

    def batch(self, start: int, stop: int,
              mapped: str | list[str]) -> tuple[Batch, Arr, Arr, Arr]:
        """The engine's batch of rows ``start..stop``, whose metric names through the field
        map are ``mapped`` (one for every row, or each row's, at most
        :data:`MAX_COLUMN_NAMES` distinct); with its steps (ints), values and times (NaN:
        none) as arrays."""
        from trainguard.rules.vector import Batch  # noqa: I001  (numpy after it: one BLAS thread)
        import numpy as np

        f64 = np.float64
        lines = self._lines[start:stop]
        n = len(lines)
        values = np.fromiter(map(_values, lines), f64, count=n)
        try:
            times = np.fromiter(map(_times, lines), f64, count=n)
        except TypeError:  # a line without a time
            times = np.array([_NAN if t is None else t for t in map(_times, lines)], dtype=f64)
        steps = self.steps[start:stop]
        rows: OneMetricRows
        if isinstance(mapped, str):
            columns = {mapped: (values, np.ones(n, dtype=bool))}
            rows = OneMetricRows(mapped, (), values)
        else:
            names = mapped[start:stop]
            code_of = {name: code for code, name in enumerate(dict.fromkeys(names))}
            codes = np.fromiter(map(code_of.__getitem__, names), np.intp, count=n)
            columns = {}
            for name, code in code_of.items():
                present = codes == code
                columns[name] = (np.where(present, values, _NAN), present)
            rows = OneMetricRows(None, names, values)
        batch = Batch.of_columns(steps, TimeRows(times), times, rows, columns)
        return batch, steps.astype(np.int64), values, times


def step_columns(steps: MetricSteps, map_name: Callable[[str], str | None]
                 ) -> tuple[StepColumns, str | list[str]] | None:
    """The columns of ``steps`` and their metric names through ``map_name`` (a name it maps to
    None refuses the block), or None when two consecutive lines share a step (they are one
    step's, for the record path) or the block names more than :data:`MAX_COLUMN_NAMES`."""
    from trainguard.rules.vector import F64  # noqa: I001  (numpy after it: one BLAS thread)
    import numpy as np

    lines = steps.lines
    column = np.fromiter(map(_steps, lines), F64, count=len(lines))
    if (column[1:] == column[:-1]).any():
        return None
    mapped: str | list[str] | None
    name = steps.name
    names: list[str] = []
    if name is None:
        names = list(map(_names, lines))
        if names.count(names[0]) == len(names):
            name = steps.name = names[0]
    if name is not None:
        mapped = map_name(name)
    else:
        name = None
        distinct = set(names)
        if len(distinct) > MAX_COLUMN_NAMES:
            return None
        mapping = {n: map_name(n) for n in distinct}
        if None in mapping.values():
            return None
        mapped = (names if all(n == m for n, m in mapping.items())
                  else list(map(mapping.__getitem__, names)))  # type: ignore[arg-type]
    if mapped is None:
        return None
    return StepColumns(column, lines), mapped
