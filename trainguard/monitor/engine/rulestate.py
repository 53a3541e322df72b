"""What the rule engine keeps per rule: life-cycle state per rank, and which rules a step's
metric keys touch (:mod:`trainguard.monitor.engine.engine` runs them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from trainguard.rules.dsl import EvalContext, Evaluator
from trainguard.rules.loader import CompiledRule

__all__ = ["BATCH_MIN", "Entry", "Index", "MeanStep", "RuleState", "applies", "new_state"]


@dataclass(slots=True)
class RuleState:
    """Life-cycle state of one rule for one rank (Prometheus style: pending, firing)."""

    evaluator: Evaluator
    context: EvalContext
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

    def __post_init__(self) -> None:
        self.live_context = self.context.used


@dataclass(slots=True)
class Entry:
    compiled: CompiledRule
    scope: str
    states: dict[int, RuleState] = field(default_factory=dict)
    firing_ranks: set[int] = field(default_factory=set)
    group_firing: bool = False
    #: A false result on a rank not firing changes nothing but two counters (every scope but
    #: ``all``, whose group can complete on another rank's change): handled inline.
    quiet_inline: bool = field(init=False)

    #: Evaluated a batch of records at a time when a batch is large (rules/vector.py): a
    #: per-rank rule whose evaluator has a batch entry point (``.many``).
    batched: bool = field(init=False)

    def __post_init__(self) -> None:
        self.quiet_inline = self.scope != "all"
        self.batched = self.scope == "rank" and self.compiled.condition.batched


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
    evaluator, context = entry.compiled.condition.instantiate(rank)
    return RuleState(evaluator, context)


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


def applies(compiled: CompiledRule, trainer: str | None) -> bool:
    trainers = compiled.rule.trainers
    return trainer is None or "any" in trainers or trainer in trainers
