"""Lines to step records: the monitor's parsing and step grouping, with its fast paths.

A line is decoded (canonical JSON on fast paths that ``msgspec`` types check in C; anything
else through the parser, which says why a line is skipped), and one-metric lines of one rank and
step are gathered into one step record, held in ``pending`` until a line of another step shows
the step is complete. Completed records are handed to ``_evaluate`` (a bare ``list.append`` in
the monitor) and evaluated at the end of the batch. A block of one-metric lines that are steps
of one metric each is offered to the monitor as columns instead (:mod:`.metric_steps`), with
no record a line. The line forms the decoders take are :mod:`.line_forms`. :class:`Monitor
<trainguard.monitor.daemon.Monitor>` is a :class:`StepGathering`; the results are the same on
every path (``tests/test_normalize_fast_path.py``, ``tests/test_block_decode.py``,
``tests/test_metric_steps.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from itertools import count, repeat
from typing import Any

from msgspec import UNSET

from trainguard.events import (
    MAX_RANKS,
    ParseSkip,
    Record,
    _fast_loads,  # the same decoder, for the fast path
    parse_line,
    record_from_object,
)
from trainguard.monitor.ingest.blocks import one_value_a_line
from trainguard.monitor.ingest.counters import MAX_SKIP_EXAMPLES, Counters, SkipExample
from trainguard.monitor.ingest.line_forms import NOT_ONE_METRIC as _NOT_ONE_METRIC
from trainguard.monitor.ingest.line_forms import decode_block as _decode_block
from trainguard.monitor.ingest.line_forms import decode_metric_block as _decode_metric_block
from trainguard.monitor.ingest.line_forms import (
    decode_metric_block_iso as _decode_metric_block_iso,
)
from trainguard.monitor.ingest.line_forms import decode_one_metric as _decode_one_metric
from trainguard.monitor.ingest.line_forms import (
    decode_plain_metric_block as _decode_plain_metric_block,
)
from trainguard.monitor.ingest.line_forms import failed_line, named_metric_block_decoder
from trainguard.monitor.ingest.line_forms import timestamp as _timestamp
from trainguard.monitor.ingest.metric_steps import MIN_COLUMN_LINES, MetricSteps, metric_steps
from trainguard.monitor.ingest.tail import Block, Line

__all__ = ["Counters", "LineParser", "MAX_HELD_RECORDS", "MAX_SKIP_EXAMPLES", "SkipExample",
           "StepGathering", "json_line_parser"]


#: Completed step records a batch holds before they are evaluated anyway: a poll of a run
#: directory reads a chunk of every file, and its records must not all wait at once.
MAX_HELD_RECORDS = 16_384
#: Cuts of a block around lines that fail its decode before the rest is read line by line.
MAX_BLOCK_CUTS = 4
#: Streams whose last block's one metric is remembered (a run directory of many rank files).
MAX_NAMED_STREAMS = 4096

#: Turns one line into a record or a counted skip. The default reads canonical JSONL.
LineParser = Callable[[Line], "Record | ParseSkip | list[Record | ParseSkip] | None"]


def json_line_parser(line: Line) -> Record | ParseSkip | None:
    """The default parser: canonical JSONL in any accepted form; blank lines are ignored."""
    data = line.data
    if not data.strip():
        return None
    return parse_line(data)


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
    #: Whether blocks of one-metric lines are offered to :meth:`_evaluate_steps` as columns.
    columns: bool = False
    #: stream -> the metric every line of its last block taken as columns named: the next
    #: block is decoded first as lines of that name (``named_metric_block_decoder``).
    _block_names: dict[str, str]

    def _end_batch(self) -> None:
        """Evaluate what the batch completed."""
        raise NotImplementedError

    def _evaluate_held(self) -> None:
        """Evaluate the completed records held so far, before the batch ends."""
        raise NotImplementedError

    def _evaluate_steps(self, steps: MetricSteps, count: int) -> bool:
        """Evaluate the first ``count`` lines of ``steps`` as that many complete steps, after
        the records completed before them; False, with nothing done, when it cannot take
        them so (they are then gathered record by record)."""
        return False

    def _take_columns(self, stream: str, decoded: list[Any], raw: bytes, plain: bool,
                      name: str | None) -> bool:
        """Take a decoded block of one-metric lines as columns (:mod:`.metric_steps`): every
        line but the last is a complete step, evaluated at once; the last waits in
        ``pending`` for more of its step's metrics, as on the record path. False, with
        nothing done but the completion of a pending step the first line completes anyway,
        when the block is not so (more than one rank, two lines of a step...). ``name``: the
        metric every line names, when the decoder checked it."""
        steps = metric_steps(stream, decoded, raw, plain, name)
        if steps is None or steps.rank >= self.max_ranks:
            return False  # several ranks, or a bad one: counted on the record path
        pending = self._pending
        key = (stream, steps.rank)
        held = pending.get(key)
        if held is not None:
            if held.step == decoded[0].step:
                return False  # the first line adds to a step begun in an earlier block
            del pending[key]  # complete: the first line is of another step
            self._evaluate(held)
        n = len(decoded)
        if not self._evaluate_steps(steps, n - 1):
            return False
        names = self._block_names
        if steps.name is None:
            names.pop(stream, None)
        elif names.get(stream) != steps.name:
            if len(names) >= MAX_NAMED_STREAMS:
                names.clear()
            names[stream] = steps.name
        last = decoded[-1]
        pending[key] = Record(last.step, {last.name: last.value}, last.time, steps.rank,
                              steps.kind, True, last.host, last.local_rank)
        self.counters.events += n
        return True

    def process(self, lines: Sequence[Line]) -> None:
        """Parse, normalize and evaluate ``lines``; route any alerts."""
        self._gather(lines)
        self._end_batch()

    def process_blocks(self, blocks: Sequence[Block]) -> None:
        """:meth:`process` for blocks of consecutive lines (what a file source reads)."""
        parser = self.parser
        # Where the per-line fast path would decode the lines (see _gather), a block that
        # comes with its bytes is decoded in one call (about half the cost a line).
        whole = parser is json_line_parser or getattr(parser, "json_first", False)
        for block in blocks:
            if whole and block.raw is not None:
                self._gather_parts(block)
            else:
                self._gather_lines(block)
            if len(self._done) >= MAX_HELD_RECORDS:  # a poll of many files: bound the memory
                self._evaluate_held()
        self._end_batch()

    def _gather_parts(self, block: Block) -> None:
        """:meth:`_gather_block`, or, where a line fails the block's decode (a string NaN, a
        truncated line), the lines before it as a block, that line alone and the rest again
        so: one bad line does not send a megabyte down the path of a line at a time. A few
        cuts a block at most, then line by line."""
        for _ in range(MAX_BLOCK_CUTS):
            if self._gather_block(block):
                return
            raw = block.raw
            assert raw is not None
            try:
                _decode_block(raw)
            except _NOT_ONE_METRIC as error:
                k = failed_line(error, raw, block.count)
            else:
                k = None  # it decodes, but not one value a line: no line to cut at
            if k is None:
                break
            head, line, rest = block.around(k)
            if head is not None and not self._gather_block(head):
                self._gather_lines(head)
            self._gather(((line.stream, line.number, line.data),))
            if rest is None:
                return
            block = rest
        self._gather_lines(block)

    def _gather_lines(self, block: Block) -> None:
        """The lines of ``block`` one by one (:meth:`_gather`)."""
        # zip reuses its result tuple when the loop unpacks it: no object per line.
        self._gather(zip(repeat(block.stream), count(block.first), block.lines))

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
        metric_lines: list[Any] | None = None
        # A block that may be taken as columns is tried as the four canonical keys alone
        # first: then its lines need no look for a rank or a kind (see metric_steps).
        columns = self.columns and n >= MIN_COLUMN_LINES
        plain = False
        name = None
        if columns:
            name = self._block_names.get(stream)
            if name is not None:  # the last block of this stream named one metric: this one?
                try:
                    metric_lines = named_metric_block_decoder(name)(raw)
                    plain = True
                except _NOT_ONE_METRIC:
                    name = None
            if metric_lines is None:
                try:
                    metric_lines = _decode_plain_metric_block(raw)
                    plain = True
                except _NOT_ONE_METRIC:
                    pass
        try:
            if metric_lines is None:
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
            if len(metric_lines) != n or not one_value_a_line(raw, n):
                return False
            if not (columns and self._take_columns(stream, metric_lines, raw, plain, name)):
                self._gather_metric_lines(stream, first, metric_lines)
            return True
        try:
            decoded = _decode_block(raw)
        except _NOT_ONE_METRIC:  # a line of another form, or garbage
            return False
        if len(decoded) != n or not one_value_a_line(raw, n):
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

