"""The monitor loop: sources -> parse -> normalize -> rules -> alerts -> actions.

Everything impure is passed in (sources, sinks, stopper); the loop itself only moves records
between them, counts what it skipped and where, and decides the verdict. A blind monitor is
never healthy: a source it cannot read makes the verdict ``degraded``.

The loop's parts, one module each: parsing and grouping lines into steps
(:mod:`.ingest.gather`), completed steps to the engine's queue (:mod:`.intake`), step alignment
across ranks (:mod:`.alignment`), the verdict (:mod:`.verdict`), the collector while it runs
(:mod:`.collector`). Their public names are importable from here too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from trainguard.events import Record
from trainguard.monitor.alignment import (
    ALIGN_HOLD_SECONDS,
    ALIGN_LAG_STEPS,
    QueuedRecord,
    StepAlignment,
)
from trainguard.monitor.checkpoint import Checkpointer
from trainguard.monitor.collector import YOUNG_COLLECTION_THRESHOLD, young_collections_deferred
from trainguard.monitor.engine.alerts import Alert, AlertSink
from trainguard.monitor.engine.engine import Engine
from trainguard.monitor.engine.ranks import StragglerScores
from trainguard.monitor.ingest.gather import (
    Counters,
    LineParser,
    SkipExample,
    json_line_parser,
)
from trainguard.monitor.ingest.normalize import FieldMap
from trainguard.monitor.ingest.sources import DirectorySource, FileSource, Source
from trainguard.monitor.intake import StepIntake
from trainguard.monitor.sinks.record import Recorder
from trainguard.monitor.verdict import (
    EXIT_ALERT,
    EXIT_CLEAN,
    EXIT_DEGRADED,
    FEW_EVENTS_FRACTION,
    FEW_EVENTS_MIN_LINES,
    UNREAD_LISTED,
    ConfigReport,
    Verdict,
    what_was_seen,
)
from trainguard.rules.loader import CompiledRule
from trainguard.rules.models import SEVERITY_ORDER

if TYPE_CHECKING:  # psutil comes with it: not for a monitor that never signals a process
    from trainguard.monitor.act.actions import Stopper

__all__ = ["ALIGN_HOLD_SECONDS", "ALIGN_LAG_STEPS", "EXIT_ALERT", "EXIT_CLEAN", "EXIT_DEGRADED",
           "FEW_EVENTS_FRACTION", "FEW_EVENTS_MIN_LINES", "LineParser", "Monitor", "SkipExample",
           "UNREAD_LISTED", "Verdict", "YOUNG_COLLECTION_THRESHOLD", "json_line_parser",
           "young_collections_deferred"]

_HIGH = SEVERITY_ORDER["high"]


class Monitor(StepIntake):
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
        config_report: Callable[[], ConfigReport | None] | None = None,
    ) -> None:
        self.source = source
        self.engine = Engine(rules)
        self.stragglers = StragglerScores()
        self._step_time_keys = frozenset(self.stragglers.keys)
        self._observed_ranks: set[int] = set()
        #: The (mapped) metric keys of each rank's first record; with the last records, what
        #: the verdict says about metrics no rule reads (no per-record cost).
        self._first_keys: dict[int, tuple[str, ...]] = {}
        #: Records held for step alignment across ranks (see alignment.py).
        self._alignment = StepAlignment()
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
        #: What the pack selector found of the trainer's config (monitor/packs.py), for the
        #: verdict; asked at the end, after intake has dropped _trainer_rules.
        self.config_report = config_report
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
        self._block_names: dict[str, str] = {}
        #: Step records parsed in this batch, waiting for the engine (see _end_batch): rules
        #: with a batch form then run once over a rank's records, not once per record.
        self._queue: list[QueuedRecord] = []
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

    def _evaluate_held(self) -> None:
        """Evaluate the records completed so far, in the middle of a long batch."""
        self._take_done()
        self._drain_queue()

    def _drain_queue(self, release_all: bool = False) -> None:
        """Evaluate the step records queued so far, in order, and route their alerts. With
        rules across ranks and several streams, in step order across the ranks (see
        :mod:`.alignment`)."""
        alignment = self._alignment
        if self._queue or alignment.held:  # held records also wait for their time bound
            queue, self._queue = self._queue, []
            if alignment.held or (self.engine.cross_rank and self._multi_stream()):
                queue = alignment.aligned(queue, release_all, len(self.source.stats()))
            if queue:
                for alert in self.engine.evaluate_many(queue):
                    self._route(alert)

    def _multi_stream(self) -> bool:
        return len(self.source.stats()) > 1

        """The end of a batch: evaluate its records, then the scores of the steps now
        complete on every rank (see ranks.py)."""
        self._take_done()
        self._stamp_arrivals()
        self._drain_queue()
        for rank, step, derived, at in self.stragglers.scores():
            for alert in self.engine.evaluate_derived(rank, step, derived, at):
                self._route(alert)

    def _end_batch(self) -> None:
        """The end of a batch: evaluate its records, then the scores of the steps now
        complete on every rank (see ranks.py)."""
        self._take_done()
        self._stamp_arrivals()
        self._drain_queue()
        for rank, step, derived, at in self.stragglers.scores():
            for alert in self.engine.evaluate_derived(rank, step, derived, at):
                self._route(alert)

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
        # Read, not yet evaluated: a restart must re-read it.
        if self._pending or self._alignment.held:
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
        config = self.config_report() if self.config_report is not None else None
        notes, judged = (what_was_seen(c, lines, self.engine, self._metrics_seen(), config)
                         if self.judging else ([], True))
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

    def _metrics_seen(self) -> set[str]:
        """The (mapped) metric keys of each rank's first and last records."""
        seen = {key for keys in self._first_keys.values() for key in keys}
        for record in self.last_records.values():
            seen.update(self._apply_field_map(record.metrics))
        return seen
