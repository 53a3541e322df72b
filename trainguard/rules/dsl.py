"""The condition language: a small grammar of our own, compiled once to closures.

Never ``eval``, never Python's ``ast`` on user text. A condition is an expression over metric
names (after normalization)::

    loss > 10                      grad_norm > 5 * mean(grad_norm, 50)
    nonfinite                      (shorthand: the rule's own ``metric`` is the operand)
    > 0.69 and < 0.70              (likewise: a comparison with no left side)
    spike(3x)                      the metric is over 3x its rolling mean
    `rewards/chosen` - `rewards/rejected` < 0.01
    rewards/chosen - rewards/rejected < 0.01   (a '/' directly between letters joins a name)

Grammar (precedence low to high)::

    expr    := and ('or' and)*
    and     := not ('and' not)*
    not     := 'not' not | compare
    compare := CMP sum | sum (CMP sum)?
    sum     := term (('+' | '-') term)*
    term    := unary (('*' | '/') unary)*
    unary   := '-' unary | atom
    atom    := NUMBER ['%' | 'x'] | NAME ['(' args ')'] | '`' name '`' | '(' expr ')'
    args    := arg (',' arg)*        arg := expr | NAME '=' expr

Evaluation is three-valued: a metric absent from a step makes the result unknown (``None``),
which neither fires nor resets a pending alert. Functions are registered in
:data:`FUNCTIONS`; each compiles its arguments once and returns a closure that keeps its own
rolling state, updated incrementally.

The step and the record time are not metrics: each evaluator instance has an
:class:`EvalContext` that the engine updates before every call (two attribute stores). A
function's ``make()`` reads it with :func:`current_context` and keeps it in its closure; a
function that compares against a baseline (a rolling mean, a reference value) writes it to
``ctx.baseline`` so the alert message can say ``{baseline}``. ``stale(N)`` is the built-in user of
both: it must run on steps that do *not* carry its metric, so its node sets ``always=True``.

Safety: the tokenizer knows numbers, names, backquoted names and operators, nothing else; there
are no strings, no indexing, no attribute access (a dot only joins a metric name, which is looked
up as a dict key), and names that look like Python internals (``__class__``) or keywords
(``lambda``, ``import``) are refused at load time with the column.
"""

from __future__ import annotations

import keyword
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from trainguard.exceptions import RuleSyntaxError
from trainguard.rules.nodes import (
    CMP,
    EvalContext,
    Evaluator,
    Node,
    binary,
    const,
    current_context,
    lazy_many,
    logical_all,
    make_in_context,
    many_of,
    metric,
    negate,
    shared_again,
    shared_first,
    vector,
    with_many,
)

__all__ = ["Call", "Compiled", "Condition", "EvalContext", "Evaluator", "FUNCTIONS", "Node",
           "compile_condition", "current_context", "function", "lazy_many", "many_of",
           "vector", "with_many"]

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<number>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
  | (?P<quoted>`[^`]+`)
  | (?P<name>[A-Za-z_][\w.]*(?:/[A-Za-z_][\w.]*)*)
  | (?P<op><=|>=|==|!=|<|>|\+|-|\*|/|\(|\)|,|%|=)
    """,
    re.VERBOSE,
)
_KEYWORDS = frozenset({"and", "or", "not"})
#: Python words that have no meaning here; refusing them gives a clear message for payloads
#: such as ``lambda: ...`` or ``(x for x in ...)`` instead of treating them as metric names.
_REFUSED_WORDS = frozenset(keyword.kwlist) - _KEYWORDS - {"True", "False", "None"} | {
    "eval", "exec", "compile", "getattr", "setattr", "globals", "locals", "vars", "open",
    "__import__", "breakpoint", "input"}


def _check_name(name: str, text: str, col: int, rule: str | None) -> None:
    """Refuse names that only make sense as an escape attempt (dunders, Python keywords)."""
    parts = name.replace("/", ".").split(".")
    for part in parts:
        if part.startswith("__") or part.endswith("__") or part in _REFUSED_WORDS:
            raise RuleSyntaxError(
                f"{name!r} is not allowed: names are metric keys; Python names, keywords and "
                "attributes have no meaning in a condition", text=text, column=col, rule=rule)


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str
    text: str
    col: int  # 1-based


def _tokenize(text: str, rule: str | None) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise RuleSyntaxError(f"unexpected character {text[pos]!r}", text=text, column=pos + 1,
                                  rule=rule)
        kind = m.lastgroup or ""
        if kind != "ws":
            value = m.group()
            if kind == "quoted":
                kind, value = "name", value[1:-1]
                _check_name(value, text, pos + 1, rule)
            elif kind == "name" and value in _KEYWORDS:
                kind = value
            elif kind == "name":
                _check_name(value, text, pos + 1, rule)
            tokens.append(_Tok(kind, value, pos + 1))
        pos = m.end()
    tokens.append(_Tok("end", "", len(text) + 1))
    return tokens


# -- functions -------------------------------------------------------------------------------


@dataclass(slots=True)
class Call:
    """A parsed function call handed to a function's compiler."""

    name: str
    args: list[Node]
    kwargs: dict[str, Node]
    implicit: Node | None  # the rule's own metric, for shorthand calls such as ``spike(3x)``
    text: str
    col: int
    rule: str | None

    def error(self, message: str) -> RuleSyntaxError:
        return RuleSyntaxError(f"{self.name}(): {message}", text=self.text, column=self.col,
                               rule=self.rule)

    def operand(self, arity_with_operand: int) -> tuple[Node, list[Node]]:
        """Split the positional arguments into (metric operand, the rest).

        With fewer positional arguments than ``arity_with_operand`` the rule's own metric is the
        operand, so ``spike(3x)`` means ``spike(loss, 3x)`` in a rule whose metric is ``loss``.
        """
        if len(self.args) >= arity_with_operand or (self.args and self.args[0].constant is None):
            return self.args[0], self.args[1:]
        if self.implicit is None:
            raise self.error("name the metric: this rule has no 'metric' to default to")
        return self.implicit, list(self.args)

    def constant(self, node: Node | None, what: str, default: float | None = None) -> float:
        if node is None:
            if default is None:
                raise self.error(f"missing {what}")
            return default
        if node.constant is None:
            raise self.error(f"{what} must be a number")
        return node.constant


Compiler = Callable[[Call], Node]
FUNCTIONS: dict[str, Compiler] = {}


def function(name: str) -> Callable[[Compiler], Compiler]:
    """Register a condition-language function compiler under ``name``."""
    def register(compiler: Compiler) -> Compiler:
        FUNCTIONS[name] = compiler
        return compiler
    return register


# -- parser ----------------------------------------------------------------------------------


#: Parentheses, ``not``, unary minus and function calls nested deeper than this are refused:
#: the parser recurses once per level, and 10,000 ``(`` must be a located error, not a bare
#: RecursionError.
MAX_NESTING = 32
#: Operators in one condition (``and``, ``or``, arithmetic, ``not``, ``-``, calls) beyond
#: this are refused: each compiles to a nested closure, the evaluation recurses once per
#: level, and a 1,000-clause chain crashed the first evaluation. Far more than a rule needs.
MAX_OPERATORS = 128


class _Parser:
    def __init__(self, text: str, implicit: str | None, rule: str | None,
                 shared: frozenset[_CallKey] = frozenset()) -> None:
        self.text, self.rule = text, rule
        self.tokens = _tokenize(text, rule)
        self.i = 0
        self.implicit = metric(implicit) if implicit else None
        self.nesting = 0
        self.operators = 0
        self.calls = 0  # function calls being parsed around the current token
        #: Top-level calls by their tokens: how often each occurs (see compile_condition),
        #: and those to evaluate once (``shared``) and which of them were seen already.
        self.counts: dict[_CallKey, int] = {}
        self.shared = shared
        self.first: set[_CallKey] = set()

    def enter(self) -> None:
        """One level deeper (a parenthesis, ``not``, ``-``, a call): refused past the limit."""
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise self.error(f"nested more than {MAX_NESTING} levels deep: split the condition "
                             "into several rules or simpler parts")
        self.chained(0)

    def chained(self, operands: int) -> None:
        """Count one operator; refused past :data:`MAX_OPERATORS` in the condition."""
        self.operators += 1
        if self.operators > MAX_OPERATORS:
            raise self.error(f"more than {MAX_OPERATORS} operators in one condition: split it "
                             "into several rules")

    def error(self, message: str, tok: _Tok | None = None) -> RuleSyntaxError:
        tok = tok or self.tokens[self.i]
        return RuleSyntaxError(message, text=self.text, column=tok.col, rule=self.rule)

    @property
    def tok(self) -> _Tok:
        return self.tokens[self.i]

    def take(self, text: str | None = None, kind: str | None = None) -> _Tok | None:
        tok = self.tokens[self.i]
        if (text is not None and tok.text == text and tok.kind in ("op", text)) or (
            kind is not None and tok.kind == kind
        ):
            self.i += 1
            return tok
        return None

    def parse(self) -> Node:
        if self.tok.kind == "end":
            raise self.error("empty condition")
        node = self.expr()
        if self.tok.kind != "end":
            raise self.error(f"unexpected {self.tok.text!r}")
        return node

    def expr(self) -> Node:
        terms = [self.conj()]
        while self.take("or"):
            self.chained(len(terms) + 1)
            terms.append(self.conj())
        return terms[0] if len(terms) == 1 else logical_all("or", terms)

    def conj(self) -> Node:
        terms = [self.neg()]
        while self.take("and"):
            self.chained(len(terms) + 1)
            terms.append(self.neg())
        return terms[0] if len(terms) == 1 else logical_all("and", terms)

    def neg(self) -> Node:
        if self.take("not"):
            self.enter()
            node = negate(self.neg(), arithmetic=False)
            self.nesting -= 1
            return node
        return self.compare()

    def compare(self) -> Node:
        if self.tok.kind == "op" and self.tok.text in CMP:
            op_tok = self.tok
            self.i += 1
            if self.implicit is None:
                raise self.error("a comparison needs a left side: this rule has no 'metric'",
                                 op_tok)
            return binary(op_tok.text, self.implicit, self.sum())
        left = self.sum()
        if self.tok.kind == "op" and self.tok.text in CMP:
            op = self.tok.text
            self.i += 1
            return binary(op, left, self.sum())
        return left

    def sum(self) -> Node:
        node = self.term()
        operands = 1
        while self.tok.kind == "op" and self.tok.text in ("+", "-"):
            op = self.tok.text
            self.i += 1
            operands += 1
            self.chained(operands)
            node = _fold(op, node, self.term())
        return node

    def term(self) -> Node:
        node = self.unary()
        operands = 1
        while self.tok.kind == "op" and self.tok.text in ("*", "/"):
            op = self.tok.text
            self.i += 1
            operands += 1
            self.chained(operands)
            node = _fold(op, node, self.unary())
        return node

    def unary(self) -> Node:
        if self.take("-"):
            self.enter()
            node = negate(self.unary(), arithmetic=True)
            self.nesting -= 1
            return node
        return self.atom()

    def atom(self) -> Node:
        tok = self.tok
        if tok.kind == "number":
            self.i += 1
            value = float(tok.text)
            if self.take("%"):
                return const(value / 100.0, percent=True)
            nxt = self.tok
            if nxt.kind == "name" and nxt.text == "x" and nxt.col == tok.col + len(tok.text):
                self.i += 1  # "3x": a ratio literal
                return const(value, unit="x")
            if nxt.kind == "name" and nxt.text == "s":
                self.i += 1  # "30s" or "30 s": seconds (two atoms in a row mean nothing else)
                return const(value, unit="s")
            return const(value)
        if tok.kind == "name":
            self.i += 1
            if self.take("("):
                self.enter()
                node = self.call(tok)
                self.nesting -= 1
                return node
            if tok.text in FUNCTIONS:
                return self.call(tok, bare=True)
            if tok.text in ("inf", "nan"):
                return const(math.inf if tok.text == "inf" else math.nan)
            return metric(tok.text)
        if self.take("("):
            self.i -= 1
            self.enter()  # located at the '(' that goes one level too deep
            self.i += 1
            node = self.expr()
            if not self.take(")"):
                raise self.error("expected ')'")
            self.nesting -= 1
            return node
        if tok.kind == "end":
            raise self.error("unexpected end of condition")
        raise self.error(f"unexpected {tok.text!r}")

    def call(self, name_tok: _Tok, bare: bool = False) -> Node:
        compiler = FUNCTIONS.get(name_tok.text)
        if compiler is None:
            known = ", ".join(sorted(FUNCTIONS))
            raise self.error(f"unknown function {name_tok.text!r} (known: {known})", name_tok)
        start, top = self.i - 2, self.calls == 0
        self.calls += 1
        node = self._call(compiler, name_tok, bare)
        self.calls -= 1
        if bare or not top or _SHAREABLE.get(name_tok.text) is not compiler:
            return node
        key = (name_tok.text, *(t.text for t in self.tokens[start:self.i]))
        self.counts[key] = self.counts.get(key, 0) + 1
        if key not in self.shared:
            return node
        if key in self.first:
            return shared_again(node, key)
        self.first.add(key)
        return shared_first(node, key)

    def _call(self, compiler: Compiler, name_tok: _Tok, bare: bool) -> Node:
        args: list[Node] = []
        kwargs: dict[str, Node] = {}
        if not bare and not self.take(")"):
            while True:
                if (self.tok.kind == "name" and self.tokens[self.i + 1].text == "="
                        and self.tokens[self.i + 1].kind == "op"):
                    key = self.tok.text
                    self.i += 2
                    kwargs[key] = self.expr()
                else:
                    if kwargs:
                        raise self.error("positional argument after keyword argument")
                    args.append(self.expr())
                if self.take(")"):
                    break
                if not self.take(","):
                    raise self.error("expected ',' or ')'")
        call = Call(name_tok.text, args, kwargs, self.implicit, self.text, name_tok.col, self.rule)
        return compiler(call)


def _fold(op: str, left: Node, right: Node) -> Node:
    """Arithmetic, folding constants so ``2 * 50%`` is still a literal argument."""
    if left.constant is not None and right.constant is not None:
        a, b = left.constant, right.constant
        value = {"+": a + b, "-": a - b, "*": a * b}.get(op)
        if value is None:
            value = a / b if b else math.nan
        return const(value)
    return binary(op, left, right)


@dataclass(frozen=True, slots=True)
class Condition:
    """A compiled condition: which metrics it reads, and a factory of evaluators."""

    text: str
    metrics: frozenset[str]
    _node: Node = field(repr=False)

    @property
    def always(self) -> bool:
        """Whether to evaluate on every step record, not only those carrying its metrics."""
        return self._node.always

    @property
    def fill(self) -> int:
        """The record (of those carrying its metrics) the condition is first known at."""
        return self._node.fill

    @property
    def reaction(self) -> int:
        """Records after a change of the data it may take the condition to show it."""
        return self._node.reaction

    @property
    def test(self) -> tuple[str | None, str, float] | None:
        """``(metric, op, constant)`` when the condition is one test of a bare metric
        (``loss > 15``, ``nonfinite``); ``(None, op, constant)`` when it compares a computed
        operand with a constant (the evaluator's ``.operand``); else ``None``."""
        return self._node.test

    @property
    def batched(self) -> bool:
        """Whether its evaluators have a batch entry point, ``evaluator.many(batch)``."""
        return self._node.batched

    def new_evaluator(self) -> Evaluator:
        """A fresh evaluator, with its own rolling state (one per rank or scope)."""
        return self.instantiate()[0]

    def instantiate(self, rank: int = 0) -> tuple[Evaluator, EvalContext]:
        """A fresh evaluator and the context the caller updates before each call."""
        ctx = EvalContext(rank)
        return make_in_context(self._node, ctx), ctx


Compiled = Condition


def compile_condition(text: str, metric: str | None = None, rule: str | None = None) -> Condition:
    """Parse and compile ``text``; ``metric`` is the operand of shorthand forms.

    Raises :class:`~trainguard.exceptions.RuleSyntaxError` pointing at the column.
    """
    parser = _Parser(text, metric, rule)
    node = parser.parse()
    repeated = frozenset(key for key, n in parser.counts.items() if n > 1)
    if repeated:  # the same window twice (``median(r, 20) > 0 and r < 0.5 * median(r, 20)``)
        node = _Parser(text, metric, rule, repeated).parse()
    metrics = node.metrics if node.metrics or metric is None else frozenset({metric})
    return Condition(text, metrics, node)



# Register the built-in functions (nonfinite, spike, stale, mean, std, slope, drop, range...).
from trainguard.rules import functions as _functions  # noqa: E402,F401
from trainguard.rules import robust as _robust  # noqa: E402,F401

#: A call's name and tokens: two calls with the same key compute the same thing.
_CallKey = tuple[str, ...]
#: The built-in functions whose repeated top-level calls in one condition are evaluated once
#: (:func:`~trainguard.rules.nodes.shared_first`): pure functions of their operand's values,
#: each computed on every evaluation of the condition. Not ``spike``, ``jump`` or ``stale``,
#: which write the alert's baseline (the last writer's shows), nor a function registered over
#: a built-in's name (the compiler must be this one).
_SHAREABLE: dict[str, Compiler] = {
    name: FUNCTIONS[name] for name in ("mean", "std", "min", "max", "slope", "zscore",
                                       "frac_true", "median", "drop", "rise", "range",
                                       "nonfinite")}
