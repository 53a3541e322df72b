"""The monitor loop: sources -> parse -> normalize -> rules -> alerts -> actions.

Everything impure is passed in (sources, sinks, stopper); the loop itself only moves records
between them, counts what it skipped and where, and decides the verdict. A blind monitor is
never healthy: a source it cannot read makes the verdict ``degraded``.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trainguard.events import Record
from trainguard.monitor.checkpoint import Checkpointer
from trainguard.monitor.engine.alerts import Alert, AlertSink
from trainguard.monitor.engine.engine import Engine
from trainguard.monitor.engine.ranks import StragglerScores
from trainguard.monitor.ingest.gather import (
    Counters,
    LineParser,
    SkipExample,
    StepGathering,
    json_line_parser,
)
from trainguard.monitor.ingest.gpu import GPU_KIND
from trainguard.monitor.ingest.metric_steps import MetricSteps
from trainguard.monitor.ingest.normalize import FieldMap
from trainguard.monitor.ingest.sources import DirectorySource, FileSource, Source
from trainguard.monitor.sinks.record import Recorder
from trainguard.monitor.step_columns import StepColumns, step_columns
from trainguard.rules.loader import CompiledRule
from trainguard.rules.models import SEVERITY_ORDER

if TYPE_CHECKING:  # psutil comes with it: not for a monitor that never signals a process
    from trainguard.monitor.act.actions import Stopper

__all__ = ["EXIT_ALERT", "EXIT_CLEAN", "EXIT_DEGRADED", "LineParser", "Monitor", "SkipExample",
           "Verdict", "json_line_parser"]

EXIT_CLEAN = 0
EXIT_DEGRADED = 1
EXIT_ALERT = 2
_HIGH = SEVERITY_ORDER["high"]
#: Fewer step records than this fraction of the lines read (at least FEW_EVENTS_MIN_LINES of
#: them) is said in the verdict: most of the input was not understood.
FEW_EVENTS_FRACTION = 0.1
FEW_EVENTS_MIN_LINES = 20
#: Names of unread metrics the verdict lists; the count says the rest.
UNREAD_LISTED = 8
#: Step alignment across ranks (Monitor._aligned): a rank this many steps behind the newest
#: is not waited for, and no record is held longer than this many seconds.
ALIGN_LAG_STEPS = 256
ALIGN_HOLD_SECONDS = 2.0


def _step_rank(record: tuple[int, int, dict[str, float], float | None]) -> tuple[int, int]:
    return record[1], record[0]


@dataclass(slots=True)
class Verdict:
    """The outcome of a monitoring session, and the exit code that says it to CI."""

    exit_code: int
    alerts: list[Alert]
    problems: list[str]
    events: int
    records: int
    skips: Counter[str]
    skip_examples: list[SkipExample]
    #: What was seen, said even when the verdict is clean: few events for the lines read,
    #: metrics no loaded rule reads, nothing judged at all (see :meth:`Monitor.verdict`).
    notes: list[str] = field(default_factory=list)
    #: Lines read from every stream.
    lines: int = 0
    #: Whether any loaded rule evaluated any value: False means nothing could be judged, and
    #: the verdict is ``degraded`` (exit 1), never clean.
    judged: bool = True

    @property
    def status(self) -> str:
        """``alert``, ``degraded`` or ``clean``."""
        return {EXIT_ALERT: "alert", EXIT_DEGRADED: "degraded"}.get(self.exit_code, "clean")


#: Allocations (less deallocations) of tracked objects between young collections while the
#: monitor runs; Python's default is 700.
YOUNG_COLLECTION_THRESHOLD = 50_000


@contextmanager
def young_collections_deferred() -> Iterator[None]:
    """Run the block with the garbage collector's young generation collected every
    :data:`YOUNG_COLLECTION_THRESHOLD` allocations instead of every 700.

    The monitor's records, dicts and alerts hold no reference cycles and are freed by their
    reference counts; but a batch holds thousands of records at once, and at 700 the collector
    kept scanning them and promoting them to older generations, whose collections then scan
    every long-lived object: 0.82 s of a 3.2 s read of a million one-metric steps, 0.12 s of
    2 s at ten metrics a step (0.14 and 0.02 s now). Cyclic garbage, which only a collection
    frees, waits for at most that many allocations. The threshold is put back afterwards.
    """
    young, *older = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_COLLECTION_THRESHOLD), *older)
    try:
        yield
    finally:
        gc.set_threshold(young, *older)


class Monitor(StepGathering):
    """Moves lines from a source through the rules, and alerts to the sinks and the stopper."""

    def __init__(
        self,
        source: Source,
        rules: Sequence[CompiledRule],
        *,
        field_map: FieldMap | None = None,
        sinks: Sequence[AlertSink] = (),
        stopper: Stopper | None = None,
        parser: LineParser = json_line_parser,
        on_problem: Callable[[str], None] | None = None,
        recorder: Recorder | None = None,
        checkpointer: Checkpointer | None = None,
        wait: Callable[[float], object] | None = None,
        trainer_rules: Callable[[set[str]], bool] | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.source = source
        self.engine = Engine(rules)
        self.stragglers = StragglerScores()
        self._step_time_keys = frozenset(self.stragglers.keys)
        self._observed_ranks: set[int] = set()
        #: The (mapped) metric keys of each rank's first record; with the last records, what
        #: the verdict says about metrics no rule reads (no per-record cost).
        self._first_keys: dict[int, tuple[str, ...]] = {}
        #: Records held for step alignment across ranks (see _aligned), each rank's latest
        #: step, and since when the oldest held record waits.
        self._held: list[tuple[int, int, dict[str, float], float | None]] = []
        self._rank_high: dict[int, int] = {}
        self._held_since = 0.0
        #: A batch verdict over the whole input (--once): alerts an earlier session already
        #: delivered are in this verdict too (not delivered again).
        self.batch = False
        #: Whether the verdict says what was not judged (off for ``convert``, which has no rules).
        self.judging = True
        #: More reasons the verdict is degraded (a stop that cannot be written...).
        self.problem_sources: list[Callable[[], list[str]]] = []
        #: Auto-selection: called with the keys seen so far until it returns True (it detected
        #: the trainer and gave the engine its pack); see session.TrainerPackSelector.
        self._trainer_rules = trainer_rules
        self._keys_seen: set[str] = set()
        self._detect_budget = 50
        self.field_map = field_map or FieldMap()
        self._apply_field_map = self.field_map.apply
        self.sinks = list(sinks)
        self.stopper = stopper
        self.parser = parser
        self.alerts: list[Alert] = []
        self.counters = Counters()
        self._pending: dict[tuple[str, int], Record] = {}
        #: Step records parsed in this batch, waiting for the engine (see _end_batch): rules
        #: with a batch form then run once over a rank's records, not once per record.
        self._queue: list[tuple[int, int, dict[str, float], float | None]] = []
        #: Step records completed in this batch, not yet normalized: the parser hands each
        #: one over with a bare ``list.append`` (no Python call per record; at a million
        #: one-metric steps a second the call was a third of the cost), _end_batch takes them.
        self._done: list[Record] = []
        self._evaluate: Callable[[Record], None] = self._done.append
        self.columns = True  # one-metric blocks as columns where they can (_evaluate_steps)
        self._on_problem = on_problem
        #: Problems of the session itself (a refused state folder): the verdict is degraded.
        self.session_problems: list[str] = []
        self._reported_problems: set[str] = set()
        # Restart safety (see checkpoint.py): what is evaluated is recorded, duplicates of
        # alerts raised before a restart are suppressed, and positions are saved at points
        # where nothing read is still held back.
        self.recorder = recorder
        self.checkpointer = checkpointer
        self.ledger = checkpointer.ledger if checkpointer is not None else None
        self._wait = wait
        #: Called once per loop turn (escalating a stop, watching for a hang).
        self.on_tick = on_tick
        #: rank -> (time of its last timed record, when it arrived here, monotonic): the
        #: clock of stale(N s) rules between records (see :meth:`tick_clock`).
        self._arrivals: dict[int, tuple[float, float]] = {}
        self._unstamped: dict[int, float] = {}  # rank -> record time, since the last stamp
        self._next_clock_tick = 0.0
        #: The last step record of each rank, for stop follow-up and the postmortem.
        self.last_records: dict[int, Record] = {}
        #: The last GPU sample of each GPU label: where an alert on a ``gpu/`` metric happened.
        self.last_gpu_records: dict[int, Record] = {}
        #: When the last step record arrived (monotonic), and the longest gap seen between
        #: polls that brought new steps after the first two (warm-up), for hang detection.
        self.last_progress_at: float | None = None
        self.max_step_interval: float | None = None
        self._progress_polls = 0

    # -- after parsing (see gather.py) ----------------------------------------------------------

    def flush(self) -> None:
        """Evaluate steps held while waiting for more of their one-metric lines."""
        pending, self._pending = self._pending, {}
        for record in pending.values():
            self._evaluate(record)
        self._end_batch()

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
        if self._held or self.engine.cross_rank:
            return False  # records go through the step alignment (_aligned)
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
        if ((recorder is not None and write_columns is None) or self._held
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
            self._evaluate_one(self._step_record(steps, columns, start))
            start += 1
        self._drain_queue()
        if start == count:
            return True
        if self._held or self.engine.cross_rank:  # the detected trainer's pack needs them
            for i in range(start, count):
                self._evaluate(self._step_record(steps, columns, i))
            return True
        batch, step_list, values, times = columns.batch(start, count, names)
        self.counters.records += count - start
        self.last_records[rank] = self._step_record(steps, columns, count - 1)
        last_time = batch.time_list[-1]
        if last_time is None:
            last_time = batch.time_list.last()  # type: ignore[attr-defined]
        if last_time is not None:
            self._unstamped[rank] = last_time
        if write_columns is not None:
            write_columns(rank, steps.kind, step_list, names if isinstance(names, str)
                          else names[start:count], values, times)
        for alert in self.engine.evaluate_columns([rank] * (count - start), step_list,
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
    def _step_record(steps: MetricSteps, columns: StepColumns, i: int) -> Record:
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

    def _evaluate_held(self) -> None:
        """Evaluate the records completed so far, in the middle of a long batch."""
        self._take_done()
        self._drain_queue()

    def _drain_queue(self, release_all: bool = False) -> None:
        """Evaluate the step records queued so far, in order, and route their alerts. With
        rules across ranks and several streams, in step order across the ranks (see
        :meth:`_aligned`)."""
        if self._queue or self._held:  # held records also wait for their time bound
            queue, self._queue = self._queue, []
            if self._held or (self.engine.cross_rank and self._multi_stream()):
                queue = self._aligned(queue, release_all)
            if queue:
                for alert in self.engine.evaluate_many(queue):
                    self._route(alert)

    def _multi_stream(self) -> bool:
        return len(self.source.stats()) > 1

    def _aligned(self, queue: list[tuple[int, int, dict[str, float], float | None]],
                 release_all: bool) -> list[tuple[int, int, dict[str, float], float | None]]:
        """The records that may be evaluated now, in (step, rank) order; the rest held.

        A rule of scope ``any``, ``all`` or ``mean`` combines the ranks' results, so its
        alerts depend on the order in which their records are evaluated; and that order is the
        order of arrival: a run read whole (``--once``) brings every record of rank 0 before
        rank 1's, a run followed live interleaves them however the writes fell. So with such
        rules and several streams, a record is evaluated only once every rank has reported its
        step (the watermark: the lowest of the ranks' latest steps), in step order across the
        ranks; batch and stream then give the same alerts. A rank that has not written yet
        (fewer ranks than streams) or falls more than :data:`ALIGN_LAG_STEPS` behind is not
        waited for, and nothing is held longer than :data:`ALIGN_HOLD_SECONDS`, so a hung rank
        delays the others' alerts by that much at most."""
        held = self._held
        if not held:
            self._held_since = time.monotonic()
        held += queue
        high = self._rank_high
        for rank, step, _, _ in queue:
            if step > high.get(rank, step - 1):
                high[rank] = step
        if not high:
            return []
        top = max(high.values())
        if release_all or time.monotonic() - self._held_since > ALIGN_HOLD_SECONDS:
            mark = top
        elif len(high) < len(self.source.stats()):
            mark = top - ALIGN_LAG_STEPS  # a rank not yet seen: wait for it, boundedly
        else:
            mark = min(h for h in high.values() if h >= top - ALIGN_LAG_STEPS)
        ready = [r for r in held if r[1] <= mark]
        if not ready:
            return []
        self._held = [r for r in held if r[1] > mark]
        self._held_since = time.monotonic()
        ready.sort(key=_step_rank)  # stable: one rank's records of one step keep their order
        return ready

    def _end_batch(self) -> None:
        """The end of a batch: evaluate its records, then the scores of the steps now
        complete on every rank (see ranks.py)."""
        self._take_done()
        self._stamp_arrivals()
        self._drain_queue()
        for rank, step, derived, at in self.stragglers.scores():
            for alert in self.engine.evaluate_derived(rank, step, derived, at):
                self._route(alert)

    def _detect(self, keys: set[str]) -> None:
        """Offer the keys of the first records to the trainer-pack selector (bounded effort)."""
        assert self._trainer_rules is not None
        self._keys_seen |= keys
        self._detect_budget -= 1
        if self._trainer_rules(self._keys_seen) or self._detect_budget <= 0:
            self._trainer_rules = None
            self._keys_seen = set()

    def route(self, alert: Alert) -> None:
        """Deliver an alert raised outside the loop's own evaluation (sinks, stop, ledger)."""
        self._route(alert)

    def _route(self, alert: Alert) -> None:
        if alert.rank is not None and alert.host is None:
            # Name the node, as the rank's (or the GPU's) events said: on many nodes a global
            # rank alone sends a person to the wrong machine.
            where = (self.last_gpu_records if alert.metric.startswith("gpu/")
                     else self.last_records).get(alert.rank)
            if where is not None:
                alert.host, alert.local_rank = where.host, where.local_rank
        ledger = self.ledger
        if ledger is not None and not ledger.admit(alert):
            if self.batch:  # --once re-reads the whole run: in the verdict, not delivered
                alert.delivery = "reported by an earlier session"
                self.alerts.append(alert)
            return  # raised before a restart: already delivered
        if self.checkpointer is not None:
            # The intent first: a kill -9 during delivery leaves it journaled, and the restart
            # delivers it again (idempotently) instead of raising it a second time.
            self.checkpointer.note_intent(alert)
        self._deliver(alert)

    def redeliver(self, alerts: Sequence[Alert]) -> None:
        """Deliver alerts a killed session journaled but did not finish delivering: a sink
        that can tell (``contains``, the alerts file) is skipped when it already has one."""
        for alert in alerts:
            self._deliver(alert, again=True)

    def _deliver(self, alert: Alert, again: bool = False) -> None:
        ledger = self.ledger
        if alert.state == "firing" and alert.action == "stop":
            if ledger is not None and ledger.stop_sent(alert):
                alert.delivery = "stop already sent"
            elif self.stopper is None:
                alert.delivery = "not stopped: observe-only (use --stop, --control or --pid)"
            else:
                delivered = self.stopper.stop(alert)
                alert.delivery = delivered or "stop already sent"
                if ledger is not None:
                    ledger.note_stop(alert)
        self.alerts.append(alert)
        for sink in self.sinks:
            if again and getattr(sink, "contains", None) is not None and \
                    sink.contains(alert):  # type: ignore[attr-defined]
                continue
            sink.emit(alert)
        if self.checkpointer is not None:
            self.checkpointer.note_delivered(alert)

    # -- the loop ------------------------------------------------------------------------------

    def poll_once(self) -> int:
        """Read and process whatever the source has now; return the number of lines."""
        source = self.source
        # A file source hands over blocks of lines: no object per line. Exact types only: a
        # wrapper or subclass (CompositeSource delegates attributes to its primary) may add
        # lines of its own in poll().
        if type(source) is FileSource or type(source) is DirectorySource:
            blocks = source.poll_blocks()
            n = sum(block.count for block in blocks)
            process: Callable[[Any], None] = self.process_blocks
            batch: Any = blocks
        else:
            batch = self.source.poll()
            n = len(batch)
            process = self.process
        if n:
            before = self.counters.records
            process(batch)
            self._checkpoint()
            if self.counters.records != before:
                self._progressed()
        for problem in self.source.problems() + self.output_problems():
            if problem not in self._reported_problems:
                self._reported_problems.add(problem)
                if self._on_problem is not None:
                    self._on_problem(problem)
        return n

    def output_problems(self) -> list[str]:
        """What the monitor cannot write (a full disk, a refused path): the verdict is then
        degraded, while alerts still reach the sinks that work. Sinks with a backlog retry."""
        found = list(self.session_problems)
        for part in (*self.sinks, self.checkpointer, self.recorder):
            problem = getattr(part, "problem", None)
            if problem:
                retry = getattr(part, "retry", None)
                if retry is not None:
                    retry()
                    problem = part.problem  # type: ignore[union-attr]
                if problem:
                    found.append(problem)
        return found

    def _progressed(self) -> None:
        now = time.monotonic()
        self._progress_polls += 1
        if self.last_progress_at is not None and self._progress_polls > 2:
            gap = now - self.last_progress_at
            if self.max_step_interval is None or gap > self.max_step_interval:
                self.max_step_interval = gap
        self.last_progress_at = now

    @property
    def max_step(self) -> int | None:
        """The highest step seen on any rank."""
        return max((r.step for r in self.last_records.values()), default=None)

    def run(self, *, once: bool = False, poll_interval: float = 0.05,
            stop: threading.Event | None = None) -> Verdict:
        """Follow the source until ``stop`` is set or it is exhausted; with ``once``, read what
        is there and return. Idle steps held for more one-metric lines are evaluated once the
        source has been quiet for a poll."""
        stop = stop or threading.Event()
        with young_collections_deferred():
            while not stop.is_set():
                n = self.poll_once()
                if self.on_tick is not None:
                    self.on_tick()
                if n:
                    continue
                self.flush()
                self._checkpoint()
                if self.source.exhausted:
                    break
                # A pipe is read to its end even with once: its lines are still on the way.
                if once and not getattr(self.source, "streaming", False):
                    break
                self.tick_clock()
                (self._wait or stop.wait)(poll_interval)
        self.flush()
        self._drain_queue(release_all=True)
        for alert in self.engine.finish():
            self._route(alert)
        self._checkpoint(force=True)
        return self.verdict()

    def tick_clock(self, interval: float = 1.0) -> None:
        """While the source is quiet, evaluate the time-driven rules (``stale(600s)``) of each
        rank, at most once per ``interval``: a stream that went silent brings no record to
        carry the check, so, as Prometheus evaluates on an interval, the monitor ticks.

        The time given to a rank is its last record's time plus the time that has passed here
        since that record arrived, so a clock skew between hosts, or a finished run read
        long after, cannot make a stream look stalled before it has been silent that long.
        """
        now = time.monotonic()
        if now < self._next_clock_tick:
            return
        self._next_clock_tick = now + interval
        for rank, (record_time, arrived) in list(self._arrivals.items()):
            step = self.last_records[rank].step
            for alert in self.engine.tick(rank, step, record_time + (now - arrived)):
                self._route(alert)

    def _checkpoint(self, force: bool = False) -> None:
        """Save positions when due and nothing read is held back; under a steady stream of
        one-metric lines a step is always pending, so after ten intervals flush it anyway."""
        cp = self.checkpointer
        if cp is None:
            return
        if self._pending or self._held:  # read, not yet evaluated: a restart must re-read it
            if not (force or cp.due(10.0)):
                return
            self.flush()
            self._drain_queue(release_all=True)
        if force or cp.due():
            cp.commit()

    def verdict(self) -> Verdict:
        """The exit code and what led to it. A session that judged nothing (no events, or no
        loaded rule reads any metric it saw) is degraded, never clean."""
        problems = list(self.source.problems()) + self.output_problems()
        for more in self.problem_sources:
            problems += more()
        c = self.counters
        lines = sum(st.lines for st in self.source.stats().values())
        notes, judged = self._what_was_seen(lines) if self.judging else ([], True)
        if not judged:
            problems.append(notes[-1])
        restored = self.ledger.max_severity if self.ledger is not None else -1
        if max(self.engine.max_severity, restored) >= _HIGH:
            code = EXIT_ALERT
        elif problems:
            code = EXIT_DEGRADED
        else:
            code = EXIT_CLEAN
        return Verdict(code, list(self.alerts), problems, c.events, c.records, c.skips,
                       list(c.examples), notes, lines, judged)

    def _what_was_seen(self, lines: int) -> tuple[list[str], bool]:
        """Notes on what the session saw, and whether anything was judged (the last note then
        says why not)."""
        c = self.counters
        notes: list[str] = []
        if c.records == 0 and not self.engine.judged():  # GPU samples alone can be judged
            skipped = sum(c.skips.values())
            how = (f"{lines} lines read" if lines else "no line read") + (
                f", {skipped} skipped" if skipped else "")
            notes.append(f"nothing judged: no metric events ({how}); is the format right? "
                         "(--regex for trainer stdout; a run directory reads *.jsonl)")
            return notes, False
        if lines >= FEW_EVENTS_MIN_LINES and c.records < FEW_EVENTS_FRACTION * lines:
            notes.append(f"few events: {c.records} steps from {lines} lines; the rest was not "
                         "understood (prose, or a format that needs --regex)")
        seen = {key for keys in self._first_keys.values() for key in keys}
        for record in self.last_records.values():
            seen.update(self._apply_field_map(record.metrics))
        rules = self.engine.rules
        read = {name for r in rules for name in r.condition.metrics}
        unread = sorted(k for k in seen if k not in read)
        judged = self.engine.judged()
        if unread:
            listed = ", ".join(unread[:UNREAD_LISTED]) + (
                f" and {len(unread) - UNREAD_LISTED} more" if len(unread) > UNREAD_LISTED else "")
            notes.append(f"{len(unread)} of {len(seen)} metrics are read by no loaded rule: "
                         f"{listed}")
        if not judged:
            notes.append(f"nothing judged: {c.records} steps read, but none of their metrics is "
                         f"read by the {len(rules)} loaded rules; load a pack for this trainer "
                         "(--rules) or map its names (--field-map)")
        return notes, judged
