"""The monitor's one-metric fast path gives exactly what the general parser gives."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from trainguard.events import Record
from trainguard.monitor.daemon import Monitor, json_line_parser
from trainguard.monitor.ingest.normalize import FieldMap
from trainguard.monitor.ingest.sources import Line
from trainguard.monitor.ingest.stdout import make_line_parser


class _ListRecorder:
    """Keeps what the monitor evaluated, in order (the ``--record`` hook point)."""

    def __init__(self) -> None:
        self.records: list[tuple[int, int, dict[str, str], float | None, str]] = []

    def write(self, record: Record) -> None:
        # repr: 1 and 1.0 compare equal, but a metric must be a float
        self.records.append((record.rank, record.step,
                             {k: repr(v) for k, v in record.metrics.items()}, record.time,
                             record.kind))

    def commit(self) -> int:
        return 0

    def close(self) -> None:
        pass


def _general(line: Line) -> object:
    """The same parser behind another name: the monitor then takes its general path."""
    return json_line_parser(line)


_value = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=32),
                   st.integers(-5, 5), st.sampled_from(["NaN", "1.5", None, True, "x"]))
_one_metric = st.fixed_dictionaries(
    {"step": st.one_of(st.integers(0, 3), st.just(1.0), st.just("2")),
     "name": st.sampled_from(["loss", "actor/kl_loss", "actor/grad_norm", 7]),
     "value": _value},
    optional={"rank": st.one_of(st.integers(0, 2), st.just("1")),
              "time": st.one_of(st.floats(0, 10), st.just("t")),
              "kind": st.sampled_from(["train", "eval", 3]),
              "metrics": st.just({"loss": 1.0})})
_step = st.fixed_dictionaries({"step": st.integers(0, 3),
                               "metrics": st.dictionaries(st.sampled_from(["loss", "kl"]),
                                                          _value, max_size=2)},
                              optional={"rank": st.integers(0, 2)})
_raw = st.sampled_from([b"", b"{oops", b"NaN", b"[1, 2]", b'{"step": 1, "value": NaN, '
                        b'"name": "loss"}'])
_line = st.tuples(st.sampled_from(["a.jsonl", "b.jsonl"]),
                  st.one_of(_one_metric.map(lambda o: json.dumps(o).encode()),
                            _step.map(lambda o: json.dumps(o).encode()), _raw))


def _run(lines: list[Line], parser: object, batch: int) -> tuple[object, ...]:
    recorder = _ListRecorder()
    fmap = FieldMap({"actor/kl_loss": "kl"}, {"actor/grad_norm": "grad_norm"})
    mon = Monitor(None, [], field_map=fmap, parser=parser,  # type: ignore[arg-type]
                  recorder=recorder)  # type: ignore[arg-type]
    for start in range(0, len(lines), batch):
        mon.process(lines[start:start + batch])
    mon.flush()
    c = mon.counters
    return recorder.records, c.events, c.records, dict(c.skips)


@settings(max_examples=300, deadline=None)
@given(st.lists(_line, max_size=40), st.integers(1, 8))
def test_fast_path_evaluates_what_the_general_parser_does(raw: list[tuple[str, bytes]],
                                                           batch: int):
    """Same records (values, steps, ranks, times, kinds), same counts, same skips."""
    lines = [Line(stream, n, data) for n, (stream, data) in enumerate(raw, 1)]
    assert _run(lines, _general, batch) == _run(lines, json_line_parser, batch)


_console = st.sampled_from([b"{'loss': '0.6931', 'grad_norm': '1.25', 'epoch': '0.5'}",
                            b"\r 10%|#   | 1/10 [00:01<00:09]{'loss': 0.5, 'epoch': 1.0}",
                            b"step:3 - actor/kl_loss:0.5 - actor/grad_norm:2.0",
                            b"Loading weights: 100%", b"{'eval_loss': '0.7', 'epoch': '1'}"])
_mixed = st.tuples(st.sampled_from(["a.jsonl", "b.jsonl"]),
                   st.one_of(_one_metric.map(lambda o: json.dumps(o).encode()),
                             _step.map(lambda o: json.dumps(o).encode()), _raw, _console))


@settings(max_examples=200, deadline=None)
@given(st.lists(_mixed, max_size=40), st.integers(1, 8))
def test_stdout_parser_on_the_fast_path_evaluates_what_it_does_alone(
        raw: list[tuple[str, bytes]], batch: int):
    """Canonical JSON decoded by the monitor, the rest by the stdout parser: the same records,
    counts and skips as the stdout parser reading every line itself."""
    lines = [Line(stream, n, data) for n, (stream, data) in enumerate(raw, 1)]
    shared = make_line_parser(None)
    alone = make_line_parser(None)
    alone.json_first = False  # type: ignore[attr-defined]
    # A printed log's time is when it was read: one clock for both, so records compare equal.
    shared._clock = alone._clock = lambda: 1.7e9  # type: ignore[attr-defined]
    assert _run(lines, alone, batch) == _run(lines, shared, batch)
