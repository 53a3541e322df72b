"""What the rule engine keeps per rule: life-cycle state per rank, and which rules a step's
metric keys touch (:mod:`trainguard.monitor.engine.engine` runs them).

Scopes across ranks (``scope``):

* ``rank`` (default): each rank has its own state and its own alerts.
* ``any``: each rank is evaluated on its own; one alert fires when the first rank fires (it
  names that rank) and resolves when no rank is firing any more.
* ``all``: one alert, firing while every rank the engine has seen a record from is firing; it
  names no rank. It cannot fire on the first step number seen, when the other ranks' records of
  that step may not have arrived yet.
* ``mean``: the condition is evaluated once per step on the mean, over the ranks that reported
  that step, of each metric's value. A step is evaluated when every rank seen so far has
  reported it, or when a later step arrives from any rank; a record of an older step than the
  one pending is ignored by mean rules. :meth:`Engine.finish` evaluates the last pending step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trainguard.monitor.engine.fused import fused
from trainguard.rules.dsl import EvalContext, Evaluator, many_of, with_many
from trainguard.rules.loader import CompiledRule
from trainguard.rules.models import SEVERITY_ORDER

__all__ = ["BATCH_MIN", "Entry", "Index", "MeanStep", "RuleState", "applies", "new_state"]


@dataclass(slots=True)
class RuleState:
    """Life-cycle state of one rule for one rank (Prometheus style: pending, firing)."""

    evaluator: Evaluator
    context: EvalContext
    entry: Entry
    evaluations: int = 0
    #: Records that carried the rule's metrics but gave no known result (a window still
    #: filling, a NaN operand): ``warmup`` counts them with the known ones, so it runs while
    #: windows fill instead of after.
    unknown: int = 0
    consecutive: int = 0
    firing: bool = False
    false_while_firing: int = 0
    quiet_until_step: int = -1
    fired_at_step: int | None = None
    notified_at_step: int = 0
    #: Whether a function of the evaluator reads the context (else it is not updated per step).
    live_context: bool = field(init=False)
    #: The entry's ``quiet_false`` and ``quiet_true``, here to save a look-up per record.
    quiet_false: bool = field(init=False)
    quiet_true: bool = field(init=False)

    def __post_init__(self) -> None:
        self.live_context = self.context.used
        self.quiet_false = self.entry.quiet_false
        self.quiet_true = self.entry.quiet_true


@dataclass(slots=True)
class Entry:
    """One rule in the engine: its states by rank, and what the per-record path reads of the
    rule, taken once (the pydantic model's fields, its enums' values)."""

    compiled: CompiledRule
    scope: str
    states: dict[int, RuleState] = field(default_factory=dict)
    firing_ranks: set[int] = field(default_factory=set)
    group_firing: bool = False
    #: A false result on a rank not firing changes nothing but two counters (every scope but
    #: ``all``, whose group can complete on another rank's change): handled inline.
    quiet_false: bool = field(init=False)
    #: Likewise a true result on a rank already firing, when the rule never re-notifies.
    quiet_true: bool = field(init=False)

    #: Evaluated a batch of records at a time when a batch is large (rules/vector.py): a
    #: per-rank rule whose evaluator has a batch entry point (``.many``).
    batched: bool = field(init=False)

    # The life cycle's parameters (lifecycle.py) and the alert's constant fields (alerting.py).
    for_: int = field(init=False)
    warmup: int = field(init=False)
    keep_firing_for: int = field(init=False)
    cooldown: int = field(init=False)
    repeat_interval: int = field(init=False)
    rule_id: str = field(init=False)
    metric: str = field(init=False)
    severity: str = field(init=False)
    severity_order: int = field(init=False)
    action: str = field(init=False)
    #: Whether the message / the recommendation has a placeholder (else no formatting).
    message_templated: bool = field(init=False)
    recommendation_templated: bool = field(init=False)
    #: Whether either template shows ``{baseline}``.
    shows_baseline: bool = field(init=False)

    def __post_init__(self) -> None:
        rule = self.compiled.rule
        self.quiet_false = self.scope != "all"
        self.quiet_true = self.scope != "all" and not rule.repeat_interval
        self.batched = self.scope == "rank" and self.compiled.condition.batched
        self.for_, self.warmup = rule.for_, rule.warmup
        self.keep_firing_for, self.cooldown = rule.keep_firing_for, rule.cooldown
        self.repeat_interval = rule.repeat_interval
        self.rule_id, self.metric = rule.id, rule.metric
        self.severity, self.action = rule.severity.value, rule.action.value
        self.severity_order = SEVERITY_ORDER[self.severity]
        self.message_templated = "{" in rule.message or "}" in rule.message
        self.recommendation_templated = ("{" in rule.recommendation
                                         or "}" in rule.recommendation)
        self.shows_baseline = "baseline" in rule.message + rule.recommendation


@dataclass(slots=True)
class MeanStep:
    """The records of one step being gathered for the ``mean`` scope."""

    step: int = -1
    time: float | None = None
    ranks: set[int] = field(default_factory=set)
    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def new_state(entry: Entry, rank: int) -> RuleState:
    """Fresh state of ``entry`` on ``rank``."""
    condition = entry.compiled.condition
    evaluator, context = condition.instantiate(rank)
    state = RuleState(evaluator, context, entry)
    test = condition.test
    if test is not None and entry.scope in ("rank", "any"):
        name, op, c = test
        operand = None if name is not None else getattr(evaluator, "operand", None)
        evaluate = None if name is None and operand is None else fused(state, name, op, c,
                                                                        operand)
        if evaluate is not None:
            many = many_of(evaluator)
            state.evaluator = evaluate if many is None else with_many(evaluate, many)
    return state


#: A rank's share of a batch worth evaluating with arrays: below it, the per-record closures
#: are cheaper than numpy's fixed cost per call (measured: they break even at ~10-30 records).
BATCH_MIN = 32


@dataclass(slots=True)
class Index:
    """Which entries a step's metric keys touch; one for all entries, one for those that are
    evaluated per record while the batched ones wait for the end of a large batch."""

    by_metric: dict[str, list[Entry]] = field(default_factory=dict)
    always: list[Entry] = field(default_factory=list)
    #: Metric keys of a step (in the record's order) -> the entries they touch: trainers log
    #: the same keys every step, so the de-duplicated list is built once per key set.
    cache: dict[tuple[str, ...], list[Entry]] = field(default_factory=dict)
    #: rank -> metric keys of a step (the name alone for a one-metric step) -> the states of
    #: the entries they touch on that rank, so a record's path does no per-rule look-up.
    slots: dict[int, dict[str | tuple[str, ...], list[RuleState]]] = field(default_factory=dict)

    def add(self, entry: Entry) -> None:
        if entry.compiled.condition.always:
            self.always.append(entry)
        else:
            for name in entry.compiled.condition.metrics:
                self.by_metric.setdefault(name, []).append(entry)

    def touched(self, key: tuple[str, ...]) -> list[Entry]:
        """The entries a step with these metric keys evaluates, in order, each once."""
        touched = self.cache.get(key)
        if touched is not None:
            return touched
        touched = list(self.always)
        seen = {id(e) for e in touched}
        for name in key:
            for entry in self.by_metric.get(name, ()):
                if id(entry) not in seen:
                    seen.add(id(entry))
                    touched.append(entry)
        if len(self.cache) >= 1024:  # a stream whose key sets keep changing: stay bounded
            self.cache.clear()
        self.cache[key] = touched
        return touched

    def states(self, rank: int, key: str | tuple[str, ...]) -> list[RuleState]:
        """The states of the entries a step of ``rank`` with these metric keys evaluates (each
        created on first use), kept for the rank's next steps with the same keys."""
        by_key = self.slots.get(rank)
        if by_key is None:
            by_key = self.slots[rank] = {}
        elif len(by_key) >= 1024:  # as ``cache``: keys that keep changing stay bounded
            by_key.clear()
        out = []
        for entry in self.touched((key,) if isinstance(key, str) else key):
            state = entry.states.get(rank)
            if state is None:
                state = entry.states[rank] = new_state(entry, rank)
            out.append(state)
        by_key[key] = out
        return out


def applies(compiled: CompiledRule, trainer: str | None) -> bool:
    trainers = compiled.rule.trainers
    return trainer is None or "any" in trainers or trainer in trainers
