"""Step records to the engine's queue: what the loop keeps of each completed step.

The second half of the monitor's intake (the first, parsing and grouping into steps, is
:mod:`trainguard.monitor.ingest.gather`): completed records are normalized by the field map
and queued for the engine; each rank's last record and time, the straggler scores' first
samples, the trainer detection and the recorder are kept on the way. The common cases skip
the per-record loop: one rank's records as columns (:meth:`StepIntake._columns`), and blocks of
one-metric steps read as columns with no record at all (:meth:`StepIntake._evaluate_steps`,
:mod:`trainguard.monitor.step_columns`). :class:`~trainguard.monitor.daemon.Monitor` is a
:class:`StepIntake`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from trainguard.events import Record
from trainguard.monitor.alignment import QueuedRecord, StepAlignment
from trainguard.monitor.engine.alerts import Alert
from trainguard.monitor.engine.engine import Engine
from trainguard.monitor.engine.ranks import StragglerScores
from trainguard.monitor.ingest.gather import StepGathering
from trainguard.monitor.ingest.gpu import GPU_KIND
from trainguard.monitor.ingest.metric_steps import MetricSteps
from trainguard.monitor.ingest.normalize import FieldMap
from trainguard.monitor.sinks.record import Recorder
from trainguard.monitor.step_columns import StepRows, last_known, step_columns

__all__ = ["StepIntake"]


class StepIntake(StepGathering):
    """Normalizes completed step records and queues them for the engine (the subclass sets the
    attributes below, evaluates the queue in :meth:`_drain_queue` and delivers alerts in
    :meth:`_route`)."""

    engine: Engine
    stragglers: StragglerScores
    field_map: FieldMap
    _apply_field_map: Callable[[dict[str, float]], dict[str, float]]
    recorder: Recorder | None
    _alignment: StepAlignment
    #: Step records normalized in this batch, waiting for the engine.
    _queue: list[QueuedRecord]
    _observed_ranks: set[int]
    _step_time_keys: frozenset[str]
    _first_keys: dict[int, tuple[str, ...]]
    last_records: dict[int, Record]
    last_gpu_records: dict[int, Record]
    _unstamped: dict[int, float]
    _arrivals: dict[int, tuple[float, float]]
    _trainer_rules: Callable[[set[str]], bool] | None
    _keys_seen: set[str]
    _detect_budget: int

    def _drain_queue(self, release_all: bool = False) -> None:
        """Evaluate the queued records and route their alerts."""
        raise NotImplementedError

    def _route(self, alert: Alert) -> None:
        """Deliver an alert."""
        raise NotImplementedError

    def _take_done(self) -> None:
        """Normalize the records completed in this batch and queue them for the engine: the
        general path record by record while a recorder or the trainer detection needs each
        one, else one tight loop."""
        done, self._done = self._done, []
        self._evaluate = self._done.append
        if not done:
            return
        if self._trainer_rules is not None or self.recorder is not None:
            for record in done:
                self._evaluate_one(record)
            return
        apply = self._apply_field_map
        identity = self.field_map.identity
        last, unstamped = self.last_records, self._unstamped
        observed, step_time_keys = self._observed_ranks, self._step_time_keys
        if identity and self._columns(done):
            return
        append = self._queue.append
        steps = 0
        for record in done:
            metrics = record.metrics if identity else apply(record.metrics)
            rank = record.rank
            append((rank, record.step, metrics, record.time))
            if record.kind == GPU_KIND:
                self.last_gpu_records[rank] = record
                continue  # evaluated, but no training step: see _evaluate_one
            steps += 1
            last[rank] = record
            if record.time is not None:
                unstamped[rank] = record.time
            if rank not in observed or not step_time_keys.isdisjoint(metrics):
                if rank not in observed:
                    self._first_keys[rank] = tuple(metrics)
                observed.add(rank)
                self.stragglers.observe(rank, record.step, metrics, record.time)
        self.counters.records += steps

    def _columns(self, done: list[Record]) -> bool:
        """The common case of :meth:`_take_done` without a loop per record: training steps of
        one rank already seen, no field map to apply, no step-time key for the straggler
        scores. Evaluates them as columns and returns True, or returns False."""
        if self._alignment.held or self.engine.cross_rank:
            return False  # records go through the step alignment (alignment.py)
        ranks = [r.rank for r in done]
        rank = ranks[0]
        if (ranks.count(rank) != len(ranks) or rank not in self._observed_ranks
                or GPU_KIND in [r.kind for r in done]):  # a list: no generator frame a record
            return False
        metrics = [r.metrics for r in done]
        keys: set[str] = set().union(*metrics)
        if not self._step_time_keys.isdisjoint(keys):
            return False
        times = [r.time for r in done]
        self.last_records[rank] = done[-1]
        for record_time in reversed(times):
            if record_time is not None:
                self._unstamped[rank] = record_time
                break
        self.counters.records += len(done)
        self._drain_queue()  # whatever came before these, first
        for alert in self.engine.evaluate_columns(ranks, [r.step for r in done], metrics,
                                                  times, keys):
            self._route(alert)
        return True

    def _evaluate_steps(self, steps: MetricSteps, count: int) -> bool:
        """The first ``count`` lines of ``steps`` (one-metric lines taken as columns), each a
        step, evaluated as one batch, with what :meth:`_take_done` keeps of records: counts,
        the rank's last record and time, the recorder's rows. False, with nothing done, when
        the records need what only the record path does (step alignment across ranks, a
        GPU sample, a field map that makes one metric two, a step-time key, a recorder
        that takes no columns) or two consecutive lines share a step."""
        recorder = self.recorder
        write_columns = getattr(recorder, "write_columns", None)
        if ((recorder is not None and write_columns is None) or self._alignment.held
                or steps.kind == GPU_KIND or self.engine.cross_rank):
            return False
        found = step_columns(steps, self._map_name)
        if found is None:
            return False
        columns, names = found
        self._take_done()  # the records completed before these are evaluated first
        self._drain_queue()
        rank = steps.rank
        start = 0
        # The trainer's detection reads records one at a time, and a rank's first record
        # starts its straggler scores: those go the record path, then the rest as columns.
        while start < count and (self._trainer_rules is not None
                                 or rank not in self._observed_ranks):
            self._evaluate_one(self._step_record(steps, start))
            start += 1
        self._drain_queue()
        if start == count:
            return True
        if self._alignment.held or self.engine.cross_rank:  # the detected trainer's pack
            for i in range(start, count):
                self._evaluate(self._step_record(steps, i))
            return True
        batch, step_ints, values, times = columns.batch(start, count, names)
        self.counters.records += count - start
        self.last_records[rank] = self._step_record(steps, count - 1)
        last_time = last_known(times)
        if last_time is not None:
            self._unstamped[rank] = last_time
        if write_columns is not None:
            write_columns(rank, steps.kind, step_ints, names if isinstance(names, str)
                          else names[start:count], values, times)
        for alert in self.engine.evaluate_columns([rank] * (count - start), StepRows(step_ints),
                                                  batch.metrics, batch.time_list,
                                                  batch.keys(), batch=batch):
            self._route(alert)
        return True

    def _map_name(self, name: str) -> str | None:
        """A metric's name through the field map, or None when it maps to other than one
        name or to a step-time key (which the straggler scores read record by record)."""
        mapped = self._apply_field_map({name: 0.0})
        if len(mapped) != 1:
            return None
        (target,) = mapped
        return None if target in self._step_time_keys else target

    @staticmethod
    def _step_record(steps: MetricSteps, i: int) -> Record:
        """Line ``i`` of ``steps`` as the record path makes it (a complete step)."""
        line = steps.lines[i]
        return Record(line.step, {line.name: line.value}, line.time, steps.rank, steps.kind,
                      False, line.host, line.local_rank)

    def _evaluate_one(self, record: Record) -> None:
        rank = record.rank
        metrics = record.metrics
        # A GPU sample (monitor/ingest/gpu.py) is evaluated by the rules but is no training step: it
        # must not count as progress, feed trainer detection or straggler scores, or stand as
        # a rank's last step.
        step_record = record.kind != GPU_KIND
        if not step_record:
            self.last_gpu_records[rank] = record
        if step_record:
            self.counters.records += 1
            self.last_records[rank] = record
            if record.time is not None:
                # Stamped with the clock once per batch (_stamp_arrivals), not once per record.
                self._unstamped[rank] = record.time
        mapped = self._apply_field_map(metrics)
        if self.recorder is not None:
            self.recorder.write(Record(record.step, mapped, record.time, rank, record.kind,
                                       False, record.host, record.local_rank))
        if self._trainer_rules is not None and step_record:
            # Records before this one are evaluated by the rules chosen before it.
            self._drain_queue()
            self._detect(metrics.keys() | mapped.keys())
        self._queue.append((rank, record.step, mapped, record.time))
        # Straggler scores read only step-time keys; a record of a known rank without one
        # would change nothing there, so the call is skipped.
        if step_record and (rank not in self._observed_ranks
                            or not self._step_time_keys.isdisjoint(mapped)):
            if rank not in self._observed_ranks:
                self._first_keys[rank] = tuple(mapped)
            self._observed_ranks.add(rank)
            self.stragglers.observe(rank, record.step, mapped, record.time)

    def _stamp_arrivals(self) -> None:
        """Note when the records of this batch arrived: the end of the batch, so the silence
        ``tick_clock`` measures is never longer than it really was."""
        if self._unstamped:
            now = time.monotonic()
            arrivals = self._arrivals
            for rank, record_time in self._unstamped.items():
                arrivals[rank] = (record_time, now)
            self._unstamped.clear()

    def _detect(self, keys: set[str]) -> None:
        """Offer the keys of the first records to the trainer-pack selector (bounded effort)."""
        assert self._trainer_rules is not None
        self._keys_seen |= keys
        self._detect_budget -= 1
        if self._trainer_rules(self._keys_seen) or self._detect_budget <= 0:
            self._trainer_rules = None
            self._keys_seen = set()
