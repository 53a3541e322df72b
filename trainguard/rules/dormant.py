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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainguard.rules.nodes import Node

__all__ = ["MIN_PENDING", "SETTLE", "Replay", "dormant_and", "dormant_for", "forward_replay",
           "replay_of", "replayer"]

#: A window's replay: push these values of its metric (non-finite ones skipped, as a record's
#: would be), results unused. Carries ``.span``: how many trailing values can matter.
Replay = Callable[[Sequence[float]], None]

Evaluator = Callable[[Mapping[str, float]], "float | None"]

#: The fewest values a dormant ``and`` gathers before it replays them anyway (it replays at four
#: times its longest window's span, if more): memory stays bounded on a guard false forever.
MIN_PENDING = 1024

#: Records in a row a guard must say false before the windows' values are kept rather than
#: pushed: a guard that flips every few records would otherwise pay a replay each time.
SETTLE = 8

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


def dormant_and(guards: list[Evaluator], windows: list[Evaluator], name: str,
                test: tuple[str | None, str, float] | None = None,
                ) -> tuple[Evaluator, Callable[[list[Any], list[Any]], Any]]:
    """An ``and`` of stateless ``guards`` and ``windows`` (terms whose only state is windows
    over the metric ``name``, each with a replay): while a guard is known false,
    the ``and`` is false whatever the windows say, so it only keeps the value of ``name`` for
    them; otherwise it replays what it kept, runs the windows and gives the three-valued
    ``and`` of every term (a known false term decides it; else an unknown one makes it
    unknown; NaN counts as true). The same results as running every term in order: the guards
    have no state and the windows share none (shared calls have no replay), so their order
    does not matter.

    ``test``: the one guard's ``(metric, op, constant)`` when it is a bare metric's comparison
    (Node.test), so it is compared inline. Returns the evaluator and a function making its
    batch entry point from the guards' and the windows' batch entry points.
    """
    pending = array("d")
    replays: list[Replay] = [w.replay for w in windows]  # type: ignore[attr-defined]
    bound = max(MIN_PENDING, 4 * max(getattr(r, "span", 0) for r in replays))
    nan = math.nan

    def flush() -> None:
        if pending:
            values = pending.tolist()
            del pending[:]
            for replay in replays:
                replay(values)

    quiet = 0  # records in a row a guard said false; from SETTLE on, values are kept

    # The windows' part, once no guard said false (``unknown``: one said nothing).
    rest: Callable[[Mapping[str, float], bool], float | None]
    if len(windows) == 1:
        window = windows[0]

        def rest(m: Mapping[str, float], unknown: bool) -> float | None:
            nonlocal quiet
            if pending:
                flush()
            quiet = 0
            w = window(m)
            if w is None:
                return None
            return 0.0 if not w else None if unknown else 1.0  # NaN counts as true
    else:
        def rest(m: Mapping[str, float], unknown: bool) -> float | None:
            nonlocal quiet
            if pending:
                flush()
            quiet = 0
            false = False
            for each in windows:  # all of them: each must see the record
                w = each(m)
                if w is None:
                    unknown = True
                elif not w:
                    false = True
            return 0.0 if false else None if unknown else 1.0

    def false(m: Mapping[str, float]) -> float:
        """A guard said false: the windows see the record now (the first SETTLE records in a
        row) or later (its value kept)."""
        nonlocal quiet
        if quiet < SETTLE:
            quiet += 1
            for each in windows:
                each(m)
        else:
            v = m.get(name)
            pending.append(nan if v is None else v)
            if len(pending) >= bound:
                flush()
        return 0.0

    evaluate: Evaluator
    if test is not None and test[0] is not None and test[1] in _COMPARE:
        # The usual guard, ``metric < constant``, read and compared here: no call for it,
        # and the quiet path inlined, since it is most records' path.
        gname, cmp, c = test[0], _COMPARE[test[1]], test[2]

        def evaluate(m: Mapping[str, float]) -> float | None:
            g = m.get(gname)
            if g is not None and not cmp(g, c):  # NaN compares false: a known false guard
                if quiet < SETTLE:
                    return false(m)
                v = m.get(name)
                pending.append(nan if v is None else v)
                if len(pending) >= bound:
                    flush()
                return 0.0
            return rest(m, g is None)
    elif len(guards) == 1:
        guard = guards[0]

        def evaluate(m: Mapping[str, float]) -> float | None:
            g = guard(m)
            if g is not None and not g:
                return false(m)
            return rest(m, g is None)
    else:
        def evaluate(m: Mapping[str, float]) -> float | None:
            unknown = False
            for each in guards:  # stateless: the first false one decides
                g = each(m)
                if g is None:
                    unknown = True
                elif not g:
                    return false(m)
            return rest(m, unknown)

    def batched(guards_many: list[Any], windows_many: list[Any]) -> Any:
        """The batch entry point: a batch whose every record a guard decides false is kept as
        the records are; any other replays what was kept, then runs the windows on it."""
        import numpy as np  # a batch has come: numpy is loaded (rules/vector.py)

        def run(batch: Any) -> Any:
            nonlocal quiet
            results = [guard(batch) for guard in guards_many]
            decided = np.zeros(batch.n, dtype=bool)
            for gv, gk in results:
                decided |= gk & (gv == 0)  # NaN != 0: true, as record by record
            if decided.all():
                quiet = SETTLE  # the records after this batch's keep their values too
                v, k = batch.column(name)
                pending.frombytes(np.where(k, v, nan).astype(np.float64).tobytes())
                if len(pending) >= bound:
                    flush()
                return np.zeros(batch.n), np.ones(batch.n, dtype=bool)
            flush()
            quiet = 0
            results += [window(batch) for window in windows_many]
            known = np.ones(batch.n, dtype=bool)
            for tv, tk in results:
                decided |= tk & (tv == 0)
                known &= tk
            return np.where(decided, 0.0, 1.0), decided | known
        return run
    return evaluate, batched


def forward_replay(evaluate: Evaluator, inner: Evaluator) -> Evaluator:
    """``evaluate``, whose only state is ``inner``'s, with ``inner``'s replay as its own, if
    ``inner`` has one."""
    replay = replay_of(inner)
    if replay is not None:
        evaluate.replay = replay  # type: ignore[attr-defined]
    return evaluate


def dormant_for(terms: list[Node], fs: list[Evaluator]) -> Any:
    """The dormant form of an ``and`` of these compiled ``terms`` (nodes) and their evaluators
    ``fs``, when its terms allow: at least one is
    stateless (a guard), and every other has windows over one and the same metric as its only
    state. ``None`` otherwise (a stateful term that could not wait would gain little: measured,
    a window that must run anyway costs what the wait saves). Returns ``(evaluate, batch_of,
    guards, windows)``."""
    guard_at = [i for i, t in enumerate(terms) if t.pure]
    wait_at = [i for i, t in enumerate(terms) if not t.pure]
    if not guard_at or not wait_at:
        return None
    read = frozenset().union(*(terms[i].metrics for i in wait_at))
    if len(read) != 1 or any(replay_of(fs[i]) is None for i in wait_at):
        return None
    guards, windows = [fs[i] for i in guard_at], [fs[i] for i in wait_at]
    test = terms[guard_at[0]].test if len(guard_at) == 1 else None
    evaluate, batch_of = dormant_and(guards, windows, next(iter(read)), test)
    return evaluate, batch_of, guards, windows
