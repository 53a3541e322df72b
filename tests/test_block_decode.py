"""A block decoded in one call (``Monitor._gather_block``) gives exactly what reading its lines
one by one gives: the same records, counts, skips and located skip examples, whatever the
lines hold: both canonical forms, lines that stop the block half-way, garbage, and lines that
a whitespace-separated decode would read differently (a value over two lines, two values on
one line, blank lines)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_normalize_fast_path import _general, _ListRecorder, _one_metric, _raw, _step
from trainguard.monitor.daemon import Monitor, json_line_parser
from trainguard.monitor.ingest.blocks import count_newlines, one_value_a_line
from trainguard.monitor.ingest.line_forms import NOT_ONE_METRIC, decode_block, failed_line
from trainguard.monitor.ingest.normalize import FieldMap
from trainguard.monitor.ingest.stdout import make_line_parser
from trainguard.monitor.ingest.tail import Block, expand_blocks


def _dumps(obj: dict[str, object], compact: bool) -> bytes:
    return json.dumps(obj, separators=(",", ":") if compact else None).encode()


# Canonical lines as writers write them (compact or not, keys in any order), which the block
# path takes whole; then lines it must hand to the general parser.
_number = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-10**20, 10**20))
# Odd but valid envelope values (a string time, a numeric kind) are the general parser's
# business too: the record gets no time, the kind "train".
_envelope = {"rank": st.integers(0, 2),
             "time": st.one_of(st.floats(0, 10), st.integers(0, 9),
                               st.sampled_from(["t", True, None, [1]])),
             "kind": st.sampled_from(["train", "eval", 3, None]), "run_id": st.just("r1")}
_good_one = st.fixed_dictionaries(
    {"step": st.integers(0, 3), "name": st.sampled_from(["loss", "actor/kl_loss", "kl"]),
     "value": _number}, optional=_envelope)
_good_step = st.fixed_dictionaries(
    {"step": st.integers(0, 3),
     "metrics": st.dictionaries(st.sampled_from(["loss", "actor/grad_norm", "x"]), _number,
                                max_size=3)}, optional=_envelope)


def _any_order(obj: dict[str, object]) -> st.SearchStrategy[bytes]:
    return st.tuples(st.permutations(list(obj.items())), st.booleans()).map(
        lambda pair: _dumps(dict(pair[0]), pair[1]))


_canonical = st.one_of(_good_one, _good_step).flatmap(_any_order)
# A JSON number written any way JSON allows, decoded by msgspec here and by orjson there.
_literal = st.from_regex(r"-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,20})?([eE][-+]?[0-9]{1,3})?",
                         fullmatch=True).map(str.encode)
_literal_line = st.tuples(_literal, st.booleans()).map(
    lambda p: (b'{"step":1,"name":"loss","value":%s}' if p[1]
               else b'{"step":1,"metrics":{"loss":%s,"kl":0.5}}') % p[0])
_odd = st.sampled_from([
    b"", b"  ", b'{"step": 2, "loss": 0.5}', b'{"step": 1, "name": "loss"}', b'{"step": 1}',
    b'{"step": 1, "name": "loss", "value": "NaN"}', b'{"step": 1, "metrics": {"loss": "NaN"}}',
    b'{"step": 1, "metrics": {"loss": null}}', b'{"step": 1.0, "name": "loss", "value": 1}',
    b'{"step": 1, "name": "loss", "value": 1, "epoch": 2}', b'{"step": 1, "metrics": null}',
    b'{"step": 1, "name": "loss", "value": 1, "metrics": null}', b'{"step": 1, "rank": true}',
    # Half a value, the rest on the next line; two values on one line; nested values over
    # two lines: decode_lines would read these as other values than the lines hold.
    b'{"step": 1, "name": "loss",', b'"value": 1}', b'{"step":1,"metrics":',
    b'{"loss":1}} {"step":2,"name":"kl","value":2}', b'{"step":1,"time":{"a":1}',
    b'}', b'{"step":1,"name":"a","value":1}{"step":1,"name":"b","value":2}',
    b'{"step":3,"name":"a","value":1} {"step":3,"name":"b","value":2}',
    b' {"step": 1, "name": "loss", "value": 3}', b'{"step": 1, "name": "loss", "value": 3} ',
    b'{"step": 1, "name": "loss", "value": 3}\r', b'{"step":1,"name":"l}\\n{","value":2}'])
_data = st.one_of(_canonical, _canonical, _canonical, _literal_line, _odd,
                  _one_metric.map(lambda o: json.dumps(o).encode()),
                  _step.map(lambda o: json.dumps(o).encode()), _raw)


@st.composite
def _blocks(draw: st.DrawFn) -> list[Block]:
    """Blocks of two files as a directory source hands them over: each file's lines in
    order, cut into blocks at random, the two files' blocks interleaved at random."""
    per_file: dict[str, list[Block]] = {}
    for stream in ("a.jsonl", "b.jsonl"):
        lines = draw(st.lists(_data, max_size=30))
        cuts = sorted(draw(st.sets(st.integers(1, max(1, len(lines) - 1)), max_size=4)))
        blocks, start = [], 0
        for end in [*cuts, len(lines)]:
            if end > start:
                part = lines[start:end]
                blocks.append(Block(stream, start + 1, part, b"".join(x + b"\n" for x in part)))
                start = end
        per_file[stream] = blocks
    order = draw(st.permutations(["a.jsonl"] * len(per_file["a.jsonl"])
                                 + ["b.jsonl"] * len(per_file["b.jsonl"])))
    taken = {"a.jsonl": iter(per_file["a.jsonl"]), "b.jsonl": iter(per_file["b.jsonl"])}
    return [next(taken[stream]) for stream in order]


def _monitor(parser: object) -> tuple[Monitor, _ListRecorder]:
    recorder = _ListRecorder()
    fmap = FieldMap({"actor/kl_loss": "kl"}, {"actor/grad_norm": "grad_norm"})
    return Monitor(None, [], field_map=fmap, parser=parser,  # type: ignore[arg-type]
                   recorder=recorder), recorder  # type: ignore[arg-type]


def _outcome(mon: Monitor, recorder: _ListRecorder) -> tuple[object, ...]:
    c = mon.counters
    return recorder.records, c.events, c.records, dict(c.skips), c.examples


def _by_lines(blocks: list[Block], parser: object, batch: int) -> tuple[object, ...]:
    mon, recorder = _monitor(parser)
    lines = expand_blocks(blocks)
    for start in range(0, len(lines), batch):
        mon.process(lines[start:start + batch])
    mon.flush()
    return _outcome(mon, recorder)


def _by_blocks(blocks: list[Block], parser: object, batch: int) -> tuple[object, ...]:
    mon, recorder = _monitor(parser)
    for start in range(0, len(blocks), batch):
        mon.process_blocks(blocks[start:start + batch])
    mon.flush()
    return _outcome(mon, recorder)


@settings(max_examples=400, deadline=None)
@given(_blocks(), st.integers(1, 4))
def test_block_decode_evaluates_what_the_general_parser_does(blocks: list[Block], batch: int):
    """Blocks decoded whole, in part or not at all: the same records, counts, skips and skip
    examples as the general parser reading every line, in any batching."""
    assert _by_lines(blocks, _general, 3) == _by_blocks(blocks, json_line_parser, batch)


@settings(max_examples=150, deadline=None)
@given(_blocks(), st.integers(1, 4))
def test_block_decode_with_the_stdout_parser_evaluates_what_it_does_alone(
        blocks: list[Block], batch: int):
    """The stdout parser (canonical JSON first) over blocks: what it gives reading every line
    itself."""
    alone = make_line_parser(None)
    alone.json_first = False  # type: ignore[attr-defined]
    assert _by_lines(blocks, alone, 3) == _by_blocks(blocks, make_line_parser(None), batch)


def _block(*lines: bytes, first: int = 1) -> Block:
    return Block("a.jsonl", first, list(lines), b"".join(x + b"\n" for x in lines))


def test_a_block_of_canonical_lines_is_decoded_in_one_call():
    """Both forms, mixed, with a line of neither form among them: the block is taken whole,
    that line read on its own (a located skip), the records as line by line."""
    block = _block(b'{"step":1,"name":"loss","value":0.5}', b'{"step":1,"name":"kl","value":1}',
                   b'{"step":1,"name":"lr"}', b'{"step":2,"metrics":{"loss":0.4}}',
                   b'{"step":3,"rank":1,"name":"loss","value":2}', first=7)
    mon, recorder = _monitor(json_line_parser)
    taken = mon._gather_block(block)
    mon.flush()
    assert (True, [(0, 1, {"loss": "0.5", "kl": "1.0"}, None, "train"),
                   (0, 2, {"loss": "0.4"}, None, "train"),
                   (1, 3, {"loss": "2.0"}, None, "train")], [(9, "missing_value")]) == (
        taken, recorder.records, [(e.line, e.reason) for e in mon.counters.examples])


def test_a_value_over_two_lines_is_not_taken_for_the_lines_around_it():
    """Half an object on one line, its rest and a second object on the next: as many values
    as lines, but not one a line; the block is read line by line (two malformed lines)."""
    block = _block(b'{"step":1,"metrics":', b'{"loss":1}} {"step":2,"name":"kl","value":2}')
    mon, recorder = _monitor(json_line_parser)
    assert not mon._gather_block(block)
    mon.process_blocks([block])
    mon.flush()
    assert ([], {"malformed_json": 2}) == (recorder.records, dict(mon.counters.skips))


def test_a_large_block_with_a_value_over_two_lines_is_not_taken_either():
    """The same over a block large enough for the checks in numpy compares (blocks.py): a
    megabyte of canonical lines with the broken pair in the middle is read line by line."""
    good = [b'{"step":%d,"name":"loss","value":0.5}' % i for i in range(20_000)]
    broken = [b'{"step":1,"metrics":', b'{"loss":1}} {"step":2,"name":"kl","value":2}']
    block = _block(*good[:10_000], *broken, *good[10_000:])
    mon, recorder = _monitor(json_line_parser)
    assert not mon._gather_block(block)
    mon.process_blocks([block])
    mon.flush()
    assert (20_000, {"malformed_json": 2}) == (len(recorder.records),
                                               dict(mon.counters.skips))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"}\n{", b"\n", b"}", b"{", b"}\n", b"\n{", b"x", b"}}\n{{"]),
                max_size=60), st.integers(0, 3))
def test_the_numpy_block_checks_count_what_bytes_count_counts(pieces: list[bytes], at: int):
    """``count_newlines`` and ``one_value_a_line`` over large bytes (numpy compares) agree
    with ``bytes.count``, wherever the newlines and braces fall (the padding puts them at the
    ends of the buffer too)."""
    pad = b"a" * (1 << 16)
    body = b"".join(pieces)
    raw = [pad + body, body + pad, pad[:at] + body + pad + body][at % 3] + b"\n"
    n = raw.count(b"\n")
    assert count_newlines(raw) == n
    assert count_newlines(raw, at) == raw.count(b"\n", at)
    assert one_value_a_line(raw, n) == (raw.count(b"}\n{") == n - 1)
    assert one_value_a_line(raw, n + 1) == (raw.count(b"}\n{") == n)


def test_a_block_that_fails_half_way_is_read_line_by_line_from_its_start():
    """A string NaN on the third line fails the block's decode: every line is still read,
    the NaN too, and each step is one record."""
    block = _block(b'{"step":1,"name":"loss","value":0.5}', b'{"step":1,"name":"kl","value":1}',
                   b'{"step":2,"name":"loss","value":"NaN"}',
                   b'{"step":2,"name":"kl","value":2}')
    mon, recorder = _monitor(json_line_parser)
    assert not mon._gather_block(block)
    mon.process_blocks([block])
    mon.flush()
    assert ([(0, 1, {"loss": "0.5", "kl": "1.0"}, None, "train"),
             (0, 2, {"loss": "nan", "kl": "2.0"}, None, "train")], 4) == (
        recorder.records, mon.counters.events)


def test_a_large_block_is_cut_around_the_lines_that_fail_its_decode():
    """A string NaN, a garbage line and a truncated value among a thousand canonical lines:
    only those three are read line by line (the block path takes the parts around them),
    with what reading every line gives."""
    lines = [b'{"time":%d.5,"step":%d,"name":"loss","value":0.5}' % (i, i) for i in range(1000)]
    lines[300] = b'{"time":300.5,"step":300,"name":"loss","value":"NaN"}'
    lines[301] = b"garbage"
    lines[700] = b'{"time":700.5,"step":700,"name":"lo'
    blocks = [_block(*lines, first=3)]
    mon, recorder = _monitor(json_line_parser)
    by_line: list[int] = []
    gather = mon._gather
    mon._gather = lambda items: gather(  # type: ignore[method-assign]
        by_line.append(number) or (stream, number, data) for stream, number, data in items)
    mon.process_blocks(blocks)
    mon.flush()
    assert by_line == [303, 304, 703]
    assert _by_lines(blocks, _general, 3) == _outcome(mon, recorder)


@pytest.mark.parametrize(("raw", "line"), [
    (b'{"step":1,"name":"a","value":1}\n{"step":2,"name":"a","value":"x"}\n', 1),
    (b'{"step":1,"name":"a","value":1}\n{"step":2,"name":"a","value":1}\n{"st\n', 2),
    (b'{"step":1,"name":"a","value":1}\n{"step":2,"name":"a","value":1,}\n', 1)])
def test_failed_line_reads_where_msgspec_says_a_block_failed(raw: bytes, line: int):
    """The line a block's decode fails at, from msgspec's message (a hint where to cut it)."""
    with pytest.raises(NOT_ONE_METRIC) as caught:
        decode_block(raw)
    assert failed_line(caught.value, raw, raw.count(b"\n")) == line


_one_rank_line = st.fixed_dictionaries(
    {"step": st.integers(0, 4), "name": st.sampled_from(["loss", "actor/kl_loss", "kl"]),
     "value": _number},
    optional={"time": st.floats(0, 10), "kind": st.sampled_from(["train", "eval", 3])})


@st.composite
def _one_rank_blocks(draw: st.DrawFn) -> list[Block]:
    """One rank's one-metric lines (steps that repeat, go back, come again; names repeated
    within a step), cut into blocks at random: the common case, what a one-metric logger
    is made of (two files, so that the other stream's step is held meanwhile)."""
    blocks: list[Block] = []
    for stream, rank in (("a.jsonl", 0), ("b.jsonl", 1)):
        objs = draw(st.lists(_one_rank_line, min_size=1, max_size=40))
        lines = [json.dumps({**o, "rank": rank}).encode() for o in objs]
        cuts = sorted(draw(st.sets(st.integers(1, max(1, len(lines) - 1)), max_size=5)))
        start = 0
        for end in [*cuts, len(lines)]:
            if end > start:
                part = lines[start:end]
                blocks.append(Block(stream, start + 1, part, b"".join(x + b"\n" for x in part)))
                start = end
    return _interleave(draw, blocks)


def _interleave(draw: st.DrawFn, blocks: list[Block]) -> list[Block]:
    """The two files' blocks in a random interleaving that keeps each file's order."""
    per = {s: [b for b in blocks if b.stream == s] for s in ("a.jsonl", "b.jsonl")}
    order = draw(st.permutations([s for s in per for _ in per[s]]))
    taken = {s: iter(per[s]) for s in per}
    return [next(taken[s]) for s in order]


@settings(max_examples=400, deadline=None)
@given(_one_rank_blocks(), st.integers(1, 3))
def test_one_rank_blocks_evaluate_what_the_general_parser_does(
        blocks: list[Block], batch: int):
    """Blocks of one rank's one-metric lines: the records (steps held across blocks, steps
    seen again, the last value of a repeated name), counts and order of the general parser
    reading every line."""
    assert _by_lines(blocks, _general, 3) == _by_blocks(blocks, json_line_parser, batch)
