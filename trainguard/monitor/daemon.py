"""The monitor loop: sources -> parse -> normalize -> rules -> alerts -> actions.

Everything impure is passed in (sources, sinks, stopper); the loop itself only moves records
between them, counts what it skipped and where, and decides the verdict. A blind monitor is
never healthy: a source it cannot read makes the verdict ``degraded``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import count, repeat
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from msgspec import UNSET, UnsetType

from trainguard.events import (
    MAX_EXACT_INT,
    ParseSkip,
    Record,
    _fast_loads,  # the same decoder, for the fast path
    parse_line,
    record_from_object,
)
from trainguard.monitor.alerts import Alert, AlertSink
from trainguard.monitor.checkpoint import Checkpointer
from trainguard.monitor.engine import Engine
from trainguard.monitor.gpu import GPU_KIND
from trainguard.monitor.normalize import FieldMap
from trainguard.monitor.ranks import StragglerScores
from trainguard.monitor.record import Recorder
from trainguard.monitor.sources import Block, DirectorySource, FileSource, Line, Source
from trainguard.rules.loader import CompiledRule
from trainguard.rules.models import SEVERITY_ORDER

if TYPE_CHECKING:  # psutil comes with it: not for a monitor that never signals a process
    from trainguard.monitor.actions import Stopper

__all__ = ["EXIT_ALERT", "EXIT_CLEAN", "EXIT_DEGRADED", "LineParser", "Monitor", "SkipExample",
           "Verdict"]

EXIT_CLEAN = 0
EXIT_DEGRADED = 1
EXIT_ALERT = 2
_HIGH = SEVERITY_ORDER["high"]


#: A step the fast paths take; any other goes to events.record_from_object, which says why.
_Step = Annotated[int, msgspec.Meta(ge=-MAX_EXACT_INT, le=MAX_EXACT_INT)]


class _OneMetric(msgspec.Struct, gc=False):
    """The one-metric-per-line form, as the fast path takes it: a typed decoder checks the
    types in C (``bool`` is no ``int`` or ``float`` to it, an ``int`` value becomes a
    ``float``), which is what the checks on an ``orjson`` dict did, at twice the speed.
    ``metrics`` is only there to tell a step line, which is not this form, from it. Not tracked
    by the garbage collector (``gc=False``): decoded JSON holds no cycles, and a million of
    them a second would otherwise keep triggering collections."""

    name: str
    value: float
    step: _Step
    rank: int = 0
    time: float | None = None
    kind: Any = "train"
    metrics: Any = UNSET


_decode_one_metric = msgspec.json.Decoder(_OneMetric).decode
_NOT_ONE_METRIC = (msgspec.ValidationError, msgspec.DecodeError)


class _BlockLine(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """One line of a block decoded in one call (:meth:`Monitor._gather_block`): the
    one-metric form as :class:`_OneMetric` takes it (``name`` and ``value`` set, ``metrics``
    absent or null), or the step form with every metric a number (``metrics`` set; ``name``
    and ``value`` are then ignored, as :func:`~trainguard.events.record_from_object` does).

    Only the envelope's keys (``events.RESERVED_KEYS``): a key of any other name, a string
    metric such as ``"NaN"``, a float step, a string rank... fail the whole block's decode at
    that line, and the block is read line by line. A file of another form (a flat log dict)
    thus fails at its first line, not after a whole block decoded for nothing. A line that
    decodes but is neither form (no ``name``, or no ``value``) is read on its own."""

    step: _Step
    name: str | UnsetType = UNSET
    value: float | UnsetType = UNSET
    rank: int = 0
    time: float | None = None
    kind: Any = "train"
    metrics: dict[str, float] | None = None
    run_id: Any = None


#: ``decode_lines`` reads a run of JSON values apart by any whitespace; the block path checks
#: that its lines are exactly those values before it takes them (see _gather_block).
_decode_block = msgspec.json.Decoder(_BlockLine).decode_lines
MAX_SKIP_EXAMPLES = 5
#: Completed step records a batch holds before they are evaluated anyway: a poll of a run
#: directory reads a chunk of every file, and its records must not all wait at once.
MAX_HELD_RECORDS = 16_384

#: Turns one line into a record or a counted skip. The default reads canonical JSONL.
LineParser = Callable[[Line], "Record | ParseSkip | None"]


def json_line_parser(line: Line) -> Record | ParseSkip | None:
    """The default parser: canonical JSONL in any accepted form; blank lines are ignored."""
    data = line.data
    if not data.strip():
        return None
    return parse_line(data)


@dataclass(frozen=True, slots=True)
class SkipExample:
    """Where a line was skipped and why, for the user to go and look."""

    stream: str
    line: int
    reason: str
    detail: str


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

    @property
    def status(self) -> str:
        """``alert``, ``degraded`` or ``clean``."""
        return {EXIT_ALERT: "alert", EXIT_DEGRADED: "degraded"}.get(self.exit_code, "clean")


@dataclass(slots=True)
class _Counters:
    events: int = 0
    records: int = 0
    skips: Counter[str] = field(default_factory=Counter)
    examples: list[SkipExample] = field(default_factory=list)


class Monitor:
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
        self.counters = _Counters()
        self._pending: dict[tuple[str, int], Record] = {}
        #: Step records parsed in this batch, waiting for the engine (see _end_batch): rules
        #: with a batch form then run once over a rank's records, not once per record.
        self._queue: list[tuple[int, int, dict[str, float], float | None]] = []
        #: Step records completed in this batch, not yet normalized: the parser hands each
        #: one over with a bare ``list.append`` (no Python call per record; at a million
        #: one-metric steps a second the call was a third of the cost), _end_batch takes them.
        self._done: list[Record] = []
        self._evaluate: Callable[[Record], None] = self._done.append
        self._on_problem = on_problem
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
        #: When the last step record arrived (monotonic), and the longest gap seen between
        #: polls that brought new steps after the first two (warm-up), for hang detection.
        self.last_progress_at: float | None = None
        self.max_step_interval: float | None = None
        self._progress_polls = 0

    # -- the per-line path -------------------------------------------------------------------

    def process(self, lines: Sequence[Line]) -> None:
        """Parse, normalize and evaluate ``lines``; route any alerts."""
        self._gather(lines)
        self._stamp_arrivals()
        self._evaluate_cross_rank()

    def process_blocks(self, blocks: Sequence[Block]) -> None:
        """:meth:`process` for blocks of consecutive lines (what a file source reads)."""
        gather = self._gather
        parser = self.parser
        # Where the per-line fast path would decode the lines (see _gather), a block that
        # comes with its bytes is decoded in one call (about half the cost a line).
        whole = parser is json_line_parser or getattr(parser, "json_first", False)
        for block in blocks:
            if whole and block.raw is not None and self._gather_block(block):
                pass
            else:
                stream, first, lines, _ = block
                # zip reuses its result tuple when the loop unpacks it: no object per line.
                gather(zip(repeat(stream), count(first), lines))
            if len(self._done) >= MAX_HELD_RECORDS:  # a poll of many files: bound the memory
                self._take_done()
                self._drain_queue()
        self._stamp_arrivals()
        self._evaluate_cross_rank()

    def _gather_block(self, block: Block) -> bool:
        """Decode ``block`` in one call and gather its lines as :meth:`_gather` would, with
        the same records, counts and skips; False (nothing done) when the block does not
        decode as a run of canonical lines, to be read line by line.

        ``decode_lines`` reads values apart by any whitespace, so a value spread over two
        lines, or two values on one line, would not map to lines. So a block is taken only
        when every newline but the last stands between ``}`` and ``{`` and there are as many
        values as lines: such a ``}`` closes a top-level value (a string cannot hold a
        newline, and a nested value needs a ``,`` or a closing bracket after it, not ``{``),
        so every line ends a value and holds at least one; as many as lines, one each,
        decoded as a per-line decode would decode it.
        """
        stream, first, lines, raw = block
        assert raw is not None
        n = len(lines)
        try:
            decoded = _decode_block(raw)
        except _NOT_ONE_METRIC:  # a line of another form, or garbage
            return False
        if len(decoded) != n or raw.count(b"}\n{") != n - 1:
            return False
        pending = self._pending
        evaluate = self._evaluate
        # As in _gather: the step being gathered for the rank of the previous line, also held
        # in ``pending`` under ``cur_key``; one stream throughout.
        cur: Record | None = None
        cur_metrics: dict[str, float] = {}
        cur_step = 0
        cur_rank = 0
        cur_key: tuple[str, int] = (stream, 0)
        events = 0  # one-metric lines taken (one event each)
        others = 0  # other lines: their index in the block is events + others
        for one in decoded:
            metrics = one.metrics
            if metrics is None:
                name, value = one.name, one.value
                if name is UNSET or value is UNSET:
                    # Neither form (a flat dict of no metric, a name without its value): the
                    # general parser reads this line and says what it is.
                    i = events + others
                    others += 1
                    cur = None
                    self._gather(((stream, first + i, lines[i]),))
                    continue
                step, rank = one.step, one.rank
                events += 1
                if cur is not None and rank == cur_rank:
                    if step == cur_step:
                        cur_metrics[name] = value
                        continue
                    del pending[cur_key]
                    evaluate(cur)
                else:
                    key = (stream, rank)
                    held = pending.get(key)
                    if held is not None:
                        if held.step == step:
                            held.metrics[name] = value
                            cur, cur_metrics, cur_step, cur_rank, cur_key = (
                                held, held.metrics, step, rank, key)
                            continue
                        del pending[key]
                        evaluate(held)
                    cur_rank, cur_key = rank, key
                t = one.time
                if t is not None and type(t) is not float and type(t) is not int:
                    t = None
                kind = one.kind
                cur_metrics = {name: value}
                cur_step = step
                cur = pending[cur_key] = Record(step, cur_metrics, t, rank,
                                                kind if type(kind) is str else "train", True)
                continue
            # A step line: a complete record, taken as the general path of _gather takes it.
            others += 1
            cur = None
            self.counters.events += len(metrics)
            step, rank = one.step, one.rank
            key = (stream, rank)
            held = pending.get(key)
            if held is not None:
                del pending[key]
                if held.step == step:
                    held.metrics.update(metrics)
                    evaluate(held)
                    continue
                evaluate(held)
            t = one.time
            if t is not None and type(t) is not float and type(t) is not int:
                t = None
            kind = one.kind
            evaluate(Record(step, metrics, t, rank, kind if type(kind) is str else "train"))
        self.counters.events += events
        return True

    def _gather(self, lines: Iterable[tuple[str, int, bytes]]) -> None:
        """Parse ``lines`` (``(stream, number, data)``) and evaluate every step they complete;
        steps that may get more one-metric lines are held in ``_pending``."""
        parser = self.parser
        # With the default JSON parser, decode here and take the one-metric-per-line form on a
        # fast path that builds one Record per step, not per line. Results are the same as
        # through ``parser``; only cheaper (the JSON decode dominates what is left).
        # A parser that reads canonical JSON first (the stdout auto parser) shares the fast path;
        # whatever is not canonical JSON still goes to it.
        fast = parser is json_line_parser or getattr(parser, "json_first", False)
        loads = _fast_loads
        decode_one, not_one = _decode_one_metric, _NOT_ONE_METRIC
        counters = self.counters
        pending = self._pending
        evaluate = self._evaluate
        # The step being gathered for the stream and rank of the previous line (always also
        # held in ``pending`` under ``cur_key``, so flush order is as if there were no
        # shortcut): consecutive lines of one stream and rank then skip building the
        # (stream, rank) key and its lookup. Reset whenever the general path below may have
        # evaluated or replaced a pending record.
        cur: Record | None = None
        cur_metrics: dict[str, float] = {}
        cur_step = 0
        cur_stream: str | None = None
        cur_rank = 0
        cur_key: tuple[str, int] = ("", 0)
        events = 0
        for stream, number, data in lines:
            if fast:
                try:
                    one = decode_one(data)
                except not_one:  # any other form, or garbage: decoded in general below
                    one = None
                if one is not None and one.metrics is UNSET:
                    name, value, step, rank = one.name, one.value, one.step, one.rank
                    events += 1
                    if cur is not None and stream is cur_stream and rank == cur_rank:
                        if step == cur_step:
                            cur_metrics[name] = value
                            continue
                        # The next step of the same stream and rank: this one is done.
                        del pending[cur_key]
                        evaluate(cur)
                    else:
                        key = (stream, rank)
                        held = pending.get(key)
                        if held is not None:
                            if held.step == step:
                                held.metrics[name] = value
                                cur, cur_metrics, cur_step = held, held.metrics, step
                                cur_stream, cur_rank, cur_key = stream, rank, key
                                continue
                            del pending[key]
                            evaluate(held)
                        cur_stream, cur_rank, cur_key = stream, rank, key
                    t = one.time
                    if t is not None and type(t) is not float and type(t) is not int:
                        t = None
                    kind = one.kind
                    cur_metrics = {name: value}
                    cur_step = step
                    cur = pending[cur_key] = Record(step, cur_metrics, t, rank,
                                                    kind if type(kind) is str else "train", True)
                    continue
                try:
                    obj = loads(data)
                except ValueError:  # bare NaN, blank line, garbage: the general parser says
                    result = parser(Line(stream, number, data))
                else:
                    result = record_from_object(obj)
                    if type(result) is ParseSkip and parser is not json_line_parser:
                        result = parser(Line(stream, number, data))
            else:
                result = parser(Line(stream, number, data))
            if result is None:
                continue
            if type(result) is ParseSkip:
                self._skip(Line(stream, number, data), result)
                continue
            cur = None
            record: Record = result  # type: ignore[assignment]
            counters.events += len(record.metrics)
            key = (stream, record.rank)
            held = pending.get(key)
            if held is not None:
                if held.step == record.step:
                    held.metrics.update(record.metrics)
                    if record.partial:
                        continue
                    del pending[key]
                    evaluate(held)
                    continue
                del pending[key]
                evaluate(held)
            if record.partial:
                pending[key] = Record(record.step, dict(record.metrics), record.time,
                                      record.rank, record.kind, True)
            else:
                evaluate(record)
        counters.events += events

    def flush(self) -> None:
        """Evaluate steps held while waiting for more of their one-metric lines."""
        pending, self._pending = self._pending, {}
        for record in pending.values():
            self._evaluate(record)
        self._stamp_arrivals()
        self._evaluate_cross_rank()

    def _skip(self, line: Line, skip: ParseSkip) -> None:
        counters = self.counters
        counters.skips[skip.reason] += 1
        if len(counters.examples) < MAX_SKIP_EXAMPLES:
            counters.examples.append(SkipExample(line.stream, line.number, skip.reason,
                                                 skip.detail))

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
        identity = not self.field_map.mapping and not self.field_map.aliases
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
                continue  # evaluated, but no training step: see _evaluate_one
            steps += 1
            last[rank] = record
            if record.time is not None:
                unstamped[rank] = record.time
            if rank not in observed or not step_time_keys.isdisjoint(metrics):
                observed.add(rank)
                self.stragglers.observe(rank, record.step, metrics, record.time)
        self.counters.records += steps

    def _columns(self, done: list[Record]) -> bool:
        """The common case of :meth:`_take_done` without a loop per record: training steps of
        one rank already seen, no field map to apply, no step-time key for the straggler
        scores. Evaluates them as columns and returns True, or returns False."""
        ranks = [r.rank for r in done]
        rank = ranks[0]
        if (ranks.count(rank) != len(ranks) or rank not in self._observed_ranks
                or any(r.kind == GPU_KIND for r in done)):
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

    def _evaluate_one(self, record: Record) -> None:
        rank = record.rank
        metrics = record.metrics
        # A GPU sample (monitor/gpu.py) is evaluated by the rules but is no training step: it
        # must not count as progress, feed trainer detection or straggler scores, or stand as
        # a rank's last step.
        step_record = record.kind != GPU_KIND
        if step_record:
            self.counters.records += 1
            self.last_records[rank] = record
            if record.time is not None:
                # Stamped with the clock once per batch (_stamp_arrivals), not once per record.
                self._unstamped[rank] = record.time
        mapped = self._apply_field_map(metrics)
        if self.recorder is not None:
            self.recorder.write(Record(record.step, mapped, record.time, rank, record.kind))
        if self._trainer_rules is not None and step_record:
            # Records before this one are evaluated by the rules chosen before it.
            self._drain_queue()
            self._detect(metrics.keys() | mapped.keys())
        self._queue.append((rank, record.step, mapped, record.time))
        # Straggler scores read only step-time keys; a record of a known rank without one
        # would change nothing there, so the call is skipped.
        if step_record and (rank not in self._observed_ranks
                            or not self._step_time_keys.isdisjoint(mapped)):
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

    def _drain_queue(self) -> None:
        """Evaluate the step records queued so far, in order, and route their alerts."""
        if self._queue:
            queue, self._queue = self._queue, []
            for alert in self.engine.evaluate_many(queue):
                self._route(alert)

    def _evaluate_cross_rank(self) -> None:
        """The end of a batch: evaluate its records, then the scores of the steps now
        complete on every rank (see ranks.py)."""
        self._take_done()
        self._stamp_arrivals()
        self._drain_queue()
        for rank, step, derived, at in self.stragglers.scores():
            for alert in self.engine.evaluate(rank, step, derived, at):
                self._route(alert)

    def _detect(self, keys: set[str]) -> None:
        """Offer the keys of the first records to the trainer-pack selector (bounded effort)."""
        assert self._trainer_rules is not None
        self._keys_seen |= keys
        self._detect_budget -= 1
        if self._trainer_rules(self._keys_seen) or self._detect_budget <= 0:
            self._trainer_rules = None
            self._keys_seen = set()

    def _route(self, alert: Alert) -> None:
        ledger = self.ledger
        if ledger is not None and not ledger.admit(alert):
            return  # raised before a restart: already delivered
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
            sink.emit(alert)
        if self.checkpointer is not None:
            self.checkpointer.save_ledger()

    # -- the loop ------------------------------------------------------------------------------

    def poll_once(self) -> int:
        """Read and process whatever the source has now; return the number of lines."""
        source = self.source
        # A file source hands over blocks of lines: no object per line. Exact types only: a
        # wrapper or subclass (CompositeSource delegates attributes to its primary) may add
        # lines of its own in poll().
        if type(source) is FileSource or type(source) is DirectorySource:
            blocks = source.poll_blocks()
            n = sum(len(block.lines) for block in blocks)
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
        for problem in self.source.problems():
            if problem not in self._reported_problems:
                self._reported_problems.add(problem)
                if self._on_problem is not None:
                    self._on_problem(problem)
        return n

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
        if self._pending:
            if not (force or cp.due(10.0)):
                return
            self.flush()
        if force or cp.due():
            cp.commit()

    def verdict(self) -> Verdict:
        """The exit code and what led to it."""
        problems = self.source.problems()
        restored = self.ledger.max_severity if self.ledger is not None else -1
        if max(self.engine.max_severity, restored) >= _HIGH:
            code = EXIT_ALERT
        elif problems:
            code = EXIT_DEGRADED
        else:
            code = EXIT_CLEAN
        c = self.counters
        return Verdict(code, list(self.alerts), problems, c.events, c.records, c.skips,
                       list(c.examples))
