"""The compiled form of a condition: nodes, the closures they build, and their batch forms.

A :class:`Node` is what the parser (:mod:`trainguard.rules.dsl`) makes of a sub-expression: a
factory whose ``make()`` returns a fresh evaluator with its own state, so one compiled rule is
instantiated once per rank without sharing rolling windows. An evaluator takes one record's
metrics and returns a number, a truth value (1.0/0.0) or ``None`` (unknown); the built-in ones
also carry ``.many``, the same evaluation over a batch of records on the same state
(:mod:`trainguard.rules.vector`). The step and time of a record reach functions through the
:class:`EvalContext` the engine updates before each call.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from trainguard.rules.dormant import dormant_for, forward_replay

__all__ = ["CMP", "EvalContext", "Evaluator", "Node", "binary", "const", "current_context",
           "lazy_many", "logical", "logical_all", "make_in_context", "many_of", "metric",
           "negate", "shared_again", "shared_first", "vector", "with_many"]

#: The comparison operators.
CMP = frozenset({"<", "<=", ">", ">=", "==", "!="})

#: An instantiated condition: the metrics of one step in, a number / truth value or None out.
Evaluator = Callable[[Mapping[str, float]], float | None]


class EvalContext:
    """What an evaluator knows besides the metrics: updated by the engine before each call.

    ``step`` and ``time`` (record time in seconds, or ``None``) describe the record being
    evaluated; ``rank`` is the rank the evaluator belongs to (``-1`` for a cross-rank scope).
    ``baseline`` is written by functions that compare against one (the rolling mean of a
    spike), and reset to ``None`` by the engine before each call. ``used`` says whether any
    function of the evaluator asked for the context; the engine skips updating one nobody reads.
    """

    __slots__ = ("step", "time", "rank", "baseline", "used")

    def __init__(self, rank: int = 0) -> None:
        self.step = 0
        self.time: float | None = None
        self.rank = rank
        self.baseline: float | None = None
        self.used = False


_BUILDING: list[EvalContext] = []
#: Per evaluator being built: the cells of its shared calls (shared_first / shared_again).
_SHARED: list[dict[Any, list[Any]]] = []


def make_in_context(node: Node, ctx: EvalContext) -> Evaluator:
    """``node.make()``, its functions reading ``ctx`` (see :func:`current_context`)."""
    _BUILDING.append(ctx)
    _SHARED.append({})
    try:
        return node.make()
    finally:
        _BUILDING.pop()
        _SHARED.pop()


def current_context() -> EvalContext:
    """The context of the evaluator being built; call it inside a node's ``make()``."""
    if not _BUILDING:  # made outside Condition.instantiate(): a private, never-updated one
        return EvalContext()
    ctx = _BUILDING[-1]
    ctx.used = True
    return ctx


@dataclass(slots=True)
class Node:
    """A compiled sub-expression: ``make()`` builds an evaluator with fresh state."""

    make: Callable[[], Evaluator]
    metrics: frozenset[str]
    #: A constant's value, so functions can read literal arguments at compile time.
    constant: float | None = None
    #: ``True`` for a percentage literal (``50%``), ``"x"`` suffix sets ``ratio``.
    percent: bool = False
    #: A literal's unit: ``"x"`` (``3x``), ``"s"`` (``30s``, seconds) or ``None``.
    unit: str | None = None
    #: Evaluate on every step record, even one without this node's metrics (``stale``).
    always: bool = False
    #: The metric's key when the node is a bare metric, so a parent can read it inline
    #: (``m.get(name)``) instead of calling the child's evaluator: one call less per step.
    name: str | None = None
    #: Whether the evaluators ``make()`` builds have a batch entry point (``.many``, see
    #: :mod:`trainguard.rules.vector`): every built-in node does; a function registered
    #: without one makes its rule evaluated one record at a time.
    batched: bool = False
    #: Timing, for ``trainguard rules explain`` and the time-to-detect budget (static, read
    #: at load time only): ``fill`` is how many records carrying the node's metrics it needs
    #: before its result can be known (a constant: 0, a metric: 1, a window: its min_count);
    #: ``reaction`` is how many records after a change of the data it may take to show it
    #: (a comparison of the current value: 1; a window aggregate: up to its length).
    fill: int = 1
    reaction: int = 1
    #: ``(metric, op, constant)`` when the node is one test of a bare metric (``op`` a
    #: comparison, or ``"nonfinite"``), or ``(None, op, constant)`` when it compares a computed
    #: operand with a constant (``zscore(g, 50) > 6``; its evaluators carry the operand's as
    #: ``.operand``), so the engine can fuse it with the life cycle's quiet path
    #: (monitor/engine/fused.py); ``None`` otherwise.
    test: tuple[str | None, str, float] | None = None
    #: Stateless: built of metrics, literals and operators only (no function), so its
    #: evaluators may be called in any order, or skipped (rules/dormant.py's guards).
    pure: bool = False


def vector() -> Any:
    """:mod:`trainguard.rules.vector`, imported when first needed: it imports numpy, a tenth of
    a second that a command which evaluates nothing should not pay."""
    from trainguard.rules import vector as module
    return module


def with_many(evaluate: Evaluator, many: Any) -> Evaluator:
    """``evaluate`` with its batch entry point (sharing its state) attached as ``.many``."""
    evaluate.many = many  # type: ignore[attr-defined]
    return evaluate


def lazy_many(build: Callable[[], Any]) -> Any:
    """A batch entry point that ``build()`` makes on its first call, not before: building one
    imports numpy, and a rule that only ever sees single records never needs it."""
    built: list[Any] = []

    def many(batch: Any) -> Any:
        if not built:
            built.append(build())
        return built[0](batch)
    return many


def many_of(evaluate: Evaluator) -> Any:
    """The batch entry point of an evaluator, or ``None``."""
    return getattr(evaluate, "many", None)


def const(value: float, percent: bool = False, unit: str | None = None) -> Node:
    return Node(lambda: with_many(lambda m: value, lazy_many(lambda: vector().const(value))),
                frozenset(),
                constant=value, percent=percent, unit=unit, batched=True, fill=0, reaction=0,
                pure=True)


def metric(name: str) -> Node:
    return Node(lambda: with_many(lambda m: m.get(name), lazy_many(lambda: vector().metric(name))),
                frozenset({name}), name=name, batched=True, pure=True)


def _compare_constant(op: str, left: Node, c: float) -> Callable[[], Evaluator]:
    """``x OP constant``, the most common condition, as one closure: the comparison inline and,
    when ``x`` is a bare metric, its read too. The same results as :func:`_binary`'s generic
    path (NaN compares false)."""
    def make() -> Evaluator:
        lf, name = left.make(), left.name
        if op == "<":
            def evaluate(m: Mapping[str, float]) -> float | None:
                a = m.get(name) if name is not None else lf(m)
                return None if a is None else (1.0 if a < c else 0.0)
        elif op == "<=":
            def evaluate(m: Mapping[str, float]) -> float | None:
                a = m.get(name) if name is not None else lf(m)
                return None if a is None else (1.0 if a <= c else 0.0)
        elif op == ">":
            def evaluate(m: Mapping[str, float]) -> float | None:
                a = m.get(name) if name is not None else lf(m)
                return None if a is None else (1.0 if a > c else 0.0)
        elif op == ">=":
            def evaluate(m: Mapping[str, float]) -> float | None:
                a = m.get(name) if name is not None else lf(m)
                return None if a is None else (1.0 if a >= c else 0.0)
        elif op == "==":
            def evaluate(m: Mapping[str, float]) -> float | None:
                a = m.get(name) if name is not None else lf(m)
                return None if a is None else (1.0 if a == c else 0.0)
        else:
            def evaluate(m: Mapping[str, float]) -> float | None:
                a = m.get(name) if name is not None else lf(m)
                return None if a is None else (1.0 if a != c else 0.0)
        if left.batched:
            with_many(evaluate, lazy_many(
                lambda: vector().binary(op, many_of(lf), vector().const(c))))
        if name is None:
            evaluate.operand = lf  # type: ignore[attr-defined]  # read by the engine's fusion
            forward_replay(evaluate, lf)
        return evaluate
    return make


_ARITHMETIC: dict[str, Callable[[float, float], float | None]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul}


def _special_binary(op: str, fn: Callable[[float, float], float | None], left: Node,
                    right: Node, lf: Evaluator, rf: Evaluator) -> Evaluator | None:
    """One closure for the common shapes of a binary node whose right side is a window or
    other computed node: ``metric CMP f(...)`` (``step_time > 2.5 * median(...)``) with the
    comparison inline, and ``constant OP f(...)`` (``2.5 * median(...)``); ``None`` for any
    other shape. The right side runs on every call, as in the generic closure."""
    if right.constant is not None or right.name is not None:
        return None
    name, c = left.name, left.constant
    if c is not None:
        def scaled(m: Mapping[str, float]) -> float | None:
            b = rf(m)
            return None if b is None else fn(c, b)
        if op == "*":  # read by a parent ``metric CMP c * f(...)`` (below)
            scaled.factor = (c, rf)  # type: ignore[attr-defined]
        return forward_replay(scaled, rf)
    if name is None or op not in CMP:
        return None
    evaluate: Evaluator
    factor = getattr(rf, "factor", None)
    if factor is not None and op in ("<", "<=", ">", ">="):
        # ``metric CMP c * f(...)`` (``step_time > 2.5 * median(...)``): the product inline,
        # f called directly (rf's batch form, on the same state, stays the batch path's).
        k, ff = factor
        if op == "<":
            def evaluate(m: Mapping[str, float]) -> float | None:
                a, b = m.get(name), ff(m)
                return None if a is None or b is None else (1.0 if a < k * b else 0.0)
        elif op == "<=":
            def evaluate(m: Mapping[str, float]) -> float | None:
                a, b = m.get(name), ff(m)
                return None if a is None or b is None else (1.0 if a <= k * b else 0.0)
        elif op == ">":
            def evaluate(m: Mapping[str, float]) -> float | None:
                a, b = m.get(name), ff(m)
                return None if a is None or b is None else (1.0 if a > k * b else 0.0)
        else:
            def evaluate(m: Mapping[str, float]) -> float | None:
                a, b = m.get(name), ff(m)
                return None if a is None or b is None else (1.0 if a >= k * b else 0.0)
        return forward_replay(evaluate, ff)
    if op == "<":
        def evaluate(m: Mapping[str, float]) -> float | None:
            a, b = m.get(name), rf(m)
            return None if a is None or b is None else (1.0 if a < b else 0.0)
    elif op == "<=":
        def evaluate(m: Mapping[str, float]) -> float | None:
            a, b = m.get(name), rf(m)
            return None if a is None or b is None else (1.0 if a <= b else 0.0)
    elif op == ">":
        def evaluate(m: Mapping[str, float]) -> float | None:
            a, b = m.get(name), rf(m)
            return None if a is None or b is None else (1.0 if a > b else 0.0)
    elif op == ">=":
        def evaluate(m: Mapping[str, float]) -> float | None:
            a, b = m.get(name), rf(m)
            return None if a is None or b is None else (1.0 if a >= b else 0.0)
    elif op == "==":
        def evaluate(m: Mapping[str, float]) -> float | None:
            a, b = m.get(name), rf(m)
            return None if a is None or b is None else (1.0 if a == b else 0.0)
    else:
        def evaluate(m: Mapping[str, float]) -> float | None:
            a, b = m.get(name), rf(m)
            return None if a is None or b is None else (1.0 if a != b else 0.0)
    return evaluate


def binary(op: str, left: Node, right: Node) -> Node:
    fn: Callable[[float, float], float | None]
    if op == "+":
        fn = lambda a, b: a + b  # noqa: E731
    elif op == "-":
        fn = lambda a, b: a - b  # noqa: E731
    elif op == "*":
        fn = lambda a, b: a * b  # noqa: E731
    elif op == "/":
        fn = lambda a, b: a / b if b != 0 else (math.nan if a == 0 else math.copysign(math.inf, a) * math.copysign(1, b))  # noqa: E731,E501
    elif op == "<":
        fn = lambda a, b: 1.0 if a < b else 0.0  # noqa: E731
    elif op == "<=":
        fn = lambda a, b: 1.0 if a <= b else 0.0  # noqa: E731
    elif op == ">":
        fn = lambda a, b: 1.0 if a > b else 0.0  # noqa: E731
    elif op == ">=":
        fn = lambda a, b: 1.0 if a >= b else 0.0  # noqa: E731
    elif op == "==":
        fn = lambda a, b: 1.0 if a == b else 0.0  # noqa: E731
    else:
        fn = lambda a, b: 1.0 if a != b else 0.0  # noqa: E731

    metrics, always = left.metrics | right.metrics, left.always or right.always
    const = right.constant
    batched = left.batched and right.batched
    pure = left.pure and right.pure
    if const is not None and op in CMP:
        return Node(_compare_constant(op, left, const), metrics, always=always,
                    batched=batched, fill=left.fill, reaction=left.reaction,
                    test=(left.name, op, const), pure=pure)
    # The same arithmetic as the lambdas, without a Python call: operator's are C functions.
    fn = _ARITHMETIC.get(op, fn)

    def make() -> Evaluator:
        lf, rf = left.make(), right.make()
        special = _special_binary(op, fn, left, right, lf, rf)
        if special is not None:
            if batched:
                with_many(special, lazy_many(
                    lambda: vector().binary(op, many_of(lf), many_of(rf))))
            return special
        # Literals and bare metrics are read inline, not through their evaluators: one call
        # less per operand per step (``loss > 10 * max(...)`` has three such operands).
        lconst, rconst, lname, rname = left.constant, const, left.name, right.name
        rstateful = rconst is None and rname is None

        def evaluate(m: Mapping[str, float]) -> float | None:
            a = (lconst if lconst is not None
                 else m.get(lname) if lname is not None else lf(m))
            if a is None:
                if rstateful:
                    rf(m)  # a window on the right still sees every step
                return None
            b = (rconst if rconst is not None
                 else m.get(rname) if rname is not None else rf(m))
            if b is None:
                return None
            return fn(a, b)
        if batched:
            with_many(evaluate, lazy_many(
                lambda: vector().binary(op, many_of(lf), many_of(rf))))
        return evaluate
    return Node(make, metrics, always=always, batched=batched,
                fill=max(left.fill, right.fill), reaction=max(left.reaction, right.reaction),
                pure=pure)


def logical(op: str, left: Node, right: Node) -> Node:
    """``left and right`` / ``left or right`` (see :func:`logical_all`)."""
    return logical_all(op, [left, right])


def logical_all(op: str, terms: list[Node]) -> Node:
    """``a and b and c...`` (or ``or``) as one closure, in three-valued logic: a known false
    term decides ``and`` (a true one ``or``), else an unknown term makes it unknown. The same
    results as nesting the binary form, one call less per extra term; every term runs on
    every call, in order, so stateful windows see every step (an ``and`` whose windows can
    wait for a false guard keeps their values instead: rules/dormant.py's ``dormant_for``)."""
    batched = all(t.batched for t in terms)

    def make() -> Evaluator:
        fs = [t.make() for t in terms]
        evaluate: Evaluator
        if op == "and" and len(fs) == 2:
            lf, rf = fs

            def evaluate(m: Mapping[str, float]) -> float | None:
                a, b = lf(m), rf(m)
                if a is not None and not a or b is not None and not b:
                    return 0.0
                if a is None or b is None:
                    return None
                return 1.0
        elif op == "and" and len(fs) == 3:
            f1, f2, f3 = fs

            def evaluate(m: Mapping[str, float]) -> float | None:
                a, b, c = f1(m), f2(m), f3(m)
                if (a is not None and not a or b is not None and not b
                        or c is not None and not c):
                    return 0.0
                if a is None or b is None or c is None:
                    return None
                return 1.0
        elif op == "and":
            def evaluate(m: Mapping[str, float]) -> float | None:
                values = [f(m) for f in fs]
                if any(v is not None and not v for v in values):
                    return 0.0
                return None if None in values else 1.0
        elif len(fs) == 2:
            lf, rf = fs

            def evaluate(m: Mapping[str, float]) -> float | None:
                a, b = lf(m), rf(m)
                if a or b:  # NaN counts as true, as in Python
                    return 1.0
                if a is None or b is None:
                    return None
                return 0.0
        elif len(fs) == 3:
            f1, f2, f3 = fs

            def evaluate(m: Mapping[str, float]) -> float | None:
                a, b, c = f1(m), f2(m), f3(m)
                if a or b or c:
                    return 1.0
                if a is None or b is None or c is None:
                    return None
                return 0.0
        else:
            def evaluate(m: Mapping[str, float]) -> float | None:
                values = [f(m) for f in fs]
                if any(values):
                    return 1.0
                return None if None in values else 0.0
        made = dormant_for(terms, fs) if op == "and" else None
        if made is not None:
            evaluate, batch_of, guards, windows = made
        if batched:
            def build() -> Any:
                V = vector()
                many = many_of(fs[0])
                for f in fs[1:]:
                    many = V.logical(op, many, many_of(f))
                if made is None:
                    return many
                return batch_of([many_of(f) for f in guards], [many_of(f) for f in windows])
            with_many(evaluate, lazy_many(build))
        return evaluate
    # ``and`` is true once all its terms are; ``or`` once any is.
    pick = max if op == "and" else min
    metrics: frozenset[str] = frozenset().union(*(t.metrics for t in terms))
    return Node(make, metrics, always=any(t.always for t in terms), batched=batched,
                fill=pick(t.fill for t in terms), reaction=pick(t.reaction for t in terms),
                pure=all(t.pure for t in terms))


def negate(inner: Node, arithmetic: bool) -> Node:
    def make() -> Evaluator:
        f = inner.make()
        evaluate: Evaluator
        if arithmetic:
            evaluate = lambda m: None if (v := f(m)) is None else -v  # noqa: E731
        else:
            evaluate = lambda m: None if (v := f(m)) is None else (0.0 if v else 1.0)  # noqa: E731
        if inner.batched:
            with_many(evaluate, lazy_many(lambda: vector().negate(many_of(f), arithmetic)))
        return evaluate
    return Node(make, inner.metrics,
                constant=-inner.constant if arithmetic and inner.constant is not None else None,
                always=inner.always, batched=inner.batched, fill=inner.fill,
                reaction=inner.reaction, pure=inner.pure)


def shared_first(node: Node, key: Any) -> Node:
    """``node``, whose results later occurrences of the same call (:func:`shared_again`, same
    ``key``) in the same condition read instead of keeping a second window of their own.

    Only for calls at the top of a condition (in no function's arguments): every operator
    evaluates all its operands on every call, left to right, in the record and the batch
    forms, so the first occurrence has always run on the record (or batch) when a later one
    is asked. Outside :func:`make_in_context` each occurrence keeps its own state.
    """
    def make() -> Evaluator:
        f = node.make()
        if not _SHARED:
            return f
        cell: list[Any] = [None, None]
        _SHARED[-1][key] = cell

        def evaluate(m: Mapping[str, float]) -> float | None:
            result = cell[0] = f(m)
            return result
        fm = many_of(f)
        if fm is not None:
            def many(b: Any) -> Any:
                result = cell[1] = fm(b)
                return result
            with_many(evaluate, many)
        return evaluate
    return replace(node, make=make, test=None)


def shared_again(node: Node, key: Any) -> Node:
    """A later occurrence of :func:`shared_first`'s call: its result on the same record."""
    def make() -> Evaluator:
        cell = _SHARED[-1].get(key) if _SHARED else None
        if cell is None:  # built on its own: its own state
            return node.make()
        shared: list[Any] = cell
        evaluate: Evaluator = lambda m: shared[0]  # noqa: E731
        if node.batched:
            with_many(evaluate, lambda b: shared[1])
        return evaluate
    return replace(node, make=make, test=None)
