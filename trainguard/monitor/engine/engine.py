"""The rule engine: rules in, alerts out, pure.

No files, clocks, signals or threads: the engine is a function of the records it is fed, so a
recorded JSONL replayed through it gives the same alerts every time. Rules run once per step
record (not once per metric event) and only when the step carries a metric they read (or, for
conditions such as ``stale(N)``, on every record of the rank).

Two ways in, one result: :meth:`Engine.evaluate` takes one record and runs each rule's
closure; :meth:`Engine.evaluate_many` / :meth:`Engine.evaluate_columns` take a batch, and for a
rank with at least :data:`BATCH_MIN` records in it run each per-rank rule whose evaluator has a
batch entry point once over all of them (:mod:`trainguard.rules.vector`, numpy, on the same
state), then step the life cycle only through the records where the condition is true or the
rule is firing. The alerts are those of record-by-record evaluation, in record order.

The life cycle of one rule on one rank (``warmup``, ``for``, ``keep_firing_for``,
``cooldown``, ``repeat_interval``) is described, and stepped, in
:mod:`trainguard.monitor.engine.lifecycle`.

Scopes across ranks (``rank``, ``any``, ``all``, ``mean``): see
:mod:`trainguard.monitor.engine.rulestate`, which keeps their state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from trainguard.monitor.engine.alerting import build_alert, format_value
from trainguard.monitor.engine.alerts import Alert
from trainguard.monitor.engine.fused import HANDLED
from trainguard.monitor.engine.lifecycle import FIRING, REPEAT, RESOLVED, advance, walk
from trainguard.monitor.engine.rulestate import (
    BATCH_MIN,
    Entry,
    Index,
    MeanStep,
    RuleState,
    applies,
    new_state,
)
from trainguard.rules.loader import CompiledRule

if TYPE_CHECKING:
    from trainguard.rules.vector import Batch

__all__ = ["BATCH_MIN", "Engine", "RuleState", "format_value", "MEAN_RANK"]

#: The state key (and context rank) of a rule evaluated on the mean of the ranks.
MEAN_RANK = -1
_CONTEXT = object()  # _alert(): take the baseline from the evaluator's context


class Engine:
    """Evaluates compiled rules over step records and yields alerts as they fire and resolve.

    ``trainer``: the trainer kind (``dpo``, ``grpo``...). ``None`` applies every rule; once a
    kind is known, a rule applies only if its ``trainers`` lists ``any`` or that kind.
    """

    def __init__(self, rules: Iterable[CompiledRule], trainer: str | None = None) -> None:
        self._all: list[Entry] = []
        self.trainer = trainer
        self.max_severity: int = -1
        self.alerts_fired = 0
        self._known_ranks: set[int] = set()
        self._first_step: int | None = None
        self._mean = MeanStep()
        self.add_rules(rules)

    # -- configuration (not on the hot path) ----------------------------------------------------

    def add_rules(self, rules: Iterable[CompiledRule]) -> None:
        """Add rules; one with the id of a rule already here replaces it (with fresh state)."""
        new = {r.rule.id: r for r in rules}
        self._all = [e for e in self._all if e.compiled.rule.id not in new]
        self._all.extend(Entry(r, r.rule.scope) for r in new.values())
        self._reindex()

    def set_trainer(self, kind: str | None) -> None:
        """Tell the engine which trainer it is watching; rules for other trainers stop applying."""
        self.trainer = kind.lower() if kind else None
        self._reindex()

    def _reindex(self) -> None:
        # Index: metric name -> entries reading it, so a step only touches rules it can feed.
        self._entries = [e for e in self._all if applies(e.compiled, self.trainer)]
        self._index = Index()
        self._scalar_index = Index()  # without the batched entries
        self._mean_entries: list[Entry] = []
        self._batched: list[Entry] = []
        self._derived_index = Index()  # records derived by the monitor (straggler scores)
        for entry in self._entries:
            if entry.scope == "mean":
                self._mean_entries.append(entry)
                continue
            self._index.add(entry)
            for name in entry.compiled.condition.metrics:
                # Only the rules that read a derived metric see its record, ``always`` rules
                # (stale) included: such a record is no new step of its rank, and it arrives
                # after the rank's later steps, so a rule of every record would see time run
                # backwards (a stale alert resolving "at step 1").
                self._derived_index.by_metric.setdefault(name, []).append(entry)
            if entry.batched:
                self._batched.append(entry)
            else:
                self._scalar_index.add(entry)

    @property
    def rules(self) -> list[CompiledRule]:
        """The rules this engine evaluates now (after trainer filtering)."""
        return [e.compiled for e in self._entries]

    def judged(self) -> bool:
        """Whether any rule gave a known result on any record (a session that judged nothing
        must not be called clean)."""
        return any(state.evaluations for entry in self._entries
                   for state in entry.states.values()) or bool(self.alerts_fired)

    # -- restart without re-notifying (T19) -----------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The alert state worth keeping across a daemon restart, as JSON-safe data.

        Only the life cycle is kept (which rule is firing on which rank, since when, when it
        last notified, cooldowns), not rolling windows: those refill from the next records. The
        caller persists it (atomically) with its read offsets; the engine does no I/O.
        """
        rules: dict[str, Any] = {}
        for entry in self._all:
            states = {str(rank): [st.firing, st.fired_at_step, st.notified_at_step,
                                  st.quiet_until_step, st.evaluations]
                      for rank, st in entry.states.items()
                      if st.firing or st.quiet_until_step >= 0}
            if states or entry.group_firing:
                rules[entry.compiled.rule.id] = {"states": states,
                                                 "group_firing": entry.group_firing}
        return {"version": 1, "rules": rules, "ranks": sorted(self._known_ranks),
                "first_step": self._first_step}

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Resume from :meth:`snapshot`: a rule firing before the restart stays firing without
        a second notification, and resolves exactly once. Unknown rules are ignored."""
        if snapshot.get("version") != 1:
            return
        by_id = {e.compiled.rule.id: e for e in self._all}
        for rule_id, saved in snapshot.get("rules", {}).items():
            entry = by_id.get(rule_id)
            if entry is None:
                continue
            for rank_text, values in saved.get("states", {}).items():
                rank = int(rank_text)
                firing, fired_at, notified_at, quiet_until, evaluations = values
                state = entry.states[rank] = new_state(entry, rank)
                state.evaluations, state.firing = evaluations, bool(firing)
                state.quiet_until_step, state.fired_at_step = quiet_until, fired_at
                state.notified_at_step = notified_at
                if firing:
                    entry.firing_ranks.add(rank)
            entry.group_firing = bool(saved.get("group_firing"))
        self._known_ranks.update(snapshot.get("ranks", ()))
        self._reindex()  # the per-rank lists of states (Index.states) hold the replaced ones
        if self._first_step is None:
            self._first_step = snapshot.get("first_step")

    # -- the per-record path ------------------------------------------------------------------

    def evaluate(self, rank: int, step: int, metrics: Mapping[str, float],
                 time: float | None = None) -> list[Alert]:
        """Feed one step record of one rank; return the alerts that fired or resolved."""
        return self._evaluate_record(rank, step, metrics, time, self._index)

    def evaluate_derived(self, rank: int, step: int, metrics: Mapping[str, float],
                         time: float | None = None) -> list[Alert]:
        """Feed a record the monitor derived for ``rank`` (``ranks/straggler_score``): only
        the per-rank rules that read one of its metrics see it; no ``mean`` gathering."""
        return self._evaluate_record(rank, step, metrics, time, self._derived_index,
                                     mean=False)

    @property
    def cross_rank(self) -> bool:
        """Whether a rule of scope ``any``, ``all`` or ``mean`` applies: their results depend
        on the order in which the ranks' records arrive (see Monitor's step alignment)."""
        return any(e.scope != "rank" for e in self._entries)

    def evaluate_many(self, records: Sequence[tuple[int, int, Mapping[str, float],
                                                    float | None]]) -> list[Alert]:
        """Feed step records ``(rank, step, metrics, time)`` in order; return the alerts that
        :meth:`evaluate` on each in turn would, in record order (on one record, those of rules
        evaluated per record come first). See :meth:`evaluate_columns`."""
        if not records:
            return []
        ranks, steps, metrics, times = (list(c) for c in zip(*records, strict=True))
        return self.evaluate_columns(ranks, steps, metrics, times)

    def evaluate_columns(self, ranks: Sequence[int], steps: Sequence[int],
                         metrics: Sequence[Mapping[str, float]],
                         times: Sequence[float | None],
                         keys: set[str] | None = None, batch: Batch | None = None) -> list[Alert]:
        """:meth:`evaluate_many` with the records given as columns (``keys``: every key of
        their metrics, if the caller has them; ``batch``: the records, all of one rank, as a
        :class:`~trainguard.rules.vector.Batch` the caller built from its own columns).

        A rank with at least :data:`BATCH_MIN` records here has its rules that have a batch
        form evaluated once over all of them (rules/vector.py), which is what makes reading a
        backlog or a finished run cheap; the rest go record by record.
        """
        n = len(steps)
        by_rank: dict[int, list[int] | None] = {}
        if self._batched and n >= BATCH_MIN:
            rank_set = set(ranks)
            if len(rank_set) == 1:  # one file per rank: a poll's records are usually one rank's
                by_rank[ranks[0]] = None  # all of them
            else:
                rows_of: dict[int, list[int]] = {}
                for i, rank in enumerate(ranks):
                    rows = rows_of.get(rank)
                    if rows is None:
                        rows_of[rank] = [i]
                    else:
                        rows.append(i)
                by_rank = {r: rows for r, rows in rows_of.items() if len(rows) >= BATCH_MIN}
        evaluate_record = self._evaluate_record
        full, scalar = self._index, self._scalar_index
        if not by_rank:
            out: list[Alert] = []
            for i in range(n):
                out.extend(evaluate_record(ranks[i], steps[i], metrics[i], times[i], full))
            return out
        tagged: list[tuple[int, int, Alert]] = []
        covered = sum(n if rows is None else len(rows) for rows in by_rank.values()) == n
        if scalar.by_metric or scalar.always or self._mean_entries or not covered:
            for i in range(n):
                rank = ranks[i]
                alerts = evaluate_record(rank, steps[i], metrics[i], times[i],
                                         scalar if rank in by_rank else full)
                if alerts:
                    tagged.extend((i, 0, a) for a in alerts)
        else:  # every rule waits for the batch: only the bookkeeping of evaluate() is left
            if self._first_step is None:
                self._first_step = steps[0]
            self._known_ranks.update(by_rank)
        from trainguard.rules.vector import Batch  # numpy: only once a large batch comes

        prepared = batch
        for rank, rows in by_rank.items():
            if rows is None:
                batch = prepared if prepared is not None else Batch(steps, times, metrics, keys)
            else:
                batch = Batch([steps[i] for i in rows], [times[i] for i in rows],
                              [metrics[i] for i in rows])
            for entry in self._batched:
                self._batch_entry(entry, rank, batch, rows, tagged)
        if len(tagged) > 1:
            tagged.sort(key=lambda t: t[0])  # stable: a record's alerts keep their order...
            records = [t[0] for t in tagged]
            if len(set(records)) < len(records):  # ...which is evaluate()'s only if one each
                tagged.sort(key=self._record_order(metrics))
        return [a for _, _, a in tagged]

    def _record_order(self, metrics: Sequence[Mapping[str, float]]) -> Any:
        """Sort key putting the alerts of a batch in the order :meth:`evaluate` gives: by
        record, then by the rule's place among those the record touches (``mean`` rules,
        gathered first, before all). Computed only for records that raised alerts."""
        places: dict[tuple[str, ...], dict[str, int]] = {}

        def key(tag: tuple[int, int, Alert]) -> tuple[int, int]:
            i = tag[0]
            keys = tuple(metrics[i])
            place = places.get(keys)
            if place is None:
                place = places[keys] = {e.compiled.rule.id: n for n, e in
                                        enumerate(self._index.touched(keys))}
            return i, place.get(tag[2].rule, -1)
        return key

    def _batch_entry(self, entry: Entry, rank: int, batch: Any, index: list[int] | None,
                     out: list[tuple[int, int, Alert]]) -> None:
        """One rule over a batch of one rank's records: the condition on every record it
        would be evaluated on, then the life cycle (lifecycle.walk: record by record only
        where something can change): a rule quiet, or firing, over the whole batch costs a
        few array operations. Appends ``(record index, 1, alert)`` to ``out``; ``index``
        gives the record index of each row of the batch (``None``: the row's own)."""
        import numpy as np

        cond = entry.compiled.condition
        if not cond.always:  # as evaluate(): only the records that carry one of its metrics
            if cond.metrics.isdisjoint(batch.keys()):
                return  # none does (a pack's rules for other trainers' keys): no arrays built
            carry = batch.present_any(cond.metrics)
            if not carry.all():
                rows = np.flatnonzero(carry)
                if not len(rows):
                    return
                batch = batch.take(rows)
                index = rows.tolist() if index is None else [index[i] for i in rows.tolist()]
        state = entry.states.get(rank)
        if state is None:
            state = entry.states[rank] = new_state(entry, rank)
        values, known = state.evaluator.many(batch)  # type: ignore[attr-defined]
        rows = np.flatnonzero(known)
        if not len(rows):
            state.unknown += batch.n
            return
        baseline = batch.baseline

        def changed(j: int, step: int, change: int) -> None:
            base = baseline[j] if baseline is not None else math.nan
            out.append((j if index is None else index[j], 1, self._alert(
                entry, state, rank, step, batch.metrics[j], batch.time_list[j], change,
                None if math.isnan(base) else float(base))))
        # NaN is true
        walk(np, entry, state, rows, values[rows] != 0, batch.steps, batch.n, changed)

    def _evaluate_record(self, rank: int, step: int, metrics: Mapping[str, float],
                         time: float | None, index: Index, mean: bool = True) -> list[Alert]:
        """:meth:`evaluate` over the entries of ``index``."""
        alerts: list[Alert] = []
        if rank not in self._known_ranks:
            self._known_ranks.add(rank)
            if self._first_step is None:
                self._first_step = step
        if self._mean_entries and mean:
            self._gather_mean(rank, step, metrics, time, alerts)
        key: str | tuple[str, ...]
        if len(metrics) == 1:  # one-metric events: the name is the key, no tuple to build
            (key,) = metrics
        else:
            key = tuple(metrics)
        by_key = index.slots.get(rank)
        states = by_key.get(key) if by_key is not None else None
        if states is None:
            states = index.states(rank, key)
        # _step_entry's body, inlined for the common cases: this loop runs for every rule a
        # step touches, and a call per rule (plus updating contexts no function reads) was
        # most of its cost. A result that changes nothing but counters (false while not
        # firing, true while firing with no re-notification) stays here.
        for state in states:
            if state.live_context:
                ctx = state.context
                ctx.step = step
                ctx.time = time
                ctx.baseline = None
            result = state.evaluator(metrics)
            if result is HANDLED:  # a fused evaluator (fused.py) did the quiet part itself
                continue
            if result is None:
                state.unknown += 1  # neither fires nor resets a pending alert; warmup counts it
            elif result:  # NaN counts as true
                if state.firing and state.quiet_true:
                    state.evaluations += 1
                    state.false_while_firing = 0
                else:
                    self._transition(state.entry, state, rank, step, metrics, time, result,
                                     alerts)
            elif state.firing or not state.quiet_false:
                self._transition(state.entry, state, rank, step, metrics, time, result, alerts)
            else:
                state.evaluations += 1
                state.consecutive = 0
        return alerts

    def finish(self) -> list[Alert]:
        """End of input: evaluate the step still gathered for ``mean`` rules, if any."""
        alerts: list[Alert] = []
        if self._mean_entries and self._mean.ranks:
            self._flush_mean(alerts)
        return alerts

    def _gather_mean(self, rank: int, step: int, metrics: Mapping[str, float],
                     time: float | None, alerts: list[Alert]) -> None:
        pending = self._mean
        if step < pending.step:
            return  # a late record of a step already evaluated
        if step > pending.step:
            if pending.ranks:
                self._flush_mean(alerts)
            pending = self._mean = MeanStep(step, time)
        sums, counts = pending.sums, pending.counts
        for name, value in metrics.items():
            sums[name] = sums.get(name, 0.0) + value
            counts[name] = counts.get(name, 0) + 1
        pending.ranks.add(rank)
        if pending.time is None:
            pending.time = time
        if pending.ranks >= self._known_ranks:
            self._flush_mean(alerts)
            self._mean = MeanStep(step + 1)  # the next records of this step are late ones

    def _flush_mean(self, alerts: list[Alert]) -> None:
        pending = self._mean
        means = {k: v / pending.counts[k] for k, v in pending.sums.items()}
        pending.ranks = set()
        for entry in self._mean_entries:
            cond = entry.compiled.condition
            if cond.always or not cond.metrics.isdisjoint(means):
                self._step_entry(entry, MEAN_RANK, pending.step, means, pending.time, alerts)

    def tick(self, rank: int, step: int, time: float) -> list[Alert]:
        """Evaluate the rules that run on every record (``stale``) for ``rank`` at ``time``,
        with no new metrics: the check of a stream that went silent. Pure: the caller brings
        the clock. ``stale(N)`` in steps has no new step here and stays unknown."""
        alerts: list[Alert] = []
        for entry in self._index.always:
            if rank in entry.states:
                self._step_entry(entry, rank, step, {}, time, alerts)
        return alerts

    def _step_entry(self, entry: Entry, rank: int, step: int, metrics: Mapping[str, float],
                    time: float | None, alerts: list[Alert]) -> None:
        """Evaluate one rule on one record (the ``mean`` scope's path; :meth:`evaluate` inlines
        the same steps)."""
        state = entry.states.get(rank)
        if state is None:
            state = entry.states[rank] = new_state(entry, rank)
        if state.live_context:
            ctx = state.context
            ctx.step = step
            ctx.time = time
            ctx.baseline = None
        result = state.evaluator(metrics)
        if result is None:
            state.unknown += 1  # neither fires nor resets a pending alert; warmup counts it
            return
        if not result and not state.firing and entry.quiet_false:
            state.evaluations += 1  # the common quiet case, inlined: advance() would do this
            state.consecutive = 0
            return
        self._transition(entry, state, rank, step, metrics, time, result, alerts)

    def _transition(self, entry: Entry, state: RuleState, rank: int, step: int,
                    metrics: Mapping[str, float], time: float | None, result: float,
                    alerts: list[Alert]) -> None:
        """Advance the life cycle by a known result that may change something; route alerts."""
        change = advance(entry, state, step, result)
        scope = entry.scope
        if not change and scope != "all":  # all: the group can complete without a change here
            return
        if scope == "rank" or scope == "mean":
            alerts.append(self._alert(entry, state, rank if scope == "rank" else None, step,
                                      metrics, time, change))
            return
        # any / all: one alert for the group, from the per-rank states
        if change == FIRING:
            entry.firing_ranks.add(rank)
        elif change == RESOLVED:
            entry.firing_ranks.discard(rank)
        if scope == "any":
            group = bool(entry.firing_ranks)
        else:
            group = (len(entry.firing_ranks) >= len(self._known_ranks)
                     and step != self._first_step)
        if change == REPEAT and group:
            alerts.append(self._alert(entry, state, None if scope == "all" else rank, step,
                                      metrics, time, REPEAT))
        elif group != entry.group_firing:
            entry.group_firing = group
            alerts.append(self._alert(entry, state, rank if scope == "any" else None, step,
                                      metrics, time, FIRING if group else RESOLVED))

    def _alert(self, entry: Entry, state: RuleState, rank: int | None, step: int,
               metrics: Mapping[str, float], time: float | None, change: int,
               baseline: float | None | object = _CONTEXT) -> Alert:
        """The alert of a transition, counted; ``baseline`` is the evaluator's context's
        unless the batch path, which has no per-record context, says it."""
        if change == FIRING:
            self.alerts_fired += 1
            if entry.severity_order > self.max_severity:
                self.max_severity = entry.severity_order
        return build_alert(entry, state, rank, step, metrics, time, change,
                           state.context.baseline if baseline is _CONTEXT
                           else baseline)  # type: ignore[arg-type]
