"""The alert life cycle of one rule on one rank: pending, firing, resolved (Prometheus style).

:func:`advance` steps a :class:`~trainguard.monitor.engine.rulestate.RuleState` by one known
result and says what changed; :func:`walk` does the same over a batch of known results,
record by record where something can change, and in one jump over a stretch where nothing can
(false results while not firing; true results while firing with no ``repeat_interval``), so a
rule that stays firing through a backlog costs a few array operations, not a call per record.

Life cycle of one rule on one rank, as Prometheus alerting does it, counted in evaluations that
gave a known result (a step without the metric is unknown: it neither fires nor resets):

* ``warmup``: the first N records carrying the rule's metrics are ignored, whether their
  result was known or not: it runs while the windows fill, not after them (the evaluator still
  sees them). The earliest a rule can fire is record ``max(warmup + 1, fill + for - 1)`` of
  its metrics, where ``fill`` is the record its condition is first known at
  (:func:`trainguard.rules.timing.earliest_firing`).
* ``for``: N consecutive true evaluations fire; one false evaluation resets the pending count.
  They are counted during the warmup too, so a rule fires at the first record past its warmup
  whose last N results were true.
* ``keep_firing_for``: once firing, up to N false evaluations are tolerated (a true one resets
  the count); the N+1st resolves. A metric flapping around its threshold therefore fires once
  and stays firing instead of firing on every crossing.
* ``cooldown``: after a resolve, the rule does not fire again before ``step > resolved + N``.
* ``repeat_interval``: while firing, re-notify every N steps (0: notify once).
* every firing episode ends with exactly one ``resolved`` alert.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trainguard.monitor.engine.rulestate import Entry, RuleState

__all__ = ["FIRING", "REPEAT", "RESOLVED", "advance", "walk"]

#: What a result changed (0: nothing).
FIRING, RESOLVED, REPEAT = 1, 2, 3


def advance(entry: Entry, state: RuleState, step: int, result: float) -> int:
    """Advance one rank's state by one known result; return the transition (0: none)."""
    state.evaluations += 1
    if result:  # NaN counts as true: a NaN comparison result is itself a finding
        state.false_while_firing = 0
        if state.firing:
            interval = entry.repeat_interval
            if interval and step - state.notified_at_step >= interval:
                state.notified_at_step = step
                return REPEAT
            return 0
        # `for` counts during the warmup too: the two overlap instead of adding up.
        state.consecutive += 1
        if (state.consecutive < entry.for_ or step <= state.quiet_until_step
                or state.evaluations + state.unknown <= entry.warmup):
            return 0
        state.firing = True
        state.fired_at_step = state.notified_at_step = step
        return FIRING
    state.consecutive = 0
    if not state.firing:
        return 0
    state.false_while_firing += 1
    if state.false_while_firing <= entry.keep_firing_for:
        return 0
    state.firing = False
    state.false_while_firing = 0
    state.quiet_until_step = step + entry.cooldown
    return RESOLVED


def walk(np: Any, entry: Entry, state: RuleState, rows: Any, truth: Any, steps: Any,
         n: int, changed: Callable[[int, int, int], None]) -> None:
    """Step the life cycle of a per-rank rule through a batch of ``n`` records whose known
    results are true (``truth``, bool array) at the records ``rows`` (ascending positions);
    ``steps`` holds each record's step. Calls ``changed(position, step, transition)`` for each
    transition, in record order. The state ends as :func:`advance` on each known result in turn
    (the unknown ones counted in ``state.unknown``) leaves it."""
    unknown0 = state.unknown
    known = len(rows)
    if not state.firing and not truth.any():  # the quiet case, as evaluate() inlines it
        state.evaluations += known
        state.unknown = unknown0 + n - known
        state.consecutive = 0
        return
    # For each known result: the first result from there on that is false (true).
    at = np.arange(known)
    next_false = np.minimum.accumulate(np.where(truth, known, at)[::-1])[::-1].tolist()
    next_true = np.minimum.accumulate(np.where(truth, at, known)[::-1])[::-1].tolist()
    positions = rows.tolist()
    quiet_true = entry.quiet_true
    k = 0
    while k < known:
        if state.firing:
            if quiet_true and next_false[k] > k:  # true while firing: nothing changes
                stop = next_false[k]
                state.evaluations += stop - k
                state.false_while_firing = 0
                k = stop
                continue
        elif next_true[k] > k:  # false while not firing: nothing changes
            stop = next_true[k]
            state.evaluations += stop - k
            state.consecutive = 0
            k = stop
            continue
        j = positions[k]
        step = int(steps[j])
        state.unknown = unknown0 + j - k  # the unknown rows before this one: for warmup
        change = advance(entry, state, step, 1.0 if next_false[k] > k else 0.0)
        if change:
            changed(j, step, change)
        k += 1
    state.unknown = unknown0 + n - known
