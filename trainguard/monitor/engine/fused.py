"""Evaluators fused with the quiet part of the life cycle, for the simplest rules.

Most rules of a pack are one test of one metric: ``loss > 15``, ``< 1e-6``, ``nonfinite``. For
those the engine's per-record work (call the evaluator, look at the result, bump two counters)
costs more than the test. :func:`fused` builds, for one rule on one rank, a closure that does
the test and, when the result changes nothing but counters (unknown; false while not firing;
true while firing with no re-notification), those counters too, and returns :data:`HANDLED`;
otherwise it returns the result (1.0 or 0.0) for the engine's full transition. The results are
the compiled condition's (``_compare_constant`` in rules/nodes.py, ``nonfinite``): NaN compares
false, and NaN or an infinity is non-finite.

Only for scopes ``rank`` and ``any``, whose states only :meth:`Engine._evaluate_record` steps
(the batch path calls ``.many``, which the fused closure carries over).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rulestate builds the fused evaluators (new_state)
    from trainguard.monitor.engine.rulestate import RuleState

__all__ = ["HANDLED", "fused"]

#: Returned by a fused evaluator when it did the life cycle's part itself (compared by identity;
#: no other evaluator can return this object).
HANDLED: float = float("nan")

Fused = Callable[[Mapping[str, float]], float | None]


def fused(state: RuleState, name: str | None, op: str, c: float,
          operand: Fused | None = None) -> Fused | None:
    """The fused evaluator of ``name OP c`` (``op`` ``nonfinite``: ``nonfinite(name)``), or
    of ``operand OP c`` when ``name`` is ``None`` (``operand``: the evaluator of a computed
    left side, ``zscore(...)``); ``None`` for ``==`` and ``!=``, which stay with the compiled
    closure."""
    quiet_true = state.quiet_true
    key = "" if name is None else name  # read only when there is no operand
    evaluate: Fused
    # Each closure below is the same template with its test inline (a call per test would cost
    # what the fusion saves): unknown -> count; true -> quiet if firing (and not re-notifying),
    # else the engine's; false -> the engine's if firing, else quiet.
    if op == ">":
        def evaluate(m: Mapping[str, float]) -> float | None:
            a = m.get(key) if operand is None else operand(m)
            if a is None:
                state.unknown += 1
                return HANDLED
            if a > c:
                if state.firing and quiet_true:
                    state.evaluations += 1
                    state.false_while_firing = 0
                    return HANDLED
                return 1.0
            if state.firing:
                return 0.0
            state.evaluations += 1
            state.consecutive = 0
            return HANDLED
    elif op == ">=":
        def evaluate(m: Mapping[str, float]) -> float | None:
            a = m.get(key) if operand is None else operand(m)
            if a is None:
                state.unknown += 1
                return HANDLED
            if a >= c:
                if state.firing and quiet_true:
                    state.evaluations += 1
                    state.false_while_firing = 0
                    return HANDLED
                return 1.0
            if state.firing:
                return 0.0
            state.evaluations += 1
            state.consecutive = 0
            return HANDLED
    elif op == "<":
        def evaluate(m: Mapping[str, float]) -> float | None:
            a = m.get(key) if operand is None else operand(m)
            if a is None:
                state.unknown += 1
                return HANDLED
            if a < c:
                if state.firing and quiet_true:
                    state.evaluations += 1
                    state.false_while_firing = 0
                    return HANDLED
                return 1.0
            if state.firing:
                return 0.0
            state.evaluations += 1
            state.consecutive = 0
            return HANDLED
    elif op == "<=":
        def evaluate(m: Mapping[str, float]) -> float | None:
            a = m.get(key) if operand is None else operand(m)
            if a is None:
                state.unknown += 1
                return HANDLED
            if a <= c:
                if state.firing and quiet_true:
                    state.evaluations += 1
                    state.false_while_firing = 0
                    return HANDLED
                return 1.0
            if state.firing:
                return 0.0
            state.evaluations += 1
            state.consecutive = 0
            return HANDLED
    elif op == "nonfinite":
        def evaluate(m: Mapping[str, float]) -> float | None:
            a = m.get(key) if operand is None else operand(m)
            if a is None:
                state.unknown += 1
                return HANDLED
            if a - a != 0:  # NaN or an infinity
                if state.firing and quiet_true:
                    state.evaluations += 1
                    state.false_while_firing = 0
                    return HANDLED
                return 1.0
            if state.firing:
                return 0.0
            state.evaluations += 1
            state.consecutive = 0
            return HANDLED
    else:
        return None
    return evaluate
