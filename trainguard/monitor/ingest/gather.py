"""Lines to step records: the monitor's parsing and step grouping, with its fast paths.

A line is decoded (canonical JSON on fast paths that ``msgspec`` types check in C; anything
else through the parser, which says why a line is skipped), and one-metric lines of one rank and
step are gathered into one step record, held in ``pending`` until a line of another step shows
the step is complete. Completed records are handed to ``_evaluate`` (a bare ``list.append`` in
the monitor) and evaluated at the end of the batch. :class:`Monitor
<trainguard.monitor.daemon.Monitor>` is a :class:`StepGathering`; the results are the same on
every path (``tests/test_normalize_fast_path.py``, ``tests/test_block_decode.py``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import count, repeat
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, UnsetType

from trainguard.events import (
    MAX_EXACT_INT,
    MAX_RANKS,
    ParseSkip,
    Record,
    _fast_loads,  # the same decoder, for the fast path
    parse_line,
    record_from_object,
)
from trainguard.monitor.ingest.tail import Block, Line

__all__ = ["Counters", "LineParser", "MAX_HELD_RECORDS", "MAX_SKIP_EXAMPLES", "SkipExample",
           "StepGathering", "json_line_parser"]


#: A step the fast paths take; any other goes to events.record_from_object, which says why.
_Step = Annotated[int, msgspec.Meta(ge=-MAX_EXACT_INT, le=MAX_EXACT_INT)]
#: Likewise a rank (a string, float, null or negative rank is refused there as bad_rank); the
#: cap on how large a rank may be is checked where a new rank's step starts.
_Rank = Annotated[int, msgspec.Meta(ge=0)]


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
    rank: _Rank = 0
    time: float | datetime | None = None  # an ISO-8601 string decodes to a datetime, in C
    kind: Any = "train"
    metrics: Any = UNSET
    host: str | None = None
    local_rank: int | None = None


_decode_one_metric = msgspec.json.Decoder(_OneMetric).decode
#: A line msgspec cannot take: another form, garbage, or nesting past its depth limit (a
#: 1,000-deep ``{"a":{"a":...`` raises RecursionError in msgspec; the general parser then
#: reads the line and says what it is, a counted skip).
_NOT_ONE_METRIC = (msgspec.ValidationError, msgspec.DecodeError, RecursionError)


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
    rank: _Rank = 0
    time: float | datetime | None = None
    kind: Any = "train"
    metrics: dict[str, float] | None = None
    run_id: Any = None
    host: str | None = None
    local_rank: int | None = None


class _MetricLine(msgspec.Struct, gc=False, forbid_unknown_fields=True, kw_only=True):
    """A line of a block of one-metric lines only, the common block of that form: the
    one-metric form with ``name`` and ``value`` required and no ``metrics`` key. Any other line
    fails the decode, and the block is decoded again as :class:`_BlockLine` (a file of steps
    fails at its first line). Its gathering loop (:meth:`StepGathering._gather_metric_lines`)
    then checks nothing per line but its step and rank. Fields in the order the canonical
    line writes them, which the decoder tries first (2% fewer instructions than another)."""

    time: float | None = None
    step: _Step
    name: str
    value: float
    rank: _Rank = 0
    host: str | None = None
    local_rank: int | None = None
    kind: Any = "train"
    run_id: Any = None


class _MetricLineISOTime(msgspec.Struct, gc=False, forbid_unknown_fields=True, kw_only=True):
    """:class:`_MetricLine` with an ISO-8601 ``time`` (decoded to a datetime in C, converted
    to epoch seconds before gathering): a block whose times are strings fails the plain decode
    at its first line and is decoded again as this, not line by line."""

    time: float | datetime | None = None
    step: _Step
    name: str
    value: float
    rank: int = 0
    host: str | None = None
    local_rank: int | None = None
    kind: Any = "train"
    run_id: Any = None


def _timestamp(moment: Any) -> float | None:
    """The epoch seconds of a decoded ISO time (UTC when it names no offset), as
    :func:`trainguard.events.iso_timestamp` reads the same text on the general path."""
    if type(moment) is not datetime:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return float(moment.timestamp())


#: ``decode_lines`` reads a run of JSON values apart by any whitespace; the block path checks
#: that its lines are exactly those values before it takes them (see _gather_block).
_decode_block = msgspec.json.Decoder(_BlockLine).decode_lines
_decode_metric_block = msgspec.json.Decoder(_MetricLine).decode_lines
_decode_metric_block_iso = msgspec.json.Decoder(_MetricLineISOTime).decode_lines
MAX_SKIP_EXAMPLES = 5
#: Completed step records a batch holds before they are evaluated anyway: a poll of a run
#: directory reads a chunk of every file, and its records must not all wait at once.
MAX_HELD_RECORDS = 16_384

#: Turns one line into a record or a counted skip. The default reads canonical JSONL.
LineParser = Callable[[Line], "Record | ParseSkip | list[Record | ParseSkip] | None"]


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
class Counters:
    """What was read: metric events, step records, and skips by reason with examples."""

    events: int = 0
    records: int = 0
    skips: Counter[str] = field(default_factory=Counter)
    examples: list[SkipExample] = field(default_factory=list)


class StepGathering:
    """Parses lines and blocks into step records (the first half of the monitor's work).

    The subclass sets the attributes below and says what ends a batch (:meth:`_end_batch`) and
    how held records are evaluated before it ends (:meth:`_evaluate_held`).
    """

    parser: LineParser
    counters: Counters
    #: (stream, rank) -> the step being gathered from one-metric lines.
    _pending: dict[tuple[str, int], Record]
    #: Completed records of this batch; ``_evaluate`` appends to it.
    _done: list[Record]
    _evaluate: Callable[[Record], None]
    #: Ranks are ``0 <= rank < max_ranks``; a line of another rank is a counted ``bad_rank``.
    max_ranks: int = MAX_RANKS

    def _end_batch(self) -> None:
        """Evaluate what the batch completed."""
        raise NotImplementedError

    def _evaluate_held(self) -> None:
        """Evaluate the completed records held so far, before the batch ends."""
        raise NotImplementedError

    def process(self, lines: Sequence[Line]) -> None:
        """Parse, normalize and evaluate ``lines``; route any alerts."""
        self._gather(lines)
        self._end_batch()

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
                # zip reuses its result tuple when the loop unpacks it: no object per line.
                gather(zip(repeat(block.stream), count(block.first), block.lines))
            if len(self._done) >= MAX_HELD_RECORDS:  # a poll of many files: bound the memory
                self._evaluate_held()
        self._end_batch()

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
        stream, first, raw, n = block.stream, block.first, block.raw, block.count
        assert raw is not None
        metric_lines: list[Any] | None
        try:
            metric_lines = _decode_metric_block(raw)
        except _NOT_ONE_METRIC:  # a line of another form: decoded again below
            metric_lines = None
            if b'"time":"' in raw[:256] or b'"time": "' in raw[:256]:  # ISO-8601 times?
                try:
                    metric_lines = _decode_metric_block_iso(raw)
                except _NOT_ONE_METRIC:
                    pass
                else:
                    for iso in metric_lines:
                        t = iso.time
                        if t is not None and type(t) is not float:
                            iso.time = _timestamp(t)
        if metric_lines is not None:
            if len(metric_lines) != n or raw.count(b"}\n{") != n - 1:
                return False
            self._gather_metric_lines(stream, first, metric_lines)
            return True
        try:
            decoded = _decode_block(raw)
        except _NOT_ONE_METRIC:  # a line of another form, or garbage
            return False
        if len(decoded) != n or raw.count(b"}\n{") != n - 1:
            return False
        pending = self._pending
        evaluate = self._evaluate
        for i, one in enumerate(decoded):
            metrics = one.metrics
            if metrics is None:
                # A one-metric line among step lines (a block of one-metric lines alone was
                # taken above), or a line of neither form (a flat dict of no metric, a name
                # without its value): the per-line path reads it, and says what it is.
                self._gather(((stream, first + i, block.lines[i]),))
                continue
            # A step line: a complete record, taken as the general path of _gather takes it.
            step, rank = one.step, one.rank
            if rank >= self.max_ranks:
                self._bad_rank(stream, first + i, rank)
                continue
            self.counters.events += len(metrics)
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
                t = _timestamp(t)
            kind = one.kind
            evaluate(Record(step, metrics, t, rank, kind if type(kind) is str else "train",
                            False, one.host, one.local_rank))
        return True

    def _gather_metric_lines(self, stream: str, first: int,
                             decoded: list[Any]) -> None:
        """Gather a block of one-metric lines of ``stream`` into step records, as
        :meth:`_gather` would: a line of the step and rank of the line before it only adds its
        metric (most lines, and the only check they get); any other starts a step, completing
        the one it follows on its rank."""
        pending = self._pending
        evaluate = self._evaluate
        cur: Record | None = None
        cur_metrics: dict[str, float] = {}
        # The step being gathered for the rank of the previous line, also held in ``pending``
        # under ``cur_key``. None before the first line: equal to no step or rank.
        cur_step: int | None = None
        cur_rank: int | None = None
        cur_key: tuple[str, int] = (stream, 0)
        max_ranks = self.max_ranks
        bad = 0
        for number, one in enumerate(decoded):
            step = one.step
            rank = one.rank
            if step == cur_step and rank == cur_rank:
                cur_metrics[one.name] = one.value
                continue
            if rank == cur_rank:  # the next step of this rank: the one gathered is complete
                del pending[cur_key]
                evaluate(cur)  # type: ignore[arg-type]  # set with cur_rank
            else:
                if rank >= max_ranks:
                    self._bad_rank(stream, first + number, rank)
                    bad += 1
                    continue
                key = (stream, rank)
                held = pending.get(key)
                if held is not None:
                    if held.step == step:
                        held.metrics[one.name] = one.value
                        cur, cur_metrics, cur_step, cur_rank, cur_key = (
                            held, held.metrics, step, rank, key)
                        continue
                    del pending[key]
                    evaluate(held)
                cur_rank, cur_key = rank, key
            kind = one.kind
            cur_metrics = {one.name: one.value}
            cur_step = step
            cur = pending[cur_key] = Record(step, cur_metrics, one.time, rank,
                                            kind if type(kind) is str else "train", True,
                                            one.host, one.local_rank)
        self.counters.events += len(decoded) - bad

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
        max_ranks = self.max_ranks
        for stream, number, data in lines:
            if fast:
                try:
                    one = decode_one(data)
                except not_one:  # any other form, or garbage: decoded in general below
                    one = None
                if one is not None and one.metrics is UNSET:
                    name, value, step, rank = one.name, one.value, one.step, one.rank
                    if cur is not None and stream is cur_stream and rank == cur_rank:
                        events += 1
                        if step == cur_step:
                            cur_metrics[name] = value
                            continue
                        # The next step of the same stream and rank: this one is done.
                        del pending[cur_key]
                        evaluate(cur)
                    else:
                        if rank >= max_ranks:
                            self._bad_rank(stream, number, rank)
                            continue
                        events += 1
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
                        t = _timestamp(t)
                    kind = one.kind
                    cur_metrics = {name: value}
                    cur_step = step
                    cur = pending[cur_key] = Record(step, cur_metrics, t, rank,
                                                    kind if type(kind) is str else "train", True,
                                                    one.host, one.local_rank)
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
            if type(result) is list:  # several steps on one line (a redrawn progress bar)
                for one_result in result:
                    if type(one_result) is ParseSkip:
                        self._skip(Line(stream, number, data), one_result)
                    else:
                        self._take_record(stream, one_result)  # type: ignore[arg-type]
                continue
            record: Record = result  # type: ignore[assignment]
            if record.rank >= max_ranks:
                self._bad_rank(stream, number, record.rank)
                continue
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
                                      record.rank, record.kind, True, record.host,
                                      record.local_rank)
            else:
                evaluate(record)
        counters.events += events

    def _take_record(self, stream: str, record: Record) -> None:
        """One record of a line that held several: gathered as the general path does."""
        self.counters.events += len(record.metrics)
        pending = self._pending
        key = (stream, record.rank)
        held = pending.get(key)
        if held is not None:
            if held.step == record.step:
                held.metrics.update(record.metrics)
                if record.partial:
                    return
                del pending[key]
                self._evaluate(held)
                return
            del pending[key]
            self._evaluate(held)
        if record.partial:
            pending[key] = Record(record.step, dict(record.metrics), record.time,
                                  record.rank, record.kind, True)
        else:
            self._evaluate(record)

    def _bad_rank(self, stream: str, number: int, rank: int) -> None:
        self._skip(Line(stream, number, b""), ParseSkip(
            "bad_rank", f"rank {rank} is not below the cap of {self.max_ranks} ranks "
            "(--max-ranks)"))

    def _skip(self, line: Line, skip: ParseSkip) -> None:
        counters = self.counters
        counters.skips[skip.reason] += 1
        if len(counters.examples) < MAX_SKIP_EXAMPLES:
            counters.examples.append(SkipExample(line.stream, line.number, skip.reason,
                                                 skip.detail))

