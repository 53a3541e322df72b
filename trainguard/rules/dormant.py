"""Dormant windows: an ``and`` whose cheap term is false keeps its windows' values for later.

Most rules of a healthy run are false at their first, cheapest term: ``learning_rate < 2e-8
and max(learning_rate, 1000, previous=1) < 2e-8 and slope(learning_rate, 3) < 1.6e-9`` on a run
at 1e-5. Its windows must still see every value, or they would be wrong on the step the guard
first holds, but nobody reads them before that. So such an ``and`` (see
:func:`dormant_and`) appends the value its windows read to a flat array, and only when the
guard holds (or the array is full, or a batch comes) replays those values into the windows
(:func:`replayer`), which then answer exactly as if they had seen each record.

A replay only needs the last ``span`` values a window keeps: the ones before pass through a
window of that length without a trace (save a counter), so a flush of ``k`` values costs at most
``span`` updates, and a guard that stays false costs one ``array.append`` a step.
"""

from __future__ import annotations

import math
import operator
from array import array
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["Replay", "dormant_and", "replayer"]

#: A window's replay: push these values of its metric (non-finite ones skipped, as a record's
#: would be), results unused. Carries ``.span``: how many trailing values can matter.
Replay = Callable[[Sequence[float]], None]

Evaluator = Callable[[Mapping[str, float]], "float | None"]

#: The fewest values a dormant ``and`` gathers before it replays them anyway (it replays at four
#: times its longest window's span, if more): memory stays bounded on a guard false forever.
MIN_PENDING = 1024

_COMPARE = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
            "==": operator.eq, "!=": operator.ne}


def replayer(evaluate: Evaluator, name: str, span: int, reset: Callable[[int], None],
             floor: float = -math.inf) -> Replay:
    """The replay of a window ``evaluate`` over the bare metric ``name`` keeping its last ``span``
    values (those ``>= floor``): ``reset(skipped)`` empties the window and counts ``skipped``
    values as having passed through it, when more than ``span`` come at once."""
    def replay(values: Sequence[float]) -> None:
        kept = [v for v in values if v - v == 0 and v >= floor]  # finite, and not below floor
        if len(kept) > span:
            reset(len(kept) - span)
            kept = kept[-span:]
        for v in kept:
            evaluate({name: v})
    replay.span = span  # type: ignore[attr-defined]
    return replay


def replay_of(evaluate: Evaluator) -> Replay | None:
    """The replay entry point of an evaluator (a window, or a node forwarding its one window's),
    or ``None``."""
    return getattr(evaluate, "replay", None)


def dormant_and(guards: list[Evaluator], windows: list[Replay], name: str, full: Evaluator,
                test: tuple[str | None, str, float] | None = None,
                ) -> tuple[Evaluator, Callable[[], None]]:
    """An ``and`` evaluator that, while one of its stateless ``guards`` is known false, only
    keeps the value of ``name`` (the one metric its stateful terms read) for ``windows``, and
    otherwise replays what it kept and runs ``full`` (every term in order, as always).

    ``test``: the one guard's ``(metric, op, constant)`` when it is a bare metric's comparison
    (Node.test), so it is compared inline. Returns the evaluator and its flush, which a batch
    must call before it reads the windows.
    The results are those of ``full`` on every record: a known false term decides an ``and``
    whatever the others say (NaN counts as true, as in ``full``).
    """
    pending = array("d")
    bound = max(MIN_PENDING, 4 * max(getattr(w, "span", 0) for w in windows))
    nan = math.nan

    def flush() -> None:
        if pending:
            values = pending.tolist()
            del pending[:]
            for window in windows:
                window(values)

    if test is not None and test[0] is not None and test[1] in _COMPARE:
        # The usual guard, ``metric < constant``, read and compared here: no call for it.
        gname, cmp, c = test[0], _COMPARE[test[1]], test[2]

        def evaluate(m: Mapping[str, float]) -> float | None:
            g = m.get(gname)
            if g is not None and not cmp(g, c):  # NaN compares false: a known false guard
                v = m.get(name)
                pending.append(nan if v is None else v)
                if len(pending) >= bound:
                    flush()
                return 0.0
            if pending:
                flush()
            return full(m)
    elif len(guards) == 1:
        guard = guards[0]

        def evaluate(m: Mapping[str, float]) -> float | None:
            g = guard(m)
            if g is not None and not g:
                v = m.get(name)
                pending.append(nan if v is None else v)
                if len(pending) >= bound:
                    flush()
                return 0.0
            if pending:
                flush()
            return full(m)
    else:
        def evaluate(m: Mapping[str, float]) -> float | None:
            for guard in guards:
                g = guard(m)
                if g is not None and not g:
                    v = m.get(name)
                    pending.append(nan if v is None else v)
                    if len(pending) >= bound:
                        flush()
                    return 0.0
            if pending:
                flush()
            return full(m)
    return evaluate, flush


def flushing(flush: Callable[[], None], many: Any) -> Any:
    """A batch entry point that replays a dormant ``and``'s kept values before ``many`` reads
    the windows."""
    def run(batch: Any) -> Any:
        flush()
        return many(batch)
    return run
